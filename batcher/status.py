"""`batcher status`: what a job's journal says now — also while a run holds it.

Nothing here writes to the journal or waits for its lock. The SQLite file is opened read-only
(``mode=ro``) and read in one transaction, so every number comes from one snapshot; in WAL mode a
reader never blocks the writer's commits. On a finished journal SQLite creates its empty
``-wal``/``-shm`` files beside it (mode copied from the journal) and leaves them: the next run
uses them as its own. Where it cannot (a read-only folder: an archive copy), a journal no run
holds is read as immutable (:mod:`batcher.readonly`).

Whether a run holds the journal is told by its lock file (``<journal>.lock``), where
:mod:`batcher.journal` writes the holder's pid while it holds the ``flock`` and empties it on
release. An empty file: nobody holds it. A pid: the lock is tried shared and non-blocking —
refused means that process holds it (the try never waits, and a holder's lock and commits do
not depend on it); granted means a run killed by ``kill -9`` left its pid, and the lock is
dropped at once; a run starting within those microseconds waits them out (:mod:`batcher.journal`
waits a moment for readers). A `batcher report` holding it writes ``<pid> report``.

Cost: the counts come from the batches and the pair outcomes that differ from their batch's
(:mod:`batcher.counts`), never from the rows, so a poll of a ten-million-row job takes about as
long as one of a small job; plus one pass over the call log.
"""

from __future__ import annotations

import errno
import fcntl
import json
import os
import sqlite3
import sys
import time
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Any, TextIO

from .counts import SCHEMA_VERSION, status_counts, unknown_calls_text
from .errors import UsageError
from .models import Status, utc_at, where_journals_are
from .readonly import connect_read_only
from .streams import printable

# the journal's own meta keys and format (batcher.journal; a test keeps them equal): importing
# that module would load pyarrow, half a second of every status poll
_K_VERSION, _K_LOADED, _K_STARTED = ("batcher.schema_version", "batcher.loaded",
                                     "batcher.started_at")
_K_STOPPED = "user.aborted"  # why the last run stopped, as job.py keeps it (Journal.set_meta)
_TABLES = frozenset({"meta", "counters", "batches", "row_chunks", "outcomes"})
RATE_WINDOW_S = 60.0

_STATUSES = tuple(s.value for s in Status)
# the latest failed answer: a pair's own outcome or a batch's shared one, whichever is later
# (SQLite's bare columns take the values of the row where the query's only max() is reached)
_LAST_FAILED_SQL = ("SELECT max(finished_at), code, message FROM ("
                    "SELECT finished_at, code, message FROM outcomes WHERE status = 'failed'"
                    " UNION ALL SELECT finished_at, code, message FROM batches"
                    " WHERE status = 'failed' AND state = 'answered')")
_CALLS_SQL = ("SELECT count(*) FILTER (WHERE at >= :since), min(at) FILTER (WHERE at >= :since),"
              " max(at + seconds), count(*) FROM calls")


@dataclass(frozen=True)
class LastError:
    """The most recent ``failed`` row: its code, message and when its answer was recorded (UTC,
    ISO 8601)."""

    code: str | None
    message: str | None
    at: str


