"""Files, hosts and the checks made before the first call (issue 9, items 7, 8 and 10).

- every file a job writes is 0600 whatever the umask, and no symbolic link is followed;
- the temporary files of a killed run are removed by the next results write (only theirs);
- a results path that cannot work (a folder, an unknown extension, a read-only folder), a
  ``--max-calls`` below 1: exit 2 before any call, judged by the sandbox's truth;
- a dry run never overwrites a real job's results;
- ``batcher report`` exits as ``run`` would for the job it describes;
- ``run_job`` in a running event loop is a usage error; ``run_job_async`` runs and cancels;
- calls and credits survive ``kill -9``;
- both clients (API and accounts) go through the proxy the environment names.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import gc
import io
import json
import os
import secrets
import signal
import socket
import sqlite3
import stat
import subprocess
import sys
import threading
import time
from pathlib import Path

import httpx
import pytest

from batcher.cli import main
from batcher.errors import InputError, UsageError
from batcher.inputs import InputOptions, InputScan
from batcher.job import RunSettings, Transports, run_job
from batcher.retry import RetryPolicy
from batcher.sandbox.world import World

from .conftest import read_results, write_pairs
from .test_e2e import make_rows

ROOT = Path(__file__).resolve().parent.parent


def policy(**kw) -> RetryPolicy:
    """A fast retry policy; settings this batcher does not know are left out (older code)."""
    known = {f.name for f in dataclasses.fields(RetryPolicy)}
    kw = {"attempts": 8, "base": 0.01, "max_wait": 0.2, "min_wait_on_zero_retry_after": 0.01,
          **kw}
    return RetryPolicy(**{k: v for k, v in kw.items() if k in known})


def job(tmp_path: Path, inp: Path, **kw) -> RunSettings:
    kw.setdefault("retry", policy())
    kw.setdefault("quiet", True)
    kw.setdefault("timeout", 2.0)
    kw.setdefault("results", tmp_path / "out.csv")
    return RunSettings(input=inp, **kw)


def cli(*args: str, env: dict[str, str], **kw) -> subprocess.Popen:
    clean = {k: v for k, v in os.environ.items() if not k.upper().startswith(("ZOHO_", "HTTP"))}
    return subprocess.Popen([sys.executable, "-m", "batcher", *args], env={**clean, **env},
                            cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            **kw)


def use_env(monkeypatch, env: dict[str, str]) -> None:
    for name, value in env.items():
        monkeypatch.setenv(name, value)


def mode(path: Path) -> int:
    return stat.S_IMODE(os.stat(path).st_mode)


def untouched(path: Path) -> tuple[bytes, int, int]:
    st = os.stat(path)
    return path.read_bytes(), st.st_mtime_ns, stat.S_IMODE(st.st_mode)


def nothing_reached(live) -> None:
    """The sandbox's truth: not one un-enrol call, not even a token request."""
    assert len(live.sandbox.calls) == 0
    assert live.sandbox.refresh_count == 0


# ---------------------------------------------------------------------- 1. modes 0600


def test_every_file_of_a_job_is_0600_under_a_permissive_umask(tmp_path, serve):
    rows = make_rows(60, 4)
    live = serve(World.from_pairs(rows))
    inp = write_pairs(tmp_path / "in.csv", rows)
    out = tmp_path / "out"
    out.mkdir()
    proc = cli("run", str(inp), "--results", str(out / "r.csv"), "--quiet", "--max-calls", "1",
               env=live.env, umask=0o022)
    _, err = proc.communicate(timeout=60)
    assert proc.returncode == 3, err  # stopped by the budget: the retry file has rows
    made = {p.name: mode(p) for p in out.iterdir()}
    for name in ("r.csv", "r.retry.csv", "r.summary.json", "r.journal", "r.journal.lock"):
        assert made.pop(name, None) == 0o600, (name, {n: oct(m) for n, m in made.items()})
    for name, m in made.items():  # -wal / -shm and anything else the job left
        assert m & 0o077 == 0, (name, oct(m))

    # a journal left 0644 by an older batcher is made private when it is opened again; the
    # results (rewritten) as well, Parquet too; in-process, still under umask 022
    (out / "r.journal").chmod(0o644)
    (out / "r.csv").chmod(0o644)
    old = os.umask(0o022)
    try:
        assert run_job(job(tmp_path, inp, results=out / "r.csv"), live.env).exit_code == 0
        assert run_job(job(tmp_path, inp, results=out / "p.parquet"), live.env).exit_code == 0
    finally:
        os.umask(old)
    for name in ("r.csv", "r.journal", "r.journal.lock", "p.parquet", "p.retry.csv",
                 "p.summary.json", "p.journal", "p.journal.lock"):
        assert mode(out / name) == 0o600, name


# ---------------------------------------------------------------------- 2. no symlink followed


