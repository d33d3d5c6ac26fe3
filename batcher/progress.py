"""Progress for people: a live line on a terminal, a plain line every few seconds in cron logs."""

from __future__ import annotations

import sys
import time
from collections.abc import Callable
from typing import TextIO


class Progress:
    def __init__(self, total_pairs: int, total_batches: int, *, stream: TextIO = sys.stderr,
                 interval: float | None = None, enabled: bool = True,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self._stream = stream
        self._tty = stream.isatty()
        self._interval = interval if interval is not None else (0.2 if self._tty else 5.0)
        self._enabled = enabled
        self._clock = clock
        self._start = clock()
        self._last = 0.0
        self.total_pairs = total_pairs
        self.total_batches = total_batches

    def update(self, counters, *, force: bool = False) -> None:
        if not self._enabled:
            return
        now = self._clock()
        if not force and now - self._last < self._interval:
            return
        self._last = now
        line = self.line(counters, now - self._start)
        if self._tty:
            self._stream.write("\r" + line.ljust(100)[:120])
        else:
            self._stream.write(line + "\n")
        self._stream.flush()

    def line(self, c, elapsed: float) -> str:
        done, total = c.pairs_done, max(self.total_pairs, 1)
        rate = c.calls / elapsed if elapsed > 0 else 0.0
        left = self.total_batches - c.batches_done
        eta = left * elapsed / c.batches_done if c.batches_done else None
        width = 24
        filled = int(width * min(done / total, 1.0))
        bar = "#" * filled + "-" * (width - filled)
        eta_s = f"{eta:,.0f}s" if eta is not None else "?"
        return (f"[{bar}] {done:,}/{self.total_pairs:,} pairs  batches {c.batches_done:,}/"
                f"{self.total_batches:,}  {rate:,.1f} calls/s  429s {c.throttled}  "
                f"retries {c.retries}  ETA {eta_s}")

    def close(self, counters) -> None:
        if self._enabled:
            self.update(counters, force=True)
            if self._tty:
                self._stream.write("\n")
