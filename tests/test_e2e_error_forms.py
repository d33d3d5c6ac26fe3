"""Whole-request errors in both of Zoho's forms (DESIGN.md §1: a top-level object, or the single
entry of ``data[]``), over loopback against the real sandbox: the sandbox sends each code in the
form asked for, and batcher's results, exit code and abort line do not depend on the form."""

from __future__ import annotations

import io
import re
from dataclasses import replace

import httpx
import pytest

from batcher.job import RunSettings, run_job
from batcher.sandbox.world import World

from .conftest import REFRESH, SECRET, read_results, write_pairs
from .test_e2e import FAST_RETRY, make_rows

FORMS = ("top", "wrapped")


def _token(base_url: str) -> str:
    answer = httpx.post(f"{base_url}/oauth/v2/token", data={
        "grant_type": "refresh_token", "client_id": "sandbox-client-id",
        "client_secret": SECRET, "refresh_token": REFRESH})
    return answer.json()["access_token"]


def _entry(answer: httpx.Response, form: str) -> dict:
    """The answer's one error entry, after checking it came in ``form``."""
    body = answer.json()
    if form == "wrapped":
        assert set(body) == {"data"} and len(body["data"]) == 1, body
        return body["data"][0]
    assert "data" not in body and body.get("status") == "error", body
    return body


#: (name, sandbox config, module called, token kind, endpoint) → (status, code) Zoho answers
_WIRE = {
    "INVALID_TOKEN": ({}, "Leads", "bogus", "unenrol", 401),
    "INVALID_TOKEN on cadences": ({}, "Leads", "bogus", "cadences", 401),
    "INVALID_MODULE": ({}, "Nopes__c", "good", "unenrol", 400),
    "OAUTH_SCOPE_MISMATCH": ({"scopes": ("ZohoCRM.settings.cadences.READ",)}, "Leads", "good",
                             "unenrol", 401),
    "OAUTH_SCOPE_MISMATCH on cadences": ({"scopes": ("ZohoCRM.modules.ALL",)}, "Leads", "good",
                                         "cadences", 401),
    "NO_PERMISSION": ({"no_permission": True}, "Leads", "good", "unenrol", 403),
    "TOO_MANY_REQUESTS (credits)": ({"daily_credits": 0}, "Leads", "good", "unenrol", 429),
    "TOO_MANY_REQUESTS (credits) on cadences": ({"daily_credits": 0}, "Leads", "good",
                                                "cadences", 429),
    "LIMIT_EXCEEDED (credits)": ({"daily_credits": 0, "credits_exhausted": "limit_exceeded"},
                                 "Leads", "good", "unenrol", 400),
    "TOO_MANY_REQUESTS (concurrency)": ({"concurrency_limit": 0}, "Leads", "good", "unenrol",
                                        429),
    "INVALID_URL_PATTERN": ({}, "Leads", "good", "v2", 404),
}


@pytest.mark.parametrize("form", FORMS)
@pytest.mark.parametrize("case", list(_WIRE))
def test_the_sandbox_sends_every_whole_request_error_in_the_form_asked(serve, case, form):
    """Until now only the 400s of a call's body came wrapped: a token, scope, permission,
    module, credits or throttle refusal was always a top-level object."""
    config, module, token, endpoint, status = _WIRE[case]
    rows = make_rows(2, 1)
    live = serve(World.from_pairs(rows), error_wrapping=form, **config)
    bearer = _token(live.base_url) if token == "good" else "1000.bogus.bogus"
    headers = {"Authorization": f"Zoho-oauthtoken {bearer}"}
    if endpoint == "v2":
        answer = httpx.post(f"{live.base_url}/crm/v2/{module}/actions/unenrol_from_cadences",
                            headers=headers, json={})
    elif endpoint == "cadences":
        answer = httpx.get(f"{live.base_url}/crm/v7/settings/automation/cadences",
                           headers=headers)
    else:
        answer = httpx.post(f"{live.base_url}/crm/v7/{module}/actions/unenrol_from_cadences",
                            headers=headers, json={"ids": [rows[0][1]],
                                                   "cadences_ids": [rows[0][2]]})
    assert answer.status_code == status, answer.text
    assert _entry(answer, form)["code"] == case.split()[0]


