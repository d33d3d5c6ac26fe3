"""The command line as an operator meets it: exit codes, messages, kill -9 and resume, locks."""

from __future__ import annotations

import datetime as dt
import html
import json
import os
import re
import shlex
import signal
import sqlite3
import subprocess
import sys
import time
from collections import Counter
from contextlib import closing
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from batcher.cli import main
from batcher.journal import stored_ids
from batcher.sandbox.world import World

from .conftest import REFRESH, SECRET, read_results, write_pairs
from .test_e2e import make_rows

ROOT = Path(__file__).resolve().parent.parent
SAMPLE = ROOT / "sample_data" / "offboarding.csv"


def batcher(*args: str, env: dict[str, str] | None = None) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-m", "batcher", *args],
                            env={**os.environ, **(env or {})}, cwd=ROOT,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


@pytest.mark.parametrize(("given", "code"), [("sample", 1), ("missing", 2)])
def test_the_program_exits_with_its_code_whatever_thread_a_library_left_running(given, code):
    """A worker thread still running when the command is done (an Arrow pool's, an executor's)
    neither hangs the program in the interpreter's teardown nor changes its exit code."""
    program = ("import sys, threading\n"
               "from batcher.cli import entry\n"
               "threading.Thread(target=threading.Event().wait, name='a library worker').start()\n"
               "sys.argv[0] = 'batcher'\n"
               "entry()\n")
    path = SAMPLE if given == "sample" else ROOT / "no-such-list.csv"
    done = subprocess.run([sys.executable, "-c", program, "plan", str(path)], cwd=ROOT,
                          capture_output=True, text=True, timeout=60)
    assert done.returncode == code, done.stderr
    assert "Traceback" not in done.stderr and "Fatal" not in done.stderr


@pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGTERM])
@pytest.mark.parametrize("command", [["plan", str(SAMPLE)], ["status", "--journal", "x.journal"]])
def test_a_signal_while_the_program_loads_stops_it_with_exit_3_and_no_traceback(sig, command):
    """Ctrl-C in the program's first tens of milliseconds gave a KeyboardInterrupt traceback
    through an import (SIGTERM: a death by the signal, 143). Loading is made slow here (the
    command line's module takes a second to import) so the signal lands inside it."""
    program = ("import importlib.abc, sys, time\n"
               "class Slow(importlib.abc.MetaPathFinder):\n"
               "    def find_spec(self, name, path, target=None):\n"
               "        if name == 'batcher.cli':\n"
               "            time.sleep(1.5)\n"
               "sys.meta_path.insert(0, Slow())\n"
               "sys.argv[0] = 'batcher'\n"
               "from batcher.program import entry\n"
               "print('loading', flush=True)\n"
               "entry()\n")
    proc = subprocess.Popen([sys.executable, "-c", program, *command], cwd=ROOT, text=True,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    assert proc.stdout.readline() == "loading\n"
    time.sleep(0.3)
    proc.send_signal(sig)
    out, err = proc.communicate(timeout=60)
    assert proc.returncode == 3, err
    assert "Traceback" not in err and f"interrupted by {sig.name}" in err


def test_plan_json_counts_the_sample(capsys):
    code = main(["plan", str(SAMPLE), "--json"])
    doc = json.loads(capsys.readouterr().out)
    assert code == 1  # the sample carries deliberately bad rows
    assert doc["rows"] == doc["pairs"] + doc["invalid"] + doc["duplicates"]
    assert doc["invalid"] == 4 and doc["duplicates"] == 1
    assert doc["lower_bound"] <= doc["batches"] <= doc["naive_batches"]
    for key in ("modules", "cadences"):
        assert key in doc


_PROCESS_PROBE = """
import ctypes, re, sys
import numpy as np
from batcher.cli import main
import batcher.job

heap_during_setup = []
if sys.argv[1] == "run":  # what a large array gets when the job starts sending
    lean_heap = batcher.job.lean_heap
    def probe():
        before = libc.mallinfo2().hblks
        big = np.ones(50_000_000 // 8)
        heap_during_setup.append(libc.mallinfo2().hblks - before)
        del big
        lean_heap()
    batcher.job.lean_heap = probe

class Mallinfo2(ctypes.Structure):
    _fields_ = [(name, ctypes.c_size_t) for name in
                ("arena ordblks smblks hblks hblkhd usmblks fsmblks uordblks fordblks keepcost"
                 .split())]

libc = ctypes.CDLL(None)
libc.mallinfo2.restype = Mallinfo2
main(sys.argv[1:])
before = libc.mallinfo2().hblks
big = np.ones(50_000_000 // 8)  # 50 MB: glibc maps its own pages for this by default
status = open("/proc/self/status").read()
print(re.search(r"THP_enabled:\\s*(\\d)", status).group(1), libc.mallinfo2().hblks - before,
      *heap_during_setup)
"""


@pytest.mark.skipif(not Path("/proc/self/status").exists(), reason="Linux only")
def test_the_command_line_keeps_fresh_memory_cheap_for_its_own_process():
    """A 10M-pair plan spent seconds faulting in fresh memory on a VM: the CLI process turns
    huge pages off and keeps large arrays' pages in glibc's heap for reuse."""
    out = _probe_process("plan", str(SAMPLE))
    assert out == ["0", "0"]  # no huge pages; the array in the heap


def _probe_process(*argv: str, env: dict[str, str] | None = None) -> list[str]:
    out = subprocess.run([sys.executable, "-c", _PROCESS_PROBE, *argv], capture_output=True,
                         text=True, env={**{k: v for k, v in os.environ.items()
                                            if not k.startswith(("NUMPY_MADVISE", "MALLOC_"))},
                                         **(env or {})})
    assert "Traceback" not in out.stderr, out.stderr
    return out.stdout.strip().splitlines()[-1].split()


@pytest.mark.skipif(not Path("/proc/self/status").exists(), reason="Linux only")
def test_a_job_keeps_fresh_memory_cheap_while_it_plans_then_gives_it_back_to_send(tmp_path,
                                                                                  serve):
    """The 10M-pair job reached its first call 0.5-0.8 s sooner with the plan's heap; a job that
    then sends for hours must not keep it: large arrays get their own pages again (and go back
    to the system when freed) from the first call on."""
    rows = make_rows(40, 2)
    live = serve(World.from_pairs(rows))
    inp = write_pairs(tmp_path / "in.csv", rows)
    out = _probe_process("run", str(inp), "--results", str(tmp_path / "out.csv"), "--quiet",
                         env=live.env)
    thp, after_setup, during_setup = out
    assert thp == "0"
    assert during_setup == "0"  # planned and stored with the heap kept
    assert after_setup == "1"  # sending: a 50 MB array is mapped on its own, as glibc does
    assert len(read_results(tmp_path / "out.csv")) == len(rows)


def test_plan_human_output_and_clean_input_exit_0(tmp_path, capsys):
    inp = write_pairs(tmp_path / "in.csv", make_rows(50, 3))
    assert main(["plan", str(inp)]) == 0
    out = capsys.readouterr().out
    assert "calls planned" in out and "lower bound" in out


@pytest.mark.parametrize("name", sorted(p.name for p in (ROOT / "sample_data" / "bad").iterdir()
                                        if p.name not in ("float_ids.parquet", "ragged.csv")))
def test_unusable_inputs_exit_2_with_one_line_and_no_traceback(name, capsys):
    code = main(["plan", str(ROOT / "sample_data" / "bad" / name)])
    err = capsys.readouterr().err
    assert code == 2
    assert name in err and "Traceback" not in err
    assert len(err.strip().splitlines()) == 1


def test_a_file_excel_saved_as_plain_csv_is_refused_before_any_call(tmp_path, serve, capsys,
                                                                      monkeypatch):
    """Excel's "CSV" (Windows-1252): a name with an umlaut in a column batcher only carries. It
    was planned and sent, then its results could never be written (every re-run exit 3)."""
    rows = make_rows(5, 2)
    live = serve(World.from_pairs(rows))
    inp = tmp_path / "offboard.csv"
    inp.write_bytes(("Module,Record Id,Cadence Id,Name\r\n" + "".join(
        f"{m},{r},{c},M\xfcller\r\n" for m, r, c in rows)).encode("cp1252"))
    for k, v in live.env.items():
        monkeypatch.setenv(k, v)
    assert main(["run", str(inp), "--results", str(tmp_path / "out.csv")]) == 2
    err = capsys.readouterr().err
    assert "is not UTF-8 text (line 2 holds" in err and "CSV UTF-8" in err
    assert len(err.strip().splitlines()) == 1 and "Traceback" not in err
    assert live.sandbox.calls == []
    inp.write_text(inp.read_bytes().decode("cp1252"), encoding="utf-8", newline="")  # re-saved
    assert main(["run", str(inp), "--results", str(tmp_path / "out.csv"), "--quiet"]) == 0
    assert {r["Name"] for r in read_results(tmp_path / "out.csv")} == {"Müller"}


def test_results_sharing_a_stem_with_another_jobs_are_refused_saying_what_and_whose(
        tmp_path, serve, capsys, monkeypatch):
    """--results r.csv beside a finished job's r.parquet (its summary, retry file and report
    are named by the stem both share), under another --journal: refused before any call, and
    the reason says so: the other job's results and files, and its journal — not, as before,
    "r.parquet holds the results of a real job whose journal other.journal is gone" (a journal
    that never belonged to it, and is not gone: it is new)."""
    rows = make_rows(5, 2)
    live = serve(World.from_pairs(rows))
    inp = write_pairs(tmp_path / "in.csv", rows)
    for k, v in live.env.items():
        monkeypatch.setenv(k, v)
    first = tmp_path / "r.parquet"
    assert main(["run", str(inp), "--results", str(first), "--quiet"]) == 0
    calls = len(live.sandbox.calls)
    capsys.readouterr()

    theirs, ours = tmp_path / "r.journal", tmp_path / "other.journal"
    assert main(["run", str(inp), "--results", str(tmp_path / "r.csv"), "--journal", str(ours),
                 "--quiet"]) == 2
    err = capsys.readouterr().err
    assert len(err.strip().splitlines()) == 1 and "Traceback" not in err
    assert f"{first} holds the results of another, real job" in err
    assert "r.summary.json, r.retry.csv, r.report.html" in err and "stem 'r'" in err
    assert f"its journal is {theirs}, not this job's {ours}" in err
    assert f"--journal {theirs} to continue that job" in err and "is gone" not in err
    assert "such as r-2.csv" in err

    theirs.rename(tmp_path / "kept.journal")  # its journal moved away: now that is said
    assert main(["run", str(inp), "--results", str(tmp_path / "r.csv"), "--quiet"]) == 2
    err = capsys.readouterr().err
    assert f"its journal {theirs} is gone" in err and "--journal" not in err
    assert len(live.sandbox.calls) == calls and not (tmp_path / "r.csv").exists()
    # the name it suggests is free
    assert main(["run", str(inp), "--results", str(tmp_path / "r-2.csv"), "--quiet"]) == 0


def test_run_without_credentials_is_exit_3_and_names_the_variables(tmp_path, capsys):
    inp = write_pairs(tmp_path / "in.csv", make_rows(5, 1))
    env_keys = [k for k in os.environ if k.startswith("ZOHO_")]
    assert not env_keys, "the test environment must not carry Zoho credentials"
    code = main(["run", str(inp), "--results", str(tmp_path / "out.csv"),
                 "--api-domain", "http://127.0.0.1:9", "--accounts-url", "http://127.0.0.1:9"])
    err = capsys.readouterr().err
    assert code == 3
    assert "ZOHO_REFRESH_TOKEN" in err


def test_plain_http_to_a_remote_host_is_refused(tmp_path, capsys, monkeypatch):
    inp = write_pairs(tmp_path / "in.csv", make_rows(5, 1))
    code = main(["run", str(inp), "--results", str(tmp_path / "out.csv"), "--dry-run",
                 "--no-preflight", "--api-domain", "http://www.zohoapis.com"])
    assert code == 2
    assert "http" in capsys.readouterr().err


def test_results_folder_must_exist(tmp_path, capsys):
    inp = write_pairs(tmp_path / "in.csv", make_rows(5, 1))
    code = main(["run", str(inp), "--results", str(tmp_path / "nope" / "out.csv")])
    assert code == 2
    assert f"does not exist; create it first (mkdir -p {tmp_path / 'nope'})" in \
        capsys.readouterr().err


def test_kill_9_then_the_same_command_resumes_without_resending_answers(tmp_path, serve):
    rows = make_rows(1500, 5, seed=9)
    live = serve(World.from_pairs(rows), latency=0.05, concurrency_limit=10)
    inp = write_pairs(tmp_path / "in.csv", rows)
    args = ["run", str(inp), "--results", str(tmp_path / "out.csv"), "--concurrency", "3"]

    proc = batcher(*args, env=live.env)
    deadline = time.monotonic() + 60
    while len(live.sandbox.calls) < 6 and time.monotonic() < deadline:
        time.sleep(0.02)
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    assert proc.returncode == -signal.SIGKILL
    calls_at_kill = len(live.sandbox.calls)

    db = sqlite3.connect(tmp_path / "out.journal")
    answered = {(json.dumps(list(stored_ids(r))), json.dumps(json.loads(c))) for r, c in db.execute(
        "SELECT record_ids, cadence_ids FROM batches WHERE state = 'answered'")}
    db.close()
    assert answered, "the kill came before any answer was recorded; make the job longer"

    proc = batcher(*args, env=live.env)
    out, err = proc.communicate(timeout=120)
    assert proc.returncode == 0, err
    assert set(live.sandbox.removed) == set(rows)
    assert set(live.sandbox.named_pairs) <= set(rows)
    for call in live.sandbox.calls[calls_at_kill:]:
        key = (json.dumps(list(call.record_ids)), json.dumps(list(call.cadence_ids)))
        assert key not in answered, "a batch answered before the kill was sent again"
    results = read_results(tmp_path / "out.csv")
    assert len(results) == len(rows)
    assert {r["status"] for r in results} <= {"unenrolled", "not_enrolled"}
    # a batch in flight at the kill was applied but its answer lost: its re-send finds nothing
    # left to remove, and the row says so honestly
    for r in results:
        assert r["status"] == "unenrolled" or "earlier attempt" in r["message"], r
    for blob in (out, err):
        assert SECRET not in blob and REFRESH not in blob


@pytest.mark.parametrize("port", ["-1", "70000", "8o80"])
def test_a_sandbox_port_out_of_range_is_bad_usage(capsys, port):
    """`batcher sandbox --port -1` said "internal error (OverflowError …) … re-run to resume",
    exit 3: a port out of range is bad usage, exit 2, one line."""
    assert main(["sandbox", "--port", port]) == 2
    err = capsys.readouterr().err
    assert "is not a port" in err and "internal error" not in err


def test_second_run_on_the_same_journal_is_refused_while_the_first_runs(tmp_path, serve):
    rows = make_rows(800, 60, seed=2, max_k=2)  # ~60 calls, one at a time, 0.1 s each: ~6 s
    live = serve(World.from_pairs(rows), latency=0.1)
    inp = write_pairs(tmp_path / "in.csv", rows)
    args = ["run", str(inp), "--results", str(tmp_path / "out.csv"), "--concurrency", "1"]
    first = batcher(*args, env=live.env)
    deadline = time.monotonic() + 60
    while not live.sandbox.calls and time.monotonic() < deadline:
        time.sleep(0.02)
    second = batcher(*args, env=live.env)
    _, err = second.communicate(timeout=60)
    assert second.returncode == 2
    assert "in use" in err
    first.send_signal(signal.SIGTERM)
    first.communicate(timeout=60)
    assert first.returncode == 3  # interrupted, resumable
    statuses = {r["status"] for r in read_results(tmp_path / "out.csv")}
    assert "not_sent" in statuses


def test_report_rewrites_results_from_the_journal(tmp_path, serve, monkeypatch):
    rows = make_rows(40, 3)
    live = serve(World.from_pairs(rows))
    inp = write_pairs(tmp_path / "in.csv", rows)
    for k, v in live.env.items():
        monkeypatch.setenv(k, v)
    assert main(["run", str(inp), "--results", str(tmp_path / "out.csv"), "--quiet"]) == 0
    assert main(["report", "--journal", str(tmp_path / "out.journal"),
                 "--results", str(tmp_path / "again.parquet")]) == 0
    # the job's duration, kept in the journal (not 0.0 s)
    ran, again_s = (json.loads((tmp_path / f"{stem}.summary.json").read_text())["duration_s"]
                    for stem in ("out", "again"))
    assert ran > 0 and again_s == pytest.approx(ran, abs=0.02)
    import pyarrow.parquet as pq

    again = pq.read_table(tmp_path / "again.parquet").to_pylist()
    first = read_results(tmp_path / "out.csv")
    assert [r["record_id"] for r in again] == [r["record_id"] for r in first]
    assert {r["status"] for r in again} == {"unenrolled"}


def test_report_of_a_budget_stopped_job_names_the_budget_in_its_resume_command(
        tmp_path, serve, monkeypatch):
    """Found by trying: a job stopped by its nightly `--max-calls`, its results rewritten by
    `batcher report` (the way the run says to get them after a full disk), got a page whose
    "command that resumes" had no `--max-calls`: copied, it would send the whole rest of the
    job at once. The page now gives the run's own flags again."""
    rows = make_rows(300, 3)
    live = serve(World.from_pairs(rows))
    inp = write_pairs(tmp_path / "in.csv", rows)
    for k, v in live.env.items():
        monkeypatch.setenv(k, v)
    assert main(["run", str(inp), "--results", str(tmp_path / "out.csv"), "--quiet",
                 "--max-calls", "2", "--concurrency", "3", "--no-preflight"]) == 3
    assert main(["report", "--journal", str(tmp_path / "out.journal"),
                 "--results", str(tmp_path / "again.csv")]) == 3
    page = (tmp_path / "again.report.html").read_text()
    assert "--max-calls 2" in page and "--concurrency 3" in page and "--no-preflight" in page


def test_report_says_why_a_job_stopped_and_never_calls_a_stopped_job_finished(
        tmp_path, serve, monkeypatch):
    """Found by trying: the page of a job stopped by its budget said "finished <time>" beside
    exit 3, and `batcher report` dropped why it stopped (the journal kept it, never read); a
    stop reason must not outlive the run that had it either."""
    rows = make_rows(300, 3)
    live = serve(World.from_pairs(rows))
    inp = write_pairs(tmp_path / "in.csv", rows)
    for k, v in live.env.items():
        monkeypatch.setenv(k, v)
    run = ["run", str(inp), "--results", str(tmp_path / "out.csv"), "--quiet"]
    report = ["report", "--journal", str(tmp_path / "out.journal"),
              "--results", str(tmp_path / "again.csv")]
    assert main([*run, "--max-calls", "1"]) == 3
    for page in ("out", "again"):
        if page == "again":
            assert main(report) == 3
        html = (tmp_path / f"{page}.report.html").read_text()
        assert re.search(r"stopped \d{4}-", html) and not re.search(r"finished \d{4}-", html)
        assert "--max-calls 1 reached" in html, page
    assert main(run) == 0
    assert main(report) == 0
    html = (tmp_path / "again.report.html").read_text()
    assert re.search(r"finished \d{4}-", html) and "--max-calls 1 reached" not in html
    summary = json.loads((tmp_path / "again.summary.json").read_text())
    assert summary["extra"]["aborted"] is None


def test_report_and_status_of_a_job_stopped_before_its_plan_was_loaded(tmp_path, capsys):
    """A job stopped before its plan was loaded (a signal while it planned, a preflight that
    met only 429s) is one to resume: `report` exits 3 saying so (it was 2, "holds no job": a
    wrong input, do not retry), and `status` does not show it as holding nothing left."""
    from batcher.journal import Journal

    journal = tmp_path / "out.journal"
    with Journal.open(journal, "fp"):
        pass
    assert main(["report", "--journal", str(journal), "--results",
                 str(tmp_path / "again.csv")]) == 3
    err = capsys.readouterr().err
    assert "holds no plan" in err and "re-run the job's command" in err
    assert not (tmp_path / "again.csv").exists()
    assert main(["status", "--journal", str(journal)]) == 0
    out = capsys.readouterr().out
    assert "stopped before its plan was loaded" in out and "left: 0" not in out


def test_report_says_when_the_input_is_gone_and_its_columns_are_left_out(
        tmp_path, serve, monkeypatch, capsys):
    rows = make_rows(20, 2)
    live = serve(World.from_pairs(rows))
    inp = tmp_path / "in.csv"
    inp.write_text("module,record_id,cadence_id,email\n"
                   + "".join(f"{m},{r},{c},p{i}@example.com\n" for i, (m, r, c) in enumerate(rows)))
    for k, v in live.env.items():
        monkeypatch.setenv(k, v)
    assert main(["run", str(inp), "--results", str(tmp_path / "out.csv"), "--quiet"]) == 0
    assert read_results(tmp_path / "out.csv")[0]["email"] == "p0@example.com"
    capsys.readouterr()
    inp.rename(tmp_path / "moved.csv")
    assert main(["report", "--journal", str(tmp_path / "out.journal"),
                 "--results", str(tmp_path / "again.csv")]) == 0
    err = capsys.readouterr().err
    assert "own columns are left out" in err and "in.csv is gone" in err
    again = read_results(tmp_path / "again.csv")
    assert len(again) == len(rows) and "email" not in again[0]


def test_cadences_lists_the_org_cadences(tmp_path, serve, capsys, monkeypatch):
    world = World.from_pairs(make_rows(5, 2))
    live = serve(world)
    for k, v in live.env.items():
        monkeypatch.setenv(k, v)
    assert main(["cadences", "--json"]) == 0
    listed = json.loads(capsys.readouterr().out)
    assert {c["id"] for c in listed} == set(world.cadences)
    assert all(c["type"] == "manual_enrollment" for c in listed)
    assert main(["cadences", "--module", "leads"]) == 0
    assert capsys.readouterr().out.strip().endswith(f"{len(world.cadences)} cadences")
    # a typo (or a module without cadences) is not "0 cadences": exit 2 naming the modules
    assert main(["cadences", "--module", "Lead"]) == 2
    err = capsys.readouterr().err
    assert "'Lead'" in err and "modules with cadences: Leads" in err


def _subcommands() -> dict:
    from batcher.cli import _parser

    parser = _parser()
    sub = next(a for a in parser._actions if a.__class__.__name__ == "_SubParsersAction")
    return dict(sub.choices)


@pytest.mark.parametrize("name", sorted(_subcommands()))
def test_every_command_and_flag_has_help_an_example_and_the_exit_codes(name):
    sp = _subcommands()[name]
    helps = {a.dest: a.help for a in sp._actions if a.dest != "help"}
    assert [d for d, h in helps.items() if not h] == [], f"{name}: flags without help"
    text = sp.format_help()
    assert "example:" in text and f"batcher {name}" in text.split("example:")[1]
    assert "exit codes:" in text


def test_plan_and_cadences_help_give_their_own_exit_codes():
    """Found by trying: `plan --help` and `cadences --help` listed run's codes ("the job
    finished but some rows are failed", "re-run to resume") for commands that send nothing."""
    plan, cadences = (_subcommands()[n].format_help().split("exit codes:")[1]
                      for n in ("plan", "cadences"))
    assert "some rows are invalid" in plan and "failed" not in plan and "3" not in plan
    assert "cadences were listed" in cadences and "rows" not in cadences


def test_a_tilde_the_shell_left_in_a_path_is_the_home_folder(tmp_path, serve, capsys,
                                                              monkeypatch):
    """Found by trying: `--results "~/out/{date}.csv"` (quoted, or a crontab variable) said
    "folder ~/out does not exist"; `plan "~/leavers.csv"` "no such file"."""
    rows = make_rows(5, 1)
    for k, v in {**serve(World.from_pairs(rows)).env, "HOME": str(tmp_path)}.items():
        monkeypatch.setenv(k, v)
    write_pairs(tmp_path / "in.csv", rows)
    assert main(["plan", "~/in.csv"]) == 0
    assert main(["run", "~/in.csv", "--results", "~/out.csv", "--quiet",
                 "--journal", "~/job.journal"]) == 0, capsys.readouterr().err
    assert (tmp_path / "out.csv").is_file() and (tmp_path / "job.journal").is_file()
    assert main(["status", "--journal", "~/job.journal"]) == 0
    assert main(["report", "--journal", "~/job.journal", "--results", "~/again.csv"]) == 0
    assert (tmp_path / "again.csv").is_file()


def test_run_json_prints_the_summary_on_stdout_and_results_take_the_date(tmp_path, serve):
    rows = make_rows(20, 2)
    live = serve(World.from_pairs(rows))
    inp = write_pairs(tmp_path / "in.csv", rows)
    out = subprocess.run([sys.executable, "-m", "batcher", "run", str(inp), "--results",
                          str(tmp_path / "nightly-{date}.csv"), "--json"],
                         capture_output=True, text=True, env={**os.environ, **live.env},
                         timeout=120)
    assert out.returncode == 0, out.stderr
    summary = json.loads(out.stdout)  # the only thing on stdout
    assert summary["by_status"] == {"unenrolled": len(rows)} and summary["exit_code"] == 0
    today = time.strftime("%Y-%m-%d", time.gmtime())
    assert summary["results_path"] == str(tmp_path / f"nightly-{today}.csv")
    assert (tmp_path / f"nightly-{today}.journal").exists()  # the journal follows the results
    assert summary["report_path"] == str(tmp_path / f"nightly-{today}.report.html")
    assert Path(summary["report_path"]).read_text().lower().startswith("<!doctype html>")
    # the nightly recipe's own paths, {date} and all, find the job with status and report
    nightly = str(tmp_path / "nightly-{date}")
    status = subprocess.run([sys.executable, "-m", "batcher", "status", "--journal",
                             f"{nightly}.journal", "--json"], capture_output=True, text=True,
                            timeout=60)
    assert status.returncode == 0, status.stderr
    assert json.loads(status.stdout)["rows"] == len(rows)
    again = subprocess.run([sys.executable, "-m", "batcher", "report", "--journal",
                            f"{nightly}.journal", "--results", f"{nightly}-again.csv"],
                           capture_output=True, text=True, timeout=60)
    assert again.returncode == 0, again.stderr
    assert (tmp_path / f"nightly-{today}-again.csv").exists()
    assert not list(tmp_path.glob("*{date}*"))


@pytest.mark.parametrize("flag,name", [("--results", "nightly-{DATE}.csv"),
                                       ("--results", "nightly-{time}.csv"),
                                       ("--journal", "nightly-{Date}.journal")])
def test_a_placeholder_other_than_date_is_refused_before_anything(tmp_path, serve, monkeypatch,
                                                                  capsys, flag, name):
    """Found by trying: `--results 'out/{DATE}.csv'` was taken literally — one file every night,
    whose journal then refused the next night's list."""
    rows = make_rows(10, 2)
    live = serve(World.from_pairs(rows))
    inp = write_pairs(tmp_path / "in.csv", rows)
    for k, v in live.env.items():
        monkeypatch.setenv(k, v)
    args = ["--results", str(tmp_path / "out.csv")] if flag == "--journal" else []

    code = main(["run", str(inp), *args, flag, str(tmp_path / name)])

    err = capsys.readouterr().err
    assert code == 2, err
    assert "{date}" in err and name[name.index("{"):name.index("}") + 1] in err
    assert len(err.strip().splitlines()) == 1 and not live.sandbox.calls
    assert sorted(p.name for p in tmp_path.iterdir()) == ["in.csv"]


@pytest.mark.parametrize("argv", [["report", "--journal", "j-{date}.journal", "--results",
                                   "{DATE}.csv"],
                                  ["report", "--journal", "{time}.journal", "--results", "r.csv"],
                                  ["status", "--journal", "{Date}.journal"]])
def test_report_and_status_refuse_a_placeholder_other_than_date(tmp_path, capsys, argv):
    """Found by trying: `batcher report --results 'o1/{DATE}.csv'` wrote o1/{DATE}.csv."""
    code = main([a if a.startswith("--") or a in ("report", "status") else str(tmp_path / a)
                 for a in argv])

    err = capsys.readouterr().err
    assert code == 2, err
    assert "{date} is the one placeholder" in err and len(err.strip().splitlines()) == 1
    assert list(tmp_path.iterdir()) == []


def test_cadence_with_all_cadences_is_refused_not_one_of_them_ignored(tmp_path, capsys):
    """Found by trying: `--cadence X --all-cadences` dropped X without a word."""
    inp = tmp_path / "records.csv"
    inp.write_text("record_id,module\n554023000001000001,Leads\n")

    code = main(["run", str(inp), "--results", str(tmp_path / "out.csv"), "--dry-run",
                 "--cadence", "554023000004000001", "--all-cadences"])

    err = capsys.readouterr().err
    assert code == 2, err
    assert "--cadence and --all-cadences" in err and len(err.strip().splitlines()) == 1
    assert sorted(p.name for p in tmp_path.iterdir()) == ["records.csv"]


def test_config_file_names_the_variables_that_hold_the_credentials(tmp_path, serve, monkeypatch):
    rows = make_rows(10, 2)
    live = serve(World.from_pairs(rows))
    inp = write_pairs(tmp_path / "in.csv", rows)
    monkeypatch.setenv("ACME_ID", live.env["ZOHO_CLIENT_ID"])
    monkeypatch.setenv("ACME_SECRET", live.env["ZOHO_CLIENT_SECRET"])
    monkeypatch.setenv("ACME_REFRESH", live.env["ZOHO_REFRESH_TOKEN"])
    config = tmp_path / "batcher.toml"
    config.write_text(f'[zoho]\napi_domain = "{live.base_url}"\naccounts_url = "{live.base_url}"\n'
                      '[zoho.env]\nclient_id = "ACME_ID"\nclient_secret = "ACME_SECRET"\n'
                      'refresh_token = "ACME_REFRESH"\n')
    assert main(["run", str(inp), "--results", str(tmp_path / "out.csv"), "--quiet",
                 "--config", str(config)]) == 0
    assert set(live.sandbox.removed) == set(rows)
    config.write_text(f'[zoho]\nclient_secret = "{SECRET}"\n')
    assert main(["run", str(inp), "--results", str(tmp_path / "out2.csv"), "--quiet",
                 "--config", str(config)]) == 2  # a secret written in the file is refused


def test_report_checks_its_results_path_as_run_does(tmp_path, serve, monkeypatch, capsys):
    """`report --results m.txt` used to write CSV under that name and overwrite the job's own
    retry and summary files beside it."""
    rows = make_rows(20, 2)
    live = serve(World.from_pairs(rows))
    inp = write_pairs(tmp_path / "in.csv", rows)
    for k, v in live.env.items():
        monkeypatch.setenv(k, v)
    assert main(["run", str(inp), "--results", str(tmp_path / "out.csv"), "--quiet"]) == 0
    summary = (tmp_path / "out.summary.json").read_bytes()
    assert main(["report", "--journal", str(tmp_path / "out.journal"),
                 "--results", str(tmp_path / "out.txt")]) == 2
    assert "unknown extension" in capsys.readouterr().err
    assert not (tmp_path / "out.txt").exists()
    assert (tmp_path / "out.summary.json").read_bytes() == summary


def test_sighup_stops_a_run_like_sigterm(tmp_path, serve):
    """An ssh session that drops sends SIGHUP: the run stops with exit 3 and its results."""
    rows = make_rows(800, 60, seed=2, max_k=2)
    live = serve(World.from_pairs(rows), latency=0.1)
    inp = write_pairs(tmp_path / "in.csv", rows)
    proc = batcher("run", str(inp), "--results", str(tmp_path / "out.csv"), "--concurrency", "1",
                   env=live.env)
    deadline = time.monotonic() + 60
    while not live.sandbox.calls and time.monotonic() < deadline:
        time.sleep(0.02)
    proc.send_signal(signal.SIGHUP)
    _, err = proc.communicate(timeout=30)
    assert proc.returncode == 3, err
    assert "SIGHUP" in err and "Traceback" not in err
    assert len(read_results(tmp_path / "out.csv")) == len(rows)


def test_log_format_json_makes_every_stderr_line_one_object(tmp_path, serve):
    rows = make_rows(30, 2)
    live = serve(World.from_pairs(rows[5:]), fault_profile="throttled")
    inp = write_pairs(tmp_path / "in.csv", rows + [("Leads", "123", rows[0][2])])
    out = subprocess.run([sys.executable, "-m", "batcher", "run", str(inp), "--results",
                          str(tmp_path / "out.csv"), "--log-format", "json"],
                         capture_output=True, text=True, env={**os.environ, **live.env},
                         timeout=120)
    assert out.returncode == 1, out.stderr  # one invalid row
    lines = [json.loads(line) for line in out.stderr.splitlines()]  # every line parses
    events = [e["event"] for e in lines]
    assert events[0] == "start" and events[-1] == "end"
    assert all({"event", "ts", "message"} <= set(e) for e in lines)
    end = lines[-1]
    assert end["exit_code"] == 1 and end["summary"]["by_status"]["invalid"] == 1


def test_an_input_error_is_json_too_when_the_log_is(tmp_path):
    out = subprocess.run([sys.executable, "-m", "batcher", "run", str(tmp_path / "none.csv"),
                          "--results", str(tmp_path / "o.csv"), "--log-format", "json", "--json"],
                         capture_output=True, text=True, timeout=60)
    assert out.returncode == 2
    line = json.loads(out.stderr)
    assert line["event"] == "error" and line["exit_code"] == 2 and "no such file" in line["message"]
    assert json.loads(out.stdout) == {"exit_code": 2, "error": line["message"]}


def test_plan_hints_at_swapped_columns_only_when_cadences_look_like_records(tmp_path, capsys):
    """More distinct cadence ids than an org can have cadences: the columns are likely
    swapped, and stderr says how to name them; a normal file gets no hint."""
    from batcher.inputs.scan import ORG_CADENCES_MAX

    records = [str(5_540_230_000_004_092_008 + 7919 * j) for j in range(3)]
    swapped = [("Leads", records[i % 3], str(554023000001000000 + i))
               for i in range(ORG_CADENCES_MAX + 1)]
    main(["plan", str(write_pairs(tmp_path / "swapped.csv", swapped)), "--json"])
    err = capsys.readouterr().err
    assert "swapped" in err and "--record-column cadence_id --cadence-column record_id" in err
    assert len(err.strip().splitlines()) == 1
    main(["plan", str(write_pairs(tmp_path / "fine.csv", make_rows(200, 12))), "--json"])
    assert "swapped" not in capsys.readouterr().err
    # found by trying: one cadence under as many modules (a module column holding another
    # column's values) is one cadence id, not a thousand: no hint
    modules = [(f"M{i}__c", records[i % 3], "554023000004092008")
               for i in range(ORG_CADENCES_MAX + 1)]
    main(["plan", str(write_pairs(tmp_path / "modules.csv", modules)), "--json"])
    assert "swapped" not in capsys.readouterr().err
    # and `run` says it before it plans
    main(["run", str(tmp_path / "swapped.csv"), "--results", str(tmp_path / "out.csv"),
          "--dry-run", "--no-preflight", "--quiet"])
    main(["run", str(tmp_path / "swapped.csv"), "--results", str(tmp_path / "out.csv"),
          "--dry-run", "--no-preflight"])
    err = capsys.readouterr().err
    assert err.count("--record-column cadence_id --cadence-column record_id") == 1, err


def test_a_job_whose_list_was_edited_since_says_so_and_sends_nothing(tmp_path, serve, monkeypatch,
                                                                     capsys):
    """The nightly list edited between a stopped run and its re-run: exit 2, nothing sent, and
    the message names the file as changed (not "made for another file")."""
    rows = make_rows(30, 2)
    live = serve(World.from_pairs(rows))
    inp = tmp_path / "in.csv"
    write_pairs(inp, rows)
    for k, v in live.env.items():
        monkeypatch.setenv(k, v)
    out = str(tmp_path / "out.csv")
    assert main(["run", str(inp), "--results", out, "--max-calls", "1", "--quiet"]) == 3
    calls = len(live.sandbox.calls)
    inp.write_text(inp.read_text() + f"Leads,{rows[0][1][:-1]}9,{rows[0][2]}\n")
    capsys.readouterr()
    assert main(["run", str(inp), "--results", out, "--quiet"]) == 2
    err = capsys.readouterr().err
    assert "has changed since" in err and str(inp.resolve()) in err
    assert "another file" not in err
    assert len(live.sandbox.calls) == calls


@pytest.mark.parametrize(("first", "then", "said"), [
    (["--module", "Leads"], ["--module", "Contacts"],
     "with --module Leads; this command gives --module Contacts"),
    (["--module", "Leads", "--cadence", "554023000004092008"],
     ["--module", "Leads", "--cadence", "554023000004092009"],
     "with --cadence 554023000004092008; this command gives --cadence 554023000004092009")])
def test_a_flag_changed_on_resume_is_named_not_taken_for_a_changed_file(
        tmp_path, serve, monkeypatch, capsys, first, then, said):
    """Resuming with another --module (or --cadence) than the job began with was refused as
    "the file has changed since … put that file back", the file being the same byte for byte:
    the flags that differ are named."""
    records = [str(554023000001798600 + i) for i in range(150)]
    cadences = ["554023000004092008", "554023000004092009"]
    live = serve(World.from_pairs([("Leads", r, c) for r in records for c in cadences]))
    for k, v in live.env.items():
        monkeypatch.setenv(k, v)
    inp = tmp_path / "in.csv"
    if "--cadence" in first:
        inp.write_text("record_id\n" + "\n".join(records) + "\n")
    else:
        inp.write_text("record_id,cadence_id\n" + "".join(f"{r},{c}\n" for r in records
                                                            for c in cadences))
    out = str(tmp_path / "out.csv")
    assert main(["run", str(inp), *first, "--results", out, "--max-calls", "1", "--quiet"]) == 3
    capsys.readouterr()
    calls = len(live.sandbox.calls)
    assert main(["run", str(inp), *then, "--results", out, "--quiet"]) == 2
    err = capsys.readouterr().err
    assert said in err and "has changed" not in err, err
    assert len(live.sandbox.calls) == calls
    assert main(["run", str(inp), *first, "--results", out, "--quiet"]) == 0


@pytest.mark.parametrize("kind", ["csv", "parquet", "xlsx"])
def test_a_column_named_twice_is_carried_twice_as_an_xlsx_sheet_names_it(tmp_path, capsys, kind):
    """Two "Email" columns (Excel exports them happily): every column is carried, the later
    one as "Email (2)" in every input format alike (before, a CSV or Parquet input carried only
    the first, while an .xlsx carried both), "(3)" when the header holds an "Email (2)" of its
    own; and the retry file stays an input whose run carries them under the same names."""
    inp = tmp_path / f"in.{kind}"
    names = ["Module", "Record Id", "Cadence Id", "Email", "Email", "Owner", "Email (2)", "Email"]
    values = ["Leads", "554023000001798649", "554023000004092008", "a@x.example", "b@x.example",
              "ana", "c@x.example", "d@x.example"]
    if kind == "csv":
        inp.write_text(",".join(names) + "\n" + ",".join(values) + "\n")
    elif kind == "parquet":
        pq.write_table(pa.Table.from_arrays([pa.array([v]) for v in values], names=names), inp)
    else:
        import openpyxl

        book = openpyxl.Workbook()
        book.active.append(names)
        book.active.append(values)
        book.save(inp)
    out = tmp_path / "out.csv"
    main(["run", str(inp), "--results", str(out), "--dry-run", "--no-preflight"])
    err = capsys.readouterr().err
    assert "more than one column" not in err and "left out" not in err and "damaged" not in err
    carried = {"Email": "a@x.example", "Email (3)": "b@x.example", "Owner": "ana",
               "Email (2)": "c@x.example", "Email (4)": "d@x.example"}
    (row,) = read_results(out)
    assert {k: row[k] for k in carried} == carried
    assert list(row)[-5:] == list(carried)  # in the input's order
    retry = tmp_path / "out.retry.csv"
    (again,) = read_results(retry)
    assert {k: again[k] for k in carried} == carried
    # the retry file is an input: its run carries the same columns under the same names
    main(["run", str(retry), "--results", str(tmp_path / "round2.csv"), "--dry-run",
          "--no-preflight"])
    capsys.readouterr()
    (round2,) = read_results(tmp_path / "round2.csv")
    assert {k: round2[k] for k in carried} == carried


def test_an_xlsx_inputs_carried_cells_read_in_the_results_as_the_sheet_shows_them(tmp_path,
                                                                                    capsys):
    """A zip code 02134 formatted 00000 came out 2134, 3.50 as 3.5, a date as ISO: each carried
    cell now reads as the sheet shows it, in CSV and .xlsx results alike. Codes it does not
    render (a fraction) keep the value's text; the ids are read from their values as ever."""
    import openpyxl

    cells = [("Zip", 2134, "00000"), ("Score", 3.5, "0.00"), ("Share", 0.256, "0%"),
             ("Joined", dt.datetime(2024, 1, 31), "dd/mm/yyyy"), ("At", dt.time(14, 30),
                                                                  "h:mm AM/PM"),
             ("Amount", -1234.5, "#,##0.00;(#,##0.00)"), ("Plain", 0.5, "General"),
             ("Active", True, "General"), ("Half", 1.5, "# ?/?")]
    book = openpyxl.Workbook()
    sheet = book.active
    sheet.append(["Module", "Record Id", "Cadence Id", *(c[0] for c in cells)])
    sheet.append(["Leads", "554023000001798649", "554023000004092008", *(c[1] for c in cells)])
    for j, (_, _, code) in enumerate(cells):
        sheet.cell(row=2, column=4 + j).number_format = code
    inp = tmp_path / "in.xlsx"
    book.save(inp)
    looks = {"Zip": "02134", "Score": "3.50", "Share": "26%", "Joined": "31/01/2024",
             "At": "2:30 PM", "Amount": "(1,234.50)", "Plain": "0.5", "Active": "TRUE",
             "Half": "1.5"}
    for out in (tmp_path / "out.csv", tmp_path / "out.xlsx"):
        assert main(["run", str(inp), "--results", str(out), "--dry-run", "--no-preflight",
                     "--quiet"]) == 0
        if out.suffix == ".csv":
            (row,) = read_results(out)
        else:
            header, values = openpyxl.load_workbook(out).active.iter_rows(values_only=True)
            row = dict(zip(header, values, strict=True))
        assert {k: row[k] for k in looks} == looks
        assert row["record_id"] == "554023000001798649"
    capsys.readouterr()


def test_a_run_reads_its_xlsx_sheet_once(tmp_path, capsys, monkeypatch):
    """An .xlsx is read whole to check and plan it: the results' carried columns come from
    that read, not a second one (seconds on a large sheet), and still as the sheet shows
    them; so do those of two people's rows collapsed onto one id, told apart by them."""
    import openpyxl

    from batcher.inputs import xlsx

    book = openpyxl.Workbook()
    sheet = book.active
    sheet.append(["Module", "Record Id", "Cadence Id", "Email", "Zip"])
    people = [("ana@x.com", "1990117000000120345"), ("bo@x.com", "1990117000000120346"),
              ("chen@x.com", "1990117000000120000"), ("dee@x.com", "1990117000000120000")]
    for row, (email, rec) in enumerate(people, start=2):
        sheet.append(["Leads", rec, "554023000004092008", email, 2134])
        sheet.cell(row=row, column=5).number_format = "00000"
    inp = tmp_path / "in.xlsx"
    book.save(inp)
    reads = []
    read = xlsx.read_xlsx
    monkeypatch.setattr(xlsx, "read_xlsx", lambda path: reads.append(path) or read(path))
    out = tmp_path / "out.csv"
    assert main(["run", str(inp), "--results", str(out), "--dry-run", "--no-preflight",
                 "--quiet"]) == 1
    capsys.readouterr()
    assert [(r["Email"], r["Zip"], r["code"]) for r in read_results(out)] == [
        ("ana@x.com", "02134", ""), ("bo@x.com", "02134", ""),
        ("chen@x.com", "02134", "ROUNDED_ID"), ("dee@x.com", "02134", "ROUNDED_ID")]
    assert reads == [inp]


def test_a_ragged_row_carries_its_own_fields_so_its_row_can_be_told(tmp_path, capsys):
    """A row of too few or too many fields is invalid with its line, and the results carry the
    fields it has by position (before: every carried cell of it empty), "" for those it lacks;
    fields past the header's count have no column (its message quotes the line). Its id
    columns stay empty: shifted fields are never taken for ids."""
    inp = tmp_path / "in.csv"
    inp.write_text("Module,Record Id,Cadence Id,Name,Notes\n"
                   "Leads,554023000001798649,554023000004092008,Ana,ok\n"
                   "Leads,554023000001798650,554023000004092008,Bo\n"
                   "Leads,554023000001798651,554023000004092008,Cy,a note,with a comma\n")
    out = tmp_path / "out.csv"
    assert main(["run", str(inp), "--results", str(out), "--dry-run", "--no-preflight"]) == 1
    capsys.readouterr()
    rows = read_results(out)
    assert [(r["status"], r["Name"], r["Notes"]) for r in rows] == [
        ("not_sent", "Ana", "ok"), ("invalid", "Bo", ""), ("invalid", "Cy", "a note")]
    assert "line 4 has 6 fields" in rows[2]["message"] and "with a comma" in rows[2]["message"]
    assert [r["record_id"] for r in rows[1:]] == ["", ""]


def test_a_pipe_for_an_input_is_refused_at_once_saying_to_save_it(tmp_path, capsys):
    """`cat list.csv | batcher run /dev/stdin …`: read once and gone, it cannot be checked,
    planned and read again for the results; said in one line, without waiting on the pipe."""
    fifo = tmp_path / "list.csv"
    os.mkfifo(fifo)
    assert main(["plan", str(fifo)]) == 2
    err = capsys.readouterr().err
    assert "is a pipe or a device, not a file" in err and "save the list to a file" in err


@pytest.mark.parametrize("argv", [
    ["run", str(SAMPLE), "--res", "out.csv", "--dry-run"],
    ["run", str(SAMPLE), "--results", "out.csv", "--dry", "--no-pre"],
    ["run", str(SAMPLE), "--results", "out.csv", "--dry-run", "--max", "5"],
    ["plan", str(SAMPLE), "--deli", ","],
    ["status", "--jour", "out.journal"],
    ["report", "--journal", "out.journal", "--res", "again.csv"],
    ["cadences", "--mod", "Leads"],
    ["sandbox", "--po", "0"],
    ["--vers"],
])
def test_a_flag_is_taken_only_spelled_in_full(tmp_path, capsys, monkeypatch, argv):
    """Found by trying: `--res out.csv`, `--max 5`, `--conc 3` were taken as --results,
    --max-calls, --concurrency (argparse's prefix matching), so a script's meaning would change
    the day a flag sharing the prefix (a --resume) is added. Exit 2, nothing written."""
    monkeypatch.chdir(tmp_path)
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert "error:" in err and "Traceback" not in err
    assert list(tmp_path.iterdir()) == []


def test_an_abbreviated_flag_is_refused_by_the_program_too(tmp_path):
    done = subprocess.run([sys.executable, "-m", "batcher", "run", str(SAMPLE), "--res",
                           str(tmp_path / "out.csv"), "--conc", "3", "--dry-run"], cwd=ROOT,
                          capture_output=True, text=True, timeout=60)
    assert done.returncode == 2, done.stderr
    assert "error:" in done.stderr and "Traceback" not in done.stderr
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize("empty", ["input", "--results", "--journal", "--config"])
def test_an_empty_path_is_refused_not_taken_for_the_current_folder_or_the_default(
        tmp_path, capsys, monkeypatch, empty):
    """Found by trying: `--journal "$JOURNAL"` with the variable unset ran the job on the
    default journal; `--results ""` said "--results . is a folder", an input "" said ".: is a
    directory". An empty path is bad usage (exit 2) naming the flag."""
    monkeypatch.chdir(tmp_path)
    inp = write_pairs(tmp_path / "in.csv", make_rows(3, 1))
    given = {"input": str(inp), "--results": str(tmp_path / "out.csv"),
             "--journal": str(tmp_path / "out.journal"), "--config": None, empty: ""}
    argv = ["run", given.pop("input"), "--dry-run", "--no-preflight"]
    argv += [a for flag, value in given.items() if value is not None for a in (flag, value)]
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert "an empty path" in err and (empty == "input" or f"argument {empty}" in err)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["in.csv"]


def test_halt_on_failures_nan_is_bad_usage_naming_the_flag(capsys):
    """Found by trying: `--halt-on-failures nan` said "halt_on_failures must be a number", the
    library's name for it, not the flag's."""
    assert main(["run", str(SAMPLE), "--results", "out.csv", "--halt-on-failures", "nan"]) == 2
    assert "argument --halt-on-failures: 'nan' is not a percentage" in capsys.readouterr().err


@pytest.mark.parametrize(("flags", "said"), [
    (["--record-column", "Record Id", "--cadence-column", "Record Id"],
     "--record-column and --cadence-column both name the column 'Record Id'"),
    (["--cadence-column", "Cadence Id", "--module-column", "Cadence Id"],
     "--cadence-column and --module-column both name the column 'Cadence Id'"),
    (["--module-column", "Record Id"],
     "--module-column takes 'Record Id', the record_id column by its name"),
])
@pytest.mark.parametrize("command", ["plan", "run"])
def test_one_column_named_for_two_roles_is_refused(tmp_path, capsys, flags, said, command):
    """Found by trying: `--record-column 'Record Id' --cadence-column 'Record Id'` planned calls
    un-enrolling each record from a "cadence" of its own id (a run without preflight would send
    them); `--module-column 'Record Id'` said "no usable record_id column" of a file that has
    one. Exit 2, one line naming the flags."""
    argv = [command, str(SAMPLE), *flags]
    if command == "run":
        argv += ["--results", str(tmp_path / "out.csv"), "--no-preflight"]
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert said in err and len(err.strip().splitlines()) == 1
    assert list(tmp_path.iterdir()) == []


def test_a_journal_that_is_the_input_is_refused_naming_the_journal_flag(tmp_path, capsys):
    """Found by trying: `--journal in.csv` (the input) said "--results out.csv: …; give the
    results another name" — the wrong flag and the wrong advice."""
    inp = write_pairs(tmp_path / "in.csv", make_rows(3, 1))
    code = main(["run", str(inp), "--results", str(tmp_path / "out.csv"),
                 "--journal", str(inp), "--dry-run"])
    err = capsys.readouterr().err
    assert code == 2
    assert f"--journal {inp}: the journal would be written to {inp}" in err
    assert "give the journal another name" in err


def test_the_resume_command_of_the_report_works_pasted_in_another_folder(tmp_path, serve):
    """Found by trying: the report's resume command named the files as they were typed
    (`batcher run ./-x.csv --results -out.csv`): pasted in another folder it named other
    files, and a name with a leading dash was read as a flag. The command pasted into a shell
    elsewhere resumes the job."""
    rows = make_rows(30, 5, seed=4)
    live = serve(World.from_pairs(rows))
    work, elsewhere = tmp_path / "my jobs", tmp_path / "elsewhere"
    work.mkdir()
    elsewhere.mkdir()
    write_pairs(work / "-leavers é's.csv", rows)
    env = {**os.environ, **live.env, "PYTHONPATH": str(ROOT)}
    first = subprocess.run([sys.executable, "-m", "batcher", "run", "./-leavers é's.csv",
                            "--results=-out.csv", "--max-calls", "1", "--quiet"], cwd=work,
                           env=env, capture_output=True, text=True, timeout=60)
    assert first.returncode == 3, first.stderr
    page = (work / "-out.report.html").read_text(encoding="utf-8")
    command = html.unescape(re.search(r"batcher run [^<]*", page).group())
    assert command.startswith(f"batcher run {shlex.quote(str(work / '-leavers é'))}")
    shell = command.replace("batcher", f"{shlex.quote(sys.executable)} -m batcher", 1)
    again = subprocess.run(shell + " --quiet", shell=True, cwd=elsewhere, env=env,
                           capture_output=True, text=True, timeout=60)
    assert again.returncode == 3, again.stderr  # the budget again: resumed, one call more
    assert "resuming" in again.stderr or again.stderr.count("--max-calls 1 reached") == 1
    assert len(live.sandbox.calls) == 2
    assert list(elsewhere.iterdir()) == []


@pytest.mark.parametrize("argv", [["run", "-", "--results", "out.csv"], ["plan", "-"],
                                  ["sandbox", "--from", "-"]])
def test_a_dash_for_the_input_says_standard_input_is_not_read(tmp_path, capsys, monkeypatch,
                                                              argv):
    """Found by trying: `batcher plan - < list.csv` said "-: no such file"."""
    monkeypatch.chdir(tmp_path)
    assert main(argv) == 2
    assert "'-' (standard input) cannot be read" in capsys.readouterr().err
    assert list(tmp_path.iterdir()) == []


def test_module_flag_over_a_module_column_says_which_pairs_go_elsewhere(tmp_path, serve, capsys):
    """--module fills only the rows without a module (DESIGN: "optional module (else
    --module)"): an operator who passed --module Contacts for a file whose column says Leads
    was told nothing, and the pairs went to Leads. Said by plan and by run (even --quiet, kept in
    the summary), naming the column and the modules; rows without a module take the flag."""
    from batcher.sandbox.world import World

    ids = [str(5540230000017986471 + i) for i in range(5)]
    lead, contact = "5540230000012345671", "5540230000012345672"  # a cadence is of one module
    rows = [("Leads", lead), ("Leads", lead), ("", contact), ("leads", lead), ("Contacts", contact)]
    inp = tmp_path / "in.csv"
    inp.write_text("module,record_id,cadence_id\n" + "".join(
        f"{m},{r},{c}\n" for (m, c), r in zip(rows, ids, strict=True)))
    assert main(["plan", str(inp), "--module", "Contacts"]) == 0
    err = capsys.readouterr().err
    assert ("--module Contacts fills only the rows without a module: 3 pairs name their own in "
            "column 'module' and are sent to it (3 to Leads)") in err
    assert main(["plan", str(inp), "--module", "Leads"]) == 0
    assert "1 pair names its own in column 'module' and is sent to it (1 to Contacts)" in (
        capsys.readouterr().err)
    assert main(["plan", str(inp)]) == 1  # without the flag: the empty module is invalid
    assert "fills only" not in capsys.readouterr().err

    live = serve(World.from_pairs([("Leads", r, lead) for r in ids[:2] + ids[3:4]]
                                  + [("Contacts", r, contact) for r in ids[2:3] + ids[4:]]))
    with pytest.MonkeyPatch.context() as mp:
        for k, v in live.env.items():
            mp.setenv(k, v)
        assert main(["run", str(inp), "--results", str(tmp_path / "out.csv"), "--module",
                     "Contacts", "--quiet"]) == 0
    assert "3 pairs name their own in column 'module'" in capsys.readouterr().err
    summary = json.loads((tmp_path / "out.summary.json").read_text())
    assert any("fills only the rows without a module" in w for w in summary["extra"]["warnings"])


#: holds a job's journal as `batcher report` does: where it can write (``report``: the lock
#: exclusive), or where it cannot (``shared``: the lock shared, read-only)
_READER = """
import sys
from pathlib import Path
from batcher.journal import Journal
path = Path(sys.argv[1])
j = Journal.open(path, None) if sys.argv[2] == "report" else Journal._opened_to_read(path)
print("ready", flush=True)
sys.stdin.read()
"""


@pytest.mark.parametrize("how", ["report", "shared"])
def test_a_run_kept_out_by_a_report_reading_its_journal_names_the_report_and_its_pid(
        tmp_path, serve, how):
    """Found by trying: a nightly `batcher run` started while a `batcher report` read the job's
    journal said "in use by another batcher run (pid unknown)" (a read-only report holds the
    lock shared and writes no pid) or named the report as a run. It now names what holds the
    journal and its pid, sends nothing, and the same command resumes once the report ends."""
    rows = make_rows(60, 4, seed=3)
    live = serve(World.from_pairs(rows))
    inp = write_pairs(tmp_path / "in.csv", rows)
    args = ["run", str(inp), "--results", str(tmp_path / "out.csv"), "--max-calls", "1"]
    first = batcher(*args, env=live.env)
    first.communicate(timeout=120)
    assert first.returncode == 3
    journal = tmp_path / "out.journal"
    holder = subprocess.Popen([sys.executable, "-c", _READER, str(journal), how],
                              stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "ready"
        sent = len(live.sandbox.calls)
        second = batcher(*args, env=live.env)
        _, err = second.communicate(timeout=60)
        assert second.returncode == 2, err
        assert f"is being read by `batcher report` (pid {holder.pid})" in err, err
        assert "unknown" not in err and "another batcher run" not in err
        assert "Traceback" not in err and len(err.strip().splitlines()) == 1
        assert len(live.sandbox.calls) == sent
        if how == "report":  # status names the report and its pid, and no run
            status = batcher("status", "--journal", str(journal), "--json")
            out, _ = status.communicate(timeout=60)
            said = json.loads(out)
            assert (said["read_by"], said["running"], said["state"]) == (
                holder.pid, False, "stopped"), said
            status = batcher("status", "--journal", str(journal))
            out, _ = status.communicate(timeout=60)
            assert "running" not in out, out
            assert f"being read by `batcher report` (pid {holder.pid})" in out, out
    finally:
        holder.stdin.close()
        holder.wait(timeout=10)
        holder.stdout.close()
    third = batcher(*args, env=live.env)  # the report ended: the same command resumes
    _, err = third.communicate(timeout=120)
    assert third.returncode == 3 and "--max-calls 1 reached" in err, err
    assert len(live.sandbox.calls) == sent + 1


def test_a_killed_jobs_journal_copied_with_its_wal_but_not_its_shm_loses_no_answer(
        tmp_path, serve):
    """A nightly job killed by kill -9 leaves answers in ``<journal>-wal`` only; an operator
    who copies the journal and that file elsewhere (not the ``-shm`` index, which is no data)
    and gives the copy with --journal must find every answer: `status` and `report` count
    them, and the run from the copy sends none of them again and finishes the job."""
    rows = make_rows(1500, 5, seed=11)
    live = serve(World.from_pairs(rows), latency=0.05, concurrency_limit=10)
    inp = write_pairs(tmp_path / "in.csv", rows)
    proc = batcher("run", str(inp), "--results", str(tmp_path / "out.csv"), "--concurrency",
                   "3", env=live.env)
    deadline = time.monotonic() + 60
    while len(live.sandbox.calls) < 6 and time.monotonic() < deadline:
        time.sleep(0.02)
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    calls_at_kill = len(live.sandbox.calls)
    original = tmp_path / "out.journal"
    assert Path(f"{original}-wal").stat().st_size > 0  # the answers are in the WAL
    (tmp_path / "copy").mkdir()
    copy = tmp_path / "copy" / "job.journal"
    for end in ("", "-wal"):  # journal first, as a `cp out.journal* ` would; no -shm
        Path(f"{copy}{end}").write_bytes(Path(f"{original}{end}").read_bytes())
    with closing(sqlite3.connect(f"file:{original}?mode=ro", uri=True)) as db:
        answered = {(json.dumps(list(stored_ids(r))), json.dumps(json.loads(c)))
                    for r, c in db.execute("SELECT record_ids, cadence_ids FROM batches"
                                           " WHERE state = 'answered'")}
    assert answered, "the kill came before any answer was recorded; make the job longer"

    def status(journal: Path) -> dict:
        got = batcher("status", "--journal", str(journal), "--json")
        out, err = got.communicate(timeout=60)
        assert got.returncode == 0, err
        return json.loads(out)

    told = status(original)
    assert status(copy)["by_status"] == told["by_status"]
    assert sum(v for k, v in told["by_status"].items() if k != "not_sent") > 0
    report = batcher("report", "--journal", str(copy), "--results", str(tmp_path / "rep.csv"))
    _, err = report.communicate(timeout=60)
    assert report.returncode == 3, err  # not finished: batches left to send
    assert Counter(r["status"] for r in read_results(tmp_path / "rep.csv")) == Counter(
        {k: v for k, v in told["by_status"].items() if v})

    proc = batcher("run", str(inp), "--results", str(tmp_path / "out.csv"), "--journal",
                   str(copy), env=live.env)
    _, err = proc.communicate(timeout=120)
    assert proc.returncode == 0, err
    assert set(live.sandbox.removed) == set(rows)
    for call in live.sandbox.calls[calls_at_kill:]:
        key = (json.dumps(list(call.record_ids)), json.dumps(list(call.cadence_ids)))
        assert key not in answered, "a batch answered before the kill was sent again"
