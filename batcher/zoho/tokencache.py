"""Access tokens kept between commands, so ten commands in ten minutes do not use up Zoho's ten
token refreshes per refresh token.

One JSON file per (accounts server, client id, refresh token), named by the sha256 of the three (a
name that reveals nothing), in a per-user directory created 0700. A file holds the last access
token, when it was cached and its expiry, its ``api_domain`` and the times of the recent
refreshes, so the next command knows when Zoho will issue a token again.

The times are the wall clock's, which an NTP step or a resumed VM moves between two commands. A
clock set forward makes a token look older than it is: it is not lent, and the next command
refreshes once (never a storm: the token it gets is cached on the new time line). A clock set
back makes it look younger: it is believed for no longer than it was issued for, and
:class:`~batcher.zoho.auth.ZohoAuth` tries a lent token with one call before any other uses it,
so a stale one costs one refused call and one refresh.

Files are written 0600 through a temporary file renamed over the old one: a reader never sees
half a file, and two jobs writing at once leave one whole file (the other's update is lost,
which costs at most a refresh or one refresh time).

A file that is corrupt, a symbolic link, not a regular file, not the user's own, or readable by
anyone else is ignored, and nothing here raises on a file system problem: a cache must never stop
a job, only save it a refresh.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import re
import secrets
import stat
import sys
import time
from collections.abc import Mapping
from contextlib import suppress
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import platformdirs

#: a cached token is reused only while it lives at least this much longer (seconds)
MARGIN = 300.0
#: Zoho issues at most 10 access tokens per refresh token in this many seconds
WINDOW = 600.0
#: environment variables read by :func:`default_cache`
DIR_VAR, OFF_VAR = "BATCHER_TOKEN_CACHE_DIR", "BATCHER_NO_TOKEN_CACHE"

_KEY = re.compile(r"[0-9a-f]{64}")
#: a token goes into an HTTP header: printable ASCII without spaces, or it is not used (also
#: one the accounts server answers: :mod:`batcher.zoho.auth`)
TOKEN_SHAPE = re.compile(r"[!-~]{1,4096}")
_MAX_BYTES = 64 * 1024
_MAX_TIMES = 100  # refresh times kept: far more than Zoho's 10 per window
# O_NOFOLLOW refuses a symbolic link; O_NONBLOCK keeps a FIFO planted there from hanging the open
_READ = os.O_RDONLY | getattr(os, "O_NOFOLLOW", 0) | getattr(os, "O_NONBLOCK", 0)
_CREATE = os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_NOFOLLOW", 0)


@dataclass(frozen=True, slots=True)
class CachedToken:
    """An access token from the cache; ``expires_at`` and ``cached_at`` (when it was put, just
    after Zoho issued it) in epoch seconds (``time.time()``)."""

    access_token: str = field(repr=False)
    expires_at: float
    api_domain: str | None
    cached_at: float = 0.0


@dataclass(frozen=True, slots=True)
class _Entry:
    token: CachedToken | None = None
    refreshed: tuple[float, ...] = ()  # epoch seconds, oldest first


def cache_key(accounts_url: str, client_id: str, refresh_token: str) -> str:
    """The sha256 hex digest (64 characters) naming the cache file of these credentials."""
    text = "\n".join((accounts_url.rstrip("/"), client_id, refresh_token))
    return hashlib.sha256(text.encode("utf-8")).hexdigest()


def default_cache(env: Mapping[str, str], *, enabled: bool = True) -> TokenCache | None:
    """The job's cache: None when ``enabled`` is False (``--no-token-cache``) or
    ``BATCHER_NO_TOKEN_CACHE`` is set to anything but ``0``; else in ``BATCHER_TOKEN_CACHE_DIR``,
    or the user's cache directory as ``env`` places it (:func:`user_cache_dir`).

    Also None (each command refreshes) for a directory that is not absolute — a relative
    ``BATCHER_TOKEN_CACHE_DIR``, or a home that does not resolve (no HOME, a uid without a
    passwd entry) — which would land in whatever folder a scheduler starts the job in (cron's
    ``/``), and for the default directory of a home that does not exist (a service account's
    ``/nonexistent``): a cache never creates a user's home folder."""
    if not enabled or (env.get(OFF_VAR) or "").strip() not in ("", "0"):
        return None
    given = (env.get(DIR_VAR) or "").strip()
    if given:
        directory = Path(given)
        return TokenCache(directory) if directory.is_absolute() else None
    found = user_cache_dir(env)
    if found is None:
        return None
    directory, home = found
    if home is not None and directory.is_relative_to(home) and not home.is_dir():
        return None
    return TokenCache(directory)


