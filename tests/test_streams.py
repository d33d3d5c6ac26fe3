"""Where a scheduler puts the program's stdout and stderr cannot change what the job did or its
exit code: a reader that stops early (``| head``), a full disk, a descriptor closed (``2>&-``),
an ASCII locale. Real processes, real pipes, a real sandbox."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from batcher.sandbox.world import World

from .conftest import read_results, write_pairs
from .test_e2e import make_rows

ROOT = Path(__file__).resolve().parent.parent
SAMPLE = ROOT / "sample_data" / "offboarding.csv"


def batcher(*args: str, env: dict[str, str] | None = None, **kw) -> subprocess.Popen:
    kw.setdefault("stdout", subprocess.PIPE)
    kw.setdefault("stderr", subprocess.PIPE)
    return subprocess.Popen([sys.executable, "-m", "batcher", *args], cwd=ROOT,
                            env={**os.environ, **(env or {})}, **kw)


def no_crash(stderr: bytes) -> None:
    text = stderr.decode("utf-8", "replace")
    for sign in ("Traceback", "internal error", "Broken pipe", "Exception ignored"):
        assert sign not in text, text


@pytest.mark.parametrize("command", [
    ["plan", str(SAMPLE)],
    ["plan", str(SAMPLE), "--json"],
])
def test_a_reader_that_stops_early_changes_nothing(command):
    expected = subprocess.run([sys.executable, "-m", "batcher", *command], cwd=ROOT,
                              capture_output=True).returncode
    proc = batcher(*command)
    proc.stdout.close()  # `| head -0`: the reader is gone before the first line
    _, err = proc.communicate(timeout=60)
    assert proc.returncode == expected == 1  # the sample's invalid rows
    no_crash(err)


def job(tmp_path: Path, serve) -> tuple[list[str], dict[str, str], list]:
    rows = make_rows(300, 6)
    live = serve(World.from_pairs(rows))
    inp = write_pairs(tmp_path / "in.csv", rows)
    return ["run", str(inp), "--results", str(tmp_path / "out.csv")], live.env, rows


def finished(tmp_path: Path, rows: list) -> None:
    got = read_results(tmp_path / "out.csv")
    assert len(got) == len(rows) and {r["status"] for r in got} == {"unenrolled"}


@pytest.mark.parametrize("log_format", ["text", "json"])
def test_a_job_whose_log_reader_stops_at_once_still_finishes_exit_0(tmp_path, serve, log_format):
    args, env, rows = job(tmp_path, serve)
    proc = batcher(*args, "--log-format", log_format, env=env)
    proc.stderr.close()  # `2> >(head -c 1)`: every line of the log fails
    proc.communicate(timeout=120)
    assert proc.returncode == 0
    finished(tmp_path, rows)


def test_a_job_with_stderr_closed_runs_as_usual(tmp_path, serve):
    args, env, rows = job(tmp_path, serve)
    proc = batcher(*args, "--log-format", "json", "--json", env=env, stderr=None,
                   preexec_fn=lambda: os.close(2))  # `2>&-`
    out, _ = proc.communicate(timeout=120)
    assert proc.returncode == 0
    assert json.loads(out)["exit_code"] == 0
    finished(tmp_path, rows)


def test_a_summary_that_cannot_be_printed_is_said_and_the_exit_code_stands(tmp_path, serve):
    args, env, rows = job(tmp_path, serve)
    with open("/dev/full", "w") as full:
        proc = batcher(*args, "--json", "--quiet", env=env, stdout=full)
        _, err = proc.communicate(timeout=120)
    assert proc.returncode == 0
    no_crash(err)
    assert b"standard output could not be written (No space left on device)" in err
    finished(tmp_path, rows)


def test_a_summary_that_cannot_be_printed_is_said_as_json_with_json_lines(tmp_path, serve):
    """With ``--log-format json`` every stderr line is one JSON object: the line saying that
    ``--json``'s summary was lost (stdout on a full disk) too, not a line of text a log
    collector cannot parse."""
    args, env, rows = job(tmp_path, serve)
    with open("/dev/full", "w") as full:
        proc = batcher(*args, "--json", "--log-format", "json", env=env, stdout=full)
        _, err = proc.communicate(timeout=120)
    assert proc.returncode == 0
    no_crash(err)
    lines = [json.loads(line) for line in err.decode().splitlines()]
    assert lines[-1]["event"] == "stdout_lost" and lines[-1]["exit_code"] == 0
    assert "standard output could not be written (No space left on device)" in \
        lines[-1]["message"]
    finished(tmp_path, rows)


def test_an_ascii_locale_escapes_what_it_cannot_show(tmp_path, serve):
    args, env, rows = job(tmp_path, serve)
    ascii_env = {**env, "PYTHONIOENCODING": "ascii"}
    results = tmp_path / "résultats.csv"
    args[args.index("--results") + 1] = str(results)
    proc = batcher(*args, env=ascii_env)
    _, err = proc.communicate(timeout=120)
    assert proc.returncode == 0
    assert b"r\\xe9sultats" in err  # the summary, escaped
    journal = str(results.with_suffix(".journal"))
    for command in (["status", "--journal", journal],
                    ["report", "--journal", journal, "--results", str(tmp_path / "again.csv")]):
        proc = batcher(*command, env=ascii_env)
        out, err = proc.communicate(timeout=120)
        assert proc.returncode == 0, err
        no_crash(err)
        assert b"\\xd7" in out + err or b"r\\xe9sultats" in out + err


def test_the_last_log_format_given_decides_how_a_usage_error_is_said():
    proc = batcher("run", "x.csv", "--log-format", "json", "--log-format=text", "--bogus")
    _, err = proc.communicate(timeout=60)
    assert proc.returncode == 2
    assert err.decode().splitlines()[-1].startswith("batcher: error: ")  # text, not JSON


def test_json_lines_stay_json_under_an_ascii_locale(tmp_path, serve):
    args, env, rows = job(tmp_path, serve)
    args[args.index("--results") + 1] = str(tmp_path / "résultats.csv")
    proc = batcher(*args, "--log-format", "json", env={**env, "PYTHONIOENCODING": "ascii"})
    _, err = proc.communicate(timeout=120)
    assert proc.returncode == 0
    lines = [json.loads(line) for line in err.decode("ascii").splitlines()]  # every one
    assert lines[-1]["event"] == "end" and "résultats" in lines[-1]["summary"]["results_path"]


@pytest.mark.parametrize("wrong", [[], ["--bogus"], ["--concurrency", "x"]])
def test_a_usage_error_is_one_json_line_when_the_log_is_json(wrong):
    proc = batcher("run", "x.csv", "--log-format", "json", "--json", *wrong,
                   *(["--results", "r.csv"] if wrong else []))
    out, err = proc.communicate(timeout=60)
    assert proc.returncode == 2
    (line,) = err.decode().splitlines()
    doc = json.loads(line)
    assert doc["event"] == "error" and doc["exit_code"] == 2
    assert ("--results" if not wrong else wrong[0]) in doc["message"]
    assert json.loads(out) == {"exit_code": 2, "error": doc["message"]}  # `run --json`: always


def test_a_library_hosts_stderr_is_never_held_back_only_the_command_lines():
    """The Rust panic filter points stderr's descriptor at a file while calamine reads: in a
    process the command line owns. A scheduler calling the library keeps its stderr as it is
    (its other threads' lines neither delayed nor filtered)."""
    code = """
import os
from batcher import hostsettings
from batcher.streams import without_rust_panics
before = os.fstat(2).st_ino
with without_rust_panics():
    host = os.fstat(2).st_ino
hostsettings.own_stderr()
with without_rust_panics():
    owned = os.fstat(2).st_ino
print(host == before, owned == before)
"""
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).parents[1])}
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                          timeout=60, env=env)
    assert done.stdout.split() == ["True", "False"], done.stderr
