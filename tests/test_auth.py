from __future__ import annotations

import asyncio
from urllib.parse import parse_qs

import httpx
import pytest

from batcher.config import Credentials, Endpoints
from batcher.errors import AuthError, TransientError
from batcher.zoho.auth import ZohoAuth

SECRET, REFRESH, OLD = "sec-ZZQ-secret", "1000.ref-ZZQ-refresh", "1000.old-ZZQ-access"
CREDS = Credentials("1000.CLIENTID", SECRET, REFRESH)
ENDS = Endpoints("https://www.zohoapis.com", "https://accounts.zoho.com")
API_URL = "https://www.zohoapis.com/crm/v7/Leads/actions/unenrol_from_cadences"
INVALID_TOKEN = {"code": "INVALID_TOKEN", "details": {}, "message": "invalid oauth token",
                 "status": "error"}


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


class Accounts:
    """A fake token endpoint: issues token-1, token-2, … or the answers it is told to give."""

    def __init__(self, answers=None, delay=0.0, api_domain="https://www.zohoapis.com",
                 expires_in=3600):
        self.answers = list(answers or [])
        self.delay, self.api_domain, self.expires_in = delay, api_domain, expires_in
        self.forms: list[dict[str, list[str]]] = []

    async def __call__(self, request: httpx.Request) -> httpx.Response:
        assert request.method == "POST"
        assert str(request.url) == "https://accounts.zoho.com/oauth/v2/token"
        self.forms.append(parse_qs(request.content.decode()))
        await asyncio.sleep(self.delay)
        if self.answers:
            answer = self.answers.pop(0)
            return answer if isinstance(answer, httpx.Response) else httpx.Response(200,
                                                                                     json=answer)
        return httpx.Response(200, json={"access_token": f"token-{len(self.forms)}",
                                         "api_domain": self.api_domain, "token_type": "Bearer",
                                         "expires_in": self.expires_in})


class Api:
    """A fake API: accepts the tokens in ``valid``, answers INVALID_TOKEN to anything else."""

    def __init__(self, valid=lambda token: True, delay=0.0):
        self.valid, self.delay = valid, delay
        self.seen: list[tuple[str, str]] = []

    async def __call__(self, request: httpx.Request) -> httpx.Response:
        token = request.headers["Authorization"].removeprefix("Zoho-oauthtoken ")
        self.seen.append((request.url.host, token))
        await asyncio.sleep(self.delay)
        if self.valid(token):
            return httpx.Response(200, json={"data": []})
        return httpx.Response(401, json=INVALID_TOKEN)


def make(accounts, api, creds=CREDS, ends=ENDS, **kw):
    auth = ZohoAuth(creds, ends, transport=httpx.MockTransport(accounts), **kw)
    client = httpx.AsyncClient(transport=httpx.MockTransport(api), auth=auth)
    return auth, client


async def post_many(client, n):
    return await asyncio.gather(*(client.post(API_URL, json={"ids": ["1"]}) for _ in range(n)))


def test_first_request_refreshes_and_signs():
    accounts, api = Accounts(), Api()
    auth, client = make(accounts, api)
    response = asyncio.run(client.post(API_URL, json={}))
    assert response.status_code == 200
    assert api.seen == [("www.zohoapis.com", "token-1")]
    assert accounts.forms == [{"grant_type": ["refresh_token"], "client_id": ["1000.CLIENTID"],
                               "client_secret": [SECRET], "refresh_token": [REFRESH]}]
    assert auth.refreshes == 1


def test_concurrent_requests_share_one_refresh():
    accounts, api = Accounts(delay=0.05), Api()
    auth, client = make(accounts, api)
    responses = asyncio.run(post_many(client, 25))
    assert all(r.status_code == 200 for r in responses)
    assert len(accounts.forms) == 1 and auth.refreshes == 1
    assert {token for _, token in api.seen} == {"token-1"}


def test_refresh_ahead_of_expiry():
    clock = Clock()
    accounts, api = Accounts(expires_in=3600), Api()
    auth, client = make(accounts, api, clock=clock, refresh_ahead=60)

    async def go():
        await client.post(API_URL)
        clock.now += 3530
        await client.post(API_URL)          # 70 s left: keep the token
        clock.now += 15
        await client.post(API_URL)          # 55 s left: refresh first

    asyncio.run(go())
    assert [token for _, token in api.seen] == ["token-1", "token-1", "token-2"]
    assert auth.refreshes == 2


def test_invalid_token_refreshes_once_for_all_concurrent_requests():
    accounts = Accounts(delay=0.02)
    api = Api(valid=lambda token: token == "token-1", delay=0.01)
    auth, client = make(accounts, api, creds=Credentials("1000.CLIENTID", SECRET, REFRESH, OLD))
    responses = asyncio.run(post_many(client, 12))
    assert all(r.status_code == 200 for r in responses)
    assert len(accounts.forms) == 1 and auth.refreshes == 1
    assert sorted(t for _, t in api.seen) == [OLD] * 12 + ["token-1"] * 12


