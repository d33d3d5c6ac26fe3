from __future__ import annotations

import asyncio
import random
from datetime import UTC, datetime
from email.utils import format_datetime

import httpx
import pytest

from batcher.errors import AuthError, TransientError, WaitTooLong, ZohoUnreachable
from batcher.retry import (
    Reachability,
    RetryPolicy,
    call_with_retries,
    compute_wait,
    is_unsent,
    no_answer,
    parse_retry_after,
)

NOW = 1_700_000_000.0


@pytest.mark.parametrize("headers, expected", [
    ({}, None),
    ({"Retry-After": "7"}, 7.0),
    ({"retry-after": "0"}, 0.0),
    ({"Retry-After": "-3"}, 0.0),
    ({"Retry-After": format_datetime(datetime.fromtimestamp(NOW + 30, UTC), usegmt=True)}, 30.0),
    ({"Retry-After": format_datetime(datetime.fromtimestamp(NOW - 30, UTC), usegmt=True)}, 0.0),
    ({"Retry-After": "soon"}, None),
    ({"X-RATELIMIT-RESET": str(int((NOW + 12) * 1000))}, 12.0),   # epoch milliseconds
    ({"x-ratelimit-reset": str(int(NOW + 5))}, 5.0),              # epoch seconds
    ({"X-RateLimit-Reset": "20"}, 20.0),                         # seconds to wait
    ({"Retry-After": "2", "X-RATELIMIT-RESET": "20"}, 2.0),
    # found by trying: "inf" stopped the job, "Zoho asked to wait inf h"; "nan" was a 0 s wait.
    # Neither is a delay: the reset header, else the backoff, decides
    ({"Retry-After": "inf"}, None),
    ({"Retry-After": "NaN"}, None),
    ({"Retry-After": "1e400"}, None),
    ({"Retry-After": "Infinity", "X-RATELIMIT-RESET": "20"}, 20.0),
    ({"X-RATELIMIT-RESET": "inf"}, None),
    ({"X-RATELIMIT-RESET": "nan"}, None),
])
def test_parse_retry_after(headers, expected):
    got = parse_retry_after(headers, NOW)
    if expected is None:
        assert got is None
    else:
        assert got == pytest.approx(expected)


def test_parse_retry_after_accepts_httpx_headers():
    assert parse_retry_after(httpx.Headers({"RETRY-AFTER": "3"}), NOW) == 3.0


def test_wait_honours_retry_after_in_full_with_a_floor():
    """Retry-After: 90 used to be cut to the backoff ceiling (60 s) and retried early."""
    policy = RetryPolicy(max_wait=60, min_wait_on_zero_retry_after=0.5)
    assert compute_wait(policy, 1, TransientError("x", retry_after=0.0)) == 0.5
    assert compute_wait(policy, 1, TransientError("x", retry_after=9.0)) == 9.0
    assert compute_wait(policy, 1, TransientError("x", retry_after=90.0)) == 90.0


def test_a_retry_after_beyond_the_longest_wait_aborts_naming_it():
    fn = Flaky([TransientError("429", retry_after=1200.0, throttled=True,
                               code="TOO_MANY_REQUESTS")])
    with pytest.raises(WaitTooLong, match="20 min.*15 min"):
        run(fn, RetryPolicy(longest_wait=900.0))
    assert fn.calls == 1
    fn = Flaky([TransientError("429", retry_after=90.0, throttled=True)])
    (_, attempts), sleeps = run(fn)
    assert attempts == 2 and sleeps == [90.0]


class Clock:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


def run_clocked(fn, policy, reach, clock):
    sleeps: list[float] = []

    async def sleep(seconds):
        sleeps.append(seconds)
        clock.now += seconds

    return asyncio.run(call_with_retries(fn, policy, sleep=sleep, reach=reach)), sleeps


def refused():
    return httpx.ConnectError("refused", request=httpx.Request("POST", "https://x.example/a"))


