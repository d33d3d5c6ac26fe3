"""The token cache: files only this user can read, never trusted when anything about them is off,
and, end to end against the sandbox, twenty commands in ten minutes that cost one token refresh."""

from __future__ import annotations

import argparse
import asyncio
import calendar
import io
import json
import os
import re
import subprocess
import sys
import time
from pathlib import Path

import pytest

from batcher.errors import AuthError
from batcher.job import JobResult, list_cadences, run_job
from batcher.redact import Redactor
from batcher.sandbox.world import World
from batcher.zoho.tokencache import TokenCache, cache_key, default_cache

from .conftest import REFRESH as REFRESH_SANDBOX
from .conftest import write_pairs
from .test_auth import API_URL, CREDS, ENDS, REFRESH, SECRET, Accounts, Api, make
from .test_e2e import make_rows, settings

KEY = cache_key(ENDS.accounts_url, CREDS.client_id, REFRESH)
TOKEN = "1000.cached-ZZQ-access"
ROWS = make_rows(20, 3)
UTC_TIME = re.compile(r"\d{4}-\d\d-\d\d \d\d:\d\d:\d\d UTC")


@pytest.fixture
def cache(tmp_path: Path) -> TokenCache:
    return TokenCache(tmp_path / "cache")


def entry_file(cache: TokenCache, key: str = KEY) -> Path:
    return cache.directory / f"{key}.json"


# --------------------------------------------------------------------------- the files


def test_a_token_is_kept_0600_in_a_0700_directory_under_a_name_that_is_a_hash(cache):
    cache.put(KEY, TOKEN, time.time() + 3600, "https://www.zohoapis.eu")

    got = cache.get(KEY)
    assert got is not None and got.access_token == TOKEN
    assert got.api_domain == "https://www.zohoapis.eu"
    assert oct(entry_file(cache).stat().st_mode & 0o777) == "0o600"
    assert oct(cache.directory.stat().st_mode & 0o777) == "0o700"
    assert [p.name for p in cache.directory.iterdir()] == [f"{KEY}.json"]  # no temp file left
    assert re.fullmatch(r"[0-9a-f]{64}", KEY) and REFRESH not in KEY and SECRET not in KEY
    assert TOKEN not in repr(got) + repr(cache)


def test_the_key_tells_accounts_servers_clients_and_refresh_tokens_apart():
    keys = {cache_key(ENDS.accounts_url, "client", "refresh"),
            cache_key("https://accounts.zoho.eu", "client", "refresh"),
            cache_key(ENDS.accounts_url, "other", "refresh"),
            cache_key(ENDS.accounts_url, "client", "other")}
    assert len(keys) == 4


@pytest.mark.parametrize("lives, reused", [(200, False), (299, False), (301, True), (3600, True)])
def test_a_token_is_reused_only_while_it_lives_five_more_minutes(cache, lives, reused):
    cache.put(KEY, TOKEN, time.time() + lives, None)
    assert (cache.get(KEY) is not None) is reused


@pytest.mark.parametrize("content", [
    b"", b"\x00\xff garbage", b"{\"access_token\": ", b"[1, 2]", b"null",
    json.dumps({"access_token": 5, "expires_at": 9e12, "api_domain": None}).encode(),
    json.dumps({"access_token": TOKEN, "expires_at": "never", "api_domain": None}).encode(),
    json.dumps({"access_token": TOKEN + "\r\nX-Evil: 1", "expires_at": 9e12}).encode(),
    json.dumps({"access_token": TOKEN, "expires_at": 9e12, "refreshed": "often"}).encode()[:-9],
    b"[" * 30_000 + b"]" * 30_000, b"[" * 100_000,  # too deep to decode; too large to read
])
def test_a_corrupt_file_is_ignored_and_then_replaced(cache, content):
    cache.directory.mkdir(mode=0o700)
    entry_file(cache).write_bytes(content)
    entry_file(cache).chmod(0o600)

    assert cache.get(KEY) is None and cache.refreshes(KEY) == ()
    cache.put(KEY, TOKEN, time.time() + 3600, None)
    assert cache.get(KEY).access_token == TOKEN


