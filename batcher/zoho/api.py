"""The un-enrol call: build the request, and map every HTTP answer to exactly one class.

``classify`` is the single place that reads Zoho answers, so the executor only ever decides on
plain data: ``Answered`` (every pair's outcome, in groups of pairs that share one result),
``Rejected`` (these indices are bad, re-send the rest), ``Unlocated`` (split to find the culprit),
``Transient`` (retry), ``TokenInvalid`` (refresh), ``Fatal`` (abort, resumable).

Evidence rules (DESIGN.md "Behaviour on answers", invariant 8): an entry speaks for a record (or,
in the per-cadence shape, a cadence) only when its ``details.id`` names it, or by position when no
entry carries an id and there are exactly as many entries as ids; a ``json_path`` locates only
entries that are not successes. Entries that speak for nothing of the call are ignored and counted
(:attr:`Answered.ignored_entries`). An entry that is neither a success nor an error, or says both,
is ``UNPARSEABLE_ANSWER`` (retryable); an id with no entry is ``MISSING_IN_ANSWER`` (retryable).
A pair is ``unenrolled`` only on a success entry for its record that lists its cadence (or a
success entry for its cadence in the per-cadence shape).
"""

from __future__ import annotations

import asyncio
import json
import re
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, replace
from typing import Any

import httpx
import orjson

from batcher.errors import AbortError, AuthError, PermissionDenied, TransientError
from batcher.models import (
    MAX_CADENCES_PER_CALL,
    MAX_RECORDS_PER_CALL,
    OutcomeGroup,
    PairOutcome,
    Status,
)
from batcher.retry import parse_retry_after

FATAL_CODES = frozenset({"OAUTH_SCOPE_MISMATCH", "NO_PERMISSION", "AUTHENTICATION_FAILURE"})
#: answers that say the URL is wrong — an API domain of another data centre, a host that is no
#: Zoho API, a retired API version — whatever the call: every call would get the same, so the
#: run stops (exit 3, resumable once the domain is right) rather than fail its rows one by one
WRONG_URL_CODES = frozenset({"INVALID_URL_PATTERN"})
#: and the statuses of a server with no such endpoint: 501 is a plain web server's answer to a
#: POST (no proxy outage says it), as lasting as a 405
_WRONG_URL_STATUSES = frozenset({404, 405, 410, 501})
#: calls in a row answered, under the same status Zoho answers with, by something that cannot be
#: Zoho's API (an HTML page, a body without Zoho's JSON shape): the domain is wrong, and the run
#: stops as for a 404. One or two in a row are retried: a proxy's odd page now and then is not
#: the domain's fault (DESIGN.md §1: proxy pages are retried)
FOREIGN_STREAK = 3
TRANSIENT_CODES = frozenset({"INTERNAL_SERVER_ERROR", "INTERNAL_ERROR", "TOO_MANY_REQUESTS"})
LOCATABLE_CODES = frozenset({"INVALID_DATA", "NOT_ALLOWED"})
#: codes that can only concern the whole request, never one record
WHOLE_REQUEST_CODES = FATAL_CODES | TRANSIENT_CODES | frozenset({
    "INVALID_TOKEN", "MANDATORY_NOT_FOUND", "LIMIT_EXCEEDED", "INVALID_MODULE",
    "INVALID_URL_PATTERN",
})
#: a LIMIT_EXCEEDED "due to" one of these is the call's own (more ids than a call takes, which
#: batcher never sends): its pairs fail; any other limit is the org's, and stops the job
_CALL_ARRAYS = frozenset({"ids", "cadences_ids"})
_PATH = re.compile(r"^\$\.(ids|cadences_ids)(?:\[(\d+)\])?$")
_DUE_SPLIT = re.compile(r"[\s,;&/|+]+")  # names joined in one limit_due_to text
_MODULE = re.compile(r"^[A-Za-z][A-Za-z0-9_]*$")
_MAX_MESSAGE = 300
_UNENROLLED, _NOT_ENROLLED = Status.UNENROLLED, Status.NOT_ENROLLED
_SCHEDULED, _FAILED = Status.SCHEDULED, Status.FAILED
_NOT_LISTED = "the API did not list this cadence as removed (record was not in it)"
_MISSING = "the answer had no entry for this pair"
_UNPARSEABLE = "the answer's entry for this pair has no success or error status or code"
_SUCCESS_CODES = frozenset({"SUCCESS", "SCHEDULED"})
#: the HTTP statuses Zoho answers an un-enrol call with, entry by entry (DESIGN: 200, 207 mixed,
#: 202 scheduled, 400 an error entry per record); a proxy's 404 or a 201 carrying a success body
#: is not Zoho's answer
_ENTRY_STATUSES = frozenset({200, 202, 207, 400})
#: an entry's verdict (see :func:`_verdict`); ``None`` is neither
_OK, _ERROR = "success", "error"
#: answer bodies larger than this are not read (a Zoho answer for 100 records is a few dozen KB)
MAX_ANSWER_BYTES = 4 * 1024 * 1024
#: an answer's body arrives within this many read timeouts, or the call timed out
BODY_TIMEOUTS = 2
_PLAIN_DETAILS = {"cadences": None, "id": None}.keys()
#: headers of an un-enrol call whose body is already encoded (see :func:`encode_body`)
JSON_HEADERS = {"Content-Type": "application/json"}


