from __future__ import annotations

import asyncio
import json
import time

import httpx
import pytest

from batcher.errors import AuthError, PermissionDenied, TransientError
from batcher.models import Status
from batcher.zoho.api import (
    MAX_ANSWER_BYTES,
    Answered,
    Fatal,
    Rejected,
    TokenInvalid,
    Transient,
    Unlocated,
    build_request,
    classify,
    read_answer,
    send_unenrol,
)

R = ("554023000001798647", "554023000001798648", "554023000001798649")
C = ("554023000004092008", "554023000004092009")
NOW = 1_700_000_000.0

F, U, N, D = Status.FAILED, Status.UNENROLLED, Status.NOT_ENROLLED, Status.SCHEDULED


def ok(record, cadences=C):
    return {"code": "SUCCESS", "status": "success", "message": "records manually unenrolled",
            "details": {"id": record, "cadences": [{"name": "n", "id": c} for c in cadences]}}


def err(code, message="m", **details):
    return {"code": code, "details": details, "message": message, "status": "error"}


def every(status, code, retryable=False):
    return {(i, j): (status, code, retryable) for i in range(len(R)) for j in range(len(C))}


def summary(answer):
    """Answered → {(record idx, cadence idx): (status, code, retryable)}; other classes as is."""
    if not isinstance(answer, Answered):
        return answer
    pairs = [(o.record_id, o.cadence_id) for o in answer.outcomes]
    assert sorted(pairs) == sorted((r, c) for r in R for c in C), "every pair exactly once"
    return {(R.index(o.record_id), C.index(o.cadence_id)): (o.status, o.code, o.retryable)
            for o in answer.outcomes}


