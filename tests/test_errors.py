"""The machine running out of files, memory or threads is neither a bad input (exit 2: "do not
retry") nor a bug ("report this"): exit 3, one line that says so, and the same command resumes."""

from __future__ import annotations

import errno
import os
import resource
import subprocess
import sys
from pathlib import Path

import httpx
import pyarrow as pa
import pytest

from batcher.errors import MachineLimit, machine_limit

ROOT = Path(__file__).resolve().parent.parent


@pytest.mark.parametrize("exc", [
    MemoryError(),
    OSError(errno.EMFILE, "Too many open files"),
    OSError(errno.ENFILE, "Too many open files in system"),
    pa.ArrowInvalid("Failed to open local file 'x.csv'. Detail: [errno 24] Too many open files"),
    pa.ArrowInvalid("Failed to launch worker thread"),
    RuntimeError("can't start new thread"),
    httpx.ConnectError("[Errno 24] Too many open files"),
    ImportError("libopenblas.so: failed to map segment from shared object"),
], ids=lambda e: type(e).__name__ + ":" + str(e)[:30])
def test_what_the_machine_ran_out_of_is_a_machine_limit(exc):
    limit = machine_limit(exc, "reading in.csv")
    assert isinstance(limit, MachineLimit) and limit.exit_code == 3
    assert str(limit).startswith("reading in.csv: the machine ran out of room")
    assert "re-run the same command" in str(limit)


@pytest.mark.parametrize("exc", [
    pa.ArrowInvalid("CSV parse error: Expected 3 columns, got 4"),
    OSError(errno.ENOENT, "No such file or directory"),
    ValueError("could not convert"),
    UnicodeDecodeError("utf-8", b"\xff", 0, 1, "invalid start byte"),
    httpx.ReadError("[Errno 11] Resource temporarily unavailable"),  # the network's
])
def test_a_bad_file_or_a_bug_is_not_a_machine_limit(exc):
    assert machine_limit(exc) is None


def test_a_run_with_too_few_file_descriptors_says_so_and_exits_3(tmp_path):
    inp = tmp_path / "in.csv"
    inp.write_text("module,record_id,cadence_id\n" + "".join(
        f"Leads,{554023000001000000 + i},{554023000004000001 + i % 5}\n" for i in range(2000)))

    def few_files() -> None:  # a scheduler's `ulimit -n`
        resource.setrlimit(resource.RLIMIT_NOFILE, (10, 10))

    out = subprocess.run(
        [sys.executable, "-m", "batcher", "run", str(inp), "--results", str(tmp_path / "o.csv"),
         "--no-preflight", "--quiet"], cwd=ROOT, capture_output=True, text=True, timeout=120,
        env={**os.environ, "ZOHO_ACCESS_TOKEN": "t", "ZOHO_API_DOMAIN": "http://127.0.0.1:9"},
        preexec_fn=few_files)
    assert out.returncode == 3, out.stderr
    assert "the machine ran out of room" in out.stderr, out.stderr
    for wrong in ("cannot be read", "internal error", "Traceback"):
        assert wrong not in out.stderr
