"""Signals (issue 9, invariant 7): SIGINT or SIGTERM at any moment ends `batcher run` with exit 3
within 2 seconds (5 s here: a shared machine), the results written and complete, the journal's
lock released; a second signal ends it at once; the same command then finishes the job.

Real subprocesses (`python -m batcher run ...`) against the sandbox served over loopback by the
test process, judged from the sandbox's truth. Each input has records and cadences of its own
(``make_rows`` with its own ``base``), so one sandbox world serves every trial and the truth of one
trial is never confused with another's.
"""

from __future__ import annotations

import fcntl
import html
import io
import json
import os
import random
import re
import shlex
import signal
import sqlite3
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from batcher.errors import Interrupted
from batcher.sandbox.world import World
from batcher.stopping import Stopper

from .conftest import journal_calls, read_results, write_pairs
from .test_e2e import make_rows

pytestmark = pytest.mark.slow  # every test starts the sandbox and batcher processes

ROOT = Path(__file__).resolve().parent.parent

LIMIT_S = 5.0  # the contract says 2 s; a shared 2-core machine gets slack
HANG_S = 20.0  # a process still running this long after its signal is hung: killed, failed
RUN_S = 120.0  # longest a run to the end may take before it counts as hung
TRIALS = 20
WORKERS = 3  # trials at a time: a run mostly waits (on the sandbox's latency, on its signal)
LATENCY = 0.08
FINAL = {"unenrolled", "not_enrolled"}


# ---------------------------------------------------------------------------------- helpers


def trial_rows(n: int) -> list[tuple[str, str, str]]:
    """~3,000 pairs planned into ~40 calls: ~1.2 s of sending at --concurrency 3 and 80 ms a call
    (a run costs ~1 s of CPU whatever its size: fewer, slower calls keep the suite cheap; and a
    loaded machine stretches the other phases, not this one).
    Input ``n`` owns records ``base .. base + 2000`` and cadences of family ``n + 1``."""
    return make_rows(2000, 20, seed=n, base=554023000001000000 + n * 1_000_000, max_k=2)


def record_range(rows: list[tuple[str, str, str]]) -> tuple[int, int]:
    ids = [int(r) for _, r, _ in rows]
    return min(ids), max(ids)


def square_rows(n_records: int, base: int, cadence_base: int) -> list[tuple[str, str, str]]:
    """Every record in 5 cadences: 500 pairs a call, so a large input takes few calls."""
    cadences = [str(cadence_base + j) for j in range(5)]
    return [("Leads", str(base + i), c) for i in range(n_records) for c in cadences]


@dataclass
class Job:
    """One job folder: its input, the command's arguments, a log per run."""

    folder: Path
    rows: list[tuple[str, str, str]]
    env: dict[str, str]
    concurrency: int = 3
    runs: int = 0

    def __post_init__(self) -> None:
        self.folder.mkdir(parents=True, exist_ok=True)
        self.input = write_pairs(self.folder / "in.csv", self.rows)
        self.results = self.folder / "out.csv"
        self.journal = self.folder / "out.journal"

    def argv(self) -> list[str]:
        return ["run", str(self.input), "--results", str(self.results),
                "--concurrency", str(self.concurrency)]

    def start(self, *python: str) -> subprocess.Popen:
        """``batcher run`` as an operator types it (progress on stderr, into a file: no pipe
        that a test not reading it could fill); ``python``: other interpreter arguments than
        ``-m batcher``, followed by the command's."""
        self.runs += 1
        self.err_path = self.folder / f"run{self.runs}.err"
        with open(self.folder / f"run{self.runs}.out", "w") as out, \
                open(self.err_path, "w") as err:
            return subprocess.Popen([sys.executable, *(python or ("-m", "batcher")), *self.argv()],
                                    env={**os.environ, **self.env}, cwd=ROOT, stdout=out,
                                    stderr=err)

    def stderr(self) -> str:
        return self.err_path.read_text(errors="replace")

    def writing(self) -> bool:
        """The results are being written (their hidden temporary file exists)."""
        return any(self.folder.glob(f".{self.results.name}.*.tmp"))

    def finish(self, live, timeout: float = RUN_S) -> list[str]:
        """Run the same command to the end: exit 0, every pair removed in the sandbox's truth,
        complete results. Returns what is wrong."""
        proc = self.start()
        try:
            code = proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
            return [f"the re-run hung (no exit after {timeout:.0f} s)"]
        problems = []
        if code != 0:
            problems.append(f"the re-run exited {code}, not 0; stderr: {tail(self.stderr())}")
        if "Traceback" in self.stderr():
            problems.append(f"the re-run printed a traceback: {tail(self.stderr())}")
        left = set(self.rows) - live.sandbox.removed
        if left:
            problems.append(f"after the re-run {len(left)} input pairs are still enrolled, "
                            f"e.g. {sorted(left)[:2]}")
        problems += results_problems(self, statuses=FINAL, after="the re-run")
        return problems


def tail(text: str, n: int = 600) -> str:
    text = text.strip()
    return text if len(text) <= n else "..." + text[-n:]


def results_problems(job: Job, statuses: set[str] | None = None, after: str = "the signal"
                     ) -> list[str]:
    """The results of ``job``: one row per input row, in order, and a summary that reconciles."""
    if not job.results.exists():
        return [f"no results file after {after}"]
    results = read_results(job.results)
    problems = []
    if len(results) != len(job.rows):
        problems.append(f"after {after} the results hold {len(results)} rows for "
                        f"{len(job.rows)} input rows")
    elif [int(r["row"]) for r in results] != list(range(1, len(job.rows) + 1)) or any(
            (r["module"], r["record_id"], r["cadence_id"]) != pair
            for r, pair in zip(results, job.rows, strict=True)):
        problems.append(f"after {after} the results are not the input rows in input order")
    if statuses is not None:
        seen = {r["status"] for r in results}
        if not seen <= statuses:
            problems.append(f"after {after} rows are {sorted(seen - statuses)} (expected only "
                            f"{sorted(statuses)})")
    summary_path = job.folder / "out.summary.json"
    if not summary_path.exists():
        problems.append(f"no summary after {after}")
    else:
        summary = json.loads(summary_path.read_text())
        if not (summary.get("reconciled") is True and summary.get("rows") == len(job.rows)):
            problems.append(f"after {after} the summary does not reconcile: "
                            f"reconciled={summary.get('reconciled')} rows={summary.get('rows')}")
    return problems