@pytest.mark.parametrize("link", ["journal", "lock", "dangling journal"])
def test_a_symlinked_journal_or_lock_is_refused_and_its_target_untouched(
        tmp_path, serve, monkeypatch, capsys, link):
    rows = make_rows(20, 2)
    live = serve(World.from_pairs(rows))
    inp = write_pairs(tmp_path / "in.csv", rows)
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    victim = elsewhere / "victim.db"
    # empty, SQLite would make a journal of it; with a content, a lock would write its pid in it
    victim.write_bytes(b"" if link == "journal" else b"precious, not batcher's\n")
    victim.chmod(0o640)
    before = untouched(victim)
    journal = tmp_path / "out.journal"
    if link == "journal":
        journal.symlink_to(victim)
    elif link == "lock":
        journal.with_name("out.journal.lock").symlink_to(victim)
    else:
        journal.symlink_to(elsewhere / "absent.db")
    use_env(monkeypatch, live.env)

    code = main(["run", str(inp), "--results", str(tmp_path / "out.csv"),
                 "--journal", str(journal)])

    err = capsys.readouterr().err
    assert code == 2, err
    assert "link" in err and "Traceback" not in err
    assert untouched(victim) == before
    assert sorted(p.name for p in elsewhere.iterdir()) == ["victim.db"]
    assert len(live.sandbox.calls) == 0


# ---------------------------------------------------------------------- 3. stale temp files


def _dead_pid() -> int:
    proc = subprocess.Popen(["true"])
    proc.wait()
    try:
        os.kill(proc.pid, 0)
    except ProcessLookupError:
        return proc.pid
    pytest.skip("the pid of a finished process was reused at once")


def test_stale_temporary_files_of_a_killed_run_are_removed_by_the_next_write(tmp_path, serve):
    rows = make_rows(20, 2)
    live = serve(World.from_pairs(rows))
    inp = write_pairs(tmp_path / "in.csv", rows)
    assert run_job(job(tmp_path, inp), live.env).exit_code == 0
    dead, alive = _dead_pid(), os.getpid()
    stale, kept = [], []
    for name in ("out.csv", "out.retry.csv", "out.summary.json"):
        for pid, into in ((dead, stale), (alive, kept)):
            tmp = tmp_path / f".{name}.{pid}.{secrets.token_hex(4)}.tmp"
            tmp.write_bytes(b"half a results file")
            into.append(tmp)
    other = tmp_path / f".other.csv.{dead}.{secrets.token_hex(4)}.tmp"  # not this job's
    other.write_bytes(b"x")

    assert run_job(job(tmp_path, inp), live.env).exit_code == 0  # the same command again

    assert [p.name for p in stale if p.exists()] == []
    assert [p.name for p in kept if not p.exists()] == []
    assert other.exists()
    assert len(read_results(tmp_path / "out.csv")) == len(rows)


# ---------------------------------------------------------------------- 4. results path checks


@pytest.mark.parametrize("target", ["folder", "r.txt", "r"])
def test_an_unusable_results_path_is_refused_before_any_call(tmp_path, serve, monkeypatch,
                                                             capsys, target):
    rows = make_rows(20, 2)
    live = serve(World.from_pairs(rows))
    inp = write_pairs(tmp_path / "in.csv", rows)
    if target == "folder":
        (tmp_path / "out").mkdir()
        results = str(tmp_path / "out") + "/"
    else:
        results = str(tmp_path / target)
    use_env(monkeypatch, live.env)

    code = main(["run", str(inp), "--results", results])

    err = capsys.readouterr().err
    assert code == 2, err
    assert "Traceback" not in err and len(err.strip().splitlines()) == 1
    nothing_reached(live)
    assert not list(tmp_path.glob("*.journal")) and not list(tmp_path.glob("out/*"))


@pytest.mark.parametrize("input_name,args", [
    ("job.retry.csv", ["--results", "job.csv"]),
    ("job.csv", ["--results", "job.csv"]),
    ("in.csv", ["--results", "job.csv", "--journal", "in.csv"]),
    ("job.dry-run.retry.csv", ["--results", "job.csv", "--dry-run"]),
])
def test_no_file_a_job_writes_may_be_its_input(tmp_path, serve, monkeypatch, capsys, input_name,
                                               args):
    """Found by trying: `batcher run d/job.retry.csv --results d/job.csv` (a retry file run
    beside its own results) replaced its input with the new retry file, and the same command
    then refused to resume ('the file has changed since')."""
    rows = make_rows(20, 2)
    live = serve(World.from_pairs(rows))
    inp = write_pairs(tmp_path / input_name, rows)
    before = inp.read_bytes()
    use_env(monkeypatch, live.env)

    code = main(["run", str(inp), "--max-calls", "1",
                 *[str(tmp_path / a) if a.endswith((".csv", ".journal")) else a for a in args]])

    err = capsys.readouterr().err
    assert code == 2, err
    assert "Traceback" not in err and len(err.strip().splitlines()) == 1
    assert "which is the input file" in err and str(inp) in err
    nothing_reached(live)
    assert inp.read_bytes() == before


@pytest.mark.parametrize("journal", ["out.csv", "out.retry.csv", "out.summary.json",
                                     "out.report.html"])
def test_no_file_a_job_writes_may_be_its_journal(tmp_path, serve, monkeypatch, capsys, journal):
    """The results written over the journal (`--journal out.csv --results out.csv`) would end
    the job: nothing left to resume from."""
    rows = make_rows(20, 2)
    live = serve(World.from_pairs(rows))
    inp = write_pairs(tmp_path / "in.csv", rows)
    use_env(monkeypatch, live.env)

    code = main(["run", str(inp), "--results", str(tmp_path / "out.csv"),
                 "--journal", str(tmp_path / journal)])

    err = capsys.readouterr().err
    assert code == 2, err
    assert "which is the journal" in err and len(err.strip().splitlines()) == 1
    nothing_reached(live)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["in.csv"]