def test_invalid_token_after_refresh_aborts():
    accounts, api = Accounts(), Api(valid=lambda token: False)
    auth, client = make(accounts, api)
    with pytest.raises(AuthError, match="freshly refreshed") as info:
        asyncio.run(client.post(API_URL))
    assert auth.refreshes == 2  # the first token, then once more on INVALID_TOKEN
    assert SECRET not in str(info.value) and REFRESH not in str(info.value)


def test_access_token_only_cannot_refresh():
    accounts, api = Accounts(), Api(valid=lambda token: False)
    auth, client = make(accounts, api, creds=Credentials(access_token=OLD))
    with pytest.raises(AuthError, match="set ZOHO_REFRESH_TOKEN") as info:
        asyncio.run(client.post(API_URL))
    assert accounts.forms == [] and OLD not in str(info.value)


def test_access_token_only_works_while_valid():
    accounts, api = Accounts(), Api()
    auth, client = make(accounts, api, creds=Credentials(access_token=OLD))
    asyncio.run(post_many(client, 3))
    assert [t for _, t in api.seen] == [OLD] * 3 and accounts.forms == []


@pytest.mark.parametrize("answer, expected", [
    ({"error": "invalid_code"}, "Zoho refused the refresh token: invalid_code — create a new"),
    ({"error": "invalid_client"}, "ZOHO_CLIENT_ID and ZOHO_CLIENT_SECRET"),
    ({"error": "Access Denied", "error_description": "You have made too many requests "
      "continuously. Please try again after some time."}, "wait 10 minutes"),
    ({"error": f"weird {SECRET} {REFRESH}"}, "weird *** ***"),
    ({"token_type": "Bearer"}, "no access_token"),
    (httpx.Response(404, text="<html>no</html>"), "check ZOHO_ACCOUNTS_URL"),
])
def test_refused_refresh_is_a_clear_auth_error_without_secrets(answer, expected):
    accounts, api = Accounts(answers=[answer]), Api()
    auth, client = make(accounts, api)

    async def go():
        with pytest.raises(AuthError) as first:
            await client.post(API_URL)
        with pytest.raises(AuthError) as second:
            await client.post(API_URL)   # the same failure, no second call to Zoho
        return first.value, second.value

    first, second = asyncio.run(go())
    assert expected in str(first) and second is first
    assert SECRET not in str(first) and REFRESH not in str(first)
    assert len(accounts.forms) == 1 and api.seen == []


def test_token_endpoint_outage_is_transient_and_recovers():
    accounts = Accounts(answers=[httpx.Response(503, text="<html>down</html>",
                                                headers={"Retry-After": "2"})])
    api = Api()
    auth, client = make(accounts, api)

    async def go():
        with pytest.raises(TransientError) as info:
            await client.post(API_URL)
        assert info.value.retry_after == 2.0
        return await client.post(API_URL)

    assert asyncio.run(go()).status_code == 200
    assert auth.refreshes == 1 and len(accounts.forms) == 2


def test_a_token_answer_whose_gzip_cannot_be_decoded_is_transient():
    """Found by trying: httpx's DecodingError escaped as an "internal error" (a bug's words)."""
    broken = httpx.Response(200, headers={"Content-Encoding": "gzip"},
                            stream=httpx.ByteStream(b"\x1f\x8b\x08\x00" + b"x" * 40))
    accounts, api = Accounts(answers=[broken]), Api()
    auth, client = make(accounts, api)

    async def go():
        with pytest.raises(TransientError):
            await client.post(API_URL)
        return await client.post(API_URL)

    assert asyncio.run(go()).status_code == 200 and auth.refreshes == 1


@pytest.mark.parametrize("expires_in", [0, "0", -5, "NaN", None, "soon"])
def test_a_lifetime_that_is_no_duration_is_taken_as_an_hour(expires_in):
    """Found by trying: ``expires_in: 0`` (or negative, or NaN) made every request refresh the
    token, spending Zoho's 10 refreshes in 10 calls and stopping the job as if another job
    kept revoking it."""
    clock = Clock()
    accounts, api = Accounts(expires_in=expires_in), Api()
    auth, client = make(accounts, api, clock=clock)

    async def go():
        for _ in range(12):
            await client.post(API_URL)
            clock.now += 60
        # by the hour, refreshed ahead of its end
        clock.now = 1000.0 + 3600 - 30
        await client.post(API_URL)

    asyncio.run(go())
    assert auth.refreshes == 2 and len(api.seen) == 13


@pytest.mark.parametrize("token", ["tok-1\n", "  tok-1 "])
def test_a_refreshed_token_with_surrounding_whitespace_is_trimmed(token):
    """Found by trying: a token answered with a line break after it made every call fail in
    the HTTP layer (LocalProtocolError), its rows "failed, CONNECTION_ERROR" as if Zoho were
    down; the environment's credentials were trimmed, the accounts server's were not."""
    accounts = Accounts(answers=[{"access_token": token, "expires_in": 3600}])
    api = Api()
    auth, client = make(accounts, api)
    assert asyncio.run(client.post(API_URL)).status_code == 200
    assert api.seen == [("www.zohoapis.com", "tok-1")]