@pytest.mark.parametrize("mode", [0o640, 0o604, 0o660, 0o666])
def test_a_file_others_may_read_or_write_is_ignored(cache, mode):
    cache.put(KEY, TOKEN, time.time() + 3600, None)
    entry_file(cache).chmod(mode)
    assert cache.get(KEY) is None


def test_a_file_of_another_user_is_ignored(cache, monkeypatch):
    cache.put(KEY, TOKEN, time.time() + 3600, None)
    real = os.getuid()
    monkeypatch.setattr(os, "getuid", lambda: real + 1)
    assert cache.get(KEY) is None


def test_a_symlinked_cache_file_is_neither_read_nor_written_through(cache, tmp_path):
    elsewhere = TokenCache(tmp_path / "elsewhere")
    elsewhere.put(KEY, TOKEN, time.time() + 3600, None)
    target = entry_file(elsewhere)
    before = target.read_bytes()
    cache.directory.mkdir(mode=0o700)
    entry_file(cache).symlink_to(target)

    assert cache.get(KEY) is None
    cache.put(KEY, "1000.new-ZZQ-access", time.time() + 3600, None)

    assert target.read_bytes() == before  # the link was replaced, its target left alone
    assert not entry_file(cache).is_symlink()
    assert cache.get(KEY).access_token == "1000.new-ZZQ-access"


def test_a_fifo_in_place_of_the_file_does_not_hang(cache):
    cache.directory.mkdir(mode=0o700)
    os.mkfifo(entry_file(cache), 0o600)
    assert cache.get(KEY) is None


def test_an_unusable_directory_never_raises(tmp_path):
    blocker = tmp_path / "a-file"
    blocker.write_text("not a directory")
    cache = TokenCache(blocker / "cache")

    cache.put(KEY, TOKEN, time.time() + 3600, None)
    cache.note_refresh(KEY, time.time())
    cache.drop(KEY)
    assert cache.get(KEY) is None and cache.refreshes(KEY) == ()


def test_a_key_that_is_not_a_hash_is_refused_without_naming_it(cache):
    with pytest.raises(ValueError) as info:
        cache.get(f"../{REFRESH}")
    assert REFRESH not in str(info.value)


def test_drop_forgets_the_token_and_keeps_the_refresh_times(cache):
    at = time.time() - 30
    cache.note_refresh(KEY, at)
    cache.put(KEY, TOKEN, time.time() + 3600, None)
    cache.drop(KEY)
    assert cache.get(KEY) is None and cache.refreshes(KEY) == (at,)
    assert TOKEN.encode() not in entry_file(cache).read_bytes()


def test_refresh_times_older_than_ten_minutes_are_forgotten(cache):
    now = time.time()
    for at in (now - 700, now - 599, now - 1):
        cache.note_refresh(KEY, at)
    assert cache.refreshes(KEY) == (now - 599, now - 1)


WRITER = """
import sys, time
from pathlib import Path
from batcher.zoho.tokencache import TokenCache
cache, key, name = TokenCache(Path(sys.argv[1])), sys.argv[2], sys.argv[3]
for i in range(150):
    cache.put(key, f"1000.{name}-{i}", time.time() + 3600, None)
"""


def test_two_processes_writing_at_once_never_leave_a_torn_file(cache):
    cache.put(KEY, "1000.first", time.time() + 3600, None)
    writers = [subprocess.Popen([sys.executable, "-c", WRITER, str(cache.directory), KEY, name])
               for name in ("a", "b")]
    seen = set()
    while any(w.poll() is None for w in writers):
        got = cache.get(KEY)
        assert got is not None, "a reader met a torn or missing file"
        seen.add(got.access_token)
    assert [w.returncode for w in writers] == [0, 0]
    assert len(seen) > 1 and cache.get(KEY).access_token.startswith(("1000.a-", "1000.b-"))
    assert [p.name for p in cache.directory.iterdir()] == [f"{KEY}.json"]


