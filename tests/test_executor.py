"""The executor against scripted answers (httpx.MockTransport) and a real SQLite journal."""

from __future__ import annotations

import asyncio
import json
import sqlite3
from dataclasses import replace

import httpx
import pyarrow as pa
import pytest

from batcher.errors import (
    AbortError,
    BatcherError,
    BudgetExhausted,
    MachineLimit,
    PermissionDenied,
    WaitTooLong,
    ZohoUnreachable,
)
from batcher.executor import Executor, ExecutorSettings
from batcher.journal import Journal
from batcher.models import Batch
from batcher.retry import RetryPolicy

API = "https://www.zohoapis.com"
FAST = RetryPolicy(attempts=3, base=0.001, max_wait=0.01, min_wait_on_zero_retry_after=0.001)


def rid(i: int) -> str:
    return str(554023000001000000 + i)


def cid(j: int) -> str:
    return str(554023000004000000 + j)


def journal_with(tmp_path, batches: list[Batch]) -> Journal:
    rows = [(b.module, r, c, b.batch_id) for b in batches for r, c in b.pairs()]
    table = pa.table({
        "row": list(range(1, len(rows) + 1)),
        "module": [r[0] for r in rows], "record_id": [r[1] for r in rows],
        "cadence_id": [r[2] for r in rows], "status": ["valid"] * len(rows),
        "code": pa.nulls(len(rows), pa.string()), "reason": pa.nulls(len(rows), pa.string()),
        "batch_id": [r[3] for r in rows],
    })
    j = Journal.open(tmp_path / "job.journal", "fp")
    j.load(table, batches)
    return j


def success(ids, cadences):
    return {"data": [{"code": "SUCCESS", "status": "success", "message": "ok",
                      "details": {"id": i, "cadences": [{"id": c, "name": "x"} for c in cadences]}}
                     for i in ids]}


def results(j: Journal) -> dict[tuple[str, str], dict]:
    out = {}
    for chunk in j.iter_result_chunks():
        for row in chunk.to_pylist():
            out[(row["record_id"], row["cadence_id"])] = row
    return out


def run(j: Journal, handler, **settings) -> tuple[Executor, list[dict]]:
    sent: list[dict] = []

    def record(request: httpx.Request) -> httpx.Response:
        body = json.loads(request.content)
        sent.append(body)
        return handler(body)

    async def go() -> Executor:
        client = httpx.AsyncClient(transport=httpx.MockTransport(record))
        settings.setdefault("retry", FAST)
        ex = Executor(client, j, ExecutorSettings(**settings), api_domain=lambda: API)
        try:
            await ex.run(j.pending_batches())
        finally:
            await client.aclose()
        return ex

    return asyncio.run(go()), sent


def test_unlocated_error_is_isolated_by_splitting(tmp_path):
    """INVALID_DATA without a json_path: split until the culprit pair stands alone."""
    bad = rid(37)
    batch = Batch("b000000", "Leads", tuple(rid(i) for i in range(60)), (cid(0), cid(1)))
    j = journal_with(tmp_path, [batch])

    def handler(body):
        if bad in body["ids"]:
            return httpx.Response(400, json={"code": "INVALID_DATA", "details": {},
                                             "message": "invalid", "status": "error"})
        return httpx.Response(200, json=success(body["ids"], body["cadences_ids"]))

    run(j, handler)
    res = results(j)
    assert {k: v["status"] for k, v in res.items() if k[0] == bad} == {
        (bad, cid(0)): "failed", (bad, cid(1)): "failed"}
    assert all(v["status"] == "unenrolled" for k, v in res.items() if k[0] != bad)
    assert all(v["code"] == "INVALID_DATA" for k, v in res.items() if k[0] == bad)


INVALID = {"code": "INVALID_DATA", "details": {}, "message": "invalid", "status": "error"}


