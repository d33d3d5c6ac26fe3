"""Adaptive concurrency: fewer calls in flight after a 429, more again after calm periods.

Zoho's concurrency limit is shared with the org's other integrations, so the only safe limit is
the one the server tells us about by throttling. Additive increase, multiplicative decrease.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import Callable
from dataclasses import dataclass


@dataclass(frozen=True)
class LimiterSettings:
    max_concurrency: int = 4
    min_concurrency: int = 1
    calm_seconds: float = 5.0  # this long without a 429 raises the limit by one


class AdaptiveLimiter:
    def __init__(self, settings: LimiterSettings, clock: Callable[[], float] = time.monotonic):
        self._s = settings
        self._clock = clock
        self.limit = settings.max_concurrency
        self.in_flight = 0
        self._cond = asyncio.Condition()
        self._paused_until = 0.0
        self._last_change = clock()
        self.lowest = self.limit

    async def __aenter__(self) -> AdaptiveLimiter:
        async with self._cond:
            while True:
                self._maybe_raise()
                wait = self._paused_until - self._clock()
                if wait > 0:
                    # a shared pause: every worker honours the server's Retry-After, not just one
                    with contextlib.suppress(TimeoutError):
                        await asyncio.wait_for(self._cond.wait(), timeout=wait)
                    continue
                if self.in_flight < self.limit:
                    self.in_flight += 1
                    if self.in_flight < self.limit:
                        self._cond.notify()  # a slot is still free (the limit rose): pass it on
                    return self
                await self._cond.wait()

    async def __aexit__(self, *exc: object) -> None:
        async with self._cond:
            self.in_flight -= 1
            # one slot freed, one waiter woken: waking them all cost every release a round of
            # wake-ups that found the slot taken (a woken waiter re-checks, so none is stranded)
            self._cond.notify()

    async def wake(self) -> None:
        """End any pause and wake every waiter (the run is stopping: they must see it now)."""
        async with self._cond:
            self._paused_until = 0.0
            self._cond.notify_all()

    def throttled(self, pause: float | None = None) -> None:
        """A 429 arrived: halve the limit (once per calm window) and pause everyone briefly."""
        now = self._clock()
        if now - self._last_change > 0.5 or self.limit == self._s.max_concurrency:
            self.limit = max(self._s.min_concurrency, self.limit // 2)
            self.lowest = min(self.lowest, self.limit)
            self._last_change = now
        if pause:
            self._paused_until = max(self._paused_until, now + pause)

    def _maybe_raise(self) -> None:
        now = self._clock()
        if self.limit < self._s.max_concurrency and now - self._last_change >= self._s.calm_seconds:
            self.limit += 1
            self._last_change = now