def lock_is_free(job: Job) -> bool:
    lock = job.journal.with_name(job.journal.name + ".lock")
    if not lock.exists():
        return True
    fd = os.open(lock, os.O_RDWR)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        return False
    finally:
        os.close(fd)  # drops the flock if taken
    return True


def cpu_seconds(pid: int) -> float:
    """CPU time the process has used (user + system); inf once it is gone or off Linux."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except (FileNotFoundError, IndexError):
        return float("inf")
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


#: CPU the interpreter and batcher's first imports need before any handler of batcher's can
#: exist (~0.1 s); on a loaded machine 0.3 s of wall time may not have given it that much
STARTED_CPU_S = 0.25


def calls_of(live, rows: list[tuple[str, str, str]]) -> int:
    lo, hi = record_range(rows)
    return sum(1 for c in live.sandbox.calls if lo <= int(c.record_ids[0]) <= hi)


def wait_exit(proc: subprocess.Popen, since: float) -> tuple[int | None, float]:
    """(exit code, seconds from ``since`` to the exit); (None, ...) when hung (then killed)."""
    try:
        code = proc.wait(timeout=HANG_S)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()
        return None, time.monotonic() - since
    return code, time.monotonic() - since


def stop_problems(job: Job, code: int | None, stop_s: float, what: str,
                  limit: float = LIMIT_S, statuses: set[str] | None = None,
                  codes: tuple[int, ...] = (3,)) -> list[str]:
    """What is wrong with a run stopped by ``what``: it must exit 3 (or one of ``codes``)
    within ``limit`` seconds, without a traceback, its results complete, its journal's lock
    free. A negative code is death by the signal itself (a shell shows 128 + the signal)."""
    err = job.stderr()
    problems = []
    if code is None:
        problems.append(f"hung: still running {HANG_S:.0f} s after {what} (killed)")
    elif code not in codes:
        problems.append(f"exit {code}, not {' or '.join(map(str, codes))}")
    elif stop_s >= limit:
        problems.append(f"{stop_s:.2f} s from {what} to the exit")
    if "Traceback" in err:
        problems.append("a traceback on stderr")
    problems += results_problems(job, statuses)
    if not lock_is_free(job):
        problems.append("the journal's lock is still held after the exit")
    if problems:
        problems.append(f"stderr: {tail(err)}")
    return problems


def journal_loaded(job: Job) -> bool:
    """The job's plan is committed to its journal (a reader sees committed data only)."""
    if not job.journal.exists():
        return False
    db = sqlite3.connect(f"file:{job.journal}?mode=ro", uri=True)
    try:
        return bool(db.execute("SELECT count(*) FROM meta WHERE key = 'batcher.loaded'")
                    .fetchone()[0])
    except sqlite3.OperationalError:  # the tables are not made yet
        return False
    finally:
        db.close()


def journal_batches(job: Job) -> dict[str, int]:
    db = sqlite3.connect(f"file:{job.journal}?mode=ro", uri=True)
    try:
        return dict(db.execute("SELECT state, count(*) FROM batches GROUP BY state"))
    finally:
        db.close()


# ---------------------------------------------------------------------------------- 1. any moment


@dataclass
class Trial:
    n: int
    sig: signal.Signals
    moment: float
    rows: list[tuple[str, str, str]]
    aim: str | None = None  # a phase to signal in (polled for), instead of the moment
    phase: str = "?"
    misses: int = 0  # attempts whose job had ended before its moment
    code: int | None = None
    stop_s: float = 0.0
    rerun_s: float = 0.0
    problems: list[str] = field(default_factory=list)

    def line(self) -> str:
        missed = f", {self.misses} earlier attempts ended first" if self.misses else ""
        return (f"trial {self.n:2d} {self.sig.name:7s} at {self.moment:.2f} s "
                f"({self.phase}): exit {self.code} {self.stop_s:.2f} s after it; "
                f"re-run {self.rerun_s:.1f} s{missed}")


EXITING = "exiting (results written)"


def phase_of(job: Job, live) -> str:
    """Where a run is, seen from outside."""
    if job.results.exists():  # renamed into place once complete: the run is on its way out
        return EXITING
    # CSV results are written while the calls go: writing them is a phase once all are answered
    if job.writing() and set(journal_batches(job)) <= {"answered"}:
        return "writing results"
    if not job.journal.exists():
        return "start-up"  # interpreter, imports, checks of the flags and the input
    if calls_of(live, job.rows) == 0:
        return "scan/preflight/plan/load"
    return "sending"


