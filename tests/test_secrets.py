"""Invariant 5, from the server's side: the sandbox echoes every secret it is sent (``echo_auth``)
and the tests scan every stream and every file a job leaves for every secret the run knew — the
client secret, the refresh token and every access token the sandbox issued — and for pieces of
them (a message cut short must not keep the start of a token either).

Each scan also proves that the echo happened and was redacted (``Zoho-oauthtoken ***`` in the
results): a scan that finds nothing because the server said nothing would prove nothing.
"""

from __future__ import annotations

import base64
import io
import json
import os
import subprocess
import sys
from pathlib import Path
from urllib.parse import quote, quote_plus

import httpx
import pytest

from batcher.cli import main
from batcher.job import RunSettings, Transports, run_job
from batcher.retry import RetryPolicy
from batcher.sandbox.world import World

from .conftest import REFRESH, SECRET, read_results, write_pairs
from .test_e2e import make_rows

ROOT = Path(__file__).resolve().parent.parent
FAST_RETRY = RetryPolicy(attempts=8, base=0.01, max_wait=0.2, min_wait_on_zero_retry_after=0.01)
UNKNOWN_CADENCE = "554023000009999999"
#: the sandbox with every fault of the "mix" profile, short-lived tokens (announced longer than
#: they live, so some calls meet INVALID_TOKEN with the dead token echoed) and echoing errors
ECHO_WORLD = dict(echo_auth=True, fault_profile="mix", seed=5, token_ttl=1.0, announced_ttl=2,
                  latency=0.08, slow_seconds=0.3, retry_after_max=1)


def pieces(secret: str) -> set[str]:
    """A secret, its first and its last 12 characters: what a cut or half-masked text keeps."""
    return {secret, secret[:12], secret[-12:]}


def leaks(blobs: dict[str, bytes], secrets: list[str]) -> list[tuple[str, str]]:
    """(where, what) for every piece of every secret found in the blobs."""
    return [(where, needle) for secret in secrets for needle in sorted(pieces(secret))
            for where, blob in blobs.items() if needle.encode() in blob]


def folder_blobs(folder: Path) -> dict[str, bytes]:
    """Every file under ``folder``: results, retry, summary, journal (and -wal/-shm), lock,
    hidden temporary files."""
    return {str(p.relative_to(folder)): p.read_bytes() for p in sorted(folder.rglob("*"))
            if p.is_file()}


def echo_input(folder: Path) -> tuple[list[tuple[str, str, str]], Path]:
    """Known pairs (~40 calls), records the org does not have (per-record INVALID_DATA entries
    echo the header) and a cadence it does not have (a whole-call INVALID_DATA echoes it)."""
    rows = make_rows(300, 30, seed=4, max_k=2)
    cadence = rows[0][2]
    unknown = [("Leads", str(554023000008000000 + i), cadence) for i in range(3)]
    ghost = [("Leads", rows[7][1], UNKNOWN_CADENCE)]
    return rows, write_pairs(folder / "in.csv", rows + unknown + ghost)


def issued_tokens(live) -> list[str]:
    """Every access token the sandbox issued (expired ones stay in the table; nothing here
    revokes them)."""
    tokens = list(live.sandbox._tokens)
    assert tokens, "the sandbox issued no token: the scan would prove nothing"
    return tokens


def assert_echo_was_redacted(results: Path) -> None:
    messages = [r["message"] for r in read_results(results) if r["status"] == "failed"]
    assert any("Zoho-oauthtoken ***" in m for m in messages), (
        f"no echoed header reached the results: the scan proves nothing ({messages[:3]})")