CASES = [
    # --- per-record answers (200 / 207)
    ("all unenrolled", 200, {"data": [ok(r) for r in R]}, {}, every(U, "SUCCESS")),
    ("cadence not listed -> not_enrolled", 200,
     {"data": [ok(R[0]), ok(R[1], C[:1]), ok(R[2], [])]}, {},
     {**every(U, "SUCCESS"), (1, 1): (N, "SUCCESS", False), (2, 0): (N, "SUCCESS", False),
      (2, 1): (N, "SUCCESS", False)}),
    ("207 mixed, error entry located by json_path", 207,
     {"data": [ok(R[0]), err("INVALID_DATA", "given id seems to be invalid", api_name="ids",
                            json_path="$.ids[1]"), ok(R[2])]}, {},
     {**every(U, "SUCCESS"), (1, 0): (F, "INVALID_DATA", False),
      (1, 1): (F, "INVALID_DATA", False)}),
    ("entries out of order matched by details.id", 200,
     {"data": [ok(R[2], []), ok(R[0]), ok(R[1], C[1:])]}, {},
     {**every(U, "SUCCESS"), (2, 0): (N, "SUCCESS", False), (2, 1): (N, "SUCCESS", False),
      (1, 0): (N, "SUCCESS", False)}),
    ("entries without ids matched by position", 207,
     {"data": [{"code": "SUCCESS", "status": "success", "details": {"cadences": [{"id": C[0]}]}},
               err("INVALID_DATA"), {"code": "SUCCESS", "status": "success",
                                     "details": {"cadences": []}}]}, {},
     {(0, 0): (U, "SUCCESS", False), (0, 1): (N, "SUCCESS", False),
      (1, 0): (F, "INVALID_DATA", False), (1, 1): (F, "INVALID_DATA", False),
      (2, 0): (N, "SUCCESS", False), (2, 1): (N, "SUCCESS", False)}),
    ("per-record internal error is retryable", 207,
     {"data": [ok(R[0]), ok(R[1]), {**err("INTERNAL_ERROR"), "details": {"id": R[2]}}]}, {},
     {**every(U, "SUCCESS"), (2, 0): (F, "INTERNAL_ERROR", True),
      (2, 1): (F, "INTERNAL_ERROR", True)}),
    ("record missing from the answer", 200, {"data": [ok(R[0]), ok(R[1])]}, {},
     {**every(U, "SUCCESS"), (2, 0): (F, "MISSING_IN_ANSWER", True),
      (2, 1): (F, "MISSING_IN_ANSWER", True)}),
    ("empty data list", 200, {"data": []}, {}, every(F, "MISSING_IN_ANSWER", True)),
    ("400 with one error entry per record", 400,
     {"data": [err("INVALID_DATA", json_path=f"$.ids[{i}]") for i in range(3)]}, {},
     every(F, "INVALID_DATA")),
    # --- accepted for later
    ("202 scheduled", 202,
     {"data": [{"code": "SCHEDULED", "details": {}, "message": "in progress.",
                "status": "success"}]}, {}, every(D, "SCHEDULED")),
    # --- the v8 per-cadence shape
    ("v8 per cadence", 200,
     {"cadences": [{"code": "success", "details": {}, "message": "records manually unenrolled",
                    "status": "success"}, err("NOT_ALLOWED")]}, {},
     {**every(U, "SUCCESS"), **{(i, 1): (F, "NOT_ALLOWED", False) for i in range(3)}}),
    # fewer entries than cadences and no ids: position says nothing (DESIGN.md "Behaviour on
    # answers"); this case used to give the first cadence to the lone entry
    ("v8 per cadence, entry missing", 200,
     {"cadences": [{"code": "success", "details": {}, "status": "success"}]}, {},
     every(F, "MISSING_IN_ANSWER", True)),
    ("v8 per cadence, entry missing, entries named by id", 200,
     {"cadences": [{"code": "success", "details": {"id": C[0]}, "status": "success"}]}, {},
     {**every(U, "SUCCESS"), **{(i, 1): (F, "MISSING_IN_ANSWER", True) for i in range(3)}}),
    # --- final whole-request errors: every pair failed, not retryable
    ("MANDATORY_NOT_FOUND top level", 400,
     err("MANDATORY_NOT_FOUND", "required field not found", api_name="ids"), {},
     every(F, "MANDATORY_NOT_FOUND")),
    ("MANDATORY_NOT_FOUND wrapped", 400,
     {"data": [err("MANDATORY_NOT_FOUND", api_name="ids", json_path="$.ids")]}, {},
     every(F, "MANDATORY_NOT_FOUND")),
    ("LIMIT_EXCEEDED", 400, err("LIMIT_EXCEEDED", limit=100, limit_due_to="ids"), {},
     every(F, "LIMIT_EXCEEDED")),
    ("LIMIT_EXCEEDED wrapped", 400, {"data": [err("LIMIT_EXCEEDED", limit=5,
                                                  limit_due_to="cadences_ids")]}, {},
     every(F, "LIMIT_EXCEEDED")),
    ("INVALID_MODULE", 400, err("INVALID_MODULE", "the module name given seems to be invalid"),
     {}, every(F, "INVALID_MODULE")),
    ("unknown 4xx code", 400, err("SOMETHING_NEW"), {}, every(F, "SOMETHING_NEW")),
    # --- the URL is wrong (another data centre's domain, no Zoho API there): every call would
    # get the same, whatever the body says; the run stops (found by reading: a JSON
    # INVALID_URL_PATTERN failed each call's rows for good, a proxy's 404 page failed them
    # retryably, call after call)
    ("INVALID_URL_PATTERN", 404, err("INVALID_URL_PATTERN"), {},
     Fatal("INVALID_URL_PATTERN", "m", 404, wrong_url=True)),
    ("INVALID_URL_PATTERN wrapped, under 400", 400, {"data": [err("INVALID_URL_PATTERN")]}, {},
     Fatal("INVALID_URL_PATTERN", "m", 400, wrong_url=True)),
    ("404 HTML page from a proxy", 404, b"<html>not found</html>", {},
     Fatal("HTTP_404", "HTTP 404 with an HTML page", 404, wrong_url=True)),
    ("404 empty", 404, b"", {}, Fatal("HTTP_404", "HTTP 404 with empty body", 404, wrong_url=True)),
    ("404 JSON of another code", 404, err("NOT_FOUND", "no such thing"), {},
     Fatal("NOT_FOUND", "no such thing", 404, wrong_url=True)),
    ("405 from a host that is no Zoho API", 405, b"Method Not Allowed", {},
     Fatal("HTTP_405", "HTTP 405 with a body that is not a Zoho answer", 405, wrong_url=True)),
    ("410 for a retired API version", 410, b"", {},
     Fatal("HTTP_410", "HTTP 410 with empty body", 410, wrong_url=True)),
    # success entries under a status Zoho does not answer entries with are no evidence
    ("404 carrying success entries", 404, {"data": [ok(r) for r in R]}, {},
     Fatal("HTTP_404", "HTTP 404 with a body that is not a Zoho answer", 404, wrong_url=True)),
    ("201 carrying success entries", 201, {"data": [ok(r) for r in R]}, {},
     Transient("UNPARSEABLE_ANSWER", "HTTP 201 with a body that is not a Zoho answer", 201)),
    # --- located rejections
    ("INVALID_DATA top level names a record", 400,
     err("INVALID_DATA", api_name="ids", json_path="$.ids[1]"), {},
     Rejected(frozenset({1}), frozenset(), "INVALID_DATA", "m (api_name=ids, json_path=$.ids[1])",
              400)),
    ("INVALID_DATA wrapped names a cadence", 400,
     {"data": [err("INVALID_DATA", api_name="cadences_ids", json_path="$.cadences_ids[1]")]}, {},
     Rejected(frozenset(), frozenset({1}), "INVALID_DATA",
              "m (api_name=cadences_ids, json_path=$.cadences_ids[1])", 400)),
    ("NOT_ALLOWED top level names a cadence", 400,
     err("NOT_ALLOWED", "", json_path="$.cadences_ids[0]"), {},
     Rejected(frozenset(), frozenset({0}), "NOT_ALLOWED", "json_path=$.cadences_ids[0]", 400)),
    ("INVALID_DATA names a cadence by id", 400, err("INVALID_DATA", "", id=C[1]), {},
     Rejected(frozenset(), frozenset({1}), "INVALID_DATA", "", 400)),
    # --- unlocated rejections
    ("NOT_ALLOWED wrapped without details", 400, {"data": [err("NOT_ALLOWED", "not allowed")]},
     {}, Unlocated("NOT_ALLOWED", "not allowed", 400)),
    ("INVALID_DATA top level without path", 400, err("INVALID_DATA", "invalid data"), {},
     Unlocated("INVALID_DATA", "invalid data", 400)),
    ("INVALID_DATA path out of range", 400, err("INVALID_DATA", "", json_path="$.ids[7]"), {},
     Unlocated("INVALID_DATA", "json_path=$.ids[7]", 400)),
    ("INVALID_DATA ambiguous array name", 400, err("INVALID_DATA", "x", api_name="ids"), {},
     Unlocated("INVALID_DATA", "x (api_name=ids)", 400)),
    # --- transient
    ("429 with Retry-After", 429, err("TOO_MANY_REQUESTS", "limit"), {"Retry-After": "12"},
     Transient("TOO_MANY_REQUESTS", "limit", 429, 12.0, True)),
    ("429 empty body with reset header", 429, b"", {"X-RATELIMIT-RESET": str(int(NOW + 4))},
     Transient("TOO_MANY_REQUESTS", "HTTP 429 with empty body", 429, 4.0, True)),
    ("TOO_MANY_REQUESTS under another status", 400, {"data": [err("TOO_MANY_REQUESTS", "t")]},
     {}, Transient("TOO_MANY_REQUESTS", "t", 400, None, True)),
    ("INTERNAL_SERVER_ERROR", 500, err("INTERNAL_SERVER_ERROR", "boom"), {},
     Transient("INTERNAL_SERVER_ERROR", "boom", 500, None, False)),
    ("INTERNAL_ERROR under 400", 400, err("INTERNAL_ERROR", "oops"), {},
     Transient("INTERNAL_ERROR", "oops", 400, None, False)),
    ("502 HTML from a proxy", 502, b"<!DOCTYPE html><h1>Bad gateway</h1>", {"Retry-After": "0"},
     Transient("HTTP_502", "HTTP 502 with an HTML page", 502, 0.0, False)),
    ("504 empty", 504, b"", {}, Transient("HTTP_504", "HTTP 504 with empty body", 504)),
    ("200 HTML", 200, b"<html>maintenance</html>", {},
     Transient("UNPARSEABLE_ANSWER", "HTTP 200 with an HTML page", 200, foreign=True)),
    ("200 truncated JSON", 200, b'{"data": [{"code": "SUC', {},
     Transient("UNPARSEABLE_ANSWER", "HTTP 200 with a body that is not a Zoho answer", 200,
               foreign=True)),
    ("200 JSON of unknown shape", 200, {"hello": 1}, {},
     Transient("UNPARSEABLE_ANSWER", "HTTP 200 with a body that is not a Zoho answer", 200,
               foreign=True)),
    # --- answers no Zoho API gives under a status it answers with (a host at the domain that
    # is no Zoho API, a web filter): retried, and marked so that a streak of them stops the
    # run (ForeignStreak); they used to fail every row (400) or be retried as Zoho's (200)
    ("400 HTML page", 400, b"<html><h1>400 Bad Request</h1></html>", {},
     Transient("HTTP_400", "HTTP 400 with an HTML page", 400, foreign=True)),
    ("400 plain text", 400, b"Bad Request", {},
     Transient("HTTP_400", "HTTP 400 with a body that is not a Zoho answer", 400, foreign=True)),
    ("400 JSON without Zoho's shape", 400, {"error": "bad request", "message": "no route"}, {},
     Transient("HTTP_400", "no route", 400, foreign=True)),
    ("400 empty", 400, b"", {}, Transient("HTTP_400", "HTTP 400 with empty body", 400,
                                         foreign=True)),
    ("401 HTML page", 401, b"<html>login</html>", {},
     Transient("HTTP_401", "HTTP 401 with an HTML page", 401, foreign=True)),
    ("202 HTML page", 202, b"<!doctype html><p>ok</p>", {},
     Transient("UNPARSEABLE_ANSWER", "HTTP 202 with an HTML page", 202, foreign=True)),
    ("408 proxy timeout", 408, b"", {}, Transient("HTTP_408", "HTTP 408 with empty body", 408)),
    # --- token and fatal
    ("INVALID_TOKEN", 401, err("INVALID_TOKEN", "invalid oauth token"), {}, TokenInvalid(401)),
    ("OAUTH_SCOPE_MISMATCH", 401, err("OAUTH_SCOPE_MISMATCH", "invalid oauth scope"), {},
     Fatal("OAUTH_SCOPE_MISMATCH", "invalid oauth scope", 401)),
    ("NO_PERMISSION wrapped", 403, {"data": [err("NO_PERMISSION", "permission denied")]}, {},
     Fatal("NO_PERMISSION", "permission denied", 403)),
    ("AUTHENTICATION_FAILURE", 401, err("AUTHENTICATION_FAILURE", "auth failed"), {},
     Fatal("AUTHENTICATION_FAILURE", "auth failed", 401)),
    ("unknown 403 code", 403, err("FORBIDDEN_THING", "no"), {},
     Fatal("FORBIDDEN_THING", "no", 403)),
    # the org's daily credits: every further call is refused too; the job stops, resumable
    ("LIMIT_EXCEEDED of the org's credits", 400,
     err("LIMIT_EXCEEDED", "limit exceeded", limit=5000, limit_due_to="API credits per day"), {},
     Fatal("LIMIT_EXCEEDED", "limit exceeded (limit=5000, limit_due_to=API credits per day)",
           400)),
    ("LIMIT_EXCEEDED wrapped, no details", 400, {"data": [err("LIMIT_EXCEEDED", "x")]}, {},
     Fatal("LIMIT_EXCEEDED", "x", 400)),
    # the page's "or both" (too many cadence ids and record ids): limit_due_to as a list or as
    # paths is still the call's own limit; a list there was a TypeError out of classify
    ("LIMIT_EXCEEDED due to both arrays, as a list", 400,
     err("LIMIT_EXCEEDED", limit_due_to=["ids", "cadences_ids"]), {},
     every(F, "LIMIT_EXCEEDED")),
    ("LIMIT_EXCEEDED due to a path", 400, err("LIMIT_EXCEEDED", limit_due_to="$.cadences_ids"),
     {}, every(F, "LIMIT_EXCEEDED")),
    ("LIMIT_EXCEEDED due to an object", 400, err("LIMIT_EXCEEDED", "x", limit_due_to={"a": 1}),
     {}, Fatal("LIMIT_EXCEEDED", "x", 400)),
    ("LIMIT_EXCEEDED due to an empty list", 400, err("LIMIT_EXCEEDED", "x", limit_due_to=[]),
     {}, Fatal("LIMIT_EXCEEDED", "x", 400)),
]