@dataclass(frozen=True, slots=True)
class Answered:
    """The final word on every pair of the call, each pair in exactly one group.

    Groups, not one object per pair: the usual answer is one group, and the journal stores a
    group with one statement (:meth:`batcher.journal.Journal.record_groups`).
    """

    groups: tuple[OutcomeGroup, ...]
    #: answer entries that decided no pair: non-objects, entries naming a record (or cadence) not
    #: in the call, repeats for an id already matched, entries that could not be placed
    ignored_entries: int = 0

    @property
    def pairs(self) -> int:
        return sum(g.size for g in self.groups)

    @property
    def outcomes(self) -> tuple[PairOutcome, ...]:
        """One outcome per pair, group after group."""
        return tuple(o for g in self.groups for o in g.outcomes())


@dataclass(frozen=True, slots=True)
class Rejected:
    bad_record_idx: frozenset[int]
    bad_cadence_idx: frozenset[int]
    code: str
    message: str
    http_status: int


@dataclass(frozen=True, slots=True)
class Unlocated:
    code: str
    message: str
    http_status: int


@dataclass(frozen=True, slots=True)
class Transient:
    code: str
    message: str
    http_status: int
    retry_after: float | None = None
    throttled: bool = False
    #: the body cannot be Zoho's (HTML, no JSON of Zoho's shape) under a status below 500 that
    #: is no throttle or timeout: a host that is no Zoho API answered (see :class:`ForeignStreak`)
    foreign: bool = False

    def to_error(self) -> TransientError:
        return TransientError(f"{self.code}: {self.message} (HTTP {self.http_status})",
                              code=self.code, http_status=self.http_status,
                              retry_after=self.retry_after, throttled=self.throttled)


@dataclass(frozen=True, slots=True)
class TokenInvalid:
    http_status: int = 401

    def to_error(self) -> AuthError:
        return AuthError("Zoho rejected the access token (INVALID_TOKEN): it expired or was "
                         "revoked; set ZOHO_CLIENT_ID, ZOHO_CLIENT_SECRET and ZOHO_REFRESH_TOKEN "
                         "so batcher can refresh it, then re-run the same command to resume")


@dataclass(frozen=True, slots=True)
class Fatal:
    code: str
    message: str
    http_status: int
    #: the answer says the URL called is wrong (:data:`WRONG_URL_CODES`, a 404, a redirect)
    wrong_url: bool = False
    #: what answered was no Zoho API at all (:class:`ForeignStreak`): maybe not the domain's fault
    foreign: bool = False

    def to_error(self, module: str | None = None, where: str | None = None) -> AbortError:
        """An abort whose message says what the user must fix before re-running; ``where``:
        the scheme and host the call went to."""
        mod = module or "{module}"
        resume = "then re-run the same command to resume"
        if self.wrong_url:
            at = f" at {where}" if where else ""
            said = self.message if self.code.startswith("HTTP_") else \
                f"{self.code} (HTTP {self.http_status}: {self.message})"
            return AbortError(
                f"the API{at} answered {said} — the URL is wrong, and every call would get "
                f"the same: check that ZOHO_DC / "
                f"--dc / ZOHO_API_DOMAIN / --api-domain name the data centre of the account "
                f"(https://www.zohoapis.<its domain>){_FOREIGN_HINT if self.foreign else ''}; "
                f"nothing more is sent and no row is failed for it, {resume}")
        if self.code == "LIMIT_EXCEEDED":
            # a call never exceeds a per-call limit (100 records, 5 cadences): this is the
            # org's, most often its API credits for the day; every further call would be refused
            return AbortError(
                f"Zoho refused the call: a limit of the org is reached (LIMIT_EXCEEDED: "
                f"{self.message}); nothing more is "
                "sent and no row is failed for it — API credits renew over a rolling 24 hours: "
                f"re-run the same command later to resume")
        if self.code == "OAUTH_SCOPE_MISMATCH":
            return PermissionDenied(
                f"the Zoho token lacks the scope to un-enrol records (OAUTH_SCOPE_MISMATCH): "
                f"create a new refresh token with scope ZohoCRM.modules.CREATE (or "
                f"ZohoCRM.modules.{mod}.CREATE, or ZohoCRM.modules.ALL) and set "
                f"ZOHO_REFRESH_TOKEN; {resume}")
        if self.code == "NO_PERMISSION":
            return PermissionDenied(
                f"the Zoho user behind the token may not un-enrol {module or 'these'} records "
                f"from cadences (NO_PERMISSION: {self.message}): ask a Zoho CRM administrator "
                f"to grant the profile access to cadences and edit rights on the module; {resume}")
        if self.code == "AUTHENTICATION_FAILURE":
            return AuthError(
                f"Zoho could not authenticate the request (AUTHENTICATION_FAILURE: "
                f"{self.message}): check that ZOHO_DC / --api-domain match the data centre of the "
                f"account and that the token belongs to this org; {resume}")
        cls = PermissionDenied if self.http_status == 403 else AuthError
        return cls(f"Zoho refused access ({self.code}, HTTP {self.http_status}: {self.message}); "
                   f"check the credentials and their scopes; {resume}")


