"""httpx's connection pool on plain asyncio streams, without anyio in between.

httpcore reaches asyncio through anyio, whose cancel scopes and socket attribute lookups cost
about a quarter of the event loop's time per call at a few hundred calls a second — time taken
from the moment an answer arrives to the moment the next call leaves. This backend speaks to
asyncio directly; the pool, HTTP/1.1, TLS and httpx's error classes stay those of httpx/httpcore.

Proxies: httpx reads HTTP(S)_PROXY only for a client without an explicit transport, so every batcher
client decides here instead, the same way (``proxy_for``), and gets its transport from
``api_transport`` / ``accounts_transport``; the clients are built with ``trust_env=False``.
The authorities TLS trusts are decided here too, from the job's environment (``ca_locations``):
httpx and OpenSSL would read SSL_CERT_FILE / SSL_CERT_DIR from the process's, which a library
host's ``env=`` does not reach.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import ipaddress
import os
import re
import ssl
import urllib.request
from collections.abc import Iterable, Mapping
from typing import Any
from urllib.parse import urlsplit

import httpcore
import httpx
from httpcore._utils import is_socket_readable

from .errors import ProxyRefused

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
        with _READ_ERRORS:
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
            with _WRITE_ERRORS:
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
            with _CONNECT_ERRORS:
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
        with _CONNECT_ERRORS:
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
        with _CONNECT_ERRORS:
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
            ssl_context=tls_context() if verify is True else httpx.create_ssl_context(
                verify=verify, trust_env=False),
            max_connections=limits.max_connections,
            max_keepalive_connections=limits.max_keepalive_connections,
            keepalive_expiry=limits.keepalive_expiry,
            socket_options=socket_options,
            network_backend=AsyncioBackend(),
        )


class _Mapped:
    """asyncio's and the OS's errors as httpcore's, which httpx maps to its own. Stateless, so
    one instance per pair of errors serves every read and write (a generator-based context
    manager was built on each)."""

    def __init__(self, timeout_error: type[Exception], other_error: type[Exception]) -> None:
        self._timeout_error = timeout_error
        self._other_error = other_error

    def __enter__(self) -> None:
        return None

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 traceback: object) -> bool:
        if exc is None:
            return False
        if isinstance(exc, TimeoutError):
            raise self._timeout_error(str(exc) or "timed out") from exc
        if isinstance(exc, OSError | ssl.SSLError | asyncio.IncompleteReadError):
            raise self._other_error(str(exc) or type(exc).__name__) from exc
        return False


_CONNECT_ERRORS = _Mapped(httpcore.ConnectTimeout, httpcore.ConnectError)
_READ_ERRORS = _Mapped(httpcore.ReadTimeout, httpcore.ReadError)
_WRITE_ERRORS = _Mapped(httpcore.WriteTimeout, httpcore.WriteError)

# ---------------------------------------------------------------------- proxies

_DEFAULT_PORTS = {"http": 80, "https": 443}


def proxy_for(url: str, env: Mapping[str, str]) -> str | None:
    """The proxy URL to reach ``url`` through, decided from ``env`` as curl does; None = direct.

    ``https_proxy`` / ``http_proxy`` by the URL's scheme, else ``all_proxy``; each name lowercase
    first, then uppercase; an empty value counts as unset. ``no_proxy`` (else ``NO_PROXY``) lists
    hosts that go direct: ``*``, a host or a domain suffix (``example.com`` and ``.example.com``
    both cover ``api.example.com``), ``host:port``, an IP address or a CIDR block. Loopback
    (localhost, 127.0.0.0/8, ::1) never goes through a proxy. A proxy given without a scheme
    (``proxy.corp:3128``) is an HTTP proxy, as for curl and httpx.
    """
    parts = urlsplit(url)
    scheme = parts.scheme.lower()
    host = (parts.hostname or "").rstrip(".")  # lowercase, without brackets or port
    if scheme not in _DEFAULT_PORTS or not host or _is_loopback(host):
        return None
    proxy = _env(env, f"{scheme}_proxy") or _env(env, "all_proxy")
    if proxy is None:
        return None
    try:
        port = parts.port or _DEFAULT_PORTS[scheme]
    except ValueError:  # a port that is not a number: let the client refuse the URL itself
        port = _DEFAULT_PORTS[scheme]
    no_proxy = _env(env, "no_proxy")
    if no_proxy is not None and _bypassed(host, port, no_proxy):
        return None
    return proxy if "://" in proxy else f"http://{proxy}"


def api_transport(url: str, env: Mapping[str, str], *, limits: httpx.Limits | None = None,
                  socket_options: Iterable[Any] | None = None) -> httpx.AsyncBaseTransport:
    """The API client's transport: ``AsyncioTransport`` direct, httpx's own through a proxy.

    Raises ValueError when the proxy chosen cannot be used (unknown scheme, SOCKS without socksio).
    """
    proxy, tls = proxy_for(url, env), env_tls_context(env)
    if proxy is None:
        return AsyncioTransport(limits=limits, verify=tls, socket_options=socket_options)
    return _proxied(proxy, tls, limits=limits or httpx.Limits(), socket_options=socket_options)


def accounts_transport(url: str, env: Mapping[str, str]) -> httpx.AsyncBaseTransport:
    """The accounts (token) client's transport, through the proxy ``proxy_for`` picks if any.

    Raises ValueError when the proxy chosen, or the authorities ``env`` names, cannot be used.
    """
    proxy, tls = proxy_for(url, env), env_tls_context(env)
    return (httpx.AsyncHTTPTransport(verify=tls, trust_env=False) if proxy is None
            else _proxied(proxy, tls))


def check_proxies(urls: Iterable[str], env: Mapping[str, str]) -> None:
    """Raise ValueError (without a proxy's password) when the authorities ``env`` names, or a
    proxy it names for one of ``urls``, cannot be used: said before a job makes any file, not
    when its first call leaves."""
    tls = env_tls_context(env)
    for url in urls:
        proxy = proxy_for(url, env)
        if proxy is not None:
            _proxied(proxy, tls)


#: the variables naming the authorities TLS trusts, in the order httpx reads them
CA_FILE_VAR, CA_DIR_VAR = "SSL_CERT_FILE", "SSL_CERT_DIR"


def ca_locations(env: Mapping[str, str]) -> tuple[str | None, str | None]:
    """(cafile, capath) that ``env`` names, as httpx reads them from the process's environment:
    ``SSL_CERT_FILE``, else ``SSL_CERT_DIR``; (None, None) means certifi's authorities."""
    cafile = (env.get(CA_FILE_VAR) or "").strip() or None
    capath = None if cafile else (env.get(CA_DIR_VAR) or "").strip() or None
    return cafile, capath


def env_tls_context(env: Mapping[str, str]) -> ssl.SSLContext:
    """The verifying TLS context of a job whose environment is ``env``. ValueError, naming the
    variable, when the file or folder it names cannot be used (a traceback, or "internal
    error" once the journal was made, before)."""
    cafile, capath = ca_locations(env)
    name, where = (CA_FILE_VAR, cafile) if cafile else (CA_DIR_VAR, capath)
    try:
        # a bundle replaced (a CA rotated) in a long-lived host is loaded again
        stamp = os.stat(where) if where else None
        return tls_context(cafile, capath, stamp and (stamp.st_mtime_ns, stamp.st_size))
    except OSError as exc:  # ssl.SSLError too: "[X509: ...] no certificate ... (_ssl.c:4154)"
        why = re.sub(r"^\[[^]]*\]\s*|\s*\(_ssl\.c:\d+\)$", "", str(exc.strerror or exc))
        what = "a PEM file of authorities" if name == CA_FILE_VAR else \
            "a folder of authorities' certificates (as c_rehash makes)"
        raise ValueError(f"{name}={where} (from the environment) cannot be used for TLS "
                         f"({why}): point it at {what}, or unset it") from None


@functools.cache
def tls_context(cafile: str | None = None, capath: str | None = None,
                stamp: object = None) -> ssl.SSLContext:  # noqa: ARG001 (the cache's key)
    """The verifying TLS context — certifi's authorities, or those of ``cafile`` / ``capath``
    — made once a process for each and shared by the API and accounts clients: loading the
    authorities takes tens of milliseconds. Never reads the process's environment."""
    if cafile is None and capath is None:
        return httpx.create_ssl_context(trust_env=False)
    return ssl.create_default_context(cafile=cafile, capath=capath)


def _proxied(proxy: str, tls: ssl.SSLContext | None = None, **options: Any
             ) -> httpx.AsyncBaseTransport:
    tls = tls or tls_context()
    try:
        # an https:// proxy's own certificate is checked against the same authorities (httpcore
        # would load OpenSSL's defaults, which read the process's environment)
        via = httpx.Proxy(proxy, ssl_context=tls) if proxy.lower().startswith("https://") \
            else proxy
        return _Proxied(httpx.AsyncHTTPTransport(proxy=via, verify=tls, trust_env=False,
                                                 **options), _shown(proxy))
    except (ImportError, ValueError, httpx.InvalidURL) as exc:
        raise ValueError(f"cannot use the proxy {_shown(proxy)} from the environment: "
                         f"{_shown(str(exc))}") from None


class _Proxied(httpx.AsyncBaseTransport):
    """httpx's transport through a proxy; a proxy asking for credentials (407) stops the run
    (:class:`ProxyRefused`) instead of being retried as an outage for minutes: no call passes
    until its URL carries the right ones."""

    def __init__(self, inner: httpx.AsyncHTTPTransport, shown: str) -> None:
        self._inner, self._shown = inner, shown

    async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
        try:
            response = await self._inner.handle_async_request(request)
        except httpx.ProxyError as exc:  # the CONNECT of an https:// request
            if str(exc).startswith("407"):
                raise self._refused() from None
            raise
        if response.status_code == 407:  # a plain http:// request, answered by the proxy
            await response.aclose()
            raise self._refused()
        return response

    def _refused(self) -> ProxyRefused:
        return ProxyRefused(f"the proxy {self._shown} from the environment asks for credentials "
                            "(407 Proxy Authentication Required): give them in its URL "
                            "(http://user:password@host:port), then re-run the same command")

    async def aclose(self) -> None:
        await self._inner.aclose()


def _shown(text: str) -> str:
    """``text`` with any ``user:password@`` of a URL masked: a proxy URL may carry credentials."""
    head, sep, rest = text.partition("://")
    if not sep:
        return text
    authority, slash, path = rest.partition("/")
    if "@" in authority:
        authority = "***@" + authority.rpartition("@")[2]
    return f"{head}{sep}{authority}{slash}{path}"


def _env(env: Mapping[str, str], name: str) -> str | None:
    for key in (name.lower(), name.upper()):
        value = (env.get(key) or "").strip()
        if value:
            return value
    return None


def _ip(host: str) -> ipaddress.IPv4Address | ipaddress.IPv6Address | None:
    try:
        return ipaddress.ip_address(host.partition("%")[0])  # fe80::1%eth0: scope id aside
    except ValueError:
        return None


def _is_loopback(host: str) -> bool:
    if host == "localhost" or host.endswith(".localhost"):
        return True
    ip = _ip(host)
    if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is not None:
        ip = ip.ipv4_mapped
    return ip is not None and ip.is_loopback


def _bypassed(host: str, port: int, no_proxy: str) -> bool:
    """Whether ``no_proxy`` sends ``host``:``port`` direct. Names, suffixes and host:port as the
    standard library reads them (``*.example.com`` taken as ``.example.com``); IP addresses and
    CIDR blocks compared as addresses, never as name suffixes."""
    entries = [e.strip() for e in no_proxy.split(",") if e.strip()]
    if "*" in entries:
        return True
    ip = _ip(host)
    if ip is None:
        names = ",".join(e[1:] if e.startswith("*.") else e for e in entries)
        return urllib.request.proxy_bypass_environment(f"{host}:{port}", {"no": names})
    for entry in entries:
        address, port_given = _split_port(entry)
        if port_given is not None and port_given != port:
            continue
        try:
            if ip in ipaddress.ip_network(address, strict=False):
                return True
        except ValueError:
            continue
    return False


def _split_port(entry: str) -> tuple[str, int | None]:
    """``[::1]:8080`` / ``10.0.0.1:8080`` / ``10.0.0.0/8`` / ``::1`` → (address, port or None)."""
    if entry.startswith("["):
        address, _, rest = entry[1:].partition("]")
        port = rest[1:] if rest.startswith(":") else ""
    elif entry.count(":") == 1:
        address, _, port = entry.partition(":")
    else:
        address, port = entry, ""
    return address, int(port) if port.isdigit() else None