@pytest.mark.parametrize("name, status, body, headers, expected", CASES,
                         ids=[c[0] for c in CASES])
def test_classify_table(name, status, body, headers, expected):
    raw = body if isinstance(body, bytes) else json.dumps(body).encode()
    assert summary(classify(R, C, status, headers, raw, now=NOW)) == expected


@pytest.mark.parametrize("records, cadences", [(101, 1), (1, 6), (101, 6)],
                         ids=["ids", "cadences_ids", "both"])
@pytest.mark.parametrize("wrapped", [False, True], ids=["top", "wrapped"])
def test_the_sandboxs_limit_exceeded_for_a_calls_own_arrays_fails_the_call_not_the_job(
        records, cadences, wrapped):
    """The sandbox answers a call over 100 record ids, over 5 cadence ids, or both, as the
    page says (``limit_due_to`` names one array, or both: it named the ids alone when both
    were over): each form is the call's own limit — its pairs fail, never an abort that says
    the org's credits are used up and stops the job."""
    from batcher.sandbox.unenrol import Answer, parse_body

    body = {"ids": [R[0]] * records, "cadences_ids": [C[0]] * cadences}
    answer = parse_body(json.dumps(body).encode(), lambda key: wrapped)
    assert isinstance(answer, Answer) and answer.code == "LIMIT_EXCEEDED"
    entry = answer.body["data"][0] if wrapped else answer.body
    due = entry["details"]["limit_due_to"]
    assert due == (["ids", "cadences_ids"] if records > 100 and cadences > 5
                   else "ids" if records > 100 else "cadences_ids")
    got = classify(R, C, answer.status, {}, json.dumps(answer.body).encode(), now=NOW)
    assert summary(got) == every(F, "LIMIT_EXCEEDED")


@pytest.mark.parametrize("due", [["$.ids", "$.cadences_ids"], "ids,cadences_ids",
                                 "ids, cadences_ids", "ids and cadences_ids", " ids "])
def test_limit_due_to_naming_the_calls_arrays_in_any_spelling_is_the_calls_own(due):
    """Both arrays named in one text ("ids,cadences_ids"), or as paths in a list, are still the
    call's own limit: read as the org's, the job stopped saying its credits were used up."""
    got = classify(R, C, 400, {}, json.dumps(err("LIMIT_EXCEEDED", limit_due_to=due)).encode(),
                   now=NOW)
    assert summary(got) == every(F, "LIMIT_EXCEEDED")


@pytest.mark.parametrize("due", ["API credits per day", "ids per day", "records, credits", ""])
def test_limit_due_to_naming_anything_else_is_the_orgs(due):
    got = classify(R, C, 400, {}, json.dumps(err("LIMIT_EXCEEDED", "x", limit_due_to=due)
                                             ).encode(), now=NOW)
    assert isinstance(got, Fatal) and got.code == "LIMIT_EXCEEDED"


@pytest.mark.parametrize("status, body", [(301, b""), (302, b"<html>moved</html>"),
                                          (307, json.dumps({"data": [ok(r) for r in R]}))])
