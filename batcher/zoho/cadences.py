"""The org's cadences, and the preflight that spends no call on a pair Zoho would refuse.

A token without the settings scope cannot read cadences; ``fetch_cadences`` then raises
:class:`CadencesUnavailable` (a ``PermissionDenied``), which the caller of a preflight catches to
warn and go on, while ``batcher cadences`` lets it abort with its message.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable, Iterable, Sequence
from dataclasses import dataclass
from typing import Any

import httpx

from batcher.errors import AbortError, PermissionDenied, TransientError
from batcher.retry import NETWORK_ERRORS, Reachability, RetryPolicy, call_with_retries, is_unsent
from batcher.zoho.api import (
    Fatal,
    ForeignStreak,
    TokenInvalid,
    Transient,
    classify,
    origin,
    redacted,
    whole_request_said,
)

MANUAL = "manual_enrollment"
SETTINGS_SCOPE = "ZohoCRM.settings.cadences.READ"
_MAX_PAGES = 1000


@dataclass(frozen=True, slots=True)
class Cadence:
    id: str
    name: str
    module: str
    type: str
    active: bool | None = None
    published: bool | None = None
    status: str | None = None


class CadencesUnavailable(PermissionDenied):
    """The token may not read cadences (scope or permission missing): warn and go on."""


async def fetch_cadences(client: httpx.AsyncClient, api_domain: str, *,
                         policy: RetryPolicy | None = None,
                         sleep: Callable[[float], Awaitable[object]] = asyncio.sleep,
                         on_call: Callable[[], object] = lambda: None,
                         reach: Reachability | None = None,
                         redact: Callable[[str], str] = str,
                         ) -> list[Cadence]:
    """Every cadence of the org, all pages; ``[]`` when Zoho answers 204.

    ``on_call`` is told of every GET that reached a server, retries included: each one costs the
    org a credit. ``reach`` is the job's outage clock: while Zoho does not answer, the GET is
    retried until it runs out (``ZohoUnreachable``, an abort); without one, a clock of
    ``policy.outage_after`` of its own. ``redact`` cleans every server text an error carries
    (the run's :class:`~batcher.redact.Redactor`: it knows the tokens refreshed meanwhile).
    """
    policy = policy or RetryPolicy()
    reach = reach or Reachability(policy.outage_after)
    url = f"{api_domain.rstrip('/')}/crm/v7/settings/automation/cadences"
    found: dict[str, Cadence] = {}
    # answers no Zoho API gives (an HTML page under 200 or 400), in a row: the domain is wrong
    foreign = ForeignStreak()
    for page in range(1, _MAX_PAGES + 1):
        async def get(page: int = page) -> dict[str, Any] | None:
            try:
                response = await client.get(url, params={"page": page})
            except NETWORK_ERRORS as exc:  # cut after it left: it may have cost a credit
                if not is_unsent(exc):
                    on_call()
                raise
            on_call()
            return _payload(response, foreign, redact)

        try:
            payload, _ = await call_with_retries(get, policy, sleep=sleep, reach=reach)
        except TransientError:
            # out of attempts on answers another server gave: said as the domain, not a code
            if (wrong := foreign.fatal()) is not None:
                raise wrong.to_error(where=origin(url)) from None
            raise
        if payload is None:  # 204: no (more) cadences
            return list(found.values())
        parsed = [c for c in map(_cadence, payload["cadences"]) if c is not None]
        before = len(found)
        for cadence in parsed:
            found.setdefault(cadence.id, cadence)
        info = payload.get("info")
        if not parsed or not (isinstance(info, dict) and info.get("more_records") is True):
            return list(found.values())
        if len(found) == before:
            # a page of cadences already read that still claims more (a proxy dropping
            # ``page=``, a server ignoring it): the rest can never be read, and every further
            # GET is a credit; a list cut short would call real cadences unknown
            raise AbortError(
                f"could not read the org's cadences: page {page} repeats cadences of the pages "
                f"before it while saying there are more (after {len(found)} cadences): the "
                "server or a proxy on the way ignores the page asked for; fix that (or run "
                "without --all-cadences, with --no-preflight), then re-run the same command")
    raise AbortError(f"could not read the org's cadences: still more after {_MAX_PAGES} pages "
                     f"({len(found)} cadences); re-run the same command, or run with "
                     "--no-preflight")


def preflight(pairs_cadence_module: Iterable[tuple[str, str]],
              cadences: Sequence[Cadence]) -> dict[tuple[str, str], tuple[str, str]]:
    """(module, cadence_id) → (code, message) for every pair Zoho would refuse.

    Codes are the ones the API itself gives, so a row's code does not depend on which path
    caught it. Modules compare case-insensitively (``leads`` is ``Leads``).
    """
    by_id = {c.id: c for c in cadences}
    problems: dict[tuple[str, str], tuple[str, str]] = {}
    for module, cadence_id in pairs_cadence_module:
        key = (module, cadence_id)
        if key in problems:
            continue
        cadence = by_id.get(cadence_id)
        label = f"cadence {cadence_id}" + (f" ({cadence.name})" if cadence and cadence.name else "")
        if cadence is None:
            problems[key] = ("INVALID_DATA", f"{label} does not exist in this org")
        elif cadence.module and cadence.module.casefold() != module.casefold():
            problems[key] = ("INVALID_DATA", f"{label} belongs to module {cadence.module}, "
                                             f"not {module}")
        elif cadence.type and cadence.type != MANUAL:
            problems[key] = ("NOT_ALLOWED", f"{label} is of type {cadence.type}; only "
                                            f"{MANUAL} cadences allow un-enrolment")
    return problems


def _payload(response: httpx.Response, foreign: ForeignStreak,
             redact: Callable[[str], str] = str) -> dict[str, Any] | None:
    if response.status_code == 204:
        foreign.reset()
        return None
    try:
        body = response.json()
    except ValueError:
        body = None
    if response.status_code == 200 and isinstance(body, dict) \
            and isinstance(body.get("cadences"), list):
        foreign.reset()
        return body
    answer = redacted(foreign.judge(classify((), (), response.status_code, response.headers,
                                             response.content)), redact)
    if isinstance(answer, Fatal) and answer.code in ("OAUTH_SCOPE_MISMATCH", "NO_PERMISSION"):
        raise CadencesUnavailable(
            f"cannot read the org's cadences ({answer.code}): the token needs scope "
            f"{SETTINGS_SCOPE} and the user access to cadences; without it batcher cannot check "
            "cadences before sending")
    if isinstance(answer, Fatal):
        raise answer.to_error(where=origin(response.request.url))
    if isinstance(answer, TokenInvalid):
        raise answer.to_error()
    if isinstance(answer, Transient):
        raise answer.to_error()
    # a Zoho error with no meaning for a listing (INVALID_MODULE, a 400 of any code): its words
    said = whole_request_said(response.content) or f"HTTP_{response.status_code}"
    raise AbortError(f"could not read the org's cadences: Zoho answered {redact(said)} "
                     f"(HTTP {response.status_code})")


def _cadence(raw: Any) -> Cadence | None:
    if not isinstance(raw, dict) or not isinstance(raw.get("id"), str | int) \
            or isinstance(raw.get("id"), bool):
        return None
    module = raw.get("module")
    module_name = module.get("api_name") if isinstance(module, dict) else module
    return Cadence(
        id=str(raw["id"]), name=str(raw.get("name") or ""), module=str(module_name or ""),
        type=str(raw.get("type") or ""), active=_flag(raw.get("active")),
        published=_flag(raw.get("published")),
        status=str(raw["status"]) if raw.get("status") is not None else None,
    )


def _flag(value: Any) -> bool | None:
    return value if isinstance(value, bool) else None
