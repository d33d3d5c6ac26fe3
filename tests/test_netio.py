"""The asyncio network backend under httpx: real sockets on loopback, plain and TLS; and the one
rule that decides, for every client, whether a proxy is used."""

from __future__ import annotations

import asyncio
import importlib.util
import re
import shutil
import socket
import ssl
import subprocess
from collections.abc import Awaitable, Callable
from pathlib import Path

import httpcore
import httpx
import pytest

from batcher.netio import (
    AsyncioTransport,
    accounts_transport,
    api_transport,
    check_proxies,
    proxy_for,
)

Handler = Callable[[asyncio.StreamReader, asyncio.StreamWriter], Awaitable[None]]


def _answer(body: bytes, extra: bytes = b"") -> bytes:
    return (b"HTTP/1.1 200 OK\r\ncontent-type: text/plain\r\ncontent-length: "
            + str(len(body)).encode() + b"\r\n" + extra + b"\r\n" + body)


async def _read_request(reader: asyncio.StreamReader) -> bytes | None:
    """One request's body, or None when the client went away."""
    try:
        head = await reader.readuntil(b"\r\n\r\n")
    except (asyncio.IncompleteReadError, ConnectionError):
        return None
    length = 0
    for line in head.split(b"\r\n"):
        name, _, value = line.partition(b":")
        if name.strip().lower() == b"content-length":
            length = int(value)
    return await reader.readexactly(length)


def _echo(close_after_each: bool = False) -> tuple[Handler, list[int]]:
    """Echoes each body; ``connections`` counts the connections the client opened."""
    connections: list[int] = []

    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        connections.append(1)
        while (body := await _read_request(reader)) is not None:
            writer.write(_answer(b"echo:" + body))
            await writer.drain()
            if close_after_each:
                break
        writer.close()

    return handle, connections


async def _with_server(handler: Handler, go: Callable[[str], Awaitable[object]],
                       tls: ssl.SSLContext | None = None) -> object:
    server = await asyncio.start_server(handler, "127.0.0.1", 0, ssl=tls)
    port = server.sockets[0].getsockname()[1]
    try:
        return await go(f"{'https' if tls else 'http'}://127.0.0.1:{port}")
    finally:
        server.close()


def test_requests_share_a_connection_and_read_whole_answers():
    handler, connections = _echo()

    async def go(url: str) -> list[str]:
        async with httpx.AsyncClient(transport=AsyncioTransport(), timeout=5) as client:
            answers = [await client.post(f"{url}/x", content=f"call {i}".encode())
                       for i in range(3)]
            big = await client.post(f"{url}/big", content=b"z" * 200_000)  # > one socket read
        return [r.text for r in answers] + [str(len(big.content))]

    answers = asyncio.run(_with_server(handler, go))
    assert answers == ["echo:call 0", "echo:call 1", "echo:call 2", str(200_005)]
    assert len(connections) == 1  # kept alive


def test_a_connection_the_server_closed_is_not_reused():
    handler, connections = _echo(close_after_each=True)

    async def go(url: str) -> list[str]:
        async with httpx.AsyncClient(transport=AsyncioTransport(), timeout=5) as client:
            out = []
            for i in range(3):
                out.append((await client.post(url, content=str(i).encode())).text)
                await asyncio.sleep(0.05)  # the server's close arrives while the connection idles
            return out

    assert asyncio.run(_with_server(handler, go)) == ["echo:0", "echo:1", "echo:2"]
    assert len(connections) == 3


