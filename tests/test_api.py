from __future__ import annotations

import asyncio
import json

import httpx
import pytest

from batcher.errors import AuthError, PermissionDenied, TransientError
from batcher.models import Status
from batcher.zoho.api import (
    Answered,
    Fatal,
    Rejected,
    TokenInvalid,
    Transient,
    Unlocated,
    build_request,
    classify,
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
    ("v8 per cadence, entry missing", 200,
     {"cadences": [{"code": "success", "details": {}, "status": "success"}]}, {},
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
    ("LIMIT_EXCEEDED wrapped", 400, {"data": [err("LIMIT_EXCEEDED", limit=5)]}, {},
     every(F, "LIMIT_EXCEEDED")),
    ("INVALID_MODULE", 400, err("INVALID_MODULE", "the module name given seems to be invalid"),
     {}, every(F, "INVALID_MODULE")),
    ("INVALID_URL_PATTERN", 404, err("INVALID_URL_PATTERN"), {}, every(F, "INVALID_URL_PATTERN")),
    ("unknown 4xx code", 400, err("SOMETHING_NEW"), {}, every(F, "SOMETHING_NEW")),
    ("404 HTML page from a proxy", 404, b"<html>not found</html>", {},
     every(F, "HTTP_404", True)),
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
     Transient("UNPARSEABLE_ANSWER", "HTTP 200 with an HTML page", 200)),
    ("200 truncated JSON", 200, b'{"data": [{"code": "SUC', {},
     Transient("UNPARSEABLE_ANSWER", "HTTP 200 with a body that is not a Zoho answer", 200)),
    ("200 JSON of unknown shape", 200, {"hello": 1}, {},
     Transient("UNPARSEABLE_ANSWER", "HTTP 200 with a body that is not a Zoho answer", 200)),
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
]


@pytest.mark.parametrize("name, status, body, headers, expected", CASES,
                         ids=[c[0] for c in CASES])
def test_classify_table(name, status, body, headers, expected):
    raw = body if isinstance(body, bytes) else json.dumps(body).encode()
    assert summary(classify(R, C, status, headers, raw, now=NOW)) == expected


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