@dataclass(frozen=True)
class JobStatus:
    """One snapshot of a job's journal.

    ``by_status``: rows per result status, every status present (0 included), in
    :class:`~batcher.models.Status` order. ``batches_left``/``pairs_left``: planned calls not yet
    answered (pending, or sent without a recorded answer) and the pairs they hold. ``calls``,
    ``retries``, ``throttled`` (429s), ``credits``: the job's counters over all its runs.
    ``calls_outcome_unknown``: of ``calls``, those never logged, as in the summary: a run killed
    (``kill -9``) with them in flight, so whether Zoho applied them is unknown; while a run holds
    the journal it also counts that run's calls in flight (their answers not committed yet).
    ``last_call_at``: when the latest un-enrol call ended (UTC, ISO 8601; None without a call
    log). ``rate``: un-enrol calls per second over the last minute of the call log (from its
    first call in that minute, when the run began within it); None when no run holds the
    journal or it has no call log. ``eta_s``: seconds until the batches left are sent at that
    rate (0 when none is left, None when unknown or before the plan is loaded); a split or
    retried batch makes it optimistic. ``running``: a batcher process holds the journal's lock
    (``pid``: its pid, None when it wrote none). ``stopped_by``: why its last run stopped before
    the end, as that run said it (``--max-calls`` reached, a signal, an outage…); None when it
    did not, or while a run holds the journal. ``read_by``: the pid of a `batcher report` that
    holds the journal's lock to read it (a run started meanwhile is refused); None otherwise.
    The counts default to 0: a journal its run has just created holds none.
    """

    journal: str
    running: bool
    pid: int | None
    loaded: bool
    by_status: dict[str, int]
    batches_left: int = 0
    pairs_left: int = 0
    calls: int = 0
    retries: int = 0
    throttled: int = 0
    credits: int = 0
    calls_outcome_unknown: int = 0
    started_at: str | None = None
    last_call_at: str | None = None
    rate: float | None = None
    eta_s: float | None = None
    last_error: LastError | None = None
    stopped_by: str | None = None
    read_by: int | None = None

    @property
    def rows(self) -> int:
        return sum(self.by_status.values())

    @property
    def state(self) -> str:
        """``running``, ``finished`` (planned and nothing left to send) or ``stopped``."""
        if self.running:
            return "running"
        return "finished" if self.loaded and not self.batches_left else "stopped"

    def as_dict(self) -> dict[str, Any]:
        """JSON-ready: the fields, plus ``state`` and ``rows``."""
        return {"state": self.state, "rows": self.rows, **asdict(self)}

    def human(self) -> str:
        counts = ", ".join(f"{s} {n:,}" for s, n in self.by_status.items() if n)
        # before its plan is loaded, a journal knows neither the rows nor what is left
        # (everything is): its zeros would read as a job with nothing left to send
        held = [f"rows {self.rows:,}" + (f": {counts}" if counts else ""),
                f"left: {self.batches_left:,} batches ({self.pairs_left:,} pairs)"
                + self._pace_text()] if self.loaded else [
                "rows and calls left: not known until its plan is loaded (no un-enrol call "
                "was sent: every pair is left)"]
        lines = [f"journal {self.journal}: {self._state_text()}",
                 *([printable(f"its last run stopped: {self.stopped_by}")]
                   if self.stopped_by and not self.running else []), *held,
                 f"calls {self.calls:,}, retries {self.retries:,}, 429s {self.throttled:,}, "
                 f"credits {self.credits:,}", *self._unknown_calls(),
                 f"started {self.started_at or '-'}, last call {self.last_call_at or '-'}"]
        if self.read_by is not None:
            lines.insert(1, f"being read by `batcher report` (pid {self.read_by}): a run started "
                            "before it ends is refused")
        if self.last_error:
            e = self.last_error
            message = " ".join((e.message or "").split())  # a server's text on one line
            lines.append(printable(f"last error: {e.code or '-'} {message} ({e.at})"))
        return "\n".join(lines)

    def _unknown_calls(self) -> list[str]:
        """The summary's line on calls of unknown outcome; while a run holds the journal its
        own calls in flight are among them, and said so."""
        n = self.calls_outcome_unknown
        if not n:
            return []
        if self.running:
            return [f"{n} of the {self.calls:,} calls have no answer in the journal yet: in "
                    "flight now, or in flight when an earlier run was killed (whether Zoho "
                    "applied those is unknown)"]
        return [unknown_calls_text(self.calls, n) or ""]

    def _state_text(self) -> str:
        if self.running:
            return f"running (pid {self.pid if self.pid is not None else 'unknown'})" + (
                "" if self.loaded else ", planning")
        if self.state == "finished":
            return "finished"
        return ("stopped before its plan was loaded" if not self.loaded else "stopped") + \
            ": re-run its command to resume"

    def _pace_text(self) -> str:
        if self.rate is None:
            return ""
        eta = "unknown" if self.eta_s is None else _duration(self.eta_s)
        return f"; {self.rate:.1f} calls/s over the last minute, ETA {eta}"


def read_status(path: str | os.PathLike[str]) -> JobStatus:
    """The journal at ``path`` as it is now, read without writing it or waiting for its lock.

    Raises :class:`~batcher.errors.UsageError` (exit 2, one line naming the file) when it is
    missing, not a file, not an SQLite file, an SQLite file that is not a batcher journal, of
    another format, or unreadable.
    """
    path = Path(path)
    if not path.is_file():
        raise UsageError(f"no journal at {path}{where_journals_are(path)}" if not path.exists()
                         else f"{path} is not a batcher journal (not a file)")
    running, pid, report = _holder(path)
    try:
        db = connect_read_only(path, nobody_writes=not running)
    except sqlite3.Error as exc:
        raise _unreadable(path, exc) from None
    try:
        db.execute("BEGIN")  # one snapshot for every query; released by close
        return replace(_snapshot(db, path, running and not report, None if report else pid),
                       read_by=pid if report else None)
    except sqlite3.Error as exc:
        raise _unreadable(path, exc) from None
    except ValueError as exc:  # meta values that are not the journal's JSON
        raise UsageError(f"journal {path} is damaged ({exc})") from None
    finally:
        db.close()


def print_status(journal_path: str | os.PathLike[str], as_json: bool = False,
                 stream: TextIO | None = None) -> int:
    """``batcher status``: print the snapshot (one JSON object with ``as_json``) and return 0 —
    the job's own state is in what is printed. Raises ``UsageError`` as :func:`read_status`."""
    status = read_status(journal_path)
    text = json.dumps(status.as_dict()) if as_json else status.human()
    print(text, file=stream or sys.stdout)
    return 0


