"""Outages end to end (issue 9, item 3; DESIGN.md §2 "Behaviour on answers", exit code 3,
invariants 2 and 4): Zoho unreachable at the start, Zoho going down mid-run and coming back, a
proxy answering 503 pages, and — the other side of the line — one batch failing while Zoho
answers everyone else.

The contract under test:
- Zoho unreachable at the start → exit 3, a results file with every row ``not_sent``, one
  ``batcher: aborted:`` line naming the host, no traceback; calls that never reached a server
  (connection refused, token endpoint unreachable) are neither calls nor credits.
- Connection failures (or proxy 5xx pages) persisting across batches for
  ``RetryPolicy.outage_after`` seconds → stop taking batches, exit 3, unanswered pairs
  ``not_sent`` (never ``failed CONNECTION_ERROR``); the same command, Zoho back, finishes the job
  without re-sending an answered batch.
- An outage shorter than ``outage_after`` costs nothing: the job completes in one run.
- While Zoho answers other calls, a batch that keeps failing is ``failed``, retryable, after its
  attempts: exit 1, no abort.

Everything runs over loopback HTTP against the sandbox, checked against its truth (the calls it
received and the pairs it removed), in-process through ``run_job`` and through the CLI in a
subprocess. Dead hosts live on 127.0.0.2, so a message naming the dead host cannot be confused
with one naming the sandbox on 127.0.0.1.
"""

from __future__ import annotations

import dataclasses
import io
import json
import os
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import httpx
import pytest

import batcher
from batcher.job import RunSettings, Transports, run_job
from batcher.retry import RetryPolicy
from batcher.sandbox.world import World

from .conftest import read_results, write_pairs
from .test_e2e import assert_exact, make_rows, settings

DEAD_HOST = "127.0.0.2"  # loopback (plain http allowed), and not where any sandbox listens
FAST = {"attempts": 8, "base": 0.01, "max_wait": 0.2, "min_wait_on_zero_retry_after": 0.01}


def policy(outage_after: float, **kw) -> RetryPolicy:
    """Fast retries with an outage clock of ``outage_after`` seconds.

    Built per test, not at import: on a batcher without ``outage_after`` (before issue 9) the
    file still collects, and each test fails on what that batcher does rather than on a
    ``TypeError`` here.
    """
    kw = {**FAST, **kw}
    if "outage_after" in {f.name for f in dataclasses.fields(RetryPolicy)}:
        kw["outage_after"] = outage_after
    return RetryPolicy(**kw)


def dead_url() -> str:
    """A loopback URL where nothing listens: every connection is refused."""
    with socket.socket() as s:
        s.bind((DEAD_HOST, 0))
        port = s.getsockname()[1]
    return f"http://{DEAD_HOST}:{port}"


def summary_of(results: Path) -> dict:
    return json.loads(results.with_name(results.stem + ".summary.json").read_text())


def pair_of(row: dict[str, str]) -> tuple[str, str, str]:
    return row["module"], row["record_id"], row["cadence_id"]


def abort_lines(text: str) -> list[str]:
    return [line for line in text.splitlines() if line.startswith("batcher: aborted:")]


def assert_all_not_sent(results: Path, n_rows: int) -> None:
    rows = read_results(results)
    assert len(rows) == n_rows
    assert {r["status"] for r in rows} == {"not_sent"}, {(r["status"], r["code"]) for r in rows}
    retry = results.with_name(results.stem + ".retry.csv").read_text().splitlines()
    assert len(retry) == n_rows + 1  # every row is to be sent again, plus the header


# ------------------------------------------------------------------- unreachable at the start


def _cli(tmp_path: Path, argv: list[str], env: dict[str, str], outage_after: float,
         command: str = "run") -> tuple[subprocess.CompletedProcess, float]:
    """``python -m batcher run ...`` (or ``command``) in a subprocess, running this very batcher.

    The CLI has no flag for ``outage_after`` (its default is 120 s), so a ``sitecustomize`` on
    the subprocess's path only changes that default; everything else is the real command line.
    """
    shim = tmp_path / "shim"
    shim.mkdir(exist_ok=True)
    (shim / "sitecustomize.py").write_text(
        "import dataclasses\n"
        "from batcher import retry\n"
        "if 'outage_after' in {f.name for f in dataclasses.fields(retry.RetryPolicy)}:\n"
        "    _init = retry.RetryPolicy.__init__\n"
        "    def __init__(self, *args, **kw):\n"
        f"        kw.setdefault('outage_after', {outage_after!r})\n"
        "        _init(self, *args, **kw)\n"
        "    retry.RetryPolicy.__init__ = __init__\n")
    root = Path(batcher.__file__).resolve().parents[1]
    base = {k: v for k, v in os.environ.items()
            if not k.startswith("ZOHO_") and "proxy" not in k.lower()}
    full_env = {**base, **env, "PYTHONPATH": f"{shim}{os.pathsep}{root}",
                "HOME": str(tmp_path), "XDG_CACHE_HOME": str(tmp_path / "cache")}
    started = time.monotonic()
    proc = subprocess.run([sys.executable, "-m", "batcher", command, *argv], env=full_env,
                          capture_output=True, text=True, timeout=60, cwd=tmp_path)
    return proc, time.monotonic() - started


