"""Supervision (issue 9, item 2; DESIGN.md §2, invariant 7 "Never hangs").

A failure of any task — the feeder, a worker, a write in the journal's thread — stops the run at
once, never a silent wait. A failing journal disk (full, read-only, damaged pages) is exit 3 with
one line naming the journal; a journal that contradicts its input is exit 2; the results are
written from the journal whenever it can still be read, and when they cannot be written one line
says which command recovers them. No traceback on the command line for any of these.

Everything runs on real SQLite journal files. Failures are injected only through the objects the
product takes (a ``Journal`` subclass given to ``Executor``, an ``httpx.MockTransport`` handler)
or by the file system itself (a small tmpfs, filled or remounted read-only). Every run is bounded
(``asyncio.wait_for``, a thread join, a subprocess timeout) so that a hang fails its test instead
of blocking the suite.
"""

from __future__ import annotations

import asyncio
import errno
import io
import json
import os
import random
import re
import resource
import shlex
import shutil
import sqlite3
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import httpx
import pytest

import batcher
from batcher.counts import status_counts
from batcher.errors import BatcherError, EngineError, JournalIOError
from batcher.executor import Executor, ExecutorSettings
from batcher.job import run_job
from batcher.journal import Journal, stored_ids
from batcher.models import Batch
from batcher.sandbox.world import World

from .conftest import read_results, write_pairs
from .test_e2e import assert_exact, make_rows, settings
from .test_executor import API, FAST, cid, journal_with, results, rid, success

HANG_S = 10.0  # a run still going after this long is a hang: the test fails
PROMPT_S = 3.0  # "at once": a stopped run returns well within this
#: the package under test, for the command-line subprocesses (whatever PYTHONPATH chose)
PACKAGE_ROOT = Path(batcher.__file__).resolve().parent.parent
OPEN = ("pending", "sent")


# ---------------------------------------------------------------------- helpers: the engine