def test_a_redirect_stops_the_run_at_once_naming_where_it_points(status, body):
    """Found by trying: a 3xx (another data centre's domain, http → https, a captive portal)
    was an UNPARSEABLE_ANSWER "with empty body", sent again and again (each send a call) before
    its rows failed. It is never followed (the token stays with the configured domain), and
    every call would meet it: the run stops, as for a wrong URL."""
    raw = body if isinstance(body, bytes) else body.encode()
    headers = {"Location": "https://login.example.net/sso?token=abc#x"}
    answer = classify(R, C, status, headers, raw)
    assert isinstance(answer, Fatal) and answer.wrong_url and answer.code == f"HTTP_{status}"
    message = str(answer.to_error("Leads", "https://www.zohoapis.com"))
    assert "redirect to https://login.example.net, not followed" in message
    assert "https://www.zohoapis.com" in message and "ZOHO_DC" in message
    assert "token=abc" not in message and "/sso" not in message


def test_answered_outcomes_keep_ids_messages_and_http_status():
    body = json.dumps({"data": [ok(R[0]), err("INVALID_DATA", "given id seems to be invalid",
                                              api_name="ids", json_path="$.ids[1]")]}).encode()
    answer = classify(R[:2], C[:1], 207, {}, body)
    assert isinstance(answer, Answered)
    first, second = answer.outcomes
    assert (first.record_id, first.cadence_id, first.message, first.http_status) == \
        (R[0], C[0], "records manually unenrolled", 207)
    assert second.message == "given id seems to be invalid (api_name=ids, json_path=$.ids[1])"
    assert all(isinstance(o.record_id, str) for o in answer.outcomes)


def test_ids_given_as_json_numbers_still_match():
    body = ('{"data":[{"code":"SUCCESS","status":"success","details":{"id":' + R[0]
            + ',"cadences":[{"id":' + C[0] + '}]}}]}').encode()
    answer = classify(R[:1], C[:1], 200, {}, body)
    assert answer.outcomes[0].status == Status.UNENROLLED


def test_single_record_error_entry_is_per_record_under_200_but_whole_under_400():
    body = json.dumps({"data": [err("INVALID_DATA", "no")]}).encode()
    per_record = classify(R[:1], C, 200, {}, body)
    assert isinstance(per_record, Answered)
    assert [(o.status, o.code) for o in per_record.outcomes] == [(F, "INVALID_DATA")] * 2
    assert classify(R[:1], C, 400, {}, body) == Unlocated("INVALID_DATA", "no", 400)


def test_single_entry_naming_a_cadence_is_never_a_per_record_verdict():
    body = json.dumps({"data": [err("NOT_ALLOWED", "no", json_path="$.cadences_ids[1]")]})
    for status in (200, 207, 400):
        answer = classify(R[:1], C, status, {}, body.encode())
        assert isinstance(answer, Rejected) and answer.bad_cadence_idx == {1}
        assert answer.bad_record_idx == frozenset()


def test_array_named_without_index_locates_a_lone_element():
    body = json.dumps(err("NOT_ALLOWED", "x", api_name="cadences_ids")).encode()
    assert classify(R, C[:1], 400, {}, body) == Rejected(
        frozenset(), frozenset({0}), "NOT_ALLOWED", "x (api_name=cadences_ids)", 400)


def test_transient_to_error():
    error = Transient("TOO_MANY_REQUESTS", "slow down", 429, 3.0, True).to_error()
    assert isinstance(error, TransientError)
    assert (error.code, error.http_status, error.retry_after, error.throttled) == \
        ("TOO_MANY_REQUESTS", 429, 3.0, True)


def test_fatal_to_error_says_what_to_fix():
    scope = Fatal("OAUTH_SCOPE_MISMATCH", "invalid oauth scope", 401).to_error("Leads")
    assert isinstance(scope, PermissionDenied) and scope.exit_code == 3
    assert "ZohoCRM.modules.CREATE" in str(scope) and "ZohoCRM.modules.Leads.CREATE" in str(scope)
    perm = Fatal("NO_PERMISSION", "permission denied", 403).to_error("Contacts")
    assert isinstance(perm, PermissionDenied) and "administrator" in str(perm)
    auth = Fatal("AUTHENTICATION_FAILURE", "x", 401).to_error()
    assert isinstance(auth, AuthError) and "ZOHO_DC" in str(auth)
    token = TokenInvalid().to_error()
    assert isinstance(token, AuthError) and "ZOHO_REFRESH_TOKEN" in str(token)


def test_build_request():
    url, body = build_request("https://www.zohoapis.eu/", "Partners__c", list(R), list(C))
    assert url == "https://www.zohoapis.eu/crm/v7/Partners__c/actions/unenrol_from_cadences"
    assert body == {"cadences_ids": list(C), "ids": list(R)}


@pytest.mark.parametrize("module, records, cadences", [
    ("Leads", [str(10**17 + i) for i in range(101)], ["1"]),
    ("Leads", ["1"], [str(i) for i in range(6)]),
    ("Leads", [], ["1"]),
    ("Leads", ["1"], []),
    ("Leads", [554023000001798647], ["1"]),
    ("Leads/../x", ["1"], ["1"]),
    ("", ["1"], ["1"]),
])
def test_build_request_refuses_what_zoho_would(module, records, cadences):
    with pytest.raises(ValueError):
        build_request("https://www.zohoapis.com", module, records, cadences)


def test_build_request_accepts_the_limits():
    url, body = build_request("https://x.zohoapis.com", "Leads",
                              [str(10**17 + i) for i in range(100)], [str(i) for i in range(5)])
    assert len(body["ids"]) == 100 and len(body["cadences_ids"]) == 5


def test_send_unenrol_posts_string_ids_and_classifies():
    seen = []

    def handler(request: httpx.Request) -> httpx.Response:
        seen.append((request.method, str(request.url), request.content))
        return httpx.Response(200, json={"data": [ok(R[0], C[:1])]})

    async def go():
        async with httpx.AsyncClient(transport=httpx.MockTransport(handler)) as client:
            return await send_unenrol(client, "https://www.zohoapis.com", "Leads", R[:1], C)

    answer = asyncio.run(go())
    method, url, content = seen[0]
    assert method == "POST"
    assert url == "https://www.zohoapis.com/crm/v7/Leads/actions/unenrol_from_cadences"
    assert json.loads(content) == {"cadences_ids": list(C), "ids": [R[0]]}
    assert f'"{R[0]}"' in content.decode()  # a JSON string, never a number
    assert [o.status for o in answer.outcomes] == [Status.UNENROLLED, Status.NOT_ENROLLED]


def test_the_usual_answer_is_one_group_of_every_pair():
    answer = classify(R, C, 200, {}, json.dumps({"data": [ok(r) for r in R]}).encode())
    assert isinstance(answer, Answered) and answer.pairs == len(R) * len(C)
    (group,) = answer.groups
    assert (group.record_ids, group.cadence_ids, group.status, group.code, group.http_status,
            group.retryable) == (R, C, U, "SUCCESS", 200, False)