@pytest.mark.parametrize("bad_kind", ["record", "cadence"])
def test_an_unlocated_refusal_of_a_full_batch_is_isolated_within_the_bound(tmp_path, bad_kind):
    """A 100 x 5 batch refused as a whole without a json_path used to cost up to 999 calls.

    The bound the executor keeps: 4 x (cadences + ceil(log2 records)) + 2 extra calls, 50 here;
    one unknown cadence is found in a handful (cadences are split first), one unknown record in
    about 2 x log2(100) + a few.
    """
    records = tuple(rid(i) for i in range(100))
    cadences = tuple(cid(j) for j in range(5))
    bad = records[61] if bad_kind == "record" else cadences[3]
    j = journal_with(tmp_path, [Batch("b000000", "Leads", records, cadences)])

    def handler(body):
        if bad in body["ids"] or bad in body["cadences_ids"]:
            return httpx.Response(400, json=INVALID)
        return httpx.Response(200, json=success(body["ids"], body["cadences_ids"]))

    _, sent = run(j, handler)
    res = results(j)
    culprit = {k for k in res if bad in k}
    assert {res[k]["status"] for k in culprit} == {"failed"}
    assert {res[k]["code"] for k in culprit} == {"INVALID_DATA"}
    assert {v["status"] for k, v in res.items() if k not in culprit} == {"unenrolled"}
    assert len(sent) <= 1 + 50
    assert len(sent) <= (8 if bad_kind == "cadence" else 30), len(sent)
    # no call ever named a pair twice after it was answered
    answered = [(tuple(b["ids"]), tuple(b["cadences_ids"])) for b in sent
                if bad not in b["ids"] and bad not in b["cadences_ids"]]
    pairs = [(r, c) for ids, cads in answered for r in ids for c in cads]
    assert len(pairs) == len(set(pairs))


def test_when_the_bound_is_spent_the_rest_fails_without_a_verdict(tmp_path):
    """Unknown ids everywhere: the isolation stops at its bound; nothing is claimed."""
    records = tuple(rid(i) for i in range(100))
    cadences = tuple(cid(j) for j in range(5))
    j = journal_with(tmp_path, [Batch("b000000", "Leads", records, cadences)])
    _, sent = run(j, lambda body: httpx.Response(400, json=INVALID))
    res = results(j)
    assert len(sent) <= 1 + 50
    assert {v["status"] for v in res.values()} == {"failed"}
    assert any("not isolated" in v["message"] for v in res.values())


def test_rejected_cadence_fails_its_pairs_and_the_rest_is_resent(tmp_path):
    batch = Batch("b000000", "Leads", (rid(1), rid(2)), (cid(0), cid(1), cid(2)))
    j = journal_with(tmp_path, [batch])

    def handler(body):
        if cid(1) in body["cadences_ids"]:
            j_ = body["cadences_ids"].index(cid(1))
            return httpx.Response(400, json={"data": [{
                "code": "NOT_ALLOWED", "status": "error", "message": "not manual",
                "details": {"api_name": "cadences_ids", "json_path": f"$.cadences_ids[{j_}]"}}]})
        return httpx.Response(200, json=success(body["ids"], body["cadences_ids"]))

    _, sent = run(j, handler)
    res = results(j)
    assert [res[(r, cid(1))]["code"] for r in (rid(1), rid(2))] == ["NOT_ALLOWED"] * 2
    assert {res[(r, c)]["status"] for r in (rid(1), rid(2)) for c in (cid(0), cid(2))} == {
        "unenrolled"}
    assert len(sent) == 2 and sent[1]["cadences_ids"] == [cid(0), cid(2)]


def test_a_batch_an_earlier_run_sent_shows_every_send_and_hedges_not_enrolled(tmp_path):
    # the earlier run sent b000000 and stopped before its answer was recorded (a signal, a
    # kill -9): this run sends it again, and the rows say both calls carried them
    batch = Batch("b000000", "Leads", (rid(1), rid(2)), (cid(0),))
    j = journal_with(tmp_path, [batch])
    j.mark_sent(batch.batch_id)
    j.close()
    j = Journal.open(tmp_path / "job.journal", "fp")
    answer = success([rid(1)], [cid(0)])  # rid(2): already gone, maybe by the lost call
    answer["data"].append({"code": "SUCCESS", "status": "success", "message": "ok",
                           "details": {"id": rid(2), "cadences": []}})
    _, sent = run(j, lambda body: httpx.Response(200, json=answer))
    res = results(j)
    assert len(sent) == 1
    assert [res[(r, cid(0))]["status"] for r in (rid(1), rid(2))] == ["unenrolled",
                                                                      "not_enrolled"]
    assert {res[(r, cid(0))]["attempts"] for r in (rid(1), rid(2))} == {2}
    assert "an earlier attempt of this call" in res[(rid(2), cid(0))]["message"]
    # counted apart from records that were never in the cadence
    assert [res[(r, cid(0))]["code"] for r in (rid(1), rid(2))] == ["SUCCESS",
                                                                    "AFTER_UNANSWERED_SEND"]


