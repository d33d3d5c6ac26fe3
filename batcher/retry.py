"""Retries, with tenacity kept behind this one module.

The wait honours what the server said (``Retry-After``, ``X-RATELIMIT-RESET``) in full and backs
off with full jitter otherwise, so many workers hitting one limit do not retry in lock-step. A
``Retry-After: 0`` still waits ``min_wait_on_zero_retry_after``: a burst of them must not burn every
attempt in a millisecond. A wait longer than ``longest_wait`` aborts the job (resumable) instead.

An outage is not a batch's failure: :class:`Reachability`, shared by every caller of a job, runs
a clock while nothing Zoho-shaped answers (connections refused or cut, timeouts, 5xx and proxy
pages) and stops it at any answer. While it runs, a batch out of attempts keeps trying; past
``outage_after`` the job aborts (DESIGN.md, Behaviour on answers).
"""

from __future__ import annotations

import asyncio
import math
import random
import time
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass
from email.utils import parsedate_to_datetime
from typing import TypeVar

import httpx
from tenacity import AsyncRetrying, RetryCallState, retry_if_exception

from batcher.errors import (
    AuthError,
    TransientError,
    UsageError,
    WaitTooLong,
    ZohoUnreachable,
)

T = TypeVar("T")

#: httpx errors that say something about this client, not the network: retrying cannot help
_NOT_TRANSIENT = (httpx.UnsupportedProtocol, httpx.LocalProtocolError)
#: failures of the way to Zoho rather than of an answer: no connection, an exchange cut or timed
#: out, and a body whose Content-Encoding (a gzip stream) cannot be decoded — a damaged answer is
#: no answer, as a cut one is. Every caller that meets the network catches these, never only
#: ``httpx.TransportError``: httpx raises a ``DecodingError`` outside that class
NETWORK_ERRORS = (httpx.TransportError, httpx.DecodingError)


@dataclass(frozen=True, slots=True)
class RetryPolicy:
    """``attempts`` bounds failures (5xx, resets, timeouts); ``throttled_attempts`` bounds 429s
    separately: being throttled is Zoho's normal way of pacing a big job, so it gets far more
    patience than a broken server before a pair is reported failed."""

    attempts: int = 6
    base: float = 0.5
    #: ceiling of the backoff when the server said nothing (seconds)
    max_wait: float = 60.0
    jitter: bool = True
    min_wait_on_zero_retry_after: float = 0.5
    throttled_attempts: int = 30
    #: the longest ``Retry-After`` honoured; a longer one aborts the job (seconds)
    longest_wait: float = 900.0
    #: how long Zoho may stay silent (no answer to anyone) before the job aborts (seconds)
    outage_after: float = 120.0

    def __post_init__(self) -> None:
        """UsageError (exit 2) for a value a job cannot run with: a library caller's."""
        for name in ("attempts", "throttled_attempts"):
            value = getattr(self, name)
            if type(value) is not int or value < 1:
                raise UsageError(f"{name} must be a whole number of at least 1, not {value!r}")
        for name in ("base", "max_wait", "min_wait_on_zero_retry_after", "longest_wait",
                     "outage_after"):
            value = getattr(self, name)
            if type(value) not in (int, float) or not 0 <= value < math.inf:
                raise UsageError(f"{name} must be a number of seconds, 0 or more, not "
                                 f"{value!r}")
        if type(self.jitter) is not bool:
            raise UsageError(f"jitter must be True or False, not {self.jitter!r}")


def seconds_text(seconds: float) -> str:
    """``45 s``, ``2 min``, ``1.5 h``: a wait as a person reads it."""
    if seconds < 120:
        return f"{seconds:.0f} s"
    if seconds < 7200:
        return f"{seconds / 60:.3g} min"
    return f"{seconds / 3600:.3g} h"


def is_unsent(exc: BaseException) -> bool:
    """The request never left: no connection could be made, or no token could be had."""
    if isinstance(exc, TransientError | AuthError):
        return exc.unsent
    return isinstance(exc, httpx.ConnectError | httpx.ConnectTimeout)