@pytest.mark.parametrize("env, where", [
    ({}, "user"),
    ({"BATCHER_TOKEN_CACHE_DIR": "/somewhere/else"}, "/somewhere/else"),
    ({"BATCHER_TOKEN_CACHE_DIR": "/x", "BATCHER_NO_TOKEN_CACHE": "0"}, "/x"),
    ({"BATCHER_TOKEN_CACHE_DIR": "/x", "BATCHER_NO_TOKEN_CACHE": "1"}, None),
])
def test_default_cache_follows_the_environment(env, where):
    cache = default_cache(env)
    if where is None:
        assert cache is None
    elif where == "user":
        assert cache.directory.name == "batcher"
    else:
        assert cache.directory == Path(where)
    assert default_cache(env, enabled=False) is None


# --------------------------------------------------------------------------- auth with a cache


def test_a_second_command_reuses_the_first_ones_token_and_api_domain(cache):
    accounts, api = Accounts(api_domain="https://www.zohoapis.eu"), Api()
    first, client = make(accounts, api, cache=cache)
    asyncio.run(client.post(API_URL))
    redactor = Redactor()
    second, client = make(accounts, api, cache=cache, redactor=redactor)
    asyncio.run(client.post(API_URL))

    assert (first.refreshes, second.refreshes, len(accounts.forms)) == (1, 0, 1)
    assert second.api_domain == "https://www.zohoapis.eu"
    assert api.seen == [("www.zohoapis.eu", "token-1")] * 2
    assert redactor("token-1 leaked") == "*** leaked"  # a cached token is redacted too


def test_a_rejected_cached_token_is_dropped_and_refreshed_once(cache):
    cache.put(KEY, TOKEN, time.time() + 3600, None)
    accounts, api = Accounts(), Api(valid=lambda token: token != TOKEN)
    auth, client = make(accounts, api, cache=cache)

    assert asyncio.run(client.post(API_URL)).status_code == 200
    assert [t for _, t in api.seen] == [TOKEN, "token-1"]
    assert auth.refreshes == 1 and cache.get(KEY).access_token == "token-1"


def test_a_rejected_cached_token_is_dropped_even_when_the_refresh_fails(cache):
    cache.put(KEY, TOKEN, time.time() + 3600, None)
    accounts = Accounts(answers=[{"error": "invalid_code"}])
    auth, client = make(accounts, Api(valid=lambda token: False), cache=cache)

    with pytest.raises(AuthError) as info:
        asyncio.run(client.post(API_URL))
    assert cache.get(KEY) is None
    assert all(secret not in str(info.value) for secret in (TOKEN, SECRET, REFRESH))


def test_the_lock_out_names_when_the_next_refresh_is_allowed(cache):
    now = time.time()
    for n in range(10):  # ten refreshes by earlier commands, the oldest 9 minutes ago
        cache.note_refresh(KEY, now - 540 + n)
    accounts, api = Accounts(), Api()
    auth, client = make(accounts, api, cache=cache)

    with pytest.raises(AuthError, match="refusing to refresh") as info:
        asyncio.run(client.post(API_URL))
    assert accounts.forms == []  # Zoho was not asked: it would have refused
    said = UTC_TIME.search(str(info.value)).group()
    allowed = calendar.timegm(time.strptime(said, "%Y-%m-%d %H:%M:%S UTC"))
    assert 0 <= allowed - (now - 540 + 600) <= 1  # when the oldest leaves the window, rounded up


def test_refreshes_made_before_the_clock_was_set_back_still_count(cache):
    """Found by trying: a VM resumed or an NTP step set the clock back 5 minutes after ten
    refreshes; their times, now ahead of the clock, were dropped as if never made, and the next
    command refreshed into Zoho's lock-out instead of refusing."""
    ahead = time.time() + 300
    for n in range(10):
        cache.note_refresh(KEY, ahead + n)
    assert len(cache.refreshes(KEY)) == 10
    accounts, api = Accounts(), Api()
    auth, client = make(accounts, api, cache=cache)
    with pytest.raises(AuthError, match="refusing to refresh"):
        asyncio.run(client.post(API_URL))
    assert accounts.forms == []