@pytest.mark.parametrize("first,hedged", [
    (httpx.Response(500, json={"code": "INTERNAL_ERROR", "status": "error"}), True),
    (httpx.Response(429, json={"code": "TOO_MANY_REQUESTS", "status": "error"},
                    headers={"Retry-After": "0"}), False),
])
def test_not_enrolled_is_hedged_only_after_a_send_that_may_have_been_applied(tmp_path, first,
                                                                             hedged):
    """Found by trying: rows a lost answer's call removed ended `not_enrolled` `SUCCESS`,
    counted with records that were never in the cadence. A send refused outright (429) did
    nothing, and casts no doubt."""
    j = journal_with(tmp_path, [Batch("b000000", "Leads", (rid(1), rid(2)), (cid(0),))])
    answer = success([rid(1)], [cid(0)])
    answer["data"].append({"code": "SUCCESS", "status": "success", "message": "ok",
                           "details": {"id": rid(2), "cadences": []}})
    answers = iter([first])
    _, sent = run(j, lambda body: next(answers, None) or httpx.Response(200, json=answer))
    row = results(j)[(rid(2), cid(0))]
    assert len(sent) == 2 and row["status"] == "not_enrolled"
    assert row["code"] == ("AFTER_UNANSWERED_SEND" if hedged else "SUCCESS")
    assert ("an earlier attempt" in row["message"]) is hedged


def test_a_call_whose_token_could_not_be_had_is_no_call_and_costs_no_credit(tmp_path):
    """Found by trying: once the refreshes were locked out, every run aborted — and logged a
    call and a credit that never left the machine (status said 17 calls, Zoho had seen 10)."""
    from batcher.config import Credentials, Endpoints
    from batcher.errors import AuthError
    from batcher.zoho.auth import ZohoAuth

    j = journal_with(tmp_path, [Batch("b000000", "Leads", (rid(1),), (cid(0),))])
    seen: list[httpx.Request] = []
    refused = httpx.MockTransport(lambda r: httpx.Response(400, json={"error": "invalid_code"}))
    auth = ZohoAuth(Credentials(client_id="1000.C", client_secret="s3cr3t-value",
                                refresh_token="1000.refresh-value"),
                    Endpoints(api_domain=API, accounts_url="https://accounts.zoho.com"),
                    transport=refused)

    async def go() -> Executor:
        api = httpx.MockTransport(lambda r: seen.append(r) or httpx.Response(200, json={}))
        async with httpx.AsyncClient(transport=api, auth=auth) as client:
            ex = Executor(client, j, ExecutorSettings(retry=FAST), api_domain=lambda: API)
            with pytest.raises(AuthError):
                await ex.run(j.pending_batches())
            return ex

    ex = asyncio.run(go())
    assert seen == []
    assert ex.counters.calls == 0
    assert j.counters().get("calls", 0) == 0 and j.counters().get("credits", 0) == 0