@pytest.mark.parametrize("token", ["QQZ\r\nX-Injected: 1", "QQZ k\t1", "QQZé",
                                   12345678901234567890, {"token": "QQZ-1"}, ["QQZ-1"]])
def test_a_refreshed_token_that_cannot_be_sent_stops_without_showing_it(token):
    accounts = Accounts(answers=[{"access_token": token, "expires_in": 3600}])
    api = Api()
    auth, client = make(accounts, api)
    with pytest.raises(AuthError, match="cannot be sent") as info:
        asyncio.run(client.post(API_URL))
    assert "QQZ" not in str(info.value) and "1234567890" not in str(info.value)
    assert api.seen == []


def test_never_more_than_ten_refreshes_in_ten_minutes():
    clock = Clock()
    accounts, api = Accounts(expires_in=30), Api()   # every token already inside refresh_ahead
    auth, client = make(accounts, api, clock=clock)

    async def go():
        for _ in range(10):
            await client.post(API_URL)
            clock.now += 50
        with pytest.raises(AuthError, match="refusing to refresh"):
            await client.post(API_URL)
        clock.now += 600 - 10 * 50 + 1          # the oldest refresh leaves the window
        await client.post(API_URL)

    asyncio.run(go())
    assert auth.refreshes == 11 and len(accounts.forms) == 11


def test_returned_zoho_api_domain_is_used():
    accounts = Accounts(api_domain="https://www.zohoapis.eu")
    api = Api()
    auth, client = make(accounts, api)
    asyncio.run(client.post(API_URL))
    assert auth.api_domain == "https://www.zohoapis.eu"
    assert api.seen == [("www.zohoapis.eu", "token-1")]  # re-routed from the configured domain


def test_foreign_api_domain_is_ignored():
    accounts, api = Accounts(api_domain="https://www.zohoapis.evil.com"), Api()
    auth, client = make(accounts, api)
    asyncio.run(client.post(API_URL))
    assert auth.api_domain == ENDS.api_domain and api.seen[0][0] == "www.zohoapis.com"


def test_ensure_token_fetches_domain_up_front():
    accounts = Accounts(api_domain="https://www.zohoapis.in")
    auth, _ = make(accounts, Api())
    asyncio.run(auth.ensure_token())
    assert auth.api_domain == "https://www.zohoapis.in" and auth.refreshes == 1


def test_repr_hides_tokens_and_sync_use_is_refused():
    accounts, api = Accounts(), Api()
    auth, client = make(accounts, api, creds=Credentials("id", SECRET, REFRESH, OLD))
    asyncio.run(client.post(API_URL))
    assert OLD not in repr(auth) and SECRET not in repr(auth) and "token-" not in repr(auth)
    with httpx.Client(transport=httpx.MockTransport(lambda r: httpx.Response(200)),
                      auth=auth) as sync, pytest.raises(RuntimeError):
        sync.get(API_URL)


def test_accepts_a_ready_accounts_client():
    accounts, api = Accounts(), Api()

    async def go():
        async with httpx.AsyncClient(transport=httpx.MockTransport(accounts)) as token_client:
            auth = ZohoAuth(CREDS, ENDS, client=token_client)
            async with httpx.AsyncClient(transport=httpx.MockTransport(api), auth=auth) as c:
                await c.post(API_URL)
            await auth.aclose()          # not ours to close: the client still works
            return (await token_client.post("https://accounts.zoho.com/oauth/v2/token")).json()

    assert asyncio.run(go())["access_token"] == "token-2"
    assert api.seen == [("www.zohoapis.com", "token-1")]


def test_no_credentials_at_all():
    with pytest.raises(AuthError):
        ZohoAuth(Credentials(), ENDS)


_ZOHO_SAID = {"code": "INVALID_URL_PATTERN", "details": {},
              "message": "Please check if the URL trying to access is a correct one",
              "status": "error"}


@pytest.mark.parametrize("form", ["top", "wrapped"])
@pytest.mark.parametrize("status, error", [(400, AuthError), (404, AuthError), (200, AuthError),
                                           (500, TransientError), (429, TransientError)])
def test_a_zoho_shaped_answer_of_the_token_endpoint_is_said_in_zohos_words(form, status, error):
    """Found by trying: an accounts URL answering in Zoho's API words (an API domain given as
    the accounts URL) said "no access_token in the answer" or "answered HTTP 500" only."""
    said = {**_ZOHO_SAID, "message": f"{_ZOHO_SAID['message']} ({SECRET})"}
    body = {"data": [said]} if form == "wrapped" else said
    accounts, api = Accounts(answers=[httpx.Response(status, json=body)]), Api()
    auth, client = make(accounts, api)

    with pytest.raises(error) as info:
        asyncio.run(client.post(API_URL))
    text = str(info.value)
    assert "INVALID_URL_PATTERN" in text and "Please check if the URL" in text, text
    assert SECRET not in text and api.seen == []