def _holder(path: Path) -> tuple[bool, int | None, bool]:
    """(whether a process holds the journal's lock, its pid when it wrote one, whether it is
    a `batcher report` reading it rather than a run)."""
    lock = path.with_name(path.name + ".lock")
    try:
        fd = os.open(lock, os.O_RDONLY | os.O_NOFOLLOW)
    except FileNotFoundError:
        return False, None, False  # never run, or made by a copy
    except OSError as exc:
        what = "is a symbolic link" if exc.errno == errno.ELOOP else exc.strerror
        raise UsageError(f"cannot read journal {path}: its lock {lock.name} {what}") from None
    try:
        said = os.pread(fd, 64, 0).decode("ascii", "replace").split()
        text = said[0] if said else ""  # the pid; a `batcher report` adds its name after it
        if not text:  # emptied on release: nobody holds it, nothing to try
            return False, None, False
        try:
            # shared: a read-only descriptor can take it on every filesystem (NFS included)
            fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
        except BlockingIOError:
            return True, int(text) if text.isdigit() else None, said[1:2] == ["report"]
        except OSError as exc:
            raise UsageError(f"cannot tell whether a run holds journal {path}: its lock "
                             f"{lock.name}: {exc.strerror}") from None
        return False, None, False  # a pid left by a run killed with kill -9
    finally:
        os.close(fd)  # drops the lock at once when the try took it


def _snapshot(db: sqlite3.Connection, path: Path, running: bool, pid: int | None) -> JobStatus:
    tables = {r[0] for r in db.execute("SELECT name FROM sqlite_master WHERE type = 'table'")}
    if not tables and running:  # the run made the file; its first commit is a moment away
        return JobStatus(journal=str(path), running=True, pid=pid, loaded=False,
                         by_status=dict.fromkeys(_STATUSES, 0))
    if not _TABLES.issubset(tables):
        raise UsageError(f"{path} is not a batcher journal (no job tables in it)")
    meta = {k: json.loads(v) for k, v in db.execute(
        "SELECT key, value FROM meta WHERE key IN (?, ?, ?, ?)",
        (_K_VERSION, _K_LOADED, _K_STARTED, _K_STOPPED))}
    version = meta.get(_K_VERSION, SCHEMA_VERSION)
    if version != SCHEMA_VERSION:
        raise UsageError(f"journal {path} has format {version}; this batcher reads format "
                         f"{SCHEMA_VERSION}")
    counters = dict(db.execute("SELECT name, value FROM counters"))
    batches_left, pairs_left = db.execute(
        "SELECT count(*), coalesce(sum(npairs), 0) FROM batches"
        " WHERE state IN ('pending', 'sent')").fetchone()
    counts = status_counts(db)
    failed_at, code, message = db.execute(_LAST_FAILED_SQL).fetchone()
    rate, last_end, logged = _call_log(db, tables, running)
    loaded = _K_LOADED in meta
    calls = counters.get("calls", 0)
    return JobStatus(
        journal=str(path), running=running, pid=pid, loaded=loaded,
        by_status={s: counts.get(s, 0) for s in _STATUSES},
        batches_left=batches_left, pairs_left=pairs_left,
        calls=calls, retries=counters.get("retries", 0),
        # a journal without a call log (no plan loaded) has no call in doubt, as in the summary
        calls_outcome_unknown=max(0, calls - (calls if logged is None else logged)),
        throttled=counters.get("throttled", 0), credits=counters.get("credits", 0),
        started_at=meta.get(_K_STARTED), last_call_at=_iso(last_end), rate=rate,
        eta_s=_eta(batches_left, rate) if loaded else None,
        last_error=LastError(code, message, failed_at) if failed_at else None,
        stopped_by=None if running else meta.get(_K_STOPPED))


def _call_log(db: sqlite3.Connection, tables: set[str], running: bool
              ) -> tuple[float | None, float | None, int | None]:
    """(calls per second over the last minute, None unless ``running``; when the latest call
    ended, unix seconds; the calls logged); (None, None, None) without a call log. The rate
    counts from the minute's first call, so a run that began within it is not under-counted;
    over 1 s at least, so one call just sent is not read as a burst."""
    if "calls" not in tables:
        return None, None, None
    now = time.time()
    recent, first, last_end, logged = db.execute(
        _CALLS_SQL, {"since": now - RATE_WINDOW_S}).fetchone()
    if not running:
        return None, last_end, logged
    return (recent / max(now - first, 1.0) if recent else 0.0), last_end, logged


def _eta(batches_left: int, rate: float | None) -> float | None:
    if not batches_left:
        return 0.0
    return batches_left / rate if rate else None


def _iso(unix_s: float | None) -> str | None:
    """Unix seconds → UTC ISO 8601 with milliseconds and ``Z``, as the journal writes times."""
    return None if unix_s is None else utc_at(unix_s)


def _duration(seconds: float) -> str:
    """``42 s``, ``17 min``, ``3 h 05 min``."""
    s = round(seconds)
    if s < 90:
        return f"{s} s"
    if s < 90 * 60:
        return f"{round(s / 60)} min"
    return f"{s // 3600} h {s % 3600 // 60:02d} min"


def _unreadable(path: Path, exc: sqlite3.Error) -> UsageError:
    if getattr(exc, "sqlite_errorname", "") == "SQLITE_NOTADB":
        return UsageError(f"{path} is not a batcher journal ({exc}){where_journals_are(path)}")
    return UsageError(f"cannot read journal {path}: {exc}")