def run_trial(trial: Trial, folder: Path, live) -> Trial:
    """One job, one signal at ``trial.moment``, then the same command to the end. A job that
    ends before its moment proves nothing: tried again (same input, a new job) earlier."""
    for attempt in range(4):
        job = Job(folder.with_name(f"{folder.name}.{attempt}"), trial.rows, live.env)
        t0 = time.monotonic()
        proc = job.start()
        time.sleep(max(0.0, t0 + trial.moment - time.monotonic()))
        while proc.poll() is None and cpu_seconds(proc.pid) < STARTED_CPU_S:
            time.sleep(0.005)  # the interpreter is still starting (see STARTED_CPU_S)
        while trial.aim and proc.poll() is None and phase_of(job, live) != trial.aim \
                and time.monotonic() - t0 < RUN_S:
            time.sleep(0.002)  # a phase too short for a random moment to land in reliably
        at = time.monotonic() - t0
        trial.phase = phase_of(job, live)
        if proc.poll() is None:
            proc.send_signal(trial.sig)
            trial.moment = at
            break
        trial.misses += 1
        trial.moment = max(0.3, 0.7 * trial.moment)
        if proc.wait() != 0:
            trial.problems.append(f"attempt {attempt} exited {proc.returncode} on its own; "
                                  f"stderr: {tail(job.stderr())}")
            return trial
    else:
        trial.problems.append("every attempt ended before its moment")
        return trial
    trial.code, trial.stop_s = wait_exit(proc, time.monotonic())
    # once the results are written the job is done: it may end as it would have (0), or say it
    # was interrupted (3), but not die of the signal
    codes = (3, 0) if trial.phase == EXITING else (3,)
    trial.problems += stop_problems(job, trial.code, trial.stop_s, trial.sig.name, codes=codes)
    rerun = time.monotonic()
    trial.problems += job.finish(live)
    trial.rerun_s = time.monotonic() - rerun
    return trial


def test_a_signal_at_any_moment_exits_3_with_complete_results_and_the_same_command_finishes(
        tmp_path, serve):
    """TRIALS jobs, SIGTERM and SIGINT in turn, each at a seeded random moment from 0.3 s to
    near the end of an uninterrupted run: each exits 3 within LIMIT_S, without a traceback, its
    results complete and its lock free; the same command then exits 0 with every pair removed
    in the sandbox's truth, and no call ever named a pair outside the inputs."""
    inputs = [trial_rows(n) for n in range(TRIALS + WORKERS)]
    # every run refreshes a token: lift the sandbox's 10 refreshes per 10 minutes
    live = serve(World.from_pairs(p for rows in inputs for p in rows), latency=LATENCY,
                 refresh_limit=1000)

    # uninterrupted runs (of inputs of their own), as many at a time as the trials will run, set
    # the window the moments are drawn from
    def timed(n: int) -> float:
        t0 = time.monotonic()
        problems = Job(tmp_path / f"timed{n}", inputs[n], live.env).finish(live)
        assert not problems, problems
        return time.monotonic() - t0

    with ThreadPoolExecutor(max_workers=WORKERS) as pool:
        duration = sum(pool.map(timed, range(TRIALS, TRIALS + WORKERS))) / WORKERS

    # stratified: trial n at a random moment of the n-th of TRIALS equal slots from 0.3 s to 95 %
    # of the run, so every phase is hit (start-up, scan, preflight, plan and load, sending,
    # results writing) and by both signals (SIGTERM and SIGINT alternate from slot to slot); run
    # in a shuffled order, so the trials running together are at different phases
    rnd = random.Random(20269)
    lo, hi = 0.3, max(0.95 * duration, 0.6)
    slot = (hi - lo) / TRIALS
    trials = [Trial(n, (signal.SIGTERM, signal.SIGINT)[n % 2], lo + slot * (n + rnd.random()),
                    inputs[n]) for n in range(TRIALS)]
    # the input read once, setup is a few tenths of a second (the preflight's call among them):
    # two trials, one per signal, wait for it rather than draw a moment
    for t in trials[2:4]:
        t.moment, t.aim = lo, "scan/preflight/plan/load"
    order = rnd.sample(trials, TRIALS)
    with ThreadPoolExecutor(max_workers=WORKERS) as pool:
        list(pool.map(run_trial, order, [tmp_path / f"trial{t.n:02d}" for t in order],
                      [live] * TRIALS))
    done = trials

    report = f"uninterrupted run: {duration:.2f} s\n" + "\n".join(t.line() for t in done)
    print(report)  # shown by pytest -rP
    failures = [f"{t.line()}\n    " + "\n    ".join(t.problems) for t in done if t.problems]
    assert not failures, "\n".join(failures) + f"\n\nall trials:\n{report}"
    phases = {t.phase for t in done}
    assert {"start-up", "scan/preflight/plan/load", "sending"} <= phases, report
    asked = {p for rows in inputs for p in rows}
    assert live.sandbox.named_pairs <= asked, "a call named a pair that no input asked for"


def test_a_signal_during_a_read_that_then_fails_is_not_lost():
    """pyarrow's own C handlers took SIGTERM during a CSV read and handed it back only when the
    read ended well or cancelled: a read that failed otherwise (a record longer than a block,
    which the reader retries with a larger one; a disk error) swallowed it, and the job ran on to
    the end and exited 0 (seen once in CI: SIGTERM during setup, exit 0)."""
    import pyarrow.csv as pacsv

    from batcher.stopping import Stopper, read_aside, signals_to

    for phase, unwinding in (("defer", OSError), ("raise", Interrupted)):
        stopper = Stopper()
        with signals_to(stopper):
            # in a phase that raises, the stop (not the read's failure) is what unwinds, once
            # the read has returned
            with pytest.raises(unwinding), stopper.phase(phase):
                read_aside(lambda: pacsv.read_csv(
                    io.BufferedReader(_Failing()), read_options=pacsv.ReadOptions(block_size=4096)))
            sum(range(100))  # Python code: the handler's turn
        assert stopper.requested == "interrupted by SIGTERM"


class _Failing(io.RawIOBase):
    """A CSV stream that sends SIGTERM with its first block, and fails on its second."""

    def __init__(self) -> None:
        self.blocks = 0

    def readable(self) -> bool:
        return True

    def readinto(self, buffer) -> int:  # noqa: ANN001 (a writable buffer)
        self.blocks += 1
        if self.blocks > 1:
            raise OSError("the disk went away")
        os.kill(os.getpid(), signal.SIGTERM)
        data = b"record_id,cadence_id\n" + b"554023000001000001,554023000004000001\n" * 99
        buffer[:len(data)] = data
        return len(data)


