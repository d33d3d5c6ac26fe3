"""OAuth for every request: one shared token, one refresh in flight, never a refresh storm.

Zoho issues at most 10 access tokens per refresh token per 10 minutes, so concurrent workers must
share a refresh: the first one to need it refreshes under a lock, the others wait and reuse the
token it got. A sliding window refuses an 11th refresh inside 10 minutes with an ``AuthError``
rather than getting the refresh token throttled. Token endpoint failures come as HTTP 200 with
``{"error": ...}``; they become messages that say what to fix and never carry a secret.

With a :class:`TokenCache`, a command first reuses the token an earlier command got, and the
window starts with the refreshes earlier commands made, so a lock-out names when it ends. A lent
token may be stale (revoked, or its times off after the wall clock was stepped): it is tried by
one request at a time until an answer accepts it, so it costs at most one refused call before
the one shared refresh — not one per request in flight.

Expiry and the window are timed on a clock that goes on while the machine sleeps (a laptop
suspended, a VM paused): ``time.monotonic`` stops then, and a token held across a night of sleep
would still be taken for fresh.
"""

from __future__ import annotations

import asyncio
import math
import time
from collections import deque
from collections.abc import AsyncGenerator, Callable, Generator
from datetime import UTC, datetime
from typing import Any

import httpx

from batcher.config import Credentials, Endpoints, accept_api_domain
from batcher.errors import AuthError, BatcherError, TransientError
from batcher.redact import Redactor
from batcher.retry import NETWORK_ERRORS, parse_retry_after
from batcher.zoho.api import error_code, whole_request_said
from batcher.zoho.tokencache import TOKEN_SHAPE, TokenCache, cache_key

_RESUME = "then re-run the same command to resume"


def awake_or_asleep() -> float:
    """Seconds on a clock that is never set (as ``time.monotonic``) and counts time asleep:
    ``CLOCK_BOOTTIME`` where there is one (Linux), else ``time.monotonic``."""
    return time.clock_gettime(_BOOTTIME) if _BOOTTIME is not None else time.monotonic()


_BOOTTIME = getattr(time, "CLOCK_BOOTTIME", None)
#: answers Zoho gives without judging the token (the URL, the limits), or a proxy's: they say
#: nothing of a token being tried
_SAY_NOTHING_OF_TOKEN = frozenset({404, 429})