@pytest.mark.parametrize("refresh", ["none", "refused", "same answer", "accounts down"])
def test_a_call_answered_invalid_token_was_refused_not_maybe_applied(tmp_path, refresh):
    """A call answered INVALID_TOKEN reached Zoho and was refused outright: when no fresh token
    can be had (none to refresh with, the refresh refused, the accounts server down) or the
    fresh one is refused too, its rows stay plain ``not_sent`` — not "sent, Zoho may have
    applied it", which also made a later run's "not enrolled" answer AFTER_UNANSWERED_SEND —
    and every send is a call (a re-send with a fresh token was not counted; with the accounts
    server down, the call answered was counted as never sent)."""
    from batcher.config import Credentials, Endpoints
    from batcher.zoho.auth import ZohoAuth

    j = journal_with(tmp_path, [Batch("b000000", "Leads", (rid(1),), (cid(0),))])
    token = httpx.MockTransport(lambda r: httpx.Response(200, json={
        "access_token": "1000.fresh-token-value", "expires_in": 3600})
        if refresh == "same answer" else httpx.Response(503) if refresh == "accounts down"
        else httpx.Response(400, json={"error": "invalid_code"}))
    seen: list[httpx.Request] = []
    creds = (Credentials(access_token="1000.stale-token-value") if refresh == "none" else
             Credentials(client_id="1000.C", client_secret="s3cr3t-value",
                         refresh_token="1000.refresh-value",
                         access_token="1000.stale-token-value"))
    auth = ZohoAuth(creds, Endpoints(api_domain=API, accounts_url="https://accounts.zoho.com"),
                    transport=token)

    async def go() -> None:
        api = httpx.MockTransport(lambda r: seen.append(r) or httpx.Response(401, json={
            "code": "INVALID_TOKEN", "details": {}, "message": "invalid oauth token",
            "status": "error"}))
        async with httpx.AsyncClient(transport=api, auth=auth) as client:
            with pytest.raises(BatcherError):  # an accounts server down: a short outage
                await Executor(client, j, ExecutorSettings(retry=replace(FAST, outage_after=0.3)),
                               api_domain=lambda: API).run(j.pending_batches())

    asyncio.run(go())
    row = results(j)[(rid(1), cid(0))]
    assert row["status"] == "not_sent" and "may have applied" not in (row["message"] or ""), row
    assert j.counters().get("calls", 0) == len(seen) >= 1  # each left, and was answered
    # and each is in the call log, the page's timeline: it held one of two
    assert j.counters()["calls_logged"] == len(seen)


def test_a_call_sent_again_with_a_fresh_token_is_two_calls_in_the_log_too(tmp_path):
    """Found by trying: a call answered INVALID_TOKEN and sent again with a fresh token counted
    two calls (and credits) but logged one: the page's calls and its timeline disagreed."""
    from batcher.config import Credentials, Endpoints
    from batcher.zoho.auth import ZohoAuth

    j = journal_with(tmp_path, [Batch("b000000", "Leads", (rid(1),), (cid(0),))])
    token = httpx.MockTransport(lambda r: httpx.Response(200, json={
        "access_token": "1000.fresh-token-value", "expires_in": 3600}))
    auth = ZohoAuth(Credentials(client_id="1000.C", client_secret="s3cr3t-value",
                                refresh_token="1000.refresh-value",
                                access_token="1000.stale-token-value"),
                    Endpoints(api_domain=API, accounts_url="https://accounts.zoho.com"),
                    transport=token)
    seen: list[httpx.Request] = []

    def api(request: httpx.Request) -> httpx.Response:
        seen.append(request)
        if "stale" in request.headers["Authorization"]:
            return httpx.Response(401, json={"code": "INVALID_TOKEN", "details": {},
                                             "message": "invalid oauth token",
                                             "status": "error"})
        return httpx.Response(200, json=success([rid(1)], [cid(0)]))

    async def go() -> None:
        async with httpx.AsyncClient(transport=httpx.MockTransport(api), auth=auth) as client:
            await Executor(client, j, ExecutorSettings(retry=FAST),
                           api_domain=lambda: API).run(j.pending_batches())

    asyncio.run(go())
    assert results(j)[(rid(1), cid(0))]["status"] == "unenrolled"
    counters = j.counters()
    assert len(seen) == counters["calls"] == counters["calls_logged"] == 2
    with sqlite3.connect(j.path) as db:
        assert sorted(r[0] for r in db.execute("SELECT http_status FROM calls")) == [200, 401]


def test_server_errors_are_retried_then_failed_retryable(tmp_path):
    j = journal_with(tmp_path, [Batch("b000000", "Leads", (rid(1),), (cid(0),))])
    _, sent = run(j, lambda body: httpx.Response(500, json={
        "code": "INTERNAL_SERVER_ERROR", "details": {}, "message": "Internal Server Error",
        "status": "error"}))
    row = results(j)[(rid(1), cid(0))]
    assert len(sent) == FAST.attempts
    assert (row["status"], row["retryable"], row["attempts"]) == ("failed", True, FAST.attempts)
    # the next night's round sends it once more: the row counts every send, not that round's
    assert j.requeue_retryable(max_rounds=3) == 1
    _, sent = run(j, lambda body: httpx.Response(200, json=success(body["ids"],
                                                                   body["cadences_ids"])))
    row = results(j)[(rid(1), cid(0))]
    assert len(sent) == 1
    assert (row["status"], row["attempts"]) == ("unenrolled", FAST.attempts + 1)


