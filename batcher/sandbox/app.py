"""The sandbox's HTTP face: Zoho's token, cadences and un-enrol endpoints, plus a truth endpoint.

Faults are decided first (one roll of the dice per API call, in arrival order) and then either
replace the call or follow it; the call itself is answered by ``unenrol.answer_unenrol``.

With ``SandboxConfig.echo_auth`` every error answer is rewritten on its way out to carry the
request's secrets (``_echoing``), so a test can prove the client never shows a server's text as is.
"""

from __future__ import annotations

import asyncio
import hashlib
import html
import time
from collections.abc import Awaitable, Callable
from urllib.parse import parse_qsl

import orjson
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import HTMLResponse, JSONResponse, Response
from starlette.routing import Route

from . import faults as F
from .config import SandboxConfig
from .state import CADENCE_READ_SCOPES, CallRecord, Sandbox
from .unenrol import Answer, Parsed, error, listed, parse_body
from .world import Cadence, World

__all__ = ["SandboxConfig", "Sandbox", "create_app"]

API_VERSIONS = ("v7", "v8")

_HTML_PAGES = {
    502: "502 Bad Gateway",
    503: "503 Service Temporarily Unavailable",
    504: "504 Gateway Time-out",
}


def create_app(world: World, config: SandboxConfig | None = None,
               clock: Callable[[], float] = time.monotonic) -> Starlette:
    """A Zoho-shaped ASGI app over a copy of ``world``; ``app.state.sandbox`` holds the truth."""
    config = config or SandboxConfig()
    api = _echoing if config.echo_auth else _as_is
    app = Starlette(
        routes=[
            Route("/oauth/v2/token", api(_token), methods=["POST"]),
            Route("/crm/{version}/settings/automation/cadences", api(_cadences), methods=["GET"]),
            Route("/crm/{version}/{module}/actions/unenrol_from_cadences", api(_unenrol),
                  methods=["POST"]),
            Route("/__sandbox__/truth", _truth, methods=["GET"]),
            Route("/__sandbox__/revoke_tokens", _revoke, methods=["POST"]),
        ],
        exception_handlers={404: api(_not_found), 405: api(_not_found)},
    )
    app.state.sandbox = Sandbox(world, config, clock)
    return app


# ---------------------------------------------------------------------- responses


def _json(status: int, body: dict, headers: dict[str, str] | None = None) -> Response:
    # orjson: the same compact JSON as JSONResponse, a fraction of the server's time per call
    return Response(orjson.dumps(body), status_code=status, headers=headers,
                    media_type="application/json;charset=UTF-8")


class _DropResponse(Response):
    """Starts an answer, then cuts the connection: the client never sees a body."""

    def __init__(self, when: str) -> None:
        super().__init__(b"")
        self.when = when

    async def __call__(self, scope, receive, send) -> None:
        await send({"type": "http.response.start", "status": 200,
                    "headers": [(b"content-type", b"application/json"),
                                (b"content-length", b"512")]})
        raise F.DroppedConnection(self.when)


def _html(status: int) -> Response:
    title = _HTML_PAGES[status]
    page = (f"<html>\r\n<head><title>{title}</title></head>\r\n<body>\r\n<center><h1>{title}"
            "</h1></center>\r\n<hr><center>ZGS</center>\r\n</body>\r\n</html>\r\n")
    return HTMLResponse(page, status_code=status)


def _too_many(sb: Sandbox, retry_after: str | None, ratelimit_headers: bool,
              limit: float | None) -> Response:
    headers = {}
    if retry_after is not None:
        headers["Retry-After"] = retry_after
    if ratelimit_headers:
        wait = int(retry_after) if retry_after else 1
        headers["X-RATELIMIT-LIMIT"] = str(int(limit) if limit else 10)
        headers["X-RATELIMIT-REMAINING"] = "0"
        headers["X-RATELIMIT-RESET"] = str(int((time.time() + max(wait, 1)) * 1000))
    body = error("TOO_MANY_REQUESTS", "You have made too many requests. Please try again later.")
    return _json(429, sb.whole(body), headers)


_AUTH_MESSAGES = {"AUTHENTICATION_FAILURE": "Authentication failed",
                  "INVALID_TOKEN": "invalid oauth token",
                  "OAUTH_SCOPE_MISMATCH": "invalid oauth scope to access this URL"}


def _auth_error(sb: Sandbox, code: str) -> Response:
    return _json(401, sb.whole(error(code, _AUTH_MESSAGES[code])))