@pytest.mark.slow
@pytest.mark.parametrize("preflight", [True, False], ids=["preflight", "no-preflight"])
def test_cli_dead_api_host_exits_3_with_every_row_not_sent_and_one_line(tmp_path, serve,
                                                                         preflight):
    """ZOHO_API_DOMAIN on a closed port, the accounts server (the sandbox) alive and telling the
    same API domain with its tokens, as Zoho would."""
    rows = make_rows(30, 3)
    api = dead_url()
    live = serve(World.from_pairs(rows), api_domain=api)
    inp = write_pairs(tmp_path / "in.csv", rows)
    results = tmp_path / "out.csv"
    argv = [str(inp), "--results", str(results)] + ([] if preflight else ["--no-preflight"])

    proc, took = _cli(tmp_path, argv, {**live.env, "ZOHO_API_DOMAIN": api}, outage_after=1.0)

    assert proc.returncode == 3, proc.stderr
    assert "Traceback" not in proc.stderr + proc.stdout
    [line] = abort_lines(proc.stderr)  # one line says why, and names the dead host
    assert DEAD_HOST in line, line
    assert took < 15  # the outage clock (1 s here, + the interpreter's start)
    assert_all_not_sent(results, len(rows))
    summary = summary_of(results)
    assert (summary["calls"], summary["credits"]) == (0, 0)  # nothing reached a server
    assert DEAD_HOST in summary["extra"]["aborted"]
    assert live.sandbox.calls == []


@pytest.mark.parametrize("budget", ["1", "2"])
def test_an_outage_under_a_small_budget_is_said_as_an_outage_not_a_spent_budget(tmp_path, serve,
                                                                                budget):
    """Found by trying: with --max-calls 1 and Zoho down, the run stopped within a second saying
    '--max-calls 1 reached' — the budget taken by a call in flight that then found no
    connection. A nightly job would report a spent budget every night, never the outage."""
    rows = make_rows(30, 3)
    api = dead_url()
    live = serve(World.from_pairs(rows), api_domain=api)
    inp = write_pairs(tmp_path / "in.csv", rows)
    results = tmp_path / "out.csv"
    argv = [str(inp), "--results", str(results), "--no-preflight", "--max-calls", budget]

    proc, _ = _cli(tmp_path, argv, {**live.env, "ZOHO_API_DOMAIN": api}, outage_after=1.0)

    assert proc.returncode == 3, proc.stderr
    [line] = abort_lines(proc.stderr)
    assert DEAD_HOST in line and "--max-calls" not in line, line
    assert (summary_of(results)["calls"], summary_of(results)["credits"]) == (0, 0)


@pytest.mark.slow
@pytest.mark.parametrize("preflight", [True, False], ids=["preflight", "no-preflight"])
def test_dead_accounts_host_exits_3_and_costs_no_call(tmp_path, serve, preflight):
    """ZOHO_ACCOUNTS_URL on a closed port, the API alive: no token can be had, so no un-enrol
    request ever leaves. Before issue 9: every batch tried 6 times and counted as 6 calls."""
    rows = make_rows(30, 3)
    live = serve(World.from_pairs(rows))
    accounts = dead_url()
    inp = write_pairs(tmp_path / "in.csv", rows)
    err = io.StringIO()

    result = run_job(settings(tmp_path, inp, preflight=preflight, retry=policy(1.0)),
                     {**live.env, "ZOHO_ACCOUNTS_URL": accounts}, stream=err)

    assert result.exit_code == 3, err.getvalue()
    assert_all_not_sent(tmp_path / "out.csv", len(rows))
    assert live.sandbox.calls == []
    summary = summary_of(tmp_path / "out.csv")
    assert (summary["calls"], summary["credits"]) == (0, 0), summary
    # the reason names the server that did not answer (DESIGN.md: "one line naming the host"),
    # not some other cause such as "too many refreshes"
    [line] = abort_lines(err.getvalue())
    assert accounts in line, line