#: a body that says it is gzip and is not: what a broken proxy or a damaged transfer gives
BROKEN_GZIP = {"headers": {"Content-Encoding": "gzip"},
               "stream": httpx.ByteStream(b"\x1f\x8b\x08\x00" + b"x" * 40)}


def test_an_answer_whose_gzip_cannot_be_decoded_is_retried_like_a_cut_one(tmp_path):
    """Found by trying: httpx's DecodingError is no TransportError, so one damaged body stopped
    the whole run as "the worker task failed" (a bug's words) instead of being retried."""
    j = journal_with(tmp_path, [Batch("b000000", "Leads", (rid(1),), (cid(0),))])
    answers = [httpx.Response(200, **BROKEN_GZIP)]
    _, sent = run(j, lambda body: answers.pop(0) if answers else httpx.Response(
        200, json=success(body["ids"], body["cadences_ids"])))
    row = results(j)[(rid(1), cid(0))]
    assert (row["status"], row["attempts"], len(sent)) == ("unenrolled", 2, 2)


def test_answers_that_never_decode_are_an_outage_not_a_crash(tmp_path):
    j = journal_with(tmp_path, [Batch("b000000", "Leads", (rid(1),), (cid(0),))])
    policy = RetryPolicy(attempts=3, base=0.001, max_wait=0.01, outage_after=0.2)
    with pytest.raises(ZohoUnreachable, match="DecodingError"):
        run(j, lambda body: httpx.Response(200, **BROKEN_GZIP), retry=policy)
    assert {r["status"] for r in results(j).values()} == {"not_sent"}


def test_no_socket_left_stops_the_run_as_a_machine_limit_not_an_outage(tmp_path):
    """`ulimit -n` reached: every connection fails at once, locally. Not Zoho down (retried
    for minutes, then "Zoho gave no usable answer"): the run stops at the first, unsent."""
    j = journal_with(tmp_path, [Batch(f"b{i:06d}", "Leads", (rid(i),), (cid(0),))
                                for i in range(5)])

    def no_socket(body):
        raise httpx.ConnectError("[Errno 24] Too many open files")

    with pytest.raises(MachineLimit, match="ran out of room"):
        run(j, no_socket, retry=RetryPolicy(attempts=3, base=5, max_wait=5))
    assert {v["status"] for v in results(j).values()} == {"not_sent"}
    assert j.counters()["calls"] == 0


def test_proxy_pages_from_everywhere_are_an_outage_not_failed_rows(tmp_path):
    """Zoho down behind its proxy: nobody gets an answer, so no row fails; the run stops."""
    batches = [Batch(f"b{i:06d}", "Leads", (rid(i),), (cid(0),)) for i in range(3)]
    j = journal_with(tmp_path, batches)
    policy = RetryPolicy(attempts=3, base=0.001, max_wait=0.01, outage_after=0.3)
    with pytest.raises(ZohoUnreachable, match="HTTP_503"):
        run(j, lambda body: httpx.Response(503, text="<html>503 Service Unavailable"),
            retry=policy)
    assert {r["status"] for r in results(j).values()} == {"not_sent"}
    assert j.counters()["calls"] > 3  # they reached a proxy: calls and credits all the same


#: what a host at the API domain that is no Zoho API answers an un-enrol POST with, under a
#: status Zoho itself answers with
_FOREIGN = {
    "400 HTML": lambda: httpx.Response(400, html="<html><h1>400 Bad Request</h1></html>"),
    "400 text": lambda: httpx.Response(400, text="Bad Request"),
    "400 JSON of another API": lambda: httpx.Response(400, json={"error": "invalid_request"}),
    "200 HTML": lambda: httpx.Response(200, html="<!doctype html><title>Welcome</title>"),
    "200 JSON of another API": lambda: httpx.Response(200, json={"ok": True}),
    "403 HTML of a web filter": lambda: httpx.Response(403, html="<html>Blocked</html>"),
}