class BreakingJournal(Journal):
    """A real journal whose ``mark_sent_many`` or ``record_groups`` fails on its n-th call.

    ``in_tx=True`` raises the error inside a real journal transaction, after the method's own
    first write, as SQLite raises its errors: the transaction must roll back and the error
    reach the run the way a real one does.
    """

    breaks: dict[str, tuple[int, BaseException, bool]]

    def __init__(self, *args, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self.breaks = {}
        self.seen: dict[str, int] = {}

    def fail(self, method: str, on_call: int, error: BaseException, *, in_tx: bool = False):
        self.breaks[method] = (on_call, error, in_tx)
        return self

    def _due(self, method: str) -> tuple[BaseException, bool] | None:
        self.seen[method] = n = self.seen.get(method, 0) + 1
        on_call, error, in_tx = self.breaks.get(method, (0, None, False))
        return (error, in_tx) if n == on_call else None

    def mark_sent_many(self, batch_ids):
        due = self._due("mark_sent_many")
        if due is None:
            return super().mark_sent_many(batch_ids)
        error, in_tx = due
        if not in_tx:
            raise error
        with self._tx() as db:
            db.execute("UPDATE batches SET state = 'sent', attempts = attempts + 1"
                       " WHERE batch_id = ?", (batch_ids[0],))
            raise error

    def record_groups(self, batch_id, groups, attempts=None):
        due = self._due("record_groups")
        if due is not None:
            raise due[0]
        return super().record_groups(batch_id, groups, attempts)


def loaded(tmp_path: Path, batches: list[Batch], cls: type[Journal] = BreakingJournal):
    """A journal file loaded with ``batches``, reopened as ``cls``."""
    journal_with(tmp_path, batches).close()
    return cls.open(tmp_path / "job.journal", "fp")


def grid(n: int, records: int = 2, cadences: int = 2) -> list[Batch]:
    return [Batch(f"b{i:06d}", "Leads", tuple(rid(i * records + k) for k in range(records)),
                  tuple(cid(j) for j in range(cadences))) for i in range(n)]


def states(j: Journal) -> dict[str, str]:
    return dict(j._query("SELECT batch_id, state FROM batches"))


def ok(request: httpx.Request) -> httpx.Response:
    body = json.loads(request.content)
    return httpx.Response(200, json=success(body["ids"], body["cadences_ids"]))


def engine(j: Journal, handler, **kw) -> tuple[BaseException | None, float]:
    """Run the executor over the journal's pending batches, bounded by ``HANG_S``.

    Returns (the error the run raised or None, seconds it took); a run that does not return in
    time fails the test (the cancelled run must then unwind too, or ``asyncio.run`` hangs).
    """
    kw.setdefault("retry", FAST)

    async def go() -> BaseException | None:
        async with httpx.AsyncClient(transport=httpx.MockTransport(handler)) as client:
            ex = Executor(client, j, ExecutorSettings(**kw), api_domain=lambda: API)
            try:
                await asyncio.wait_for(ex.run(j.pending_batches()), HANG_S)
            except TimeoutError:
                pytest.fail(f"the run hangs: still waiting after {HANG_S:.0f} s")
            except Exception as exc:  # noqa: BLE001 - the test inspects it
                return exc
        return None

    t0 = time.monotonic()
    error = asyncio.run(go())
    return error, time.monotonic() - t0


# ---------------------------------------------------------------------- 1. the feeder


def test_feeder_crash_stops_the_run_at_once_and_the_job_resumes(tmp_path):
    j = loaded(tmp_path, grid(30)).fail("mark_sent_many", 2, RuntimeError("feeder blew up"))

    error, took = engine(j, ok, concurrency=2)

    assert isinstance(error, EngineError), repr(error)
    assert "feeder" in str(error) and "RuntimeError: feeder blew up" in str(error)
    assert took < PROMPT_S
    after = states(j)
    assert "pending" in after.values()  # the rest was never handed out
    # what the feeder had handed out before it died was either answered or stays open
    assert set(after.values()) <= {"answered", *OPEN}
    answered = {b for b, s in after.items() if s == "answered"}
    assert all(r["status"] == ("unenrolled" if r["batch_id"] in answered else "not_sent")
               for r in results(j).values())
    j.close()

    # resumable: the same journal, a sound disk, finishes without re-sending an answer
    j = Journal.open(tmp_path / "job.journal", "fp")
    sent: list[tuple] = []

    def record(request: httpx.Request) -> httpx.Response:
        body = json.loads(request.content)
        sent.append(tuple(body["ids"]))
        return ok(request)

    assert engine(j, record)[0] is None
    assert set(states(j).values()) == {"answered"}
    first = {b.record_ids for b in grid(30) if b.batch_id in answered}
    assert not first.intersection(sent)
    j.close()


def test_feeder_disk_full_inside_a_transaction_is_a_journal_io_error(tmp_path):
    """SQLITE_FULL in the feeder's transaction: JournalIOError naming the file, rolled back."""
    full = sqlite3.OperationalError("database or disk is full")
    j = loaded(tmp_path, grid(30)).fail("mark_sent_many", 2, full, in_tx=True)

    error, took = engine(j, ok, concurrency=2)

    assert isinstance(error, JournalIOError), repr(error)
    assert str(tmp_path / "job.journal") in str(error) and "disk is full" in str(error)
    assert took < PROMPT_S
    # the failed transaction left nothing: its first batch (the 9th) is still pending, untried
    assert j._query("SELECT state, attempts FROM batches WHERE batch_id = 'b000008'") == [
        ("pending", 0)]
    j.close()


# ---------------------------------------------------------------------- 2. a worker


def test_worker_crash_stops_the_run_and_keeps_the_answers_recorded(tmp_path):
    batches = grid(12)
    j = loaded(tmp_path, batches)
    answered_calls: list[tuple] = []
    calls = {"n": 0}

    def handler(request: httpx.Request) -> httpx.Response:
        calls["n"] += 1
        if calls["n"] == 3:
            raise RuntimeError("the handler broke on call 3")
        answered_calls.append(tuple(json.loads(request.content)["ids"]))
        return ok(request)

    error, took = engine(j, handler, concurrency=1)

    assert isinstance(error, EngineError), repr(error)
    assert "worker" in str(error) and "RuntimeError" in str(error)
    assert took < PROMPT_S
    assert calls["n"] <= 4  # stopped at once: at most the call another worker had under way
    by_records = {b.record_ids: b.batch_id for b in batches}
    after = states(j)
    first_two = {by_records[ids] for ids in answered_calls[:2]}
    assert all(after[b] == "answered" for b in first_two)  # answered before: still recorded
    answered = {b for b, s in after.items() if s == "answered"}
    assert answered <= {by_records[ids] for ids in answered_calls}
    assert set(after.values()) - {"answered"} <= set(OPEN)  # the rest is resumable
    assert len(answered) < len(batches)
    j.close()

    j = Journal.open(tmp_path / "job.journal", "fp")
    assert engine(j, ok)[0] is None
    assert {r["status"] for r in results(j).values()} <= {"unenrolled", "not_enrolled"}
    j.close()


# ---------------------------------------------------------------------- 3. the journal's thread


def test_journal_thread_crash_stops_the_run(tmp_path):
    j = loaded(tmp_path, grid(12)).fail("record_groups", 2, RuntimeError("record broke"))

    error, took = engine(j, ok, concurrency=2)

    assert isinstance(error, EngineError), repr(error)
    assert "RuntimeError: record broke" in str(error)
    assert took < PROMPT_S
    after = states(j)
    assert list(after.values()).count("answered") >= 1  # the first answer stays recorded
    assert set(after.values()) <= {"answered", *OPEN}
    j.close()


class CappedJournal(Journal):
    """A real journal whose file may not grow past its size at open: SQLite itself answers
    SQLITE_FULL ("database or disk is full") to the first write that needs a new page."""

    def cap(self) -> CappedJournal:
        self._query("VACUUM")  # no free page left for an answer to fill
        (pages,) = self._query("PRAGMA page_count")[0]
        self._query(f"PRAGMA max_page_count = {pages}")
        return self


def half(request: httpx.Request) -> httpx.Response:
    """Every record removed from the first cadence only: half the pairs not enrolled."""
    body = json.loads(request.content)
    return httpx.Response(200, json=success(body["ids"], body["cadences_ids"][:1]))


def half_the_records(request: httpx.Request) -> httpx.Response:
    """The first half of the records removed from every cadence, the others from none."""
    body = json.loads(request.content)
    ids, half = body["ids"], len(body["ids"]) // 2
    removed, kept = success(ids[:half], body["cadences_ids"]), success(ids[half:], [])
    return httpx.Response(200, json={"data": removed["data"] + kept["data"]})


def test_journal_thread_real_sqlite_full_is_a_journal_io_error(tmp_path):
    # 100 records x 5 cadences a batch, answered half and half: recording one answer stores a
    # row per pair of one half (250 rows), more than the journal's 16 KB page holds
    j = loaded(tmp_path, grid(6, records=100, cadences=5), cls=CappedJournal).cap()

    error, took = engine(j, half_the_records, concurrency=2)

    assert isinstance(error, JournalIOError), repr(error)
    assert str(tmp_path / "job.journal") in str(error)
    assert "database or disk is full (SQLITE_FULL)" in str(error)
    assert took < PROMPT_S
    assert set(states(j).values()) <= set(OPEN)  # nothing half-recorded
    assert {r["status"] for r in results(j).values()} == {"not_sent"}  # and still readable
    j.close()


# ---------------------------------------------------------------------- helpers: whole jobs


def job(s, env) -> tuple[object, str]:
    """``run_job`` in a thread, bounded: (JobResult, what it printed)."""
    out: dict[str, object] = {}
    stream = io.StringIO()

    def go() -> None:
        try:
            out["result"] = run_job(s, env, stream=stream)
        except BaseException as exc:  # noqa: BLE001 - re-raised below
            out["error"] = exc

    thread = threading.Thread(target=go, daemon=True)
    thread.start()
    thread.join(30)
    if thread.is_alive():
        pytest.fail("run_job hangs: still running after 30 s")
    if "error" in out:
        raise out["error"]  # type: ignore[misc]
    return out["result"], stream.getvalue()


def cli(tmp_path: Path, *args: str, env: dict[str, str], timeout: float = 60
        ) -> subprocess.CompletedProcess:
    """``batcher ARGS`` in a subprocess running the package under test, bounded."""
    path = os.pathsep.join(filter(None, [str(PACKAGE_ROOT), os.environ.get("PYTHONPATH")]))
    try:
        return subprocess.run([sys.executable, "-m", "batcher", *args], cwd=tmp_path,
                              env={**os.environ, **env, "PYTHONPATH": path},
                              capture_output=True, text=True, timeout=timeout)
    except subprocess.TimeoutExpired:
        pytest.fail(f"batcher {args[0]} hangs: still running after {timeout:.0f} s")


def start_cli(tmp_path: Path, *args: str, env: dict[str, str]) -> subprocess.Popen:
    path = os.pathsep.join(filter(None, [str(PACKAGE_ROOT), os.environ.get("PYTHONPATH")]))
    return subprocess.Popen([sys.executable, "-m", "batcher", *args], cwd=tmp_path,
                            env={**os.environ, **env, "PYTHONPATH": path},
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def finish(proc: subprocess.Popen, timeout: float = 30) -> tuple[str, str]:
    try:
        return proc.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.communicate()
        pytest.fail(f"batcher run hangs: still running {timeout:.0f} s after the failure")


def one_line(stderr: str) -> str:
    """The command's only stderr line (a --quiet run prints nothing else), no traceback."""
    assert "Traceback" not in stderr, stderr
    lines = [line for line in stderr.splitlines() if line.strip()]
    assert len(lines) == 1, stderr
    return lines[0]


def wait_for_calls(sandbox, n: int, proc: subprocess.Popen | None = None) -> None:
    deadline = time.monotonic() + 30
    while len(sandbox.calls) < n:
        if time.monotonic() > deadline or (proc is not None and proc.poll() is not None):
            pytest.fail(f"the run made {len(sandbox.calls)} calls, not the {n} awaited")
        time.sleep(0.005)


@contextmanager
def tmpfs(path: Path, size: str) -> Iterator[Path]:
    """A small tmpfs at ``path``, unmounted at the end (lazily: a descriptor a failed run left
    open must not keep it mounted). Skips, saying why, where mounting is not allowed."""
    path.mkdir()
    got = subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size},mode=0700", "tmpfs",
                          str(path)], capture_output=True, text=True)
    if got.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs ({got.stderr.strip() or got.returncode}); a full "
                    "journal is covered by the injected SQLITE_FULL tests of this module")
    try:
        yield path
    finally:
        subprocess.run(["umount", "-l", str(path)], capture_output=True)