Answer = Answered | Rejected | Unlocated | Transient | TokenInvalid | Fatal

#: pages that are no API's answer, call after call, come as often from the network in between
_FOREIGN_HINT = (" — or a proxy, captive portal or web filter on this network answers in Zoho's "
                 "place: open the API domain in a browser from this machine, or ask the network's "
                 "administrators to let it through")


def redacted(answer: Answer, redact: Callable[[str], str]) -> Answer:
    """The answer with every server-supplied text (codes, messages) redacted of secrets."""
    if isinstance(answer, Answered):
        def clean(group: OutcomeGroup) -> OutcomeGroup:
            code, message = redact(group.code), redact(group.message)
            if (code, message) == (group.code, group.message):
                return group
            return replace(group, code=code, message=message)

        groups = tuple(map(clean, answer.groups))
        return answer if groups == answer.groups else replace(answer, groups=groups)
    if isinstance(answer, Rejected | Unlocated | Transient | Fatal):
        return replace(answer, code=redact(answer.code), message=redact(answer.message))
    return answer


class ForeignStreak:
    """Counts the answers that cannot be Zoho's (:attr:`Transient.foreign`) arriving in a row
    under one HTTP status, across every call of a job: at :data:`FOREIGN_STREAK` the domain is
    wrong (a host that is no Zoho API, a web filter answering in its place), and every call would
    get the same. Any answer in Zoho's words breaks the streak; a 5xx, a 429 or a dropped
    connection says nothing of the domain and leaves it as it is."""

    def __init__(self, limit: int = FOREIGN_STREAK) -> None:
        self._limit = limit
        self._status: int | None = None
        self._count = 0
        self._last: Transient | None = None  # the streak's latest answer
        self._latest: Answer | None = None  # the latest answer judged

    def judge(self, answer: Answer) -> Answer:
        """``answer``, or a wrong-URL :class:`Fatal` when it completes the streak."""
        if not isinstance(answer, Transient):
            self.reset()
            return answer
        self._latest = answer
        if not answer.foreign:
            return answer
        same = answer.http_status == self._status
        self._status, self._last = answer.http_status, answer
        self._count = self._count + 1 if same else 1
        return self.fatal() if self._count >= self._limit else answer

    def reset(self) -> None:
        self._status, self._count, self._last, self._latest = None, 0, None, None

    def fatal(self) -> Fatal | None:
        """The streak so far as a wrong-URL :class:`Fatal`, or None unless the latest answer
        was foreign: also what a caller out of attempts says, the domain the likely cause."""
        last = self._last
        if last is None or self._latest is not last:
            return None
        calls = f" on {self._count} calls in a row" if self._count > 1 else ""
        said = last.message if last.message.startswith("HTTP ") else \
            f"HTTP {last.http_status} ({last.message})"
        return Fatal(f"HTTP_{last.http_status}",
                     f"{said}{calls}, which is no answer of Zoho's API",
                     last.http_status, wrong_url=True, foreign=True)


def build_request(api_domain: str, module: str, record_ids: Sequence[str],
                  cadence_ids: Sequence[str]) -> tuple[str, dict[str, list[str]]]:
    """URL and JSON body of one un-enrol call; refuses anything Zoho would refuse on size."""
    if not _MODULE.match(module or ""):
        raise ValueError(f"invalid module API name {module!r}")
    if not 1 <= len(record_ids) <= MAX_RECORDS_PER_CALL:
        raise ValueError(f"a call takes 1..{MAX_RECORDS_PER_CALL} records, got {len(record_ids)}")
    if not 1 <= len(cadence_ids) <= MAX_CADENCES_PER_CALL:
        raise ValueError(
            f"a call takes 1..{MAX_CADENCES_PER_CALL} cadences, got {len(cadence_ids)}")
    for value in (*record_ids, *cadence_ids):
        if not isinstance(value, str):
            raise ValueError(f"ids must be strings, got {type(value).__name__}")
    url = f"{api_domain.rstrip('/')}/crm/v7/{module}/actions/unenrol_from_cadences"
    return url, {"cadences_ids": list(cadence_ids), "ids": list(record_ids)}