def test_report_writes_no_file_over_its_jobs_input(tmp_path, serve, monkeypatch, capsys):
    rows = make_rows(20, 2)
    live = serve(World.from_pairs(rows))
    inp = write_pairs(tmp_path / "job.retry.csv", rows)
    use_env(monkeypatch, live.env)
    assert main(["run", str(inp), "--results", str(tmp_path / "first.csv")]) == 0
    before = inp.read_bytes()
    capsys.readouterr()

    code = main(["report", "--journal", str(tmp_path / "first.journal"),
                 "--results", str(tmp_path / "job.csv")])

    err = capsys.readouterr().err
    assert code == 2, err
    assert "which is the input file" in err and "Traceback" not in err
    assert inp.read_bytes() == before and not (tmp_path / "job.csv").exists()
    # nor over the journal it reads (copied under a results-like name)
    journal = tmp_path / "copy.summary.json"
    journal.write_bytes((tmp_path / "first.journal").read_bytes())
    assert main(["report", "--journal", str(journal), "--results", str(tmp_path / "copy.csv")]
                ) == 2
    assert "which is the journal" in capsys.readouterr().err
    assert journal.read_bytes() == (tmp_path / "first.journal").read_bytes()


@pytest.mark.parametrize("flag", ["--results", "--journal"])
def test_a_name_too_long_for_the_files_written_beside_it_is_refused_before_any_call(
        tmp_path, serve, monkeypatch, capsys, flag):
    """Found by trying: results named with 229 bytes fit, the hidden file they are written to
    first (22 bytes more) did not: the calls went, and no run or report could ever write the
    results. The name is refused before anything, and nothing is left behind."""
    rows = make_rows(20, 2)
    live = serve(World.from_pairs(rows))
    inp = write_pairs(tmp_path / "in.csv", rows)
    use_env(monkeypatch, live.env)
    name = "離職者リスト" * 12 + "離職者"  # 75 characters, 225 bytes
    journal = "j" * 244 + ".journal"  # 252 bytes: its -wal file would not fit
    args = (["--results", str(tmp_path / f"{name}.csv")] if flag == "--results" else
            ["--results", str(tmp_path / "out.csv"), "--journal", str(tmp_path / journal)])

    code = main(["run", str(inp), *args])

    err = capsys.readouterr().err
    assert code == 2, err
    assert "shorter --results" in err and len(err.strip().splitlines()) == 1
    nothing_reached(live)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["in.csv"]


@pytest.fixture
def read_only_folder(tmp_path):
    folder = tmp_path / "ro"
    folder.mkdir()
    done = subprocess.run(["mount", "-t", "tmpfs", "-o", "ro,size=1m", "tmpfs", str(folder)],
                          capture_output=True, text=True)
    if done.returncode != 0:
        why = done.stderr.strip() or f"exit {done.returncode}"
        pytest.skip(f"cannot mount a read-only tmpfs here: {why}")
    try:
        yield folder
    finally:
        subprocess.run(["umount", str(folder)], capture_output=True)


def test_a_read_only_results_folder_is_refused_before_any_call(tmp_path, serve, monkeypatch,
                                                               capsys, read_only_folder):
    rows = make_rows(20, 2)
    live = serve(World.from_pairs(rows))
    inp = write_pairs(tmp_path / "in.csv", rows)
    use_env(monkeypatch, live.env)

    code = main(["run", str(inp), "--results", str(read_only_folder / "out.csv"),
                 "--journal", str(tmp_path / "job.journal")])

    err = capsys.readouterr().err
    assert code == 2, err
    assert "Traceback" not in err and str(read_only_folder) in err
    nothing_reached(live)
    assert not (tmp_path / "job.journal").exists()


# ---------------------------------------------------------------------- 5. dry run beside


def test_a_dry_run_never_overwrites_a_real_jobs_results(tmp_path, serve, monkeypatch, capsys):
    rows = make_rows(30, 3)
    live = serve(World.from_pairs(rows))
    inp = write_pairs(tmp_path / "in.csv", rows)
    assert run_job(job(tmp_path, inp), live.env).exit_code == 0
    real = {n: (tmp_path / n).read_bytes() for n in ("out.csv", "out.retry.csv",
                                                      "out.summary.json")}
    calls = len(live.sandbox.calls)
    use_env(monkeypatch, live.env)

    code = main(["run", str(inp), "--results", str(tmp_path / "out.csv"), "--dry-run"])

    err = capsys.readouterr().err
    assert code == 0, err
    assert {n: (tmp_path / n).read_bytes() for n in real} == real
    beside = tmp_path / "out.dry-run.csv"
    assert str(beside) in err
    assert {r["status"] for r in read_results(beside)} == {"not_sent"}
    assert len(live.sandbox.calls) == calls