def fill(disk: Path, leave: int = 0) -> Path:
    """Fill the file system of ``disk`` with one file, leaving ``leave`` bytes free."""
    filler = disk / "filler"
    fd = os.open(filler, os.O_WRONLY | os.O_CREAT, 0o600)
    try:
        size = 1 << 20
        while size >= 4096:
            try:
                os.write(fd, b"\0" * size)
            except OSError as exc:
                if exc.errno != errno.ENOSPC:
                    raise
                size //= 2
        if leave:
            os.ftruncate(fd, os.fstat(fd).st_size - leave)
    finally:
        os.close(fd)
    assert shutil.disk_usage(disk).free == leave
    return filler


ROWS = make_rows(800, 60, seed=2, max_k=2)  # 1,179 pairs in 60 calls


def run_args(inp: Path, results: Path, journal: Path, *more: str) -> list[str]:
    return ["run", str(inp), "--results", str(results), "--journal", str(journal), "--quiet",
            "--concurrency", "2", *more]


# ---------------------------------------------------------------------- 4. a contradicting journal


def test_a_journal_that_contradicts_its_input_is_exit_2_and_never_sent(tmp_path, serve):
    live = serve(World.from_pairs(ROWS))
    inp = write_pairs(tmp_path / "in.csv", ROWS)
    s = settings(tmp_path, inp)
    journal = s.journal_path()
    assert job(settings(tmp_path, inp, max_calls=3), live.env)[0].exit_code == 3  # loaded

    # the 25th open batch (the journal's second page) no longer matches what was planned from
    # the input's rows: one of its records is another
    db = sqlite3.connect(journal)
    batch_id, records, cadences = db.execute(
        "SELECT batch_id, record_ids, cadence_ids FROM batches WHERE state IN ('pending', 'sent')"
        " ORDER BY seq LIMIT 1 OFFSET 24").fetchone()
    stranger = "554023000001999999"
    changed = [stranger, *stored_ids(records)[1:]]
    with db:
        db.execute("UPDATE batches SET record_ids = ? WHERE batch_id = ?",
                   (json.dumps(changed), batch_id))
    db.close()
    tampered = (tuple(changed), tuple(json.loads(cadences)))

    def never_named() -> None:
        for call in live.sandbox.calls:
            assert (call.record_ids, call.cadence_ids) != tampered
            assert stranger not in call.record_ids
        assert_exact(live.sandbox, ROWS)

    (tmp_path / "out.csv").unlink()
    sent_before = len(live.sandbox.calls)
    result, printed = job(s, live.env)

    assert result.exit_code == 2, printed
    assert len(live.sandbox.calls) == sent_before  # refused before its first call
    line = one_line(printed)
    assert str(journal) in line and batch_id in line and "inconsistent" in line
    never_named()
    got = read_results(tmp_path / "out.csv")  # written from the journal all the same
    assert len(got) == len(ROWS) and "not_sent" in {r["status"] for r in got}

    (tmp_path / "out.csv").unlink()
    proc = cli(tmp_path, *run_args(inp, tmp_path / "out.csv", journal), env=live.env)

    assert proc.returncode == 2, proc.stderr
    line = one_line(proc.stderr)
    assert str(journal) in line and "inconsistent" in line
    never_named()
    assert len(read_results(tmp_path / "out.csv")) == len(ROWS)


