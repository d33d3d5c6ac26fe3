"""The sandbox answers as DESIGN.md §1 says Zoho does, records the truth, and replays its faults."""

from __future__ import annotations

import asyncio
import contextlib
import inspect
import json
import os
import re
import signal
import subprocess
import sys
import threading
import time

import httpx
import pytest

from batcher.sandbox import CUSTOM_VIEW, SandboxConfig, World, create_app, running_sandbox
from batcher.sandbox.faults import PROFILES, FaultDice
from batcher.sandbox.serve import main, restartable_sandbox

from .conftest import REFRESH, SECRET

BASE = "http://sandbox"
CREDS = {"grant_type": "refresh_token", "client_id": "sandbox-client-id",
         "client_secret": "sandbox-client-secret", "refresh_token": "sandbox-refresh-token"}

# a hand-made org: R1 in C1 and C2, R2 in C1, R3 in nothing; CV refuses manual un-enrolment
R1, R2, R3, R4 = (f"55402300000010000{i}" for i in range(1, 5))
C1, C2, CV, C4 = (f"55402300000020000{i}" for i in range(1, 5))
UNKNOWN = "554023000000999999"


class FakeClock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def small_world() -> World:
    world = World.from_pairs([("Leads", R1, C1), ("Leads", R1, C2), ("Leads", R2, C1),
                              ("Contacts", R4, C4)])
    world.add_record("Leads", R3)
    world.add_cadence("Leads", CUSTOM_VIEW, cadence_id=CV, name="Views")
    return world


def entry(answer: httpx.Response) -> dict:
    """A whole-request error, in either of its forms (SandboxConfig.error_wrapping)."""
    body = answer.json()
    data = body.get("data")
    return data[0] if isinstance(data, list) and len(data) == 1 else body


def make(world: World | None = None, clock: FakeClock | None = None, **config):
    app = create_app(world or small_world(), SandboxConfig(**config), clock or time.monotonic)
    return app, app.state.sandbox


def send(app, method: str, path: str, token: str | None = None, **kwargs) -> httpx.Response:
    """One request through httpx.ASGITransport, as a client would send it."""
    headers = kwargs.pop("headers", {})
    if token is not None:
        headers["Authorization"] = f"Zoho-oauthtoken {token}"

    async def go() -> httpx.Response:
        async with httpx.AsyncClient(transport=httpx.ASGITransport(app), base_url=BASE) as client:
            return await client.request(method, path, headers=headers, **kwargs)

    return asyncio.run(go())


def unenrol(app, token: str, ids, cadences, module: str = "Leads") -> httpx.Response:
    return send(app, "POST", f"/crm/v7/{module}/actions/unenrol_from_cadences", token,
                json={"cadences_ids": cadences, "ids": ids})


def whole_error(body: dict) -> dict:
    """The error object of a whole-request refusal, bare or wrapped in data[]."""
    return body["data"][0] if "data" in body else body


# ---------------------------------------------------------------------------- OAuth


def test_refresh_grant_answers_token_with_own_api_domain():
    app, sb = make()
    answer = send(app, "POST", "/oauth/v2/token", data=CREDS)
    assert answer.status_code == 200
    body = answer.json()
    assert body["api_domain"] == BASE
    assert body["token_type"] == "Bearer" and body["expires_in"] == 3600
    assert unenrol(app, body["access_token"], [R2], [C1]).status_code == 200
    assert sb.refresh_count == 1


@pytest.mark.parametrize("field, value, expected", [
    ("client_id", "someone-else", "invalid_client"),
    ("client_secret", "wrong", "invalid_client"),
    ("refresh_token", "1000.revoked", "invalid_code"),
])
def test_bad_credentials_fail_with_http_200(field, value, expected):
    app, _ = make()
    answer = send(app, "POST", "/oauth/v2/token", data={**CREDS, field: value})
    assert answer.status_code == 200
    assert answer.json() == {"error": expected}


def test_token_fields_accepted_as_query_parameters():
    app, _ = make()
    assert "access_token" in send(app, "POST", "/oauth/v2/token", params=CREDS).json()


def test_eleventh_refresh_in_ten_minutes_is_denied_then_allowed_again():
    clock = FakeClock()
    app, sb = make(clock=clock)
    for _ in range(10):
        assert "access_token" in send(app, "POST", "/oauth/v2/token", data=CREDS).json()
        clock.now += 30
    denied = send(app, "POST", "/oauth/v2/token", data=CREDS).json()
    assert denied["error"] == "Access Denied"
    assert "too many requests continuously" in denied["error_description"]
    clock.now += 600 - 9 * 30  # the first refresh leaves the window
    assert "access_token" in send(app, "POST", "/oauth/v2/token", data=CREDS).json()
    assert sb.refresh_count == 12


def test_token_expires_after_ttl_and_revocation_kills_it():
    clock = FakeClock()
    app, sb = make(clock=clock, token_ttl=60)
    body = send(app, "POST", "/oauth/v2/token", data=CREDS).json()
    assert body["expires_in"] == 60
    token = body["access_token"]
    assert unenrol(app, token, [R3], [C1]).status_code == 200
    clock.now += 60
    expired = unenrol(app, token, [R2], [C1])
    assert expired.status_code == 401 and entry(expired)["code"] == "INVALID_TOKEN"
    fresh = sb.issue_token()
    sb.revoke_tokens()
    revoked = unenrol(app, fresh, [R2], [C1])
    assert revoked.status_code == 401 and entry(revoked)["code"] == "INVALID_TOKEN"
    assert (("Leads", R2, C1)) in sb.enrolled  # refused calls changed nothing