def encode_body(body: Mapping[str, Any]) -> bytes:
    """The request body as JSON bytes, sent with :data:`JSON_HEADERS` (ids stay strings)."""
    return orjson.dumps(body)


async def read_answer(response: httpx.Response, limit: int = MAX_ANSWER_BYTES) -> bytes | None:
    """The (decoded) body of a streamed response, or None when it is larger than ``limit``.

    Stops reading, and closes the response, as soon as more than ``limit`` bytes arrived or the
    ``Content-Length`` header announces more: an answer that large is not a Zoho answer, and
    reading it would only cost memory. Transport errors propagate (the response closed); so
    does an ``httpx.ReadTimeout`` when the body as a whole takes longer than
    :data:`BODY_TIMEOUTS` times the request's read timeout: that timeout bounds each read
    only, and a body trickling in a byte at a time held a call (and its worker) for minutes.
    """
    try:
        request: httpx.Request | None = response.request
    except RuntimeError:  # a response made without a request (tests): no timeout to go by
        request = None
    timeout = request.extensions.get("timeout", {}).get("read") if request else None
    if timeout is None:
        return await _read_answer(response, limit)
    try:
        async with asyncio.timeout(BODY_TIMEOUTS * timeout):
            return await _read_answer(response, limit)
    except TimeoutError:
        raise httpx.ReadTimeout(f"the answer's body took longer than {BODY_TIMEOUTS * timeout:g} "
                                "s to arrive", request=request) from None


async def _read_answer(response: httpx.Response, limit: int) -> bytes | None:
    announced = response.headers.get("Content-Length")
    if announced is not None:
        try:
            too_large = int(announced) > limit
        except ValueError:
            too_large = False
        if too_large:
            await response.aclose()
            return None
    buffer = bytearray()
    chunks = response.aiter_bytes()
    try:
        async for chunk in chunks:
            buffer += chunk
            if len(buffer) > limit:
                await chunks.aclose()
                await response.aclose()
                return None
    except BaseException:
        await chunks.aclose()
        await response.aclose()
        raise
    return bytes(buffer)


async def send_unenrol(client: httpx.AsyncClient, api_domain: str, module: str,
                       record_ids: Sequence[str], cadence_ids: Sequence[str]) -> Answer:
    """One call, classified. Transport errors propagate for the caller's retry loop."""
    url, body = build_request(api_domain, module, record_ids, cadence_ids)
    request = client.build_request("POST", url, content=encode_body(body), headers=JSON_HEADERS)
    response = await client.send(request, stream=True)
    try:
        content = await read_answer(response)
    finally:
        await response.aclose()
    return classify(record_ids, cadence_ids, response.status_code, response.headers, content)


def error_code(body: bytes) -> str | None:
    """The code of a whole-request answer (top level or single ``data`` entry), if any."""
    payload = _parse_json(body)
    if not isinstance(payload, dict):
        return None
    data = payload.get("data")
    entry = data[0] if isinstance(data, list) and len(data) == 1 else payload
    code = entry.get("code") if isinstance(entry, dict) else None
    return str(code).upper() if code else None


def whole_request_said(body: bytes | None) -> str | None:
    """``CODE: message`` of a Zoho-shaped whole-request answer (top level or the single entry
    of ``data[]``), for paths that read no per-record entries; None when it has no code."""
    payload = _parse_json(body or b"")
    if not isinstance(payload, dict):
        return None
    data = payload.get("data")
    entry = data[0] if isinstance(data, list) and len(data) == 1 else payload
    if not isinstance(entry, dict) or not _code(entry):
        return None
    message = _message(entry)
    return f"{_code(entry)}: {message}" if message else _code(entry)


def classify(record_ids: Sequence[str], cadence_ids: Sequence[str], status_code: int,
             headers: Mapping[str, str], body: bytes | None, now: float | None = None) -> Answer:
    """The one reading of a Zoho answer. ``body=None`` means it was too large to read
    (:func:`read_answer`): nothing is known about any pair, so the call is retried."""
    if body is None:
        return Transient("ANSWER_TOO_LARGE",
                         f"HTTP {status_code} with a body over the size limit, not read",
                         status_code, parse_retry_after(headers, now),
                         throttled=status_code == 429)
    payload = _parse_json(body)
    if status_code == 429 or status_code >= 500 or not isinstance(payload, dict):
        return _without_answer(record_ids, cadence_ids, status_code, headers, body, payload, now,
                               foreign=not isinstance(payload, dict))
    whole = _whole_request_entry(payload, status_code, len(record_ids))
    if whole is not None:
        return _whole(whole, record_ids, cadence_ids, status_code, headers, now)
    if status_code not in _ENTRY_STATUSES:  # entries under another status are no evidence
        return _without_answer(record_ids, cadence_ids, status_code, headers, body, None, now)
    if isinstance(payload.get("data"), list):
        return _per_record(payload["data"], record_ids, cadence_ids, status_code)
    if isinstance(payload.get("cadences"), list):
        return _per_cadence(payload["cadences"], record_ids, cadence_ids, status_code)
    # JSON, but none of Zoho's shapes (no code, no data[], no cadences[]): another server's
    return _without_answer(record_ids, cadence_ids, status_code, headers, body, payload, now,
                           foreign=True)