def _outcome(tmp_path, serve, form: str, config: dict, env_change: dict, module: str | None,
             **run) -> tuple:
    """What a user sees of one job: exit code, abort line, each row's status, code, message."""
    enrolled = make_rows(300, 2, seed=3)  # 3 calls at least
    rows = [(module, r, c) for _, r, c in enrolled] if module else enrolled
    live = serve(World.from_pairs(enrolled), error_wrapping=form, **config)
    folder = tmp_path / form
    folder.mkdir()
    inp = write_pairs(folder / "in.csv", rows)
    env = {k: v for k, v in {**live.env, **env_change}.items() if v is not None}
    stream = io.StringIO()
    retry = replace(FAST_RETRY, throttled_attempts=4, outage_after=2.0)
    result = run_job(RunSettings(input=inp, results=folder / "out.csv", retry=retry,
                                 timeout=2.0, quiet=False, **run), env, stream=stream)
    said = [line for line in stream.getvalue().splitlines()
            if "warning" in line or "aborted" in line]
    table = [(r["row"], r["status"], r["code"], r["message"])
             for r in read_results(folder / "out.csv")]
    # times and counts of retries may differ between two runs; the words may not
    scrub = lambda text: re.sub(r"\d+(\.\d+)?", "N", text or "")  # noqa: E731
    return result.exit_code, scrub(result.aborted), [scrub(s) for s in said], table, live


#: name → (sandbox config, environment changes, module of every row, run settings, exit code)
_JOBS = {
    "INVALID_TOKEN, nothing to refresh with": (
        {}, {"ZOHO_ACCESS_TOKEN": "1000.0123456789abcdef0123.0123456789abcdef0123",
             "ZOHO_CLIENT_ID": None, "ZOHO_CLIENT_SECRET": None, "ZOHO_REFRESH_TOKEN": None},
        None, {}, 3),
    "INVALID_TOKEN, refreshed": ({"token_ttl": 0.15, "announced_ttl": 3600, "latency": 0.1},
                                 {}, None, {"preflight": False, "concurrency": 1}, 0),
    "INVALID_MODULE": ({}, {}, "Nopes__c", {"preflight": False}, 1),
    "OAUTH_SCOPE_MISMATCH": ({"scopes": ("ZohoCRM.settings.cadences.READ",)}, {}, None, {}, 3),
    "OAUTH_SCOPE_MISMATCH on cadences": ({"scopes": ("ZohoCRM.modules.ALL",)}, {}, None, {}, 0),
    "NO_PERMISSION": ({"no_permission": True}, {}, None, {}, 3),
    "TOO_MANY_REQUESTS (credits)": ({"daily_credits": 1}, {}, None, {"preflight": False}, 3),
    "LIMIT_EXCEEDED (credits)": ({"daily_credits": 1, "credits_exhausted": "limit_exceeded"},
                                 {}, None, {"preflight": False}, 3),
    "TOO_MANY_REQUESTS (concurrency)": ({"concurrency_limit": 1, "latency": 0.02}, {}, None,
                                        {"concurrency": 6}, 0),
}


@pytest.mark.parametrize("case", list(_JOBS))
def test_batcher_reacts_to_both_forms_of_a_whole_request_error_alike(tmp_path, serve, case):
    config, env_change, module, run, exit_code = _JOBS[case]
    top = _outcome(tmp_path, serve, "top", config, env_change, module, **run)
    wrapped = _outcome(tmp_path, serve, "wrapped", config, env_change, module, **run)
    assert top[:4] == wrapped[:4]
    if exit_code is not None:
        assert top[0] == exit_code, top[1]
    if case == "INVALID_TOKEN, refreshed":
        assert top[4].sandbox.refresh_count > 1 and wrapped[4].sandbox.refresh_count > 1
    if case == "TOO_MANY_REQUESTS (concurrency)":
        assert any(c.http_status == 429 for c in wrapped[4].sandbox.calls)
    if case == "INVALID_MODULE":
        assert {(s, c) for _, s, c, _ in top[3]} == {("failed", "INVALID_MODULE")}
