"""The job's durable state in one SQLite file: input fingerprint, plan, batch states, outcomes.

Its cost follows the calls, not the pairs. The input's rows are stored once, at load, coded
(ids as integers) in compressed Arrow chunks (about a second for ten million rows, no index). A
batch keeps its pairs' positions in the input (``positions``, in :meth:`Batch.pairs` order: the
only row → batch map there is) and the answer its pairs share; only a pair whose outcome
differs from its batch's — a mixed answer, a split, a retry round — gets a row of its own in
``outcomes``. The usual answer is one UPDATE. The results are
the stored rows joined, chunk by chunk in input order, with their batch's outcome and the few
per-pair rows of that range.

Everything a resume needs is committed as answers arrive, each answer in one transaction, so a
crash, Ctrl-C or ``kill -9`` at any instant leaves either the whole answer or none of it; the load
is one transaction too. A batch recorded as answered is never handed out again (invariant 3), and
a batch is checked against the digest taken when it was planned before it is handed out
(invariant 1). Memory stays flat whatever the job size: rows come out in chunks, batches are
paged.

Concurrency: one process per journal, enforced by ``flock`` on ``<journal>.lock`` (the kernel drops
it when the process dies, so ``kill -9`` leaves no stale lock). Within the process, methods may be
called from worker threads (``asyncio.to_thread``); a mutex serialises them. A lock file this
open made is removed again when the open is refused (a path that is no journal keeps nothing of
batcher's); a run that opened it meanwhile finds it gone once it holds it, and locks anew.

A journal in a place batcher cannot write (an archive copy, a read-only mount) is opened to read
(``batcher report``): its lock held shared, so no run starts meanwhile, and nothing written.
A run kept out by a reader says so, naming it: the holder's pid is in the lock file (a report
holding it exclusively writes ``<pid> report``), a shared holder's in Linux's /proc/locks.

Caller mistakes (outcomes for pairs outside a batch, children that do not cover a parent, re-sending
an answered batch) raise ``ValueError`` and roll back: they are bugs, never user errors. A failing
disk (full, read-only, damaged pages) raises :class:`~batcher.errors.JournalIOError` naming the
file.

Files are created with mode 0600 and never through a symbolic link: the journal holds the job's
record ids and the server's messages.
"""

from __future__ import annotations

import errno
import fcntl
import json
import os
import shutil
import sqlite3
import sys
import threading
import time
import zlib
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from contextlib import closing, contextmanager, suppress
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Protocol
from urllib.parse import quote

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.ipc as ipc

from .arrays import arrow_of, numpy_of
from .counts import SCHEMA_VERSION, STORED_STATUSES, status_counts
from .errors import JournalError, JournalIOError, NotPlanned
from .inputs.coded import CHUNK_ROWS, text_of
from .models import (
    MAX_CADENCES_PER_CALL,
    MAX_RECORDS_PER_CALL,
    Batch,
    BatchBlock,
    OutcomeGroup,
    PairOutcome,
    Status,
    where_journals_are,
)
from .readonly import connect_read_only
from .rowstore import (
    NONE,
    BatchOutcomes,
    Ranker,
    Stopped,
    batch_order,
    cat,
    no_answer,
    placed,
    planned_seqs,
    positions_of,
    rows_problem,
    store_rows,
)

_INSERT_BATCHES = 2000  # planned batches per INSERT statement
_PAGE_BATCHES = 20  # a short pause for the event loop between pages
_COUNTERS = ("calls", "retries", "throttled", "credits", "ignored_entries")
OPEN_STATES = ("pending", "sent")  # a 'sent' batch may or may not have been applied: re-sendable
_OPEN = "state IN ('pending', 'sent')"  # as the batches_open index has it
#: status (member or its text) → the text stored, for the statuses an answer may give a pair
_OUTCOME_STATUS = {s.value: s.value for s in Status if s not in (Status.NOT_SENT, Status.DUPLICATE)}
_OUTCOME = "status, code, message, http_status, retryable, attempts, finished_at"
#: a batch's outcome as the results join it (:class:`~batcher.rowstore.BatchOutcomes`)
_BATCH_OUTCOME = ("seq, batch_id, state, status, code, message, http_status, retryable,"
                  " answered_attempts, finished_at, attempts")
#: how soon a chunk of results is looked at again while its rows are unsettled (doubling)
_SETTLE_PAUSE_S, _SETTLE_PAUSE_MAX_S = 0.1, 1.0
_INSERT_OUTCOMES = (f"INSERT OR REPLACE INTO outcomes (pos, root, seq, {_OUTCOME})"
                    " VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?)")


class PlannedPairs(Protocol):
    """A plan as the journal stores it (:class:`~batcher.planner.Plan` is one): its batches in
    index order, and where each valid row goes (:meth:`~batcher.planner.Plan.placement`: its
    place among the batches' pairs laid end to end, each batch's in :meth:`Batch.pairs` order;
    where each batch starts there) — read in two threads at once (the batches' text is made
    while the pairs are placed)."""

    def blocks(self) -> Iterable[Batch | BatchBlock]: ...

    def placement(self) -> tuple[np.ndarray, np.ndarray]: ...


#: the plan, made by the caller while the journal stores the rows
PlanMaker = Callable[[], PlannedPairs]
_SCHEMA = """
CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT NOT NULL) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS counters (name TEXT PRIMARY KEY, value INTEGER NOT NULL) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS batches (
    seq INTEGER PRIMARY KEY,
    batch_id TEXT NOT NULL UNIQUE,
    module TEXT NOT NULL,
    npairs INTEGER NOT NULL,
    state TEXT NOT NULL DEFAULT 'pending',
    attempts INTEGER NOT NULL DEFAULT 0,
    parent TEXT,
    root INTEGER NOT NULL,
    digest INTEGER NOT NULL,
    status TEXT, code TEXT, message TEXT, http_status INTEGER, retryable INTEGER,
    answered_attempts INTEGER, finished_at TEXT,
    -- the bulky columns last: a scan of states and outcomes never reads their overflow pages
    cadence_ids TEXT NOT NULL,
    positions BLOB NOT NULL,
    record_ids TEXT NOT NULL
);
CREATE INDEX IF NOT EXISTS batches_open ON batches (seq) WHERE state IN ('pending', 'sent');
CREATE TABLE IF NOT EXISTS row_chunks (
    first INTEGER PRIMARY KEY,
    n INTEGER NOT NULL,
    data BLOB NOT NULL,
    crc INTEGER NOT NULL
);
CREATE TABLE IF NOT EXISTS outcomes (
    pos INTEGER PRIMARY KEY,
    root INTEGER NOT NULL,
    seq INTEGER NOT NULL,
    status TEXT NOT NULL, code TEXT, message TEXT, http_status INTEGER, retryable INTEGER,
    attempts INTEGER NOT NULL DEFAULT 0, finished_at TEXT
);
CREATE INDEX IF NOT EXISTS outcomes_seq ON outcomes (seq);
CREATE INDEX IF NOT EXISTS outcomes_root ON outcomes (root);
"""
# the call log: one row per un-enrol call that reached a server, for the report's timeline;
# created apart from _SCHEMA so journals made before it gain it on open (same format version)
_CALLS_TABLE = ("CREATE TABLE IF NOT EXISTS calls (at REAL NOT NULL, batch_id TEXT,"
                " http_status INTEGER, throttled INTEGER NOT NULL, seconds REAL NOT NULL)")

_K_VERSION, _K_FINGERPRINT = "batcher.schema_version", "batcher.fingerprint"
_K_INPUT = "batcher.input"
_K_LOADED, _K_ROWS, _K_STARTED = "batcher.loaded", "batcher.rows", "batcher.started_at"
_K_ROUNDS = "batcher.retry_rounds"
_K_KEPT = STORED_STATUSES


def meta_of(path: Path, key: str) -> Any:
    """A value :meth:`Journal.set_meta` stored, read without opening the journal for a run (no
    lock, read-only); None when it has none or cannot be read."""
    try:
        db = sqlite3.connect(path.resolve().as_uri() + "?mode=ro", uri=True)
        try:
            got = db.execute("SELECT value FROM meta WHERE key = ?", ("user." + key,)).fetchall()
        finally:
            db.close()
        return json.loads(got[0][0]) if got else None
    except (sqlite3.Error, ValueError, OSError):
        return None


