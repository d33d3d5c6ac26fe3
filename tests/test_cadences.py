from __future__ import annotations

import asyncio

import httpx
import pytest

from batcher.errors import AbortError, AuthError, PermissionDenied, ZohoUnreachable
from batcher.retry import RetryPolicy
from batcher.zoho.cadences import Cadence, CadencesUnavailable, fetch_cadences, preflight

DOMAIN = "https://www.zohoapis.com"
URL = f"{DOMAIN}/crm/v7/settings/automation/cadences"
FAST = RetryPolicy(attempts=3, jitter=False)


def raw(cid, name="Welcome", module="Leads", type_="manual_enrollment", **extra):
    return {"id": cid, "name": name, "module": {"api_name": module, "id": "5540230000000020"},
            "type": type_, "active": True, "published": True, "status": "active", **extra}


def fetch(handler, policy=FAST):
    sleeps = []
    calls = []

    def recording(request):
        calls.append(request)
        return handler(request)

    async def sleep(seconds):
        sleeps.append(seconds)

    async def go():
        async with httpx.AsyncClient(transport=httpx.MockTransport(recording)) as client:
            return await fetch_cadences(client, DOMAIN + "/", policy=policy, sleep=sleep)

    return asyncio.run(go()), calls, sleeps


def test_reads_every_page():
    pages = {
        "1": {"cadences": [raw("554023000004092008"),
                           raw("554023000004092009", type_="custom_view")],
              "info": {"per_page": 2, "count": 2, "page": 1, "more_records": True}},
        "2": {"cadences": [raw("554023000004092010", module="Partners__c")],
              "info": {"per_page": 2, "count": 1, "page": 2, "more_records": False}},
    }

    def handler(request):
        assert str(request.url).startswith(URL)
        return httpx.Response(200, json=pages[request.url.params["page"]])

    cadences, calls, _ = fetch(handler)
    assert [c.id for c in cadences] == ["554023000004092008", "554023000004092009",
                                        "554023000004092010"]
    assert cadences[0] == Cadence("554023000004092008", "Welcome", "Leads", "manual_enrollment",
                                  True, True, "active")
    assert cadences[2].module == "Partners__c" and cadences[1].type == "custom_view"
    assert [r.url.params["page"] for r in calls] == ["1", "2"]


def test_204_means_no_cadences():
    cadences, calls, _ = fetch(lambda r: httpx.Response(204))
    assert cadences == [] and len(calls) == 1


def test_stops_when_a_page_is_empty_even_if_more_records_is_claimed():
    body = {"cadences": [], "info": {"more_records": True}}
    cadences, calls, _ = fetch(lambda r: httpx.Response(200, json=body))
    assert cadences == [] and len(calls) == 1


def test_a_page_repeated_while_more_records_is_claimed_stops_at_once():
    """Found by trying: a server (or proxy) that ignores ``page=`` and answers the same page with
    ``more_records: true`` forever made 1000 GETs (1000 credits), then went on with a list cut
    short, in which the org's other cadences were "unknown"."""
    body = {"cadences": [raw("554023000004092008")], "info": {"more_records": True}}
    with pytest.raises(AbortError, match="page 2 repeats cadences") as info:
        fetch(lambda r: httpx.Response(200, json=body))
    assert not isinstance(info.value, PermissionDenied)  # not a preflight skipped on a warning
    calls = []
    with pytest.raises(AbortError):
        fetch(lambda r: calls.append(r) or httpx.Response(200, json=body))
    assert len(calls) == 2


def test_overlapping_pages_that_bring_new_cadences_are_read_on():
    pages = {"1": [raw("554023000004092008"), raw("554023000004092009")],
             "2": [raw("554023000004092009"), raw("554023000004092010")],
             "3": [raw("554023000004092011")]}

    def handler(request):
        page = request.url.params["page"]
        return httpx.Response(200, json={"cadences": pages[page],
                                         "info": {"more_records": page != "3"}})

    cadences, calls, _ = fetch(handler)
    assert len(cadences) == 4 and len(calls) == 3