@pytest.mark.parametrize("answer", list(_FOREIGN))
def test_answers_no_zoho_api_gives_stop_the_run_as_a_wrong_domain(tmp_path, answer):
    """Found by trying --no-preflight against a host that is no Zoho API: a 400 page failed
    every row (one call each, exit 1), a 200 page was retried six times a batch before failing
    its rows. Three such answers in a row say the domain is wrong: the run stops, naming it and
    what to check, with no row failed (re-running resumes once the domain is right)."""
    batches = [Batch(f"b{i:06d}", "Leads", (rid(i),), (cid(0),)) for i in range(20)]
    j = journal_with(tmp_path, batches)
    with pytest.raises(AbortError) as stop:
        _, sent = run(j, lambda body: _FOREIGN[answer](),
                      retry=RetryPolicy(attempts=6, base=0.001, max_wait=0.01), concurrency=2)
    text = str(stop.value)
    assert API in text and "ZOHO_DC" in text and "URL is wrong" in text, text
    assert "3 calls in a row" in text and "no answer of Zoho's API" in text, text
    assert {r["status"] for r in results(j).values()} == {"not_sent"}
    assert j.counters()["calls"] <= 4  # the streak, and a call already in flight


def test_a_one_off_page_from_a_proxy_is_retried_not_a_wrong_domain(tmp_path):
    """Zoho answers, with now and then a page from something on the way (even twice in a row):
    retried, every row unenrolled, the run not stopped."""
    batches = [Batch(f"b{i:06d}", "Leads", (rid(i),), (cid(0),)) for i in range(10)]
    j = journal_with(tmp_path, batches)
    calls = {"n": 0}

    def handler(body):
        calls["n"] += 1
        if calls["n"] % 4 in (1, 2):  # two pages in a row, then two answers of Zoho's
            return httpx.Response(400 if calls["n"] % 8 == 1 else 200, html="<html>oops</html>")
        return httpx.Response(200, json=success(body["ids"], body["cadences_ids"]))

    run(j, handler, retry=RetryPolicy(attempts=6, base=0.001, max_wait=0.01), concurrency=1)
    assert {r["status"] for r in results(j).values()} == {"unenrolled"}


def test_proxy_5xx_pages_between_foreign_answers_neither_count_nor_excuse_them(tmp_path):
    """A 502 page says nothing of the domain: between two foreign 400 pages, the streak goes
    on; the 5xx pages themselves never make one (an outage, per DESIGN §1)."""
    batches = [Batch(f"b{i:06d}", "Leads", (rid(i),), (cid(0),)) for i in range(4)]
    j = journal_with(tmp_path, batches)
    calls = {"n": 0}

    def handler(body):
        calls["n"] += 1
        if calls["n"] % 2:
            return httpx.Response(400, html="<html>Bad Request</html>")
        return httpx.Response(502, html="<html>Bad Gateway</html>")

    with pytest.raises(AbortError, match="3 calls in a row"):
        run(j, handler, retry=RetryPolicy(attempts=6, base=0.001, max_wait=0.01),
            concurrency=1)
    assert calls["n"] == 5


def test_budget_stops_cleanly_and_keeps_the_answers_in_flight(tmp_path):
    batches = [Batch(f"b{i:06d}", "Leads", (rid(i),), (cid(0),)) for i in range(10)]
    j = journal_with(tmp_path, batches)
    with pytest.raises(BudgetExhausted):
        run(j, lambda b: httpx.Response(200, json=success(b["ids"], b["cadences_ids"])),
            max_calls=4, concurrency=2)
    statuses = [r["status"] for r in results(j).values()]
    assert statuses.count("unenrolled") == 4 and statuses.count("not_sent") == 6


def test_scope_mismatch_aborts_the_job(tmp_path):
    j = journal_with(tmp_path, [Batch("b000000", "Leads", (rid(1),), (cid(0),))])
    with pytest.raises(PermissionDenied, match="ZohoCRM.modules"):
        run(j, lambda b: httpx.Response(401, json={
            "code": "OAUTH_SCOPE_MISMATCH", "details": {}, "message": "invalid oauth scope",
            "status": "error"}))
    assert results(j)[(rid(1), cid(0))]["status"] == "not_sent"


@pytest.mark.parametrize("code, status", [("LIMIT_EXCEEDED", 400), ("NO_PERMISSION", 403),
                                          ("OAUTH_SCOPE_MISMATCH", 401), ("NO_PERMISSION", 200),
                                          ("LIMIT_EXCEEDED", 207)])
