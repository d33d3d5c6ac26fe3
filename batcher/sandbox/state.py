"""The sandbox's memory: world, tokens, limits, and the truth of every call it received.

Handlers run on one event loop, but tests read the truth from another thread when the sandbox
serves over loopback, so every mutation and every snapshot holds one lock.
"""

from __future__ import annotations

import hashlib
import hmac
import math
import secrets
import threading
import time
from collections import Counter, deque
from collections.abc import Callable, Iterable
from dataclasses import asdict, dataclass
from itertools import product

from .config import SandboxConfig
from .faults import FaultDice, profile_named
from .unenrol import Answer, Parsed, answer_unenrol, without_paths
from .world import World

Triple = tuple[str, str, str]

CADENCE_READ_SCOPES = ("zohocrm.settings.cadences.read", "zohocrm.settings.cadences.all",
                       "zohocrm.settings.all")


@dataclass(frozen=True, slots=True)
class CallRecord:
    """One un-enrol call as the server saw it (``Sandbox.calls`` lists them as they finish)."""

    #: arrival order among API calls (cadence listings included): the fault dice's roll number
    seq: int
    module: str
    record_ids: tuple[str, ...]
    cadence_ids: tuple[str, ...]
    #: HTTP status answered; None when the connection was dropped instead
    http_status: int | None
    #: error code, SUCCESS / MIXED / SCHEDULED, or the fault (``drop_after``, ``html_503``...)
    code: str
    #: the call's effect was committed (immediately, or scheduled with a 202)
    applied: bool
    #: (record_id, cadence_id) pairs this call un-enrolled
    removed: tuple[tuple[str, str], ...] = ()
    fault: str | None = None
    #: the "slow" fault held this answer back by SandboxConfig.slow_seconds
    delayed: bool = False


@dataclass(frozen=True, slots=True)
class _Token:
    expires_at: float
    scopes: frozenset[str]


def coin(seed: int, key: str) -> bool:
    """A fair, stable coin per (seed, key): same error, same shape, in every run."""
    return hashlib.sha256(f"{seed}|{key}".encode()).digest()[0] & 1 == 1