def test_ids_stay_strings_and_float_ids_are_dropped():
    body = {"cadences": [raw(554023000004092008), raw(5.54023e17), {"name": "no id"}],
            "info": {"more_records": False}}
    cadences, _, _ = fetch(lambda r: httpx.Response(200, json=body))
    assert [c.id for c in cadences] == ["554023000004092008"]


def test_transient_errors_are_retried():
    answers = [httpx.Response(502, text="<html>bad gateway</html>"),
               httpx.Response(429, json={"code": "TOO_MANY_REQUESTS"},
                              headers={"Retry-After": "4"}),
               httpx.Response(200, json={"cadences": [raw("554023000004092008")]})]
    cadences, calls, sleeps = fetch(lambda r: answers.pop(0))
    assert len(cadences) == 1 and len(calls) == 3 and sleeps == [0.5, 4.0]


def test_a_page_whose_gzip_cannot_be_decoded_is_retried():
    """Found by trying: the DecodingError escaped the retries and stopped the job as an
    "internal error" (report this with BATCHER_DEBUG=1)."""
    answers = [httpx.Response(200, headers={"Content-Encoding": "gzip"},
                              stream=httpx.ByteStream(b"\x1f\x8b\x08\x00" + b"x" * 40)),
               httpx.Response(200, json={"cadences": [raw("554023000004092008")]})]
    cadences, calls, _ = fetch(lambda r: answers.pop(0))
    assert [c.id for c in cadences] == ["554023000004092008"] and len(calls) == 2


def test_persistent_outage_is_zoho_unreachable_naming_what_came_back():
    with pytest.raises(ZohoUnreachable, match="HTTP 503"):
        fetch(lambda r: httpx.Response(503, text=""),
              RetryPolicy(attempts=3, base=0.001, max_wait=0.01, outage_after=0.2))


def test_a_dead_host_is_zoho_unreachable_and_its_calls_cost_no_credit():
    credits = []

    def refuse(request):
        raise httpx.ConnectError("connection refused", request=request)

    async def go():
        async with httpx.AsyncClient(transport=httpx.MockTransport(refuse)) as client:
            await fetch_cadences(client, DOMAIN, on_call=lambda: credits.append(1),
                                 policy=RetryPolicy(base=0.001, max_wait=0.01, outage_after=0.2))

    with pytest.raises(ZohoUnreachable, match="ConnectError to www.zohoapis.com"):
        asyncio.run(go())
    assert credits == []


@pytest.mark.parametrize("status, code", [(401, "OAUTH_SCOPE_MISMATCH"), (403, "NO_PERMISSION")])
def test_missing_settings_scope_is_a_documented_permission_error(status, code):
    body = {"code": code, "details": {}, "message": "x", "status": "error"}
    with pytest.raises(CadencesUnavailable) as info:
        fetch(lambda r: httpx.Response(status, json=body))
    assert isinstance(info.value, PermissionDenied)
    assert "ZohoCRM.settings.cadences.READ" in str(info.value)


def test_authentication_failure_aborts():
    body = {"code": "AUTHENTICATION_FAILURE", "details": {}, "message": "x", "status": "error"}
    with pytest.raises(AuthError):
        fetch(lambda r: httpx.Response(401, json=body))


CADENCES = [
    Cadence("1001", "Manual leads", "Leads", "manual_enrollment"),
    Cadence("1002", "Auto leads", "Leads", "custom_view"),
    Cadence("1003", "Contacts flow", "Contacts", "manual_enrollment"),
]


def test_preflight_flags_each_problem_with_the_api_code():
    pairs = [("Leads", "1001"), ("leads", "1001"), ("Leads", "1002"), ("Leads", "1003"),
             ("Leads", "9999"), ("Contacts", "1003"), ("Leads", "9999")]
    assert preflight(pairs, CADENCES) == {
        ("Leads", "1002"): ("NOT_ALLOWED", "cadence 1002 (Auto leads) is of type custom_view; "
                                           "only manual_enrollment cadences allow un-enrolment"),
        ("Leads", "1003"): ("INVALID_DATA", "cadence 1003 (Contacts flow) belongs to module "
                                            "Contacts, not Leads"),
        ("Leads", "9999"): ("INVALID_DATA", "cadence 9999 does not exist in this org"),
    }


