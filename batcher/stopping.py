"""How a job is told to stop — SIGINT, SIGTERM or its host — and how the request reaches it.

Raising into the event loop's own machinery (what a ``KeyboardInterrupt`` from a signal handler
does) can leave it waiting forever on tasks it never finishes cancelling. So the request is
delivered the way the job's current phase can take it:

- ``raise``: plain Python code (reading the input, planning, loading the journal) — the handler
  raises :class:`~batcher.errors.Interrupted` where the main thread is, and the phase unwinds
  through its ``with`` blocks (a journal transaction rolls back);
- ``loop``: the event loop runs — the job's main task is cancelled from the loop itself, so
  calls in flight are abandoned and every task unwinds;
- ``defer``: the process is starting, or the results are being written — the request is only
  noted; it is taken at the next phase that can (starting), or the writing goes on.

A second signal ends the process at once (exit 3): the kernel releases the journal's lock, and
the journal, committed answer by answer, is as a ``kill -9`` leaves it — resumable.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any, TypeVar

if TYPE_CHECKING:  # the program's first lines must not wait for asyncio to load
    import asyncio

from .errors import Interrupted, UsageError
from .hostsettings import unraisable_ignored
from .streams import printable

EXIT_ABORTED = 3
#: what stops a job: Ctrl-C, a scheduler, and a terminal or ssh session that goes away
STOP_SIGNALS = tuple(getattr(signal, name) for name in ("SIGINT", "SIGTERM", "SIGHUP")
                     if hasattr(signal, name))
_RESUME = "re-run the same command to resume"
T = TypeVar("T")


class Stopper:
    """One job's stop request. :meth:`request` may be called from any thread (a host cancelling
    :func:`batcher.job.run_job_async`, a scheduler's own thread) and never raises; a job that
    reads its input in another thread stops when that phase ends. A stopper serves one job:
    given to a second, it is refused (:meth:`take`)."""

    def __init__(self) -> None:
        self.requested: str | None = None
        self._taken = False
        self._taking = threading.Lock()
        #: how the line of a second signal is said: as a JSON object on stderr (``--log-format
        #: json``), and one on stdout too (``run --json``), as every other last line
        self.json_lines = self.json_stdout = False
        self._phase = "defer"  # until the job says what it can take
        self._loop: asyncio.AbstractEventLoop | None = None
        self._task: asyncio.Task | None = None

    def take(self) -> None:
        """Bind the stopper to the job about to run. UsageError when it served a job already:
        a stop asked of that one would stop this one at once (exit 3, nothing sent, every run
        of a scheduler's retries), and two jobs at once would take each other's phases, so a
        request could reach the wrong one or neither."""
        with self._taking:
            if self._taken:
                raise UsageError("this Stopper has served a job already; give each run_job its "
                                 "own batcher.stopping.Stopper()")
            self._taken = True

    def request(self, why: str) -> None:
        """Ask the job to stop (``why``: said in its abort line); never raises."""
        if self.requested is None:
            self.requested = why
        loop, task = self._loop, self._task
        if self._phase == "loop" and loop is not None and task is not None:
            loop.call_soon_threadsafe(task.cancel)

    def interrupt(self, why: str) -> None:
        """:meth:`request` from a signal handler: in a ``raise`` phase, raises
        :class:`Interrupted` where the main thread is (the job's, since it took the signals)."""
        self.request(why)
        if self._phase == "raise" and threading.current_thread() is threading.main_thread():
            raise Interrupted(self.message())

    def message(self) -> str:
        return f"{self.requested}; {_RESUME}"

    def check(self) -> None:
        """Raise :class:`Interrupted` if a stop was requested (between phases)."""
        if self.requested is not None:
            raise Interrupted(self.message())

    @contextmanager
    def phase(self, name: str, task: asyncio.Task | None = None) -> Iterator[None]:
        """Deliver requests as phase ``name`` can take them (``loop`` needs the main task)."""
        saved = self._phase, self._loop, self._task
        self._loop = task.get_loop() if task is not None else None
        self._task = task
        self._phase = name
        try:
            if name != "defer":
                self.check()
            yield
            if name == "raise":
                # the handler's exception is lost when it lands in a finalizer (a ``__del__``, a
                # weakref callback): Python prints "Exception ignored" and goes on
                self.check()
        finally:
            self._phase, self._loop, self._task = saved


def taken_signals() -> list[signal.Signals]:
    """The stop signals a job takes: those the process does not ignore. One ignored when the
    process started stays ignored (``nohup`` ignores SIGHUP so the job outlives its terminal;
    a shell's background job ignores SIGINT). One handled by C code (an embedding host's:
    ``getsignal`` says None) stays its own: Python could not put it back after the job."""
    return [sig for sig in STOP_SIGNALS
            if signal.getsignal(sig) not in (signal.SIG_IGN, None)]


def last_line(message: str, code: int, *, json_lines: bool, event: str = "error") -> str:
    """The line a command ends with when it fails: ``batcher: message``, or (``--log-format
    json``) a JSON object with the ``event`` (``error``), the time and the exit code."""
    if not json_lines:
        return f"batcher: {printable(message)}\n"
    now = datetime.now(UTC).isoformat(timespec="milliseconds")
    return json.dumps({"event": event, "ts": now, "message": message, "exit_code": code}) + "\n"


def signal_handler(stopper: Stopper) -> Callable[[int, object], None]:
    """The handler that turns a signal into ``stopper.interrupt``; a second one exits at once."""

    def handler(signum: int, frame: object) -> None:  # noqa: ARG001
        if stopper.requested is not None:
            why = f"second signal: stopping at once, results not rewritten; {_RESUME}"
            with contextlib.suppress(OSError):  # a reader gone: the exit code still says it
                os.write(2, last_line(why, EXIT_ABORTED, json_lines=stopper.json_lines).encode())
            if stopper.json_stdout:
                with contextlib.suppress(OSError):
                    os.write(1, (json.dumps({"exit_code": EXIT_ABORTED, "error": why}) + "\n")
                             .encode())
            os._exit(EXIT_ABORTED)
        stopper.interrupt(f"interrupted by {signal.Signals(signum).name}")

    return handler


@contextmanager
def signals_to(stopper: Stopper) -> Iterator[None]:
    """SIGINT, SIGTERM and SIGHUP become ``stopper.request`` for the block; a second one exits
    at once. The host's handlers are given back after it; a signal the host ignores stays
    ignored, and one whose handler Python did not install (C code's: Python could not give it
    back) stays the host's.

    Only the main thread can set signal handlers; elsewhere (a scheduler's worker thread) the
    host's own handling stays, and the host stops the job through the stopper. pyarrow's own
    switch (``enable_signal_handlers``) is never touched: it cannot be read, so it could not be
    given back as the host had it — the job's CSV reads go round its handlers instead
    (:func:`read_aside`).
    """
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    handler = signal_handler(stopper)
    previous = {sig: signal.signal(sig, handler) for sig in taken_signals()}
    try:
        # the handler's exception, lost in a finalizer: not an error to print — the phase
        # raises it again when it ends (Stopper.phase)
        with unraisable_ignored(Interrupted):
            yield
    finally:
        for sig, old in previous.items():
            signal.signal(sig, old)


def read_aside(read: Callable[[], T]) -> T:
    """``read()`` — a pyarrow call that would hook the stop signals — where pyarrow hooks none.

    In the main thread, pyarrow's ``read_csv`` swaps in C handlers of its own for SIGINT and
    SIGTERM around the read (to cancel it) and hands the signal back only when the read ends
    well or cancelled: one that fails for another reason (a record longer than a block, read
    again with larger ones; a disk error) swallowed the signal, and the job ran on to the end.
    It does so in the main thread only: there, the read runs in a thread of its own while the
    main thread waits, and takes a signal as Python delivers it — its handler's exception
    (``Interrupted``, a host's ``KeyboardInterrupt``) is raised once the read has returned, as
    the stream it reads is closed only then."""
    if threading.current_thread() is not threading.main_thread():
        return read()
    outcome: list[tuple[bool, Any]] = []
    done, gate = threading.Event(), threading.Lock()
    state = ["new"]  # → "reading" (by the thread) or "given up" (by the waiting thread)

    def run() -> None:
        try:
            with gate:
                if state[0] == "given up":  # before the thread began: nothing to read
                    return
                state[0] = "reading"
            outcome.append((True, read()))
        except BaseException as exc:  # handed to the waiting thread
            outcome.append((False, exc))
        finally:
            done.set()

    reader = threading.Thread(target=run, name="batcher-read", daemon=True)
    stop: BaseException | None = None
    try:
        reader.start()
    except RuntimeError:  # no thread to be had: read here, hooked as pyarrow does
        return read()
    except BaseException as exc:  # a signal's, while the thread started: did the read begin?
        stop = exc
        with gate:
            if state[0] == "new":  # it never will: nothing to wait for
                state[0] = "given up"
                raise
    # an Event, not join(): a join that a signal handler's exception interrupts may take the
    # thread for ended while it still runs (CPython's bpo-45274 fix releases its lock)
    while not done.is_set():
        try:
            done.wait()
        except BaseException as exc:  # a signal's: taken once the read has returned
            stop = stop or exc
    ok, value = outcome.pop()
    if stop is not None:
        raise stop
    if not ok:
        raise value
    return value