def test_authorization_header_must_be_zoho_oauthtoken():
    app, sb = make()
    token = sb.issue_token()
    path = "/crm/v7/Leads/actions/unenrol_from_cadences"
    body = {"cadences_ids": [C1], "ids": [R2]}
    bearer = send(app, "POST", path, json=body, headers={"Authorization": f"Bearer {token}"})
    assert bearer.status_code == 401 and entry(bearer)["code"] == "INVALID_TOKEN"
    missing = send(app, "POST", path, json=body)
    assert missing.status_code == 401 and entry(missing)["code"] == "AUTHENTICATION_FAILURE"


# ---------------------------------------------------------------------------- cadences


def test_cadences_are_paginated_until_no_more_records_then_204():
    world = World.generate(5, modules=("Leads",), records_per_module=3, manual_per_module=4,
                           custom_view_per_module=1)
    app, sb = make(world, cadence_page_size=2)
    token = sb.issue_token()
    seen, page = [], 1
    while True:
        answer = send(app, "GET", "/crm/v7/settings/automation/cadences", token,
                      params={"page": page, "per_page": 200})
        if answer.status_code == 204:
            break
        body = answer.json()
        assert body["info"]["per_page"] == 2 and body["info"]["page"] == page
        seen += body["cadences"]
        if not body["info"]["more_records"]:
            assert send(app, "GET", "/crm/v7/settings/automation/cadences", token,
                        params={"page": page + 1}).status_code == 204
            break
        page += 1
    assert page == 3 and len(seen) == 5
    assert {c["id"] for c in seen} == set(world.cadences)
    assert sorted(c["type"] for c in seen) == ["custom_view"] + ["manual_enrollment"] * 4
    assert all(c["module"]["api_name"] == "Leads" and isinstance(c["id"], str) for c in seen)


def test_no_cadences_answers_204_with_no_body():
    app, sb = make(World())
    answer = send(app, "GET", "/crm/v7/settings/automation/cadences", sb.issue_token())
    assert answer.status_code == 204 and answer.content == b""


def test_cadences_need_the_settings_scope():
    app, sb = make()
    token = sb.issue_token(scopes=["ZohoCRM.modules.ALL"])
    answer = send(app, "GET", "/crm/v7/settings/automation/cadences", token)
    assert answer.status_code == 401 and entry(answer)["code"] == "OAUTH_SCOPE_MISMATCH"


# ---------------------------------------------------------------------------- un-enrol


def test_success_lists_only_cadences_actually_removed():
    app, sb = make()
    answer = unenrol(app, sb.issue_token(), [R1, R2, R3], [C1, C2])
    assert answer.status_code == 200
    entries = answer.json()["data"]
    assert [e["details"]["id"] for e in entries] == [R1, R2, R3]
    assert all(e["code"] == "SUCCESS" and e["status"] == "success" for e in entries)
    removed = [{c["id"] for c in e["details"]["cadences"]} for e in entries]
    assert removed == [{C1, C2}, {C1}, set()]  # R3 was in nothing: success, nothing listed
    assert sb.removed == {("Leads", R1, C1), ("Leads", R1, C2), ("Leads", R2, C1)}
    again = unenrol(app, sb.issue_token(), [R1], [C1]).json()["data"][0]
    assert again["code"] == "SUCCESS" and again["details"]["cadences"] == []


def test_unknown_record_is_a_per_record_error_in_a_207():
    app, sb = make()
    answer = unenrol(app, sb.issue_token(), [R2, UNKNOWN, R4], [C1])
    assert answer.status_code == 207
    ok, bad, other_module = answer.json()["data"]
    assert ok["code"] == "SUCCESS"
    for i, entry in ((1, bad), (2, other_module)):
        assert entry["code"] == "INVALID_DATA" and entry["status"] == "error"
        assert entry["details"] == {"api_name": "ids", "json_path": f"$.ids[{i}]"}
    assert sb.removed == {("Leads", R2, C1)}
    all_bad = unenrol(app, sb.issue_token(), [UNKNOWN], [C1])
    assert all_bad.status_code == 400 and all_bad.json()["data"][0]["code"] == "INVALID_DATA"


@pytest.mark.parametrize("cadence, code", [(UNKNOWN, "INVALID_DATA"), (C4, "INVALID_DATA"),
                                           (CV, "NOT_ALLOWED")])
def test_bad_cadence_refuses_the_whole_call_and_names_it(cadence, code):
    app, sb = make()
    answer = unenrol(app, sb.issue_token(), [R1, R2], [C1, cadence])
    assert answer.status_code == 400
    err = whole_error(answer.json())
    assert err["code"] == code and err["status"] == "error"
    assert err["details"]["json_path"] == "$.cadences_ids[1]"
    assert sb.removed == set() and ("Leads", R1, C1) in sb.enrolled
    assert sb.named_pairs >= {("Leads", R1, cadence), ("Leads", R2, C1)}


def test_whole_request_errors_come_both_bare_and_wrapped_stably_per_seed():
    def shapes(seed: int, wrapping: str = "mixed") -> list[bool]:
        world = small_world()
        bad = [world.add_cadence("Leads", CUSTOM_VIEW).id for _ in range(12)]
        app, sb = make(world, seed=seed, error_wrapping=wrapping)
        token = sb.issue_token()
        return ["data" in unenrol(app, token, [R1], [c]).json() for c in bad]

    mixed = shapes(3)
    assert True in mixed and False in mixed
    assert shapes(3) == mixed
    assert shapes(3, "top") == [False] * 12 and shapes(3, "wrapped") == [True] * 12


