"""The asyncio network backend under httpx: real sockets on loopback, plain and TLS."""

from __future__ import annotations

import asyncio
import shutil
import ssl
import subprocess
from collections.abc import Awaitable, Callable

import httpx
import pytest

from batcher.netio import AsyncioTransport

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