def _server_error(sb: Sandbox) -> Response:
    return _json(500, sb.whole(error("INTERNAL_SERVER_ERROR", "Internal Server Error")))


def _fault_response(sb: Sandbox, decision: F.Decision) -> Response | None:
    """The answer a fault gives instead of the call (None: the call goes ahead)."""
    if decision.kind in (F.HTML_502, F.HTML_503, F.HTML_504):
        return _html(int(decision.kind[-3:]))
    if decision.kind == F.DROP_BEFORE:
        return _DropResponse("before")
    if decision.kind == F.THROTTLE:
        return _too_many(sb, decision.retry_after, decision.ratelimit_headers, None)
    return None


async def _delay(sb: Sandbox, decision: F.Decision, base: float) -> None:
    wait = base + (sb.config.slow_seconds if decision.slow else 0.0)
    if wait > 0:
        await asyncio.sleep(wait)


async def _delay_until(sb: Sandbox, decision: F.Decision, deadline: float) -> None:
    """Wait until ``deadline`` (event-loop time), plus the slow fault's delay."""
    wait = deadline - asyncio.get_running_loop().time()
    await _delay(sb, decision, max(0.0, wait))


# ---------------------------------------------------------------------- endpoints


async def _form(request: Request) -> dict[str, str]:
    """The token endpoint's fields, from the query string and the form body (the body wins)."""
    form = dict(parse_qsl(request.url.query))
    form.update(parse_qsl((await request.body()).decode("utf-8", "replace")))
    return form


async def _token(request: Request) -> Response:
    sb: Sandbox = request.app.state.sandbox
    status, body = sb.refresh(await _form(request), f"{request.url.scheme}://{request.url.netloc}")
    return _json(status, body)


async def _cadences(request: Request) -> Response:
    sb: Sandbox = request.app.state.sandbox
    decision = sb.dice.decide()
    await _delay(sb, decision, 0.0)
    early = _fault_response(sb, decision)
    if early is not None:
        return early
    if request.path_params["version"] not in API_VERSIONS:
        return await _not_found(request, None)
    problem, scopes = sb.check_token(request.headers.get("authorization"))
    if problem:
        return _auth_error(sb, problem)
    if not scopes & set(CADENCE_READ_SCOPES):
        return _auth_error(sb, "OAUTH_SCOPE_MISMATCH")
    if decision.kind == F.ERROR_500:
        return _server_error(sb)
    if not sb.spend_credit():  # a GET costs a credit as any call does (DESIGN.md §1, Limits)
        status, body = _credits_refusal(sb)
        return _json(status, sb.whole(body))
    page = _positive_int(request.query_params.get("page"), 1)
    per_page = min(_positive_int(request.query_params.get("per_page"), 200),
                   sb.config.cadence_page_size, 200)
    items = list(sb.world.cadences.values())
    chunk = items[(page - 1) * per_page: page * per_page]
    if not chunk:
        return Response(status_code=204)
    if decision.kind == F.DROP_AFTER:
        return _DropResponse("after")
    body = {"cadences": [_cadence_json(c) for c in chunk],
            "info": {"per_page": per_page, "count": len(chunk), "page": page,
                     "more_records": page * per_page < len(items)}}
    return _json(200, body)


async def _unenrol(request: Request) -> Response:
    sb: Sandbox = request.app.state.sandbox
    arrived = asyncio.get_running_loop().time()
    decision = sb.dice.decide()
    in_flight = sb.enter_call()
    try:
        return await _unenrol_call(request, sb, decision, in_flight, arrived)
    finally:
        sb.leave_call()