def test_records_with_the_same_result_share_a_group():
    body = {"data": [ok(R[0], C[:1]), err("INVALID_DATA", json_path="$.ids[1]"), ok(R[2], C[:1])]}
    answer = classify(R, C, 207, {}, json.dumps(body).encode())
    assert {(g.record_ids, g.cadence_ids, g.status) for g in answer.groups} == {
        ((R[0], R[2]), C[:1], U), ((R[0], R[2]), C[1:], N), ((R[1],), C, F)}


def test_json_that_a_fast_parser_refuses_is_still_read():
    # a 20-digit JSON number (beyond 64 bits) and a NaN: valid for Python's json module
    body = ('{"data":[{"code":"SUCCESS","status":"success","message":"ok","details":{"id":"'
            + R[0] + '","n":NaN,"big":12345678901234567890,"cadences":[{"id":"' + C[0]
            + '"}]}}]}').encode()
    answer = classify(R[:1], C[:1], 200, {}, body)
    assert isinstance(answer, Answered) and answer.outcomes[0].status == U


# --- hostile answers (DESIGN.md "Behaviour on answers", invariant 8) --------------------------
# Each row: the call's records and cadences, the HTTP status and body, what every pair must get
# ({(record idx, cadence idx): (status, code, retryable)}) and how many entries were ignored.

X = ("9999999999999999999", "9999999999999999998", "9999999999999999997")  # not in any call
MISSING, UNPARSEABLE = (F, "MISSING_IN_ANSWER", True), (F, "UNPARSEABLE_ANSWER", True)
CONTRADICTED = UNPARSEABLE  # two different entries for one id


def pairs(records, cadences, value):
    return {(i, j): value for i in range(len(records)) for j in range(len(cadences))}


def ok_without_id(cadences=C):
    return {"code": "SUCCESS", "status": "success", "message": "records manually unenrolled",
            "details": {"cadences": [{"name": "n", "id": c} for c in cadences]}}


def per_cadence(cadence=None, **fields):
    entry = {"code": "success", "status": "success", "message": "records manually unenrolled",
             "details": {} if cadence is None else {"id": cadence}}
    return {**entry, **fields}