# ---------------------------------------------------------------------- 5. a full disk


def test_a_journal_disk_that_fills_mid_run_is_exit_3_then_the_same_command_finishes(
        tmp_path, serve):
    live = serve(World.from_pairs(ROWS), latency=0.03)
    inp = write_pairs(tmp_path / "in.csv", ROWS)
    with tmpfs(tmp_path / "disk", "16m") as disk:
        journal = disk / "job.journal"
        results_csv = tmp_path / "out.csv"
        first = settings(tmp_path, inp, journal=journal, max_calls=3)
        assert job(first, live.env)[0].exit_code == 3  # loaded, 3 calls answered
        results_csv.unlink()
        args = run_args(inp, results_csv, journal)

        proc = start_cli(tmp_path, *args, env=live.env)
        wait_for_calls(live.sandbox, 3 + 5, proc)
        filler = fill(disk)
        filled = time.monotonic()
        _, err = finish(proc)

        assert proc.returncode == 3, err
        assert time.monotonic() - filled < 5
        line = one_line(err)
        assert str(journal) in line and "disk is full" in line
        # the results beside, from the journal: what it recorded, the rest not sent
        db = sqlite3.connect(f"file:{journal}?mode=ro", uri=True)
        recorded = status_counts(db)
        db.close()
        got = read_results(results_csv)
        assert len(got) == len(ROWS)
        assert {s: sum(r["status"] == s for r in got) for s in recorded} == recorded
        assert recorded.get("not_sent", 0) > 0

        filler.unlink()
        proc = cli(tmp_path, *args, env=live.env)

        assert proc.returncode == 0, proc.stderr
        assert set(live.sandbox.removed) == set(ROWS)
        assert_exact(live.sandbox, ROWS)
        assert {r["status"] for r in read_results(results_csv)} <= {"unenrolled",
                                                                     "not_enrolled"}