@pytest.mark.parametrize("body, code, details", [
    ({"cadences_ids": [C1]}, "MANDATORY_NOT_FOUND", {"api_name": "ids", "json_path": "$.ids"}),
    ({"cadences_ids": [C1], "ids": []}, "MANDATORY_NOT_FOUND",
     {"api_name": "ids", "json_path": "$.ids"}),
    ({"ids": [R1]}, "MANDATORY_NOT_FOUND",
     {"api_name": "cadences_ids", "json_path": "$.cadences_ids"}),
    ({"cadences_ids": [C1], "ids": [R3] * 101}, "LIMIT_EXCEEDED",
     {"limit": 100, "limit_due_to": "ids"}),
    ({"cadences_ids": [C1] * 6, "ids": [R1]}, "LIMIT_EXCEEDED",
     {"limit": 5, "limit_due_to": "cadences_ids"}),
    # the page's "or both": limit_due_to names both arrays (it named the ids alone)
    ({"cadences_ids": [C1] * 6, "ids": [R3] * 101}, "LIMIT_EXCEEDED",
     {"limit": [100, 5], "limit_due_to": ["ids", "cadences_ids"]}),
    ({"cadences_ids": [C1], "ids": [R2, 554023000000100001]}, "INVALID_DATA",
     {"json_path": "$.ids[1]", "expected_data_type": "string"}),
])
def test_malformed_calls_are_refused_whole(body, code, details):
    app, sb = make()
    answer = send(app, "POST", "/crm/v7/Leads/actions/unenrol_from_cadences", sb.issue_token(),
                  json=body)
    assert answer.status_code == 400
    err = whole_error(answer.json())
    assert err["code"] == code
    assert details.items() <= err["details"].items()
    assert sb.removed == set()


def test_module_is_checked_and_matched_ignoring_case():
    app, sb = make()
    token = sb.issue_token()
    bad = unenrol(app, token, [R2], [C1], module="Nonsense")
    assert bad.status_code == 400 and entry(bad)["code"] == "INVALID_MODULE"
    assert unenrol(app, token, [R2], [C1], module="leads").status_code == 200
    assert sb.removed == {("Leads", R2, C1)}


def test_scopes_general_and_per_module():
    app, sb = make()
    contacts_only = sb.issue_token(scopes=["ZohoCRM.modules.Contacts.CREATE"])
    refused = unenrol(app, contacts_only, [R2], [C1])
    assert refused.status_code == 401 and entry(refused)["code"] == "OAUTH_SCOPE_MISMATCH"
    assert unenrol(app, contacts_only, [R4], [C4], module="Contacts").status_code == 200
    assert unenrol(app, sb.issue_token(scopes=["ZohoCRM.modules.CREATE"]), [R2], [C1]
                   ).status_code == 200


def test_credits_used_up_answer_429_too_many_requests_and_a_get_costs_one():
    """DESIGN.md §1, Limits: every call costs a credit (the cadence listing too) and a call over
    a limit is HTTP 429 TOO_MANY_REQUESTS; the sandbox answered an undocumented 400
    LIMIT_EXCEEDED and listed cadences for free."""
    app, sb = make(daily_credits=2)
    token = sb.issue_token()
    assert send(app, "GET", "/crm/v7/settings/automation/cadences", token).status_code == 200
    assert unenrol(app, token, [R2], [C1]).status_code == 200
    for answer in (unenrol(app, token, [R1], [C1]),
                   send(app, "GET", "/crm/v7/settings/automation/cadences", token)):
        assert answer.status_code == 429 and whole_error(answer.json())["code"] == \
            "TOO_MANY_REQUESTS"
    assert sb.removed == {("Leads", R2, C1)}
    app, sb = make(daily_credits=0, credits_exhausted="limit_exceeded")  # the opt-in reading
    answer = unenrol(app, sb.issue_token(), [R2], [C1])
    assert answer.status_code == 400 and entry(answer)["code"] == "LIMIT_EXCEEDED"


def test_no_permission_switch_answers_403():
    app, sb = make(no_permission=True)
    answer = unenrol(app, sb.issue_token(), [R2], [C1])
    assert answer.status_code == 403 and entry(answer)["code"] == "NO_PERMISSION"
    assert sb.removed == set()


def test_v8_shape_answers_one_entry_per_cadence():
    app, sb = make(answer_shape="v8")
    answer = unenrol(app, sb.issue_token(), [R1, R2], [C1, C2])
    assert answer.status_code == 200
    entries = answer.json()["cadences"]
    assert len(entries) == 2 and all(e["status"] == "success" for e in entries)
    assert sb.removed == {("Leads", R1, C1), ("Leads", R1, C2), ("Leads", R2, C1)}


def test_scheduled_answers_202_and_applies_now_or_later():
    app, sb = make(scheduled="now")
    answer = unenrol(app, sb.issue_token(), [R2], [C1])
    assert answer.status_code == 202
    assert answer.json()["data"][0]["code"] == "SCHEDULED"
    assert sb.removed == {("Leads", R2, C1)}

    clock = FakeClock()
    app, sb = make(clock=clock, scheduled="later", scheduled_delay=5)
    assert unenrol(app, sb.issue_token(), [R2], [C1]).status_code == 202
    assert sb.removed == set() and sb.pending == {("Leads", R2, C1)}
    clock.now += 5
    assert sb.removed == {("Leads", R2, C1)} and ("Leads", R2, C1) not in sb.enrolled