@pytest.mark.slow
@pytest.mark.parametrize("preflight", [True, False], ids=["preflight", "no-preflight"])
def test_zoho_down_when_the_job_starts_and_back_within_outage_after_completes(
        tmp_path, serve_restartable, preflight):
    """Zoho (API and accounts) down for 1 s at the start, ``outage_after`` 5 s: the job waits
    and completes in one run. The refresh attempts that could not reach the accounts server
    sent nothing, so they must not count towards Zoho's 10 token refreshes per 10 minutes."""
    rows = make_rows(300, 3)
    live = serve_restartable(World.from_pairs(rows))
    live.stop()
    inp = write_pairs(tmp_path / "in.csv", rows)
    back = threading.Timer(1.0, live.start)
    back.start()
    err = io.StringIO()
    try:
        result = run_job(settings(tmp_path, inp, preflight=preflight, retry=policy(5.0)),
                         live.env, stream=err)
    finally:
        back.join()

    assert result.exit_code == 0, (result.aborted, err.getvalue())
    assert {r["status"] for r in read_results(tmp_path / "out.csv")} == {"unenrolled"}
    assert set(live.sandbox.removed) == set(rows)
    assert_exact(live.sandbox, rows)


# ------------------------------------------------------------------- down mid-run, and back

LATENCY = 0.03  # per call: ~240 calls at concurrency 4 last a few seconds
CONCURRENCY = 4


def _big_job(tmp_path: Path) -> tuple[list[tuple[str, str, str]], Path]:
    rows = make_rows(24_000, 5, max_k=1)  # one cadence a record: ~240 batches of 100 records
    return rows, write_pairs(tmp_path / "in.csv", rows)


def _stop_when(live, answered: int, then: float | None = None) -> tuple[threading.Thread, dict]:
    """Stop the sandbox once it has answered ``answered`` un-enrol calls; with ``then``, start
    it again that many seconds later. Returns the thread and what it saw (times, calls)."""
    seen: dict = {}

    def watch() -> None:
        deadline = time.monotonic() + 30
        while len(live.sandbox.calls) < answered and time.monotonic() < deadline:
            time.sleep(0.005)
        seen["stop_at"] = time.monotonic()
        live.stop()
        seen["stopped_at"] = time.monotonic()
        seen["calls_when_stopped"] = len(live.sandbox.calls)
        if then is not None:
            time.sleep(then)
            live.start()
            seen["started_at"] = time.monotonic()

    thread = threading.Thread(target=watch, name="outage", daemon=True)
    thread.start()
    return thread, seen


@pytest.mark.slow
def test_zoho_down_mid_run_aborts_then_the_same_command_finishes(tmp_path, serve_restartable):
    rows, inp = _big_job(tmp_path)
    live = serve_restartable(World.from_pairs(rows), latency=LATENCY)
    outage_after = 1.5
    job = settings(tmp_path, inp, concurrency=CONCURRENCY, retry=policy(outage_after))
    results = tmp_path / "out.csv"
    thread, seen = _stop_when(live, answered=80)
    err = io.StringIO()

    result = run_job(job, live.env, stream=err)
    ended = time.monotonic()
    thread.join()

    # --- the first run: an abort, after about outage_after of silence, not a pile of failures
    assert result.exit_code == 3, (result.aborted, err.getvalue()[-2000:])
    assert "stopped_at" in seen, "the job ended before the sandbox was stopped"
    took = ended - seen["stop_at"]
    assert outage_after - 0.2 <= took <= outage_after + 2.5, took
    [line] = abort_lines(err.getvalue())
    assert "127.0.0.1" in line, line

    first = read_results(results)
    assert len(first) == len(rows)
    statuses = {r["status"] for r in first}
    assert statuses <= {"unenrolled", "not_sent"}, {(r["status"], r["code"]) for r in first
                                                     if r["status"] not in ("unenrolled",
                                                                            "not_sent")}
    assert "not_sent" in statuses and "unenrolled" in statuses
    # what the results claim is what the server did: answered rows unenrolled, the rest not
    removed_1 = set(live.sandbox.removed)
    assert {pair_of(r) for r in first if r["status"] == "unenrolled"} == removed_1
    calls_1 = live.sandbox.calls
    answered_1 = [c for c in calls_1 if c.http_status is not None]
    assert all(c.http_status == 200 for c in answered_1)
    # every call the server received is counted; the calls refused while it was down are not.
    # A call written on a pooled connection the server was closing at that very moment (or one
    # still in its accept queue) gets no answer rather than a refusal (seen in about a third of
    # runs: RemoteProtocolError "Server disconnected without sending a response"): the client
    # cannot tell it from a call cut mid-flight, so it may count — at most one per slot
    s1 = summary_of(results)
    assert len(calls_1) <= s1["calls"] <= len(calls_1) + CONCURRENCY, (s1["calls"], len(calls_1))
    assert s1["credits"] == s1["calls"] + 1  # + the preflight's one GET
    assert s1["by_status"].get("failed", 0) == 0

    # --- Zoho is back: the same command finishes the job, sending only what was not answered
    live.start()
    err = io.StringIO()
    again = run_job(job, live.env, stream=err)

    assert again.exit_code == 0, (again.aborted, err.getvalue()[-2000:])
    assert set(live.sandbox.removed) == set(rows)
    assert_exact(live.sandbox, rows)
    second = read_results(results)
    assert {r["status"] for r in second} == {"unenrolled"}
    # no answered batch was sent again: the second run's calls name no pair the first removed
    calls_2 = live.sandbox.calls[len(calls_1):]
    assert calls_2
    named_2 = {(c.module, r, cad) for c in calls_2 for r in c.record_ids for cad in c.cadence_ids}
    assert not named_2 & removed_1
    sent_1 = {(c.record_ids, c.cadence_ids) for c in answered_1}
    assert not sent_1 & {(c.record_ids, c.cadence_ids) for c in calls_2}
    # the rows answered in the first run keep their outcome as it was recorded then
    for before, after in zip(first, second, strict=True):
        if before["status"] == "unenrolled":
            assert (after["status"], after["batch_id"], after["finished_at"]) == \
                (before["status"], before["batch_id"], before["finished_at"])
    # the second run's calls reached a server without an outage: each one counted, exactly
    s2 = summary_of(results)
    assert s2["calls"] - s1["calls"] == len(calls_2), (s2["calls"], s1["calls"], len(calls_2))


