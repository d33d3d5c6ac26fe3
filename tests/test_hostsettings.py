"""What a job changes for its whole process is the host's again once the jobs are done: the
collector's thresholds and frozen objects, the unraisable hook, the logging registry — with jobs
that overlap in a scheduler's threads, and around a host that froze its own objects."""

from __future__ import annotations

import gc
import logging
import sys
import threading

import pytest

from batcher.hostsettings import collector_spared, unraisable_ignored
from batcher.job import RunSettings, run_job
from batcher.sandbox.world import World

from .conftest import write_pairs
from .test_e2e import make_rows


@pytest.fixture
def host_gc():
    """The host's own collector settings, put back after the test whatever it did."""
    thresholds = gc.get_threshold()
    gc.set_threshold(700, 10, 10)
    yield
    gc.unfreeze()
    gc.set_threshold(*thresholds)


def test_overlapping_jobs_give_the_collector_back_as_the_host_had_it(host_gc):
    first, second = collector_spared(20_000), collector_spared(20_000)
    first.__enter__()
    assert gc.get_threshold()[0] == 20_000 and gc.get_freeze_count() > 0
    second.__enter__()
    first.__exit__(None, None, None)  # the first job ends while the second still sends
    assert gc.get_threshold()[0] == 20_000 and gc.get_freeze_count() > 0
    second.__exit__(None, None, None)
    assert gc.get_threshold() == (700, 10, 10)
    assert gc.get_freeze_count() == 0


def test_objects_a_host_froze_stay_frozen(host_gc):
    gc.freeze()  # a pre-forking server's copy-on-write habit
    frozen = gc.get_freeze_count()
    with collector_spared(20_000):
        pass
    assert gc.get_freeze_count() > 0.9 * frozen  # (some may have died meanwhile)
    assert gc.get_threshold() == (700, 10, 10)


def test_a_threshold_the_host_sets_while_a_job_runs_stays(host_gc):
    with collector_spared(20_000):
        gc.set_threshold(5_000, 20, 20)  # the host's own tuning, mid-job
    assert gc.get_threshold() == (5_000, 20, 20)


def test_overlapping_quiet_hooks_leave_the_hosts_hook_and_only_quiet_their_kind():
    heard: list[type] = []

    def host_hook(unraisable) -> None:  # noqa: ANN001
        heard.append(type(unraisable.exc_value))

    before, sys.unraisablehook = sys.unraisablehook, host_hook
    try:
        reading, signals = unraisable_ignored(UnicodeDecodeError), unraisable_ignored(KeyError)
        reading.__enter__()
        signals.__enter__()
        reading.__exit__(None, None, None)  # one job's read ends while another's signals last
        for exc in (UnicodeDecodeError("utf-8", b"\xff", 0, 1, "bad"), KeyError("k"),
                    ValueError("v")):
            sys.unraisablehook(type("U", (), {"exc_value": exc})())
        assert heard == [UnicodeDecodeError, ValueError]
        signals.__exit__(None, None, None)
        assert sys.unraisablehook is host_hook
    finally:
        sys.unraisablehook = before


def test_two_jobs_in_a_schedulers_threads_leave_the_process_as_it_was(tmp_path, serve, host_gc):
    rows = make_rows(400, 8)
    live = serve(World.from_pairs(rows), latency=0.02)
    inputs = [write_pairs(tmp_path / f"in{i}.csv", rows[i::2]) for i in range(2)]
    hook = sys.unraisablehook
    loggers = set(logging.Logger.manager.loggerDict)
    gc.freeze()
    frozen = gc.get_freeze_count()
    codes: list[int] = []

    def one(i: int) -> None:
        codes.append(run_job(RunSettings(input=inputs[i], results=tmp_path / f"out{i}.csv",
                                         quiet=True, concurrency=2), live.env).exit_code)

    threads = [threading.Thread(target=one, args=(i,)) for i in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert codes == [0, 0]
    assert gc.get_threshold() == (700, 10, 10)
    assert gc.get_freeze_count() > 0.9 * frozen  # (some may have died meanwhile)
    assert sys.unraisablehook is hook
    assert set(logging.Logger.manager.loggerDict) == loggers  # no logger left per job