def test_echoed_tokens_never_reach_files_or_streams_in_process(tmp_path, serve, capsys):
    rows, inp = echo_input(tmp_path)
    live = serve(World.from_pairs(rows), **ECHO_WORLD)
    stream = io.StringIO()

    result = run_job(RunSettings(input=inp, results=tmp_path / "out.csv", preflight=False,
                                 quiet=False, concurrency=2, timeout=2.0, retry=FAST_RETRY),
                     live.env, stream=stream)

    assert result.exit_code == 1  # the unknown records and cadence failed
    assert live.sandbox.tokens_issued >= 2, "the job outlived no token: make it longer"
    assert_echo_was_redacted(tmp_path / "out.csv")
    # the same job's results, rewritten by `batcher report` into another file
    assert main(["report", "--journal", str(tmp_path / "out.journal"),
                 "--results", str(tmp_path / "other.csv")]) == 1
    out = capsys.readouterr()
    blobs = folder_blobs(tmp_path)
    blobs |= {"stream": stream.getvalue().encode(), "stdout": out.out.encode(),
              "stderr": out.err.encode(), "aborted": str(result.aborted).encode()}
    assert "out.journal.lock" in blobs and "other.csv" in blobs
    assert leaks(blobs, [SECRET, REFRESH, *issued_tokens(live)]) == []


def test_echoed_tokens_never_reach_files_or_streams_through_the_cli(tmp_path, serve, capsys):
    rows, inp = echo_input(tmp_path)
    live = serve(World.from_pairs(rows), **ECHO_WORLD)

    proc = subprocess.run([sys.executable, "-m", "batcher", "run", str(inp),
                           "--results", str(tmp_path / "out.csv"), "--no-preflight",
                           "--concurrency", "2"],
                          env={**os.environ, **live.env}, cwd=ROOT, capture_output=True,
                          text=True, timeout=60)

    assert proc.returncode == 1, proc.stderr
    assert "Traceback" not in proc.stderr
    assert live.sandbox.tokens_issued >= 2, "the job outlived no token: make it longer"
    assert_echo_was_redacted(tmp_path / "out.csv")
    report = subprocess.run([sys.executable, "-m", "batcher", "report",
                             "--journal", str(tmp_path / "out.journal"),
                             "--results", str(tmp_path / "other.csv")],
                            env={**os.environ, **live.env}, cwd=ROOT, capture_output=True,
                            text=True, timeout=60)
    assert report.returncode == 1, report.stderr
    blobs = folder_blobs(tmp_path)
    blobs |= {"run stdout": proc.stdout.encode(), "run stderr": proc.stderr.encode(),
              "report stdout": report.stdout.encode(),
              "report stderr": report.stderr.encode()}
    assert leaks(blobs, [SECRET, REFRESH, *issued_tokens(live)]) == []


@pytest.mark.parametrize("wrong", ["ZOHO_CLIENT_SECRET", "ZOHO_REFRESH_TOKEN"])
def test_token_refusals_that_echo_the_posted_secrets_leak_nothing(tmp_path, serve, capsys,
                                                                 monkeypatch, wrong):
    rows = make_rows(10, 2)
    live = serve(World.from_pairs(rows), echo_auth=True)
    inp = write_pairs(tmp_path / "in.csv", rows)
    bad = "wrong-" + live.env[wrong]  # holds the right value: a partial mask would show it
    env = dict(live.env, **{wrong: bad})
    # the sandbox does echo what it was sent: the scan below proves redaction, not silence
    echoed = httpx.post(f"{live.base_url}/oauth/v2/token", data={
        "grant_type": "refresh_token", "client_id": env["ZOHO_CLIENT_ID"],
        "client_secret": env["ZOHO_CLIENT_SECRET"], "refresh_token": env["ZOHO_REFRESH_TOKEN"]})
    assert bad in echoed.json()["error_description"]
    for name, value in env.items():
        monkeypatch.setenv(name, value)

    code = main(["run", str(inp), "--results", str(tmp_path / "out.csv")])

    out = capsys.readouterr()
    assert code == 3
    assert len(live.sandbox.calls) == 0
    assert {r["status"] for r in read_results(tmp_path / "out.csv")} == {"not_sent"}
    blobs = folder_blobs(tmp_path) | {"stdout": out.out.encode(), "stderr": out.err.encode()}
    assert leaks(blobs, [SECRET, REFRESH, bad]) == []


_TOKEN_HEAD, _TOKEN_TAIL = "1000.4f2a9c0d1e7b3a55", "6c8d0e2f4a6b8c0d.99aa"