def test_while_nobody_gets_an_answer_the_outage_clock_decides_not_the_attempts():
    clock = Clock()
    reach = Reachability(120.0, clock=clock)
    policy = RetryPolicy(attempts=3, base=1, max_wait=10, jitter=False)
    fn = Flaky([refused()] * 1000)
    with pytest.raises(ZohoUnreachable, match="x.example"):
        run_clocked(fn, policy, reach, clock)
    assert fn.calls > 3  # far more than the attempts: no row fails because Zoho is down
    assert 120.0 <= clock.now <= 121.0  # woken when the clock ran out, not a backoff later


@pytest.mark.parametrize("failure", [
    "could not reach the Zoho accounts server http://127.0.0.1:9/oauth/v2/token (ConnectError)",
    "the Zoho accounts server answered HTTP 503"])
def test_an_outage_of_the_accounts_server_is_not_said_as_the_apis(failure):
    """Only the token endpoint down: the stop names it, not the API host that answered fine
    (it said "Zoho at <API> gave no usable answer … (last: could not reach the accounts
    server …)")."""
    clock = Clock()
    reach = Reachability(10.0, clock=clock, where="https://www.zohoapis.com")
    reach.failed(TransientError(failure, code="TOKEN_ENDPOINT_UNREACHABLE", unsent=True))
    clock.now = 11.0
    with pytest.raises(ZohoUnreachable) as stopped:
        reach.check()
    assert "zohoapis" not in str(stopped.value) and "accounts server" in str(stopped.value)


def test_a_call_that_fails_while_others_get_answers_fails_after_its_attempts():
    clock = Clock()
    reach = Reachability(120.0, clock=clock)
    policy = RetryPolicy(attempts=3, base=1, max_wait=10, jitter=False)

    async def fn():
        reach.answered()  # another worker's call was answered meanwhile
        raise refused()

    with pytest.raises(httpx.ConnectError):
        run_clocked(fn, policy, reach, clock)


def test_any_answer_stops_the_outage_clock():
    clock = Clock()
    reach = Reachability(10.0, clock=clock)
    reach.failed(refused())
    clock.now = 9.0
    reach.check()
    reach.answered()
    clock.now = 100.0
    reach.check()  # no silence running: nothing to raise
    reach.failed(refused())
    clock.now = 110.5
    with pytest.raises(ZohoUnreachable):
        reach.check()


@pytest.mark.parametrize("exc, unsent, silent", [
    (refused(), True, True),
    (httpx.ConnectTimeout("t"), True, True),
    (httpx.ReadTimeout("t"), False, True),
    (httpx.RemoteProtocolError("cut"), False, True),
    (TransientError("token", code="TOKEN_ENDPOINT_UNREACHABLE", unsent=True), True, True),
    (TransientError("proxy", code="HTTP_503", http_status=503), False, True),
    (TransientError("zoho", code="INTERNAL_SERVER_ERROR", http_status=500), False, False),
    # a 429 did nothing: only 429s for the outage clock's time stop the job, resumable
    (TransientError("429", code="TOO_MANY_REQUESTS", http_status=429, throttled=True), False,
     True),
])
def test_what_counts_as_never_sent_and_as_no_answer(exc, unsent, silent):
    assert (is_unsent(exc), no_answer(exc)) == (unsent, silent)


def test_backoff_is_exponential_and_jittered_within_bounds():
    fixed = RetryPolicy(base=0.5, max_wait=3, jitter=False)
    assert [compute_wait(fixed, n, None) for n in (1, 2, 3, 4, 5)] == [0.5, 1, 2, 3, 3]
    jittered = RetryPolicy(base=0.5, max_wait=60)
    rng = random.Random(1)
    waits = [compute_wait(jittered, 4, None, rng) for _ in range(200)]
    assert all(0 <= w <= 4 for w in waits) and len(set(waits)) > 100