def test_zohos_own_lock_out_says_until_when_to_wait(cache):
    accounts = Accounts(answers=[{"error": "Access Denied", "error_description":
                                  "You have made too many requests continuously."}])
    auth, client = make(accounts, Api(), cache=cache)
    with pytest.raises(AuthError, match=r"wait 10 minutes \(until .* UTC\)") as info:
        asyncio.run(client.post(API_URL))
    assert UTC_TIME.search(str(info.value))
    assert len(cache.refreshes(KEY)) == 1  # a refused refresh still counts at Zoho


def test_an_access_token_alone_is_never_cached(cache):
    from batcher.config import Credentials

    auth, client = make(Accounts(), Api(), creds=Credentials(access_token="1000.given-ZZQ"),
                        cache=cache)
    asyncio.run(client.post(API_URL))
    assert not cache.directory.exists()


# --------------------------------------------------------------------------- against the sandbox


def cached_env(live, folder: Path) -> dict[str, str]:
    env = {k: v for k, v in live.env.items() if k != "BATCHER_NO_TOKEN_CACHE"}
    return {**env, "BATCHER_TOKEN_CACHE_DIR": str(folder)}


def dry_runs(tmp_path: Path, env: dict[str, str], n: int, first: int = 0,
             **kw) -> list[JobResult]:
    """``n`` dry runs of the same input, one command after the other, each in a folder of its
    own."""
    inp = write_pairs(tmp_path / "in.csv", ROWS)
    results = []
    for i in range(first, first + n):
        folder = tmp_path / f"run{i}"
        folder.mkdir()
        results.append(run_job(settings(folder, inp, dry_run=True, **kw), env,
                               stream=io.StringIO()))
    return results


@pytest.mark.slow
def test_twenty_dry_runs_in_a_row_cost_one_refresh(tmp_path, serve):
    live = serve(World.from_pairs(ROWS))
    results = dry_runs(tmp_path, cached_env(live, tmp_path / "cache"), 20)

    assert [r.aborted for r in results] == [None] * 20
    assert live.sandbox.refresh_count == 1
    key = cache_key(live.base_url, live.env["ZOHO_CLIENT_ID"], live.env["ZOHO_REFRESH_TOKEN"])
    assert [p.name for p in (tmp_path / "cache").iterdir()] == [f"{key}.json"]
    # the access token is in the cache file and nowhere else
    secrets = [*live.sandbox._tokens, live.env["ZOHO_CLIENT_SECRET"], REFRESH_SANDBOX]
    files = [p for p in tmp_path.rglob("*") if p.is_file() and p.parent.name != "cache"]
    assert files and not [(p, x) for p in files for x in secrets if x.encode() in p.read_bytes()]


@pytest.mark.slow
@pytest.mark.parametrize("off", [{"BATCHER_NO_TOKEN_CACHE": "1"}, {}], ids=["env", "flag"])
def test_without_the_cache_the_eleventh_dry_run_is_locked_out(tmp_path, serve, off):
    live = serve(World.from_pairs(ROWS))
    env = {**cached_env(live, tmp_path / "cache"), **off}
    # off by the environment, or by --no-token-cache (RunSettings.token_cache)
    results = dry_runs(tmp_path, env, 11, **({} if off else {"token_cache": False}))

    assert [r.aborted for r in results[:10]] == [None] * 10
    assert results[10].exit_code == 3 and "wait 10 minutes (until" in results[10].aborted
    assert live.sandbox.refresh_count == 11 and not (tmp_path / "cache").exists()


@pytest.mark.slow
def test_twenty_cadence_listings_cost_one_refresh(tmp_path, serve):
    live = serve(World.from_pairs(ROWS))
    env = cached_env(live, tmp_path / "cache")
    args = argparse.Namespace(api_domain=None, accounts_url=None, dc=None, module=None,
                              json=True, no_token_cache=False)
    for _ in range(20):
        out = io.StringIO()
        assert list_cadences(args, env, stream=out) == 0
        assert json.loads(out.getvalue())
    assert live.sandbox.refresh_count == 1