class Sandbox:
    """Holds the world and the truth; the Starlette app is only its HTTP face."""

    def __init__(self, world: World, config: SandboxConfig,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.config = config
        self.profile = profile_named(config.fault_profile)
        self.dice = FaultDice(self.profile, config.seed, config.retry_after_max)
        self.clock = clock
        self.world = world.copy()
        self._initial = frozenset(self.world.enrollments)
        self._lock = threading.Lock()
        self._tokens: dict[str, _Token] = {}
        self._issued: dict[str, deque[float]] = {}
        self._recent: deque[float] = deque()
        self._calls: list[CallRecord] = []
        self._named: set[Triple] = set()
        self._removed: set[Triple] = set()
        self._pending: list[tuple[float, tuple[Triple, ...]]] = []
        self._in_flight = 0
        self.refresh_count = 0
        self.tokens_issued = 0
        self.max_concurrency_seen = 0
        #: API calls the day's credits still allow (None: no limit); a test sets it to
        #: move to the next day
        self.credits_left: int | None = config.daily_credits

    # ------------------------------------------------------------------ effective limits

    @property
    def token_ttl(self) -> float:
        return _tightest(self.config.token_ttl, self.profile.token_ttl)

    @property
    def concurrency_limit(self) -> int | None:
        return _tightest(self.config.concurrency_limit, self.profile.concurrency_limit)

    @property
    def rate_limit(self) -> float | None:
        return _tightest(self.config.rate_limit, self.profile.rate_limit)

    def wrap(self, key: str) -> bool:
        """Whether a whole-request error goes inside ``data[]`` (SandboxConfig.error_wrapping)."""
        mode = self.config.error_wrapping
        return mode == "wrapped" or (mode == "mixed" and coin(self.config.seed, key))

    def whole(self, body: dict) -> dict:
        """``body``, a whole-request error, in the form ``error_wrapping`` gives its code."""
        return {"data": [body]} if self.wrap(f"code:{body['code']}") else body

    # ------------------------------------------------------------------ tokens

    def issue_token(self, scopes: Iterable[str] | None = None) -> str:
        """A valid access token without going through the token endpoint (for tests)."""
        token = f"1000.{secrets.token_hex(16)}.{secrets.token_hex(16)}"
        granted = frozenset(s.lower() for s in (self.config.scopes if scopes is None else scopes))
        with self._lock:
            self._tokens[token] = _Token(self.clock() + self.token_ttl, granted)
            self.tokens_issued += 1
        return token

    def refresh(self, form: dict[str, str], api_domain: str) -> tuple[int, dict]:
        """The token endpoint's answer (HTTP status, JSON body) to a refresh-token grant."""
        cfg = self.config
        with self._lock:
            self.refresh_count += 1
        if form.get("grant_type") != "refresh_token":
            return 200, {"error": "unsupported_grant_type"}
        if not (_same(form.get("client_id", ""), cfg.client_id)
                and _same(form.get("client_secret", ""), cfg.client_secret)):
            return 200, {"error": "invalid_client"}
        refresh_token = form.get("refresh_token", "")
        if not _same(refresh_token, cfg.refresh_token):
            return 200, {"error": "invalid_code"}
        now = self.clock()
        with self._lock:
            recent = self._issued.setdefault(refresh_token, deque())
            while recent and recent[0] <= now - cfg.refresh_window:
                recent.popleft()
            if len(recent) >= cfg.refresh_limit:
                return 400, {"error": "Access Denied", "status": "failure",
                             "error_description": "You have made too many requests "
                             "continuously. Please try again after some time."}
            recent.append(now)
        token = self.issue_token()
        expires_in = cfg.announced_ttl or max(1, math.ceil(self.token_ttl))
        return 200, {"access_token": token, "scope": " ".join(cfg.scopes),
                     "api_domain": cfg.api_domain or api_domain, "token_type": "Bearer",
                     "expires_in": expires_in}

    def check_token(self, authorization: str | None) -> tuple[str | None, frozenset[str]]:
        """(error code or None, granted scopes) for an Authorization header."""
        if not authorization:
            return "AUTHENTICATION_FAILURE", frozenset()
        scheme, _, token = authorization.partition(" ")
        if scheme != "Zoho-oauthtoken" or not token.strip():
            return "INVALID_TOKEN", frozenset()
        with self._lock:
            entry = self._tokens.get(token.strip())
        if entry is None or self.clock() >= entry.expires_at:
            return "INVALID_TOKEN", frozenset()
        return None, entry.scopes

    def revoke_tokens(self) -> None:
        """Every access token issued so far answers INVALID_TOKEN from now on."""
        with self._lock:
            self._tokens.clear()

    # ------------------------------------------------------------------ limits

    def enter_call(self) -> int:
        with self._lock:
            self._in_flight += 1
            self.max_concurrency_seen = max(self.max_concurrency_seen, self._in_flight)
            return self._in_flight

    def leave_call(self) -> None:
        with self._lock:
            self._in_flight -= 1

    def over_limit(self, in_flight: int) -> str | None:
        """"concurrency" or "rate" when this call, arriving now, exceeds a limit."""
        limit = self.concurrency_limit
        if limit is not None and in_flight > limit:
            return "concurrency"
        rate = self.rate_limit
        if rate is None:
            return None
        now = self.clock()
        with self._lock:
            while self._recent and self._recent[0] <= now - 1.0:
                self._recent.popleft()
            if len(self._recent) >= rate:
                return "rate"
            self._recent.append(now)
        return None

    # ------------------------------------------------------------------ truth

    def spend_credit(self) -> bool:
        """Take a credit for an API call (un-enrol or cadence listing); False when the day's
        are used up."""
        with self._lock:
            if self.credits_left is None:
                return True
            if self.credits_left <= 0:
                return False
            self.credits_left -= 1
            return True

    def name_pairs(self, module: str, ids: list, cadence_ids: list) -> None:
        with self._lock:
            self._named.update(product((module,), map(str, ids), list(map(str, cadence_ids))))

    def unenrol(self, module: str, parsed: Parsed) -> Answer:
        """Answer a well-formed call and apply it (now, or scheduled) as one atomic step."""
        cfg = self.config
        with self._lock:
            answer = answer_unenrol(self.world, module, parsed.ids, parsed.cadence_ids,
                                    shape=cfg.answer_shape, scheduled=cfg.scheduled != "off",
                                    wrap=self.wrap)
            if not cfg.error_paths:
                answer = without_paths(answer)
            if cfg.scheduled == "later":
                if answer.remove:
                    self._pending.append((self.clock() + cfg.scheduled_delay, answer.remove))
            else:
                self._remove(answer.remove)
        return answer

    def apply_due(self, *, everything: bool = False) -> None:
        """Carry out scheduled removals whose time has come (all of them with ``everything``)."""
        now = self.clock()
        with self._lock:
            due = [p for p in self._pending if everything or p[0] <= now]
            self._pending = [p for p in self._pending if p not in due]
            for _, triples in due:
                self._remove(triples)

    def _remove(self, triples: tuple[Triple, ...]) -> None:
        present = self.world.enrollments.intersection(triples)
        self.world.enrollments.difference_update(present)
        self._removed.update(present)

    def record_call(self, call: CallRecord) -> None:
        with self._lock:
            self._calls.append(call)

    @property
    def calls(self) -> list[CallRecord]:
        with self._lock:
            return list(self._calls)

    @property
    def named_pairs(self) -> frozenset[Triple]:
        with self._lock:
            return frozenset(self._named)

    @property
    def removed(self) -> frozenset[Triple]:
        self.apply_due()
        with self._lock:
            return frozenset(self._removed)

    @property
    def enrolled(self) -> frozenset[Triple]:
        self.apply_due()
        with self._lock:
            return frozenset(self.world.enrollments)

    @property
    def initially_enrolled(self) -> frozenset[Triple]:
        return self._initial

    @property
    def pending(self) -> frozenset[Triple]:
        """Pairs a 202 promised and the clock has not yet reached."""
        with self._lock:
            return frozenset(self.pending_list())

    def pending_list(self) -> list[Triple]:
        return [t for _, triples in self._pending for t in triples]

    def truth(self, summary: bool = False) -> dict:
        """Everything a test needs to judge a run from the server's side, as JSON-ready data.

        ``summary`` gives counts only: the full lists of a million-pair rehearsal are large.
        """
        self.apply_due()
        with self._lock:
            if summary:
                statuses = Counter(str(c.http_status) for c in self._calls)
                return {
                    "calls": len(self._calls), "calls_by_status": dict(sorted(statuses.items())),
                    "named_pairs": len(self._named), "removed": len(self._removed),
                    "enrolled": len(self.world.enrollments), "pending": len(self.pending_list()),
                    "refresh_count": self.refresh_count, "tokens_issued": self.tokens_issued,
                    "max_concurrency_seen": self.max_concurrency_seen,
                    "fault_profile": self.profile.name, "seed": self.config.seed,
                }
            return {
                "calls": [asdict(c) for c in self._calls],
                "named_pairs": sorted(list(t) for t in self._named),
                "removed": sorted(list(t) for t in self._removed),
                "enrolled": sorted(list(t) for t in self.world.enrollments),
                "pending": sorted(list(t) for t in self.pending_list()),
                "refresh_count": self.refresh_count,
                "tokens_issued": self.tokens_issued,
                "max_concurrency_seen": self.max_concurrency_seen,
                "fault_profile": self.profile.name,
                "seed": self.config.seed,
            }


def _tightest(configured, profile):
    if configured is None:
        return profile
    return configured if profile is None else min(configured, profile)


def _same(given: str, expected: str) -> bool:
    return hmac.compare_digest(given.encode(), expected.encode())