def _parse_json(body: bytes) -> Any:
    if not body:
        return None
    try:
        return orjson.loads(body)
    except orjson.JSONDecodeError:
        pass  # also what orjson refuses and json reads: ids beyond 64 bits, NaN, UTF-16
    try:
        return json.loads(body) if body.strip() else None
    except (ValueError, UnicodeDecodeError):
        return None


def _code(entry: Mapping[str, Any], default: str = "") -> str:
    code = entry.get("code")
    return str(code).upper() if code else default


def _details(entry: Mapping[str, Any]) -> Mapping[str, Any]:
    details = entry.get("details")
    return details if isinstance(details, dict) else {}


def _verdict(entry: Mapping[str, Any]) -> str | None:
    """``_OK`` (status "success" or code SUCCESS / SCHEDULED), ``_ERROR`` (status "error" or any
    other code), or None: neither, or both at once (status and code disagree)."""
    status = entry.get("status")
    status = str(status).lower() if status else ""
    code = _code(entry)
    if status == "success":
        return _OK if not code or code in _SUCCESS_CODES else None
    if status == "error":
        return _ERROR if code not in _SUCCESS_CODES else None
    if code:
        return _OK if code in _SUCCESS_CODES else _ERROR
    return None


def _is_error(entry: Mapping[str, Any]) -> bool:
    return _verdict(entry) == _ERROR


def _unparseable(entry: Mapping[str, Any], details: Mapping[str, Any] | None = None) -> str:
    """Why an entry is neither a success nor an error, with what it said."""
    said = [f"{k}={entry[k]}" for k in ("status", "code") if entry.get(k)]
    text = f"{_UNPARSEABLE} ({', '.join(said)})" if said else _UNPARSEABLE
    message = _message(entry, details)
    return (f"{text}: {message}" if message else text)[:_MAX_MESSAGE]


def _message(entry: Mapping[str, Any], details: Mapping[str, Any] | None = None) -> str:
    """The API's message plus the scalar details that say which element or limit it means."""
    text = entry.get("message")
    text = str(text).strip() if text else ""
    extra = [f"{k}={v}" for k, v in (_details(entry) if details is None else details).items()
             if k != "id" and isinstance(v, str | int | float) and not isinstance(v, bool)]
    if extra:
        text = f"{text} ({', '.join(extra)})" if text else ", ".join(extra)
    return text[:_MAX_MESSAGE]


def _whole_request_entry(payload: Mapping[str, Any], status: int,
                         n_records: int) -> Mapping[str, Any] | None:
    """The entry that speaks for the whole request, in either of its two forms, else None."""
    if "code" in payload and not isinstance(payload.get("data"), list) \
            and not isinstance(payload.get("cadences"), list):
        return payload
    data = payload.get("data")
    if not isinstance(data, list) or len(data) != 1 or not isinstance(data[0], dict):
        return None
    entry = data[0]
    verdict = _verdict(entry)
    if _code(entry) == "SCHEDULED" and verdict == _OK and "id" not in _details(entry):
        return entry
    # an entry that is no error (a success, or unparseable like ``{}``) is a per-record entry
    if verdict != _ERROR or "id" in _details(entry):
        return None
    if status >= 400 or n_records > 1 or _code(entry) in WHOLE_REQUEST_CODES:
        return entry
    # a path naming a cadence cannot be a verdict on the one record
    path = str(_details(entry).get("json_path") or "")
    return entry if path.startswith("$.cadences_ids") else None