@pytest.mark.parametrize("concurrency", [1, 3])
def test_no_call_leaves_after_an_answer_that_stops_the_job(tmp_path, code, status, concurrency):
    """An answer that stops the job (credits spent, no permission; under an error status or
    not) is judged before its slot is taken by another call: with every slot's call answered
    so, no call more leaves (one did: the worker woken by the freed slot sent its call before
    the answer was read)."""
    batches = [Batch(f"b{i:06d}", "Leads", (rid(i),), (cid(0),)) for i in range(20)]
    j = journal_with(tmp_path, batches)
    sent = []

    async def refuse(request: httpx.Request) -> httpx.Response:
        sent.append(request)
        await asyncio.sleep(0.02)  # the other workers wait for a slot meanwhile
        return httpx.Response(status, json={"code": code, "details": {}, "message": "refused",
                                            "status": "error"})

    async def go() -> None:
        async with httpx.AsyncClient(transport=httpx.MockTransport(refuse)) as client:
            await Executor(client, j, ExecutorSettings(retry=FAST, concurrency=concurrency),
                           api_domain=lambda: API).run(j.pending_batches())

    with pytest.raises(BatcherError):
        asyncio.run(go())
    assert len(sent) == concurrency
    assert {r["status"] for r in results(j).values()} == {"not_sent"}


def test_429_lowers_concurrency(tmp_path):
    batches = [Batch(f"b{i:06d}", "Leads", (rid(i),), (cid(0),)) for i in range(12)]
    j = journal_with(tmp_path, batches)
    calls = {"n": 0}

    def handler(body):
        calls["n"] += 1
        if calls["n"] % 3 == 0:
            return httpx.Response(429, json={"code": "TOO_MANY_REQUESTS", "details": {},
                                             "message": "too many", "status": "error"},
                                  headers={"Retry-After": "0"})
        return httpx.Response(200, json=success(body["ids"], body["cadences_ids"]))

    ex, _ = run(j, handler, concurrency=4)
    assert ex.lowest_concurrency < 4
    assert ex.counters.throttled >= 1
    assert {r["status"] for r in results(j).values()} == {"unenrolled"}


def test_calls_in_flight_never_exceed_the_concurrency(tmp_path):
    """More workers than slots keep the slots busy, but the limiter still bounds the calls."""
    batches = [Batch(f"b{i:06d}", "Leads", (rid(i),), (cid(0), cid(1))) for i in range(30)]
    j = journal_with(tmp_path, batches)
    in_flight, peak = 0, 0

    async def handler(request: httpx.Request) -> httpx.Response:
        nonlocal in_flight, peak
        in_flight += 1
        peak = max(peak, in_flight)
        await asyncio.sleep(0.005)
        in_flight -= 1
        body = json.loads(request.content)
        return httpx.Response(200, json=success(body["ids"], body["cadences_ids"]))

    async def go() -> Executor:
        async with httpx.AsyncClient(transport=httpx.MockTransport(handler)) as client:
            ex = Executor(client, j, ExecutorSettings(retry=FAST, concurrency=3),
                          api_domain=lambda: API)
            await ex.run(j.pending_batches())
            return ex

    ex = asyncio.run(go())
    assert peak == 3
    assert ex.counters.calls == 30 and ex.counters.pairs_done == 60
    assert {r["status"] for r in results(j).values()} == {"unenrolled"}
    assert list(j.pending_batches()) == []


def test_a_retry_after_longer_than_the_job_waits_aborts_naming_it(tmp_path):
    """Retry-After is honoured in full up to RetryPolicy.longest_wait; beyond it, the job stops
    (resumable) instead of sleeping for hours or retrying early."""
    batches = [Batch(f"b{i:06d}", "Leads", (rid(i),), (cid(0),)) for i in range(4)]
    j = journal_with(tmp_path, batches)
    throttled = {"code": "TOO_MANY_REQUESTS", "details": {}, "message": "too many",
                 "status": "error"}
    with pytest.raises(WaitTooLong, match="20 min"):
        run(j, lambda b: httpx.Response(429, json=throttled, headers={"Retry-After": "1200"}))
    assert {r["status"] for r in results(j).values()} == {"not_sent"}
    assert list(j.pending_batches()) == batches  # resumable: every batch still to send