@pytest.mark.parametrize("name,char", [("ZOHO_ACCESS_TOKEN", "\n"), ("ZOHO_ACCESS_TOKEN", "\r"),
                                       ("ZOHO_CLIENT_SECRET", "\n"),
                                       ("ZOHO_CLIENT_SECRET", "\t"),
                                       ("ZOHO_REFRESH_TOKEN", "\x7f"),
                                       ("ZOHO_REFRESH_TOKEN", "\x1b")])
def test_a_credential_with_a_control_character_is_refused_without_printing_it(
        tmp_path, serve, capsys, monkeypatch, name, char):
    rows = make_rows(5, 1)
    live = serve(World.from_pairs(rows))
    inp = write_pairs(tmp_path / "in.csv", rows)
    value = f"{_TOKEN_HEAD}{char}{_TOKEN_TAIL}"
    env = {k: v for k, v in live.env.items() if k.startswith(("ZOHO_API", "ZOHO_ACC"))}
    if name != "ZOHO_ACCESS_TOKEN":
        env.update({k: v for k, v in live.env.items() if k.startswith(("ZOHO_CLIENT",
                                                                      "ZOHO_REFRESH"))})
    env[name] = value
    for key, v in env.items():
        monkeypatch.setenv(key, v)

    code = main(["run", str(inp), "--results", str(tmp_path / "out.csv")])

    out = capsys.readouterr()
    assert code == 2
    lines = [line for line in out.err.splitlines() if line.strip()]
    assert len(lines) == 1, out.err
    assert name in lines[0]
    shown = out.out + out.err
    for piece in (value, _TOKEN_HEAD, _TOKEN_TAIL, _TOKEN_HEAD[:12], _TOKEN_TAIL[-12:]):
        assert piece not in shown
    assert len(live.sandbox.calls) == 0 and live.sandbox.refresh_count == 0
    assert not (tmp_path / "out.journal").exists()


# ---------------------------------------------------------------------- Redactor, unit by unit

ACCESS = "1000.0123456789abcdef0123456789abcdef.fedcba9876543210fedcba9876543210"
KNOWN = [SECRET, REFRESH, ACCESS]


def redactor():
    from batcher.redact import Redactor

    return Redactor(KNOWN)


@pytest.mark.parametrize("secret", KNOWN)
def test_redactor_masks_a_known_secret_anywhere_and_every_time(secret):
    text = f"at the start {secret}, in the middle {secret}{secret} and at the end {secret}"
    masked = redactor()(text)
    assert secret not in masked and secret[:6] not in masked
    assert masked.startswith("at the start ") and "in the middle" in masked


@pytest.mark.parametrize("secret", KNOWN)
def test_redactor_masks_a_secret_cut_at_the_end_of_a_truncated_message(secret):
    r = redactor()
    # from 12 characters on: a shorter start cannot be told from ordinary text (every Zoho token
    # starts "1000.", and a message may well end in "1000"), and gives little away
    for n in range(12, len(secret)):
        text = f"invalid oauth token (request had Authorization: {secret[:n]}"
        masked = r(text)
        assert secret[:n] not in masked, (n, masked)
        assert masked.startswith("invalid oauth token (request had Authorization: ")


@pytest.mark.parametrize("secret", KNOWN)
def test_redactor_masks_a_secret_in_any_case_and_its_pieces_wherever_they_stand(secret):
    r = redactor()
    for text in (f"code {secret.upper()} here", f"{secret.swapcase()}",
                 f"details (a={secret[:12]}, b={secret[12:]})",
                 f'{{"x": "{secret[:-12].upper()}", "y": "{secret[-12:]}"}}',
                 f"cut {secret[:-2]}... (more)", f"it was {secret[2:]}.",
                 f"glued {secret[:12]}_{secret[-12:]} here", f"in{secret[1:-1]}side"):
        masked = r(text).lower()
        assert not any(piece.lower() in masked for piece in pieces(secret)), (text, masked)
    assert r(f"code {ACCESS.upper()} here") == "code *** here"