def user_cache_dir(env: Mapping[str, str]) -> tuple[Path, Path | None] | None:
    """(``batcher``'s folder in the user's cache directory, the user's home or None) as
    ``platformdirs.user_cache_dir`` finds it for a process whose environment is ``env``: it
    would read ``XDG_CACHE_HOME`` and ``HOME`` from this process's, and a library host's
    ``env=`` decides. An absolute ``XDG_CACHE_HOME`` (a relative one is ignored, as the XDG
    spec says), else ``~/.cache`` (macOS: ``~/Library/Caches``), ``~`` being an absolute
    ``HOME``, else the user's passwd entry (as ``expanduser`` does). None when neither resolves.
    On Windows, platformdirs' (the system's known folder)."""
    if sys.platform == "win32":  # pragma: no cover
        return Path(platformdirs.user_cache_dir("batcher")), None
    home: str | None = (env.get("HOME") or "").strip()
    if not os.path.isabs(home or ""):
        try:
            import pwd

            home = pwd.getpwuid(os.getuid()).pw_dir
        except (ImportError, KeyError):
            home = None
        home = home if home and os.path.isabs(home) else None
    xdg = (env.get("XDG_CACHE_HOME") or "").strip()
    if os.path.isabs(xdg):
        return Path(xdg) / "batcher", home and Path(home)
    if home is None:
        return None
    under = ("Library", "Caches") if sys.platform == "darwin" else (".cache",)
    return Path(home).joinpath(*under, "batcher"), Path(home)


class TokenCache:
    """Access tokens and refresh times per :func:`cache_key`, in files under ``directory``.

    ``get`` and ``refreshes`` read the file, ``put``, ``drop`` and ``note_refresh`` rewrite it
    whole. None of them raises on a file problem: an unusable file reads as empty and a failed
    write is skipped. A key that is not a sha256 hex digest is a bug and raises ``ValueError``.
    """

    def __init__(self, directory: Path, *, margin: float = MARGIN, window: float = WINDOW) -> None:
        self.directory = Path(directory)
        self._margin = margin
        self._window = window

    def __repr__(self) -> str:
        return f"TokenCache({str(self.directory)!r})"

    def get(self, key: str) -> CachedToken | None:
        """The cached token if it lives at least ``margin`` seconds more, else None; its
        ``expires_at`` is at most its lifetime (as cached) from now — after the clock was set
        back, more would be a token believed alive for longer than Zoho ever issued it."""
        token = self._load(key).token
        if token is None:
            return None
        now = time.time()
        expires_at = min(token.expires_at, now + (token.expires_at - token.cached_at))
        if expires_at - now < self._margin:
            return None
        return replace(token, expires_at=expires_at)

    def put(self, key: str, token: str, expires_at: float, api_domain: str | None) -> None:
        """Cache ``token`` (expiring at ``expires_at``, epoch seconds; issued just now),
        keeping refresh times."""
        entry = self._load(key)
        self._store(key, _Entry(CachedToken(token, expires_at, api_domain, time.time()),
                                entry.refreshed))

    def drop(self, key: str) -> None:
        """Forget the token (Zoho rejected it), keeping refresh times."""
        entry = self._load(key)
        if entry.token is not None:
            self._store(key, _Entry(None, entry.refreshed))

    def refreshes(self, key: str) -> tuple[float, ...]:
        """Epoch seconds of the refreshes noted within the last ``window``, oldest first."""
        return self._recent(self._load(key).refreshed)

    def note_refresh(self, key: str, at: float) -> None:
        """Record a refresh the accounts server answered at ``at`` (epoch seconds)."""
        entry = self._load(key)
        times = self._recent((*entry.refreshed, at))[-_MAX_TIMES:]
        self._store(key, _Entry(entry.token, times))

    def _recent(self, times: tuple[float, ...]) -> tuple[float, ...]:
        now = time.time()
        # a time ahead of the clock is a refresh made before the clock was set back (an NTP
        # step, a VM resumed): it still counts at Zoho, so it counts as now, not as never
        return tuple(sorted(min(t, now) for t in times if now - self._window < t))

    def _path(self, key: str) -> Path:
        if not _KEY.fullmatch(key):
            raise ValueError("a token cache key is a sha256 hex digest (see cache_key)")
        return self.directory / f"{key}.json"

    def _load(self, key: str) -> _Entry:
        path = self._path(key)
        try:
            fd = os.open(path, _READ)
        except OSError:  # absent, a symbolic link (ELOOP), unreadable
            return _Entry()
        try:
            with open(fd, "rb") as fh:
                if not _private(os.fstat(fh.fileno())):
                    return _Entry()
                data = fh.read(_MAX_BYTES + 1)
            return _parse(json.loads(data)) if len(data) <= _MAX_BYTES else _Entry()
        except (OSError, ValueError, RecursionError):
            return _Entry()

    def _store(self, key: str, entry: _Entry) -> None:
        path = self._path(key)
        tmp = self.directory / f".{key}.{secrets.token_hex(8)}.tmp"
        try:
            _private_dirs(self.directory)
            fd = os.open(tmp, _CREATE, 0o600)
        except OSError:
            return  # the next command refreshes: nothing worse
        try:
            with open(fd, "wb") as fh:
                fh.write(_dump(entry))
            # no fsync: a file a crash left empty or torn is ignored, at the cost of a refresh
            os.replace(tmp, path)  # replaces a symbolic link itself, never its target
        except OSError:
            with suppress(OSError):
                tmp.unlink()