def test_preflight_with_no_cadences_flags_everything_unknown():
    result = preflight([("Leads", "1001")], [])
    assert result == {
        ("Leads", "1001"): ("INVALID_DATA", "cadence 1001 does not exist in this org")}


_NOT_ZOHO = {
    "400 HTML": lambda: httpx.Response(400, html="<html><h1>400 Bad Request</h1></html>"),
    "400 JSON of another API": lambda: httpx.Response(400, json={"error": "bad_request"}),
    "200 HTML": lambda: httpx.Response(200, html="<!doctype html><title>Welcome</title>"),
    "200 JSON of another API": lambda: httpx.Response(200, json={"items": []}),
}


@pytest.mark.parametrize("policy", [FAST, RetryPolicy(attempts=1)], ids=["3 tries", "1 try"])
@pytest.mark.parametrize("answer", list(_NOT_ZOHO))
def test_a_host_that_is_no_zoho_api_is_said_as_a_wrong_domain(answer, policy):
    """The preflight on a wrong domain said "could not read the org's cadences: HTTP_400" or
    "UNPARSEABLE_ANSWER ... HTML page": nothing a user can act on. It says, as the un-enrol
    path does, that the domain looks wrong and what to check — also when a caller's attempts
    run out before the streak that stops a run (one try)."""
    with pytest.raises(AbortError) as stop:
        fetch(lambda r: _NOT_ZOHO[answer](), policy)
    text = str(stop.value)
    assert DOMAIN in text and "URL is wrong" in text and "no answer of Zoho's API" in text, text
    assert "ZOHO_DC" in text and "--dc" in text and "ZOHO_API_DOMAIN" in text, text
    assert "HTTP_400" not in text and "UNPARSEABLE_ANSWER" not in text, text
    assert "proxy, captive portal or web filter" in text, text  # the network may be the cause


def test_a_one_off_page_before_the_cadences_is_retried():
    answers = [httpx.Response(200, html="<html>please wait</html>"),
               httpx.Response(200, json={"cadences": [raw("554023000004092008")]})]
    cadences, calls, _ = fetch(lambda r: answers.pop(0))
    assert [c.id for c in cadences] == ["554023000004092008"] and len(calls) == 2


_ZOHO_ERROR = {"code": "INVALID_MODULE", "details": {"api_name": "module"},
               "message": "the module name given seems to be invalid", "status": "error"}


@pytest.mark.parametrize("form", ["top", "wrapped"])
@pytest.mark.parametrize("status, code", [(400, "INVALID_MODULE"), (400, "SOMETHING_NEW"),
                                          (200, "INVALID_MODULE"), (404, "INVALID_MODULE")])
def test_a_zoho_error_on_the_cadence_read_is_said_in_zohos_words(form, status, code):
    """Found by trying: a Zoho-shaped 400 on the cadence read said "could not read the org's
    cadences: HTTP_400", hiding the code and message Zoho gave."""
    error = {**_ZOHO_ERROR, "code": code}
    body = {"data": [error]} if form == "wrapped" else error

    with pytest.raises(AbortError) as stop:
        fetch(lambda r: httpx.Response(status, json=body))
    text = str(stop.value)
    assert code in text and "the module name given seems to be invalid" in text, text
    assert "HTTP_" not in text, text


def test_a_server_text_in_a_cadence_error_is_redacted():
    """``redact`` (the run's Redactor) cleans every server text an error of the read carries."""
    echoed = {**_ZOHO_ERROR, "message": "module unknown to token tok-ZZQ-secret-value-1234"}

    async def go():
        async with httpx.AsyncClient(transport=httpx.MockTransport(
                lambda r: httpx.Response(400, json=echoed))) as client:
            await fetch_cadences(client, DOMAIN, policy=FAST,
                                 redact=lambda t: t.replace("tok-ZZQ-secret-value-1234", "***"))

    with pytest.raises(AbortError) as stop:
        asyncio.run(go())
    assert "token ***" in str(stop.value) and "tok-ZZQ" not in str(stop.value)
