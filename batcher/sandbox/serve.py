"""Serving the sandbox with uvicorn: ``batcher sandbox`` in the foreground, or a background thread
for end-to-end tests in the same process (``running_sandbox``; ``restartable_sandbox`` when a test
needs Zoho to go away mid-job and come back on the same port with the same state)."""

from __future__ import annotations

import asyncio
import contextlib
import gc
import logging
import signal
import socket
import sys
import threading
import time
from collections.abc import Iterator
from typing import TYPE_CHECKING, TextIO

import uvicorn

from .app import create_app
from .config import SandboxConfig
from .faults import PROFILES, DroppedConnection
from .state import Sandbox
from .world import World

if TYPE_CHECKING:
    from ..inputs import InputOptions

_START_TIMEOUT = 10.0


class _HideDrops(logging.Filter):
    """uvicorn logs every exception as an error; a deliberate drop is not one, nor a call cut
    because the server stopped while it was held back."""

    def filter(self, record: logging.LogRecord) -> bool:
        exc = record.exc_info[1] if record.exc_info else None
        return not isinstance(exc, DroppedConnection | asyncio.CancelledError)


def _quiet_drops() -> None:
    logger = logging.getLogger("uvicorn.error")
    if not any(isinstance(f, _HideDrops) for f in logger.filters):
        logger.addFilter(_HideDrops())


def _bind(host: str, port: int) -> socket.socket:
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    # answers go out as headers then body: without this, Nagle + delayed ACK add 40 ms a call
    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    try:
        sock.bind((host, port))
    except OSError:
        sock.close()
        raise
    sock.set_inheritable(True)
    return sock


class _Server(uvicorn.Server):
    """uvicorn, and once its graceful shutdown is over, no connection left open."""

    async def shutdown(self, sockets: list[socket.socket] | None = None) -> None:
        # uvicorn closes idle keep-alive connections at once and lets calls in progress finish
        # (up to timeout_graceful_shutdown); whatever is still open after that is cut here, so a
        # stopped sandbox leaves no socket a client could still talk to
        await super().shutdown(sockets)
        for connection in list(self.server_state.connections):
            transport = getattr(connection, "transport", None)
            if transport is not None:
                transport.abort()


class RestartableSandbox:
    """A sandbox served in a background thread that can stop and start again on the same port.

    One app, hence one ``Sandbox`` (world, tokens, dice, truth) for its whole life: a restart is
    an outage of the server, not a new org. While stopped, nothing listens on the port and no
    connection is left open, so a client gets connection refused (or reset).
    """

    def __init__(self, world: World, config: SandboxConfig, host: str = "127.0.0.1",
                 port: int = 0, *, grace: float = 2.0) -> None:
        _quiet_drops()
        self._app = create_app(world, config)
        self.host = host
        self.port = port  # 0 until the first start picks a free port
        self.grace = grace
        self._server: _Server | None = None
        self._thread: threading.Thread | None = None
        self._sock: socket.socket | None = None

    @property
    def sandbox(self) -> Sandbox:
        return self._app.state.sandbox

    @property
    def base_url(self) -> str:
        if not self.port:
            raise RuntimeError("the sandbox has not been started yet")
        return f"http://{self.host}:{self.port}"

    @property
    def running(self) -> bool:
        return self._server is not None

    def start(self) -> None:
        """Listen again (the first time: on ``port``, or a free one); no-op when running.

        Raises ``OSError`` when the port is taken, ``RuntimeError`` when uvicorn does not start.
        """
        if self._server is not None:
            return
        # http="auto": httptools when installed (it is a dependency), a parser fast enough for the
        # sandbox to keep up with a job at 200 calls/s
        server = _Server(uvicorn.Config(self._app, log_level="warning", access_log=False,
                                        lifespan="off", http="auto",
                                        timeout_graceful_shutdown=self.grace))
        sock = _bind(self.host, self.port)
        thread = threading.Thread(target=server.run, kwargs={"sockets": [sock]},
                                  name="batcher-sandbox", daemon=True)
        self._server, self._thread, self._sock = server, thread, sock
        thread.start()
        deadline = time.monotonic() + _START_TIMEOUT
        while not server.started:
            if not thread.is_alive() or time.monotonic() > deadline:
                self.stop()
                raise RuntimeError("the sandbox server did not start")
            time.sleep(0.01)
        self.port = sock.getsockname()[1]

    def stop(self) -> None:
        """Stop listening and close every connection; no-op when stopped.

        Idle keep-alive connections close at once; a call in progress has ``grace`` seconds to
        be answered, then its connection is cut (applied or not as already decided; the truth
        records it with ``http_status`` None). Returns once nothing is left open.
        """
        server, thread, sock = self._server, self._thread, self._sock
        if server is None or thread is None or sock is None:
            return
        server.should_exit = True
        thread.join(timeout=self.grace + 5)
        sock.close()
        self._server = self._thread = self._sock = None