def encoded(text: str) -> list[str]:
    """``text`` as a proxy may quote it: base64 (both alphabets, with and without padding) and
    URL-encoded."""
    raw = text.encode()
    return [base64.b64encode(raw).decode(), base64.urlsafe_b64encode(raw).decode().rstrip("="),
            quote(text, safe=""), quote_plus(text)]


def encoded_pieces(secret: str) -> set[str]:
    """What an encoded text would give away of ``secret``: the start and end of the base64 of
    each of its three alignments (12 characters: 9 of its bytes), and its URL-encoded form."""
    raw, out = secret.encode(), {quote(secret, safe="")}
    for start in range(3):
        core = raw[start:len(raw) - (len(raw) - start) % 3]
        for text in (base64.b64encode(core).decode(), base64.urlsafe_b64encode(core).decode()):
            out |= {text[:12], text[-12:]}
    return out


@pytest.mark.parametrize("secret", [*KNOWN, "sec/ret+with=odd chars&more"])
def test_redactor_masks_a_secret_base64_or_url_encoded_within_any_text(secret):
    """Found by trying: a 400 whose message quoted the request's header base64-encoded (as
    proxies and gateways log ``Authorization``), or a token endpoint echoing the posted form
    base64-encoded, put a readable token, client secret or refresh token in the results, the
    journal, the report and on stderr."""
    from batcher.redact import Redactor

    r = Redactor([*KNOWN, secret])
    for before in ("", "a", "Zoho-oauthtoken ", "client_id=x&client_secret="):
        for text in encoded(before + secret + "&grant_type=refresh_token"[:len(before) % 4]):
            masked = r(f"request was {text}; denied")
            assert not any(piece in masked for piece in encoded_pieces(secret)), (text, masked)
            assert masked.startswith("request was ") and masked.endswith("; denied")


@pytest.mark.parametrize("text,expected", [
    ("request had Authorization: Zoho-oauthtoken 1000.abc.def",
     "request had Authorization: Zoho-oauthtoken ***"),
    ("Zoho-oauthtoken not-a-known-token-at-all)", "Zoho-oauthtoken ***)"),
    ("header zoho-oauthtoken  some_other-Value!", "header zoho-oauthtoken  ***"),
    ("Authorization: Bearer x", "Authorization: Bearer ***"),
    ("proxy said: bearer eyJhbGciOiJIUzI1NiJ9.e30.x; retry", "proxy said: bearer ***; retry"),
    ("token 1000.9f8e7d6c5b4a39281706.0a1b2c3d4e5f60718293 expired", "token *** expired"),
    ("cut short: 1000.9f8e7d6c5b4a3928", "cut short: ***"),
    ("request had client_secret=abc-def refresh_token=1000.xyz",
     "request had client_secret=*** refresh_token=***"),
    ("client_id=x&client_secret=abc&refresh_token=def&grant_type=refresh_token",
     "client_id=x&client_secret=***&refresh_token=***&grant_type=refresh_token"),
    ('{"access_token": "tok-123", "scope": "ZohoCRM.modules.ALL"}',
     '{"access_token": "***", "scope": "ZohoCRM.modules.ALL"}'),
])
def test_redactor_masks_credential_shapes_it_was_never_told(text, expected):
    from batcher.redact import Redactor

    assert Redactor()(text) == expected
    assert redactor()(text) == expected


@pytest.mark.parametrize("text", [
    "record updated successfully",
    "the record was unenrolled from the cadence",
    "given id seems to be invalid",
    "INVALID_DATA",
    "NOT_ALLOWED: the cadence is not a manual enrollment cadence",
    "SUCCESS",
    "invalid oauth token",
    "invalid oauth scope to access this URL",
    "You have made too many requests continuously. Please try again after some time.",
    "Please check if the URL trying to access is a correct one",
    "required field not found (api_name=ids, json_path=$.ids[38])",
    "554023000001000002",
    "Leads 554023000001000002 554023000004000100",
    "the refresh_token grant is used; token_type Bearer",
    "grant_type=refresh_token",
    "",
])
def test_redactor_leaves_ordinary_messages_intact(text):
    assert redactor()(text) == text