HOSTILE = [
    # --- wrong ids: an entry is evidence only for the record it names
    ("the brief's example: the only entry names another record",
     ("554023000001798001",), ("554023000004092001",), 200,
     b'{"data":[{"code":"SUCCESS","status":"success","details":{"id":"9999999999999999999",'
     b'"cadences":[{"id":"554023000004092001"}]}}]}', {(0, 0): MISSING}, 1),
    ("one entry names another record", R, C, 200, {"data": [ok(R[0]), ok(R[1]), ok(X[0])]},
     {**pairs(R, C, (U, "SUCCESS", False)), (2, 0): MISSING, (2, 1): MISSING}, 1),
    ("all entries name other records", R, C, 200, {"data": [ok(x) for x in X]},
     pairs(R, C, MISSING), 3),
    ("an error entry names another record", R, C, 207,
     {"data": [ok(R[0]), ok(R[1]), {**err("INVALID_DATA"), "details": {"id": X[0]}}]},
     {**pairs(R, C, (U, "SUCCESS", False)), (2, 0): MISSING, (2, 1): MISSING}, 1),
    ("an entry names a cadence of the call instead of a record", R[:1], C, 200,
     {"data": [ok(C[0])]}, pairs(R[:1], C, MISSING), 1),
    ("a float id matches nothing", R[:1], C[:1], 200,
     b'{"data":[{"code":"SUCCESS","status":"success","details":{"id":5.54023000001798647e17,'
     b'"cadences":[{"id":"554023000004092008"}]}}]}', {(0, 0): MISSING}, 1),
    # --- entries without a success (or error) status or code
    ("entries {}", R, C, 200, {"data": [{}, {}, {}]}, pairs(R, C, UNPARSEABLE), 0),
    ("entries with only details.id", R, C, 200, {"data": [{"details": {"id": r}} for r in R]},
     pairs(R, C, UNPARSEABLE), 0),
    ("entries listing the cadences but no status or code", R, C, 200,
     {"data": [{"details": {"id": r, "cadences": [{"id": c} for c in C]},
                "message": "records manually unenrolled"} for r in R]},
     pairs(R, C, UNPARSEABLE), 0),
    ("status success but an error code", R[:1], C, 200,
     {"data": [{**ok(R[0]), "code": "INVALID_DATA"}]}, pairs(R[:1], C, UNPARSEABLE), 0),
    ("status error but code SUCCESS", R[:1], C, 200,
     {"data": [{**ok(R[0]), "status": "error"}]}, pairs(R[:1], C, UNPARSEABLE), 0),
    ("status of another kind, no code", R[:1], C, 200,
     {"data": [{**ok(R[0]), "status": "done", "code": None}]}, pairs(R[:1], C, UNPARSEABLE), 0),
    ("a single {} for a one-record call is an entry, not a whole-request error", R[:1], C, 200,
     {"data": [{}]}, pairs(R[:1], C, UNPARSEABLE), 0),
    ("the same under 400", R[:1], C, 400, {"data": [{}]}, pairs(R[:1], C, UNPARSEABLE), 0),
    ("status Success in another case, no code", R[:1], C, 200,
     {"data": [{**ok(R[0]), "status": "SUCCESS", "code": None}]},
     pairs(R[:1], C, (U, "SUCCESS", False)), 0),
    ("code success in lower case, no status", R[:1], C, 200,
     {"data": [{**ok(R[0]), "status": None, "code": "success"}]},
     pairs(R[:1], C, (U, "SUCCESS", False)), 0),
    ("a success without a cadences list removed nothing it can name", R[:1], C, 200,
     {"data": [{"code": "SUCCESS", "status": "success", "details": {"id": R[0]}}]},
     pairs(R[:1], C, (N, "SUCCESS", False)), 0),
    # --- too few entries
    ("too few entries, with ids", R, C, 200, {"data": [ok(R[0]), ok(R[2])]},
     {**pairs(R, C, (U, "SUCCESS", False)), (1, 0): MISSING, (1, 1): MISSING}, 0),
    ("too few entries, without ids", R, C, 200, {"data": [ok_without_id(), ok_without_id()]},
     pairs(R, C, MISSING), 2),
    # --- too many entries
    ("an extra entry for an unknown id", R, C, 200,
     {"data": [ok(R[0]), ok(X[0]), ok(R[1]), ok(R[2])]}, pairs(R, C, (U, "SUCCESS", False)), 1),
    # two entries for one record that disagree: the first spoke ("unenrolled"), or the error
    # did when it came first; neither is evidence, and neither named a record not in the call
    ("duplicate entries for one id that disagree: neither speaks", R, C, 200,
     {"data": [ok(R[0]), ok(R[0], []), ok(R[1])]},
     {**pairs(R, C, (U, "SUCCESS", False)), (0, 0): CONTRADICTED, (0, 1): CONTRADICTED,
      (2, 0): MISSING, (2, 1): MISSING}, 0),
    ("a success and an error for one id: neither speaks", R, C, 200,
     {"data": [ok(R[0]), {**err("INVALID_DATA"), "details": {"id": R[0]}}, ok(R[1]), ok(R[2])]},
     {**pairs(R, C, (U, "SUCCESS", False)), (0, 0): CONTRADICTED, (0, 1): CONTRADICTED}, 0),
    ("a duplicate cannot stand in for the record it displaced", R, C, 200,
     {"data": [ok(R[0]), ok(R[1]), ok(R[1])]},
     {**pairs(R, C, (U, "SUCCESS", False)), (2, 0): MISSING, (2, 1): MISSING}, 0),
    # --- position
    ("position only, as many entries as records: allowed", R, C, 200,
     {"data": [ok_without_id() for _ in R]}, pairs(R, C, (U, "SUCCESS", False)), 0),
    ("position only, one entry too many: not allowed", R, C, 200,
     {"data": [ok_without_id() for _ in range(4)]}, pairs(R, C, MISSING), 4),
    ("position only, one entry too few: not allowed", R, C, 200,
     {"data": [ok_without_id() for _ in range(2)]}, pairs(R, C, MISSING), 2),
    ("position is not used once any entry carries an id", R, C, 200,
     {"data": [ok(R[0]), ok_without_id(), ok_without_id()]},
     {**pairs(R, C, MISSING), (0, 0): (U, "SUCCESS", False), (0, 1): (U, "SUCCESS", False)}, 2),
    ("an id naming no record of the call also rules position out", R, C, 200,
     {"data": [ok_without_id(), ok_without_id(), ok(X[0])]}, pairs(R, C, MISSING), 3),
    ("a json_path locates an error entry", R, C, 207,
     {"data": [ok(R[0]), err("INVALID_DATA", json_path="$.ids[2]"), ok(R[1])]},
     {**pairs(R, C, (U, "SUCCESS", False)), (2, 0): (F, "INVALID_DATA", False),
      (2, 1): (F, "INVALID_DATA", False)}, 0),
    ("a json_path at its own position keeps position usable", R, C, 207,
     {"data": [ok_without_id(), err("INVALID_DATA", json_path="$.ids[1]"), ok_without_id()]},
     {**pairs(R, C, (U, "SUCCESS", False)), (1, 0): (F, "INVALID_DATA", False),
      (1, 1): (F, "INVALID_DATA", False)}, 0),
    ("a json_path that contradicts the order rules position out", R, C, 207,
     {"data": [ok_without_id(), ok_without_id(), err("INVALID_DATA", json_path="$.ids[0]")]},
     {**pairs(R, C, MISSING), (0, 0): (F, "INVALID_DATA", False),
      (0, 1): (F, "INVALID_DATA", False)}, 2),
    ("a json_path is no evidence of success", R, C, 200,
     {"data": [ok(R[0]), {**ok_without_id(), "details": {"json_path": "$.ids[1]",
                                                         "cadences": [{"id": c} for c in C]}},
               ok(R[2])]},
     {**pairs(R, C, (U, "SUCCESS", False)), (1, 0): MISSING, (1, 1): MISSING}, 1),
    # found by trying: an id that is a list or an object in the usual entry's cadences made
    # the whole run stop as a crashed task (TypeError: unhashable), and again on every re-run
    ("cadence ids that are lists or objects", R, C, 200,
     {"data": [{**ok(R[0]), "details": {"id": R[0], "cadences": [{"id": [c]} for c in C]}},
               {**ok(R[1]), "details": {"id": R[1], "cadences": [{"id": {"id": C[0]}},
                                                                {"id": C[1]}]}},
               ok(R[2])]},
     {**pairs(R, C, (U, "SUCCESS", False)), (0, 0): (N, "SUCCESS", False),
      (0, 1): (N, "SUCCESS", False), (1, 0): (N, "SUCCESS", False)}, 0),
    # --- non-dict entries
    ("non-dict entries among entries with ids", R, C, 200,
     {"data": [ok(R[0]), "junk", None, 7, [ok(R[1])], ok(R[1]), ok(R[2])]},
     pairs(R, C, (U, "SUCCESS", False)), 4),
    ("a non-dict entry among positional ones takes its place", R, C, 200,
     {"data": [ok_without_id(), "junk", ok_without_id()]},
     {**pairs(R, C, (U, "SUCCESS", False)), (1, 0): MISSING, (1, 1): MISSING}, 1),
    ("the only entry is not an object", R[:1], C, 200, {"data": ["SUCCESS"]},
     pairs(R[:1], C, MISSING), 1),
    # --- the v8 per-cadence shape
    ("v8 [{}] for one cadence", R, C[:1], 200, {"cadences": [{}]},
     pairs(R, C[:1], UNPARSEABLE), 0),
    ("v8 [{}] for two cadences: too few", R, C, 200, {"cadences": [{}]},
     pairs(R, C, MISSING), 1),
    ("v8 [{}, {}]", R, C, 200, {"cadences": [{}, {}]}, pairs(R, C, UNPARSEABLE), 0),
    ("v8 entry without status or code, named by id", R, C, 200,
     {"cadences": [{"details": {"id": C[0]}, "message": "records manually unenrolled"},
                   per_cadence(C[1])]},
     {**pairs(R, C, (U, "SUCCESS", False)), **{(i, 0): UNPARSEABLE for i in range(3)}}, 0),
    ("v8 fewer entries than cadences, without ids", R, C, 200, {"cadences": [per_cadence()]},
     pairs(R, C, MISSING), 1),
    ("v8 ids naming unknown cadences", R, C, 200,
     {"cadences": [per_cadence(X[0]), per_cadence(C[1])]},
     {**pairs(R, C, (U, "SUCCESS", False)), **{(i, 0): MISSING for i in range(3)}}, 1),
    ("v8 all ids unknown", R, C, 200, {"cadences": [per_cadence(X[0]), per_cadence(X[1])]},
     pairs(R, C, MISSING), 2),
    ("v8 a record id is not a cadence id", R, C, 200,
     {"cadences": [per_cadence(R[0]), per_cadence(R[1])]}, pairs(R, C, MISSING), 2),
    ("v8 out of order, matched by id", R, C, 200,
     {"cadences": [per_cadence(C[1]), {**err("NOT_ALLOWED"), "details": {"id": C[0]}}]},
     {**pairs(R, C, (U, "SUCCESS", False)), **{(i, 0): (F, "NOT_ALLOWED", False)
                                                for i in range(3)}}, 0),
    ("v8 duplicate entries for one cadence", R, C, 200,
     {"cadences": [per_cadence(C[0]), per_cadence(C[0])]},
     {**pairs(R, C, (U, "SUCCESS", False)), **{(i, 1): MISSING for i in range(3)}}, 0),
    ("v8 entries for one cadence that disagree", R, C, 200,
     {"cadences": [per_cadence(C[0]), {**err("NOT_ALLOWED"), "details": {"id": C[0]}},
                   per_cadence(C[1])]},
     {**pairs(R, C, (U, "SUCCESS", False)), **{(i, 0): CONTRADICTED for i in range(3)}}, 0),
    ("v8 position, as many entries as cadences: allowed", R, C, 200,
     {"cadences": [per_cadence(), err("NOT_ALLOWED")]},
     {**pairs(R, C, (U, "SUCCESS", False)), **{(i, 1): (F, "NOT_ALLOWED", False)
                                                for i in range(3)}}, 0),
    ("v8 non-dict entries", R, C, 200, {"cadences": ["x", per_cadence(C[1]), None]},
     {**pairs(R, C, (U, "SUCCESS", False)), **{(i, 0): MISSING for i in range(3)}}, 2),
    ("v8 status and code disagree", R, C[:1], 200,
     {"cadences": [per_cadence(code="NOT_ALLOWED")]}, pairs(R, C[:1], UNPARSEABLE), 0),
]