class ZohoAuth(httpx.Auth):
    """``Authorization: Zoho-oauthtoken …`` on every request, refreshed when needed.

    ``api_domain`` is the domain to call: the configured one, or the one Zoho returned with the
    last token when :func:`accept_api_domain` accepts it. Requests addressed to the configured
    domain are re-routed to it, so callers that built URLs early still reach the right one.
    ``refreshes`` counts token refreshes for the summary. ``client`` (or ``transport``) reaches
    the accounts server; it must be a client of its own, not the one this auth signs for.
    ``redactor`` learns every access token obtained, so no later text can carry one.
    ``cache`` (refresh flow only) lends the first token and keeps every refreshed one for the
    next command; a cached token Zoho rejects is dropped from it and refreshed once.
    """

    def __init__(self, credentials: Credentials, endpoints: Endpoints, *,
                 client: httpx.AsyncClient | None = None,
                 transport: httpx.AsyncBaseTransport | None = None,
                 clock: Callable[[], float] = awake_or_asleep,
                 refresh_ahead: float = 60.0, max_refreshes: int = 10,
                 window: float = 600.0, redactor: Redactor | None = None,
                 cache: TokenCache | None = None) -> None:
        if not credentials.can_refresh and not credentials.access_token:
            raise AuthError("no Zoho credentials: set ZOHO_CLIENT_ID, ZOHO_CLIENT_SECRET and "
                            "ZOHO_REFRESH_TOKEN, or ZOHO_ACCESS_TOKEN")
        self._credentials = credentials
        self._redact = redactor or Redactor(credentials.secrets())
        for secret in credentials.secrets():
            self._redact.add(secret)
        self._configured_domain = endpoints.api_domain
        self._token_url = f"{endpoints.accounts_url.rstrip('/')}/oauth/v2/token"
        self._owns_client = client is None
        self._client = client or httpx.AsyncClient(transport=transport, timeout=30.0)
        self._clock = clock
        self._refresh_ahead = refresh_ahead
        self._ahead = refresh_ahead
        self._max_refreshes = max_refreshes
        self._window = window
        self._cache = cache if credentials.can_refresh else None
        self._key = cache_key(endpoints.accounts_url, credentials.client_id or "",
                              credentials.refresh_token or "") if self._cache else ""
        self._recent: deque[float] = deque(self._cached_refreshes())
        self._lock = asyncio.Lock()
        self._token = credentials.access_token
        self._expires_at: float | None = None  # unknown for a token given by the user
        self._generation = 0
        #: the generation of a token the cache lent that no answer has accepted yet; requests
        #: try it one at a time (``_trying``)
        self._unproven: int | None = None
        self._trying = asyncio.Lock()
        self._failure: AuthError | None = None
        self.api_domain = endpoints.api_domain
        self.refreshes = 0

    def __repr__(self) -> str:
        return f"ZohoAuth(api_domain={self.api_domain!r}, refreshes={self.refreshes})"

    async def aclose(self) -> None:
        if self._owns_client:
            await self._client.aclose()

    async def ensure_token(self) -> None:
        """Get a token now (and so the final ``api_domain``) before building any request."""
        await self._valid_token()

    def sync_auth_flow(self, request: httpx.Request) -> Generator[httpx.Request, httpx.Response,
                                                                   None]:
        raise RuntimeError("ZohoAuth needs an httpx.AsyncClient")

    async def async_auth_flow(self, request: httpx.Request) -> AsyncGenerator[httpx.Request,
                                                                               httpx.Response]:
        try:
            token, generation, trying = await self._token_to_send()
        except AuthError as exc:  # a refresh refused or locked out: this request never left
            exc.unsent = True
            raise
        try:
            self._prepare(request, token)
            response = yield request
            invalid = await self._token_invalid(response)
            if trying and not invalid and response.status_code < 500 \
                    and response.status_code not in _SAY_NOTHING_OF_TOKEN:
                self._unproven = None  # accepted: every request may use it now
            if invalid and self._credentials.can_refresh:
                try:  # before the requests waiting for the lent token's verdict go on
                    token, _ = await self._refresh(stale_generation=generation, rejected=True)
                except BatcherError as exc:  # refused, or the accounts server down: either
                    raise _refused(exc, 1) from None  # way the call was answered INVALID_TOKEN
        finally:
            if trying:
                self._trying.release()
        if not invalid:
            return
        if not self._credentials.can_refresh:
            raise _refused(AuthError(
                "Zoho rejected the access token (INVALID_TOKEN): it expired or was revoked and "
                "cannot be refreshed; set ZOHO_REFRESH_TOKEN, ZOHO_CLIENT_ID and "
                f"ZOHO_CLIENT_SECRET (or a new ZOHO_ACCESS_TOKEN), {_RESUME}"), 1)
        self._prepare(request, token)
        response = yield request
        if await self._token_invalid(response):
            raise _refused(AuthError(
                "Zoho rejected a freshly refreshed access token (INVALID_TOKEN): check that "
                f"ZOHO_DC / --api-domain match the data centre of the account; {_RESUME}"), 2)

    async def _token_to_send(self) -> tuple[str, int, bool]:
        """(token, its generation, whether this request is the one trying it). A token the
        cache lent is tried by one request at a time (holding ``_trying``), the others waiting
        for an answer that accepts it — or for the token the refresh its rejection made."""
        token, generation = await self._valid_token()
        while generation == self._unproven:
            await self._trying.acquire()
            if generation == self._unproven:
                return token, generation, True
            self._trying.release()
            token, generation = await self._valid_token()
        return token, generation, False

    @staticmethod
    async def _token_invalid(response: httpx.Response) -> bool:
        if response.status_code != 401:
            return False
        await response.aread()
        return error_code(response.content) == "INVALID_TOKEN"

    def _prepare(self, request: httpx.Request, token: str) -> None:
        request.headers["Authorization"] = f"Zoho-oauthtoken {token}"
        if self.api_domain == self._configured_domain:
            return
        old, new = httpx.URL(self._configured_domain), httpx.URL(self.api_domain)
        url = request.url
        if (url.scheme, url.host, url.port) == (old.scheme, old.host, old.port):
            request.url = url.copy_with(scheme=new.scheme, host=new.host, port=new.port)
            request.headers["Host"] = request.url.netloc.decode("ascii")

    def _fresh(self) -> bool:
        if not self._token:
            return False
        return self._expires_at is None or self._clock() < self._expires_at - self._ahead

    async def _valid_token(self) -> tuple[str, int]:
        if self._fresh() or (self._token and not self._credentials.can_refresh):
            return self._token, self._generation  # type: ignore[return-value]
        return await self._refresh(stale_generation=self._generation)

    async def _refresh(self, stale_generation: int, rejected: bool = False) -> tuple[str, int]:
        """A new token, unless another request got one meanwhile. ``rejected``: Zoho refused the
        current token, so the cache's copy of it goes and a real refresh follows."""
        async with self._lock:
            if self._failure is not None:
                raise self._failure
            if self._generation != stale_generation and self._token:
                return self._token, self._generation  # another request refreshed meanwhile
            if rejected and self._cache:
                self._cache.drop(self._key)
            elif not rejected and (cached := self._adopt_cached()):
                return cached
            self._admit()
            try:
                body = await self._request_token()
            except AuthError as exc:  # the accounts server answered: a refresh spent
                self._spent()
                self._failure = exc
                raise
            # only requests the accounts server answered count against its limit: an outage of
            # it must end as an outage, not as a refresh storm that then locks the job out
            self._spent()
            lifetime = _expires_in(body)
            taken = self._take(str(body["access_token"]), lifetime, body.get("api_domain"))
            self.refreshes += 1
            if self._cache:
                self._cache.put(self._key, taken[0], time.time() + lifetime, self.api_domain)
            return taken

    def _take(self, token: str, lifetime: float, api_domain: str | None) -> tuple[str, int]:
        """Use ``token`` from now on; it lives ``lifetime`` more seconds. → (token, generation)"""
        self._token = token
        self._redact.add(token)
        # refresh a little ahead of expiry, but never so far ahead that a short-lived token
        # is refreshed on every request (that would burn Zoho's 10 refreshes / 10 minutes)
        self._ahead = min(self._refresh_ahead, lifetime / 5)
        self._expires_at = self._clock() + lifetime
        self._generation += 1
        self._unproven = None  # the lent one, if any, is no longer sent
        self.api_domain = accept_api_domain(self._configured_domain, api_domain)
        return token, self._generation

    def _adopt_cached(self) -> tuple[str, int] | None:
        """Take the token an earlier command cached, if still valid and not the one held."""
        cached = self._cache.get(self._key) if self._cache else None
        if cached is None or cached.access_token == self._token:
            return None
        taken = self._take(cached.access_token, cached.expires_at - time.time(),
                           cached.api_domain)
        self._unproven = taken[1]  # stale (revoked, or its times off a stepped clock) maybe
        return taken

    def _cached_refreshes(self) -> list[float]:
        """The refreshes earlier commands noted in the cache, on ``clock``'s time line."""
        if not self._cache:
            return []
        now, wall = self._clock(), time.time()
        return [now - (wall - at) for at in self._cache.refreshes(self._key)]

    def _spent(self) -> None:
        """Count a refresh the accounts server answered, here and for the next commands."""
        self._recent.append(self._clock())
        if self._cache:
            self._cache.note_refresh(self._key, time.time())

    def _admit(self) -> None:
        """Sliding window: refuse rather than exceed Zoho's token issuing limit (the caller
        records the refresh once the accounts server answered it)."""
        now = self._clock()
        while self._recent and now - self._recent[0] >= self._window:
            self._recent.popleft()
        if len(self._recent) >= self._max_refreshes:
            # the refresh that leaves the window first frees the next one
            allowed = self._recent[-self._max_refreshes] + self._window - now
            raise AuthError(
                f"refusing to refresh the access token again: {len(self._recent)} refreshes in "
                f"the last {self._window / 60:g} minutes already (Zoho allows "
                f"{self._max_refreshes}); something keeps invalidating tokens — make sure no "
                f"other job revokes or shares this refresh token; the next refresh is allowed "
                f"at {_utc_in(allowed)}, {_RESUME}")

    async def _request_token(self) -> dict[str, Any]:
        creds = self._credentials
        form = {"grant_type": "refresh_token", "client_id": creds.client_id or "",
                "client_secret": creds.client_secret or "",
                "refresh_token": creds.refresh_token or ""}
        try:
            response = await self._client.post(self._token_url, data=form)
        except NETWORK_ERRORS as exc:
            raise TransientError(f"could not reach the Zoho accounts server {self._token_url} "
                                 f"({type(exc).__name__})", code="TOKEN_ENDPOINT_UNREACHABLE",
                                 unsent=True) from None
        status = response.status_code
        # a Zoho-shaped error ({"code", "message"}, bare or in data[]) is said in Zoho's words
        said = whole_request_said(response.content)
        if status == 429 or status >= 500:
            raise TransientError(self._redact(f"the Zoho accounts server answered HTTP {status}"
                                              + (f" ({said})" if said else "")),
                                 code=f"TOKEN_HTTP_{status}", http_status=status,
                                 retry_after=parse_retry_after(response.headers),
                                 throttled=status == 429, unsent=True)
        try:
            body = response.json()
        except ValueError:
            body = None
        if not isinstance(body, dict):
            raise AuthError(f"the Zoho accounts server {self._token_url} answered HTTP {status} "
                            "without a token; check ZOHO_ACCOUNTS_URL / ZOHO_DC")
        if body.get("error") or not body.get("access_token"):
            # Zoho counts refreshes this job cannot see (other machines): its window ends by
            # then at the latest
            latest = _utc_in(self._window)
            raise AuthError(self._redact(_refusal_message(body, self._token_url, latest, said)))
        token = body["access_token"]
        token = token.strip() if isinstance(token, str) else token
        if not isinstance(token, str) or not TOKEN_SHAPE.fullmatch(token):
            # sent as it is, every call would fail in the HTTP layer, unsent, as if Zoho were
            # down (a line break after it), or carry a stranger's text in the header
            raise AuthError(f"the Zoho accounts server {self._token_url} answered HTTP {status} "
                            "with an access token that cannot be sent (not a text of printable "
                            "ASCII without spaces; it is not printed here): check "
                            f"ZOHO_ACCOUNTS_URL / ZOHO_DC and any proxy on the way; {_RESUME}")
        return {**body, "access_token": token}