@pytest.mark.parametrize("text", [
    "record 554023000000001000",  # an id ending in 1000
    "the limit is 1000",
])
def test_redactor_leaves_a_message_ending_in_1000_intact(text):
    """Every Zoho token starts with ``1000.``: a message that merely ends with the digits 1000 (an
    id, a limit) is not the start of a cut token. The tail rule masks the last characters of a
    text when they are a prefix of a known secret of at least 4 characters, and ``1000`` is the
    common prefix of every real access and refresh token, so these ids lose their last digits."""
    assert redactor()(text) == text


def test_redactor_learns_secrets_as_they_come_and_ignores_tiny_ones():
    from batcher.redact import MASK, Redactor

    r = Redactor([None, "", "abc"])  # nothing usable: "abc" would mask ordinary words
    assert r("abc def") == "abc def"
    later = "tok-learned-later-QQ"
    assert r(f"x {later} y") == f"x {later} y"
    r.add(later)
    assert r(f"x {later} y") == f"x {MASK} y"
    # a secret that holds another is masked whole, not leaving its own remainder
    r.add("learned")
    assert r(f"x {later} y") == f"x {MASK} y"
    assert SECRET not in repr(Redactor([SECRET])) and "1 secrets" in repr(Redactor([SECRET]))


def test_summary_and_results_json_are_still_valid_after_redaction(tmp_path, serve):
    """Redaction must not break the files it cleans (quotes, JSON)."""
    rows, inp = echo_input(tmp_path)
    live = serve(World.from_pairs(rows), echo_auth=True)
    result = run_job(RunSettings(input=inp, results=tmp_path / "out.csv", preflight=False,
                                 quiet=True, timeout=2.0, retry=FAST_RETRY), live.env)
    assert result.exit_code == 1
    summary = json.loads((tmp_path / "out.summary.json").read_text())
    assert summary["reconciled"]
    assert len(read_results(tmp_path / "out.csv")) == summary["rows"]
    assert_echo_was_redacted(tmp_path / "out.csv")
    assert leaks(folder_blobs(tmp_path), [SECRET, REFRESH, *issued_tokens(live)]) == []


def _echoing_api(how: str) -> httpx.MockTransport:
    """Zoho's un-enrol call answered with the request's own access token echoed back the way a
    server may change it: as the code (which batcher upper-cases), upper-cased in the message,
    cut in two details fields, as each record's code."""

    def answer(request: httpx.Request) -> httpx.Response:
        token = request.headers["Authorization"].split()[-1]
        ids = json.loads(request.content)["ids"]
        error = {"status": "error", "message": "m", "details": {}}
        if how == "record code":
            return httpx.Response(207, json={"data": [
                {**error, "code": token, "details": {"id": i}} for i in ids]})
        error |= {"code": {"code": token}.get(how, "INVALID_DATA"),
                  "message": "token " + token.upper() if how == "upper message" else "m"}
        if how == "split":
            error["details"] = {"a": token[:20], "b": token[20:]}
        if how == "cut and glued":
            error["message"] = f"token {token[:30]}... or {token[:14]}_{token[-14:]}."
        if how == "base64 header":
            header = request.headers["Authorization"].encode()
            error["message"] = f"denied: {base64.b64encode(header).decode()}"
            error["details"] = {"t": base64.urlsafe_b64encode(token.encode()).decode()}
        return httpx.Response(400, json=error)

    return httpx.MockTransport(answer)


@pytest.mark.parametrize("how", ["code", "upper message", "split", "record code",
                                 "cut and glued", "base64 header"])
