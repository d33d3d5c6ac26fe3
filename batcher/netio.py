"""httpx's connection pool on plain asyncio streams, without anyio in between.

httpcore reaches asyncio through anyio, whose cancel scopes and socket attribute lookups cost
about a quarter of the event loop's time per call at a few hundred calls a second — time taken
from the moment an answer arrives to the moment the next call leaves. This backend speaks to
asyncio directly; the pool, HTTP/1.1, TLS and httpx's error classes stay those of httpx/httpcore.
"""

from __future__ import annotations

import asyncio
import contextlib
import ssl
from collections.abc import Iterable
from typing import Any

import httpcore
import httpx
from httpcore._utils import is_socket_readable

_FLUSH_AT = 64 * 1024
_CLOSE_WAIT = 5.0  # seconds a closing connection may take to say goodbye (TLS close_notify)
_EXTRA_KEYS = {"client_addr": "sockname", "server_addr": "peername"}  # httpcore's → asyncio's


class AsyncioStream(httpcore.AsyncNetworkStream):
    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self._reader = reader
        self._writer = writer
        self._socket = writer.get_extra_info("socket")
        self._pending: list[bytes] = []  # written, not yet handed to the socket
        self._pending_size = 0

    async def read(self, max_bytes: int, timeout: float | None = None) -> bytes:
        with _mapped(httpcore.ReadTimeout, httpcore.ReadError):
            async with asyncio.timeout(timeout):
                await self._flush()
                return await self._reader.read(max_bytes)

    async def write(self, buffer: bytes, timeout: float | None = None) -> None:
        """Held until the next read (or 64 KiB): a request's head and body leave in one send."""
        if not buffer:
            return
        self._pending.append(buffer)
        self._pending_size += len(buffer)
        if self._pending_size >= _FLUSH_AT:
            with _mapped(httpcore.WriteTimeout, httpcore.WriteError):
                async with asyncio.timeout(timeout):
                    await self._flush()

    async def _flush(self) -> None:
        if not self._pending:
            return
        data = b"".join(self._pending)
        self._pending.clear()
        self._pending_size = 0
        if self._writer.is_closing():
            raise ConnectionResetError("the connection is closed")
        self._writer.write(data)
        await self._writer.drain()

    async def aclose(self) -> None:
        self._writer.close()
        with contextlib.suppress(Exception):
            async with asyncio.timeout(_CLOSE_WAIT):
                await self._writer.wait_closed()

    async def start_tls(self, ssl_context: ssl.SSLContext, server_hostname: str | None = None,
                        timeout: float | None = None) -> httpcore.AsyncNetworkStream:
        try:
            with _mapped(httpcore.ConnectTimeout, httpcore.ConnectError):
                await self._writer.start_tls(ssl_context, server_hostname=server_hostname,
                                             ssl_handshake_timeout=timeout)
        except BaseException:
            await self.aclose()
            raise
        return AsyncioStream(self._reader, self._writer)

    def get_extra_info(self, info: str) -> Any:
        if info == "is_readable":
            # an idle keep-alive connection with something to read has been closed by the server
            return (self._reader.at_eof() or self._writer.is_closing()
                    or is_socket_readable(self._socket))
        return self._writer.get_extra_info(_EXTRA_KEYS.get(info, info))


class AsyncioBackend(httpcore.AsyncNetworkBackend):
    async def connect_tcp(self, host: str, port: int, timeout: float | None = None,
                          local_address: str | None = None,
                          socket_options: Iterable[Any] | None = None,
                          ) -> httpcore.AsyncNetworkStream:
        with _mapped(httpcore.ConnectTimeout, httpcore.ConnectError):
            async with asyncio.timeout(timeout):
                reader, writer = await asyncio.open_connection(
                    host, port, local_addr=(local_address, 0) if local_address else None)
        sock = writer.get_extra_info("socket")
        for option in socket_options or ():
            sock.setsockopt(*option)
        return AsyncioStream(reader, writer)

    async def connect_unix_socket(self, path: str, timeout: float | None = None,
                                  socket_options: Iterable[Any] | None = None,
                                  ) -> httpcore.AsyncNetworkStream:  # pragma: no cover
        with _mapped(httpcore.ConnectTimeout, httpcore.ConnectError):
            async with asyncio.timeout(timeout):
                reader, writer = await asyncio.open_unix_connection(path)
        return AsyncioStream(reader, writer)

    async def sleep(self, seconds: float) -> None:
        await asyncio.sleep(seconds)


class AsyncioTransport(httpx.AsyncHTTPTransport):
    """``httpx.AsyncHTTPTransport`` (HTTP/1.1, TLS, env proxies via the client) on asyncio."""

    def __init__(self, *, limits: httpx.Limits | None = None,
                 verify: ssl.SSLContext | bool = True,
                 socket_options: Iterable[Any] | None = None) -> None:
        limits = limits or httpx.Limits()
        # the parent's only state is its pool; it is built here with another network backend
        self._pool = httpcore.AsyncConnectionPool(
            ssl_context=httpx.create_ssl_context(verify=verify),
            max_connections=limits.max_connections,
            max_keepalive_connections=limits.max_keepalive_connections,
            keepalive_expiry=limits.keepalive_expiry,
            socket_options=socket_options,
            network_backend=AsyncioBackend(),
        )


@contextlib.contextmanager
def _mapped(timeout_error: type[Exception], other_error: type[Exception]):
    """asyncio's and the OS's errors as httpcore's, which httpx maps to its own."""
    try:
        yield
    except TimeoutError as exc:
        raise timeout_error(str(exc) or "timed out") from exc
    except (OSError, ssl.SSLError, asyncio.IncompleteReadError) as exc:
        raise other_error(str(exc) or type(exc).__name__) from exc