def test_unknown_path_is_invalid_url_pattern():
    app, sb = make()
    answer = send(app, "GET", "/crm/v7/Leads/nothing", sb.issue_token())
    assert answer.status_code == 404 and entry(answer)["code"] == "INVALID_URL_PATTERN"


# ---------------------------------------------------------------------------- limits


def test_concurrency_over_limit_answers_429_and_applies_nothing():
    world = World.from_pairs(("Leads", f"55402300000030000{i}", C1) for i in range(6))
    app, sb = make(world, concurrency_limit=2, latency=0.2)
    token = sb.issue_token()

    async def burst() -> list[httpx.Response]:
        async with httpx.AsyncClient(transport=httpx.ASGITransport(app), base_url=BASE) as c:
            return await asyncio.gather(*(
                c.post("/crm/v7/Leads/actions/unenrol_from_cadences",
                       headers={"Authorization": f"Zoho-oauthtoken {token}"},
                       json={"ids": [f"55402300000030000{i}"], "cadences_ids": [C1]})
                for i in range(6)))

    answers = asyncio.run(burst())
    statuses = sorted(a.status_code for a in answers)
    assert statuses == [200, 200, 429, 429, 429, 429]
    assert all(entry(a)["code"] == "TOO_MANY_REQUESTS" for a in answers if a.status_code == 429)
    assert sb.max_concurrency_seen == 3  # two in progress plus each refused newcomer
    assert len(sb.removed) == 2
    assert {c.applied for c in sb.calls if c.http_status == 429} == {False}


def test_rate_limit_per_second():
    clock = FakeClock()
    app, sb = make(clock=clock, rate_limit=3)
    token = sb.issue_token()
    assert [unenrol(app, token, [R3], [C1]).status_code for _ in range(4)] == [200] * 3 + [429]
    clock.now += 1.0
    assert unenrol(app, token, [R3], [C1]).status_code == 200


# ---------------------------------------------------------------------------- truth


def test_truth_records_every_call_and_is_served_as_json():
    app, sb = make()
    token = sb.issue_token()
    unenrol(app, token, [R1, UNKNOWN], [C1])
    unenrol(app, token, [R2], [CV])
    unenrol(app, "1000.not-a-token", [R3], [C2])
    calls = sb.calls
    assert [(c.http_status, c.code, c.applied) for c in calls] == [
        (207, "MIXED", True), (400, "NOT_ALLOWED", False), (401, "INVALID_TOKEN", False)]
    assert calls[0].removed == ((R1, C1),)
    assert sb.named_pairs == {("Leads", R1, C1), ("Leads", UNKNOWN, C1), ("Leads", R2, CV),
                              ("Leads", R3, C2)}
    truth = send(app, "GET", "/__sandbox__/truth").json()
    assert truth["removed"] == [["Leads", R1, C1]]
    assert ["Leads", R1, C1] not in truth["enrolled"] and ["Leads", R1, C2] in truth["enrolled"]
    assert len(truth["calls"]) == 3 and len(truth["named_pairs"]) == 4
    assert "sandbox-client-secret" not in json.dumps(truth)
    summary = send(app, "GET", "/__sandbox__/truth", params={"summary": 1}).json()
    assert summary["calls"] == 3 and summary["removed"] == 1 and summary["named_pairs"] == 4
    assert summary["calls_by_status"] == {"207": 1, "400": 1, "401": 1}


def test_world_round_trips_through_json_and_generate_is_reproducible(tmp_path):
    world = small_world()
    world.dump(tmp_path / "world.json")
    loaded = World.load(tmp_path / "world.json")
    assert loaded.enrollments == world.enrollments and loaded.cadences == world.cadences
    assert loaded.records == world.records
    a, b = World.generate(9), World.generate(9)
    assert a.enrollments == b.enrollments and a.enrollments != World.generate(10).enrollments
    assert all(len(r) == 18 and r.isdigit() for _, r, _ in a.enrollments)


def test_a_world_from_pairs_takes_a_module_in_any_case_as_one_module():
    world = World.from_pairs([("Partners__c", R1, C1), ("partners__c", R2, C1),
                              ("LEADS", R3, C2)])
    assert world.records == {"Partners__c": {R1, R2}, "Leads": {R3}}
    assert world.enrollments == {("Partners__c", R1, C1), ("Partners__c", R2, C1),
                                 ("Leads", R3, C2)}


# ---------------------------------------------------------------------------- faults


def fault_world() -> World:
    return World.from_pairs(("Leads", f"5540230000004{i:05d}", C1) for i in range(60))


def trace(profile: str, seed: int, calls: int = 60, **config) -> tuple[list, list, frozenset]:
    """For the same calls in the same order: what the client saw, the faults the server says it
    injected (kind, delayed), and what it removed."""
    app, sb = make(fault_world(), fault_profile=profile, seed=seed, slow_seconds=0.01, **config)
    token = sb.issue_token()
    seen = []

    async def go() -> None:
        async with httpx.AsyncClient(transport=httpx.ASGITransport(app), base_url=BASE) as c:
            for i in range(calls):
                try:
                    answer = await c.post("/crm/v7/Leads/actions/unenrol_from_cadences",
                                          headers={"Authorization": f"Zoho-oauthtoken {token}"},
                                          json={"ids": [f"5540230000004{i:05d}"],
                                                "cadences_ids": [C1]})
                except httpx.TransportError as exc:
                    seen.append(("dropped", type(exc).__name__))
                    continue
                headers = {k: v for k, v in answer.headers.items()
                           if k in ("retry-after", "content-type", "x-ratelimit-limit")}
                seen.append((answer.status_code, headers, answer.text))

    asyncio.run(go())
    return seen, [(c.fault, c.delayed) for c in sb.calls], sb.removed