@pytest.mark.slow
def test_an_outage_shorter_than_outage_after_costs_nothing(tmp_path, serve_restartable):
    rows, inp = _big_job(tmp_path)
    live = serve_restartable(World.from_pairs(rows), latency=LATENCY)
    job = settings(tmp_path, inp, concurrency=CONCURRENCY, retry=policy(5.0))
    thread, seen = _stop_when(live, answered=80, then=0.5)
    err = io.StringIO()

    result = run_job(job, live.env, stream=err)
    thread.join()

    assert "started_at" in seen
    results = read_results(tmp_path / "out.csv")
    assert {r["status"] for r in results} == {"unenrolled"}, \
        {(r["status"], r["code"], r["batch_id"]) for r in results if r["status"] != "unenrolled"}
    assert result.exit_code == 0, (result.aborted, err.getvalue()[-2000:])
    assert result.aborted is None
    assert set(live.sandbox.removed) == set(rows)
    assert_exact(live.sandbox, rows)
    summary = summary_of(tmp_path / "out.csv")
    calls = len(live.sandbox.calls)
    assert calls <= summary["calls"] <= calls + CONCURRENCY, (summary["calls"], calls)


# ------------------------------------------------------------------- a proxy's 503 pages


class _Canned(BaseHTTPRequestHandler):
    """A real web server at the API domain that answers every request with one page,
    ``server.answer`` (status, content type, body), and counts them by method. ``{token}`` in
    the page is the request's access token (a server echoing it back); with ``server.issues``
    it is also a token endpoint, issuing that token."""

    protocol_version = "HTTP/1.1"

    def _answer(self) -> None:
        length = int(self.headers.get("Content-Length") or 0)
        if length:
            self.rfile.read(length)
        self.server.requests[self.command] = self.server.requests.get(self.command, 0) + 1
        status, kind, page = self.server.answer
        if getattr(self.server, "issues", None) and self.path.startswith("/oauth/v2/token"):
            status, kind = 200, "application/json"
            page = json.dumps({"access_token": self.server.issues, "expires_in": 3600}).encode()
        token = (self.headers.get("Authorization") or "").removeprefix("Zoho-oauthtoken ")
        page = page.replace(b"{token}", token.encode())
        self.send_response(status)
        self.send_header("Content-Type", kind)
        self.send_header("Content-Length", str(len(page)))
        self.end_headers()
        self.wfile.write(page)

    do_GET = do_POST = _answer

    def log_message(self, *args) -> None:
        pass


@contextmanager
def _canned(answer: tuple[int, str, bytes]) -> Iterator[ThreadingHTTPServer]:
    server = ThreadingHTTPServer(("127.0.0.1", 0), _Canned)
    server.daemon_threads = True
    server.requests, server.answer = {}, answer
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield server
    finally:
        server.shutdown()
        server.server_close()


@pytest.fixture
def proxy_503():
    """What a corporate proxy or a load balancer answers when Zoho is down: HTML, 503."""
    with _canned((503, "text/html", b"<html><body><h1>503 Service Unavailable</h1>upstream "
                  b"down</body></html>")) as server:
        yield server


