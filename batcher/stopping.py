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

import os
import signal
import sys
import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:  # the program's first lines must not wait for asyncio to load
    import asyncio

from .errors import Interrupted

EXIT_ABORTED = 3
#: what stops a job: Ctrl-C, a scheduler, and a terminal or ssh session that goes away
STOP_SIGNALS = tuple(getattr(signal, name) for name in ("SIGINT", "SIGTERM", "SIGHUP")
                     if hasattr(signal, name))
_RESUME = "re-run the same command to resume"


class Stopper:
    """One job's stop request; :meth:`request` may be called from a signal handler or any
    thread (a host cancelling :func:`batcher.job.run_job_async`)."""

    def __init__(self) -> None:
        self.requested: str | None = None
        self._phase = "defer"  # until the job says what it can take
        self._loop: asyncio.AbstractEventLoop | None = None
        self._task: asyncio.Task | None = None

    def request(self, why: str) -> None:
        if self.requested is None:
            self.requested = why
        loop, task = self._loop, self._task
        if self._phase == "loop" and loop is not None and task is not None:
            loop.call_soon_threadsafe(task.cancel)
        elif self._phase == "raise" and threading.current_thread() is threading.main_thread():
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


def signal_handler(stopper: Stopper) -> Callable[[int, object], None]:
    """The handler that turns a signal into ``stopper.request``; a second one exits at once."""

    def handler(signum: int, frame: object) -> None:  # noqa: ARG001
        if stopper.requested is not None:
            os.write(2, ("batcher: second signal: stopping at once, results not rewritten; "
                         f"{_RESUME}\n").encode())
            os._exit(EXIT_ABORTED)
        stopper.request(f"interrupted by {signal.Signals(signum).name}")

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
    previous = {sig: signal.signal(sig, handler) for sig in STOP_SIGNALS}
    unraisable = sys.unraisablehook

    def quiet(args: Any) -> None:
        # the handler's exception, lost in a finalizer: not an error to print — the phase
        # raises it again when it ends (Stopper.phase)
        if not isinstance(args.exc_value, Interrupted):
            unraisable(args)

    sys.unraisablehook = quiet
    try:
        yield
    finally:
        sys.unraisablehook = unraisable
        for sig, old in previous.items():
            signal.signal(sig, old)
        pa.enable_signal_handlers(True)  # pyarrow's default