@pytest.mark.parametrize("profile", sorted(PROFILES))
def test_each_profile_replays_identically_for_the_same_seed(profile):
    first = trace(profile, seed=11)
    assert trace(profile, seed=11) == first
    if profile not in ("none", "short_tokens"):
        assert trace(profile, seed=12)[:2] != first[:2]


def test_flaky_answers_json_500_and_html_proxy_pages_without_applying():
    seen, _, removed = trace("flaky", seed=4)
    statuses = {s[0] for s in seen}
    assert {500, 200} <= statuses and statuses & {502, 503, 504}
    for status, headers, text in seen:
        if status in (502, 503, 504):
            assert headers["content-type"].startswith("text/html") and text.startswith("<html>")
        if status == 500:
            body = json.loads(text)
            assert body.get("data", [body])[0]["code"] == "INTERNAL_SERVER_ERROR"
    assert len(removed) == sum(1 for s in seen if s[0] == 200)


def test_throttled_429s_vary_retry_after():
    seen, _, removed = trace("throttled", seed=2, calls=60)
    throttled = [s for s in seen if s[0] == 429]
    assert len(throttled) >= 5
    retry_after = {h.get("retry-after") for _, h, _ in throttled}
    assert None in retry_after and "0" in retry_after and retry_after - {None, "0"}
    assert any("x-ratelimit-limit" in h for _, h, _ in throttled)
    assert len(removed) == 60 - len(throttled)


def test_lossy_drops_before_and_after_applying_never_halfway():
    dice = FaultDice(PROFILES["lossy"], 5)
    predicted = [dice.decide().kind for _ in range(60)]
    seen, _, removed = trace("lossy", seed=5)
    for i, (kind, outcome) in enumerate(zip(predicted, seen, strict=True)):
        pair = ("Leads", f"5540230000004{i:05d}", C1)
        if kind in ("drop_before", "drop_after"):
            assert outcome == ("dropped", "DroppedConnection")
        else:
            assert outcome[0] == 200
        assert (pair in removed) == (kind != "drop_before")
    assert {"drop_before", "drop_after"} <= set(predicted)


def test_short_tokens_die_within_seconds():
    clock = FakeClock()
    app, sb = make(clock=clock, fault_profile="short_tokens")
    body = send(app, "POST", "/oauth/v2/token", data=CREDS).json()
    assert body["expires_in"] <= 5
    clock.now += body["expires_in"]
    assert entry(unenrol(app, body["access_token"], [R2], [C1]))["code"] == "INVALID_TOKEN"


def test_faults_never_apply_a_call_partially():
    world = World.from_pairs(("Leads", f"5540230000005{i:05d}", c)
                             for i in range(200) for c in (C1, C2))
    app, sb = make(world, fault_profile="mix", seed=8, slow_seconds=0.0, concurrency_limit=None)
    token = sb.issue_token()

    async def go() -> None:
        async with httpx.AsyncClient(transport=httpx.ASGITransport(app), base_url=BASE) as c:
            for start in range(0, 200, 4):
                ids = [f"5540230000005{i:05d}" for i in range(start, start + 4)]
                with contextlib.suppress(httpx.TransportError):
                    await c.post("/crm/v7/Leads/actions/unenrol_from_cadences",
                                 headers={"Authorization": f"Zoho-oauthtoken {token}"},
                                 json={"ids": ids, "cadences_ids": [C1, C2]})

    asyncio.run(go())
    assert any(c.fault for c in sb.calls)
    for call in sb.calls:
        named = {(r, c) for r in call.record_ids for c in call.cadence_ids}
        assert set(call.removed) in (set(), named)
        assert call.applied == bool(call.removed)
    assert {("Leads", r, c) for call in sb.calls for r, c in call.removed} == sb.removed


# ---------------------------------------------------------------------------- over loopback


def test_real_loopback_token_unenrol_drop_and_truth():
    config = SandboxConfig(fault_profile="lossy", seed=5)
    dice = FaultDice(PROFILES["lossy"], 5)
    first_drop = next(i for i in range(100) if dice.decide().kind == "drop_after")
    world = World.from_pairs(("Leads", f"5540230000006{i:05d}", C1) for i in range(first_drop + 1))

    async def go(base_url: str) -> list:
        outcomes = []
        async with httpx.AsyncClient(base_url=base_url, timeout=5) as client:
            token = (await client.post("/oauth/v2/token", data=CREDS)).json()
            assert token["api_domain"] == base_url
            headers = {"Authorization": f"Zoho-oauthtoken {token['access_token']}"}
            for i in range(first_drop + 1):
                try:
                    answer = await client.post(
                        "/crm/v7/Leads/actions/unenrol_from_cadences", headers=headers,
                        json={"ids": [f"5540230000006{i:05d}"], "cadences_ids": [C1]})
                    outcomes.append(answer.status_code)
                except httpx.TransportError as exc:
                    outcomes.append(type(exc).__name__)
            outcomes.append((await client.get("/__sandbox__/truth")).json())
        return outcomes

    with running_sandbox(world, config) as (base_url, sb):
        *outcomes, truth = asyncio.run(go(base_url))
    assert outcomes[-1] == "RemoteProtocolError"  # the answer to an applied call never arrived
    last = ["Leads", f"5540230000006{first_drop:05d}", C1]
    assert last in truth["removed"] and truth["calls"][-1]["http_status"] is None
    assert truth["refresh_count"] == 1