async def _unenrol_call(request: Request, sb: Sandbox, decision: F.Decision,
                        in_flight: int, arrived: float) -> Response:
    """A call takes ``latency`` (plus a slow fault's delay) from its arrival to its answer.

    The work is done at once and the answer held back until then, so the sandbox's own CPU time
    counts within the latency, as a real server's does: "50 ms a call" means 50 ms, not 50 ms plus
    whatever this Python process needs to build the answer.
    """
    sb.apply_due()
    raw = await request.body()
    given = request.path_params["module"]
    module = sb.world.module_named(given) or given
    ids, cadence_ids = _named(raw)
    sb.name_pairs(module, ids, cadence_ids)

    def record(status: int | None, code: str, answer: Answer | None = None,
               fault: str | None = None) -> None:
        removed = tuple((r, c) for _, r, c in answer.remove) if answer else ()
        sb.record_call(CallRecord(
            seq=decision.seq, module=module, record_ids=tuple(map(str, ids)),
            cadence_ids=tuple(map(str, cadence_ids)), http_status=status, code=code,
            applied=answer is not None and answer.status in (200, 202, 207), removed=removed,
            fault=fault, delayed=decision.slow))

    if decision.kind == F.THROTTLE:
        record(429, "TOO_MANY_REQUESTS", fault=decision.kind)
        return _fault_response(sb, decision)
    limit = sb.over_limit(in_flight)
    if limit is not None:
        record(429, "TOO_MANY_REQUESTS")
        retry_after, headers = sb.dice.limit_headers()
        bound = sb.concurrency_limit if limit == "concurrency" else sb.rate_limit
        return _too_many(sb, retry_after, headers, bound)
    response, truth = _carry_out(request, sb, decision, given, module, raw)
    try:
        await _delay_until(sb, decision, arrived + sb.config.latency)
    except asyncio.CancelledError:
        # the server is going down (a restartable sandbox's stop) with the answer held back: the
        # call stays applied or not as decided, and the truth says no answer left
        record(None, *truth[1:])
        raise
    record(*truth)
    return response


def _carry_out(request: Request, sb: Sandbox, decision: F.Decision, given: str, module: str,
               raw: bytes) -> tuple[Response, tuple]:
    """The answer to an admitted call, and what the truth log records about it."""
    early = _fault_response(sb, decision)
    if early is not None:
        status = None if decision.kind == F.DROP_BEFORE else early.status_code
        return early, (status, decision.kind, None, decision.kind)
    refusal = _refusal(request, sb, given, module)
    if refusal is not None:
        return _json(refusal[0], sb.whole(refusal[1])), (refusal[0], refusal[1]["code"])
    if decision.kind == F.ERROR_500:
        return _server_error(sb), (500, "INTERNAL_SERVER_ERROR", None, decision.kind)
    parsed = parse_body(raw, sb.wrap)
    answer = sb.unenrol(module, parsed) if isinstance(parsed, Parsed) else parsed
    if decision.kind == F.DROP_AFTER:
        return _DropResponse("after"), (None, answer.code, answer, decision.kind)
    return _json(answer.status, answer.body), (answer.status, answer.code, answer)


def _refusal(request: Request, sb: Sandbox, given: str, module: str) -> tuple[int, dict] | None:
    """Version, token, module, scope and permission checks, in the order Zoho makes them; the
    error top level (the caller wraps it as ``error_wrapping`` says)."""
    if request.path_params["version"] not in API_VERSIONS:
        return 404, error("INVALID_URL_PATTERN",
                          "Please check if the URL trying to access is a correct one")
    problem, scopes = sb.check_token(request.headers.get("authorization"))
    if problem:
        return 401, error(problem, _AUTH_MESSAGES[problem])
    if sb.world.module_named(given) is None:
        return 400, error("INVALID_MODULE", "the module name given seems to be invalid")
    wanted = {"zohocrm.modules.all", "zohocrm.modules.create",
              f"zohocrm.modules.{module.lower()}.all", f"zohocrm.modules.{module.lower()}.create"}
    if not scopes & wanted:
        return 401, error("OAUTH_SCOPE_MISMATCH", _AUTH_MESSAGES["OAUTH_SCOPE_MISMATCH"])
    if sb.config.no_permission:
        return 403, error("NO_PERMISSION", "permission denied",
                          {"permissions": ["Crm_Implied_Manage_Cadences"]})
    if not sb.spend_credit():
        return _credits_refusal(sb)
    return None


def _credits_refusal(sb: Sandbox) -> tuple[int, dict]:
    """A call past the org's API credits (SandboxConfig.credits_exhausted)."""
    if sb.config.credits_exhausted == "limit_exceeded":
        return 400, error("LIMIT_EXCEEDED", "the API credits of the day are used up",
                          {"limit": sb.config.daily_credits, "limit_due_to": "API credits per day"})
    # DESIGN.md §1, Limits: over a limit (credits or concurrency), HTTP 429 TOO_MANY_REQUESTS
    return 429, error("TOO_MANY_REQUESTS", "You have made too many requests. Please try again "
                                           "later.")


async def _truth(request: Request) -> Response:
    summary = request.query_params.get("summary", "") not in ("", "0", "false")
    return JSONResponse(request.app.state.sandbox.truth(summary=summary))