@pytest.mark.slow
def test_a_cached_token_the_server_revoked_costs_one_refresh(tmp_path, serve):
    live = serve(World.from_pairs(ROWS))
    env = cached_env(live, tmp_path / "cache")
    assert dry_runs(tmp_path, env, 1)[0].aborted is None
    live.sandbox.revoke_tokens()
    results = dry_runs(tmp_path, env, 3, first=1)

    assert [r.aborted for r in results] == [None] * 3
    assert live.sandbox.refresh_count == 2


@pytest.mark.parametrize("given, under", [
    ({"HOME": "{h}"}, "{h}/.cache/batcher"),
    ({"HOME": "{h}", "XDG_CACHE_HOME": "{h}/xdg"}, "{h}/xdg/batcher"),
    ({"HOME": "{h}", "XDG_CACHE_HOME": "relative/xdg"}, "{h}/.cache/batcher"),
])
def test_the_default_cache_is_where_the_hosts_environment_puts_it(tmp_path, monkeypatch,
                                                                   given, under):
    """A library host's ``env=`` decides the cache's place: found by trying, HOME and
    XDG_CACHE_HOME were read from the process's environment (platformdirs, expanduser), so a
    host passing the job's own HOME had its tokens kept in its own."""
    if sys.platform in ("win32", "darwin"):
        pytest.skip("the XDG layout")
    monkeypatch.setenv("HOME", str(tmp_path / "process-home"))
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "process-xdg"))
    home = tmp_path / "job-home"
    home.mkdir()
    env = {k: v.format(h=home) for k, v in given.items()}
    assert default_cache(env).directory == Path(under.format(h=home))
    # a home of the host's that does not exist is never created, whatever the process's is
    assert default_cache({"HOME": str(tmp_path / "nonexistent")}) is None


@pytest.mark.slow
def test_a_hosts_env_home_holds_the_cached_token_not_the_processs(tmp_path, monkeypatch, serve):
    if sys.platform in ("win32", "darwin"):
        pytest.skip("the XDG layout")
    live = serve(World.from_pairs(ROWS))
    process_cache = tmp_path / "process-xdg"
    monkeypatch.setenv("XDG_CACHE_HOME", str(process_cache))
    home = tmp_path / "job-home"
    home.mkdir()
    env = {**{k: v for k, v in live.env.items() if k != "BATCHER_NO_TOKEN_CACHE"},
           "HOME": str(home)}
    assert [r.aborted for r in dry_runs(tmp_path, env, 2)] == [None, None]
    assert live.sandbox.refresh_count == 1  # the second run took the cached token
    key = cache_key(live.base_url, live.env["ZOHO_CLIENT_ID"], live.env["ZOHO_REFRESH_TOKEN"])
    assert [p.name for p in (home / ".cache" / "batcher").iterdir()] == [f"{key}.json"]
    assert not process_cache.exists()


# ------------------------------------------------------------------- a clock stepped between two


def _step_clock(cache: TokenCache, seconds: float, key: str = KEY) -> None:
    """As if the wall clock moved by ``-seconds`` since the file was written: its times shift
    by ``seconds`` (an NTP step back is a file whose times are ahead of the clock)."""
    path = cache.directory / f"{key}.json"
    doc = json.loads(path.read_text())
    doc.update(expires_at=doc["expires_at"] + seconds, cached_at=doc["cached_at"] + seconds,
               refreshed=[t + seconds for t in doc["refreshed"]])
    path.write_text(json.dumps(doc))


def test_after_the_clock_is_set_back_a_token_is_believed_for_its_lifetime_at_most(cache):
    """Found by reading: the cache kept a token's expiry on the wall clock alone, so with the
    clock set back two hours a token issued an hour ago (and dead) was lent as alive for two
    more hours. Its remaining life is now never more than it was issued with."""
    cache.put(KEY, TOKEN, time.time() + 3600, None)
    _step_clock(cache, 7200)
    got = cache.get(KEY)
    assert got is not None and got.expires_at - time.time() <= 3600 + 1