def test_a_dry_run_never_takes_the_place_of_a_real_job_that_has_no_results_yet(
        tmp_path, serve, monkeypatch, capsys):
    """Found by trying: a real job killed before it wrote its results (or still running) left
    its journal and no results; a dry run to the same path wrote there, and beside them the
    retry file and summary of 'every row not_sent'."""
    rows = make_rows(30, 3)
    live = serve(World.from_pairs(rows))
    inp = write_pairs(tmp_path / "in.csv", rows)
    use_env(monkeypatch, live.env)
    assert main(["run", str(inp), "--results", str(tmp_path / "out.csv"),
                 "--max-calls", "2"]) == 3
    for name in ("out.csv", "out.retry.csv", "out.summary.json", "out.report.html"):
        (tmp_path / name).unlink()  # as a kill -9 before they were written leaves it
    capsys.readouterr()

    code = main(["run", str(inp), "--results", str(tmp_path / "out.csv"), "--dry-run"])

    err = capsys.readouterr().err
    assert code == 0, err
    beside = tmp_path / "out.dry-run.csv"
    assert str(beside) in err and str(tmp_path / "out.journal") in err
    assert not any((tmp_path / n).exists() for n in ("out.csv", "out.retry.csv",
                                                       "out.summary.json"))
    # the real job goes on from its journal, and its results are its own
    assert main(["run", str(inp), "--results", str(tmp_path / "out.csv")]) == 0
    assert "not_sent" not in {r["status"] for r in read_results(tmp_path / "out.csv")}


def test_a_new_job_never_replaces_a_real_jobs_results_whose_journal_is_gone(
        tmp_path, serve, monkeypatch, capsys):
    """Found by trying: the journal of a finished job deleted, the same command started a new
    job: every call sent again, and the results that said 'unenrolled' replaced by 'not
    enrolled' — the record of what was done, lost, exit 0."""
    rows = make_rows(30, 3)
    live = serve(World.from_pairs(rows))
    inp = write_pairs(tmp_path / "in.csv", rows)
    use_env(monkeypatch, live.env)
    args = ["run", str(inp), "--results", str(tmp_path / "out.csv")]
    assert main(args) == 0
    done = {n: (tmp_path / n).read_bytes() for n in ("out.csv", "out.summary.json")}
    calls = len(live.sandbox.calls)
    (tmp_path / "out.journal").unlink()
    capsys.readouterr()

    code = main(args)

    err = capsys.readouterr().err
    assert code == 2, err
    assert len(err.strip().splitlines()) == 1 and str(tmp_path / "out.journal") in err
    assert {n: (tmp_path / n).read_bytes() for n in done} == done
    assert len(live.sandbox.calls) == calls
    # nor does a dry run, journal or not
    assert main([*args, "--dry-run"]) == 0
    assert {n: (tmp_path / n).read_bytes() for n in done} == done
    assert (tmp_path / "out.dry-run.csv").exists()
    # nor, under another extension, their summary, retry file and report (the stem's own)
    for ext in (".xlsx", ".parquet"):
        other = ["run", str(inp), "--results", str(tmp_path / f"out{ext}")]
        assert main(other) == 2
        assert main([*other, "--dry-run"]) == 0
        assert (tmp_path / f"out.dry-run{ext}").exists() and not (tmp_path / f"out{ext}").exists()
    assert {n: (tmp_path / n).read_bytes() for n in done} == done
    assert main(args) == 2 and len(live.sandbox.calls) == calls
    # a dry run's results are no real job's: a real run replaces them
    assert main(["run", str(inp), "--results", str(tmp_path / "dry.csv"), "--dry-run"]) == 0
    assert main(["run", str(inp), "--results", str(tmp_path / "dry.csv")]) == 0


# ---------------------------------------------------------------------- 6. --max-calls < 1


@pytest.mark.parametrize("budget", ["0", "-1"])
def test_max_calls_below_one_is_a_usage_error_and_sends_nothing(tmp_path, serve, monkeypatch,
                                                                capsys, budget):
    rows = make_rows(20, 2)
    live = serve(World.from_pairs(rows))
    inp = write_pairs(tmp_path / "in.csv", rows)
    use_env(monkeypatch, live.env)

    code = main(["run", str(inp), "--results", str(tmp_path / "out.csv"),
                 f"--max-calls={budget}"])

    err = capsys.readouterr().err
    assert code == 2, err
    assert "--max-calls" in err and "re-run" not in err
    nothing_reached(live)
    assert not (tmp_path / "out.journal").exists() and not (tmp_path / "out.csv").exists()




@pytest.mark.parametrize("content", [
    b"record_id,cadence_id,module\n,,\n,,\n",  # a header and blank rows: no data rows
    b"record_id,cadence_id,module,Name\n" + b"".join(
        b"%d,554023000004092008,Leads,ok\n" % (554023000001000001 + i) for i in range(300))
    + b"554023000001999999,554023000004092008,Leads,Ren\xe9e\n",  # not UTF-8, far down
], ids=["no-data-rows", "latin1-past-its-start"])
def test_an_input_found_unusable_once_read_leaves_no_journal_to_resume(
        tmp_path, serve, monkeypatch, capsys, content):
    live = serve(World.from_pairs(make_rows(20, 2)))
    inp = tmp_path / "in.csv"
    inp.write_bytes(content)
    use_env(monkeypatch, live.env)

    code = main(["run", str(inp), "--results", str(tmp_path / "out.csv")])

    err = capsys.readouterr().err
    assert code == 2, err
    assert str(inp) in err and "Traceback" not in err
    nothing_reached(live)
    # no journal that `batcher status` would call "stopped: re-run its command to resume"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["in.csv"]
    assert main(["status", "--journal", str(tmp_path / "out.journal")]) == 2
    assert "no journal" in capsys.readouterr().err