def no_answer(exc: BaseException) -> bool:
    """A failure that says Zoho (or the way to it) is down, or refuses every call for now (a
    429: nothing was done), rather than anything about the call: a job that meets only these
    for the outage clock's time stops, resumable, instead of failing its rows."""
    if isinstance(exc, TransientError):
        if exc.throttled:
            return True
        if exc.unsent or exc.http_status is None:
            return True
        # a 5xx in Zoho's own words (INTERNAL_SERVER_ERROR) is an answer; a proxy page is not
        status = exc.http_status
        return status >= 500 and exc.code in ("", f"HTTP_{status}", f"TOKEN_HTTP_{status}")
    return isinstance(exc, NETWORK_ERRORS) and not isinstance(exc, _NOT_TRANSIENT)


def _what(exc: BaseException) -> str:
    """A failure in a few words, without the exception's text (it may quote anything)."""
    if isinstance(exc, TransientError):
        return str(exc)
    try:
        where = (f" to {exc.request.url.netloc.decode('ascii', 'replace')}"
                 if isinstance(exc, httpx.RequestError) else "")
    except RuntimeError:  # an httpx error raised without its request
        where = ""
    return f"{type(exc).__name__}{where}"


class Reachability:
    """The outage clock of one job: started by a failure without an answer, stopped by any answer.

    ``check()`` raises :class:`~batcher.errors.ZohoUnreachable` once the clock passes
    ``give_up_after`` seconds. ``on_down(text)`` is told once a silence has lasted a while (a
    tenth of that, at most 10 s: a lone proxy error is not news) — to say on stderr that batcher
    is waiting, not hung.
    """

    def __init__(self, give_up_after: float, *, clock: Callable[[], float] = time.monotonic,
                 on_down: Callable[[str], object] | None = None, where: str = "") -> None:
        self._give_up_after = give_up_after
        self._where = f" at {where}" if where else ""  # named when a failure does not say
        self._clock = clock
        self._on_down = on_down
        self._since: float | None = None
        self._announced = False
        self._what = ""
        self.answers = 0  # answers seen by the job's callers, all together

    def failed(self, exc: BaseException) -> None:
        self._what = _what(exc)
        now = self._clock()
        if self._since is None:
            self._since, self._announced = now, False
        elif (not self._announced and self._on_down is not None
              and now - self._since >= min(10.0, self._give_up_after / 10)):
            self._announced = True
            self._on_down(f"no usable answer from Zoho for {seconds_text(now - self._since)} "
                          f"({self._what}); retrying for up to "
                          f"{seconds_text(self._give_up_after)} before stopping")

    def answered(self) -> None:
        self._since = None
        self.answers += 1

    def remaining(self) -> float:
        """Seconds left before the clock runs out (infinite while Zoho answers)."""
        if self._since is None:
            return float("inf")
        return max(0.0, self._since + self._give_up_after - self._clock())

    def check(self) -> None:
        if self._since is not None and self.remaining() <= 0:
            # the API's place, unless the failure names its own (a host, the accounts server)
            where = "" if " to " in self._what or "accounts server" in self._what \
                else self._where
            raise ZohoUnreachable(
                f"Zoho{where} gave no usable answer for "
                f"{seconds_text(self._clock() - self._since)} "
                f"(last: {self._what}); unanswered rows are not_sent — re-run the same command "
                "to resume once it is reachable")


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
            seconds = float(value)
        except ValueError:
            seconds = math.nan
        if math.isfinite(seconds):  # "inf" is no delay a job can honour, nor "nan" one at all
            return max(0.0, seconds)
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
        if not math.isfinite(number):
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
    return isinstance(exc, NETWORK_ERRORS) and not isinstance(exc, _NOT_TRANSIENT)


def compute_wait(policy: RetryPolicy, attempt: int, exc: BaseException | None,
                 rng: random.Random | None = None) -> float:
    """Seconds to sleep after failed attempt number ``attempt`` (1-based); what the server asked
    for is honoured in full (see :func:`check_wait` for the limit)."""
    retry_after = getattr(exc, "retry_after", None) if isinstance(exc, TransientError) else None
    if retry_after is not None:
        return max(retry_after, policy.min_wait_on_zero_retry_after)
    ceiling = min(policy.max_wait, policy.base * 2.0 ** min(attempt - 1, 60))
    if not policy.jitter:
        return ceiling
    return (rng or random).uniform(0.0, ceiling)


