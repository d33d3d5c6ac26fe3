"""Retries, with tenacity kept behind this one module.

The wait honours what the server said (``Retry-After``, ``X-RATELIMIT-RESET``) and backs off with
full jitter otherwise, so many workers hitting one limit do not retry in lock-step. A
``Retry-After: 0`` still waits ``min_wait_on_zero_retry_after``: a burst of them must not burn every
attempt in a millisecond.
"""

from __future__ import annotations

import asyncio
import random
import time
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass
from email.utils import parsedate_to_datetime
from typing import TypeVar

import httpx
from tenacity import AsyncRetrying, RetryCallState, retry_if_exception

from batcher.errors import TransientError

T = TypeVar("T")

#: httpx errors that say something about this client, not the network: retrying cannot help
_NOT_TRANSIENT = (httpx.UnsupportedProtocol, httpx.LocalProtocolError)


@dataclass(frozen=True, slots=True)
class RetryPolicy:
    """``attempts`` bounds failures (5xx, resets, timeouts); ``throttled_attempts`` bounds 429s
    separately: being throttled is Zoho's normal way of pacing a big job, so it gets far more
    patience than a broken server before a pair is reported failed."""

    attempts: int = 6
    base: float = 0.5
    max_wait: float = 60.0
    jitter: bool = True
    min_wait_on_zero_retry_after: float = 0.5
    throttled_attempts: int = 30

    def __post_init__(self) -> None:
        if self.attempts < 1 or self.throttled_attempts < 1:
            raise ValueError("attempts must be at least 1")
        if self.base < 0 or self.max_wait < 0 or self.min_wait_on_zero_retry_after < 0:
            raise ValueError("waits must not be negative")


def parse_retry_after(headers: Mapping[str, str], now: float | None = None) -> float | None:
    """Seconds the server asked us to wait, or None when it said nothing usable.

    ``Retry-After`` may be delta-seconds or an HTTP-date. ``X-RATELIMIT-RESET`` (older Zoho APIs) is
    read as epoch milliseconds when it is that large, epoch seconds when it looks like a timestamp,
    else as seconds to wait.
    """
    now = time.time() if now is None else now
    lowered = {str(k).lower(): str(v).strip() for k, v in headers.items()}
    value = lowered.get("retry-after")
    if value:
        try:
            return max(0.0, float(value))
        except ValueError:
            pass
        try:
            return max(0.0, parsedate_to_datetime(value).timestamp() - now)
        except (TypeError, ValueError, IndexError, OverflowError):
            pass
    value = lowered.get("x-ratelimit-reset")
    if value:
        try:
            number = float(value)
        except ValueError:
            return None
        if number > 1e11:
            return max(0.0, number / 1000.0 - now)
        if number > 1e9:
            return max(0.0, number - now)
        return max(0.0, number)
    return None


def is_retryable(exc: BaseException) -> bool:
    if isinstance(exc, TransientError):
        return True
    return isinstance(exc, httpx.TransportError) and not isinstance(exc, _NOT_TRANSIENT)


def compute_wait(policy: RetryPolicy, attempt: int, exc: BaseException | None,
                 rng: random.Random | None = None) -> float:
    """Seconds to sleep after failed attempt number ``attempt`` (1-based)."""
    retry_after = getattr(exc, "retry_after", None) if isinstance(exc, TransientError) else None
    if retry_after is not None:
        return min(policy.max_wait, max(retry_after, policy.min_wait_on_zero_retry_after))
    ceiling = min(policy.max_wait, policy.base * 2 ** (attempt - 1))
    if not policy.jitter:
        return ceiling
    return (rng or random).uniform(0.0, ceiling)


async def call_with_retries(
    fn: Callable[[], Awaitable[T]],
    policy: RetryPolicy,
    *,
    on_retry: Callable[[int, BaseException, float], object] | None = None,
    sleep: Callable[[float], Awaitable[object]] = asyncio.sleep,
    rng: random.Random | None = None,
) -> tuple[T, int]:
    """Run ``fn`` until it returns, retrying transient failures; return ``(result, attempts)``.

    ``on_retry(attempt, error, wait)`` is called before each sleep (to count retries and 429s, or
    lower concurrency). When attempts run out (``policy.attempts`` failures, or
    ``policy.throttled_attempts`` 429s) the last error is re-raised unchanged; any other error is
    raised at once.
    """

    def wait(state: RetryCallState) -> float:
        exc = state.outcome.exception() if state.outcome else None
        return compute_wait(policy, state.attempt_number, exc, rng)

    def before_sleep(state: RetryCallState) -> None:
        if on_retry is not None and state.outcome is not None and state.next_action is not None:
            on_retry(state.attempt_number, state.outcome.exception(), state.next_action.sleep)

    seen = {"throttled": 0, "failed": 0}

    def stop(state: RetryCallState) -> bool:
        exc = state.outcome.exception() if state.outcome else None
        if isinstance(exc, TransientError) and exc.throttled:
            seen["throttled"] += 1
            return seen["throttled"] >= policy.throttled_attempts
        seen["failed"] += 1
        return seen["failed"] >= policy.attempts

    retrying = AsyncRetrying(
        sleep=sleep,
        stop=stop,
        wait=wait,
        retry=retry_if_exception(is_retryable),
        before_sleep=before_sleep,
        reraise=True,
    )
    attempts = 0
    async for attempt in retrying:
        with attempt:
            attempts = attempt.retry_state.attempt_number
            result = await fn()
    return result, attempts