@contextlib.contextmanager
def restartable_sandbox(world: World, config: SandboxConfig | None = None,
                        host: str = "127.0.0.1", port: int = 0, *, grace: float = 2.0
                        ) -> Iterator[RestartableSandbox]:
    """Serve on loopback for the block, started; ``.stop()`` / ``.start()`` make an outage.

    ``.base_url`` (the same port throughout) and ``.sandbox`` (the same truth throughout);
    ``grace``: how long ``stop()`` lets a call in progress finish before cutting it.
    """
    live = RestartableSandbox(world, config or SandboxConfig(), host, port, grace=grace)
    live.start()
    try:
        yield live
    finally:
        live.stop()


@contextlib.contextmanager
def _serving(world: World, config: SandboxConfig, host: str, port: int
             ) -> Iterator[tuple[str, Sandbox, uvicorn.Server, threading.Thread]]:
    """uvicorn in a background thread (no signal handlers of its own) on a bound socket."""
    with restartable_sandbox(world, config, host, port) as live:
        yield live.base_url, live.sandbox, live._server, live._thread


@contextlib.contextmanager
def running_sandbox(world: World, config: SandboxConfig | None = None,
                    host: str = "127.0.0.1") -> Iterator[tuple[str, Sandbox]]:
    """Serve on a free loopback port for the duration of the block: yields (base_url, sandbox)."""
    with _serving(world, config or SandboxConfig(), host, 0) as (base_url, sandbox, _, _):
        yield base_url, sandbox


def environment(base_url: str, config: SandboxConfig) -> dict[str, str]:
    """What a user exports to point batcher at the sandbox (fake sandbox credentials)."""
    return {
        "ZOHO_API_DOMAIN": base_url,
        "ZOHO_ACCOUNTS_URL": base_url,
        "ZOHO_CLIENT_ID": config.client_id,
        "ZOHO_CLIENT_SECRET": config.client_secret,
        "ZOHO_REFRESH_TOKEN": config.refresh_token,
    }


def serve(world: World, config: SandboxConfig, host: str = "127.0.0.1", port: int = 0,
          out: TextIO | None = None) -> int:
    """Serve until Ctrl-C or SIGTERM, after printing the exports and the truth URL. Exit code."""
    out = out or sys.stdout
    stop = threading.Event()
    previous = _install_stop_handlers(stop)
    try:
        with _serving(world, config, host, port) as (base_url, sandbox, server, thread):
            # The world and the truth's sets hold millions of objects that live until the process
            # ends; left to the collector, each full collection re-scans them all and stalls every
            # call for hundreds of milliseconds, which no real Zoho does. This process only serves.
            gc.freeze()
            _announce(out, base_url, sandbox, config)
            while thread.is_alive() and not stop.is_set():
                stop.wait(0.2)
            server.should_exit = True
            calls, removed = len(sandbox.calls), len(sandbox.removed)
    finally:
        gc.unfreeze()
        _restore_handlers(previous)
    print(f"sandbox stopped: {calls} un-enrol calls received, {removed} pairs un-enrolled",
          file=out, flush=True)
    return 0


def _announce(out: TextIO, base_url: str, sandbox: Sandbox, config: SandboxConfig) -> None:
    world = sandbox.world
    records = sum(len(ids) for ids in world.records.values())
    print(f"Zoho sandbox listening on {base_url} (faults: {config.fault_profile}, "
          f"seed: {config.seed}) — {records} records, {len(world.cadences)} cadences, "
          f"{len(sandbox.initially_enrolled)} enrollments", file=out)
    print("Point batcher at it with:", file=out)
    for name, value in environment(base_url, config).items():
        print(f"export {name}={value}", file=out)
    print(f"Truth (every call, every pair named and removed): GET {base_url}/__sandbox__/truth",
          file=out)
    print("Press Ctrl-C to stop.", file=out, flush=True)


def _install_stop_handlers(stop: threading.Event) -> dict:
    if threading.current_thread() is not threading.main_thread():
        return {}
    return {sig: signal.signal(sig, lambda *_: stop.set())
            for sig in (signal.SIGINT, signal.SIGTERM)}


def _restore_handlers(previous: dict) -> None:
    for sig, handler in previous.items():
        signal.signal(sig, handler)


def main(port: int, from_input: str | None, faults: str, seed: int,
         module: InputOptions | str | None = None, echo_auth: bool = False) -> int:
    """``batcher sandbox``: build the world (from INPUT, else from the seed) and serve it.

    ``module`` is the default for rows without one (as ``--module`` of ``batcher run``), or
    all the input flags (``--cadence`` makes INPUT a record list).
    ``echo_auth`` makes every error answer repeat the request's secrets
    (``SandboxConfig.echo_auth``), to check by hand that batcher never prints them. Raises
    ``InputError`` (exit 2) when INPUT cannot be read; returns 2 for a bad profile or port.
    """
    if faults not in PROFILES:
        print(f"batcher sandbox: unknown fault profile {faults!r}; choose one of: "
              f"{', '.join(PROFILES)}", file=sys.stderr)
        return 2
    if from_input is not None:
        from ..inputs import read_input

        world = World.from_pairs(read_input(from_input, module).valid_pairs())
    else:
        world = World.generate(seed)
    config = SandboxConfig(fault_profile=faults, seed=seed, echo_auth=echo_auth)
    try:
        return serve(world, config, port=port)
    except OSError as exc:
        print(f"batcher sandbox: cannot listen on 127.0.0.1:{port}: {exc.strerror or exc}",
              file=sys.stderr)
        return 2