class Flaky:
    def __init__(self, errors):
        self.errors = list(errors)
        self.calls = 0

    async def __call__(self):
        self.calls += 1
        if self.errors:
            raise self.errors.pop(0)
        return "ok"


NO_JITTER = RetryPolicy(jitter=False)


def run(fn, policy=NO_JITTER, **kw):
    sleeps: list[float] = []

    async def sleep(seconds):
        sleeps.append(seconds)

    result = asyncio.run(call_with_retries(fn, policy, sleep=sleep, **kw))
    return result, sleeps


def test_retries_transient_and_transport_errors_then_succeeds():
    req = httpx.Request("POST", "https://x")
    fn = Flaky([TransientError("502", http_status=502), httpx.ReadTimeout("t", request=req),
                httpx.RemoteProtocolError("reset", request=req), httpx.ConnectError("c")])
    seen = []
    (result, attempts), sleeps = run(fn, on_retry=lambda n, e, w: seen.append((n, type(e), w)))
    assert result == "ok" and attempts == 5 and fn.calls == 5
    assert sleeps == [0.5, 1.0, 2.0, 4.0]
    assert [s[:2] for s in seen] == [(1, TransientError), (2, httpx.ReadTimeout),
                                     (3, httpx.RemoteProtocolError), (4, httpx.ConnectError)]


def test_zero_retry_after_still_waits():
    fn = Flaky([TransientError("429", retry_after=0.0, throttled=True)] * 3)
    (_, attempts), sleeps = run(fn)
    assert attempts == 4 and sleeps == [0.5, 0.5, 0.5]


def test_last_error_reraised_after_all_attempts():
    errors = [TransientError(f"boom {i}", http_status=503) for i in range(6)]
    fn = Flaky(errors)
    with pytest.raises(TransientError, match="boom 5"):
        run(fn, RetryPolicy(attempts=6, jitter=False))
    assert fn.calls == 6


def test_other_errors_are_not_retried():
    fn = Flaky([AuthError("refused")])
    with pytest.raises(AuthError):
        run(fn)
    assert fn.calls == 1
    fn = Flaky([httpx.UnsupportedProtocol("ftp")])
    with pytest.raises(httpx.UnsupportedProtocol):
        run(fn)
    assert fn.calls == 1


def test_first_try_success_counts_one_attempt():
    (result, attempts), sleeps = run(Flaky([]))
    assert (result, attempts, sleeps) == ("ok", 1, [])


@pytest.mark.parametrize("change", [
    {"attempts": 0}, {"attempts": "3"}, {"attempts": 2.0}, {"throttled_attempts": True},
    {"longest_wait": -1}, {"outage_after": "120"}, {"base": float("nan")},
    {"max_wait": float("inf")}, {"jitter": "yes"}])
def test_policy_refuses_what_a_job_cannot_run_with_as_a_usage_error(change):
    """A scheduler's policy of the wrong kind: a UsageError naming it (exit 2), not a bare
    ValueError or a TypeError deep in the first retry."""
    from batcher.errors import UsageError

    with pytest.raises(UsageError, match=next(iter(change))):
        RetryPolicy(**change)


def test_429s_get_their_own_larger_budget():
    """A storm of 429s must not burn the attempts meant for broken servers."""
    policy = RetryPolicy(attempts=2, throttled_attempts=10, base=0, jitter=False,
                         min_wait_on_zero_retry_after=0)
    answers = [TransientError("429", throttled=True)] * 8 + ["ok"]

    async def fn():
        a = answers.pop(0)
        if isinstance(a, Exception):
            raise a
        return a

    async def no_sleep(_):
        return None

    assert asyncio.run(call_with_retries(fn, policy, sleep=no_sleep)) == ("ok", 9)

    storm = [TransientError("429", throttled=True)] * 20

    async def always_throttled():
        raise storm.pop(0)

    with pytest.raises(TransientError):
        asyncio.run(call_with_retries(always_throttled, policy, sleep=no_sleep))
    assert len(storm) == 10  # gave up after exactly throttled_attempts