def test_after_the_clock_is_set_forward_a_token_looks_expired_and_is_not_lent(cache):
    cache.put(KEY, TOKEN, time.time() + 3600, None)
    _step_clock(cache, -7200)
    assert cache.get(KEY) is None


def test_a_token_cached_without_its_time_of_caching_is_not_lent(cache):
    """A file of an earlier version: its lifetime is unknown (one refresh, then it is known)."""
    cache.directory.mkdir(mode=0o700)
    entry_file(cache).write_text(json.dumps({"access_token": TOKEN,
                                             "expires_at": time.time() + 3000}))
    entry_file(cache).chmod(0o600)
    assert cache.get(KEY) is None


@pytest.mark.slow
@pytest.mark.parametrize("step", [0, 7200], ids=["revoked", "clock-set-back-2h"])
def test_a_stale_cached_token_costs_one_refused_call_and_one_refresh(tmp_path, serve, step):
    """A token the cache lends may be dead (revoked; or issued before the clock was set back,
    so it looks alive): found by trying, every call in flight (8 at --concurrency 8) was sent
    with it and refused INVALID_TOKEN. One call tries it; the others wait for its answer."""
    rows = make_rows(2000, 2)
    live = serve(World.from_pairs(rows), latency=0.02, concurrency_limit=None)
    env = cached_env(live, tmp_path / "cache")
    inp = write_pairs(tmp_path / "in.csv", rows)
    (tmp_path / "dry").mkdir()
    assert run_job(settings(tmp_path / "dry", inp, dry_run=True), env,
                   stream=io.StringIO()).aborted is None  # a token cached
    if step:
        _step_clock(TokenCache(tmp_path / "cache"), step,
                    cache_key(live.base_url, live.env["ZOHO_CLIENT_ID"], REFRESH_SANDBOX))
    live.sandbox.revoke_tokens()  # dead at Zoho, whatever the times say

    result = run_job(settings(tmp_path, inp, preflight=False, concurrency=8), env,
                     stream=io.StringIO())
    assert result.exit_code == 0, result.aborted
    refused = [c for c in live.sandbox.calls if c.code == "INVALID_TOKEN"]
    assert len(refused) == 1 and live.sandbox.refresh_count == 2


@pytest.mark.slow
def test_after_the_clock_is_set_forward_the_next_commands_refresh_once_not_each(tmp_path, serve):
    """A live token that looks expired (the clock set forward) costs one refresh: the token
    that refresh gets is cached on the new time line, and the commands after it use it."""
    live = serve(World.from_pairs(ROWS))
    env = cached_env(live, tmp_path / "cache")
    assert dry_runs(tmp_path, env, 1)[0].aborted is None
    _step_clock(TokenCache(tmp_path / "cache"), -7200,
                cache_key(live.base_url, live.env["ZOHO_CLIENT_ID"], REFRESH_SANDBOX))
    assert [r.aborted for r in dry_runs(tmp_path, env, 5, first=1)] == [None] * 5
    assert live.sandbox.refresh_count == 2


def test_token_lifetimes_are_timed_on_a_clock_that_counts_time_asleep():
    """``time.monotonic`` stops while a machine sleeps (a suspended laptop, a paused VM): a
    token held across a night of sleep was still taken for fresh, every call in flight then
    refused. Where the system has a clock that counts sleep, lifetimes are timed on it."""
    from batcher.zoho.auth import awake_or_asleep

    boottime = getattr(time, "CLOCK_BOOTTIME", None)
    if boottime is None:
        pytest.skip("no clock that counts time asleep here")
    assert abs(awake_or_asleep() - time.clock_gettime(boottime)) < 1.0
    auth, _ = make(Accounts(), Api())
    assert auth._clock is awake_or_asleep