def _expires_in(body: dict[str, Any]) -> float:
    """Seconds the token lives; older answers give ``expires_in`` in ms next to ``_sec``.

    A lifetime that is no duration (0, negative, NaN) is taken as Zoho's documented hour: read
    as given, it made every request refresh the token until the 10 refreshes a 10 minutes were
    spent. A token that dies sooner is answered INVALID_TOKEN, which refreshes it once."""
    for key in ("expires_in_sec", "expires_in"):
        try:
            value = float(body[key])
        except (KeyError, TypeError, ValueError):
            continue
        if not 0 < value < math.inf:
            continue
        return value / 1000.0 if value > 86_400 else value
    return 3600.0


def _utc_in(seconds: float) -> str:
    """The UTC wall-clock time ``seconds`` from now, rounded up to the second."""
    moment = datetime.fromtimestamp(math.ceil(time.time() + seconds), UTC)
    return moment.strftime("%Y-%m-%d %H:%M:%S UTC")


def _refusal_message(body: dict[str, Any], token_url: str, latest: str,
                     said: str | None = None) -> str:
    """What to do about the token endpoint's refusal ``body``; ``latest``: when a lock-out of
    too many refreshes has ended at the latest; ``said``: its Zoho code and message, if any."""
    error = str(body.get("error") or said or "no access_token in the answer")[:300]
    description = str(body.get("error_description") or "")[:200]
    if error == "invalid_code":
        return ("Zoho refused the refresh token: invalid_code — create a new refresh token (Zoho "
                "API console, with scopes ZohoCRM.modules.CREATE and "
                "ZohoCRM.settings.cadences.READ) and set ZOHO_REFRESH_TOKEN; it must come from "
                f"the same data centre as {token_url}; {_RESUME}")
    if error == "invalid_client":
        return ("Zoho refused the client: invalid_client — check ZOHO_CLIENT_ID and "
                "ZOHO_CLIENT_SECRET, and that the client was registered in the data centre of "
                f"{token_url} (ZOHO_DC / --dc / --accounts-url); {_RESUME}")
    if "too many" in description.lower() or error.lower() == "access denied":
        return ("Zoho refused to issue another access token (too many token requests for this "
                "refresh token in 10 minutes): make sure no other job uses the same refresh "
                f"token, wait 10 minutes (until {latest}), {_RESUME}")
    detail = f" ({description})" if description else ""
    return f"Zoho refused the token refresh: {error}{detail}; {_RESUME}"


def _refused(exc: BatcherError, calls: int) -> BatcherError:
    """``exc``, raised after ``calls`` sends of the request were answered INVALID_TOKEN: they
    left (each a call), and were refused outright (nothing done)."""
    exc.refused_calls = calls
    if isinstance(exc, TransientError):
        exc.unsent = False  # the token it could not get was for a call that had left
    return exc