def test_a_journal_write_refused_mid_run_is_exit_3_then_the_same_command_finishes(
        tmp_path, serve):
    """The sibling of a full disk a nightly job meets where no tmpfs can be mounted: the
    journal's writes refused under the run (here the kernel's file-size limit: EFBIG at the
    WAL's next page, as a quota or a share gone read-only refuses it). One line naming the
    journal, exit 3, the results written from it; the same command finishes afterwards."""
    live = serve(World.from_pairs(ROWS), latency=0.03)
    inp = write_pairs(tmp_path / "in.csv", ROWS)
    journal, results_csv = tmp_path / "job.journal", tmp_path / "out.csv"
    args = run_args(inp, results_csv, journal)
    assert cli(tmp_path, *args, "--max-calls", "3", env=live.env).returncode == 3
    limit = journal.stat().st_size + (256 << 10)  # the WAL outgrows it after some answers

    def small_files() -> None:
        resource.setrlimit(resource.RLIMIT_FSIZE, (limit, limit))

    path = os.pathsep.join(filter(None, [str(PACKAGE_ROOT), os.environ.get("PYTHONPATH")]))
    proc = subprocess.run([sys.executable, "-m", "batcher", *args], cwd=tmp_path,
                          env={**os.environ, **live.env, "PYTHONPATH": path},
                          capture_output=True, text=True, timeout=120, preexec_fn=small_files)
    assert proc.returncode == 3, proc.stderr
    line = one_line(proc.stderr)
    assert str(journal) in line and "re-run the same command" in line, line
    sent = len(live.sandbox.calls)
    assert 3 < sent < 60  # stopped mid-run, not at its start or end
    got = read_results(results_csv)
    assert len(got) == len(ROWS) and any(r["status"] == "not_sent" for r in got)

    proc = cli(tmp_path, *args, env=live.env)
    assert proc.returncode == 0, proc.stderr
    assert set(live.sandbox.removed) == set(ROWS)
    assert_exact(live.sandbox, ROWS)