@pytest.mark.slow
@pytest.mark.parametrize("preflight", [True, False], ids=["preflight", "no-preflight"])
def test_proxy_503_pages_for_everything_abort_with_rows_not_sent(tmp_path, serve, proxy_503,
                                                                  preflight):
    rows = make_rows(30, 3)
    api = f"http://127.0.0.1:{proxy_503.server_address[1]}"
    live = serve(World.from_pairs(rows), api_domain=api)
    inp = write_pairs(tmp_path / "in.csv", rows)
    err = io.StringIO()
    started = time.monotonic()

    result = run_job(settings(tmp_path, inp, preflight=preflight, retry=policy(1.0)),
                     {**live.env, "ZOHO_API_DOMAIN": api}, stream=err)

    assert result.exit_code == 3, err.getvalue()
    assert time.monotonic() - started < 10
    assert_all_not_sent(tmp_path / "out.csv", len(rows))
    [line] = abort_lines(err.getvalue())
    assert "503" in line, line
    # a proxy page did reach a server: each un-enrol POST the proxy got is a call and a credit
    # (the credits of an aborted preflight: test_credits_of_an_aborted_preflight_are_counted)
    summary = summary_of(tmp_path / "out.csv")
    posts, gets = proxy_503.requests.get("POST", 0), proxy_503.requests.get("GET", 0)
    assert (gets > 0) == preflight and (posts == 0) == preflight
    assert summary["calls"] == posts
    if not preflight:
        assert summary["credits"] == posts
    assert live.sandbox.calls == []


def _zoho_500(gets: list) -> httpx.MockTransport:
    """Zoho itself down, in its own words: every API call answered 500 INTERNAL_SERVER_ERROR."""
    def answer(request: httpx.Request) -> httpx.Response:
        gets.append(request.method)
        return httpx.Response(500, json={"code": "INTERNAL_SERVER_ERROR", "details": {},
                                         "message": "Internal Server Error", "status": "error"})
    return httpx.MockTransport(answer)


@pytest.mark.slow
def test_zoho_answering_500_to_the_preflight_aborts_with_exit_3(tmp_path, serve):
    """Exit codes: 3 is "aborted — ... Zoho unreachable or down"; 1 is "the job finished but
    some rows are failed or invalid". A preflight whose GET runs out of attempts on Zoho's own
    500s stops the job before any row is sent: an abort, resumable, not a finished job."""
    rows = make_rows(30, 3)
    live = serve(World.from_pairs(rows))
    inp = write_pairs(tmp_path / "in.csv", rows)
    calls: list = []
    err = io.StringIO()

    result = run_job(settings(tmp_path, inp, retry=policy(5.0, attempts=3, max_wait=0.02)),
                     live.env, transports=Transports(api=_zoho_500(calls)), stream=err)

    assert_all_not_sent(tmp_path / "out.csv", len(rows))
    assert calls == ["GET"] * 3  # the preflight's GET, its attempts spent
    [line] = abort_lines(err.getvalue())
    assert "INTERNAL_SERVER_ERROR" in line
    assert result.exit_code == 3, (result.exit_code, line)


@pytest.mark.slow
def test_credits_of_an_aborted_preflight_are_counted(tmp_path, serve):
    """The preflight's GETs "count in the job's credits" (job._preflight) — each one that reached
    a server (cadences.fetch_cadences) — and the summary's credits are what the job spent. Three
    GETs answered by Zoho, then the abort: the summary must say 3 credits, not 0."""
    rows = make_rows(30, 3)
    live = serve(World.from_pairs(rows))
    inp = write_pairs(tmp_path / "in.csv", rows)
    calls: list = []

    run_job(settings(tmp_path, inp, retry=policy(5.0, attempts=3, max_wait=0.02)), live.env,
            transports=Transports(api=_zoho_500(calls)), stream=io.StringIO())

    summary = summary_of(tmp_path / "out.csv")
    assert len(calls) == 3
    assert (summary["calls"], summary["credits"]) == (0, 3), summary


# ------------------------------------------------------------------- one batch down, not Zoho


class _OneBatchDown(httpx.AsyncBaseTransport):
    """The real sandbox over loopback, except the first un-enrol batch sent (and every re-send
    of it): that one fails with ``error`` while every other call is answered."""

    def __init__(self, error: type[httpx.TransportError], healed: bool = False) -> None:
        self._inner = httpx.AsyncHTTPTransport()
        self._error = error
        self.healed = healed
        self.doomed: bytes | None = None
        self.failures = 0

    async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
        if request.method == "POST" and not self.healed:
            body = request.content
            if self.doomed is None:
                self.doomed = body
            if body == self.doomed:
                self.failures += 1
                raise self._error("the way to this one batch is broken", request=request)
        return await self._inner.handle_async_request(request)

    async def aclose(self) -> None:
        await self._inner.aclose()