def _whole(entry: Mapping[str, Any], record_ids: Sequence[str], cadence_ids: Sequence[str],
           status: int, headers: Mapping[str, str], now: float | None) -> Answer:
    code = _code(entry, f"HTTP_{status}")
    message = _message(entry)
    if code == "SCHEDULED" and _verdict(entry) == _OK:
        return _all(record_ids, cadence_ids, Status.SCHEDULED, code, message, status, False)
    if code == "INVALID_TOKEN":
        return TokenInvalid(status)
    if code in FATAL_CODES:
        return Fatal(code, message, status)
    if code in WRONG_URL_CODES:
        return Fatal(code, message or "the URL is not one of the API's", status, wrong_url=True)
    if code == "LIMIT_EXCEEDED" and not _due_to_call(_details(entry).get("limit_due_to")):
        return Fatal(code, message, status)
    if code in TRANSIENT_CODES:
        return Transient(code, message, status, parse_retry_after(headers, now),
                         throttled=code == "TOO_MANY_REQUESTS")
    if code in LOCATABLE_CODES:
        located = _locate(_details(entry), record_ids, cadence_ids)
        if located is None:
            return Unlocated(code, message, status)
        return Rejected(located[0], located[1], code, message, status)
    if not _is_error(entry):
        return _without_answer(record_ids, cadence_ids, status, headers, b"", None, now)
    if status in (401, 403):
        return Fatal(code, message, status)
    if status in _WRONG_URL_STATUSES:  # no such endpoint there, whatever the code says
        return Fatal(code, message, status, wrong_url=True)
    return _all(record_ids, cadence_ids, Status.FAILED, code, message, status, False)


def _due_to_call(due: Any) -> bool:
    """Whether a LIMIT_EXCEEDED's ``limit_due_to`` names only the call's own arrays.

    The un-enrol page (v7, "Possible Errors") says the code means more than 5 cadence ids,
    more than 100 record ids, "or both", and points to ``limit_due_to`` without showing it: read
    as one name, names joined in one text (``ids,cadences_ids``, ``ids and cadences_ids``) or
    a list of names, each bare (``ids``) or as a path (``$.ids``). Anything else (a text about
    credits, an object) is the org's limit. Never raises: a list there made ``in frozenset`` a
    TypeError that crashed the classification of the whole answer.
    """
    names = due if isinstance(due, list) else [due]
    if not names or not all(isinstance(n, str) for n in names):
        return False
    words = [w for n in names for w in _DUE_SPLIT.split(n) if w and w.lower() != "and"]
    return bool(words) and all(w.removeprefix("$.") in _CALL_ARRAYS for w in words)


def _locate(details: Mapping[str, Any], record_ids: Sequence[str],
            cadence_ids: Sequence[str]) -> tuple[frozenset[int], frozenset[int]] | None:
    """Which record or cadence index the error names, from json_path, api_name or id."""
    arrays = {"ids": record_ids, "cadences_ids": cadence_ids}
    match = _PATH.match(str(details.get("json_path") or "").strip())
    name = match.group(1) if match else str(details.get("api_name") or "")
    index: int | None = None
    if match and match.group(2) is not None:
        index = int(match.group(2))
    elif name in arrays and len(arrays[name]) == 1:
        index = 0
    elif details.get("id") is not None:
        bad = str(details["id"])
        for candidate, values in arrays.items():
            if bad in values:
                name, index = candidate, list(values).index(bad)
    if name not in arrays or index is None or not 0 <= index < len(arrays[name]):
        return None
    found = frozenset({index})
    return (found, frozenset()) if name == "ids" else (frozenset(), found)


def _all(record_ids: Sequence[str], cadence_ids: Sequence[str], status: Status, code: str,
         message: str, http_status: int, retryable: bool) -> Answered:
    return Answered((OutcomeGroup(tuple(record_ids), tuple(cadence_ids), status, code, message,
                                  http_status, retryable),))


def _without_answer(record_ids: Sequence[str], cadence_ids: Sequence[str], status: int,
                    headers: Mapping[str, str], body: bytes, payload: Any,
                    now: float | None, foreign: bool = False) -> Answer:
    """429, 5xx, and bodies that are not a Zoho answer: nothing known about any pair.
    ``foreign``: the body has none of Zoho's shapes (not JSON, or JSON without them)."""
    data = payload.get("data") if isinstance(payload, dict) else None
    if isinstance(data, list) and len(data) == 1 and isinstance(data[0], dict):
        payload = data[0]
    code = _code(payload) if isinstance(payload, dict) else ""
    message = _message(payload) if isinstance(payload, dict) else ""
    if not message:
        text = body.lstrip()[:200].lower()
        kind = ("empty body" if not text else "an HTML page" if text.startswith(b"<")
                else "a body that is not a Zoho answer")
        message = f"HTTP {status} with {kind}"
    retry_after = parse_retry_after(headers, now)
    if status == 429 or code == "TOO_MANY_REQUESTS":
        return Transient(code or "TOO_MANY_REQUESTS", message, status, retry_after, True)
    if 300 <= status < 400:
        # a redirect is never followed (the token goes to the configured domain only), and
        # every call meets it again: said as what it is, not as an unreadable answer
        return Fatal(code or f"HTTP_{status}", _redirect_message(status, headers), status,
                     wrong_url=True)
    if status in _WRONG_URL_STATUSES:  # no such endpoint there (a proxy's page, or no Zoho)
        return Fatal(code or f"HTTP_{status}", message, status, wrong_url=True)
    if foreign and status < 500 and status not in (408, 425):
        # Zoho answers these statuses in JSON of its shape: another server answered. Retried,
        # so a one-off page fails nothing; the same again, call after call, stops the run
        return Transient(code or ("UNPARSEABLE_ANSWER" if status < 400 else f"HTTP_{status}"),
                         message, status, retry_after, False, foreign=True)
    if 400 <= status < 500 and status not in (408, 425):
        # a proxy or wrong URL answered; not worth hammering now, but a re-run may succeed
        return _all(record_ids, cadence_ids, Status.FAILED, code or f"HTTP_{status}", message,
                    status, True)
    fallback = f"HTTP_{status}" if status >= 400 else "UNPARSEABLE_ANSWER"
    return Transient(code or fallback, message, status, retry_after, False)