def test_slow_answer_outlasts_a_client_timeout_over_loopback():
    dice = FaultDice(PROFILES["slow"], 1)
    first_slow = next(i for i in range(100) if dice.decide().slow)
    config = SandboxConfig(fault_profile="slow", seed=1, slow_seconds=0.6)
    with running_sandbox(small_world(), config) as (base_url, sb):
        token = sb.issue_token()
        with httpx.Client(base_url=base_url, timeout=0.2) as client:
            for _ in range(first_slow):
                client.get("/crm/v7/settings/automation/cadences",
                           headers={"Authorization": f"Zoho-oauthtoken {token}"})
            with pytest.raises(httpx.ReadTimeout):
                client.post("/crm/v7/Leads/actions/unenrol_from_cadences",
                            headers={"Authorization": f"Zoho-oauthtoken {token}"},
                            json={"ids": [R2], "cadences_ids": [C1]})
        time.sleep(0.6)
        assert ("Leads", R2, C1) in sb.removed  # the server finished the call anyway


def test_main_rejects_unknown_profile(capsys):
    assert main(port=0, from_input=None, faults="chaos", seed=0) == 2
    assert "unknown fault profile" in capsys.readouterr().err


def test_batcher_sandbox_from_input_prints_exports_and_stops_on_sigterm(tmp_path):
    source = tmp_path / "input.csv"
    source.write_text(f"module,record_id,cadence_id\nLeads,{R1},{C1}\nLeads,zcrm_{R2},{C1}\n"
                      f"Leads,12,{C1}\n", encoding="utf-8")
    code = ("import sys; from batcher.sandbox.serve import main; "
            f"sys.exit(main(port=0, from_input={str(source)!r}, faults='none', seed=0))")
    proc = subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True,
                            env={**os.environ, "PYTHONUNBUFFERED": "1"})
    try:
        lines = []
        while not lines or not lines[-1].startswith("Press Ctrl-C"):
            line = proc.stdout.readline()
            assert line, proc.stderr.read()
            lines.append(line.strip())
        exports = dict(re.findall(r"^export (\w+)=(\S+)$", "\n".join(lines), re.M))
        assert exports["ZOHO_API_DOMAIN"] == exports["ZOHO_ACCOUNTS_URL"]
        assert re.fullmatch(r"http://127\.0\.0\.1:\d+", exports["ZOHO_API_DOMAIN"])
        assert exports["ZOHO_CLIENT_ID"] == "sandbox-client-id"
        assert any("/__sandbox__/truth" in line for line in lines)
        truth = httpx.get(exports["ZOHO_API_DOMAIN"] + "/__sandbox__/truth").json()
        assert truth["enrolled"] == [["Leads", R1, C1], ["Leads", R2, C1]]
        proc.send_signal(signal.SIGTERM)
        out, _ = proc.communicate(timeout=10)
        assert proc.returncode == 0 and "sandbox stopped" in out
    finally:
        if proc.poll() is None:
            proc.kill()


def test_latency_is_the_whole_call_the_sandbox_own_work_included():
    """"latency=0.2" means a call answers 0.2 s after it arrives, not 0.2 s plus build time."""
    world = World.from_pairs(("Leads", f"5540230000003{i:05d}", C1) for i in range(100))
    app, sb = make(world, latency=0.2)
    token = sb.issue_token()
    ids = [f"5540230000003{i:05d}" for i in range(100)]
    unenrol(app, token, ids[:1], [C1])  # warm up
    started = time.monotonic()
    answer = unenrol(app, token, ids[1:], [C1])
    took = time.monotonic() - started
    assert answer.status_code == 200 and len(sb.removed) == 100
    assert 0.2 <= took < 0.3, took
    assert [c.http_status for c in sb.calls] == [200, 200]  # recorded once answered


# ---------------------------------------------------------------------------- echo_auth

UNENROL_PATH = "/crm/v7/Leads/actions/unenrol_from_cadences"


def _first_seed(profile: str, kind: str) -> int:
    """A seed whose first call gets the fault ``kind``."""
    return next(s for s in range(1000) if FaultDice(PROFILES[profile], s).decide().kind == kind)


def _call(ids=(R2,), cadences=(C1,), module="Leads", scopes=None, token=None):
    """A scenario: one un-enrol call with a fresh token (or ``token``; "" sends no header)."""

    def go(app, sb) -> httpx.Response:
        if token == "":
            return send(app, "POST", f"/crm/v7/{module}/actions/unenrol_from_cadences",
                        json={"ids": list(ids), "cadences_ids": list(cadences)})
        return unenrol(app, token or sb.issue_token(scopes), list(ids), list(cadences), module)

    return go


def _get(path: str, scopes=None):
    return lambda app, sb: send(app, "GET", path, sb.issue_token(scopes))


FLAKY_500 = {"fault_profile": "flaky", "seed": _first_seed("flaky", "error_500")}
FLAKY_503 = {"fault_profile": "flaky", "seed": _first_seed("flaky", "html_503")}