@pytest.mark.slow
def test_one_batch_never_reaching_zoho_while_others_are_answered_stays_not_sent(tmp_path, serve):
    """A batch whose every attempt was refused a connection (a flapping outage, a way that is
    broken for it) was never sent: its rows were `failed` CONNECTION_ERROR, exit 1 — an outage
    reported as failed rows. The other batches are all sent; its rows stay `not_sent`, the run
    exits 3 saying so, and the same command sends them."""
    rows = make_rows(4_000, 5, max_k=1)  # ~40 batches
    live = serve(World.from_pairs(rows), latency=0.02)
    inp = write_pairs(tmp_path / "in.csv", rows)
    transport = _OneBatchDown(httpx.ConnectError)
    job = settings(tmp_path, inp, concurrency=CONCURRENCY,
                   retry=policy(5.0, attempts=4, max_wait=0.02))
    err = io.StringIO()
    result = run_job(job, live.env, transports=Transports(api=transport), stream=err)
    assert result.exit_code == 3, (result.aborted, err.getvalue()[-2000:])
    assert "never sent and stay not_sent (not failed)" in (result.aborted or "")
    results = read_results(tmp_path / "out.csv")
    unsent = [r for r in results if r["status"] == "not_sent"]
    assert unsent and len(unsent) <= 500 and len({r["batch_id"] for r in unsent}) <= 1
    assert {r["status"] for r in results} == {"unenrolled", "not_sent"}
    assert {(r["code"], r["attempts"]) for r in unsent} == {("", "0")}  # never sent, not NO_ANSWER
    assert set(live.sandbox.removed) == set(rows) - {pair_of(r) for r in unsent}
    assert summary_of(tmp_path / "out.csv")["calls"] == len(live.sandbox.calls)
    transport = _OneBatchDown(httpx.ConnectError, healed=True)
    again = run_job(job, live.env, transports=Transports(api=transport), stream=io.StringIO())
    assert again.exit_code == 0, again.aborted
    assert set(live.sandbox.removed) == set(rows)


@pytest.mark.slow
@pytest.mark.parametrize("error, counted", [(httpx.ReadError, True)], ids=["reset"])
def test_one_batch_failing_while_others_are_answered_is_failed_retryable_not_an_outage(
        tmp_path, serve, error, counted):
    rows = make_rows(4_000, 5, max_k=1)  # ~40 batches
    live = serve(World.from_pairs(rows), latency=0.02)
    inp = write_pairs(tmp_path / "in.csv", rows)
    transport = _OneBatchDown(error)
    job = settings(tmp_path, inp, concurrency=CONCURRENCY,
                   retry=policy(5.0, attempts=4, max_wait=0.02))
    err = io.StringIO()

    result = run_job(job, live.env, transports=Transports(api=transport), stream=err)

    assert result.exit_code == 1, (result.aborted, err.getvalue()[-2000:])
    assert result.aborted is None
    results = read_results(tmp_path / "out.csv")
    failed = [r for r in results if r["status"] == "failed"]
    assert failed and len(failed) <= 500  # one batch: at most 100 records x 5 cadences
    assert {(r["code"], r["retryable"]) for r in failed} == {("CONNECTION_ERROR", "true")}
    assert len({r["batch_id"] for r in failed}) == 1
    attempts = {int(r["attempts"]) for r in failed}
    assert attempts == {transport.failures}, (attempts, transport.failures)
    assert transport.failures >= 4  # its attempts ran out (more while nobody else answered)
    assert {r["status"] for r in results if r["status"] != "failed"} == {"unenrolled"}
    failed_pairs = {pair_of(r) for r in failed}
    assert set(live.sandbox.removed) == set(rows) - failed_pairs
    # refusals never reached a server and are not calls; resets may have, and are
    summary = summary_of(tmp_path / "out.csv")
    expected = len(live.sandbox.calls) + (transport.failures if counted else 0)
    assert summary["calls"] == expected, (summary["calls"], expected)

    # the same command, the way repaired, sends that batch's pairs again and finishes the job
    transport = _OneBatchDown(error, healed=True)
    again = run_job(job, live.env, transports=Transports(api=transport), stream=io.StringIO())
    assert again.exit_code == 0, again.aborted
    assert set(live.sandbox.removed) == set(rows)
    assert {r["status"] for r in read_results(tmp_path / "out.csv")} == {"unenrolled"}


def test_the_orgs_credits_used_up_stop_the_job_and_the_next_day_it_resumes(tmp_path, serve):
    """Zoho's LIMIT_EXCEEDED for the day's API credits failed every row for good (retryable
    false, exit 1): every further call was sent and refused, and the nightly re-run had nothing
    left to send. It stops the job, resumable; nothing is failed for it."""
    rows = [("Leads", r, c) for r in (str(554023000007000000 + i) for i in range(500))
            for c in ("554023000004092008", "554023000004092009")]
    # three credits: the preflight's GET of the cadences, then two un-enrol calls
    live = serve(World.from_pairs(rows), daily_credits=3, credits_exhausted="limit_exceeded")
    inp = write_pairs(tmp_path / "in.csv", rows)
    err = io.StringIO()
    first = run_job(settings(tmp_path, inp, concurrency=1), live.env, stream=err)
    assert first.exit_code == 3
    assert "LIMIT_EXCEEDED" in err.getvalue() and "re-run the same command later" in err.getvalue()
    got = read_results(tmp_path / "out.csv")
    assert {r["status"] for r in got} == {"unenrolled", "not_sent"}
    assert sum(r["status"] == "unenrolled" for r in got) == 2 * 200  # two calls of 100 × 2
    # the refused call did nothing, the queued batches never left: none says "sent, no answer"
    assert {(r["code"], r["attempts"]) for r in got if r["status"] == "not_sent"} == {("", "0")}
    live.sandbox.credits_left = None  # the next day
    again = run_job(settings(tmp_path, inp, concurrency=1), live.env, stream=io.StringIO())
    assert again.exit_code == 0
    assert {r["status"] for r in read_results(tmp_path / "out.csv")} == {"unenrolled"}
    assert_exact(live.sandbox, rows)
    assert set(live.sandbox.removed) == set(rows)