@pytest.mark.parametrize("pyarrows", [False, True], ids=["host-disabled", "default"])
def test_a_host_has_its_handlers_and_pyarrows_switch_as_it_had_them_after_a_job(
        tmp_path, pyarrows):
    """A host with its own SIGTERM handler, in the main thread, runs a job. Found by reading:
    the job turned pyarrow's signal handlers on when it ended (``enable_signal_handlers(True)``,
    "pyarrow's default"), so a host that had turned them off (as pyarrow advises for an event
    loop) had its next SIGTERM during a failing CSV read swallowed by them, never reaching its
    handler. pyarrow's switch cannot be read back: the job leaves it alone."""
    import pyarrow as pa
    import pyarrow.csv as pacsv

    from batcher.job import RunSettings, run_job

    seen: list[signal.Signals] = []

    def host(signum: int, frame: object) -> None:  # noqa: ARG001
        seen.append(signum)

    inp = write_pairs(tmp_path / "in.csv", [("Leads", "554023000001000001", "554023000004000001")])
    before = signal.signal(signal.SIGTERM, host)
    pa.enable_signal_handlers(pyarrows)
    try:
        result = run_job(RunSettings(input=inp, results=tmp_path / "out.csv", dry_run=True,
                                     preflight=False, quiet=True), {})
        assert result.exit_code == 0, result.aborted
        assert signal.getsignal(signal.SIGTERM) is host
        with pytest.raises(OSError, match="disk went away"):
            pacsv.read_csv(io.BufferedReader(_Failing()),
                           read_options=pacsv.ReadOptions(block_size=4096))
        sum(range(100))  # Python code: the handler's turn
    finally:
        signal.signal(signal.SIGTERM, before)
        pa.enable_signal_handlers(True)
    # pyarrow's handlers off, as the host had them: its handler got the signal; on (pyarrow's
    # default, the host's choice too), pyarrow's took it, as it would without any job
    assert seen == ([] if pyarrows else [signal.SIGTERM])


def test_a_host_request_never_raises_into_the_host_and_the_phase_stops_at_its_end():
    """``Stopper.request`` from the main thread (a host's event loop cancelling a job that runs
    in another thread) while the job's phase can raise: the host's code goes on; the job's
    phase raises when it ends."""
    stopper = Stopper()
    went_on = []
    with pytest.raises(Interrupted, match="cancelled by the host"), stopper.phase("raise"):
        stopper.request("cancelled by the host")
        went_on.append(True)
    assert went_on == [True]


# ---------------------------------------------------------------------------------- 2. twice


def test_a_second_signal_exits_at_once_and_the_same_command_finishes(tmp_path, serve):
    """SIGTERM while sending, SIGTERM again 20-50 ms later while the first is handled: exit 3
    within 2 s of the first (and 1 s of the second), no traceback, the lock free; the same
    command then finishes the job (the journal is as a kill -9 leaves it)."""
    # 150k rows: the first signal's handling (tasks unwinding, results written) takes a while
    # (30k rows' results were written within the 20 ms once the page's template was compiled
    # ahead)
    rows = square_rows(30_000, 554023000010000000, 554023000011000000)
    live = serve(World.from_pairs(rows), latency=LATENCY)
    job = Job(tmp_path / "job", rows, live.env)
    proc = job.start()
    deadline = time.monotonic() + 60
    while calls_of(live, rows) < 5 and proc.poll() is None and time.monotonic() < deadline:
        time.sleep(0.005)
    assert proc.poll() is None and calls_of(live, rows) >= 5, "the job never started sending"

    first = time.monotonic()
    proc.send_signal(signal.SIGTERM)
    time.sleep(random.Random(2).uniform(0.02, 0.05))
    assert proc.poll() is None and "aborted" not in job.stderr(), \
        "the first SIGTERM was handled before the second: make the results longer to write"
    second = time.monotonic()
    proc.send_signal(signal.SIGTERM)
    code, stop_s = wait_exit(proc, first)

    err = job.stderr()
    problems = []
    if code is None:
        problems.append("hung after two SIGTERMs (killed)")
    elif code != 3:
        problems.append(f"exit {code}, not 3")
    elif stop_s >= 2.0:
        problems.append(f"{stop_s:.2f} s from the first SIGTERM to the exit")
    elif first + stop_s - second >= 1.0:
        problems.append(f"{first + stop_s - second:.2f} s from the second SIGTERM to the exit")
    if "Traceback" in err:
        problems.append("a traceback on stderr")
    if not lock_is_free(job):
        problems.append("the journal's lock is still held after the exit")
    assert not problems, problems + [f"stderr: {tail(err)}"]
    problems = job.finish(live)
    assert not problems, problems
    assert live.sandbox.named_pairs <= set(rows)


def test_a_job_started_under_nohup_outlives_its_terminal(tmp_path, serve):
    """``nohup batcher run …``: SIGHUP ignored when the process starts stays ignored — the
    terminal closing mid-job does not stop it."""
    rows = make_rows(400, 20, base=554023000060000000)  # ~20 calls, 3 at a time, 80 ms each
    live = serve(World.from_pairs(rows), latency=LATENCY)
    job = Job(tmp_path / "job", rows, live.env)

    def nohup() -> None:
        signal.signal(signal.SIGHUP, signal.SIG_IGN)

    with open(tmp_path / "err", "w") as err:
        proc = subprocess.Popen([sys.executable, "-m", "batcher", *job.argv()], cwd=ROOT,
                                env={**os.environ, **job.env}, stdout=subprocess.DEVNULL,
                                stderr=err, preexec_fn=nohup)
    deadline = time.monotonic() + 60
    while calls_of(live, rows) < 2 and proc.poll() is None and time.monotonic() < deadline:
        time.sleep(0.005)
    assert proc.poll() is None, "the job ended before the hangup: make it longer"
    proc.send_signal(signal.SIGHUP)
    assert proc.wait(RUN_S) == 0, (tmp_path / "err").read_text()
    assert {r["status"] for r in read_results(job.results)} == {"unenrolled"}