#: name: (SandboxConfig fields, scenario)
ECHO_SCENARIOS = {
    "207 unknown record": ({}, _call(ids=(R2, UNKNOWN))),
    "400 all records unknown": ({}, _call(ids=(UNKNOWN,))),
    "401 INVALID_TOKEN": ({}, _call(token="1000.not-a-token")),
    "401 AUTHENTICATION_FAILURE": ({}, _call(token="")),
    "401 OAUTH_SCOPE_MISMATCH": ({}, _call(scopes=["ZohoCRM.modules.Contacts.ALL"])),
    "400 NOT_ALLOWED bare": ({"error_wrapping": "top"}, _call(cadences=(CV,))),
    "400 NOT_ALLOWED wrapped": ({"error_wrapping": "wrapped"}, _call(cadences=(CV,))),
    "400 INVALID_DATA cadence": ({}, _call(cadences=(UNKNOWN,))),
    "400 MANDATORY_NOT_FOUND": ({}, _call(ids=())),
    "400 INVALID_MODULE": ({}, _call(module="Nope")),
    "403 NO_PERMISSION": ({"no_permission": True}, _call()),
    "429 over the rate limit": ({"rate_limit": 0}, _call()),
    "500 INTERNAL_SERVER_ERROR": (FLAKY_500, _call()),
    "503 HTML page": (FLAKY_503, _call()),
    "404 INVALID_URL_PATTERN": ({}, _get("/crm/v7/Leads/nothing")),
    "cadences 401 OAUTH_SCOPE_MISMATCH": (
        {}, _get("/crm/v7/settings/automation/cadences", ["ZohoCRM.modules.ALL"])),
}


@pytest.mark.parametrize("name", ECHO_SCENARIOS)
def test_echo_auth_puts_the_authorization_header_in_every_api_error(name):
    config, scenario = ECHO_SCENARIOS[name]
    answers = {}
    for echo in (True, False):
        app, sb = make(echo_auth=echo, **config)
        answers[echo] = (scenario(app, sb), sb)
    (echoed, echo_sb), (plain, plain_sb) = answers[True], answers[False]
    header = echoed.request.headers.get("authorization")
    said = (f"request had Authorization: {header}" if header
            else "request had no Authorization header")
    if header:
        assert header in echoed.text  # the whole header value, verbatim
    # same status, same headers, same effect on the org
    assert echoed.status_code == plain.status_code
    skip = {"content-length", "x-ratelimit-reset"}
    assert ({k: v for k, v in echoed.headers.items() if k not in skip}
            == {k: v for k, v in plain.headers.items() if k not in skip})
    assert echo_sb.removed == plain_sb.removed
    assert ([(c.http_status, c.code, c.applied) for c in echo_sb.calls]
            == [(c.http_status, c.code, c.applied) for c in plain_sb.calls])
    if echoed.headers["content-type"].startswith("text/html"):
        assert echoed.text.replace(f"<p>{said}</p>\r\n", "") == plain.text
        return
    body = echoed.json()
    errors = [e for e in [body, *body.get("data", [])] if e.get("status") == "error"]
    assert errors
    for entry in errors:  # in message and in a details string; without them, the plain answer
        assert entry["message"].endswith(f" ({said})")
        assert entry["details"].pop("echo") == said
        entry["message"] = entry["message"].removesuffix(f" ({said})")
    assert body == plain.json()


def test_echo_auth_207_echoes_per_record_errors_only():
    app, sb = make(echo_auth=True)
    token = sb.issue_token()
    answer = unenrol(app, token, [R2, UNKNOWN], [C1])
    assert answer.status_code == 207
    ok, bad = answer.json()["data"]
    assert ok["code"] == "SUCCESS" and ok["message"] == "records manually unenrolled"
    assert set(ok["details"]) == {"cadences", "id"}
    assert token not in json.dumps(ok)
    assert bad["message"] == ("given id seems to be invalid "
                              f"(request had Authorization: Zoho-oauthtoken {token})")
    assert bad["details"] == {"api_name": "ids", "json_path": "$.ids[1]",
                              "echo": f"request had Authorization: Zoho-oauthtoken {token}"}
    assert sb.removed == {("Leads", R2, C1)}  # applied as without echo


def test_echo_auth_leaves_success_answers_alone():
    for shape, scheduled in (("v7", "off"), ("v8", "off"), ("v7", "now")):
        bodies = []
        for echo in (True, False):
            app, sb = make(echo_auth=echo, answer_shape=shape, scheduled=scheduled)
            answer = unenrol(app, sb.issue_token(), [R1, R2, R3], [C1, C2])
            bodies.append((answer.status_code, answer.content))
        assert bodies[0] == bodies[1]
        assert b"request had" not in bodies[0][1]
    app, _ = make(echo_auth=True)
    token = send(app, "POST", "/oauth/v2/token", data=CREDS).json()
    assert "access_token" in token and "error_description" not in token
    listing = send(app, "GET", "/crm/v7/settings/automation/cadences", token["access_token"])
    assert listing.status_code == 200 and b"request had" not in listing.content


@pytest.mark.parametrize("field, value, expected", [
    ("client_id", "someone-else", "invalid_client"),
    ("client_secret", "wrong-s3cr3t", "invalid_client"),
    ("refresh_token", "1000.revoked-r3fr3sh", "invalid_code"),
])
def test_echo_auth_token_refusals_carry_the_posted_secrets(field, value, expected):
    app, _ = make(echo_auth=True)
    form = {**CREDS, field: value}
    answer = send(app, "POST", "/oauth/v2/token", data=form)
    assert answer.status_code == 200
    body = answer.json()
    assert body["error"] == expected and set(body) == {"error", "error_description"}
    assert form["client_secret"] in body["error_description"]
    assert form["refresh_token"] in body["error_description"]


def test_echo_auth_access_denied_keeps_its_description_and_adds_the_secrets():
    app, _ = make(echo_auth=True, refresh_limit=1)
    assert "access_token" in send(app, "POST", "/oauth/v2/token", data=CREDS).json()
    denied = send(app, "POST", "/oauth/v2/token", data=CREDS)
    assert denied.status_code == 400
    body = denied.json()
    assert body["error"] == "Access Denied" and body["status"] == "failure"
    assert body["error_description"].startswith("You have made too many requests continuously.")
    assert CREDS["client_secret"] in body["error_description"]
    assert CREDS["refresh_token"] in body["error_description"]