# ---------------------------------------------------------------------- 7. report's exit code


def test_report_exits_as_run_does_for_the_job_it_describes(tmp_path, serve, capsys):
    rows = make_rows(300, 4)
    unknown = [("Leads", "554023000008000001", rows[0][2])]  # fails: INVALID_DATA
    clean = make_rows(20, 2, base=554023000002000000)
    live = serve(World.from_pairs(rows + clean))
    inp = write_pairs(tmp_path / "in.csv", rows + unknown)
    clean_inp = write_pairs(tmp_path / "clean.csv", clean)

    def report(journal: str) -> int:
        return main(["report", "--journal", str(tmp_path / journal),
                     "--results", str(tmp_path / "again.csv")])

    stopped = run_job(job(tmp_path, inp, max_calls=1, concurrency=1), live.env)
    assert stopped.exit_code == 3
    assert report("out.journal") == 3
    finished = run_job(job(tmp_path, inp), live.env)
    assert finished.exit_code == 1
    assert report("out.journal") == 1
    good = run_job(job(tmp_path, clean_inp, results=tmp_path / "clean_out.csv"), live.env)
    assert good.exit_code == 0
    assert report("clean_out.journal") == 0
    capsys.readouterr()


# ---------------------------------------------------------------------- 8. event loops


def test_settings_a_library_caller_got_wrong_are_a_usage_error_before_any_journal(tmp_path):
    inp = write_pairs(tmp_path / "in.csv", make_rows(20, 2))
    for wrong in (dict(log_format="xml"), dict(concurrency=0), dict(max_calls=0),
                  dict(halt_on_failures=200.0), dict(halt_on_failures=-1.0)):
        with pytest.raises(UsageError):
            run_job(job(tmp_path, inp, **wrong), {"ZOHO_ACCESS_TOKEN": "t"})
    assert not list(tmp_path.glob("out.*"))


def test_an_unusable_proxy_is_a_usage_error_before_any_file(tmp_path):
    inp = write_pairs(tmp_path / "in.csv", make_rows(20, 2))
    env = {"ZOHO_ACCESS_TOKEN": "t", "ZOHO_API_DOMAIN": "https://www.zohoapis.eu",
           "HTTPS_PROXY": "ftp://user:hunter2@proxy.corp:21"}
    with pytest.raises(UsageError, match="cannot use the proxy") as refused:
        run_job(job(tmp_path, inp), env)
    assert "hunter2" not in str(refused.value)
    assert not list(tmp_path.glob("out*"))  # no journal, no results of rows never sent


def test_run_job_inside_a_running_event_loop_is_a_usage_error_and_leaves_no_journal(
        tmp_path, serve):
    rows = make_rows(20, 2)
    live = serve(World.from_pairs(rows))
    inp = write_pairs(tmp_path / "in.csv", rows)

    async def host() -> None:
        run_job(job(tmp_path, inp), live.env)

    with pytest.raises(UsageError, match="run_job_async"):
        asyncio.run(host())
    assert not (tmp_path / "out.journal").exists()
    assert not (tmp_path / "out.journal.lock").exists()
    nothing_reached(live)


def test_run_job_async_runs_a_job_to_the_end_inside_an_event_loop(tmp_path, serve):
    from batcher.job import run_job_async

    rows = make_rows(60, 4)
    live = serve(World.from_pairs(rows))
    inp = write_pairs(tmp_path / "in.csv", rows)

    async def host():
        ticks = 0

        async def heartbeat():  # the host's loop stays free while the job runs
            nonlocal ticks
            while True:
                ticks += 1
                await asyncio.sleep(0.01)

        beat = asyncio.create_task(heartbeat())
        try:
            return await run_job_async(job(tmp_path, inp), live.env), ticks
        finally:
            beat.cancel()

    result, ticks = asyncio.run(host())
    assert result.exit_code == 0
    assert ticks > 1
    assert set(live.sandbox.removed) == set(rows)


def test_cancelling_run_job_async_returns_promptly_and_the_job_resumes(tmp_path, serve):
    from batcher.job import run_job_async

    rows = make_rows(400, 20, seed=2, max_k=2)  # 20 calls, one at a time, 0.15 s each: 3 s
    live = serve(World.from_pairs(rows), latency=0.15)
    inp = write_pairs(tmp_path / "in.csv", rows)

    async def host() -> float:
        task = asyncio.create_task(run_job_async(job(tmp_path, inp, concurrency=1), live.env))
        deadline = time.monotonic() + 20
        while len(live.sandbox.calls) < 2 and time.monotonic() < deadline and not task.done():
            await asyncio.sleep(0.01)
        assert not task.done(), "the job ended before it could be cancelled"
        cancelled_at = time.monotonic()
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
        return time.monotonic() - cancelled_at

    took = asyncio.run(host())
    assert took < 2.0, f"cancellation took {took:.1f} s"
    statuses = [r["status"] for r in read_results(tmp_path / "out.csv")]
    assert len(statuses) == len(rows) and "not_sent" in statuses
    assert len(live.sandbox.calls) < 20
    again = run_job(job(tmp_path, inp, concurrency=4), live.env)
    assert again.exit_code == 0
    assert set(live.sandbox.removed) == set(rows)