def test_credits_used_up_answered_429_as_design_says_stop_the_job_resumable(tmp_path, serve):
    """DESIGN.md §1, Limits: over the org's credits Zoho answers HTTP 429 TOO_MANY_REQUESTS
    (the sandbox answered a 400 LIMIT_EXCEEDED no Zoho page documents, so no test saw this
    form). Only 429s after the credits: the job stops (exit 3), resumable, the rows not sent
    `not_sent`, none `failed`; the next day the same command finishes."""
    rows = make_rows(400, 2)
    live = serve(World.from_pairs(rows), daily_credits=3)  # the preflight's GET + two calls
    inp = write_pairs(tmp_path / "in.csv", rows)
    first = run_job(settings(tmp_path, inp, concurrency=1, retry=policy(1.0)), live.env,
                    stream=io.StringIO())
    assert first.exit_code == 3, first.aborted
    assert "TOO_MANY_REQUESTS" in (first.aborted or "")
    assert {c.http_status for c in live.sandbox.calls} == {200, 429}
    got = read_results(tmp_path / "out.csv")
    assert {r["status"] for r in got} == {"unenrolled", "not_sent"}
    assert sum(r["status"] == "unenrolled" for r in got) == 2 * 200
    live.sandbox.credits_left = None  # the next day
    again = run_job(settings(tmp_path, inp, concurrency=1), live.env, stream=io.StringIO())
    assert again.exit_code == 0, again.aborted
    assert set(live.sandbox.removed) == set(rows)
    assert_exact(live.sandbox, rows)


def test_a_storm_of_429s_stops_the_job_resumable_and_fails_no_row(tmp_path, serve):
    """Every call answered 429 (the org's limits taken by other integrations): calls and
    credits were spent for minutes with nothing said, then rows ended `failed
    TOO_MANY_REQUESTS`. Only 429s for the outage clock's time: said on stderr, then the job
    stops (exit 3) with its rows not_sent, and the same command resumes."""
    rows = make_rows(300, 2)
    live = serve(World.from_pairs(rows))
    inp = write_pairs(tmp_path / "in.csv", rows)

    def throttled(request: httpx.Request) -> httpx.Response:
        return httpx.Response(429, headers={"Retry-After": "0"},
                              json={"code": "TOO_MANY_REQUESTS", "status": "error",
                                    "message": "too many requests", "details": {}})

    job = settings(tmp_path, inp, concurrency=2, retry=policy(1.0), preflight=False,
                   quiet=False)
    err = io.StringIO()
    result = run_job(job, live.env, transports=Transports(api=httpx.MockTransport(throttled)),
                     stream=err)
    assert result.exit_code == 3, (result.aborted, err.getvalue()[-1500:])
    assert "no usable answer" in (result.aborted or "") and "TOO_MANY_REQUESTS" in result.aborted
    assert "no usable answer from Zoho for" in err.getvalue()  # said while it waited
    got = read_results(tmp_path / "out.csv")
    assert {r["status"] for r in got} == {"not_sent"}
    assert {(r["code"], r["attempts"]) for r in got} == {("", "0")}  # a 429 did nothing
    again = run_job(settings(tmp_path, inp), live.env, stream=io.StringIO())
    assert again.exit_code == 0, again.aborted
    assert set(live.sandbox.removed) == set(rows)


def _wrong_url(answer: httpx.Response, seen: list[str]) -> httpx.MockTransport:
    """An API domain that is wrong (another data centre's, or no Zoho API at all): every call,
    un-enrol or cadence listing, gets ``answer``."""
    def handle(request: httpx.Request) -> httpx.Response:
        seen.append(request.method)
        return answer
    return httpx.MockTransport(handle)