async def _revoke(request: Request) -> Response:
    request.app.state.sandbox.revoke_tokens()
    return JSONResponse({"revoked": True})


async def _not_found(request: Request, exc: Exception | None) -> Response:
    sb: Sandbox = request.app.state.sandbox
    return _json(404, sb.whole(error("INVALID_URL_PATTERN",
                                     "Please check if the URL trying to access is a correct one")))


# ---------------------------------------------------------------------- echo_auth

Handler = Callable[..., Awaitable[Response]]


def _as_is(handler: Handler) -> Handler:
    return handler


def _echoing(handler: Handler) -> Handler:
    """``handler`` whose error answers repeat the request's secrets (SandboxConfig.echo_auth).

    API errors (JSON, top level or ``data[]`` entries, and the HTML proxy pages) get the whole
    Authorization header; token endpoint refusals get the posted client_secret and refresh_token.
    Status, headers and everything else of the answer stay as they were; success answers and
    dropped connections pass untouched.
    """

    async def echoing(request: Request, *args: object) -> Response:
        response = await handler(request, *args)
        if isinstance(response, _DropResponse) or not response.body:
            return response
        if request.url.path == "/oauth/v2/token":
            content = _echo_token_refusal(response.body, await _form(request))
        else:
            content = _echo_api_error(response, _auth_echo(request))
        return response if content is None else _rebuilt(response, content)

    return echoing


def _auth_echo(request: Request) -> str:
    authorization = request.headers.get("authorization")
    if authorization is None:
        return "request had no Authorization header"
    return f"request had Authorization: {authorization}"


def _echo_api_error(response: Response, echo: str) -> bytes | None:
    """The answer's new body with ``echo`` in every error, None when it has no error."""
    if response.media_type == "text/html":
        page = response.body.decode("utf-8")
        return page.replace("</body>", f"<p>{html.escape(echo)}</p>\r\n</body>", 1).encode()
    try:
        body = orjson.loads(response.body)
    except orjson.JSONDecodeError:
        return None
    if not isinstance(body, dict):
        return None
    data = body.get("data")
    changed = False
    for entry in [body, *(data if isinstance(data, list) else ())]:
        if not isinstance(entry, dict) or entry.get("status") != "error":
            continue
        details = entry.get("details") if isinstance(entry.get("details"), dict) else {}
        if "echo" in details:
            continue
        entry["message"] = f"{entry.get('message') or ''} ({echo})".lstrip()
        entry["details"] = {**details, "echo": echo}
        changed = True
    return orjson.dumps(body) if changed else None


def _echo_token_refusal(content: bytes, form: dict[str, str]) -> bytes | None:
    try:
        body = orjson.loads(content)
    except orjson.JSONDecodeError:
        return None
    if not isinstance(body, dict) or "error" not in body:
        return None
    echo = (f"request had client_secret={form.get('client_secret', '')} "
            f"refresh_token={form.get('refresh_token', '')}")
    described = str(body.get("error_description") or "")
    body["error_description"] = f"{described} ({echo})" if described else echo
    return orjson.dumps(body)


def _rebuilt(response: Response, content: bytes) -> Response:
    headers = {k: v for k, v in response.headers.items() if k != "content-length"}
    return Response(content, status_code=response.status_code, headers=headers)


# ---------------------------------------------------------------------- helpers


def _named(raw: bytes) -> tuple[list, list]:
    """The ids and cadence ids a body names, however malformed the rest of it is."""
    try:
        body = orjson.loads(raw) if raw.strip() else {}
    except (ValueError, UnicodeDecodeError):
        return [], []
    ids, cadence_ids = listed(body, "ids"), listed(body, "cadences_ids")
    if ids is None or cadence_ids is None:
        return [], []
    return ids, cadence_ids


def _positive_int(value: str | None, default: int) -> int:
    try:
        number = int(value) if value is not None else default
    except ValueError:
        return default
    return number if number >= 1 else default


def _module_id(module: str) -> str:
    return "554023" + str(int(hashlib.sha256(module.encode()).hexdigest(), 16))[:12]


def _cadence_json(c: Cadence) -> dict:
    return {"id": c.id, "name": c.name,
            "module": {"api_name": c.module, "id": _module_id(c.module)},
            "type": c.type, "active": c.active, "published": c.published,
            "status": "active" if c.active else "inactive"}