def test_a_second_signal_says_its_line_as_json_when_the_log_and_summary_are():
    """``--log-format json --json``: the last line of a second signal is one JSON object on
    stderr, and stdout gets the summary's stand-in, as for every other ending."""
    child = """
import os, signal, time
from batcher.stopping import Stopper, signal_handler
stopper = Stopper()
stopper.json_lines = stopper.json_stdout = True
signal.signal(signal.SIGTERM, signal_handler(stopper))
stopper.request("interrupted by SIGTERM")  # the first signal, still being handled
os.kill(os.getpid(), signal.SIGTERM)
time.sleep(10)
"""
    out = subprocess.run([sys.executable, "-c", child], cwd=ROOT, capture_output=True,
                         text=True, timeout=60)
    assert out.returncode == 3
    (line,) = out.stderr.splitlines()
    said = json.loads(line)
    assert said["event"] == "error" and said["exit_code"] == 3
    assert "second signal" in said["message"]
    assert json.loads(out.stdout) == {"exit_code": 3, "error": said["message"]}


@pytest.mark.parametrize("which", ["first", "second"])
def test_a_signal_as_the_process_exits_does_not_kill_it(tmp_path, serve, which):
    """The job over, its results written and its last line printed, the process on its way out
    (the interpreter's finalization, ~50 ms): a SIGTERM then — the first one (the job had
    finished: exit 0 or 3) or a second one (an impatient operator, a supervisor repeating
    itself: exit 3) — must not make the process die of the signal (-15, which a shell or a
    scheduler reports as 143, not as batcher's exit code)."""
    rows = make_rows(300, 3, base=554023000050000000 + (which == "second") * 1_000_000)
    live = serve(World.from_pairs(rows), latency=0.05)
    job = Job(tmp_path / "job", rows, live.env)
    proc = job.start()
    last_line = "summary:"
    if which == "second":
        deadline = time.monotonic() + 60
        while not live.sandbox.calls and proc.poll() is None and time.monotonic() < deadline:
            time.sleep(0.002)
        assert proc.poll() is None and live.sandbox.calls, "the job never started sending"
        proc.send_signal(signal.SIGTERM)
        last_line = "batcher: aborted"
    while last_line not in job.stderr() and proc.poll() is None:
        time.sleep(0.001)
    proc.send_signal(signal.SIGTERM)
    code, _ = wait_exit(proc, time.monotonic())

    codes = (3,) if which == "second" else (0, 3)
    problems = stop_problems(job, code, 0.0, f"the {which} SIGTERM", codes=codes)
    assert not problems, problems
    problems = job.finish(live)
    assert not problems, problems


# ---------------------------------------------------------------------------------- 3. plan, load

BIG_RECORDS = 100_000  # x 5 cadences = 500k pairs: plan + journal load take ~0.5 s


def in_the_load(tmp_path, serve, base: int, cadence_base: int
                ) -> tuple[list[tuple[str, str, str]], object, Job, subprocess.Popen]:
    """A job of BIG_RECORDS x 5 pairs started and caught while it plans and loads its journal
    (no call yet, the load not committed): (rows, live sandbox, job, process)."""
    rows = square_rows(BIG_RECORDS, base, cadence_base)
    live = serve(World.from_pairs(rows), concurrency_limit=None)
    job = Job(tmp_path / "job", rows, live.env)
    proc = job.start()
    # the preflight refreshes the token and reads the cadences (a few ms), then the plan and the
    # journal's load begin: aim into their middle
    deadline = time.monotonic() + 60
    while live.sandbox.refresh_count == 0 and proc.poll() is None and \
            time.monotonic() < deadline:
        time.sleep(0.002)
    time.sleep(0.05)
    assert proc.poll() is None and not live.sandbox.calls and not journal_loaded(job), \
        "the signal would miss the plan and load phase: adjust BIG_RECORDS or the aim"
    return rows, live, job, proc


def test_a_signal_while_a_large_plan_is_loaded_into_the_journal(tmp_path, serve):
    """SIGINT while 500k pairs are planned and loaded into the journal (no call yet, the load
    not committed): exit 3 within LIMIT_S, no call sent, complete results with every row
    ``not_sent``; the same command then finishes the job."""
    rows, live, job, proc = in_the_load(tmp_path, serve, 554023000007000000, 554023000009000000)
    sent = time.monotonic()
    proc.send_signal(signal.SIGINT)
    code, stop_s = wait_exit(proc, sent)

    problems = stop_problems(job, code, stop_s, "SIGINT", statuses={"not_sent"})
    if live.sandbox.calls:
        problems.insert(0, f"{len(live.sandbox.calls)} calls were sent after the SIGINT")
    assert not problems, problems
    problems = job.finish(live)
    assert not problems, problems
    assert live.sandbox.named_pairs <= set(rows)


@pytest.mark.parametrize("kind", ["xlsx", "parquet"])
def test_a_signal_while_a_file_is_read_is_a_signal_not_a_damaged_file(tmp_path, kind):
    """SIGTERM while calamine read an .xlsx (seen: 2 of 5 tries on a 150k-row workbook): the
    reader's catch-all turned the stop into "is not a readable .xlsx workbook (Interrupted…);
    open it in Excel and save it again", blaming a good file. The same class of handler guards
    the Parquet reader. The signal lands inside the read: a timer sends it while it runs."""
    import threading

    import pyarrow as pa
    import pyarrow.parquet as pq

    from batcher.errors import InputError, Interrupted
    from batcher.inputs import scan_input
    from batcher.stopping import Stopper, signals_to

    path = tmp_path / f"list.{kind}"
    ids = [str(554023000007000000 + i) for i in range(200_000)]
    if kind == "xlsx":
        import xlsxwriter

        wb = xlsxwriter.Workbook(path, {"constant_memory": True})
        ws = wb.add_worksheet()
        ws.write_row(0, 0, ["Module", "Record Id", "Cadence Id"])
        for i, rid in enumerate(ids, 1):
            ws.write_row(i, 0, ["Leads", rid, "554023000004092008"])
        wb.close()
    else:
        pq.write_table(pa.table({"module": ["Leads"] * len(ids), "record_id": ids,
                                 "cadence_id": ["554023000004092008"] * len(ids)}), path,
                       row_group_size=2_000)
    stopper = Stopper()
    with signals_to(stopper):
        try:
            with stopper.phase("raise"):
                threading.Timer(0.02, os.kill, (os.getpid(), signal.SIGTERM)).start()
                scan_input(path)
        except InputError as exc:
            pytest.fail(f"a signal was reported as a bad file: {exc}")
        except Interrupted:
            pass
    assert stopper.requested == "interrupted by SIGTERM"


