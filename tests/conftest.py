"""Shared fixtures: a real sandbox served over loopback HTTP, and the environment pointing at it."""

from __future__ import annotations

import csv
import sqlite3
from dataclasses import dataclass
from pathlib import Path

import pytest

from batcher.sandbox.config import SandboxConfig
from batcher.sandbox.serve import RestartableSandbox, running_sandbox
from batcher.sandbox.world import World

#: distinctive secrets, so a leak scan can find them anywhere
SECRET = "s3cr3t-client-secret-ZZQ"
REFRESH = "1000.r3fr3sh-token-ZZQ"


@pytest.fixture(autouse=True, scope="session")
def _no_cache_in_the_real_home(tmp_path_factory):
    """A token cache a test turns on lives in a temporary folder, never in ~/.cache."""
    import os

    before = os.environ.get("XDG_CACHE_HOME")
    os.environ["XDG_CACHE_HOME"] = str(tmp_path_factory.mktemp("xdg-cache"))
    yield
    if before is None:
        os.environ.pop("XDG_CACHE_HOME", None)
    else:
        os.environ["XDG_CACHE_HOME"] = before


@dataclass
class Live:
    base_url: str
    sandbox: object  # batcher.sandbox.state.Sandbox: the server's truth
    env: dict[str, str]


@pytest.fixture
def serve():
    """Start a sandbox over loopback for a world and config; stopped at the end of the test."""
    stack = []

    def start(world: World, **config) -> Live:
        cfg = SandboxConfig(client_secret=SECRET, refresh_token=REFRESH, **config)
        cm = running_sandbox(world, cfg)
        base_url, sandbox = cm.__enter__()
        stack.append(cm)
        env = {"ZOHO_API_DOMAIN": base_url, "ZOHO_ACCOUNTS_URL": base_url,
               "ZOHO_CLIENT_ID": cfg.client_id, "ZOHO_CLIENT_SECRET": SECRET,
               "ZOHO_REFRESH_TOKEN": REFRESH, "BATCHER_NO_TOKEN_CACHE": "1"}
        return Live(base_url, sandbox, env)

    yield start
    for cm in reversed(stack):
        cm.__exit__(None, None, None)


@dataclass
class RestartableLive(Live):
    """A ``Live`` sandbox that can go down (``stop()``) and come back (``start()``) on the same
    port, keeping its truth: for outage tests."""

    handle: RestartableSandbox

    def stop(self) -> None:
        self.handle.stop()

    def start(self) -> None:
        self.handle.start()


@pytest.fixture
def serve_restartable():
    """As ``serve``, but the sandbox returned can be stopped and started again mid-test."""
    started: list[RestartableSandbox] = []

    def start(world: World, **config) -> RestartableLive:
        cfg = SandboxConfig(client_secret=SECRET, refresh_token=REFRESH, **config)
        handle = RestartableSandbox(world, cfg)
        started.append(handle)
        handle.start()
        env = {"ZOHO_API_DOMAIN": handle.base_url, "ZOHO_ACCOUNTS_URL": handle.base_url,
               "ZOHO_CLIENT_ID": cfg.client_id, "ZOHO_CLIENT_SECRET": SECRET,
               "ZOHO_REFRESH_TOKEN": REFRESH, "BATCHER_NO_TOKEN_CACHE": "1"}
        return RestartableLive(handle.base_url, handle.sandbox, env, handle)

    yield start
    for handle in reversed(started):
        handle.stop()


def write_pairs(path: Path, rows: list[tuple[str, str, str]]) -> Path:
    with open(path, "w", newline="") as fh:
        w = csv.writer(fh)
        w.writerow(["module", "record_id", "cadence_id"])
        w.writerows(rows)
    return path


def read_results(path: Path) -> list[dict[str, str]]:
    with open(path, newline="") as fh:
        return list(csv.DictReader(fh))


def journal_calls(journal: Path) -> tuple[int, int]:
    """(calls counted, calls in the call log) as the journal holds them now, read while a run
    may write it; (0, 0) before they exist."""
    try:
        with sqlite3.connect(f"file:{journal}?mode=ro", uri=True) as db:
            counted = db.execute("SELECT coalesce(max(value), 0) FROM counters"
                                 " WHERE name = 'calls'").fetchone()[0]
            return counted, db.execute("SELECT count(*) FROM calls").fetchone()[0]
    except sqlite3.Error:
        return 0, 0