def by_index(answer, records, cadences):
    """Answered → {(record idx, cadence idx): (status, code, retryable)}, every pair once."""
    assert isinstance(answer, Answered), answer
    seen = [(o.record_id, o.cadence_id) for o in answer.outcomes]
    assert sorted(seen) == sorted((r, c) for r in records for c in cadences), \
        "every pair exactly once"
    return {(records.index(o.record_id), cadences.index(o.cadence_id)):
            (o.status, o.code, o.retryable) for o in answer.outcomes}


def _raw(body):
    return body if isinstance(body, bytes) else json.dumps(body).encode()


@pytest.mark.parametrize("name, records, cadences, status, body, expected, ignored", HOSTILE,
                         ids=[c[0] for c in HOSTILE])
def test_hostile_answers(name, records, cadences, status, body, expected, ignored):
    answer = classify(records, cadences, status, {}, _raw(body), now=NOW)
    assert by_index(answer, records, cadences) == expected
    assert answer.ignored_entries == ignored


@pytest.mark.parametrize("name, records, cadences, status, body, expected, ignored", HOSTILE,
                         ids=[c[0] for c in HOSTILE])
def test_hostile_answers_over_http(name, records, cadences, status, body, expected, ignored):
    """The same answers, read from the wire by send_unenrol."""

    def handler(request: httpx.Request) -> httpx.Response:
        return httpx.Response(status, content=_raw(body),
                              headers={"Content-Type": "application/json"})

    async def go():
        async with httpx.AsyncClient(transport=httpx.MockTransport(handler)) as client:
            return await send_unenrol(client, "https://www.zohoapis.com", "Leads", records,
                                      cadences)

    answer = asyncio.run(go())
    assert by_index(answer, records, cadences) == expected
    assert answer.ignored_entries == ignored


def test_ignored_entries_is_zero_for_a_clean_answer_and_whole_request_answers():
    clean = classify(R, C, 200, {}, json.dumps({"data": [ok(r) for r in R]}).encode())
    assert clean.ignored_entries == 0 and len(clean.groups) == 1  # still the fast path
    scheduled = classify(R, C, 202, {}, json.dumps(
        {"data": [{"code": "SCHEDULED", "details": {}, "status": "success"}]}).encode())
    assert scheduled.ignored_entries == 0
    assert Answered(()).ignored_entries == 0


def test_a_foreign_entry_shaped_like_the_usual_one_is_never_taken_for_a_record():
    # exactly the fast path's shape, for records of another call, in the positions of ours
    body = json.dumps({"data": [ok(X[0]), ok(R[1]), ok(X[2])]}).encode()
    answer = classify(R, C, 200, {}, body)
    assert {o.record_id for o in answer.outcomes if o.status == U} == {R[1]}
    assert answer.ignored_entries == 2


def _cases_without_evidence():
    from hypothesis import strategies as st

    record = st.sampled_from(R + X[:1])
    cadence_lists = st.lists(st.sampled_from(C + X[1:2]), max_size=3)
    status = st.sampled_from(["success", "Success", "error", "", None, "done"])
    code = st.sampled_from(["SUCCESS", "success", "SCHEDULED", "INVALID_DATA", "", None])
    details = st.fixed_dictionaries({}, optional={
        "id": record, "cadences": cadence_lists.map(lambda cs: [{"id": c} for c in cs]),
        "json_path": st.sampled_from(["$.ids[0]", "$.ids[1]", "$.ids[9]"])})
    entry = st.one_of(st.fixed_dictionaries({}, optional={"status": status, "code": code,
                                                          "details": details}),
                      st.sampled_from(["junk", None, 3]))
    return st.lists(entry, max_size=5)


def test_no_pair_is_unenrolled_without_an_entry_naming_its_record_and_cadence():
    """Invariant 8, as a property over answers built from hostile parts."""
    from hypothesis import given, settings

    def names(entry, record, cadence, position, entries):
        if not isinstance(entry, dict):
            return False
        details = entry.get("details") or {}
        status = str(entry.get("status") or "").lower()
        code = str(entry.get("code") or "").upper()
        success = (status == "success" and code in ("", "SUCCESS")) or \
            (status not in ("success", "error") and code == "SUCCESS")
        listed = any(c.get("id") == cadence for c in details.get("cadences") or [])
        by_id = details.get("id") == record
        by_position = (R.index(record) == position and len(entries) == len(R)
                       and not any(isinstance(e, dict) and (e.get("details") or {}).get("id")
                                   is not None for e in entries))
        return success and listed and (by_id or by_position)

    @settings(max_examples=500, deadline=None)
    @given(_cases_without_evidence())
    def check(entries):
        answer = classify(R, C, 200, {}, json.dumps({"data": entries}).encode())
        if not isinstance(answer, Answered):
            return
        for o in answer.outcomes:
            if o.status == U:
                assert any(names(e, o.record_id, o.cadence_id, p, entries)
                           for p, e in enumerate(entries)), (o, entries)

    check()


