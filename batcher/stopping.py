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
from typing import TYPE_CHECKING

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
    a shell's background job ignores SIGINT)."""
    return [sig for sig in STOP_SIGNALS if signal.getsignal(sig) is not signal.SIG_IGN]


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
    """SIGINT and SIGTERM become ``stopper.request`` for the block; a second one exits at once.

    Only the main thread can set signal handlers; elsewhere (a scheduler's worker thread) the
    host's own handling stays, and the host stops the job through the stopper.
    """
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    import pyarrow as pa  # loaded by then; not at this module's import (the program's first lines)

    # pyarrow swaps in C handlers of its own for SIGINT and SIGTERM around a read (to cancel it)
    # and hands the signal back only when the read ends well or cancelled: one that fails for
    # another reason (a block too small for a record, a disk error) swallowed the signal, and the
    # job ran on to the end. Ours alone, a signal waits for the read to return.
    pa.enable_signal_handlers(False)
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
        pa.enable_signal_handlers(True)  # pyarrow's default