def check_wait(policy: RetryPolicy, exc: BaseException) -> None:
    """Raise :class:`~batcher.errors.WaitTooLong` when the server asked for a longer wait than
    the job may spend (``policy.longest_wait``)."""
    retry_after = exc.retry_after if isinstance(exc, TransientError) else None
    if retry_after is not None and retry_after > policy.longest_wait:
        raise WaitTooLong(
            f"Zoho asked to wait {seconds_text(retry_after)} before the next call "
            f"({exc.code or 'Retry-After'}), longer than the {seconds_text(policy.longest_wait)} "
            "this job waits; re-run the same command after that to resume")


async def call_with_retries(
    fn: Callable[[], Awaitable[T]],
    policy: RetryPolicy,
    *,
    on_retry: Callable[[int, BaseException, float], object] | None = None,
    sleep: Callable[[float], Awaitable[object]] = asyncio.sleep,
    rng: random.Random | None = None,
    reach: Reachability | None = None,
) -> tuple[T, int]:
    """Run ``fn`` until it returns, retrying transient failures; return ``(result, attempts)``.

    ``on_retry(attempt, error, wait)`` is called before each sleep (to count retries and 429s, or
    lower concurrency). When attempts run out (``policy.attempts`` failures, or
    ``policy.throttled_attempts`` 429s) the last error is re-raised unchanged; any other error is
    raised at once. With ``reach``, failures without an answer feed the job's outage clock and
    do not run out while nobody gets an answer: the clock decides (``ZohoUnreachable``). A
    ``Retry-After`` beyond ``policy.longest_wait`` raises ``WaitTooLong``.
    """
    # the job's answer count at this call's last failure without an answer, and whether nobody
    # was answered between its last two such failures (Zoho silent, not this call's trouble)
    answers_then: int | None = None
    silent = False

    async def attempt() -> T:
        nonlocal answers_then, silent
        if reach is not None:
            reach.check()
        try:
            result = await fn()
        except Exception as exc:
            if reach is not None:
                if no_answer(exc):
                    reach.failed(exc)
                    silent = answers_then is not None and reach.answers == answers_then
                    answers_then = reach.answers
                else:
                    reach.answered()
            check_wait(policy, exc)
            raise
        if reach is not None:
            reach.answered()
        return result

    def wait(state: RetryCallState) -> float:
        exc = state.outcome.exception() if state.outcome else None
        seconds = compute_wait(policy, state.attempt_number, exc, rng)
        if reach is not None and exc is not None and no_answer(exc):
            # wake up when the outage clock runs out, not a backoff later
            seconds = min(seconds, reach.remaining() + policy.min_wait_on_zero_retry_after)
        return seconds

    def before_sleep(state: RetryCallState) -> None:
        if on_retry is not None and state.outcome is not None and state.next_action is not None:
            on_retry(state.attempt_number, state.outcome.exception(), state.next_action.sleep)

    # the first attempt outside tenacity: nearly every call succeeds at once, and setting up its
    # retry loop (objects, closures, a reference cycle for the collector) cost more than the
    # call's own bookkeeping. Its failure, if retryable, is handed to the loop as attempt 1.
    try:
        return await attempt(), 1
    except Exception as exc:
        if not is_retryable(exc):
            raise
        first: BaseException | None = exc

    seen = {"throttled": 0, "failed": 0}

    def stop(state: RetryCallState) -> bool:
        exc = state.outcome.exception() if state.outcome else None
        if isinstance(exc, TransientError) and exc.throttled:
            seen["throttled"] += 1
            if seen["throttled"] < policy.throttled_attempts:
                return False
        else:
            seen["failed"] += 1
            if seen["failed"] < policy.attempts:
                return False
        # out of attempts: a failure of this call if others got answers meanwhile; while nobody
        # does, Zoho is down, and the outage clock decides
        return not (reach is not None and exc is not None and no_answer(exc) and silent)

    retrying = AsyncRetrying(
        sleep=sleep,
        stop=stop,
        wait=wait,
        retry=retry_if_exception(is_retryable),
        before_sleep=before_sleep,
        reraise=True,
    )
    attempts = 0
    async for try_ in retrying:
        with try_:
            attempts = try_.retry_state.attempt_number
            if first is not None:  # attempt 1, made above: its failure, as tenacity records it
                failure, first = first, None
                raise failure
            result = await attempt()
    return result, attempts