# ---------------------------------------------------------------------------------- 4. writing


def writing_results(tmp_path, serve, n_records: int, base: int, cadence_base: int
                    ) -> tuple[list[tuple[str, str, str]], object, Job, subprocess.Popen]:
    """A job of ``n_records`` x 5 pairs started and caught once every call is answered and its
    results are being written: (rows, live sandbox, job, process). Its rows are shuffled, so
    none of its results is written before the last answer (CSV results are written while the
    calls go, each 50,000 rows once they are all answered): all of them are written after it."""
    rows = square_rows(n_records, base, cadence_base)
    random.Random(n_records).shuffle(rows)
    calls = n_records // 100  # 100 records x 5 cadences a call
    live = serve(World.from_pairs(rows), concurrency_limit=None)
    job = Job(tmp_path / "job", rows, live.env)
    proc = job.start()
    deadline = time.monotonic() + 120

    def answered() -> bool:
        return (len(live.sandbox.calls) >= calls and job.writing()
                and journal_batches(job) == {"answered": calls})

    while not answered() and proc.poll() is None and time.monotonic() < deadline:
        time.sleep(0.001)
    assert proc.poll() is None and job.writing(), "never saw the results being written"
    return rows, live, job, proc


def finishes_without_sending_again(job: Job, live) -> None:
    """Every call of the stopped job is answered in its journal; the same command then sends
    nothing again and writes complete results, every row ``unenrolled``."""
    calls = len(live.sandbox.calls)
    assert journal_batches(job) == {"answered": calls}

    problems = job.finish(live)
    assert not problems, problems
    assert len(live.sandbox.calls) == calls, "the re-run sent answered batches again"
    assert {r["status"] for r in read_results(job.results)} == {"unenrolled"}


def test_a_signal_while_the_results_are_written_keeps_every_answer(tmp_path, serve):
    """SIGTERM once the last call is answered and the results are being written: the writing
    goes on (exit 3, complete results, every row ``unenrolled``), every batch stays answered in
    the journal, and the same command sends nothing again."""
    rows, live, job, proc = writing_results(tmp_path, serve, 6_000,  # 30k pairs, 60 calls
                                            554023000006000000, 554023000008000000)
    sent = time.monotonic()
    proc.send_signal(signal.SIGTERM)
    code, stop_s = wait_exit(proc, sent)

    problems = stop_problems(job, code, stop_s, "SIGTERM", statuses={"unenrolled"})
    assert not problems, problems
    # said, not silent: an .xlsx of many rows keeps writing for minutes
    assert "interrupted by SIGTERM while the results are written: they are finished first" \
        in job.stderr()
    finishes_without_sending_again(job, live)



def test_a_signal_before_a_long_writing_of_the_results_says_why_the_run_goes_on(tmp_path, serve):
    """Found by trying: SIGTERM while the calls went, results to .xlsx (40k rows: seconds of
    writing, minutes for a million): the run wrote them for 5-12 s after the signal without a
    line, as if the signal were ignored (a person presses Ctrl-C again, a supervisor kills).
    A writing that takes more than a second after the signal is now said as it goes on."""
    rows = square_rows(8_000, 554023000090000000, 554023000098000000)  # 40k pairs, 80 calls
    live = serve(World.from_pairs(rows), concurrency_limit=None, latency=0.05)
    job = Job(tmp_path / "job", rows, live.env, concurrency=2)
    job.results = job.folder / "out.xlsx"
    proc = job.start()
    deadline = time.monotonic() + 60
    while not live.sandbox.calls and proc.poll() is None and time.monotonic() < deadline:
        time.sleep(0.002)
    assert proc.poll() is None, "the job ended before its signal"
    sent = time.monotonic()
    proc.send_signal(signal.SIGTERM)
    code, stop_s = wait_exit(proc, sent)
    err = job.stderr()
    assert code == 3 and "Traceback" not in err, tail(err)
    assert job.results.exists()
    line = "interrupted by SIGTERM; the results are being written: they are finished first"
    assert stop_s > 1.5, "the writing was quick: give the job more rows"
    assert line in err, tail(err)
    assert err.index(line) < err.index(" rows = "), "said only after the writing"

# ------------------------------------------------------------------------------- 4b. throttled

THROTTLED_STOPS = 3