@pytest.mark.parametrize("cancels", [1, 2])
def test_cancelling_run_job_async_while_the_input_is_read_raises_cancelled_after_the_job(
        tmp_path, serve, cancels):
    """The host's cancel lands while the job reads its input (in the job's thread): the host
    gets CancelledError — not the job's Interrupted — once the job has stopped, its lock
    released, so the same job can run at once; a host that cancels again meanwhile too."""
    from batcher.job import run_job_async

    live = serve(World.from_pairs([]))
    inp = tmp_path / "in.csv"
    inp.write_text("module,record_id,cadence_id\n" + "".join(
        f"Leads,{554023000001000000 + i},{554023000004000001 + i % 5}\n"
        for i in range(300_000)))
    lock = tmp_path / "out.journal.lock"  # taken just before the input is read

    async def host() -> None:
        task = asyncio.create_task(run_job_async(job(tmp_path, inp, preflight=False),
                                                 live.env))
        deadline = time.monotonic() + 20
        while not lock.exists() and time.monotonic() < deadline and not task.done():
            await asyncio.sleep(0.001)
        await asyncio.sleep(0.03)  # into the read (a 300k-row file's scan and plan take longer)
        for _ in range(cancels):
            task.cancel()
            await asyncio.sleep(0.005)
        try:
            await task
        finally:  # the host goes on at once: the job must be over by then
            assert (tmp_path / "out.csv").exists(), "CancelledError before the job ended"

    with pytest.raises(asyncio.CancelledError):
        asyncio.run(host())
    nothing_reached(live)
    # the job is over and its lock free: the same job starts again (and stops at its budget)
    assert run_job(job(tmp_path, inp, max_calls=1, preflight=False), live.env).exit_code == 3


# ---------------------------------------------------------------------- 9. kill -9 accounting


def test_calls_and_credits_survive_kill_9(tmp_path, serve):
    concurrency = 3  # the in-flight slack: calls sent whose answers were not journalled yet
    rows = make_rows(600, 40, seed=3, max_k=2)  # ~40 calls, 3 at a time, 0.1 s each
    live = serve(World.from_pairs(rows), latency=0.1)
    inp = write_pairs(tmp_path / "in.csv", rows)
    args = ["run", str(inp), "--results", str(tmp_path / "out.csv"), "--quiet",
            "--concurrency", str(concurrency)]

    proc = cli(*args, env=live.env)
    deadline = time.monotonic() + 30
    while len(live.sandbox.calls) < 12 and time.monotonic() < deadline and proc.poll() is None:
        time.sleep(0.005)
    answered = len(live.sandbox.calls)  # answered by the server before the kill
    os.kill(proc.pid, signal.SIGKILL)
    proc.communicate()
    assert proc.returncode == -signal.SIGKILL, "the job ended before the kill: make it longer"
    assert answered >= 12

    db = sqlite3.connect(tmp_path / "out.journal")
    counters = dict(db.execute("SELECT name, value FROM counters"))
    db.close()
    calls, credits = counters.get("calls", 0), counters.get("credits", 0)
    assert calls >= answered - concurrency, counters
    assert credits >= calls, counters

    assert run_job(job(tmp_path, inp, concurrency=6), live.env).exit_code == 0
    summary = json.loads((tmp_path / "out.summary.json").read_text())
    truth = len(live.sandbox.calls)
    assert abs(summary["calls"] - truth) <= concurrency, (summary["calls"], truth)
    assert summary["credits"] >= summary["calls"]


class _CountingScans(httpx.AsyncBaseTransport):
    """The real sandbox over loopback; at each un-enrol call, how many input scans live."""

    def __init__(self) -> None:
        self._inner = httpx.AsyncHTTPTransport()
        self.alive: list[int] = []
        # other tests' scans, kept (their ids are not reused)
        self._earlier = [o for o in gc.get_objects() if isinstance(o, InputScan)]

    async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
        if request.method == "POST":
            gc.unfreeze()  # the job froze what lived when it started sending: seen, frozen again
            scans = [o for o in gc.get_objects() if isinstance(o, InputScan)]
            gc.freeze()
            self.alive.append(sum(all(o is not e for e in self._earlier) for o in scans))
        return await self._inner.handle_async_request(request)

    async def aclose(self) -> None:
        await self._inner.aclose()