@pytest.mark.parametrize("leave", [0, 16 << 10], ids=["no-byte-left", "16-KiB-left"])
def test_resuming_on_a_full_journal_disk_is_exit_3_naming_the_journal(tmp_path, serve, leave):
    live = serve(World.from_pairs(ROWS))
    inp = write_pairs(tmp_path / "in.csv", ROWS)
    with tmpfs(tmp_path / "disk", "16m") as disk:
        journal = disk / "job.journal"
        first = settings(tmp_path, inp, journal=journal, max_calls=3)
        assert job(first, live.env)[0].exit_code == 3
        args = run_args(inp, tmp_path / "out.csv", journal)
        filler = fill(disk, leave)

        full = cli(tmp_path, *args, env=live.env)
        calls_while_full = len(live.sandbox.calls)
        filler.unlink()
        again = cli(tmp_path, *args, env=live.env)

        # freed, the same command finishes: nothing was lost
        assert again.returncode == 0, again.stderr
        assert set(live.sandbox.removed) == set(ROWS)
        # full, it stopped as the contract says: exit 3, one line naming the journal
        assert calls_while_full == 3
        assert full.returncode == 3, full.stderr
        line = one_line(full.stderr)
        assert str(journal) in line, line
        assert re.search(r"disk is full|No space left", line), line
        assert "not a batcher journal" not in line