def _private_dirs(directory: Path) -> None:
    """``directory`` and each missing folder above it, created 0700: ``mkdir(parents=True)``
    makes the parents by the umask, and a job run with ``umask 000`` made ``~/.cache``
    world-writable."""
    missing = []
    for path in (directory, *directory.parents):
        if path.is_dir():
            break
        missing.append(path)
    for path in reversed(missing):
        with suppress(FileExistsError):  # another job made it meanwhile
            path.mkdir(mode=0o700)


def _private(st: os.stat_result) -> bool:
    """A regular file of this user that no one else may read or write."""
    getuid = getattr(os, "getuid", None)
    owned = getuid is None or st.st_uid == getuid()
    return stat.S_ISREG(st.st_mode) and owned and not st.st_mode & 0o077


def _dump(entry: _Entry) -> bytes:
    token = entry.token
    data = {"access_token": token and token.access_token,
            "expires_at": token and token.expires_at,
            "cached_at": token and token.cached_at,
            "api_domain": token and token.api_domain,
            "refreshed": list(entry.refreshed)}
    return json.dumps(data).encode("utf-8")


def _parse(data: Any) -> _Entry:
    """The entry in a decoded file; fields of the wrong shape read as absent."""
    if not isinstance(data, dict):
        return _Entry()
    times = data.get("refreshed")
    refreshed = tuple(float(t) for t in times if _number(t)) if isinstance(times, list) else ()
    token, expires_at, cached_at, domain = (data.get(k) for k in (
        "access_token", "expires_at", "cached_at", "api_domain"))
    # without when it was cached (a file of an earlier version), a token's lifetime is unknown:
    # not lent (one refresh)
    if not (isinstance(token, str) and TOKEN_SHAPE.fullmatch(token) and _number(expires_at)
            and _number(cached_at) and cached_at < expires_at
            and (domain is None or isinstance(domain, str))):
        return _Entry(None, refreshed)
    return _Entry(CachedToken(token, float(expires_at), domain, float(cached_at)), refreshed)


def _number(value: Any) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool) and math.isfinite(value)
