"""The README's cron line and Airflow tasks (examples/nightly.py), run for real against the
sandbox: each hands a scheduler the right verdict for each exit code."""

from __future__ import annotations

import importlib.util
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

from batcher.sandbox.world import World

from .conftest import write_pairs
from .test_e2e import make_rows

ROOT = Path(__file__).resolve().parent.parent


def nightly():
    spec = importlib.util.spec_from_file_location("nightly", ROOT / "examples" / "nightly.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def cron_command() -> str:
    """The command part of the README's crontab line."""
    readme = (ROOT / "README.md").read_text()
    line = re.search(r"^15 2 \* \* \* (.+)$", readme, re.M)
    assert line, "the README has a crontab line"
    return line.group(1)


def test_the_python_operator_succeeds_on_0_and_1_and_fails_on_2_and_3(tmp_path, serve):
    rows = make_rows(20, 2)
    live = serve(World.from_pairs(rows))
    job = nightly()
    good = write_pairs(tmp_path / "good.csv", rows)
    summary = job.offboard(str(good), str(tmp_path / "good-{date}.csv"), env=live.env)
    assert summary["by_status"] == {"unenrolled": len(rows)}
    with_bad = write_pairs(tmp_path / "bad.csv", rows[:3] + [("Leads", "123", rows[0][2])])
    assert job.offboard(str(with_bad), str(tmp_path / "bad.csv.out.csv"),
                        env=live.env)["by_status"]["invalid"] == 1  # exit 1: still a success
    with pytest.raises(job.JobFailed, match="exit 2"):
        job.offboard(str(tmp_path / "missing.csv"), str(tmp_path / "x.csv"), env=live.env)
    with pytest.raises(job.JobFailed, match="exit 3"):  # no credentials: aborted, retry later
        job.offboard(str(good), str(tmp_path / "nocreds.csv"), env={})


@pytest.mark.parametrize("case, task_rc", [("good", 0), ("one_invalid", 0), ("missing", 2),
                                           ("no_credentials", 3)])
def test_the_bash_operator_and_the_cron_line_give_the_scheduler_the_right_exit(
        tmp_path, serve, case, task_rc):
    rows = make_rows(10, 2)
    live = serve(World.from_pairs(rows))
    inp = tmp_path / "leavers.csv"
    if case != "missing":
        write_pairs(inp, rows + ([("Leads", "123", rows[0][2])] if case == "one_invalid" else []))
    env = {**os.environ, **({} if case == "no_credentials" else live.env),
           "PATH": f"{Path(sys.executable).parent}:{os.environ['PATH']}",
           "OFFBOARD_INPUT": str(inp), "OFFBOARD_RESULTS": str(tmp_path / "out/{date}.csv")}
    if case == "no_credentials":
        env = {k: v for k, v in env.items() if not k.startswith("ZOHO_")}
    (tmp_path / "out").mkdir()
    task = subprocess.run(["bash", "-c", nightly().BASH_COMMAND], env=env, capture_output=True,
                          text=True, timeout=120)
    assert task.returncode == task_rc, task.stderr
    # the cron line: a mail (here a file) only when the job did not finish
    mail = tmp_path / "mail.txt"
    fake_mail = tmp_path / "bin"
    fake_mail.mkdir()
    (fake_mail / "mail").write_text(f"#!/bin/sh\ncat >> {mail}\n")
    (fake_mail / "mail").chmod(0o755)
    env["PATH"], env["HOME"] = f"{fake_mail}:{env['PATH']}", str(tmp_path)
    subprocess.run(["bash", "-c", f"cd {tmp_path} && {cron_command()}"], env=env,
                   capture_output=True, text=True, timeout=120)
    assert mail.exists() == (task_rc >= 2)


@pytest.mark.parametrize("change", [
    {"timeout": 0}, {"timeout": -1}, {"timeout": "30"}, {"timeout": float("nan")},
    {"concurrency": "4"}, {"concurrency": 2.5}, {"max_calls": 1.5}, {"max_calls": "10"},
    {"max_retry_rounds": None}, {"halt_on_failures": "5"}, {"calm_seconds": None},
    {"input": None}, {"input": 5}, {"results": None},
    {"retry": None}, {"retry": {"attempts": 3}}, {"reading": {"module": "Leads"}},
    {"module": 123}, {"api_domain": 5}, {"dry_run": "yes"}, {"log_format": None},
    # found by trying: a NUL in a path raised a bare ValueError ("embedded null byte"), bytes
    # a TypeError; a negative calm_seconds was taken
    {"input": "in\0.csv"}, {"results": "out\0.csv"}, {"journal": "j\0.journal"},
    {"input": b"in.csv"}, {"calm_seconds": -1},
])
def test_a_scheduler_handing_settings_of_the_wrong_kind_gets_a_usage_error(tmp_path, change):
    """Found by trying: `timeout=0` made a dry run wait two minutes and blame Zoho; a string
    for a count raised a bare TypeError, or 'internal error, re-run to resume'."""
    from dataclasses import replace

    from batcher.errors import UsageError
    from batcher.job import RunSettings, run_job

    settings = replace(RunSettings(input=tmp_path / "in.csv", results=tmp_path / "out.csv",
                                   dry_run=True, preflight=False), **change)
    with pytest.raises(UsageError) as err:
        run_job(settings, {})
    assert str(next(iter(change))) in str(err.value)
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize("change", [{"all_cadences": "yes"}, {"cadences": "554023000004092008"},
                                    {"cadences": [554023000004092008]}, {"module": 5},
                                    {"delimiter": b";"}])
def test_input_options_of_the_wrong_kind_are_a_usage_error(change):
    """Found by trying: all_cadences="yes" let the calls go out, then raised a TypeError; one
    string of cadences was read a character at a time ("--cadence '5' is not ...")."""
    from batcher.errors import UsageError
    from batcher.inputs import InputOptions

    with pytest.raises(UsageError, match=next(iter(change))):
        InputOptions(**change)


@pytest.mark.parametrize("value", [5, None, b"s3cr3t-value-in-bytes"])
def test_an_environment_value_that_is_not_text_is_a_usage_error_naming_only_the_variable(
        tmp_path, value):
    """Found by trying: `env={**os.environ, "ZOHO_CLIENT_SECRET": 5}` raised a bare
    AttributeError ('int' object has no attribute 'strip') from deep in the credentials."""
    from batcher.errors import UsageError
    from batcher.job import RunSettings, run_job

    inp = write_pairs(tmp_path / "in.csv", make_rows(2, 1))
    env = {"ZOHO_CLIENT_ID": "id", "ZOHO_CLIENT_SECRET": value, "ZOHO_REFRESH_TOKEN": "r"}
    with pytest.raises(UsageError, match="ZOHO_CLIENT_SECRET") as err:
        run_job(RunSettings(input=inp, results=tmp_path / "out.csv", quiet=True), env)
    assert "s3cr3t" not in str(err.value)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["in.csv"]


def test_a_stopper_serves_one_job_and_a_second_is_refused_not_stopped_at_once(tmp_path, serve):
    """Found by trying: a scheduler that kept one Stopper for a task and stopped its first run
    saw every later run "aborted: host says stop" at once, exit 3, nothing sent — its retries
    never got anywhere. A stopper given to a second job is now a UsageError (nothing written);
    a new one runs the job to the end."""
    import threading

    from batcher.errors import UsageError
    from batcher.job import RunSettings, run_job
    from batcher.stopping import Stopper

    rows = make_rows(400, 5)
    live = serve(World.from_pairs(rows), latency=0.05)
    inp = write_pairs(tmp_path / "in.csv", rows)
    settings = RunSettings(input=inp, results=tmp_path / "out.csv", quiet=True, concurrency=1)
    stopper = Stopper()
    threading.Timer(0.3, stopper.request, ("the host stops it",)).start()
    first = run_job(settings, live.env, stopper=stopper)
    assert first.exit_code == 3 and "the host stops it" in first.aborted
    assert first.summary.by_status.get("not_sent")
    before = {p.name: p.stat().st_mtime_ns for p in tmp_path.iterdir()}
    with pytest.raises(UsageError, match="Stopper"):
        run_job(settings, live.env, stopper=stopper)
    assert {p.name: p.stat().st_mtime_ns for p in tmp_path.iterdir()} == before
    again = run_job(settings, live.env, stopper=Stopper())
    assert again.exit_code == 0 and again.aborted is None
    assert set(live.sandbox.removed) == set(rows)


def test_a_hosts_bare_log_writer_takes_the_jobs_lines(tmp_path, serve):
    """Found by trying: a scheduler's log proxy with `write` alone (no `isatty`, `flush` or
    `encoding`) given as `stream=`, or put in `sys.stderr`, made run_job raise AttributeError —
    or, with JSON lines, end every run "internal error", exit 3, nothing sent."""
    import json
    import sys

    from batcher.job import RunSettings, run_job

    class Writer:
        def __init__(self) -> None:
            self.text = ""

        def write(self, text: str) -> int:
            self.text += text
            return len(text)

    rows = make_rows(30, 3)
    live = serve(World.from_pairs(rows))
    inp = write_pairs(tmp_path / "in.csv", rows)
    given = Writer()
    result = run_job(RunSettings(input=inp, results=tmp_path / "a.csv"), live.env, stream=given)
    assert result.exit_code == 0, result.aborted
    assert f"{len(rows)} rows = {len(rows)} unenrolled" in given.text
    host, sys.stderr = sys.stderr, Writer()
    try:
        result = run_job(RunSettings(input=inp, results=tmp_path / "b.csv", log_format="json"),
                         live.env)
        said = sys.stderr.text
    finally:
        sys.stderr = host
    assert result.exit_code == 0, result.aborted
    events = [json.loads(line)["event"] for line in said.splitlines()]
    assert events[0] == "start" and events[-1] == "end"


def test_run_job_wants_a_mapping_for_the_environment(tmp_path):
    from batcher.errors import UsageError
    from batcher.job import RunSettings, run_job

    with pytest.raises(UsageError):
        run_job(RunSettings(input=tmp_path / "in.csv", results=tmp_path / "o.csv"), None)


@pytest.mark.parametrize("keyword", [{"stream": "job.log"}, {"transports": None},
                                     {"stopper": "stop"}])
def test_run_jobs_keywords_of_the_wrong_kind_are_a_usage_error(tmp_path, keyword):
    """Found by trying: `stream="job.log"` (a path for the log) raised a bare AttributeError
    ('str' object has no attribute 'write') from the job's first line."""
    from batcher.errors import UsageError
    from batcher.job import RunSettings, run_job

    with pytest.raises(UsageError, match=next(iter(keyword))):
        run_job(RunSettings(input=tmp_path / "in.csv", results=tmp_path / "o.csv",
                            dry_run=True, preflight=False), {}, **keyword)
    assert list(tmp_path.iterdir()) == []


def test_a_dated_job_stopped_early_says_how_to_resume_it_after_midnight(tmp_path, serve):
    """Found by trying: a nightly `--results 'out/{date}.csv' --max-calls N` stopped with
    "re-run the same command to continue" — after midnight UTC that command is the next
    night's new job, which sends this one's calls again from the first; the line now names the
    dated results that resume it (a fixed path says what it always said)."""
    import time

    from batcher.job import RunSettings, run_job

    rows = make_rows(300, 2)
    live = serve(World.from_pairs(rows))
    inp = write_pairs(tmp_path / "in.csv", rows)
    dated = run_job(RunSettings(input=inp, results=tmp_path / "{date}.csv", max_calls=1,
                                quiet=True), live.env)
    today = time.strftime("%Y-%m-%d", time.gmtime())
    assert dated.exit_code == 3 and "--max-calls 1 reached" in dated.aborted
    assert f"resume this one with --results {tmp_path / today}.csv" in dated.aborted
    assert "after it, {date} makes it a new job" in dated.aborted
    fixed = run_job(RunSettings(input=inp, results=tmp_path / "fixed.csv", max_calls=1,
                                quiet=True), live.env)
    assert fixed.exit_code == 3 and "midnight" not in fixed.aborted


def test_the_dated_resume_line_quotes_a_path_with_spaces_for_the_shell():
    """Found by trying: `--results 'Équipe Ops/départs {date}.xlsx'` stopped early named
    `--results Équipe Ops/départs 2026-…xlsx` unquoted: pasted, the shell split it in three."""
    import shlex

    from batcher.job import RunSettings, _resume_tonight, dated

    settings = RunSettings(input="in.csv", results="Équipe Ops/départs {date}.xlsx",
                           journal="Équipe Ops/j {date}.journal", max_calls=1)
    tonight = dated(settings)
    line = _resume_tonight(settings, tonight)
    # absolute: the line is read in a log and pasted in whatever folder the reader is
    results, journal = (str(Path(p).absolute()) for p in (tonight.results, tonight.journal))
    assert f"--results {shlex.quote(results)} " in line
    assert f"--journal {shlex.quote(journal)} " in line
    assert shlex.split(line.split("resume this one with ", 1)[1].split(" (")[0]) == [
        "--results", results, "--journal", journal]


#: a few pairs whose ids end in no zeros (a warning about rounding would be mail from cron)
CRON_ROWS = make_rows(5, 2, base=554023000001234501)


def _cron_run(tmp_path: Path, live, home: Path | None, cwd: Path, umask: int = 0o022,
              **extra: str) -> subprocess.CompletedProcess:
    """``batcher run`` as cron starts it: an empty environment but PATH and the credentials,
    started in ``cwd``, stdin closed, with the token cache on."""
    inp = write_pairs(tmp_path / "in.csv", CRON_ROWS)
    (tmp_path / "out").mkdir(exist_ok=True)
    env = {"PATH": "/usr/bin:/bin", "PYTHONPATH": str(ROOT),
           **{k: v for k, v in live.env.items() if k != "BATCHER_NO_TOKEN_CACHE"},
           **({"HOME": str(home)} if home is not None else {}), **extra}
    return subprocess.run(
        [sys.executable, "-m", "batcher", "run", str(inp), "--results",
         str(tmp_path / "out" / "{date}.csv"), "--quiet"], env=env, cwd=cwd,
        stdin=subprocess.DEVNULL, capture_output=True, text=True, timeout=60,
        preexec_fn=lambda: os.umask(umask))


def test_a_home_that_does_not_exist_is_never_created_for_the_token_cache(tmp_path, serve):
    """Found by trying: with HOME at a missing folder (a service account's /nonexistent),
    the token cache created it, and ~/.cache/batcher in it."""
    live = serve(World.from_pairs(CRON_ROWS))
    home, cwd = tmp_path / "nonexistent", tmp_path / "cwd"
    cwd.mkdir()
    done = _cron_run(tmp_path, live, home, cwd)
    assert done.returncode == 0, done.stderr
    assert (done.stdout, done.stderr) == ("", "")
    assert not home.exists() and list(cwd.iterdir()) == []


def test_a_relative_cache_folder_is_not_made_in_the_folder_cron_starts_in(tmp_path, serve):
    """Found by trying: BATCHER_TOKEN_CACHE_DIR=rel/cache, run from cron's current folder
    (/), made /rel/cache and kept tokens there (a relative XDG_CACHE_HOME is already ignored
    by platformdirs, as the XDG spec says)."""
    live = serve(World.from_pairs(CRON_ROWS))
    home, cwd = tmp_path / "home", tmp_path / "cwd"
    home.mkdir()
    cwd.mkdir()
    done = _cron_run(tmp_path, live, home, cwd, BATCHER_TOKEN_CACHE_DIR="rel/cache")
    assert done.returncode == 0, done.stderr
    assert list(cwd.iterdir()) == [] and list(home.iterdir()) == []


def test_under_umask_000_the_token_caches_folders_are_private(tmp_path, serve):
    """Found by trying: a job run with umask 000 made ~/.cache world-writable (mkdir's parents
    follow the umask), where anyone could swap the cache folder for their own."""
    live = serve(World.from_pairs(CRON_ROWS))
    home = tmp_path / "home"
    home.mkdir()
    done = _cron_run(tmp_path, live, home, home, umask=0o000)
    assert done.returncode == 0, done.stderr
    cache = home / ".cache" / "batcher"
    modes = {p.name: p.stat().st_mode & 0o777 for p in (home / ".cache", cache)}
    assert modes == {".cache": 0o700, "batcher": 0o700}
    assert [p.stat().st_mode & 0o777 for p in cache.iterdir()] == [0o600]  # the token, cached
    assert {p.stat().st_mode & 0o777 for p in (tmp_path / "out").iterdir()} == {0o600}


def test_a_cron_log_gets_a_few_plain_lines_and_the_long_phases(tmp_path, serve):
    """``batcher run`` with stderr in a file, as cron's ``>> log 2>&1``: found by trying, it
    wrote a progress line at its first answer and every 5 s after (an eight-hour job, 5,760
    lines) and said nothing of a setup phase of minutes. Here the log's pacing is shrunk (the
    first line at 60 s: after this job's end) and the reading made slow, to see both."""
    rows = make_rows(400, 3)
    live = serve(World.from_pairs(rows), latency=0.05)
    inp = write_pairs(tmp_path / "in.csv", rows)
    program = ("import sys, time\n"
               "import batcher.progress as progress, batcher.job as job\n"
               "progress.LOG_FIRST, progress.LOG_PHASE = 60.0, 0.2\n"
               "scan = job.scan_input\n"
               "def slow(*a, **k):\n"
               "    time.sleep(0.6)\n"
               "    return scan(*a, **k)\n"
               "job.scan_input = slow\n"
               "from batcher.cli import entry\n"
               "sys.argv[0] = 'batcher'\n"
               "entry()\n")
    log = tmp_path / "batcher.log"
    with open(log, "w") as err:
        done = subprocess.run(
            [sys.executable, "-c", program, "run", str(inp), "--results",
             str(tmp_path / "out.csv"), "--concurrency", "2"],
            env={**os.environ, **live.env}, cwd=ROOT, stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE, stderr=err, text=True, timeout=120)
    text = log.read_text()
    assert done.returncode == 0, text
    assert not re.search(r"[\x00-\x08\x0b-\x1f\x7f]", text)  # no bar, no colour, no \r
    lines = text.splitlines()
    reading = [line for line in lines if line.startswith(f"reading {inp}")]
    assert reading[0] == f"reading {inp} …" and re.fullmatch(r".*: [0-9.]+ s", reading[1])
    progress = [line for line in lines if " pairs  batches " in line]
    assert len(progress) == 1 and progress[0].startswith(f"{len(rows):,}/{len(rows):,} pairs")


def test_a_hosts_env_alone_names_the_authorities_tls_trusts(tmp_path, serve, monkeypatch):
    """``run_job(settings, env)`` reads SSL_CERT_FILE / SSL_CERT_DIR from ``env`` only: found by
    trying, the process's were used (so a bad one the host never passed broke its job, as an
    "internal error" after the journal was made) and the host's were ignored. One the host
    passes that cannot be used is exit 2 naming it, before any file is made."""
    from batcher.errors import UsageError
    from batcher.job import RunSettings, run_job

    rows = make_rows(10, 2)
    live = serve(World.from_pairs(rows))
    inp = write_pairs(tmp_path / "in.csv", rows)
    (out := tmp_path / "out").mkdir()
    with pytest.raises(UsageError, match="SSL_CERT_FILE=/no/such/bundle.pem") as err:
        run_job(RunSettings(input=inp, results=out / "a.csv", quiet=True),
                {**live.env, "SSL_CERT_FILE": "/no/such/bundle.pem"})
    assert err.value.exit_code == 2 and list(out.iterdir()) == []
    monkeypatch.setenv("SSL_CERT_FILE", "/no/such/bundle.pem")  # the host's own, not the job's
    result = run_job(RunSettings(input=inp, results=out / "b.csv", quiet=True), live.env)
    assert result.exit_code == 0, result.aborted


def test_a_dry_runs_journal_goes_to_the_temporary_folder_the_hosts_env_names(tmp_path):
    """A dry run's journal (as large as the real one's) was made in the process's temporary
    folder whatever TMPDIR the host passed in ``env``."""
    from batcher.job import RunSettings, run_job

    rows = make_rows(10, 2)
    inp = write_pairs(tmp_path / "in.csv", rows)
    (temp := tmp_path / "job-temp").mkdir()

    class Looking:
        seen: list[list[str]] = []

        def write(self, text: str) -> int:  # at each line, what the folder holds
            self.seen.append(sorted(p.name for p in temp.iterdir()))
            return len(text)

    result = run_job(RunSettings(input=inp, results=tmp_path / "out.csv", dry_run=True,
                                 preflight=False, log_format="json"),
                     {"TMPDIR": str(temp)}, stream=Looking())
    assert result.exit_code == 0, result.aborted
    assert any(names and names[0].startswith("batcher-dry-") for names in Looking.seen)
    assert list(temp.iterdir()) == []  # and gone after it