def test_signals_while_calls_are_throttled_and_the_same_command_resumes_each_time(
        tmp_path, serve):
    """The issue's hang: a sandbox that takes 2 calls at a time (a third is answered 429, as
    the ``throttled`` profile does) and --concurrency 4, so workers wait on the limiter when
    the signal comes. The same job is stopped THROTTLED_STOPS times (SIGTERM and SIGINT in
    turn, a few calls into each run): each run exits 3 within LIMIT_S with complete results,
    and the same command resumes it; the last run finishes it (exit 0, every pair removed, no
    pair outside the input)."""
    rows = make_rows(2000, 20, seed=5, base=554023000060000000, max_k=2)  # ~40 calls
    live = serve(World.from_pairs(rows), concurrency_limit=2, latency=0.02)
    job = Job(tmp_path / "job", rows, live.env, concurrency=4)
    rnd = random.Random(9)
    problems: list[str] = []
    for stop in range(THROTTLED_STOPS):
        sig = (signal.SIGTERM, signal.SIGINT)[stop % 2]
        before = len(live.sandbox.calls)
        proc = job.start()
        wanted = rnd.randint(2, 5)
        deadline = time.monotonic() + 60
        while len(live.sandbox.calls) - before < wanted and proc.poll() is None and \
                time.monotonic() < deadline:
            time.sleep(0.002)
        time.sleep(rnd.uniform(0, 0.1))
        assert proc.poll() is None, f"run {stop + 1} ended before its {sig.name}: lengthen the job"
        sent = time.monotonic()
        proc.send_signal(sig)
        code, stop_s = wait_exit(proc, sent)
        found = stop_problems(job, code, stop_s, sig.name)
        problems += [f"run {stop + 1} ({sig.name} after {wanted} calls): {p}" for p in found]
        if code is None:
            break  # hung: the rest would only repeat it
    assert not problems, problems
    problems = job.finish(live)
    assert not problems, problems
    assert live.sandbox.named_pairs <= set(rows)


# ------------------------------------------------------------------------------ 5. first moments

#: ``python -c`` this, WHERE, SIGNAL, then batcher's arguments: batcher's own main(), the signal
#: sent to itself at WHERE — a moment a few milliseconds wide, which the random trials above can
#: only hit by chance (when the machine is slow to start the interpreter)
_EARLY = """
import os, signal, sys
import batcher.cli as cli

where, sig = sys.argv[1], signal.Signals[sys.argv[2]]
if where == "parsing":  # main() set its SIGTERM handler; the job's handlers are not set yet
    parse = cli._Parser.parse_args
    def parse_args(self, *args, **kw):
        os.kill(os.getpid(), sig)
        return parse(self, *args, **kw)
    cli._Parser.parse_args = parse_args
elif where == "installing":  # the job's handlers are set, its first phase is not entered yet
    import batcher.stopping as stopping
    phase, sent = stopping.Stopper.phase, []
    def first_phase(self, *args, **kw):
        if not sent:
            sent.append(os.kill(os.getpid(), sig))
        return phase(self, *args, **kw)
    stopping.Stopper.phase = first_phase
sys.exit(cli.main(sys.argv[3:]))
"""


@pytest.mark.parametrize(("where", "sig"), [("parsing", "SIGTERM"), ("installing", "SIGINT")])
def test_a_signal_before_the_job_has_begun_still_writes_the_results(tmp_path, serve, where, sig):
    """Once batcher's main() has a handler, a signal is the job's: exit 3 with every row
    ``not_sent`` in complete results, not an exit 3 that leaves no results at all."""
    rows = make_rows(300, 3, base=554023000030000000)
    live = serve(World.from_pairs(rows))
    job = Job(tmp_path / "job", rows, live.env)
    proc = job.start("-c", _EARLY, where, sig)
    code, _ = wait_exit(proc, time.monotonic())

    err = job.stderr()
    assert code == 3, err
    assert "Traceback" not in err, err
    assert not live.sandbox.calls
    problems = results_problems(job, statuses={"not_sent"})
    assert not problems, f"{problems}; stderr: {tail(err)}"
    problems = job.finish(live)
    assert not problems, problems


# ------------------------------------------------------------------------------ 6. finalizers

#: ``python -c`` this, HOW, SIGNAL, then batcher's arguments: while the plan is made (a phase
#: where the signal handler raises into the main thread), the signal arrives as a finalizer runs —
#: a weakref callback or a ``__del__``, which the garbage collector or importlib's module locks
#: run at any moment — and Python only prints an exception raised there ("Exception ignored in")
_FINALIZER = """
import os, signal, sys, weakref
import batcher.job as job

how, sig = sys.argv[1], signal.Signals[sys.argv[2]]
plan_scan = job.plan_scan

class Doomed:
    def __del__(self):
        if how == "__del__":
            os.kill(os.getpid(), sig)

def planning(*args, **kw):
    doomed = Doomed()
    if how == "weakref":
        ref = weakref.ref(doomed, lambda _: os.kill(os.getpid(), sig))
    del doomed
    return plan_scan(*args, **kw)

job.plan_scan = planning
import batcher.cli as cli
sys.exit(cli.main(sys.argv[3:]))
"""


@pytest.mark.parametrize(("how", "sig"), [("weakref", "SIGINT"), ("__del__", "SIGTERM")])
def test_a_signal_that_lands_in_a_finalizer_is_not_lost(tmp_path, serve, how, sig):
    """Seen in the plan-and-load test: SIGINT handled inside importlib's weakref callback, the
    Interrupted it raised printed and dropped, and the job went on to send every batch."""
    rows = make_rows(1000, 5, base=554023000040000000)
    live = serve(World.from_pairs(rows), latency=0.05)
    job = Job(tmp_path / "job", rows, live.env)
    proc = job.start("-c", _FINALIZER, how, sig)
    code, _ = wait_exit(proc, time.monotonic())

    problems = stop_problems(job, code, 0.0, sig, statuses={"not_sent"})
    if live.sandbox.calls:
        problems.insert(0, f"the signal was lost: {len(live.sandbox.calls)} calls were sent "
                        "after it")
    assert not problems, problems
    problems = job.finish(live)
    assert not problems, problems


# ---------------------------------------------------------------------------------- 5. kill -9


def test_kill_9_while_the_plan_is_loaded_leaves_no_half_job_and_the_same_command_finishes(
        tmp_path, serve):
    """``kill -9`` while 500k pairs are loaded into the journal (no call yet): the load is one
    transaction, so the journal holds no half job, and the same command plans, sends and
    finishes it exactly."""
    rows, live, job, proc = in_the_load(tmp_path, serve, 554023000017000000, 554023000019000000)
    proc.send_signal(signal.SIGKILL)
    assert proc.wait() == -signal.SIGKILL
    assert not live.sandbox.calls
    db = sqlite3.connect(f"file:{job.journal}?mode=ro", uri=True)
    try:
        loaded = db.execute("SELECT count(*) FROM meta WHERE key = 'batcher.loaded'").fetchone()
        batches = db.execute("SELECT count(*) FROM batches").fetchone()
    finally:
        db.close()
    assert loaded == batches == (0,), "a half-loaded journal"

    problems = job.finish(live)
    assert not problems, problems
    assert live.sandbox.named_pairs <= set(rows)
    assert calls_of(live, rows) == len(rows) // 500