def test_each_usual_entry_is_judged_on_the_cadences_it_lists_itself():
    """Entries in Zoho's usual shape are judged in short, and an entry listing what the one
    before listed is not judged again; one listing fewer cadences, or none, than the entry
    before leaves its other pairs not un-enrolled all the same."""
    def entry(record, cadences):
        return {"code": "SUCCESS", "status": "success", "message": "records manually unenrolled",
                "details": {"cadences": [{"name": "x", "id": c} for c in cadences],
                            "id": record}}

    for listed in ([C, C[:1], ()], [(), C, C], [C[:1], C[:1], C]):
        body = json.dumps({"data": [entry(r, cs) for r, cs in zip(R, listed, strict=True)]})
        answer = classify(R, C, 200, {}, body.encode())
        removed = {(o.record_id, o.cadence_id) for o in answer.outcomes
                   if o.status == Status.UNENROLLED}
        assert removed == {(r, c) for r, cs in zip(R, listed, strict=True) for c in cs}


# --- answers too large to read ------------------------------------------------------------------

class _Chunks(httpx.AsyncByteStream):
    """A streamed body of ``count`` chunks of ``size`` bytes, that notes what was read."""

    def __init__(self, count: int, size: int = 64 * 1024):
        self.count, self.size, self.sent, self.closed = count, size, 0, False

    async def __aiter__(self):
        for _ in range(self.count):
            self.sent += 1
            yield b" " * self.size

    async def aclose(self) -> None:
        self.closed = True


def _read(stream=None, limit=MAX_ANSWER_BYTES, **response):
    async def go():
        transport = httpx.MockTransport(lambda request: httpx.Response(200, stream=stream,
                                                                       **response))
        async with httpx.AsyncClient(transport=transport) as client:
            request = client.build_request("POST", "https://www.zohoapis.com/x")
            answer = await client.send(request, stream=True)
            return await read_answer(answer, limit), answer

    return asyncio.run(go())


def test_max_answer_bytes_is_a_few_megabytes():
    assert MAX_ANSWER_BYTES == 4 * 1024 * 1024


def test_read_answer_stops_reading_a_streamed_body_over_the_limit():
    stream = _Chunks(count=10_000)  # 640 MB if it were read
    body, response = _read(stream)
    assert body is None
    assert response.is_closed and stream.closed
    assert stream.sent <= MAX_ANSWER_BYTES // stream.size + 2  # stopped as soon as it was over


def test_read_answer_returns_a_body_under_the_limit_whole():
    stream = _Chunks(count=3, size=1000)
    body, response = _read(stream, limit=3000)  # exactly at the limit is still read
    assert body == b" " * 3000 and stream.sent == 3
    body, _ = _read(_Chunks(count=3, size=1000), limit=2999)
    assert body is None


def test_read_answer_believes_a_content_length_over_the_limit_without_reading():
    stream = _Chunks(count=1, size=10)
    body, response = _read(stream, limit=100, headers={"Content-Length": "101"})
    assert body is None and stream.sent == 0 and response.is_closed


def test_read_answer_limits_the_decoded_body_not_the_compressed_one():
    import gzip
    packed = gzip.compress(b" " * 200_000)
    assert len(packed) < 1000
    body, _ = _read(content=packed, limit=100_000, headers={"Content-Encoding": "gzip"})
    assert body is None
    body, _ = _read(content=packed, limit=200_000, headers={"Content-Encoding": "gzip"})
    assert body == b" " * 200_000


def test_read_answer_times_out_a_body_that_trickles_in():
    """Found by trying: the read timeout bounds each read, so a body arriving a byte at a time
    (a broken proxy) held the call for as long as it trickled; the whole body now arrives within
    BODY_TIMEOUTS read timeouts, or the call timed out (and is retried as one)."""
    class Trickle(_Chunks):
        async def __aiter__(self):
            for _ in range(self.count):
                self.sent += 1
                await asyncio.sleep(0.02)
                yield b" "

    stream = Trickle(count=1000)

    async def go():
        transport = httpx.MockTransport(lambda request: httpx.Response(200, stream=stream))
        async with httpx.AsyncClient(transport=transport, timeout=0.1) as client:
            request = client.build_request("POST", "https://www.zohoapis.com/x")
            return await read_answer(await client.send(request, stream=True))

    started = time.monotonic()
    with pytest.raises(httpx.ReadTimeout, match="body took longer than 0.2 s"):
        asyncio.run(go())
    assert time.monotonic() - started < 1.0 and stream.closed and stream.sent < 50


def test_read_answer_reads_a_response_already_read():
    response = httpx.Response(200, content=b'{"data": []}')
    assert asyncio.run(read_answer(response)) == b'{"data": []}'
    assert asyncio.run(read_answer(httpx.Response(200, content=b"x" * 11), limit=10)) is None


def test_read_answer_lets_transport_errors_through_and_closes():
    class Broken(_Chunks):
        async def __aiter__(self):
            yield b"{"
            raise httpx.ReadError("connection reset")

    stream = Broken(count=0)
    with pytest.raises(httpx.ReadError):
        _read(stream)
    assert stream.closed


def test_a_body_too_large_is_transient():
    assert classify(R, C, 200, {}, None) == Transient(
        "ANSWER_TOO_LARGE", "HTTP 200 with a body over the size limit, not read", 200)
    throttled = classify(R, C, 429, {"Retry-After": "7"}, None, now=NOW)
    assert isinstance(throttled, Transient) and throttled.code == "ANSWER_TOO_LARGE"
    assert (throttled.retry_after, throttled.throttled) == (7.0, True)


def test_send_unenrol_does_not_read_a_huge_answer():
    stream = _Chunks(count=1000)  # 64 MB

    async def go():
        transport = httpx.MockTransport(lambda request: httpx.Response(200, stream=stream))
        async with httpx.AsyncClient(transport=transport) as client:
            return await send_unenrol(client, "https://www.zohoapis.com", "Leads", R, C)

    answer = asyncio.run(go())
    assert isinstance(answer, Transient) and answer.code == "ANSWER_TOO_LARGE"
    assert answer.http_status == 200 and stream.closed
    assert stream.sent * stream.size <= MAX_ANSWER_BYTES + 2 * stream.size


def test_a_long_retry_after_is_not_capped_by_classify():
    answer = classify(R, C, 429, {"Retry-After": "1200"}, json.dumps(
        err("TOO_MANY_REQUESTS", "limit")).encode(), now=NOW)
    assert answer == Transient("TOO_MANY_REQUESTS", "limit", 429, 1200.0, True)
    html = classify(R, C, 429, {"Retry-After": "1200"}, b"<html>slow down</html>", now=NOW)
    assert isinstance(html, Transient) and (html.retry_after, html.throttled) == (1200.0, True)