def test_echo_auth_over_loopback_and_main_accepts_it():
    config = SandboxConfig(echo_auth=True)
    with running_sandbox(small_world(), config) as (base_url, _):
        bad = httpx.post(f"{base_url}{UNENROL_PATH}", json={"ids": [R2], "cadences_ids": [C1]},
                         headers={"Authorization": "Zoho-oauthtoken 1000.dead.beef"}, timeout=5)
        refused = httpx.post(f"{base_url}/oauth/v2/token", data={**CREDS, "client_id": "x"},
                             timeout=5)
    assert bad.status_code == 401 and entry(bad)["code"] == "INVALID_TOKEN"
    assert "Zoho-oauthtoken 1000.dead.beef" in entry(bad)["message"]
    assert "Zoho-oauthtoken 1000.dead.beef" in entry(bad)["details"]["echo"]
    assert CREDS["client_secret"] in refused.json()["error_description"]
    assert "echo_auth" in inspect.signature(main).parameters


# ---------------------------------------------------------------------------- outages


def test_restartable_sandbox_goes_down_and_comes_back_on_the_same_port():
    with restartable_sandbox(small_world()) as live:
        base_url, sb = live.base_url, live.sandbox
        headers = {"Authorization": f"Zoho-oauthtoken {sb.issue_token()}"}
        with httpx.Client(base_url=base_url, timeout=5) as client:
            first = client.post(UNENROL_PATH, headers=headers,
                                json={"ids": [R2], "cadences_ids": [C1]})
            assert first.status_code == 200  # and its keep-alive connection stays in the pool
            live.stop()
            assert not live.running
            with pytest.raises(httpx.ConnectError):  # the pooled connection was closed too
                client.post(UNENROL_PATH, headers=headers,
                            json={"ids": [R1], "cadences_ids": [C1]})
            with pytest.raises(httpx.ConnectError):
                httpx.get(f"{base_url}/__sandbox__/truth", timeout=5)
            live.stop()  # idempotent
            live.start()
            assert live.base_url == base_url and live.sandbox is sb
            again = client.post(UNENROL_PATH, headers=headers,  # the token outlived the outage
                                json={"ids": [R1], "cadences_ids": [C1]})
            assert again.status_code == 200
            truth = client.get("/__sandbox__/truth").json()
    assert [c["record_ids"] for c in truth["calls"]] == [[R2], [R1]]
    assert sb.removed == {("Leads", R2, C1), ("Leads", R1, C1)}
    with pytest.raises(httpx.ConnectError):  # the block's end stops it
        httpx.get(f"{base_url}/__sandbox__/truth", timeout=5)


def test_restartable_sandbox_lets_a_call_in_progress_finish_when_stopped():
    with restartable_sandbox(small_world(), SandboxConfig(latency=0.4)) as live:
        token = live.sandbox.issue_token()
        with httpx.Client(base_url=live.base_url, timeout=5) as client:
            outcome = []
            call = threading.Thread(target=lambda: outcome.append(client.post(
                UNENROL_PATH, headers={"Authorization": f"Zoho-oauthtoken {token}"},
                json={"ids": [R2], "cadences_ids": [C1]}).status_code))
            call.start()
            time.sleep(0.15)
            live.stop()
            call.join(timeout=5)
        assert outcome == [200]
        assert [c.http_status for c in live.sandbox.calls] == [200]


def test_restartable_sandbox_cuts_a_call_held_past_the_grace_and_the_truth_says_so():
    with restartable_sandbox(small_world(), SandboxConfig(latency=5), grace=0.2) as live:
        token = live.sandbox.issue_token()
        outcome: list[object] = []

        def call() -> None:
            try:
                outcome.append(httpx.post(
                    f"{live.base_url}{UNENROL_PATH}", timeout=10,
                    headers={"Authorization": f"Zoho-oauthtoken {token}"},
                    json={"ids": [R2], "cadences_ids": [C1]}).status_code)
            except httpx.TransportError as exc:
                outcome.append(type(exc))

        caller = threading.Thread(target=call)
        caller.start()
        time.sleep(0.15)
        started = time.monotonic()
        live.stop()
        assert time.monotonic() - started < 2
        caller.join(timeout=5)
        assert len(outcome) == 1 and issubclass(outcome[0], httpx.TransportError)
        [record] = live.sandbox.calls  # applied, never answered
        assert record.applied and record.http_status is None
        assert live.sandbox.removed == {("Leads", R2, C1)}


def test_serve_restartable_fixture(serve_restartable):
    live = serve_restartable(small_world())
    assert live.env["ZOHO_API_DOMAIN"] == live.env["ZOHO_ACCOUNTS_URL"] == live.base_url
    assert live.env["ZOHO_CLIENT_SECRET"] == SECRET
    token = httpx.post(f"{live.base_url}/oauth/v2/token", timeout=5, data={
        "grant_type": "refresh_token", "client_id": live.env["ZOHO_CLIENT_ID"],
        "client_secret": SECRET, "refresh_token": REFRESH}).json()
    assert "access_token" in token
    live.stop()
    with pytest.raises(httpx.ConnectError):
        httpx.get(f"{live.base_url}/__sandbox__/truth", timeout=5)
    live.start()
    assert httpx.get(f"{live.base_url}/__sandbox__/truth", timeout=5).json()["refresh_count"] == 1
    assert live.sandbox.refresh_count == 1