def utc_now() -> str:
    """UTC, ISO 8601, millisecond precision, ``Z`` suffix."""
    return datetime.now(UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")


class Journal:
    """One job's state. Use :meth:`open`; a context manager that releases the lock on exit."""

    def __init__(self, path: Path, db: sqlite3.Connection, lock_fd: int | None, is_new: bool,
                 bind: Callable[[], str] | None = None, *, read_only: bool = False) -> None:
        self.path = path
        self._bind = bind  # the fingerprint a new journal takes when it is loaded
        self._db = db
        #: the lock's descriptor (None: opened to read where no run ever made a lock file)
        self._lock_fd = lock_fd
        self._closed = False
        #: opened to read (:meth:`open` of a journal batcher cannot write): nothing is written
        self.read_only = read_only
        self._mutex = threading.RLock()
        self._unsaved: dict[str, int] = {}  # counter deltas waiting for the next commit
        self._unsaved_calls: list[tuple] = []  # call log rows waiting for the next commit
        self._count_lock = threading.Lock()
        self.is_new = is_new
        self._loaded_here = False  # batches planned by this process need no check of their own
        self._checkpointer: threading.Thread | None = None
        #: batch_counts() as the load left them, until the next write (a table scan of a 10M-pair
        #: plan's batches is 0.06 s before the first call)
        self._loaded_counts: dict[str, dict[str, int]] | None = None

    # ------------------------------------------------------------------ open / close

    @classmethod
    def open(cls, path: str | os.PathLike[str], fingerprint: str | Callable[[], str] | None, *,
             input_name: str | None = None) -> Journal:
        """Create or open the journal and hold its lock until :meth:`close`.

        ``fingerprint`` binds the journal to one input; ``None`` opens an existing journal whatever
        its input (``batcher report``) — to read (:attr:`read_only`, its lock held shared) when
        batcher cannot write it or its folder. A function giving it is called when it is needed:
        at once for a journal already loaded (a resume checks it before anything), at
        :meth:`load` for a new one — so a large input is hashed while it is read.
        ``input_name`` is only remembered for error messages.

        A file that is no batcher journal is refused as found: not made private, not put in
        WAL mode, and no lock file left beside it.
        """
        path = Path(path)
        if path.is_symlink():
            raise JournalError(f"journal {path} is a symbolic link; batcher does not follow links "
                               "for its own files: give the real path with --journal")
        if fingerprint is None and not path.is_file():
            raise JournalError(f"no journal at {path}{where_journals_are(path)}")
        if not path.parent.is_dir():
            raise JournalError(f"cannot create journal {path}: directory {path.parent} does not "
                               f"exist; create it first (mkdir -p {path.parent})")
        if fingerprint is None and not _writable(path):
            return cls._opened_to_read(path)
        # no fingerprint: `batcher report`, said as such to a run it keeps waiting
        lock_fd, made = _acquire_lock(path, "" if fingerprint is not None else "report")
        try:
            _create_private(path)
            db = _connect(path)
            try:
                is_new = _prepare(db, path, fingerprint, input_name)
                bind = fingerprint if is_new and callable(fingerprint) else None
            except BaseException as exc:
                db.close()
                if isinstance(exc, sqlite3.Error):
                    raise _open_failure(path, exc) from None
                raise
            _make_private(path)  # a journal made by an older batcher was 0644
        except BaseException:
            _release_lock(lock_fd, remove=path if made else None)
            raise
        return cls(path, db, lock_fd, is_new, bind)

    @classmethod
    def _opened_to_read(cls, path: Path) -> Journal:
        lock_fd = _share_lock(path)
        try:
            try:
                db = connect_read_only(path, nobody_writes=True)
            except sqlite3.Error as exc:
                raise _open_failure(path, exc) from None
            try:
                _prepare(db, path, None, None, read_only=True)
            except BaseException as exc:
                db.close()
                if isinstance(exc, sqlite3.Error):
                    raise _open_failure(path, exc) from None
                raise
        except BaseException:
            if lock_fd is not None:
                os.close(lock_fd)
            raise
        return cls(path, db, lock_fd, False, read_only=True)

    def close(self) -> None:
        with self._mutex:
            if self._closed:
                return
            try:
                if self._checkpointer is not None:  # nothing of ours touches it once unlocked
                    self._checkpointer.join()
                self._db.close()
            finally:
                self._closed = True
                self._unlock()

    def _unlock(self, remove: Path | None = None) -> None:
        if self._lock_fd is None:
            return
        if self.read_only:  # held shared, opened to read: it is not ours to empty
            os.close(self._lock_fd)
        else:
            _release_lock(self._lock_fd, remove=remove)
        self._lock_fd = None

    def discard_unplanned(self) -> bool:
        """Close and delete the journal, its SQLite side files and its lock file when it holds
        no plan (its run stopped with a usage or input error before the input was loaded:
        nothing was planned or sent), so no `batcher status` takes it for a job to resume;
        returns whether it did. A planned journal is only closed and kept."""
        with self._mutex:
            if self._closed or self.read_only:
                return False
            if self._meta(_K_LOADED) is not None:
                self.close()
                return False
            try:
                if self._checkpointer is not None:
                    self._checkpointer.join()
                self._db.close()
                for part in ("", "-wal", "-shm"):
                    with suppress(OSError):
                        os.unlink(f"{self.path}{part}")
            finally:
                self._closed = True
                self._unlock(remove=self.path)  # the lock last, while still held
            return True

    def __enter__(self) -> Journal:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __repr__(self) -> str:
        return f"Journal({str(self.path)!r}, new={self.is_new})"

    @contextmanager
    def _tx(self) -> Iterator[sqlite3.Connection]:
        """One transaction; it also writes the counter deltas counted since the last one."""
        with self._mutex, self._disk_errors():
            if self._closed:
                raise ValueError("journal is closed")
            if self.read_only:
                raise ValueError(f"journal {self.path} was opened to read")
            self._loaded_counts = None  # any write may change a batch's state
            self._db.execute("BEGIN IMMEDIATE")
            deltas: dict[str, int] = {}
            calls: list[tuple] = []
            try:
                yield self._db
                deltas, calls = self._take_unsaved()
                _add_counters(self._db, deltas)
                _add_calls(self._db, calls)
            except BaseException:
                self._keep_unsaved(deltas, calls)  # not written: kept for the next commit
                if self._db.in_transaction:
                    self._db.execute("ROLLBACK")
                raise
            try:
                self._db.execute("COMMIT")
            except BaseException:
                self._keep_unsaved(deltas, calls)
                raise

    def _query(self, sql: str, params: Sequence[Any] = ()) -> list[tuple]:
        with self._mutex, self._disk_errors():
            if self._closed:
                raise ValueError("journal is closed")
            return self._db.execute(sql, params).fetchall()

    @contextmanager
    def _disk_errors(self) -> Iterator[None]:
        """SQLite's I/O failures as one line naming the file (a full disk is not a bug)."""
        try:
            yield
        except (sqlite3.IntegrityError, sqlite3.ProgrammingError, sqlite3.InterfaceError):
            raise
        except sqlite3.Error as exc:
            raise _sqlite_failure(self.path, exc) from None

    # ------------------------------------------------------------------ counters

    def count(self, **deltas: int) -> None:
        """Add to the job's counters (calls, retries, throttled, credits, ignored_entries); they
        are written with the journal's next commit, so a ``kill -9`` loses at most the calls of
        the last few milliseconds, and the hot path pays no commit of its own."""
        with self._count_lock:
            for name, value in deltas.items():
                if value:
                    self._unsaved[name] = self._unsaved.get(name, 0) + value

    def log_call(self, at: float, batch_id: str, http_status: int | None, throttled: bool,
                 seconds: float) -> None:
        """Add a call to the call log: sent at ``at`` (unix seconds), answered with
        ``http_status`` (None: it failed without an answer) after ``seconds``. Written with the
        journal's next commit, as :meth:`count`'s deltas are."""
        with self._count_lock:
            self._unsaved_calls.append((at, batch_id, http_status, int(throttled), seconds))

    def _take_unsaved(self) -> tuple[dict[str, int], list[tuple]]:
        with self._count_lock:
            taken = self._unsaved, self._unsaved_calls
            self._unsaved, self._unsaved_calls = {}, []
        return taken

    def _keep_unsaved(self, deltas: dict[str, int], calls: list[tuple]) -> None:
        self.count(**deltas)
        with self._count_lock:
            self._unsaved_calls[:0] = calls

    # ------------------------------------------------------------------ load

    def load(self, rows: pa.Table | Iterable[pa.Table],
             batches: Iterable[Batch | BatchBlock] | PlanMaker, *,
             meta: Callable[[], Mapping[str, Any]] | None = None,
             chunk_rows: int = CHUNK_ROWS) -> None:
        """Store every input row and the plan, all in one transaction (never half-loaded).

        ``rows``: the reader's rows, coded (:meth:`InputScan.coded_tables`) or in text form
        (row, module, record_id, cadence_id, status, reason, optional code), one table or
        tables streamed in input order. ``batches``, the plan:

        - a :data:`PlanMaker` — called in this thread while the rows are coded and stored in
          another (planning and storing overlap); it returns the plan (:class:`PlannedPairs`),
          whose batches' text is made in a third thread while its pairs are placed;
        - or the batches themselves, the rows then carrying ``batch_id`` (the pairs are looked
          up in ``batches``, held in memory: for small jobs and tests).

        ``meta()``, called once the plan is made, gives values to remember (as :meth:`set_meta`)
        in the same transaction. Raises ``ValueError`` when the plan does not cover the valid
        rows exactly.
        """
        if not self.is_new:
            raise ValueError(f"journal {self.path} is already loaded")
        tables = [rows] if isinstance(rows, pa.Table) else rows
        now = utc_now()
        stop = threading.Event()
        with self._tx() as db, \
                ThreadPoolExecutor(2, "journal-rows", initializer=_yielding) as pool, \
                ThreadPoolExecutor(1, "journal-plan", initializer=_yielding) as planning:
            for table in ("row_chunks", "batches", "outcomes"):
                db.execute(f"DELETE FROM {table}")
            try:
                if callable(batches):
                    storing = pool.submit(store_rows, db, tables, chunk_rows, pool, stop, None)
                    planned = batches()
                    prepared = planning.submit(_prepared, planned.blocks(), stop)
                    slots, offsets = planned.placement()
                    stored = storing.result()
                    if len(stored.places) != len(slots) or offsets[-1] != len(slots):
                        raise ValueError(f"plan error: {len(slots)} planned pairs but "
                                         f"{len(stored.places)} valid rows")
                    order = placed(slots, stored.places)
                    del slots
                else:
                    plan: list[Batch | BatchBlock] = []

                    def ranker() -> Ranker:
                        plan.extend(batches)
                        return Ranker(plan)  # type: ignore[arg-type]

                    stored = store_rows(db, tables, chunk_rows, pool, stop, ranker)
                    prepared = planning.submit(_prepared, plan or batches, stop)
                    order, offsets = batch_order(stored.seq, stored.rank, stored.places)
                _insert_plan(db, prepared.result(), order, offsets)
            except BaseException:
                stop.set()  # a signal or an error: the other threads stop at their next chunk
                raise
            if self._bind is not None:
                _set_meta(db, _K_FINGERPRINT, self._bind())
            for key, value in (meta() if meta else {}).items():
                _set_meta(db, "user." + key, value)
            _set_meta(db, _K_ROWS, stored.n_rows)
            _set_meta(db, _K_KEPT, stored.kept)
            _set_meta(db, _K_LOADED, now)
            # the load's pages are copied from the WAL into the file by a thread of its own, not
            # by this commit: hundreds of megabytes that would delay the first call by seconds
            db.execute("PRAGMA wal_autocheckpoint = 0")
        try:
            self._checkpointer = threading.Thread(target=_checkpoint, args=(self.path,),
                                                  name="journal-checkpoint", daemon=True)
            self._checkpointer.start()
        finally:
            self._db.execute("PRAGMA wal_autocheckpoint = 1000")
        self.is_new = False
        self._loaded_here = True
        n_batches = len(offsets) - 1
        self._loaded_counts = {"pending": {"batches": n_batches, "pairs": int(offsets[-1])}
                               } if n_batches else {}

    # ------------------------------------------------------------------ batches

    def pending_batches(self) -> Iterator[Batch]:
        """Batches not yet answered (including sent-but-unanswered ones), in plan order, paged.

        Only batches that exist when iteration starts are yielded: split children created meanwhile
        belong to the caller that created them (a fresh call, or a resume, sees them). A batch
        answered while iterating is skipped. Each batch is checked against the digest taken when
        it was planned, so a call can only name pairs that were checked against the input rows
        at load (invariant 1), whatever happened to the file since; in a journal of an earlier
        run every open batch is checked before the first is handed out (a refusal then comes
        before any call of this run).
        """
        if not self._loaded_here:  # a journal from an earlier run: all checked before a call
            with self._mutex, self._disk_errors():
                for batch_id, *planned in self._db.execute(
                        "SELECT batch_id, module, record_ids, cadence_ids, positions, digest"
                        " FROM batches WHERE state IN ('pending', 'sent')"):
                    self._check_digest(batch_id, *planned)
        (last,) = self._query("SELECT coalesce(max(seq), 0) FROM batches")[0]
        after = 0
        while True:
            page = self._query(
                "SELECT seq, batch_id, module, record_ids, cadence_ids, positions, digest"
                " FROM batches WHERE state IN ('pending', 'sent') AND seq > ? AND seq <= ?"
                " ORDER BY seq LIMIT ?", (after, last, _PAGE_BATCHES))
            if not page:
                return
            for _, batch_id, module, records, cadences, positions, digest in page:
                self._check_digest(batch_id, module, records, cadences, positions, digest)
                yield Batch(batch_id, module, stored_ids(records), tuple(json.loads(cadences)))
            after = page[-1][0]

    def _check_digest(self, batch_id: str, module: str, records: str | bytes, cadences: str,
                      positions: bytes, digest: int) -> None:
        if _digest(module, records, cadences, positions) != digest:
            raise JournalError(f"journal {self.path} is inconsistent: batch {batch_id} does not "
                               "match its input rows; refusing to send it")

    def mark_sent(self, batch_id: str) -> int:
        """Record that a call for this batch is about to go out; returns its attempt count."""
        return self.mark_sent_many([batch_id])[batch_id]

    def mark_sent_many(self, batch_ids: Sequence[str]) -> dict[str, int]:
        """``mark_sent`` for batches about to go out, in one transaction: one commit for several
        calls. A batch marked but not yet sent when the process dies only counts an attempt too
        many, and a re-send's "not enrolled" is reported with a doubt it did not need."""
        out: dict[str, int] = {}
        with self._tx() as db:
            for batch_id in batch_ids:
                got = db.execute("UPDATE batches SET state = 'sent', attempts = attempts + 1"
                                 " WHERE batch_id = ? AND state IN ('pending', 'sent')"
                                 " RETURNING attempts", (batch_id,)).fetchone()
                if got is None:
                    _Open.read(db, batch_id)  # raises: unknown, or no longer open
                    raise AssertionError("unreachable")  # pragma: no cover
                out[batch_id] = got[0]
        return out

    def mark_unsent(self, marks: Mapping[str, int]) -> None:
        """Take back, per batch id, the last ``marks[id]`` :meth:`mark_sent` of a batch none of
        whose calls of this run can have been applied (never left: no connection, a stop before
        its turn; or refused outright: 429). It is pending again unless an earlier run sent it,
        and its rows say so; in one transaction."""
        with self._tx() as db:
            db.executemany("UPDATE batches SET attempts = max(attempts - ?, 0), state = CASE"
                           " WHEN attempts - ? > 0 THEN 'sent' ELSE 'pending' END"
                           " WHERE batch_id = ? AND state = 'sent'",
                           [(n, n, b) for b, n in marks.items()])

    def record_outcomes(self, batch_id: str, outcomes: Iterable[PairOutcome],
                        attempts: int | None = None, final: bool = True) -> None:
        """Store the outcome of pairs of one batch and, when ``final``, mark it answered.

        A final record must leave no pair of the batch without an outcome. ``attempts`` defaults to
        the number of :meth:`mark_sent` calls the journal saw for the batch (across resumes).
        """
        outs = list(outcomes)
        with self._tx() as db:
            batch = _Open.read(db, batch_id)
            groups = batch.groups_of(outs)
            # a partial answer goes to per-pair rows: the batch's own outcome is its final word
            done = batch.settle(db, groups, batch.attempts if attempts is None else attempts,
                                whole=final)
            if final:
                left = batch.npairs - done
                if left:
                    raise ValueError(f"batch {batch_id}: {left} pair(s) left without an outcome")
                batch.set_state(db, "answered")

    def record_groups(self, batch_id: str, groups: Sequence[OutcomeGroup],
                      attempts: int | None = None) -> None:
        """Store a whole answer given as groups of pairs sharing one result; mark it answered.

        The groups must cover every pair of the batch exactly once. The usual answer (one group)
        costs one UPDATE of the batch, however many pairs; the other groups one row per pair.
        ``attempts`` defaults as for :meth:`record_outcomes`.
        """
        with self._tx() as db:
            batch = _Open.read(db, batch_id)
            found = [(_stored((g.status, g.code, g.message, g.http_status, g.retryable)),
                      batch.indices(g.record_ids, g.cadence_ids)) for g in groups]
            batch.check_once(np.concatenate([i for _, i in found]) if found else NONE)
            if sum(len(i) for _, i in found) != batch.npairs:
                left = batch.npairs - sum(len(i) for _, i in found)
                raise ValueError(f"batch {batch_id}: {left} pair(s) left without an outcome")
            batch.settle(db, found, batch.attempts if attempts is None else attempts)
            batch.set_state(db, "answered")

    def settle_and_split(self, batch_id: str, outcomes: Iterable[PairOutcome],
                         children: Sequence[Batch], attempts: int | None = None) -> None:
        """Settle some pairs of a batch and re-plan the rest as new pending child batches.

        The children must cover exactly the batch's pairs that ``outcomes`` leaves unsettled, each
        pair once, with the parent's module. The parent's remaining pairs move to their child.
        """
        outs = list(outcomes)
        with self._tx() as db:
            batch = _Open.read(db, batch_id)
            groups = batch.groups_of(outs)
            settled = np.zeros(batch.npairs, dtype=bool)
            for _, idx in groups:
                settled[idx] = True
            placed = _children_places(db, batch, ~settled, children)
            # settled pairs keep their outcome in `outcomes`: a split batch has no batch-wide one
            batch.settle(db, groups, batch.attempts if attempts is None else attempts,
                         whole=False)
            # a moved pair keeps the attempts it shows (a pair never answered: 0)
            shown = dict(db.execute("SELECT pos, attempts FROM outcomes WHERE seq = ?",
                                    (batch.seq,)).fetchall())
            (last,) = db.execute("SELECT coalesce(max(seq), 0) FROM batches").fetchone()
            for seq, (child, idx) in enumerate(zip(children, placed, strict=True), last + 1):
                positions = batch.positions[idx]
                _insert_batch(db, seq, child, positions, parent=batch_id, root=batch.root)
                db.executemany(_INSERT_OUTCOMES, _moved(
                    positions, batch.root, seq, [shown.get(p, 0) for p in positions.tolist()]))
            batch.set_state(db, "split" if children else "answered")

    def requeue_retryable(self, max_rounds: int) -> int:
        """Plan the pairs answered ``failed`` with ``retryable`` true as new pending batches.

        Run at the start of a re-run of a finished job (nothing left to send), so the same
        command re-sends what may succeed now and a nightly re-run converges; at most
        ``max_rounds`` times per job. A pair goes back only
        with the cadences its record failed in within one batch, so every new batch is again
        records × cadences that were all asked for. Its ``attempts`` start at the old batch's,
        so a re-send's "not enrolled" carries the doubt that an earlier attempt may have removed
        it. Returns the number of pairs requeued (0 once the rounds are spent).
        """
        with self._tx() as db:
            rounds = int(json.loads((db.execute("SELECT value FROM meta WHERE key = ?",
                                                (_K_ROUNDS,)).fetchone() or ["0"])[0]))
            if rounds >= max_rounds:
                return 0
            failed = _retryable_failures(db)
            if not failed:
                return 0
            rounds += 1
            (seq,) = db.execute("SELECT coalesce(max(seq), 0) FROM batches").fetchone()
            n = 0
            for batch, idx, shown in failed:
                attempts_at = dict(zip(idx.tolist(), shown.tolist(), strict=True))
                cadences_of: dict[str, list[int]] = {}
                for i in idx.tolist():
                    cadences_of.setdefault(batch.records[i // len(batch.cadences)], []).append(i)
                by_set: dict[tuple[str, ...], list[list[int]]] = {}
                for places in cadences_of.values():
                    key = tuple(batch.cadences[i % len(batch.cadences)] for i in places)
                    by_set.setdefault(key, []).append(places)
                k = 0
                for cadences, per_record in by_set.items():
                    for i in range(0, len(per_record), MAX_RECORDS_PER_CALL):
                        group = per_record[i:i + MAX_RECORDS_PER_CALL]
                        for j in range(0, len(cadences), MAX_CADENCES_PER_CALL):
                            k += 1
                            seq += 1
                            child = Batch(f"{batch.batch_id}.r{rounds}-{k}", batch.module,
                                          tuple(batch.records[p[0] // len(batch.cadences)]
                                                for p in group),
                                          cadences[j:j + MAX_CADENCES_PER_CALL])
                            places = [p[x] for p in group
                                      for x in range(j, j + len(child.cadence_ids))]
                            positions = batch.positions[places]
                            _insert_batch(db, seq, child, positions, parent=batch.batch_id,
                                          root=batch.root, attempts=batch.attempts)
                            db.executemany(_INSERT_OUTCOMES, _moved(
                                positions, batch.root, seq, [attempts_at[i] for i in places]))
                            n += len(positions)
            _set_meta(db, _K_ROUNDS, rounds)
            return n

    def retryable_failures(self) -> int:
        """Pairs answered ``failed`` with ``retryable`` true (what a retry round would send)."""
        with self._mutex, self._disk_errors():
            return sum(len(idx) for _, idx, _ in _retryable_failures(self._db))

    def batch_counts(self) -> dict[str, dict[str, int]]:
        """state → {"batches": n, "pairs": n}: for progress bars and resume messages."""
        if (loaded := self._loaded_counts) is not None:
            return {s: dict(v) for s, v in loaded.items()}
        return {s: {"batches": n, "pairs": p or 0} for s, n, p in self._query(
            "SELECT state, count(*), sum(npairs) FROM batches GROUP BY state")}

    def status_counts(self) -> dict[str, int]:
        """Rows per result status now (statuses without rows left out)."""
        with self._mutex, self._disk_errors():
            return status_counts(self._db)

    # ------------------------------------------------------------------ counters, metadata

    def add_counters(self, **deltas: int) -> None:
        """:meth:`count` and commit now (with any deltas still waiting)."""
        self.count(**deltas)
        with self._tx():
            pass

    def counters(self) -> dict[str, int]:
        """The job's counters over all its runs, and ``calls_logged``: the calls in the call
        log. A call is counted as it leaves and logged once answered (or failed): the calls a
        ``kill -9`` caught in flight are counted and never logged."""
        got = dict(self._query("SELECT name, value FROM counters"))
        logged = self._query("SELECT count(*) FROM calls")[0][0]
        return {k: int(got.get(k, 0)) for k in (*_COUNTERS, "runs")} | {"calls_logged": logged}

    def calls_per_second(self) -> list[tuple[int, int, int]]:
        """The call log per second: (unix second, calls sent, calls answered 429), in time
        order, seconds without a call left out."""
        return self._query("SELECT CAST(at AS INTEGER) AS s, count(*), sum(throttled)"
                           " FROM calls GROUP BY s ORDER BY s")

    def last_call_end(self) -> float | None:
        """When the latest logged un-enrol call ended (unix seconds), None without one: the
        last trace a run killed without recording its end left."""
        return self._query("SELECT max(at + seconds) FROM calls")[0][0]

    @property
    def started_at(self) -> str:
        return self._meta(_K_STARTED)

    @property
    def rows(self) -> int:
        """Input rows loaded (0 before :meth:`load`)."""
        return int(self._meta(_K_ROWS, 0))

    def set_meta(self, key: str, value: Any) -> None:
        """Remember a JSON-serialisable value (kept apart from the journal's own keys)."""
        with self._tx() as db:
            _set_meta(db, "user." + key, value)

    @property
    def fingerprint(self) -> str | None:
        """What the journal is bound to (``job.fingerprint``: the input and its flags)."""
        return self._meta(_K_FINGERPRINT)

    def get_meta(self, key: str, default: Any = None) -> Any:
        return self._meta("user." + key, default)

    def _meta(self, key: str, default: Any = None) -> Any:
        got = self._query("SELECT value FROM meta WHERE key = ?", (key,))
        return json.loads(got[0][0]) if got else default

    # ------------------------------------------------------------------ results

    def iter_result_chunks(self, chunk_rows: int = CHUNK_ROWS, *,
                           until: threading.Event | None = None) -> Iterator[pa.Table]:
        """Every row in input order, as tables of :data:`RESULT_SCHEMA`: the stored rows, each
        planned row joined with its batch's outcome unless a pair outcome of its own overrides
        it.

        ``until``: while the run still sends, unset; each chunk then waits until its rows are
        settled — every batch they are in answered, which nothing later in the run changes (a
        batch answered is never sent again, and retry rounds are planned only as a run starts)
        — or until it is set, and comes as the journal then stands. So the results are written
        while the calls go: the rows of a list sent in about its own order are written long
        before the last answer. Without it, every chunk comes as the journal stands now."""
        loaded = self._meta(_K_LOADED)
        seq = planned_seqs(self._query("SELECT seq, npairs, positions FROM batches"
                                       " WHERE parent IS NULL"), self.rows)
        every: tuple[BatchOutcomes, dict[int, int]] | None = None  # read once the run stopped
        first = 0
        while True:
            got = self._query("SELECT first, data FROM row_chunks WHERE first > ?"
                              " ORDER BY first LIMIT 1", (first,))
            if not got:
                return
            first, data = got[0]
            stored = text_of(ipc.open_stream(data).read_all())
            for start in range(0, stored.num_rows, chunk_rows):
                part = stored.slice(start, chunk_rows)
                p0, p1 = first + start, first + start + part.num_rows
                planned = seq[p0 - 1:p1 - 1]
                settled = None
                if until is not None and not until.is_set():
                    settled = self._settled(p0, p1, np.unique(planned[planned > 0]), until)
                if settled is None:  # the run has stopped sending: all as it stands
                    if every is None:
                        batches = self._query(f"SELECT {_BATCH_OUTCOME} FROM batches"
                                              " ORDER BY seq")
                        every = (BatchOutcomes(batches),
                                 {row[0]: row[10] for row in batches if row[2] == "sent"})
                    own = self._query(f"SELECT pos, seq, {_OUTCOME} FROM outcomes"
                                      " WHERE pos >= ? AND pos < ? ORDER BY pos", (p0, p1))
                    outcome, unanswered = every
                    # pairs moved to a batch sent and never answered say so, as its own do
                    if unanswered:
                        own = [no_answer(o, unanswered[o[1]])
                               if o[2] == Status.NOT_SENT.value and o[1] in unanswered else o
                               for o in own]
                else:
                    own, outcome = settled
                yield outcome.results(part, planned, p0, own, loaded)

    def _settled(self, p0: int, p1: int, roots: np.ndarray, until: threading.Event
                 ) -> tuple[list[tuple], BatchOutcomes] | None:
        """The pair outcomes of positions ``p0`` … ``p1 - 1`` and the outcomes of their batches
        (``roots``: the rows' planned ones, and those the pair outcomes name), read at one
        instant once none of those batches is open; None when ``until`` is set first. Looked
        at again after a pause that doubles up to a second."""
        pause = _SETTLE_PAUSE_S
        while not until.wait(pause):
            pause = min(2 * pause, _SETTLE_PAUSE_MAX_S)
            with self._mutex, self._disk_errors():  # one instant: no answer lands between
                if self._closed:
                    raise ValueError("journal is closed")
                # the last planned batch first: the batches go about in order, and while it is
                # open (all the sending long, for a list in random order) one lookup says so
                if len(roots) and self._db.execute(
                        f"SELECT 1 FROM batches WHERE seq = ? AND {_OPEN}",
                        (int(roots[-1]),)).fetchone():
                    continue
                own = self._db.execute(f"SELECT pos, seq, {_OUTCOME} FROM outcomes"
                                       " WHERE pos >= ? AND pos < ? ORDER BY pos",
                                       (p0, p1)).fetchall()
                seqs = np.union1d(roots, np.array([o[1] for o in own], dtype=np.int64))
                if not len(seqs):
                    return own, BatchOutcomes([])
                span = (int(seqs[0]), int(seqs[-1]))
                if self._db.execute(f"SELECT 1 FROM batches WHERE seq = ? AND {_OPEN}",
                                    (span[1],)).fetchone():
                    continue
                still = self._db.execute(f"SELECT seq FROM batches WHERE {_OPEN}"
                                         " AND seq BETWEEN ? AND ?", span).fetchall()
                if still and np.isin(seqs, np.array(still, dtype=np.int64).ravel()).any():
                    continue
                batches = self._db.execute(f"SELECT {_BATCH_OUTCOME} FROM batches"
                                           " WHERE seq BETWEEN ? AND ? ORDER BY seq",
                                           span).fetchall()
            return own, BatchOutcomes(batches)
        return None

# ---------------------------------------------------------------------- helpers


def _add_counters(db: sqlite3.Connection, deltas: dict[str, int]) -> None:
    if deltas:
        db.executemany("INSERT INTO counters (name, value) VALUES (?, ?) ON CONFLICT (name)"
                       " DO UPDATE SET value = value + excluded.value", list(deltas.items()))


def _add_calls(db: sqlite3.Connection, calls: list[tuple]) -> None:
    if calls:
        db.executemany("INSERT INTO calls (at, batch_id, http_status, throttled, seconds)"
                       " VALUES (?, ?, ?, ?, ?)", calls)


def _sqlite_text(exc: sqlite3.Error) -> str:
    name = getattr(exc, "sqlite_errorname", None)
    return f"{exc} ({name})" if name else str(exc)


def _create_private(path: Path) -> None:
    """Make a new journal at ``path`` with mode 0600, never through a symbolic link; an existing
    one is only checked (:func:`_make_private` once it proves a journal).

    A new journal is made whole — its tables written — under another name and renamed into
    place, so batcher never leaves an empty journal behind, and an empty one found (truncated, or
    overwritten by ``> file``) is refused as damaged instead of silently starting the job over.
    """
    try:
        fd = os.open(path, os.O_RDWR | os.O_NOFOLLOW)
    except FileNotFoundError:
        fd = -1
    except OSError as exc:
        raise JournalError(f"cannot open journal {path}: {exc.strerror}") from None
    if fd >= 0:
        size = os.fstat(fd).st_size
        os.close(fd)
        if size == 0:
            raise _damaged(path, "the file is empty")
        return
    tmp = path.with_name(f".{path.name}.{os.getpid()}.new")
    try:
        fd = os.open(tmp, os.O_RDWR | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, 0o600)
        os.close(fd)
        with closing(sqlite3.connect(tmp, isolation_level=None)) as db:
            # 16 KB pages (4 KB by default): a batch's ids (~2 KB of text) and the rows' chunks
            # (megabytes) span a quarter as many overflow pages; storing a 10M-row plan takes a
            # fifth less time. Set before the first table; a journal keeps its page size.
            db.execute(f"PRAGMA page_size = {_PAGE_SIZE}")
            db.execute("PRAGMA journal_mode = WAL")
            db.executescript(f"BEGIN; {_SCHEMA} COMMIT;")
        os.rename(tmp, path)
    except (OSError, sqlite3.Error) as exc:
        for part in ("", "-wal", "-shm"):  # SQLite's files of it too: none left behind
            with suppress(OSError):
                os.unlink(f"{tmp}{part}")
        if isinstance(exc, sqlite3.Error):
            raise _open_failure(path, exc) from None
        if exc.errno in _DISK_FAILURES:  # a full disk, a scheduler's file size limit: exit 3
            raise _disk_failure(path, f"cannot create it: {exc.strerror}") from None
        raise JournalError(f"cannot create journal {path}: {exc.strerror}") from None


def _make_private(path: Path) -> None:
    """Mode 0600 for a journal found with another (made by an older batcher, or copied)."""
    with suppress(OSError):
        fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW)
        try:
            os.fchmod(fd, 0o600)
        finally:
            os.close(fd)


def _writable(path: Path) -> bool:
    """Whether a run could open the journal at ``path`` as it opens it: the journal, its lock
    and SQLite's side files writable, or made in a folder that is (permissions and read-only
    mounts alike)."""
    ids = os.access in os.supports_effective_ids
    folder = os.access(path.parent, os.W_OK, effective_ids=ids)
    if not os.access(path, os.W_OK, effective_ids=ids):
        return False
    for end in (".lock", "-wal", "-shm"):
        beside = Path(f"{path}{end}")
        if not (os.access(beside, os.W_OK, effective_ids=ids) if os.path.lexists(beside)
                else folder):
            return False
    return True


#: what creating a journal meets when the disk, not the command, is at fault
_DISK_FAILURES = {errno.ENOSPC, errno.EDQUOT, errno.EFBIG, errno.EIO}


_PAGE_SIZE = 16384


def _acquire_lock(path: Path, role: str = "") -> tuple[int, bool]:
    """The journal's lock, held: (its descriptor, whether this call made the lock file).
    ``role``: what holds it when it is not a run (``report``), written after the pid."""
    lock_path = path.with_name(path.name + ".lock")
    while True:
        try:
            fd, made = os.open(lock_path, _LOCK_FLAGS | os.O_CREAT | os.O_EXCL, 0o600), True
        except FileExistsError:  # a symbolic link too: refused below (ELOOP)
            try:
                fd, made = os.open(lock_path, _LOCK_FLAGS), False
            except FileNotFoundError:  # removed between the two opens: make it
                continue
            except OSError as exc:
                raise _lock_failure(path, lock_path, exc) from None
        except OSError as exc:
            raise _lock_failure(path, lock_path, exc) from None
        _flock(fd, path, fcntl.LOCK_EX)
        if not _same_file(fd, lock_path):  # removed by a refused open before we locked it
            os.close(fd)
            continue
        break
    try:  # the holder's pid, for the message of a run refused meanwhile
        os.ftruncate(fd, 0)
        os.pwrite(fd, f"{os.getpid()}{' ' + role if role else ''}\n".encode(), 0)
    except OSError as exc:
        _release_lock(fd, remove=path if made else None)
        raise _disk_failure(path, f"cannot write its lock file {lock_path.name} "
                                  f"({exc.strerror})") from None
    return fd, made


_LOCK_FLAGS = os.O_RDWR | os.O_NOFOLLOW


def _lock_failure(path: Path, lock_path: Path, exc: OSError) -> JournalError:
    what = "is a symbolic link" if exc.errno == errno.ELOOP else exc.strerror
    # a run of an archived journal: say where it can run, and what reads it where it is
    how = ("; a run writes to its journal: copy it to a place you can write and give that "
           "with --journal (`batcher report` and `batcher status` read it where it is)"
           if exc.errno in (errno.EROFS, errno.EACCES, errno.EPERM) else "")
    return JournalError(f"cannot lock journal {path}: {lock_path.name} {what}{how}")


def _in_use(path: Path, holder: str, here: bool, role: str = "") -> JournalError:
    """The journal's lock is held: by a run of this very process (a host that started a second
    run of one journal before the first returned), by another batcher process's run, or by a
    `batcher report` reading it (``role``)."""
    if here:
        return JournalError(
            f"journal {path} is in use by another run of this same process (pid {holder}): "
            "the program that runs jobs started a second run of this journal before the first "
            "returned; let the first finish, then run it again (one run of a job at a time: "
            "two would send calls twice and write the same files)")
    if role:
        return JournalError(
            f"journal {path} is being read by `batcher {role}` (pid {holder}), which keeps "
            "runs out until it ends so that what it reads is one job's state: wait for it to "
            "finish, then re-run this command")
    return JournalError(
        f"journal {path} is in use by another batcher run (pid {holder}): wait for it "
        "to finish, then re-run this command (one run of a job at a time: two would "
        "send calls twice and write the same files; `batcher status` reads it "
        "meanwhile)")


def _same_file(fd: int, path: Path) -> bool:
    try:
        st = os.stat(path, follow_symlinks=False)
    except OSError:
        return False
    held = os.fstat(fd)
    return (st.st_dev, st.st_ino) == (held.st_dev, held.st_ino)


def _open_here(fd: int) -> bool:
    """Whether another descriptor of this process is open on the lock file of ``fd`` (Linux's
    /proc; elsewhere the pid alone is taken as this process's): the holder whose pid the lock
    names is this process, not a process of another pid namespace with the same number."""
    held = os.fstat(fd)
    try:
        fds = os.listdir("/proc/self/fd")
    except OSError:
        return True
    for name in fds:
        if name.isdigit() and int(name) != fd:
            with suppress(OSError):
                st = os.fstat(int(name))
                if (st.st_dev, st.st_ino) == (held.st_dev, held.st_ino):
                    return True
    return False


def _release_lock(fd: int, remove: Path | None = None) -> None:
    """Drop the lock; ``remove``: the journal whose lock file goes too (removed while held)."""
    if remove is not None:
        with suppress(OSError):
            os.unlink(remove.with_name(remove.name + ".lock"))
    with suppress(OSError):
        os.ftruncate(fd, 0)
    os.close(fd)  # closing the descriptor drops the flock


def _share_lock(path: Path) -> int | None:
    """The journal's lock held shared, for reading it where batcher cannot write: no run starts
    meanwhile. None when there is no lock file (never run there, or a copy without it: a place
    no run can write to either). JournalError when a run holds it."""
    lock_path = path.with_name(path.name + ".lock")
    try:
        fd = os.open(lock_path, os.O_RDONLY | os.O_NOFOLLOW)
    except FileNotFoundError:
        return None
    except OSError as exc:
        raise _lock_failure(path, lock_path, exc) from None
    _flock(fd, path, fcntl.LOCK_SH)
    return fd


def _flock(fd: int, path: Path, how: int) -> None:
    """Take ``how`` (``LOCK_EX``, or ``LOCK_SH`` to read) on the journal's lock ``fd`` without
    waiting on a run; when one holds it, close ``fd`` and raise JournalError naming the holder.
    Readers (held shared) are waited for a moment: `batcher status` holds it for microseconds
    (to tell a live run from a pid a ``kill -9`` left), a read-only `batcher report` longer."""
    deadline = time.monotonic() + _READER_WAIT_S
    while True:
        try:
            fcntl.flock(fd, how | fcntl.LOCK_NB)
            return
        except OSError as exc:
            busy = exc.errno in (errno.EWOULDBLOCK, errno.EAGAIN, errno.EACCES)
            if not busy:
                os.close(fd)
                raise JournalError(f"cannot lock journal {path}: {exc.strerror}") from None
        readers = how == fcntl.LOCK_EX and _only_readers(fd)
        if not readers or time.monotonic() >= deadline:
            break
        time.sleep(0.02)
    if readers:  # the lock file names nobody (or a run kill -9 left): the kernel's table does
        pids = _readers_of(fd)
        os.close(fd)
        raise _in_use(path, ", ".join(pids) or "unknown", False, "report") from None
    said = os.pread(fd, 64, 0).decode("ascii", "replace").split()
    holder = said[0] if said and said[0].isdigit() else "unknown"
    here = holder == str(os.getpid()) and _open_here(fd)
    os.close(fd)
    raise _in_use(path, holder, here, " ".join(said[1:2])) from None


_READER_WAIT_S = 1.0


def _only_readers(fd: int) -> bool:
    """Whether the lock ``fd`` could not take exclusively is held shared only (readers)."""
    try:
        fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
    except OSError:
        return False
    fcntl.flock(fd, fcntl.LOCK_UN)
    return True


def _readers_of(fd: int) -> list[str]:
    """The pids holding the lock file of ``fd`` shared, from Linux's /proc/locks (a reader
    writes nothing in a lock file it may not write); empty elsewhere or when unreadable."""
    st = os.fstat(fd)
    pids: list[str] = []
    with suppress(OSError, ValueError, IndexError), open("/proc/locks") as table:
        for line in table:
            # "1: FLOCK  ADVISORY  READ 4242 fd:01:1234 0 EOF" (a waiter's line has "->")
            parts = line.split()
            if "->" in parts or parts[1] != "FLOCK" or parts[3] != "READ":
                continue
            major, minor, inode = parts[5].split(":")
            if (int(inode) == st.st_ino and int(major, 16) == os.major(st.st_dev)
                    and int(minor, 16) == os.minor(st.st_dev) and parts[4] != "0"):
                pids.append(parts[4])
    return list(dict.fromkeys(pids))


def _connect(path: Path) -> sqlite3.Connection:
    try:
        db = sqlite3.connect(path, isolation_level=None, check_same_thread=False)
    except sqlite3.Error as exc:
        raise _open_failure(path, exc) from None
    try:
        _tables(db, path)  # before WAL mode, which another SQLite file would keep
        db.execute("PRAGMA journal_mode = WAL")
        # NORMAL with WAL: every commit survives a crash or kill -9 of this process; only a power
        # loss can drop the last answers, and then their batches are merely sent again (a re-send
        # of an applied call is harmless: it reports the pairs not_enrolled, hedged). FULL would
        # put an fsync in the event loop on every answer and cap the job's call rate.
        db.execute("PRAGMA synchronous = NORMAL")
        db.execute("PRAGMA cache_size = -32000")  # bounded: 32 MB whatever the job size
        db.execute("PRAGMA journal_size_limit = 67108864")
    except BaseException as exc:
        db.close()
        if isinstance(exc, sqlite3.Error):
            raise _open_failure(path, exc) from None
        raise
    return db


def _tables(db: sqlite3.Connection, path: Path) -> set[str]:
    """The tables of the SQLite file; JournalError for one of another program."""
    tables = {r[0] for r in db.execute("SELECT name FROM sqlite_master WHERE type = 'table'")}
    if tables and "meta" not in tables:
        raise JournalError(f"{path} is an SQLite file but not a batcher journal")
    return tables


def _open_failure(path: Path, exc: sqlite3.Error) -> JournalError | JournalIOError:
    """A file that is no journal at all is a usage error (exit 2); a journal whose disk fails
    (full, read-only, I/O, damaged pages) is an abort the same command resumes once fixed."""
    name = getattr(exc, "sqlite_errorname", "") or ""
    if name == "SQLITE_NOTADB":
        return JournalError(f"{path} is not a batcher journal ({exc}){where_journals_are(path)}")
    if name.startswith("SQLITE_CANTOPEN"):
        return JournalError(f"cannot open journal {path}: {_sqlite_text(exc)}")
    return _sqlite_failure(path, exc)


def _sqlite_failure(path: Path, exc: sqlite3.Error) -> JournalIOError:
    """A damaged file (SQLITE_CORRUPT: a journal cut short, pages overwritten) is said as such,
    not as a disk to fix; any other failure as the disk's."""
    name = getattr(exc, "sqlite_errorname", "") or ""
    if name.startswith("SQLITE_CORRUPT"):
        return _damaged(path, name)
    return _disk_failure(path, _sqlite_text(exc))


def _disk_failure(path: Path, what: str) -> JournalIOError:
    """The journal's disk failed: one line naming the file, what failed, and whether the disk
    is full (SQLite often says only "disk I/O error" when it is)."""
    try:
        free = shutil.disk_usage(path.parent).free
    except OSError:
        free = None
    full = f"; the disk is full ({free // 1024} KiB free)" if free is not None \
        and free < 1024 * 1024 else ""
    return JournalIOError(f"journal {path}: {what}{full}; free space or fix the disk, then "
                          "re-run the same command to resume")


def _damaged(path: Path, what: str) -> JournalIOError:
    """A journal whose file is damaged: nothing is sent from it (exit 3, like a failing disk)."""
    return JournalIOError(f"journal {path}: database disk image is malformed ({what}); batcher "
                          "sends nothing from a damaged journal: restore it from a backup, or "
                          "move it away to start the job over (calls already answered are then "
                          "sent again; un-enrolling twice is harmless)")


def _prepare(db: sqlite3.Connection, path: Path, fingerprint: str | Callable[[], str] | None,
             input_name: str | None, *, read_only: bool = False) -> bool:
    """Create the schema if needed and check the input binding; returns ``is_new``.
    ``read_only``: only check (a journal opened to read; its fingerprint is None)."""
    db.execute("BEGIN" if read_only else "BEGIN IMMEDIATE")
    try:
        tables = _tables(db, path)
        if not tables and not read_only:
            for statement in filter(str.strip, _SCHEMA.split(";")):
                db.execute(statement)
        if not read_only:
            db.execute(_CALLS_TABLE)
        elif "calls" not in tables:  # an older journal's call log, empty, for this reading
            db.execute(_CALLS_TABLE.replace("TABLE", "TEMP TABLE", 1))
        meta = dict(db.execute("SELECT key, value FROM meta")) if tables else {}
        version = json.loads(meta.get(_K_VERSION, str(SCHEMA_VERSION)))
        if version != SCHEMA_VERSION:
            raise JournalError(f"journal {path} has format {version}; this batcher reads "
                               f"format {SCHEMA_VERSION}")
        loaded = _K_LOADED in meta
        if loaded:  # a damaged page must stop the job before a call, not when results are due
            problem = db.execute("PRAGMA quick_check(1)").fetchone()[0]
            if problem != "ok":
                raise _damaged(path, " ".join(problem.replace("*** in database main ***", "")
                                              .split()))
            problem = rows_problem(db, int(json.loads(meta.get(_K_ROWS, "0"))))
            if problem:
                raise _damaged(path, problem)
        if fingerprint is None:
            if not loaded:
                raise NotPlanned(
                    f"journal {path} holds no plan: its job stopped before the plan was made "
                    "(no un-enrol call was sent, so there are no results to write); re-run the "
                    "job's command to plan and send it")
        elif loaded and json.loads(meta[_K_FINGERPRINT]) != (
                fingerprint := fingerprint() if callable(fingerprint) else fingerprint):
            was, had = json.loads(meta.get(_K_INPUT, "null")), json.loads(meta[_K_FINGERPRINT])
            if was and was == input_name:  # the same file, edited since the job began
                raise JournalError(
                    f"journal {path} was made for {was!r} as it was then (fingerprint "
                    f"{had[:12]}); the file has changed since (fingerprint {fingerprint[:12]}). "
                    "A job resumes only on the exact file it began with: put that file back to "
                    "finish the job, or give the changed file another --journal to run it as a "
                    "new job (its pairs already answered are then sent again, which is harmless).")
            now = f"{input_name!r}" if input_name else "this input"
            raise JournalError(
                f"journal {path} belongs to another input: it was made for "
                f"{repr(was) if was else 'another file'} (fingerprint {had[:12]}), but {now} has "
                f"fingerprint {fingerprint[:12]}. Use other --results (or another --journal), or "
                "move this journal and its results away to start over.")
        elif not loaded:  # nothing was done yet: (re)bind to this input
            _set_meta(db, _K_VERSION, SCHEMA_VERSION)
            if not callable(fingerprint):  # else taken when the journal is loaded
                _set_meta(db, _K_FINGERPRINT, fingerprint)
            _set_meta(db, _K_INPUT, input_name)
            if _K_STARTED not in meta:
                _set_meta(db, _K_STARTED, utc_now())
        if not read_only:
            db.execute("INSERT INTO counters (name, value) VALUES ('runs', 1) ON CONFLICT (name)"
                       " DO UPDATE SET value = value + 1")
    except BaseException:
        if db.in_transaction:
            db.execute("ROLLBACK")
        raise
    db.execute("COMMIT")
    return not loaded


def _set_meta(db: sqlite3.Connection, key: str, value: Any) -> None:
    db.execute("INSERT OR REPLACE INTO meta (key, value) VALUES (?, ?)", (key, json.dumps(value)))


def _checkpoint(path: Path) -> None:
    """Copy the WAL into the journal file without blocking its writer (a PASSIVE checkpoint);
    a failure is left to the writer's own checkpoints."""
    # mode=rw: a journal removed meanwhile (a dry run's, in a temporary folder) is not made anew
    uri = f"file:{quote(str(path))}?mode=rw"
    with suppress(sqlite3.Error), closing(sqlite3.connect(uri, uri=True, timeout=0)) as db:
        db.execute("PRAGMA wal_checkpoint(PASSIVE)")


def _yielding() -> None:
    """Lower this thread's priority (Linux: a thread's own nice value): the load's rows and
    batch texts are done long before the pairs are placed, which the first call waits for, so
    on a machine of few cores they give way to it. Elsewhere the id would name a process."""
    if sys.platform != "linux":
        return
    with suppress(OSError, AttributeError):
        os.setpriority(os.PRIO_PROCESS, threading.get_native_id(), 10)


def _digest(module: str, records: str | bytes, cadences: str, positions: bytes) -> int:
    """What a batch was planned as — its call and the input rows it answers — as a CRC-32: it
    guards against a damaged or edited journal, not against an attacker (who could edit the
    digest too), and costs a microsecond a batch."""
    return _digest_end(_digest_start(module, records, cadences), positions)


def _digest_start(module: str, records: str | bytes, cadences: str) -> int:
    # ids kept as integers are tagged: text read back as integers (or the reverse) is another
    # batch, not the same bytes
    crc = zlib.crc32(_INTEGER_IDS) if isinstance(records, bytes) else 0
    for part in (module.encode(), records if isinstance(records, bytes) else records.encode(),
                 cadences.encode()):
        crc = zlib.crc32(part, zlib.crc32(len(part).to_bytes(8, "little"), crc))
    return crc


_INTEGER_IDS = b"uint64 ids"


def _digest_end(crc: int, positions: bytes) -> int:
    return zlib.crc32(positions, zlib.crc32(len(positions).to_bytes(8, "little"), crc))


def stored_ids(stored: str | bytes) -> tuple[str, ...]:
    """A batch's ``record_ids`` as stored → the ids: JSON text, or (every batch the planner
    made of the reader's ids) their uint64 values, 8 bytes each, little-endian — a third of
    the text's bytes, which a ten-million-pair load writes once and commits before its first
    call."""
    try:
        if isinstance(stored, bytes):
            return tuple(map(str, np.frombuffer(stored, dtype="<u8").tolist()))
        ids = json.loads(stored)
        if not isinstance(ids, list) or not all(isinstance(i, str) for i in ids):
            raise ValueError("not a list of ids")
        return tuple(ids)
    except (ValueError, TypeError):  # not a whole number of ids, or not JSON of them
        raise JournalError("the journal is damaged: a batch's record ids cannot be read; "
                           "re-run the job from its input with a new journal") from None


def _json_ids(ids: Sequence[str]) -> str:
    """``json.dumps(list(ids))``, several times faster for ids of digits (every planned id)."""
    if "".join(ids).isdigit():
        return '["' + '", "'.join(ids) + '"]'
    return json.dumps(list(ids))


def _batch_row(seq: int, batch: Batch, positions: np.ndarray, parent: str | None, root: int,
               attempts: int = 0) -> tuple:
    if not batch.record_ids or not batch.cadence_ids:
        raise ValueError(f"batch {batch.batch_id} is empty")
    return _stored_batch(seq, batch.batch_id, batch.module, _json_ids(batch.record_ids),
                         _json_ids(batch.cadence_ids),
                         len(batch.record_ids) * len(batch.cadence_ids), positions, parent, root,
                         attempts)


def _stored_batch(seq: int, batch_id: str, module: str, records: str, cadences: str, npairs: int,
                  positions: np.ndarray, parent: str | None, root: int, attempts: int) -> tuple:
    # 4 bytes a position while they fit (every job under two billion rows), else 8: the width
    # is told by the blob's length against the batch's pairs
    if positions.dtype != np.int32:
        wide = len(positions) and int(positions.max()) >= 2**31
        positions = np.ascontiguousarray(positions, dtype=np.int64 if wide else np.int32)
    blob = positions.tobytes()
    return (seq, batch_id, module, records, cadences, npairs, attempts, parent, root, blob,
            _digest(module, records, cadences, blob))


def _block_records(block: BatchBlock) -> list[str] | list[bytes]:
    """Each batch's record ids as stored (:func:`stored_ids`): the reader's uint64 values as
    they are, other ids as JSON text, made by Arrow for ids of digits."""
    ids = block.record_ids
    ids = ids.combine_chunks() if isinstance(ids, pa.ChunkedArray) else ids
    if pa.types.is_uint64(ids.type) and not ids.null_count:
        raw = numpy_of(ids).astype("<u8", copy=False).tobytes()
        ends = (np.asarray(block.offsets, dtype=np.int64) * 8).tolist()
        return [raw[a:b] for a, b in zip(ends[:-1], ends[1:], strict=True)]
    digits = pa.types.is_unsigned_integer(ids.type)
    ids = pc.cast(ids, pa.string())
    lists = pa.ListArray.from_arrays(arrow_of(np.asarray(block.offsets, dtype=np.int32)), ids)
    if digits or len(ids) and pc.all(pc.ascii_is_decimal(ids)).as_py():
        return pc.binary_join_element_wise('["', pc.binary_join(lists, '", "'), '"]',
                                           "").to_pylist()
    return [json.dumps(v) for v in lists.to_pylist()]


def _insert_rows(db: sqlite3.Connection, rows: list[tuple]) -> None:
    try:
        db.executemany("INSERT INTO batches (seq, batch_id, module, record_ids, cadence_ids,"
                       " npairs, attempts, parent, root, positions, digest)"
                       " VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)", rows)
    except sqlite3.IntegrityError:
        raise ValueError("plan error: a batch id is used twice") from None


def _insert_batch(db: sqlite3.Connection, seq: int, batch: Batch, positions: np.ndarray, *,
                  parent: str, root: int, attempts: int = 0) -> None:
    _insert_rows(db, [_batch_row(seq, batch, positions, parent, root, attempts)])


#: a planned batch ready to store but for its positions: (batch_id, module, record_ids as
#: stored, cadence_ids as JSON, pairs, the digest of all but the positions)
_Prepared = tuple[str, str, str | bytes, str, int, int]


def _prepared(batches: Iterable[Batch | BatchBlock], stop: threading.Event) -> list[_Prepared]:
    """The planned batches' text and most of their digest, made apart from their positions (in
    a thread of its own while the pairs are placed). Raises ValueError for an empty batch."""
    out: list[_Prepared] = []
    for item in batches:
        if stop.is_set():
            raise Stopped
        if isinstance(item, BatchBlock):
            records = _block_records(item)
            sizes = np.diff(item.offsets).tolist()
            module = item.module
            texts: dict[tuple[str, ...], str] = {}  # a block's batches share a few cadence sets
            for batch_id, text, n_records, cadences in zip(
                    item.batch_ids, records, sizes, item.cadence_ids, strict=True):
                if not n_records or not cadences:
                    raise ValueError(f"batch {batch_id} is empty")
                if (cad_text := texts.get(cadences)) is None:
                    cad_text = texts[cadences] = _json_ids(cadences)
                out.append((batch_id, module, text, cad_text, n_records * len(cadences),
                            _digest_start(module, text, cad_text)))
        else:
            if not item.record_ids or not item.cadence_ids:
                raise ValueError(f"batch {item.batch_id} is empty")
            text, cad_text = _json_ids(item.record_ids), _json_ids(item.cadence_ids)
            out.append((item.batch_id, item.module, text, cad_text,
                        len(item.record_ids) * len(item.cadence_ids),
                        _digest_start(item.module, text, cad_text)))
    return out


def _insert_plan(db: sqlite3.Connection, prepared: list[_Prepared], order: np.ndarray,
                 offsets: np.ndarray) -> None:
    """Insert the planned batches (seq 1, 2, … in order), each with its rows' positions;
    every batch must have exactly as many rows as pairs."""
    if len(order) and int(order.max()) < 2**31:
        order = order.astype(np.int32)  # once, not a conversion per batch
    ends = offsets.tolist()  # batch s's rows: order[ends[s - 1]:ends[s]]
    rows: list[tuple] = []
    for seq, (batch_id, module, records, cadences, n, crc) in enumerate(prepared, 1):
        lo, hi = (ends[seq - 1], ends[seq]) if seq < len(ends) else (0, 0)
        if n != hi - lo:
            raise ValueError(f"plan error: batch {batch_id} has {n} pairs but {hi - lo} "
                             "input rows")
        blob = order[lo:hi].tobytes()
        rows.append((seq, batch_id, module, records, cadences, n, 0, None, seq, blob,
                     _digest_end(crc, blob)))
        if len(rows) == _INSERT_BATCHES:
            _insert_rows(db, rows)
            rows = []
    if len(prepared) < len(ends) - 1:
        raise ValueError(f"plan error: {len(order)} valid rows but the batches hold "
                         f"{ends[len(prepared)]} pairs")
    _insert_rows(db, rows)


@dataclass
class _Open:
    """A batch read back for its answer: its pairs and the input positions they answer."""

    seq: int
    batch_id: str
    module: str
    records: tuple[str, ...]
    cadences: tuple[str, ...]
    positions: np.ndarray
    attempts: int
    root: int
    parent: str | None

    @classmethod
    def read(cls, db: sqlite3.Connection, batch_id: str, open_only: bool = True) -> _Open:
        got = db.execute("SELECT seq, state, attempts, module, record_ids, cadence_ids,"
                         " positions, root, parent FROM batches WHERE batch_id = ?",
                         (batch_id,)).fetchone()
        if got is None:
            raise ValueError(f"unknown batch {batch_id!r}")
        seq, state, attempts, module, records, cadences, positions, root, parent = got
        if open_only and state not in OPEN_STATES:
            raise ValueError(f"batch {batch_id} is already {state}; it must not be sent again")
        records, cadences = stored_ids(records), tuple(json.loads(cadences))
        return cls(seq, batch_id, module, records, cadences,
                   positions_of(positions, len(records) * len(cadences)), attempts, root, parent)

    @property
    def npairs(self) -> int:
        return len(self.records) * len(self.cadences)

    def _place(self, what: tuple[str, ...]) -> dict[str, int]:
        return {v: i for i, v in enumerate(what)}

    def indices(self, record_ids: Sequence[str], cadence_ids: Sequence[str]) -> np.ndarray:
        """Places in :meth:`Batch.pairs` of ``record_ids`` × ``cadence_ids`` (record-major)."""
        if len(set(record_ids)) != len(record_ids) or len(set(cadence_ids)) != len(cadence_ids):
            raise ValueError(f"batch {self.batch_id}: a pair has two outcomes")
        rp, cp = self._place(self.records), self._place(self.cadences)
        stray = next(((r, c) for r in record_ids for c in cadence_ids
                      if r not in rp or c not in cp), None)
        if stray:
            raise ValueError(f"batch {self.batch_id}: pair {stray} is not one of its pairs")
        ri = np.array([rp[r] for r in record_ids], dtype=np.int64)
        ci = np.array([cp[c] for c in cadence_ids], dtype=np.int64)
        return (ri[:, None] * len(self.cadences) + ci[None, :]).ravel()

    def check_once(self, idx: np.ndarray) -> None:
        if len(np.unique(idx)) != len(idx):
            raise ValueError(f"batch {self.batch_id}: a pair has two outcomes")

    def groups_of(self, outs: list[PairOutcome]) -> list[tuple[tuple, np.ndarray]]:
        """Outcomes → (stored result, places) groups; every pair must be the batch's, once."""
        rp, cp = self._place(self.records), self._place(self.cadences)
        grouped: dict[tuple, list[int]] = {}
        for o in outs:
            if o.record_id not in rp or o.cadence_id not in cp:
                raise ValueError(f"batch {self.batch_id}: pair {(o.record_id, o.cadence_id)} "
                                 "is not one of its pairs")
            key = _stored((o.status, o.code, o.message, o.http_status, o.retryable))
            grouped.setdefault(key, []).append(rp[o.record_id] * len(self.cadences)
                                               + cp[o.cadence_id])
        groups = [(k, np.array(v, dtype=np.int64)) for k, v in grouped.items()]
        self.check_once(cat([i for _, i in groups]))
        return groups

    def settle(self, db: sqlite3.Connection, groups: list[tuple[tuple, np.ndarray]],
               attempts: int, whole: bool = True) -> int:
        """Store the groups' outcomes; returns how many of the batch's pairs now have one.

        An answer to a planned batch that covers it is stored as the batch's own outcome (its
        largest group) plus a row per pair of the other groups; anything else a row per pair.
        """
        now = utc_now()
        n = sum(len(i) for _, i in groups)
        rest = groups
        if whole and self.parent is None and groups and n == self.npairs:
            db.execute("DELETE FROM outcomes WHERE seq = ?", (self.seq,))  # earlier partials
            rest = sorted(groups, key=lambda g: len(g[1]), reverse=True)
            db.execute("UPDATE batches SET status = ?, code = ?, message = ?, http_status = ?,"
                       " retryable = ?, answered_attempts = ?, finished_at = ? WHERE seq = ?",
                       (*rest.pop(0)[0], attempts, now, self.seq))
        for key, idx in rest:
            db.executemany(_INSERT_OUTCOMES, [(p, self.root, self.seq, *key, attempts, now)
                                              for p in self.positions[idx].tolist()])
        if n == self.npairs:
            return n
        return db.execute("SELECT count(*) FROM outcomes WHERE seq = ? AND status != 'not_sent'",
                          (self.seq,)).fetchone()[0]

    def set_state(self, db: sqlite3.Connection, state: str) -> None:
        db.execute("UPDATE batches SET state = ? WHERE seq = ?", (state, self.seq))


def _children_places(db: sqlite3.Connection, parent: _Open, unsettled: np.ndarray,
                     children: Sequence[Batch]) -> list[np.ndarray]:
    """Validate a split; returns each child's pairs as places in the parent's pairs."""
    seen = np.zeros(parent.npairs, dtype=bool)
    out = []
    for child in children:
        if child.module != parent.module:
            raise ValueError(f"child {child.batch_id} has module {child.module}, parent "
                             f"{parent.module}")
        if db.execute("SELECT 1 FROM batches WHERE batch_id = ?", (child.batch_id,)).fetchone():
            raise ValueError(f"batch id {child.batch_id} already exists")
        try:
            idx = parent.indices(child.record_ids, child.cadence_ids)
        except ValueError:
            idx = None
        bad = None if idx is None else np.flatnonzero(~unsettled[idx] | seen[idx])
        if idx is None or len(bad):
            pair = (child.pairs()[int(bad[0])] if idx is not None else
                    next(p for p in child.pairs() if p[0] not in parent.records
                         or p[1] not in parent.cadences))
            what = "in two children" if idx is not None and unsettled[idx[bad[0]]] else \
                f"not an unsettled pair of {parent.batch_id}"
            raise ValueError(f"child {child.batch_id}: pair {pair} is {what}")
        seen[idx] = True
        out.append(idx)
    left = int((unsettled & ~seen).sum())
    if children and left:
        raise ValueError(f"split of {parent.batch_id}: {left} unsettled pair(s) are in no child")
    if not children and left:
        raise ValueError(f"split of {parent.batch_id} without children leaves {left} pair(s)")
    return out


def _moved(positions: np.ndarray, root: int, seq: int, attempts: list[int]) -> list[tuple]:
    """Outcome rows of pairs handed to a new batch: not sent (yet), worth sending; each keeps
    the attempts it showed."""
    return [(p, root, seq, Status.NOT_SENT.value, None, None, None, 1, a, None)
            for p, a in zip(positions.tolist(), attempts, strict=True)]


def _retryable_failures(db: sqlite3.Connection
                        ) -> list[tuple[_Open, np.ndarray, np.ndarray]]:
    """Answered batches with pairs whose last word is ``failed`` and retryable: (batch, places,
    the attempts each shows), in plan order."""
    found: dict[int, tuple[_Open, list[np.ndarray], list[np.ndarray]]] = {}
    for batch_id, attempts in db.execute(
            "SELECT batch_id, answered_attempts FROM batches WHERE parent IS NULL"
            " AND state = 'answered' AND status = 'failed' AND retryable = 1").fetchall():
        batch = _Open.read(db, batch_id, open_only=False)
        other = np.array([p for (p,) in db.execute("SELECT pos FROM outcomes WHERE root = ?",
                                                   (batch.seq,))], dtype=np.int64)
        idx = np.flatnonzero(~np.isin(batch.positions, other))
        found[batch.seq] = (batch, [idx], [np.full(len(idx), attempts, dtype=np.int64)])
    own: dict[str, list[tuple[int, int]]] = {}
    for batch_id, pos, attempts in db.execute(
            "SELECT b.batch_id, o.pos, o.attempts FROM outcomes o JOIN batches b ON b.seq = o.seq"
            " WHERE o.status = 'failed' AND o.retryable = 1"
            " AND b.state NOT IN ('pending', 'sent')").fetchall():
        own.setdefault(batch_id, []).append((pos, attempts))
    for batch_id, got in own.items():
        batch = _Open.read(db, batch_id, open_only=False)
        positions, attempts = (np.array(v, dtype=np.int64) for v in zip(*got, strict=True))
        sorter = np.argsort(batch.positions)
        idx = sorter[np.searchsorted(batch.positions, positions, sorter=sorter)]
        entry = found.setdefault(batch.seq, (batch, [], []))
        entry[1].append(idx)
        entry[2].append(attempts)
    out = []
    for _, (batch, places, shown) in sorted(found.items()):
        idx, attempts = cat(places), cat(shown)
        if len(idx):
            order = np.argsort(idx)
            out.append((batch, idx[order], attempts[order]))
    return out


def _stored(result: tuple) -> tuple:
    """An outcome's (status, code, message, http_status, retryable) as the journal holds it."""
    status, code, message, http_status, retryable = result
    text = _OUTCOME_STATUS.get(status)
    if text is None:
        raise ValueError(f"{Status(status)} is not an outcome")
    return text, code or None, message or None, http_status, int(bool(retryable))