def test_a_new_job_on_a_full_journal_disk_is_exit_3_and_the_same_command_starts_it_later(
        tmp_path, serve):
    """Exit 2 says "the input or the flags are wrong: do not retry"; a disk that is full when
    the journal is created is neither (a scheduler's file size limit alike)."""
    live = serve(World.from_pairs(ROWS))
    inp = write_pairs(tmp_path / "in.csv", ROWS)
    with tmpfs(tmp_path / "disk", "16m") as disk:
        args = run_args(inp, tmp_path / "out.csv", disk / "job.journal")
        filler = fill(disk, 16 << 10)  # room for the lock, not for the journal's tables
        full = cli(tmp_path, *args, env=live.env)
        calls_while_full = len(live.sandbox.calls)
        filler.unlink()
        again = cli(tmp_path, *args, env=live.env)

    assert full.returncode == 3, full.stderr
    line = one_line(full.stderr)
    assert str(disk / "job.journal") in line and "re-run the same command" in line, line
    assert calls_while_full == 0
    assert again.returncode == 0, again.stderr
    assert set(live.sandbox.removed) == set(ROWS)


def test_a_full_disk_at_open_leaves_the_journal_unlocked_for_the_next_run(tmp_path, serve):
    """A scheduler runs jobs in one long-lived process: a run refused for a full disk must not
    keep holding the journal's lock, or every later run of the job is refused as "in use"."""
    live = serve(World.from_pairs(ROWS))
    inp = write_pairs(tmp_path / "in.csv", ROWS)
    with tmpfs(tmp_path / "disk", "16m") as disk:
        s = settings(tmp_path, inp, journal=disk / "job.journal")
        assert job(settings(tmp_path, inp, journal=disk / "job.journal", max_calls=3),
                   live.env)[0].exit_code == 3
        filler = fill(disk)
        with pytest.raises(Exception) as refused:  # noqa: PT011 - what it is, is asserted
            job(s, live.env)
        filler.unlink()

        result, printed = job(s, live.env)

        assert result.exit_code == 0, printed
        assert set(live.sandbox.removed) == set(ROWS)
        # and the refusal was the contract's: exit 3 naming the journal, not a bare OSError
        assert isinstance(refused.value, BatcherError), repr(refused.value)
        assert refused.value.exit_code == 3 and str(disk / "job.journal") in str(refused.value)


# ---------------------------------------------------------------------- 6. results not writable


@pytest.mark.parametrize("how", ["read-only", "full"])
def test_results_that_cannot_be_written_name_the_command_that_recovers_them(
        tmp_path, serve, how):
    """The command is pasted as it is: found by trying, paths with a space (a folder "night
    jobs", `{date}` results named "out 2024-05-01.csv") were printed unquoted."""
    live = serve(World.from_pairs(ROWS), latency=0.03)
    inp = write_pairs(tmp_path / "in.csv", ROWS)
    journal = tmp_path / "the job.journal"
    with tmpfs(tmp_path / "night results", "4m") as res:
        results_csv = res / "out.csv"
        proc = start_cli(tmp_path, *run_args(inp, results_csv, journal), env=live.env)
        wait_for_calls(live.sandbox, 5, proc)
        if how == "read-only":
            subprocess.run(["mount", "-o", "remount,ro", str(res)], check=True)
        else:
            filler = fill(res)
        _, err = finish(proc)

        assert proc.returncode == 3, err
        line = one_line(err)
        assert str(results_csv) in line
        command = re.search(r"`(batcher report --journal [^`]+)`", line)
        assert command, line
        assert shlex.split(command.group(1)) == ["batcher", "report", "--journal", str(journal),
                                                 "--results", str(results_csv)]
        assert not results_csv.exists()
        assert set(live.sandbox.removed) == set(ROWS)  # the job itself was done

        if how == "read-only":
            subprocess.run(["mount", "-o", "remount,rw", str(res)], check=True)
        else:
            filler.unlink()
        report = cli(tmp_path, *shlex.split(command.group(1))[1:], env={})

        assert report.returncode == 0, report.stderr
        got = read_results(results_csv)
        assert [int(r["row"]) for r in got] == list(range(1, len(ROWS) + 1))
        assert {r["status"] for r in got} == {"unenrolled"}
        assert json.loads((res / "out.summary.json").read_text())["reconciled"]