@pytest.mark.parametrize("all_cadences", [False, True])
def test_a_job_lets_go_of_its_input_scan_once_the_plan_is_stored(tmp_path, serve, all_cadences):
    """A 10M-pair job held its input's scan (~300 MB: 446 MB resident while sending) for the
    hours it sent, though the journal holds all it needs of it once the plan is stored."""
    rows = make_rows(300, 3)
    live = serve(World.from_pairs(rows))
    inp = write_pairs(tmp_path / "in.csv", rows)
    if all_cadences:  # a record list: scanned once the org's cadences are read
        inp.write_text("Module,Record Id\n" + "".join(f"{m},{r}\n" for m, r in
                                                        dict.fromkeys((m, r) for m, r, _ in rows)))
    counting = _CountingScans()
    result = run_job(job(tmp_path, inp, reading=InputOptions(all_cadences=all_cadences)),
                     live.env, transports=Transports(api=counting))
    assert result.aborted is None, result.aborted
    assert counting.alive and set(counting.alive) == {0}
    assert len(read_results(tmp_path / "out.csv")) >= len(rows)


class _EditedWhilePreflighted(httpx.AsyncBaseTransport):
    """The real sandbox over loopback; the org's cadences GET (the preflight: after the input
    was read, before its plan is stored) first changes one byte in the middle of the input, as
    a person saving the file in an editor would."""

    def __init__(self, path: Path) -> None:
        self._inner = httpx.AsyncHTTPTransport()
        self.path = path
        self.edited = False

    async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
        if request.method == "GET" and not self.edited:
            self.edited = True
            with open(self.path, "r+b") as fh:
                middle = fh.seek(0, os.SEEK_END) // 2
                fh.seek(middle)
                byte = fh.read(1)[0]
                fh.seek(middle)
                fh.write(bytes([byte ^ 1]))
        return await self._inner.handle_async_request(request)

    async def aclose(self) -> None:
        await self._inner.aclose()


