"""`batcher status` (batcher.status): a snapshot of a journal, read without writing it or taking its
lock — of a finished job, of a journal a run holds (in this process, and a real `batcher run` in a
subprocess against a slow sandbox, which must finish unaffected), and one-line refusals (exit 2)
for what is not a readable journal."""

from __future__ import annotations

import fcntl
import hashlib
import io
import json
import os
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

import httpx
import pytest

import batcher.journal as journal_module
from batcher import status as status_module
from batcher.errors import UsageError
from batcher.job import Transports, run_job
from batcher.journal import Journal
from batcher.models import Status
from batcher.sandbox.world import World
from batcher.status import JobStatus, print_status, read_status

from .conftest import read_results, write_pairs
from .test_e2e import make_rows, settings
from .test_journal import C1, C2, PLAN, R1, R2, ok, rows_table
from .test_signals import Job, results_problems, square_rows, tail


def digest(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def lock_file(journal: Path) -> Path:
    return journal.with_name(journal.name + ".lock")


def test_the_journal_keys_are_the_journals_own():
    assert status_module.SCHEMA_VERSION == journal_module.SCHEMA_VERSION
    assert (status_module._K_VERSION, status_module._K_LOADED, status_module._K_STARTED) == (
        journal_module._K_VERSION, journal_module._K_LOADED, journal_module._K_STARTED)


# ---------------------------------------------------------------------------------- finished


def test_a_finished_job_reads_as_finished_without_touching_its_journal(tmp_path, serve):
    rows = make_rows(120, 6)
    live = serve(World.from_pairs(rows))
    bad = [("Leads", "12ab", rows[0][2]), rows[0]]  # an invalid row and a duplicate
    inp = write_pairs(tmp_path / "in.csv", rows + bad)
    result = run_job(settings(tmp_path, inp), live.env)
    assert result.exit_code == 1  # the invalid row
    journal = tmp_path / "out.journal"
    before = digest(journal)

    st = read_status(journal)

    assert digest(journal) == before  # read-only
    assert (st.state, st.running, st.pid, st.loaded) == ("finished", False, None, True)
    assert {s: n for s, n in st.by_status.items() if n} == result.summary.by_status
    assert list(st.by_status) == [s.value for s in Status]
    assert st.rows == len(rows) + 2
    assert (st.batches_left, st.pairs_left, st.eta_s, st.rate) == (0, 0, 0.0, None)
    assert (st.calls, st.retries, st.throttled, st.credits) == (
        result.summary.calls, result.summary.retries, result.summary.throttled,
        result.summary.credits)
    assert st.calls == len(live.sandbox.calls) > 0
    assert st.started_at == result.summary.started_at
    assert st.last_call_at is not None and st.last_call_at >= st.started_at
    assert st.last_error is None
    text = st.human()
    assert text.splitlines()[0] == f"journal {journal}: finished"
    assert f"unenrolled {len(rows):,}" in text and "invalid 1" in text and "duplicate 1" in text
    out = io.StringIO()
    assert print_status(journal, as_json=True, stream=out) == 0
    doc = json.loads(out.getvalue())
    assert doc["state"] == "finished" and doc["by_status"] == st.by_status
    assert doc["rows"] == st.rows and doc["pid"] is None
    # the lock was never taken: the same command runs again at once
    assert run_job(settings(tmp_path, inp), live.env).exit_code == 1


def test_a_job_stopped_by_its_budget_says_why_until_a_run_finishes_it(tmp_path, serve):
    """`status` of a job whose last run stopped early says why, as that run said it (the journal
    keeps it); once a run finishes the job, it says nothing of the earlier stop."""
    rows = make_rows(300, 5)
    live = serve(World.from_pairs(rows))
    inp = write_pairs(tmp_path / "in.csv", rows)
    stopped = run_job(settings(tmp_path, inp, max_calls=1), live.env)
    assert stopped.exit_code == 3 and stopped.aborted
    journal = tmp_path / "out.journal"

    st = read_status(journal)
    assert (st.state, st.stopped_by) == ("stopped", stopped.aborted)
    assert "--max-calls 1" in st.stopped_by
    assert st.human().splitlines()[1] == f"its last run stopped: {stopped.aborted}"
    out = io.StringIO()
    print_status(journal, as_json=True, stream=out)
    assert json.loads(out.getvalue())["stopped_by"] == stopped.aborted

    assert run_job(settings(tmp_path, inp), live.env).exit_code == 0
    st = read_status(journal)
    assert (st.state, st.stopped_by) == ("finished", None)
    assert "its last run stopped" not in st.human()


# ---------------------------------------------------------------------------------- held here


@pytest.fixture
def answered(tmp_path: Path) -> Path:
    """A journal with batch b1 answered (two pairs failed, the later one last) and b2 left."""
    path = tmp_path / "job.journal"
    with Journal.open(path, "fp", input_name="a.csv") as j:
        j.load(rows_table(), PLAN)
        j.mark_sent("b1")
        j.record_outcomes("b1", [
            ok(R1, C1), ok(R1, C2, Status.NOT_ENROLLED),
            ok(R2, C1, Status.FAILED, code="OLDER", message="first failure", http_status=400),
        ], final=False)
        time.sleep(0.01)  # a later finished_at
        j.record_outcomes("b1", [ok(R2, C2, Status.FAILED, code="INVALID_DATA",
                                    message="the cadence\nis gone", http_status=400)])
        j.count(calls=1, credits=2, retries=1, throttled=1)
        j.add_counters()
    return path


def test_a_journal_held_by_a_run_reads_as_running_with_its_pid_rate_and_eta(answered):
    with Journal.open(answered, "fp") as j:
        now = time.time()
        for k in range(10):  # 10 calls over the last 20 s: 0.5 calls/s
            j.log_call(now - 20 + 2 * k, "b1", 200, False, 0.5)
        j.log_call(now - 3600, "b1", 429, True, 0.1)  # an hour ago: outside the minute
        j.add_counters()

        st = read_status(answered)

        assert j.mark_sent("b2") == 1  # the run goes on: its lock, its commits
    assert (st.state, st.running, st.pid) == ("running", True, os.getpid())
    assert (st.batches_left, st.pairs_left) == (1, 1)
    assert st.by_status["unenrolled"] == 1 and st.by_status["failed"] == 2
    assert st.by_status["not_sent"] == 1
    assert (st.calls, st.retries, st.throttled, st.credits) == (1, 1, 1, 2)
    assert st.rate == pytest.approx(10 / 20, rel=0.05)
    assert st.eta_s == pytest.approx(1 / st.rate)
    assert st.last_error.code == "INVALID_DATA"
    assert st.last_error.message == "the cadence\nis gone"  # as the journal keeps it
    text = st.human()
    assert f"running (pid {os.getpid()})" in text and "calls/s over the last minute" in text
    assert "last error: INVALID_DATA the cadence is gone (" in text  # one line
    assert json.loads(json.dumps(st.as_dict()))["last_error"]["code"] == "INVALID_DATA"


def test_a_stopped_job_and_a_pid_left_by_kill_9(answered):
    lock_file(answered).write_text("999999\n")  # a run killed by kill -9 leaves its pid

    st = read_status(answered)

    assert (st.state, st.running, st.pid, st.rate, st.eta_s) == ("stopped", False, None,
                                                                 None, None)
    assert "stopped: re-run its command to resume" in st.human()
    with Journal.open(answered, "fp"):  # the probe left the lock free
        assert read_status(answered).running


def test_a_journal_whose_plan_is_not_loaded_yet(tmp_path):
    path = tmp_path / "job.journal"
    with Journal.open(path, "fp"):
        st = read_status(path)
        assert (st.state, st.loaded, st.rows, st.batches_left) == ("running", False, 0, 0)
        assert "planning" in st.human()
    st = read_status(path)
    assert (st.state, st.eta_s) == ("stopped", None)
    assert "stopped before its plan was loaded" in st.human()
    # not "rows 0 / left: 0 batches (0 pairs)": a job with nothing left to send
    assert "rows 0" not in st.human() and "left: 0" not in st.human()
    assert "every pair is left" in st.human()


def test_a_journal_file_its_run_has_just_created(tmp_path):
    """The run holds the lock and made the file; its first commit (the tables) is not there."""
    path = tmp_path / "job.journal"
    path.touch()
    fd = os.open(lock_file(path), os.O_RDWR | os.O_CREAT, 0o600)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        os.write(fd, b"4242\n")
        st = read_status(path)
    finally:
        os.close(fd)
    assert (st.state, st.pid, st.loaded, st.rows, st.eta_s) == ("running", 4242, False, 0, None)
    assert st.human().splitlines()[0].endswith("running (pid 4242), planning")
    with pytest.raises(UsageError, match="not a batcher journal"):  # nobody holds it now
        read_status(path)


# ---------------------------------------------------------------------------------- a real run


@pytest.mark.slow
def test_status_of_a_running_batcher_run_leaves_the_run_unaffected(tmp_path, serve):
    """`batcher run` in a subprocess, ~20 calls of 0.25 s one at a time; status is read every
    20 ms from before the run makes its journal to after it exits."""
    rows = square_rows(2_000, 554023000030000000, 554023000031000000)  # 20 calls of 500 pairs
    live = serve(World.from_pairs(rows), latency=0.25)
    job = Job(tmp_path / "job", rows, live.env, concurrency=1)
    proc = job.start()
    seen: list[JobStatus] = []
    printed: list[dict] = []  # `--json` output, every 10th read
    refused: list[str] = []  # before the journal is made and loaded
    deadline = time.monotonic() + 120
    try:
        while proc.poll() is None and time.monotonic() < deadline:
            try:
                seen.append(read_status(job.journal))
                if len(seen) % 10 == 0:
                    out = io.StringIO()
                    assert print_status(job.journal, as_json=True, stream=out) == 0
                    printed.append(json.loads(out.getvalue()))
            except UsageError as exc:
                refused.append(str(exc))
                assert not seen, f"a read failed once the journal was there: {exc}"
            time.sleep(0.02)
        code = proc.wait(timeout=5)
    except (AssertionError, subprocess.TimeoutExpired):
        proc.kill()
        proc.wait()
        raise

    assert code == 0, f"the run exited {code}: {tail(job.stderr())}"
    assert results_problems(job, statuses={"unenrolled"}, after="the run") == []
    assert live.sandbox.removed >= set(rows)
    assert len(live.sandbox.calls) == 20  # no call was sent twice
    sending = [s for s in seen if s.running and s.loaded and s.calls]
    assert len(sending) >= 10, f"only {len(sending)} reads while it sent; refused: {refused}"
    assert all(s.pid == proc.pid for s in seen if s.running)
    assert any(d["state"] == "running" and d["pid"] == proc.pid and d["batches_left"] > 0
               for d in printed), printed
    assert any(s.batches_left > 0 and s.eta_s is not None and s.rate > 0 for s in sending)
    assert [s.batches_left for s in sending] == sorted(
        (s.batches_left for s in sending), reverse=True)
    final = read_status(job.journal)
    assert (final.state, final.calls, final.by_status["unenrolled"]) == (
        "finished", 20, len(rows))
    assert {r["status"] for r in read_results(job.results)} == {"unenrolled"}


# ---------------------------------------------------------------------------------- refusals


def unreadable(kind: str, tmp_path: Path, journal: Path) -> Path:
    """A path of ``kind`` that is no readable journal (``journal``: a real one to spoil)."""
    path = tmp_path / f"{kind}.journal"
    if kind == "missing":
        return path
    if kind == "directory":
        return tmp_path
    if kind == "text":
        path.write_text("row,status\n" * 100)
    elif kind == "empty":
        path.touch()
    elif kind == "lock_is_a_link":
        lock_file(journal).unlink()
        lock_file(journal).symlink_to(tmp_path / "elsewhere")
        return journal
    else:
        sql = {"other_sqlite": (path, "CREATE TABLE meta (key, value);"),
               "other_format": (journal, "UPDATE meta SET value = '1'"
                                         " WHERE key = 'batcher.schema_version';")}[kind]
        path = sql[0]
        db = sqlite3.connect(path)
        db.executescript(sql[1])
        db.close()
    return path


@pytest.mark.parametrize("kind", ["missing", "directory", "text", "empty", "other_sqlite",
                                  "other_format", "lock_is_a_link"])
def test_what_is_not_a_readable_journal_is_one_line_exit_2(tmp_path, answered, kind):
    path = unreadable(kind, tmp_path, answered)
    with pytest.raises(UsageError) as err:
        read_status(path)
    text = str(err.value)
    assert err.value.exit_code == 2
    assert "\n" not in text and str(path) in text, text
    if kind == "other_format":
        assert "format 1" in text


@pytest.mark.parametrize("command", ["status", "report"])
def test_a_wrong_journal_path_says_which_journal_to_give(tmp_path, capsys, command):
    """A new user gives the results (or mistypes the stem): the message names the journal to
    give instead of only saying that this is none."""
    from batcher.cli import main

    (tmp_path / "leavers.journal").write_bytes(b"")
    (tmp_path / "leavers.csv").write_text("row,status\n1,unenrolled\n")
    more = ["--results", str(tmp_path / "again.csv")] if command == "report" else []
    for given, hint in [("leavers.csv", f"its journal is {tmp_path / 'leavers.journal'}"),
                        ("leaver.journal", f"journals in {tmp_path}, newest first: "
                                           "leavers.journal")]:
        assert main([command, "--journal", str(tmp_path / given), *more]) == 2
        err = capsys.readouterr().err
        assert hint in err and err.count("\n") == 1, err
    assert main([command, "--journal", str(tmp_path / "nowhere" / "x.journal"), *more]) == 2
    assert "beside its results, as <results stem>.journal" in capsys.readouterr().err


@pytest.mark.parametrize(("seconds", "text"), [(3.2, "3 s"), (89, "89 s"), (1000, "17 min"),
                                               (11_100, "3 h 05 min")])
def test_an_eta_reads_in_seconds_minutes_or_hours(seconds, text):
    assert status_module._duration(seconds) == text


#: what a terminal obeys: clear the screen, set the window's title, ring, go back to column 0
TERMINAL_CONTROL = "\x1b[2J\x1b]0;pwned\x07\rall is well \u202edelif"


def test_a_servers_control_characters_reach_no_terminal_as_such(tmp_path):
    """Found by trying: a message with ESC sequences (from Zoho or a proxy in front of it) was
    printed as it came by `batcher status` (its last error) and in a run's abort line, where the
    operator's terminal obeyed it (cleared, retitled, the line rewritten)."""
    records = [str(554023000001000001 + i) for i in range(2)]
    rows = [("Leads", r, "554023000004000001") for r in records]
    inp = write_pairs(tmp_path / "in.csv", rows)

    def refusing(request: httpx.Request) -> httpx.Response:
        ids = json.loads(request.content)["ids"]
        return httpx.Response(207, json={"data": [
            {"code": "INVALID_DATA", "details": {"id": i}, "message": TERMINAL_CONTROL,
             "status": "error"} for i in ids]})

    env = {"ZOHO_ACCESS_TOKEN": "t", "ZOHO_API_DOMAIN": "http://127.0.0.1:9"}
    run_job(settings(tmp_path, inp, preflight=False), env,
            transports=Transports(api=httpx.MockTransport(refusing)))
    out = io.StringIO()
    print_status(tmp_path / "out.journal", stream=out)
    assert "last error: INVALID_DATA" in out.getvalue()
    assert "\\x1b[2J" in out.getvalue()  # said, escaped
    assert not {"\x1b", "\x07", "\r", "\u202e"} & set(out.getvalue()), out.getvalue()

    def denying(request: httpx.Request) -> httpx.Response:
        return httpx.Response(403, json={"code": "NO_PERMISSION", "details": {},
                                         "message": TERMINAL_CONTROL, "status": "error"})

    err = io.StringIO()
    two = tmp_path / "two"
    two.mkdir()
    stopped = run_job(settings(two, inp, preflight=False), env,
                      transports=Transports(api=httpx.MockTransport(denying)), stream=err)
    assert stopped.exit_code == 3
    assert "NO_PERMISSION" in err.getvalue()
    assert not {"\x1b", "\x07", "\r", "\u202e"} & set(err.getvalue()), err.getvalue()


# ------------------------------------------------------------------ calls a kill -9 left in doubt


def _killed_with_calls_in_flight(path: Path) -> Path:
    """A journal as a run killed by kill -9 leaves it: 5 calls counted as they left, 3 of them
    logged with their answers (the 2 others were in flight), and its pid in the lock."""
    with Journal.open(path, "fp", input_name="a.csv") as j:
        j.load(rows_table(), PLAN)
        j.mark_sent("b1")
        now = time.time()
        for k in range(3):
            j.log_call(now - 10 + k, "b1", 200, False, 0.2)
        j.count(calls=5, credits=5)
        j.add_counters()
    lock_file(path).write_text("999999\n")
    return path


def test_status_says_calls_of_unknown_outcome_as_the_summary_does(tmp_path):
    """`batcher status` showed "calls 5" after a kill -9, where the summary and the page say
    that 2 of them were in flight and whether Zoho applied them is unknown: the same words,
    and the same number under the same key in --json."""
    journal = _killed_with_calls_in_flight(tmp_path / "job.journal")
    root = Path(__file__).resolve().parent.parent
    env = {**os.environ, "PYTHONPATH": str(root)}

    def batcher(*argv: str) -> subprocess.CompletedProcess:
        return subprocess.run([sys.executable, "-m", "batcher", *argv], env=env, cwd=tmp_path,
                              capture_output=True, text=True, timeout=60)

    text, as_json = batcher("status", "--journal", str(journal)), \
        batcher("status", "--journal", str(journal), "--json")
    report = batcher("report", "--journal", str(journal), "--results", str(tmp_path / "r.csv"))

    assert (text.returncode, as_json.returncode) == (0, 0), text.stderr + as_json.stderr
    summary = json.loads((tmp_path / "r.summary.json").read_text())
    assert summary["calls_outcome_unknown"] == 2
    said = "2 of the 5 calls were in flight when a run was killed"
    assert said in report.stdout + report.stderr
    [line] = [x for x in text.stdout.splitlines() if said in x]
    assert line in report.stdout + report.stderr  # word for word the summary's line
    got = json.loads(as_json.stdout)
    assert (got["calls"], got["calls_outcome_unknown"]) == (summary["calls"], 2)


def test_status_while_a_run_holds_the_journal_counts_its_calls_in_flight_apart(tmp_path):
    """While a run holds the journal, calls not logged yet are also its own in flight: said
    as such, not as calls a killed run left in doubt."""
    journal = _killed_with_calls_in_flight(tmp_path / "job.journal")
    with Journal.open(journal, "fp"):
        st = read_status(journal)
    assert st.running and st.calls_outcome_unknown == 2
    text = st.human()
    assert "2 of the 5 calls have no answer in the journal yet: in flight now" in text, text
    assert "were in flight when a run was killed" not in text


def test_status_of_a_job_with_every_call_logged_says_nothing_of_unknown_calls(answered):
    with Journal.open(answered, None) as j:
        j.log_call(time.time() - 5, "b1", 200, False, 0.1)
        j.add_counters()
    st = read_status(answered)
    assert st.calls_outcome_unknown == 0 and "outcome" not in st.human()
    assert "unknown" not in st.human()
    assert st.as_dict()["calls_outcome_unknown"] == 0