def test_a_server_that_does_not_answer_times_out():
    async def silent(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await _read_request(reader)
        await asyncio.sleep(2)
        writer.close()

    async def go(url: str) -> None:
        async with httpx.AsyncClient(transport=AsyncioTransport(), timeout=0.2) as client:
            await client.post(url, content=b"x")

    with pytest.raises(httpx.ReadTimeout):
        asyncio.run(_with_server(silent, go))


def test_a_connection_cut_mid_answer_is_a_transport_error():
    async def cut(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await _read_request(reader)
        writer.write(_answer(b"0123456789")[:-4])  # promises 10 bytes, sends 6
        await writer.drain()
        writer.close()

    async def go(url: str) -> None:
        async with httpx.AsyncClient(transport=AsyncioTransport(), timeout=5) as client:
            await client.post(url, content=b"x")

    with pytest.raises(httpx.TransportError):
        asyncio.run(_with_server(cut, go))


def test_nobody_listening_is_a_connect_error():
    async def go() -> None:
        server = await asyncio.start_server(lambda r, w: None, "127.0.0.1", 0)
        port = server.sockets[0].getsockname()[1]
        server.close()
        await server.wait_closed()
        async with httpx.AsyncClient(transport=AsyncioTransport(), timeout=5) as client:
            await client.get(f"http://127.0.0.1:{port}/")

    with pytest.raises(httpx.ConnectError):
        asyncio.run(go())


@pytest.fixture(scope="module")
def certificate(tmp_path_factory: pytest.TempPathFactory) -> tuple[str, str]:
    """A self-signed certificate for 127.0.0.1, made with the openssl command line."""
    if shutil.which("openssl") is None:
        pytest.skip("the openssl command is needed to make a test certificate")
    folder = tmp_path_factory.mktemp("tls")
    cert, key = str(folder / "cert.pem"), str(folder / "key.pem")
    subprocess.run(["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "2",
                    "-keyout", key, "-out", cert, "-subj", "/CN=127.0.0.1",
                    "-addext", "subjectAltName=IP:127.0.0.1"],
                   check=True, capture_output=True)
    return cert, key


@pytest.fixture
def server_tls(certificate) -> ssl.SSLContext:
    server = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    server.load_cert_chain(*certificate)
    return server


def test_https_with_a_trusted_certificate(certificate, server_tls):
    handler, _ = _echo()

    async def go(url: str) -> tuple[str, str]:
        trusted = ssl.create_default_context(cafile=certificate[0])
        async with httpx.AsyncClient(transport=AsyncioTransport(verify=trusted),
                                     timeout=5) as client:
            first = await client.post(url, content=b"secure")
            second = await client.post(url, content=b"again")
        return first.text, second.text

    assert asyncio.run(_with_server(handler, go, server_tls)) == ("echo:secure", "echo:again")


def test_https_refuses_an_untrusted_certificate(server_tls):
    handler, _ = _echo()

    async def go(url: str) -> None:
        async with httpx.AsyncClient(transport=AsyncioTransport(), timeout=5) as client:
            await client.post(url, content=b"secret")

    with pytest.raises(httpx.ConnectError, match="(?i)certificate"):
        asyncio.run(_with_server(handler, go, server_tls))


@pytest.mark.parametrize("variable", ["SSL_CERT_FILE", "SSL_CERT_DIR"])
def test_the_authorities_are_those_the_jobs_env_names_never_the_processs(
        certificate, server_tls, tmp_path, monkeypatch, variable):
    """A library host passes ``env=``: found by trying, SSL_CERT_FILE / SSL_CERT_DIR were read
    from the process's environment (httpx's ``create_ssl_context``, once a process), so a host
    naming its corporate authority in ``env`` was refused, and one that did not was given the
    process's. Both clients, direct; each way round."""
    if variable == "SSL_CERT_DIR":  # a folder of hashed names, as c_rehash makes
        folder = tmp_path / "authorities"
        folder.mkdir()
        name = subprocess.run(["openssl", "x509", "-hash", "-noout", "-in", certificate[0]],
                              check=True, capture_output=True, text=True).stdout.strip()
        (folder / f"{name}.0").write_bytes(Path(certificate[0]).read_bytes())
        where = str(folder)
    else:
        where = certificate[0]
    handler, _ = _echo()

    def call(env: dict[str, str]):
        async def go(url: str) -> str:
            for transport in (api_transport(url, env), accounts_transport(url, env)):
                async with httpx.AsyncClient(transport=transport, trust_env=False,
                                             timeout=5) as client:
                    answer = (await client.post(url, content=b"hi")).text
            return answer

        return asyncio.run(_with_server(handler, go, server_tls))

    monkeypatch.delenv("SSL_CERT_FILE", raising=False)
    monkeypatch.delenv("SSL_CERT_DIR", raising=False)
    assert call({variable: where}) == "echo:hi"
    monkeypatch.setenv(variable, where)  # the process's, not the job's: certifi's alone
    with pytest.raises(httpx.ConnectError, match="(?i)certificate"):
        call({})


@pytest.mark.parametrize("env, said", [
    ({"SSL_CERT_FILE": "/no/such/bundle.pem"}, "SSL_CERT_FILE=/no/such/bundle.pem"),
    ({"SSL_CERT_DIR": "/no/such/folder"}, "SSL_CERT_DIR=/no/such/folder"),
    ({"SSL_CERT_FILE": "{junk}"}, "no certificate"),
])
def test_unusable_authorities_are_a_value_error_naming_the_variable(tmp_path, env, said):
    junk = tmp_path / "junk.pem"
    junk.write_text("not a certificate")
    env = {k: v.format(junk=junk) for k, v in env.items()}
    for make in (lambda: api_transport(ZOHO, env), lambda: accounts_transport(ZOHO, env),
                 lambda: check_proxies([ZOHO], env)):
        with pytest.raises(ValueError, match=re.escape(said)) as caught:
            make()
        assert "_ssl.c" not in str(caught.value)


# ---------------------------------------------------------------------------- proxies

ZOHO = "https://www.zohoapis.com/crm/v7/Leads/actions/unenrol_from_cadences"


@pytest.mark.parametrize("url, env, expected", [
    # the URL's scheme picks the variable
    (ZOHO, {"https_proxy": "http://tls-proxy:3128", "http_proxy": "http://plain:3128"},
     "http://tls-proxy:3128"),
    ("http://crm.example.com/x", {"https_proxy": "http://tls-proxy:3128",
                                  "http_proxy": "http://plain:3128"}, "http://plain:3128"),
    ("http://crm.example.com/x", {"https_proxy": "http://tls-proxy:3128"}, None),
    # all_proxy is the fallback, for either scheme, after the scheme's own
    (ZOHO, {"all_proxy": "http://any:1"}, "http://any:1"),
    (ZOHO, {"ALL_PROXY": "http://any:1", "HTTPS_PROXY": "http://tls:2"}, "http://tls:2"),
    ("http://crm.example.com/", {"ALL_PROXY": "http://any:1"}, "http://any:1"),
    # lowercase wins over uppercase; an empty value counts as unset
    (ZOHO, {"https_proxy": "http://lower:1", "HTTPS_PROXY": "http://upper:2"}, "http://lower:1"),
    (ZOHO, {"https_proxy": "", "HTTPS_PROXY": "http://upper:2"}, "http://upper:2"),
    (ZOHO, {"https_proxy": " ", "all_proxy": "http://any:1"}, "http://any:1"),
    (ZOHO, {"HTTPS_PROXY": "http://upper:2", "all_proxy": "http://any:1"}, "http://upper:2"),
    # a proxy without a scheme is an HTTP proxy; https:// and socks5:// kept as given
    (ZOHO, {"https_proxy": "proxy.corp:3128"}, "http://proxy.corp:3128"),
    (ZOHO, {"https_proxy": "https://proxy.corp:443"}, "https://proxy.corp:443"),
    (ZOHO, {"https_proxy": "socks5://proxy.corp:1080"}, "socks5://proxy.corp:1080"),
    # nothing set, or a scheme the clients never use
    (ZOHO, {}, None),
    ("ftp://files.example.com/", {"all_proxy": "http://any:1"}, None),
])
def test_proxy_for_scheme_and_case(url, env, expected):
    assert proxy_for(url, env) == expected


@pytest.mark.parametrize("url, no_proxy, bypassed", [
    (ZOHO, "*", True),
    (ZOHO, "other.com, *", True),
    (ZOHO, "www.zohoapis.com", True),           # the host itself
    (ZOHO, "WWW.ZohoAPIs.com", True),           # names ignore case
    (ZOHO, "zohoapis.com", True),               # a domain suffix without a dot ...
    (ZOHO, ".zohoapis.com", True),              # ... or with one
    (ZOHO, "*.zohoapis.com", True),             # ... or as a wildcard
    ("https://zohoapis.com/", ".zohoapis.com", True),  # the domain itself, as curl
    (ZOHO, "apis.com", False),                  # a suffix must end at a dot
    ("https://notzohoapis.com/", "zohoapis.com", False),
    (ZOHO, "example.com,  www.zohoapis.com ", True),  # list with spaces
    (ZOHO, "www.zohoapis.com:443", True),       # host:port, the default port
    (ZOHO, "www.zohoapis.com:8443", False),
    ("https://www.zohoapis.com:8443/", "www.zohoapis.com:8443", True),
    ("https://www.zohoapis.com:8443/", "www.zohoapis.com", True),
    ("http://10.1.2.3:8080/", "10.1.2.3", True),
    ("http://10.1.2.3:8080/", "10.0.0.0/8", True),  # CIDR
    ("http://10.1.2.3:8080/", "10.1.2.3:8080", True),
    ("http://10.1.2.3:8080/", "10.1.2.3:9090", False),
    ("http://10.1.2.3/", "2.3", False),         # addresses are not name suffixes
    ("http://[2001:db8::1]/", "2001:db8::/32", True),
    ("http://[2001:db8::1]:8080/", "[2001:db8::1]:8080", True),
    (ZOHO, "", False),
])
def test_proxy_for_no_proxy_forms(url, no_proxy, bypassed):
    env = {"https_proxy": "http://p:1", "http_proxy": "http://p:1", "no_proxy": no_proxy}
    assert proxy_for(url, env) == (None if bypassed else "http://p:1")


def test_proxy_for_no_proxy_lowercase_wins():
    env = {"https_proxy": "http://p:1", "no_proxy": "example.com", "NO_PROXY": "zohoapis.com"}
    assert proxy_for(ZOHO, env) == "http://p:1"
    assert proxy_for(ZOHO, {"https_proxy": "http://p:1", "NO_PROXY": "zohoapis.com"}) is None


@pytest.mark.parametrize("url", [
    "http://127.0.0.1:8000/oauth/v2/token", "http://127.9.8.7/", "http://localhost:9/",
    "http://LOCALHOST./", "http://sandbox.localhost/", "http://[::1]:8000/",
    "http://[::ffff:127.0.0.1]/", "https://127.0.0.1/",
])
def test_loopback_never_uses_a_proxy(url):
    env = {"http_proxy": "http://p:1", "https_proxy": "http://p:1", "all_proxy": "http://p:1"}
    assert proxy_for(url, env) is None


def test_proxy_for_reads_only_the_mapping_given(monkeypatch):
    monkeypatch.setenv("https_proxy", "http://from-os-environ:1")
    monkeypatch.setenv("HTTPS_PROXY", "http://from-os-environ:1")
    assert proxy_for(ZOHO, {}) is None
    assert proxy_for(ZOHO, {"HTTPS_PROXY": "http://given:2"}) == "http://given:2"


def _pool(transport: httpx.AsyncBaseTransport):
    """The connection pool of a transport (of httpx's, inside the proxy's 407 guard)."""
    return getattr(transport, "_inner", transport)._pool


def test_api_transport_is_the_asyncio_one_direct_and_httpx_through_a_proxy():
    limits = httpx.Limits(max_connections=7, max_keepalive_connections=7)
    options = [(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)]
    direct = api_transport(ZOHO, {}, limits=limits, socket_options=options)
    assert type(direct) is AsyncioTransport
    assert _pool(direct)._max_connections == 7
    local = api_transport("http://127.0.0.1:8000", {"http_proxy": "http://p:1"},
                          limits=limits, socket_options=options)
    assert type(local) is AsyncioTransport

    proxied = api_transport(ZOHO, {"HTTPS_PROXY": "http://user:pw@proxy.corp:3128"},
                            limits=limits, socket_options=options)
    inner = proxied._inner  # type: ignore[attr-defined]  # (a 407 is refused around it)
    assert type(inner) is httpx.AsyncHTTPTransport
    pool = _pool(inner)
    assert isinstance(pool, httpcore.AsyncHTTPProxy)
    assert pool._proxy_url.host == b"proxy.corp" and pool._proxy_url.port == 3128
    assert pool._max_connections == 7 and pool._socket_options == options
    assert dict(pool._proxy_headers)[b"Proxy-Authorization"].startswith(b"Basic ")

    bypassed = api_transport(ZOHO, {"https_proxy": "http://p:1", "no_proxy": ".zohoapis.com"},
                             limits=limits, socket_options=options)
    assert type(bypassed) is AsyncioTransport


def test_accounts_transport_decides_as_the_api_transport():
    env = {"https_proxy": "http://proxy.corp:3128", "no_proxy": "zohoapis.com"}
    accounts = accounts_transport("https://accounts.zoho.com/oauth/v2/token", env)
    assert isinstance(_pool(accounts), httpcore.AsyncHTTPProxy)
    assert not isinstance(_pool(accounts_transport(ZOHO, env)), httpcore.AsyncHTTPProxy)
    assert type(api_transport(ZOHO, env, limits=httpx.Limits(), socket_options=[])
                ) is AsyncioTransport
    sandbox = accounts_transport("http://127.0.0.1:8000", {"http_proxy": "http://p:1"})
    assert not isinstance(_pool(sandbox), httpcore.AsyncHTTPProxy)


@pytest.mark.parametrize("proxy", ["ftp://user:hunter2@proxy.corp:21",
                                   "socks5://user:hunter2@proxy.corp:1080"])
def test_an_unusable_proxy_is_a_value_error_without_its_password(proxy):
    if proxy.startswith("socks5") and importlib.util.find_spec("socksio") is not None:
        pytest.skip("socksio is installed: a SOCKS proxy is usable")
    for make in (lambda: api_transport(ZOHO, {"https_proxy": proxy}),
                 lambda: accounts_transport(ZOHO, {"https_proxy": proxy})):
        with pytest.raises(ValueError, match="cannot use the proxy") as caught:
            make()
        assert "hunter2" not in str(caught.value)


def test_a_proxied_api_transport_sends_the_call_to_the_proxy():
    """The target is not loopback (its name never resolves): only the proxy can answer."""
    request_lines: list[bytes] = []

    async def proxy(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        head = await reader.readuntil(b"\r\n\r\n")
        request_lines.append(head.split(b"\r\n", 1)[0])
        writer.write(_answer(b"answered by the proxy"))
        await writer.drain()
        writer.close()

    async def go(proxy_url: str) -> str:
        url = "http://crm.example.invalid/crm/v7/Leads/actions/unenrol_from_cadences"
        transport = api_transport(url, {"HTTP_PROXY": proxy_url}, limits=httpx.Limits(),
                                  socket_options=[])
        async with httpx.AsyncClient(transport=transport, trust_env=False, timeout=5) as client:
            return (await client.post(url, content=b"{}")).text

    assert asyncio.run(_with_server(proxy, go)) == "answered by the proxy"
    assert request_lines == [
        b"POST http://crm.example.invalid/crm/v7/Leads/actions/unenrol_from_cadences HTTP/1.1"]