def test_kill_9_while_the_results_are_written_loses_no_answer(tmp_path, serve):
    """``kill -9`` once every call is answered and the results are being written: every batch
    stays answered in the journal, and the same command sends nothing again and writes the
    complete results."""
    rows, live, job, proc = writing_results(tmp_path, serve, 40_000,  # 200k pairs, 400 calls
                                            554023000016000000, 554023000018000000)
    proc.send_signal(signal.SIGKILL)
    assert proc.wait() == -signal.SIGKILL
    finishes_without_sending_again(job, live)


def test_the_report_of_a_job_killed_by_kill_9_says_so_and_its_command_resumes_it(tmp_path,
                                                                                  serve):
    """Found by trying: ``kill -9`` mid-send, then ``batcher report``: its duration said 0.0 s,
    its ``finished_at`` (and the page's "finished") was the report's own time, and its resume
    command had lost the run's flags (``--max-calls``, ``--concurrency``, ``--no-preflight``:
    recorded only at a run's end), so pasted it would spend the whole budget at once. Now the
    killed run counts to its last logged call (a lower bound, said so), it has no end, and the
    command on the page — pasted as it is, from a folder with a space — resumes and finishes
    the job, whose time then keeps the killed run's."""
    from batcher.cli import main

    rows = make_rows(300, 10, seed=31, base=554023000031000000, max_k=2)
    live = serve(World.from_pairs(rows), latency=0.1)
    folder = tmp_path / "night jobs"
    job = Job(folder, rows, live.env)
    flags = ["--concurrency", "1", "--max-calls", "40", "--no-preflight"]
    proc = subprocess.Popen([sys.executable, "-m", "batcher", *job.argv()[:4], *flags],
                            env={**os.environ, **live.env}, cwd=ROOT,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + 30

    def logged() -> int:
        try:
            with sqlite3.connect(f"file:{job.journal}?mode=ro", uri=True) as db:
                return db.execute("SELECT count(*) FROM calls").fetchone()[0]
        except sqlite3.Error:
            return 0

    while logged() < 3 and proc.poll() is None and time.monotonic() < deadline:
        time.sleep(0.01)
    proc.kill()
    assert proc.wait() == -signal.SIGKILL, "the job ended before the kill"

    again = folder / "again.csv"
    assert main(["report", "--journal", str(job.journal), "--results", str(again)]) == 3
    summary = json.loads((folder / "again.summary.json").read_text())
    assert summary["finished_at"] is None
    assert summary["duration_s"] >= 0.2  # three calls of 0.1 s at one at a time, at least
    assert "never recorded its end" in summary["extra"]["run_never_ended"]
    page = (folder / "again.report.html").read_text()
    assert "never recorded its end" in page
    assert not re.search(r"finished \d{4}-", page), "a killed run's page says it finished"
    command = html.unescape(re.search(r'data-metric="command">([^<]*)<', page).group(1))
    args = shlex.split(command)
    for flag, value in (("--concurrency", "1"), ("--max-calls", "40")):
        assert args[args.index(flag) + 1] == value, command
    assert "--no-preflight" in args, command

    assert args[:2] == ["batcher", "run"]
    resumed = subprocess.run([sys.executable, "-m", "batcher", *args[1:], "--quiet"],
                             env={**os.environ, **live.env}, cwd=ROOT, capture_output=True,
                             text=True, timeout=RUN_S)
    assert resumed.returncode == 0, resumed.stderr
    assert set(rows) <= live.sandbox.removed
    assert main(["report", "--journal", str(job.journal), "--results", str(again)]) == 0
    done = json.loads((folder / "again.summary.json").read_text())
    assert done["finished_at"] is not None and "run_never_ended" not in done["extra"]
    assert done["duration_s"] >= summary["duration_s"]  # the killed run's time is kept


def test_a_signal_with_calls_in_flight_leaves_them_in_the_call_log(tmp_path, serve):
    """Found by trying: SIGTERM while calls were out cancelled them after they were counted
    (as they leave) and before they were logged (once answered): the summary's calls and the
    page's timeline disagreed after a plain signal, and the calls looked like a kill -9's. A
    call the run stops with is logged as it is counted, without an answer: the summary's
    calls are the call log's, and none is said to be of unknown outcome."""
    rows = make_rows(300, 10, seed=41, base=554023000041000000, max_k=2)
    live = serve(World.from_pairs(rows), latency=0.4)
    job = Job(tmp_path / "job", rows, live.env)

    proc = job.start()
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline and proc.poll() is None:
        counted, logged = journal_calls(job.journal)
        if logged >= 2 and counted > logged:  # calls counted and still out
            break
        time.sleep(0.005)
    since = time.monotonic()
    proc.send_signal(signal.SIGTERM)
    code, stop_s = wait_exit(proc, since)
    assert not stop_problems(job, code, stop_s, "SIGTERM")
    summary = json.loads((job.folder / "out.summary.json").read_text())
    counted, logged = journal_calls(job.journal)
    assert summary["calls"] == counted == logged > 2
    assert summary["calls_outcome_unknown"] == 0
    assert "in flight when a run was killed" not in job.stderr()
    with sqlite3.connect(f"file:{job.journal}?mode=ro", uri=True) as db:
        unanswered = db.execute("SELECT count(*) FROM calls WHERE http_status IS NULL").fetchone()
    assert unanswered[0] >= 1  # the calls the signal caught: logged, without an answer
