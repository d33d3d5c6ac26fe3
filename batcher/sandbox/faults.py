"""Named fault profiles and the seeded dice that decide, call by call, what goes wrong.

Every API call draws the same number of random values from one ``random.Random(seed)``, whatever
its outcome, so the same seed and the same call order replay the same faults exactly. A fault either
happens instead of the call (nothing applied) or after it (everything applied): never halfway.
"""

from __future__ import annotations

import random
from collections.abc import Mapping
from dataclasses import dataclass
from types import MappingProxyType

import httpx

#: fault kinds that replace the whole answer; at most one per call
ERROR_500 = "error_500"
HTML_502, HTML_503, HTML_504 = "html_502", "html_503", "html_504"
DROP_BEFORE, DROP_AFTER = "drop_before", "drop_after"
THROTTLE = "throttle"


class DroppedConnection(httpx.RemoteProtocolError):
    """Raised by the sandbox to cut a connection.

    In-process (``httpx.ASGITransport``) it reaches the client as the transport error a reset would
    be; over uvicorn the server closes the socket mid-answer and httpx raises its own
    ``RemoteProtocolError``.
    """

    def __init__(self, when: str) -> None:
        super().__init__(f"sandbox dropped the connection ({when} applying the call)")
        self.when = when


@dataclass(frozen=True, slots=True)
class FaultProfile:
    """Rates are per API call. Limits, when set, tighten the sandbox config (the tighter wins)."""

    name: str
    error_500: float = 0.0          # JSON 500 INTERNAL_SERVER_ERROR
    html_5xx: float = 0.0           # proxy HTML page, 502/503/504 in equal shares
    drop_before: float = 0.0        # connection cut, call not applied
    drop_after: float = 0.0         # call applied, connection cut before the answer
    storm_start: float = 0.0        # chance a call starts a 429 storm ...
    storm_length: tuple[int, int] = (3, 8)  # ... of this many calls (inclusive range)
    slow: float = 0.0               # answer delayed by SandboxConfig.slow_seconds
    retry_after_absent: float = 0.4  # share of 429s without Retry-After
    retry_after_zero: float = 0.2    # share of 429s with Retry-After: 0
    ratelimit_headers: float = 0.5   # share of 429s with X-RATELIMIT-* headers
    concurrency_limit: int | None = None
    rate_limit: float | None = None
    token_ttl: float | None = None


PROFILES: Mapping[str, FaultProfile] = MappingProxyType({
    p.name: p
    for p in (
        FaultProfile("none"),
        FaultProfile("flaky", error_500=0.10, html_5xx=0.12),
        FaultProfile("throttled", storm_start=0.12, concurrency_limit=2, rate_limit=20.0),
        FaultProfile("lossy", drop_before=0.08, drop_after=0.08),
        FaultProfile("slow", slow=0.15),
        FaultProfile("short_tokens", token_ttl=3.0),
        FaultProfile("mix", error_500=0.03, html_5xx=0.03, drop_before=0.03, drop_after=0.03,
                     storm_start=0.03, slow=0.03, concurrency_limit=4, rate_limit=40.0,
                     token_ttl=120.0),  # long enough for a rehearsal within 10 refreshes/10 min
    )
})


def profile_named(name: str) -> FaultProfile:
    try:
        return PROFILES[name]
    except KeyError:
        raise ValueError(
            f"unknown fault profile {name!r}; choose one of: {', '.join(PROFILES)}") from None


@dataclass(frozen=True, slots=True)
class Decision:
    """What the dice said for one call. ``kind`` is None when the call runs normally."""

    seq: int
    kind: str | None = None
    slow: bool = False
    retry_after: str | None = None       # header value for a 429, None = header absent
    ratelimit_headers: bool = False


_DRAWS_PER_CALL = 6


class FaultDice:
    """Seeded, stateful (429 storms span calls) source of per-call decisions."""

    def __init__(self, profile: FaultProfile, seed: int, retry_after_max: int = 2) -> None:
        self.profile = profile
        self._rng = random.Random(seed)
        self._limit_rng = random.Random(f"{seed}:limits")
        self._retry_after_max = retry_after_max
        self._storm_left = 0
        self._seq = 0

    def decide(self) -> Decision:
        p = self.profile
        u = [self._rng.random() for _ in range(_DRAWS_PER_CALL)]
        self._seq += 1
        retry_after, headers = self._throttle_headers(u[4], u[5])
        if self._storm_left > 0:
            self._storm_left -= 1
            return Decision(self._seq, THROTTLE, False, retry_after, headers)
        if u[1] < p.storm_start:
            lo, hi = p.storm_length
            self._storm_left = lo - 1 + int(u[2] * (hi - lo + 1))
            return Decision(self._seq, THROTTLE, False, retry_after, headers)
        kind = None
        edge = 0.0
        for name, rate in ((ERROR_500, p.error_500), (HTML_502, p.html_5xx / 3),
                           (HTML_503, p.html_5xx / 3), (HTML_504, p.html_5xx / 3),
                           (DROP_BEFORE, p.drop_before), (DROP_AFTER, p.drop_after)):
            edge += rate
            if u[0] < edge:
                kind = name
                break
        return Decision(self._seq, kind, u[3] < p.slow, retry_after, headers)

    def limit_headers(self) -> tuple[str | None, bool]:
        """Header choice for a 429 caused by a real limit; separate dice so timing cannot shift
        the per-call fault sequence."""
        return self._throttle_headers(self._limit_rng.random(), self._limit_rng.random())

    def _throttle_headers(self, u: float, v: float) -> tuple[str | None, bool]:
        p = self.profile
        if u < p.retry_after_absent:
            retry_after = None
        elif u < p.retry_after_absent + p.retry_after_zero:
            retry_after = "0"
        else:
            present = max(1e-9, 1.0 - p.retry_after_absent - p.retry_after_zero)
            frac = min(0.999999, (u - p.retry_after_absent - p.retry_after_zero) / present)
            retry_after = str(1 + int(frac * self._retry_after_max))
        return retry_after, v < p.ratelimit_headers