def origin(url: httpx.URL | str) -> str:
    """``scheme://host[:port]`` of ``url``: where a call went, without path, query or user."""
    url = httpx.URL(url)
    return f"{url.scheme}://{url.netloc.decode('ascii')}"


def _redirect_message(status: int, headers: Mapping[str, str]) -> str:
    """What a 3xx said, naming only the scheme and host it points to (never its path or query)."""
    location = next((str(v) for k, v in headers.items() if str(k).lower() == "location"), "")
    try:
        target = httpx.URL(location.strip())
        where = f" to {target.scheme}://{target.host}" if target.host else ""
    except (httpx.InvalidURL, TypeError):
        where = ""
    return (f"HTTP {status} redirect{where}, not followed: the token is sent to the configured "
            "API domain only")


def _per_record(entries: list[Any], record_ids: Sequence[str], cadence_ids: Sequence[str],
                status: int) -> Answered:
    # the hot path of every job (one entry per record, naming it by id): work is done once per
    # entry, never per pair; records with the same result over the same cadences share one group
    by_record, ignored = _match_entries(entries, record_ids, "ids")
    every = tuple(cadence_ids)
    wanted = frozenset(every)
    groups: dict[tuple, list[str]] = {}
    covering = None  # the last list of cadences found to name every cadence of the call
    for i, record_id in enumerate(record_ids):
        entry = by_record.get(i)
        if entry is None or entry is _CONTRADICTED:
            groups.setdefault((_FAILED, "MISSING_IN_ANSWER", _MISSING, True, every)
                              if entry is None else
                              (_FAILED, "UNPARSEABLE_ANSWER", _CONTRADICTING, True, every),
                              []).append(record_id)
            continue
        details = _details(entry)
        cadences = details.get("cadences")
        if (type(cadences) is list and details.keys() == _PLAIN_DETAILS
                and entry.get("status") == "success" and entry.get("code") == "SUCCESS"
                and type(message := entry.get("message")) is str
                and (cadences == covering  # most entries list the same: compared in C
                     or _lists_every(wanted, cadences))):
            covering = cadences
            # the usual entry, in short: what the general path below would make of it. It was
            # matched by its id (an entry carrying an id is matched by nothing else), or by
            # position where position is allowed (see _match_entries)
            groups.setdefault((_UNENROLLED, "SUCCESS", message.strip()[:_MAX_MESSAGE], False,
                               every), []).append(record_id)
            continue
        verdict = _verdict(entry)
        code = _code(entry)
        if verdict is None:
            key = (_FAILED, "UNPARSEABLE_ANSWER", _unparseable(entry, details), True, every)
        elif verdict == _ERROR:
            key = (_FAILED, code or "UNKNOWN_ERROR", _message(entry, details),
                   code in TRANSIENT_CODES, every)
        elif code == "SCHEDULED":
            key = (_SCHEDULED, code, _message(entry, details), False, every)
        else:
            # a success names the cadences it removed; a cadence it does not list is no claim
            message = _message(entry, details)
            removed = _removed_cadences(details)
            code = code or "SUCCESS"
            if wanted <= removed:
                key = (_UNENROLLED, code, message, False, every)
            else:
                gone = tuple(c for c in every if c in removed)
                if gone:
                    groups.setdefault((_UNENROLLED, code, message, False, gone),
                                      []).append(record_id)
                key = (_NOT_ENROLLED, code, _NOT_LISTED, False,
                       tuple(c for c in every if c not in removed))
        groups.setdefault(key, []).append(record_id)
    return _grouped(groups, status, by_record=True, ignored=ignored)


