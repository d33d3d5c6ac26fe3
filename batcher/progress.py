"""Progress for people: a rich progress bar on a terminal, a few plain lines in cron logs (no
control characters there, and fewer the longer the job: a log is read after the fact); a
spinner for the long phases before and after the calls (in a log, a line when a long one
begins and one when it ends)."""

from __future__ import annotations

import sys
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any, TextIO

#: a log's progress lines (not a terminal): the first once the sending has gone on this long
#: (seconds), each next one twice as far as the last, at most LOG_GAP_MOST apart — a job of a
#: minute writes one or two, one of eight hours about fifty, never one every few seconds
LOG_FIRST, LOG_GAP_MOST = 30.0, 600.0
#: a setup or closing phase that lasts this long (seconds) is said in a log: as it begins
#: to look long, and with its duration when it ends
LOG_PHASE = 10.0


class Progress:
    """``update(counters)`` as the executor goes (calls, batches, pairs done, 429s, retries);
    ``close(counters)`` once at the end. ``enabled=False`` prints nothing. ``emit(line,
    fields)`` takes the timed lines instead of the stream (a JSON log: never a bar).

    On a terminal the bar is redrawn every ``interval`` (0.2 s); in a log (a plain stream or
    ``emit``) lines come at :data:`LOG_FIRST` and then ever further apart, or every
    ``interval`` when one is given."""

    def __init__(self, total_pairs: int, total_batches: int, *, stream: TextIO = sys.stderr,
                 interval: float | None = None, enabled: bool = True,
                 clock: Callable[[], float] = time.monotonic,
                 emit: Callable[[str, dict], None] | None = None) -> None:
        self._stream = stream
        self._emit = emit
        self._tty = stream.isatty() and emit is None
        self._fixed = interval is not None or self._tty  # else a log's widening gaps
        self._gap = interval if interval is not None else (0.2 if self._tty else LOG_FIRST)
        self._enabled = enabled
        self._clock = clock
        self._start = clock()
        # a terminal's bar shows at the first update; a log's first line waits its gap
        self._next = self._start + (0.0 if self._tty else self._gap)
        self.total_pairs = total_pairs
        self.total_batches = total_batches
        self._bar: Any = None  # rich's, made at the first update on a terminal
        self._shown: tuple | None = None  # the counts of the last line written

    def update(self, counters, *, force: bool = False) -> None:
        if not self._enabled:
            return
        now = self._clock()
        if not force and now < self._next:
            return
        if not self._fixed and not force:
            self._gap = min(self._gap * 2, LOG_GAP_MOST)
        self._next = now + self._gap
        c = counters
        self._shown = (c.pairs_done, c.batches_done, c.calls, c.throttled, c.retries)
        if self._tty:
            self._draw(counters, now - self._start)
        elif self._emit is not None:
            self._emit(self.line(c, now - self._start), {
                "pairs_done": c.pairs_done, "pairs": self.total_pairs, "calls": c.calls,
                "batches_done": c.batches_done, "batches": self.total_batches,
                "throttled": c.throttled, "retries": c.retries})
        else:
            self._stream.write(self.line(counters, now - self._start) + "\n")
            self._stream.flush()

    def _draw(self, c, elapsed: float) -> None:
        if self._bar is None:
            from rich.console import Console
            from rich.progress import BarColumn, MofNCompleteColumn, TextColumn
            from rich.progress import Progress as Bar

            self._bar = Bar(TextColumn("pairs"), BarColumn(), MofNCompleteColumn(),
                            TextColumn("{task.description}"),
                            console=Console(file=self._stream), auto_refresh=False,
                            transient=False)
            self._task = self._bar.add_task("", total=max(self.total_pairs, 1))
            self._bar.start()
        self._bar.update(self._task, completed=c.pairs_done, description=self._stats(c, elapsed))
        self._bar.refresh()

    def _stats(self, c, elapsed: float) -> str:
        rate = c.calls / elapsed if elapsed > 0 else 0.0
        left = self.total_batches - c.batches_done
        eta = left * elapsed / c.batches_done if c.batches_done else None
        eta_s = f"{eta:,.0f}s" if eta is not None else "?"
        return (f"batches {c.batches_done:,}/{self.total_batches:,}  {rate:,.1f} calls/s  "
                f"429s {c.throttled}  retries {c.retries}  ETA {eta_s}")

    def line(self, c, elapsed: float) -> str:
        """The plain line: ``200/1,000 pairs  batches 2/10  1.0 calls/s  429s 1 ...``."""
        return f"{c.pairs_done:,}/{self.total_pairs:,} pairs  {self._stats(c, elapsed)}"

    def close(self, counters) -> None:
        c = counters
        if self._enabled and (self._bar is not None or self._shown != (
                c.pairs_done, c.batches_done, c.calls, c.throttled, c.retries)):
            self.update(counters, force=True)  # the end, unless its line was the last written
            if self._bar is not None:
                self._bar.stop()


class Phases:
    """The setup and closing phases of a job (reading the input, planning, storing the plan,
    writing the results): on a terminal a spinner once a phase has taken ``delay`` seconds and a
    line with its duration when it ends — so a ten-million-row job never sits silent for a
    minute — and nothing for quick ones; ``emit(line, fields)`` gets every phase's duration
    (the JSON log's ``phase`` events). On a plain stream (a cron log) only a phase that lasts
    ``log_delay`` seconds is said: a line then (``planning 9,600,000 pairs …``), so a log shows
    what a job that seems stuck is doing, and one with its duration when it ends."""

    def __init__(self, *, stream: TextIO = sys.stderr, enabled: bool = True,
                 emit: Callable[[str, dict], None] | None = None, delay: float = 1.0,
                 clock: Callable[[], float] = time.monotonic,
                 log_delay: float | None = None) -> None:
        self._stream, self._emit, self._clock = stream, emit, clock
        self._tty = enabled and emit is None and stream.isatty()
        self._plain = enabled and emit is None and not self._tty
        self._delay = delay if self._tty else LOG_PHASE if log_delay is None else log_delay
        self._lock = threading.Lock()

    @contextmanager
    def __call__(self, what: str, name: str) -> Iterator[None]:
        """Time ``what`` (``"planning 9,600,000 pairs"``); ``name`` is its JSON ``phase``."""
        start = self._clock()
        shown: list[Any] = []
        timer = None
        if self._tty or self._plain:
            timer = threading.Timer(self._delay, self._spin, (what, shown))
            timer.daemon = True
            timer.start()
        try:
            yield
        finally:
            if timer is not None:
                timer.cancel()
            with self._lock:
                spinning = bool(shown)
                if spinning:
                    shown[0].stop()
                shown.append(None)  # a late timer must not start a spinner now
            seconds = self._clock() - start
            line = f"{what}: {seconds:.1f} s"
            if spinning:
                self._stream.write(line + "\n")
                self._stream.flush()
            if self._emit is not None:
                self._emit(line, {"phase": name, "seconds": round(seconds, 3)})

    def _spin(self, what: str, shown: list[Any]) -> None:
        with self._lock:
            if shown:  # the phase ended meanwhile
                return
            if self._plain:  # a log: one line, never a spinner's redrawing
                self._stream.write(f"{what} …\n")
                self._stream.flush()
                shown.append(_Said())
                return
            from rich.console import Console

            status = Console(file=self._stream).status(what + " …")
            status.start()
            shown.append(status)


class _Said:
    """A phase's first line in a log: nothing to stop at its end."""

    def stop(self) -> None:
        return None