_NOT_HERE = {
    "json": httpx.Response(404, json={"code": "INVALID_URL_PATTERN", "details": {},
                                      "message": "Please check if the URL trying to access is a "
                                                 "correct one", "status": "error"}),
    "html": httpx.Response(404, html="<html><body><h1>404 Not Found</h1></body></html>"),
    "redirect": httpx.Response(301, headers={"Location": "https://www.zohoapis.eu/crm/v7"}),
    # found by trying: a plain web server at the domain (python -m http.server, a static site)
    # answers a POST 501 "Unsupported method"; taken for an outage, every batch was sent six
    # times (a credit each) for two minutes before the run stopped
    "not_implemented": httpx.Response(
        501, html="<html><body><h1>Error response</h1><p>Error code: 501</p>"
                  "<p>Message: Unsupported method ('POST').</p></body></html>"),
}


@pytest.mark.slow
@pytest.mark.parametrize("answer", list(_NOT_HERE))
@pytest.mark.parametrize("preflight", [False, True], ids=["sending", "preflight"])
def test_a_wrong_api_domain_stops_the_run_at_once_naming_it(tmp_path, serve, answer, preflight):
    """Found by reading: Zoho's JSON INVALID_URL_PATTERN failed every call's rows for good (not
    retryable: a re-run after fixing --dc would not send them), while a proxy's 404 page
    failed them retryably — each call after the other, the whole list. Both say the URL is
    wrong, and every call would get the same: the run stops (exit 3) after the first answer,
    naming the domain; no row is failed, and the same command resumes once the domain is right."""
    rows = make_rows(300, 3)
    live = serve(World.from_pairs(rows))
    inp = write_pairs(tmp_path / "in.csv", rows)
    seen: list[str] = []
    err = io.StringIO()

    result = run_job(settings(tmp_path, inp, preflight=preflight, quiet=False),
                     live.env, transports=Transports(api=_wrong_url(_NOT_HERE[answer], seen)),
                     stream=err)

    assert result.exit_code == 3, result.aborted
    [line] = abort_lines(err.getvalue())
    assert live.base_url in line and "ZOHO_DC" in line and "URL is wrong" in line, line
    assert len(seen) <= RunSettings.concurrency  # the calls already in flight, at most
    assert seen[0] == ("GET" if preflight else "POST")
    assert_all_not_sent(tmp_path / "out.csv", len(rows))


# ------------------------------------------------------------------- a host that is no Zoho API


@pytest.fixture
def not_zoho():
    """A real web server at the API domain that is no Zoho API (a company site, a web filter):
    what it answers has none of Zoho's JSON, under statuses Zoho answers with (set per test)."""
    with _canned((200, "text/html", b"")) as server:
        yield server


_NOT_ZOHO_ANSWERS = {
    "400 HTML": (400, "text/html", b"<html><body><h1>400 Bad Request</h1></body></html>"),
    "200 HTML": (200, "text/html", b"<!doctype html><html><title>Welcome</title></html>"),
    "400 JSON of another API": (400, "application/json", b'{"error": "no such route"}'),
}


@pytest.mark.slow
@pytest.mark.parametrize("answer", list(_NOT_ZOHO_ANSWERS))
@pytest.mark.parametrize("preflight", [False, True], ids=["no-preflight", "preflight"])
def test_cli_a_host_that_is_no_zoho_api_stops_the_run_as_a_wrong_domain(tmp_path, not_zoho,
                                                                         answer, preflight):
    """Found by trying: with --no-preflight, a 400 page failed every row retryably (exit 1, a
    call per batch), a 200 page was retried six times a batch; the preflight said "could not
    read the org's cadences: HTTP_400". Now: exit 3, one line naming the domain and what to
    check, every row not_sent, and no more than a few calls."""
    not_zoho.answer = _NOT_ZOHO_ANSWERS[answer]
    api = f"http://127.0.0.1:{not_zoho.server_address[1]}"
    rows = make_rows(60, 2)
    inp = write_pairs(tmp_path / "in.csv", rows)
    results = tmp_path / "out.csv"
    argv = [str(inp), "--results", str(results), "--concurrency", "2",
            *([] if preflight else ["--no-preflight"])]

    proc, _ = _cli(tmp_path, argv, {"ZOHO_API_DOMAIN": api, "ZOHO_ACCESS_TOKEN": "tok-123"},
                   outage_after=5.0)

    assert proc.returncode == 3, proc.stderr
    assert "Traceback" not in proc.stderr + proc.stdout
    [line] = abort_lines(proc.stderr)
    assert api in line and "ZOHO_DC" in line and "ZOHO_API_DOMAIN" in line, line
    assert "no answer of Zoho's API" in line and "URL is wrong" in line, line
    assert "proxy, captive portal or web filter" in line, line  # the network may be the cause
    assert_all_not_sent(results, len(rows))
    posts, gets = not_zoho.requests.get("POST", 0), not_zoho.requests.get("GET", 0)
    assert (posts == 0) == preflight and 0 < posts + gets <= 4, not_zoho.requests