def test_an_input_written_to_while_it_is_hashed_never_binds_its_journal(tmp_path, serve):
    """A new job hashes its input while it reads it. A Parquet file whose other columns are
    large is read in a blink and hashed for longer: an edit saved after the read but before the
    hash reached it was bound into the journal, and the re-run resumed on the changed file
    (the old plan, the new rows). Whatever the timing, the job either refuses to load (the file
    changed while it was read) or its journal stays bound to the bytes it read, and a re-run of
    the edited file is refused."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    rows = make_rows(40, 2)
    live = serve(World.from_pairs(rows))
    inp = tmp_path / "in.parquet"
    notes = [os.urandom(2_000_000) for _ in rows]  # 160 MB that only the hash reads
    pq.write_table(pa.table({"Notes": pa.array(notes, pa.binary()),
                             "Module": [m for m, _, _ in rows],
                             "Record Id": [r for _, r, _ in rows],
                             "Cadence Id": [c for _, _, c in rows]}), inp, compression="none")
    del notes
    edit = _EditedWhilePreflighted(inp)
    try:
        first = run_job(job(tmp_path, inp), live.env, transports=Transports(api=edit))
    except InputError as exc:  # refused: nothing planned, nothing sent, no results
        assert "changed while batcher was reading it" in str(exc)
        assert live.sandbox.calls == [] and not (tmp_path / "out.csv").exists()
    else:  # hashed before the edit: bound to what was read, so the edited file is not resumed
        assert first.aborted is None, first.aborted
        again = run_job(job(tmp_path, inp), live.env)
        assert again.exit_code == 2 and "has changed since" in (again.aborted or ""), \
            again.aborted
    assert edit.edited


def test_after_kill_9_few_batches_are_marked_sent_that_never_left(tmp_path, serve):
    """"sent" is committed before a call leaves, so after a kill -9 the journal may name as sent
    (rows NO_ANSWER "Zoho may have applied it", an attempt counted) batches that never left.
    Those are at most the workers waiting for a slot — not a read-ahead of dozens."""
    concurrency = 3
    rows = make_rows(1200, 80, seed=4, max_k=2)  # ~80 calls, 3 at a time, 0.1 s each
    live = serve(World.from_pairs(rows), latency=0.1)
    inp = write_pairs(tmp_path / "in.csv", rows)
    proc = cli("run", str(inp), "--results", str(tmp_path / "out.csv"), "--quiet",
               "--concurrency", str(concurrency), env=live.env)
    deadline = time.monotonic() + 30
    while len(live.sandbox.calls) < 9 and time.monotonic() < deadline and proc.poll() is None:
        time.sleep(0.005)
    os.kill(proc.pid, signal.SIGKILL)
    proc.communicate()
    assert proc.returncode == -signal.SIGKILL, "the job ended before the kill: make it longer"
    time.sleep(0.5)  # the calls in flight at the kill end at the server (0.1 s each)

    db = sqlite3.connect(tmp_path / "out.journal")
    states = dict(db.execute("SELECT state, count(*) FROM batches GROUP BY state"))
    db.close()
    reached = len(live.sandbox.calls) - states.get("answered", 0)  # left, never answered
    never_left = states.get("sent", 0) - reached
    assert 0 <= never_left <= concurrency, (states, len(live.sandbox.calls))


# ---------------------------------------------------------------------- 10. proxies


class ProxyRecorder:
    """A "proxy" on loopback that records the first line of every request and hangs up, after
    sending ``answer`` if given."""

    def __init__(self, answer: bytes = b"") -> None:
        self.lines: list[str] = []
        self._answer = answer
        self._sock = socket.create_server(("127.0.0.1", 0))
        self.port = self._sock.getsockname()[1]
        self._thread = threading.Thread(target=self._serve, daemon=True)
        self._thread.start()

    def _serve(self) -> None:
        while True:
            try:
                conn, _ = self._sock.accept()
            except OSError:
                return
            with conn:
                conn.settimeout(2)
                data = b""
                try:
                    while b"\r\n" not in data:
                        chunk = conn.recv(1024)
                        if not chunk:
                            break
                        data += chunk
                except OSError:
                    pass
                self.lines.append(data.split(b"\r\n", 1)[0].decode("latin-1"))
                with contextlib.suppress(OSError):
                    conn.sendall(self._answer)

    def close(self) -> None:
        self._sock.close()


@pytest.fixture
def proxy():
    recorder = ProxyRecorder()
    yield recorder
    recorder.close()


@pytest.mark.parametrize("client,credentials,seen", [
    ("api", {"ZOHO_ACCESS_TOKEN": "1000.not-a-real-token"}, "CONNECT www.zohoapis.com:443 "),
    ("accounts", {"ZOHO_CLIENT_ID": "1000.CLIENT", "ZOHO_CLIENT_SECRET": "not-a-real-secret",
                  "ZOHO_REFRESH_TOKEN": "1000.not-a-real-refresh-token"},
     "CONNECT accounts.zoho.com:443 "),
])
@pytest.mark.parametrize("variable", ["HTTPS_PROXY", "https_proxy"])
def test_both_clients_go_through_the_proxy_of_the_environment(tmp_path, proxy, client,
                                                              credentials, seen, variable):
    inp = write_pairs(tmp_path / "in.csv", make_rows(5, 1))
    env = {**credentials, variable: f"http://127.0.0.1:{proxy.port}"}
    started = time.monotonic()

    result = run_job(job(tmp_path, inp, api_domain="https://www.zohoapis.com",
                         retry=policy(attempts=2, outage_after=0.5)),
                     env, stream=io.StringIO())

    assert result.exit_code == 3
    assert proxy.lines, f"the {client} client never tried the proxy"
    assert all(line.startswith(seen) for line in proxy.lines), proxy.lines
    assert time.monotonic() - started < 15
    assert {r["status"] for r in read_results(tmp_path / "out.csv")} == {"not_sent"}


@pytest.mark.parametrize("client,credentials", [
    ("api", {"ZOHO_ACCESS_TOKEN": "1000.not-a-real-token"}),
    ("accounts", {"ZOHO_CLIENT_ID": "1000.CLIENT", "ZOHO_CLIENT_SECRET": "not-a-real-secret",
                  "ZOHO_REFRESH_TOKEN": "1000.not-a-real-refresh-token"}),
])
def test_a_proxy_asking_for_credentials_stops_the_run_at_once_saying_so(tmp_path, client,
                                                                         credentials):
    """Found by trying: a proxy answering 407 was retried as an outage for two minutes, then
    reported as Zoho unreachable. No call passes until its URL carries credentials: one try,
    and a line that says so (without the password it was given)."""
    proxy = ProxyRecorder(b"HTTP/1.1 407 Proxy Authentication Required\r\n"
                          b'Proxy-Authenticate: Basic realm="corp"\r\nContent-Length: 0\r\n\r\n')
    inp = write_pairs(tmp_path / "in.csv", make_rows(5, 1))
    env = {**credentials, "HTTPS_PROXY": f"http://ops:pr0xy-pw@127.0.0.1:{proxy.port}"}
    try:
        result = run_job(job(tmp_path, inp, api_domain="https://www.zohoapis.com",
                             retry=policy(attempts=4, outage_after=2.0)),
                         env, stream=io.StringIO())
    finally:
        proxy.close()

    assert result.exit_code == 3
    assert len(proxy.lines) == 1, proxy.lines
    assert "407" in result.aborted and "pr0xy-pw" not in result.aborted, result.aborted
    assert "unreachable" not in result.aborted
    assert {r["status"] for r in read_results(tmp_path / "out.csv")} == {"not_sent"}


def test_an_unreachable_accounts_server_is_an_outage_not_a_refresh_storm(tmp_path):
    """A token request that never reached the accounts server is no refresh: it must not use up
    the 10-refreshes-in-10-minutes window, and the abort must say that Zoho's accounts server
    could not be reached (naming it), not that "something keeps invalidating tokens"."""
    with socket.create_server(("127.0.0.1", 0)) as s:
        dead = s.getsockname()[1]  # closed again: connections are refused
    inp = write_pairs(tmp_path / "in.csv", make_rows(5, 1))
    env = {"ZOHO_CLIENT_ID": "1000.CLIENT", "ZOHO_CLIENT_SECRET": "not-a-real-secret",
           "ZOHO_REFRESH_TOKEN": "1000.not-a-real-refresh-token",
           "ZOHO_API_DOMAIN": f"http://127.0.0.1:{dead}",
           "ZOHO_ACCOUNTS_URL": f"http://127.0.0.1:{dead}"}

    result = run_job(job(tmp_path, inp, retry=policy(attempts=2, outage_after=1.0)), env,
                     stream=io.StringIO())

    assert result.exit_code == 3
    assert "refreshes" not in result.aborted, result.aborted
    assert f"127.0.0.1:{dead}" in result.aborted or "accounts" in result.aborted, result.aborted