# ---------------------------------------------------------------------- 7. a damaged journal


@pytest.mark.parametrize("keep", [0.5, 0.9])
def test_a_journal_cut_short_is_said_damaged_not_a_disk_to_fix(tmp_path, serve, keep):
    """Found by trying: a journal cut short (a copy that stopped, a restore gone wrong) was
    reported as a disk failure ('free space or fix the disk, then re-run'), which no re-run
    fixes."""
    live = serve(World.from_pairs(ROWS))
    inp = write_pairs(tmp_path / "in.csv", ROWS)
    journal = settings(tmp_path, inp).journal_path()
    assert job(settings(tmp_path, inp, max_calls=3), live.env)[0].exit_code == 3
    with open(journal, "r+b") as fh:
        fh.truncate(int(journal.stat().st_size * keep))
    calls_before = len(live.sandbox.calls)

    run = cli(tmp_path, *run_args(inp, tmp_path / "out.csv", journal), env=live.env)

    line = one_line(run.stderr)
    assert run.returncode == 3 and str(journal) in line, line
    assert "damaged journal" in line and "free space" not in line, line
    assert len(live.sandbox.calls) == calls_before


def damage(journal: Path, table: str) -> list[int]:
    """Overwrite the pages of one table (leaves and interior) with seeded garbage."""
    db = sqlite3.connect(journal)
    (page_size,) = db.execute("PRAGMA page_size").fetchone()
    pages = [p for (p,) in db.execute("SELECT pageno FROM dbstat WHERE name = ?", (table,))]
    db.close()
    assert pages and not Path(f"{journal}-wal").exists()
    rnd = random.Random(7)
    with open(journal, "r+b") as fh:
        for page in pages:
            fh.seek((page - 1) * page_size)
            fh.write(rnd.randbytes(page_size))
    return pages


@pytest.mark.parametrize(("table", "codes"), [
    ("row_chunks", {3}), ("batches", {3}), ("meta", {3}),
    # page 1 holds the file header: such a file cannot be told from one that never was a
    # journal, so exit 2 ("not a batcher journal") is acceptable there
    ("sqlite_schema", {2, 3}),
], ids=["rows", "batches", "meta", "page-1"])
def test_a_damaged_journal_is_one_line_without_traceback(tmp_path, serve, table, codes):
    """Exit 3 (2 for a damaged header), one line naming the journal, no call, and no results
    file made from a journal that cannot be read."""
    live = serve(World.from_pairs(ROWS))
    inp = write_pairs(tmp_path / "in.csv", ROWS)
    s = settings(tmp_path, inp)
    journal = s.journal_path()
    assert job(settings(tmp_path, inp, max_calls=3), live.env)[0].exit_code == 3
    damage(journal, table)
    calls_before = len(live.sandbox.calls)
    (tmp_path / "out.csv").unlink()

    run = cli(tmp_path, *run_args(inp, tmp_path / "out.csv", journal), env=live.env)
    report = cli(tmp_path, "report", "--journal", str(journal), "--results",
                 str(tmp_path / "again.csv"), env={})

    assert len(live.sandbox.calls) == calls_before  # nothing is sent from a damaged journal
    for proc in (run, report):
        line = one_line(proc.stderr)
        assert str(journal) in line, line
        assert "malformed" in line or "not a database" in line, line
        # DESIGN.md §2: the journal's disk failing (full, read-only, damaged pages) is exit 3
        assert proc.returncode in codes, (proc.args[3], proc.returncode, line)
    assert not (tmp_path / "out.csv").exists() and not (tmp_path / "again.csv").exists()