def _per_cadence(entries: list[Any], record_ids: Sequence[str], cadence_ids: Sequence[str],
                 status: int) -> Answered:
    """The per-cadence shape: a success entry for a cadence covers every record of the call."""
    by_cadence, ignored = _match_entries(entries, cadence_ids, "cadences_ids")
    everyone = tuple(record_ids)
    groups: dict[tuple, list[str]] = {}
    for j, c in enumerate(cadence_ids):
        entry = by_cadence.get(j)
        verdict = None if entry is None else _verdict(entry)
        if entry is None:
            key = (_FAILED, "MISSING_IN_ANSWER", _MISSING, True, everyone)
        elif entry is _CONTRADICTED:
            key = (_FAILED, "UNPARSEABLE_ANSWER", _CONTRADICTING, True, everyone)
        elif verdict is None:
            key = (_FAILED, "UNPARSEABLE_ANSWER", _unparseable(entry), True, everyone)
        elif verdict == _ERROR:
            code = _code(entry, "UNKNOWN_ERROR")
            key = (_FAILED, code, _message(entry), code in TRANSIENT_CODES, everyone)
        else:
            status_ = _SCHEDULED if _code(entry) == "SCHEDULED" else _UNENROLLED
            key = (status_, _code(entry, "SUCCESS"), _message(entry), False, everyone)
        groups.setdefault(key, []).append(c)
    return _grouped(groups, status, by_record=False, ignored=ignored)


def _grouped(groups: dict[tuple, list[str]], http_status: int, by_record: bool,
             ignored: int = 0) -> Answered:
    """(status, code, message, retryable, the other ids) → ids, as outcome groups."""
    out = []
    for (status, code, message, retryable, others), ids in groups.items():
        records, cadences = (tuple(ids), others) if by_record else (others, tuple(ids))
        out.append(OutcomeGroup(records, cadences, status, code, message, http_status,
                                retryable))
    return Answered(tuple(out), ignored)


#: the entry of an id that the answer gave two different entries for
_CONTRADICTED: Mapping[str, Any] = {"details": {}}
_CONTRADICTING = "the answer had two different entries for this pair: neither is taken as true"


def _match_entries(entries: list[Any], ids: Sequence[str],
                   array: str) -> tuple[dict[int, Mapping], int]:
    """Entry per index of ``ids``, and how many entries were ignored.

    An entry carrying ``details.id`` is matched by that id only: one that names no id of the call
    is ignored; one that repeats an id already matched adds nothing when it is the same entry,
    and otherwise leaves that id ``_CONTRADICTED`` (two answers for one record: neither is
    evidence). An entry without an id that is not a success
    may be located by its ``json_path`` (``$.ids[i]`` / ``$.cadences_ids[j]``). The rest are
    matched by position, and only when no entry carries an id, there are exactly as many
    entries as ids, and no entry located by its path sits elsewhere than its position (the order
    is then not the call's); otherwise they are ignored. Non-objects are ignored.
    """
    index_of = {value: i for i, value in enumerate(ids)}
    matched: dict[int, Mapping] = {}
    ignored = 0
    unplaced: list[tuple[int, Mapping]] = []
    carries_id = displaced = False
    for position, entry in enumerate(entries):
        if type(entry) is not dict:
            ignored += 1
            continue
        details = entry.get("details")
        if type(details) is not dict:
            details = {}
        given = details.get("id")
        if given is not None:
            carries_id = True
            index = index_of.get(given if type(given) is str else str(given))
        else:
            index = None if _verdict(entry) == _OK else _path_index(details, array, len(ids))
            if index is None:
                unplaced.append((position, entry))
                continue
            displaced = displaced or index != position
        if index is None:
            ignored += 1
        elif index in matched:  # the same id twice: the same entry says nothing more, another
            if matched[index] != entry:  # contradicts it (neither is evidence)
                matched[index] = _CONTRADICTED
        else:
            matched[index] = entry
    if unplaced:
        if carries_id or displaced or len(entries) != len(ids):
            ignored += len(unplaced)
        else:
            for position, entry in unplaced:
                if position in matched:
                    ignored += 1
                else:
                    matched[position] = entry
    return matched, ignored


def _path_index(details: Mapping[str, Any], array: str, size: int) -> int | None:
    """The index a ``json_path`` such as ``$.ids[3]`` names in ``array``, if in range."""
    match = _PATH.match(str(details.get("json_path") or "").strip())
    if match and match.group(1) == array and match.group(2) is not None:
        index = int(match.group(2))
        return index if index < size else None
    return None


def _lists_every(wanted: frozenset[str], cadences: list[Any]) -> bool:
    """Whether the usual entry's ``details.cadences`` names every cadence ``wanted``; False
    when an id there cannot even be compared (a list, an object): the general reading of the
    entry (:func:`_removed_cadences`) then decides, as it does for every odd entry."""
    try:
        return wanted <= {c.get("id") for c in cadences if type(c) is dict}
    except TypeError:  # an unhashable id
        return False


def _removed_cadences(details: Mapping[str, Any]) -> frozenset[str] | set[str]:
    cadences = details.get("cadences")
    if not isinstance(cadences, list):
        return frozenset()
    removed = set()
    for c in cadences:
        if isinstance(c, dict):
            cid = c.get("id")
            if cid:
                removed.add(cid if type(cid) is str else str(cid))
    return removed