def test_a_token_echoed_changed_is_still_redacted_everywhere(tmp_path, serve, capsys, how):
    """Found by trying: a code is upper-cased after the server sent it, so an access token
    echoed as the code reached stderr, the summary, the results, the journal and the report."""
    rows = make_rows(40, 4, seed=2, max_k=2)
    inp = write_pairs(tmp_path / "in.csv", rows)
    live = serve(World.from_pairs(rows))
    stream = io.StringIO()

    result = run_job(RunSettings(input=inp, results=tmp_path / "out.csv", preflight=False,
                                 quiet=False, timeout=2.0, retry=FAST_RETRY), live.env,
                     transports=Transports(api=_echoing_api(how)), stream=stream)

    assert result.exit_code == 1
    failed = [r for r in read_results(tmp_path / "out.csv") if r["status"] == "failed"]
    assert len(failed) == len(rows)
    assert all("***" in r["code"] + r["message"] for r in failed), failed[:2]  # it was echoed
    blobs = folder_blobs(tmp_path) | {"stream": stream.getvalue().encode(),
                                      "stdout": capsys.readouterr().out.encode()}
    found = [(where, needle) for secret in issued_tokens(live) for needle in pieces(secret)
             for where, blob in blobs.items() if needle.lower().encode() in blob.lower()]
    found += [(where, needle) for secret in issued_tokens(live)
              for needle in encoded_pieces(secret) for where, blob in blobs.items()
              if needle.encode() in blob]
    assert found == []


# --------------------------------------------- a server at the API domain echoing the token

#: answers of a server that repeats the request's access token: what is no Zoho answer, and a
#: Zoho-shaped error (read on the cadence path, whose abort line names its code and message)
_ECHOES = {
    "HTML page": (400, "text/html",
                  b"<html><body><h1>Blocked</h1><p>token {token} is not allowed</p></body></html>"),
    "JSON message": (400, "application/json", b'{"message": "no route for token {token}"}'),
    "header-like text": (400, "text/plain",
                         b"Authorization: Zoho-oauthtoken {token}\r\nX-Seen-Token: {token}"),
    "Zoho-shaped JSON": (400, "application/json",
                         b'{"data": [{"code": "INVALID_MODULE", "details": {}, "status": "error",'
                         b' "message": "module of token {token} not found"}]}'),
}
#: neither is shaped as Zoho's tokens (``1000.<hex>.<hex>``): only knowing them can mask them
_ISSUED, _GIVEN = "tok-refreshed-ZZQ-0123456789abcdef", "tok-given-ZZQ-fedcba9876543210"


@pytest.mark.slow
@pytest.mark.parametrize("command", ["run", "cadences"])
@pytest.mark.parametrize("token", ["refreshed", "given"])
@pytest.mark.parametrize("echo", list(_ECHOES))
def test_a_server_echoing_the_token_on_the_cadence_path_leaks_nothing(tmp_path, command, token,
                                                                      echo):
    """Found by trying: ``batcher cadences`` printed a refreshed token that the server repeated
    in its answer — the command's last line was redacted only of the environment's secrets."""
    from .test_outage import _canned, _cli

    with _canned(_ECHOES[echo]) as server:
        api = f"http://127.0.0.1:{server.server_address[1]}"
        env = {"ZOHO_API_DOMAIN": api, "ZOHO_ACCOUNTS_URL": api, "BATCHER_NO_TOKEN_CACHE": "1"}
        if token == "refreshed":
            server.issues = _ISSUED
            env |= {"ZOHO_CLIENT_ID": "1000.CLIENTID", "ZOHO_CLIENT_SECRET": SECRET,
                    "ZOHO_REFRESH_TOKEN": REFRESH}
        else:
            env["ZOHO_ACCESS_TOKEN"] = _GIVEN
        argv = []
        if command == "run":
            _, inp = echo_input(tmp_path)
            argv = [str(inp), "--results", str(tmp_path / "out.csv")]
        proc, _ = _cli(tmp_path, argv, env, outage_after=5.0, command=command)

    assert proc.returncode == 3, proc.stderr
    assert "Traceback" not in proc.stderr + proc.stdout
    said = proc.stderr.strip().splitlines()[-1]
    if "JSON" in echo:  # the server's words reach the line: the echo happened, redacted
        assert "token ***" in said, said
    blobs = folder_blobs(tmp_path) | {"stderr": proc.stderr.encode(),
                                      "stdout": proc.stdout.encode()}
    assert leaks(blobs, [_ISSUED, _GIVEN, SECRET, REFRESH]) == []
