"""The job's durable state in one SQLite file: input fingerprint, plan, batch states, pair outcomes.

Everything a resume needs is committed as answers arrive, each answer in one transaction, so a
crash, Ctrl-C or ``kill -9`` at any instant leaves either the whole answer or none of it. A batch
recorded as answered is never handed out again (invariant 3). Memory stays flat whatever the job
size: rows go in and come out in chunks, and batches are paged.

Concurrency: one process per journal, enforced by ``flock`` on ``<journal>.lock`` (the kernel drops
it when the process dies, so ``kill -9`` leaves no stale lock). Within the process, methods may be
called from worker threads (``asyncio.to_thread``); a mutex serialises them.

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
import itertools
import json
import operator
import os
import shutil
import sqlite3
import threading
from collections.abc import Iterable, Iterator, Sequence
from contextlib import contextmanager, suppress
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.compute as pc

from .errors import JournalError, JournalIOError
from .models import (
    MAX_CADENCES_PER_CALL,
    MAX_RECORDS_PER_CALL,
    RESULT_COLUMNS,
    Batch,
    OutcomeGroup,
    PairOutcome,
    Status,
)

SCHEMA_VERSION = 2  # 2: rows keyed by position (a record list has one row per cadence)
CHUNK_ROWS = 50_000
_PAGE_BATCHES = 20  # ≤ 10,000 rows checked per page: a short pause for the event loop
_COUNTERS = ("calls", "retries", "throttled", "credits", "ignored_entries")
_OPEN_STATES = ("pending", "sent")  # a 'sent' batch may or may not have been applied: re-sendable
#: status (member or its text) → the text stored, for the statuses an answer may give a pair
_OUTCOME_STATUS = {s.value: s.value for s in Status if s not in (Status.NOT_SENT, Status.DUPLICATE)}
_SET_ROWS = ("UPDATE rows SET status = ?, code = ?, message = ?, http_status = ?, retryable = ?,"
             " attempts = ?, finished_at = ?")

#: Arrow schema of the results, column for column RESULT_COLUMNS
RESULT_SCHEMA = pa.schema([
    ("row", pa.int64()), ("module", pa.string()), ("record_id", pa.string()),
    ("cadence_id", pa.string()), ("status", pa.string()), ("code", pa.string()),
    ("message", pa.string()), ("http_status", pa.int64()), ("attempts", pa.int64()),
    ("batch_id", pa.string()), ("retryable", pa.bool_()), ("finished_at", pa.string()),
])
assert tuple(RESULT_SCHEMA.names) == RESULT_COLUMNS

_SCHEMA = """
CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT NOT NULL) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS counters (name TEXT PRIMARY KEY, value INTEGER NOT NULL) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS batches (
    seq INTEGER PRIMARY KEY,
    batch_id TEXT NOT NULL UNIQUE,
    module TEXT NOT NULL,
    record_ids TEXT NOT NULL,
    cadence_ids TEXT NOT NULL,
    npairs INTEGER NOT NULL,
    state TEXT NOT NULL DEFAULT 'pending',
    attempts INTEGER NOT NULL DEFAULT 0,
    parent TEXT
);
CREATE INDEX IF NOT EXISTS batches_open ON batches (seq) WHERE state IN ('pending', 'sent');
CREATE TABLE IF NOT EXISTS rows (
    pos INTEGER PRIMARY KEY,
    row INTEGER NOT NULL,
    module TEXT, record_id TEXT, cadence_id TEXT,
    status TEXT NOT NULL, code TEXT, message TEXT, http_status INTEGER,
    attempts INTEGER NOT NULL DEFAULT 0, batch_id TEXT, retryable INTEGER, finished_at TEXT
);
"""
# the call log: one row per un-enrol call that reached a server, for the report's timeline;
# created apart from _SCHEMA so journals made before it gain it on open (same format version)
_CALLS_TABLE = ("CREATE TABLE IF NOT EXISTS calls (at REAL NOT NULL, batch_id TEXT,"
                " http_status INTEGER, throttled INTEGER NOT NULL, seconds REAL NOT NULL)")
# built after the bulk insert (much faster than maintaining it row by row); its uniqueness also
# proves that no pair sits twice in one batch
_PAIR_INDEX = ("CREATE UNIQUE INDEX IF NOT EXISTS rows_pair "
               "ON rows (batch_id, record_id, cadence_id) WHERE batch_id IS NOT NULL")

_K_VERSION, _K_FINGERPRINT = "batcher.schema_version", "batcher.fingerprint"
_K_INPUT = "batcher.input"
_K_LOADED, _K_ROWS, _K_STARTED = "batcher.loaded", "batcher.rows", "batcher.started_at"
_K_ROUNDS = "batcher.retry_rounds"


def utc_now() -> str:
    """UTC, ISO 8601, millisecond precision, ``Z`` suffix."""
    return datetime.now(UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")


class Journal:
    """One job's state. Use :meth:`open`; a context manager that releases the lock on exit."""

    def __init__(self, path: Path, db: sqlite3.Connection, lock_fd: int, is_new: bool) -> None:
        self.path = path
        self._db = db
        self._lock_fd = lock_fd
        self._mutex = threading.RLock()
        self._unsaved: dict[str, int] = {}  # counter deltas waiting for the next commit
        self._unsaved_calls: list[tuple] = []  # call log rows waiting for the next commit
        self._count_lock = threading.Lock()
        self.is_new = is_new

    # ------------------------------------------------------------------ open / close

    @classmethod
    def open(cls, path: str | os.PathLike[str], fingerprint: str | None, *,
             input_name: str | None = None) -> Journal:
        """Create or open the journal and hold its lock until :meth:`close`.

        ``fingerprint`` binds the journal to one input; ``None`` opens an existing journal whatever
        its input (``batcher report``). ``input_name`` is only remembered for error messages.
        """
        path = Path(path)
        if path.is_symlink():
            raise JournalError(f"journal {path} is a symbolic link; batcher does not follow links "
                               "for its own files: give the real path with --journal")
        if fingerprint is None and not path.is_file():
            raise JournalError(f"no journal at {path}")
        if not path.parent.is_dir():
            raise JournalError(
                f"cannot create journal {path}: directory {path.parent} does not exist")
        lock_fd = _acquire_lock(path)
        try:
            _create_private(path)
            db = _connect(path)
            try:
                is_new = _prepare(db, path, fingerprint, input_name)
            except BaseException as exc:
                db.close()
                if isinstance(exc, sqlite3.Error):
                    raise _open_failure(path, exc) from None
                raise
        except BaseException:
            _release_lock(lock_fd)
            raise
        return cls(path, db, lock_fd, is_new)

    def close(self) -> None:
        with self._mutex:
            if self._lock_fd < 0:
                return
            try:
                self._db.close()
            finally:
                _release_lock(self._lock_fd)
                self._lock_fd = -1

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
            if self._lock_fd < 0:
                raise ValueError("journal is closed")
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
            if self._lock_fd < 0:
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
            raise _disk_failure(self.path, _sqlite_text(exc)) from None

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

    def load(self, rows: pa.Table | Iterable[pa.Table], batches: Iterable[Batch], *,
             chunk_rows: int = CHUNK_ROWS) -> None:
        """Store every input row and the plan, all in one transaction (never half-loaded).

        ``rows``: the reader's columns (row, module, record_id, cadence_id, status, reason, optional
        code) plus ``batch_id`` (the planned batch of each valid row, null otherwise); one table,
        or tables streamed in input order (a job too large to hold in memory at once).
        """
        if not self.is_new:
            raise ValueError(f"journal {self.path} is already loaded")
        tables = [rows] if isinstance(rows, pa.Table) else rows
        now = utc_now()
        n_rows = 0
        with self._tx() as db:
            db.execute("DELETE FROM rows")
            db.execute("DELETE FROM batches")
            db.execute("DROP INDEX IF EXISTS rows_pair")
            n_valid = 0
            for chunk in (c for t in tables for c in t.to_batches(max_chunksize=chunk_rows)):
                missing = {"row", "module", "record_id", "cadence_id", "status", "reason",
                           "batch_id"} - set(chunk.schema.names)
                if missing:
                    raise ValueError(f"rows table lacks column(s) {sorted(missing)}")
                n_rows += chunk.num_rows
                records, valid = _load_records(chunk, now, pos0=n_rows - chunk.num_rows + 1)
                n_valid += valid
                db.executemany("INSERT INTO rows (pos, row, module, record_id, cadence_id, status,"
                               " code, message, batch_id, retryable, finished_at)"
                               " VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)", records)
            n_pairs = _insert_batches(db, batches, seq0=1)
            try:
                db.execute(_PAIR_INDEX)
            except sqlite3.IntegrityError:
                raise ValueError("plan error: a pair appears twice in one batch") from None
            bad = db.execute(
                "SELECT b.batch_id, b.npairs, coalesce(r.n, 0) FROM batches b LEFT JOIN"
                " (SELECT batch_id, count(*) AS n FROM rows WHERE batch_id IS NOT NULL"
                "  GROUP BY batch_id) r ON r.batch_id = b.batch_id"
                " WHERE coalesce(r.n, 0) != b.npairs LIMIT 1").fetchone()
            if bad:
                raise ValueError(f"plan error: batch {bad[0]} has {bad[1]} pairs but "
                                 f"{bad[2]} input rows")
            if n_pairs != n_valid:  # with the check above: some row names an unknown batch
                raise ValueError(f"plan error: {n_valid} valid rows but the batches hold "
                                 f"{n_pairs} pairs")
            _set_meta(db, _K_ROWS, n_rows)
            _set_meta(db, _K_LOADED, now)
        self.is_new = False

    # ------------------------------------------------------------------ batches

    def pending_batches(self) -> Iterator[Batch]:
        """Batches not yet answered (including sent-but-unanswered ones), in plan order, paged.

        Only batches that exist when iteration starts are yielded: split children created meanwhile
        belong to the caller that created them (a fresh call, or a resume, sees them). A batch
        answered while iterating is skipped. Each batch is checked against its rows before it is
        handed out, so a call can only ever name valid input pairs (invariant 1).
        """
        (last,) = self._query("SELECT coalesce(max(seq), 0) FROM batches")[0]
        after = 0
        while True:
            page = self._query(
                "SELECT seq, batch_id, module, record_ids, cadence_ids FROM batches"
                " WHERE state IN ('pending', 'sent') AND seq > ? AND seq <= ?"
                " ORDER BY seq LIMIT ?", (after, last, _PAGE_BATCHES))
            if not page:
                return
            batches = [Batch(b, m, tuple(json.loads(r)), tuple(json.loads(c)))
                       for _, b, m, r, c in page]
            self._check_exact(batches)
            yield from batches
            after = page[-1][0]

    def _check_exact(self, batches: list[Batch]) -> None:
        # The unique index makes a batch's rows distinct pairs; so rows == records × cadences
        # exactly when the rows name the same records and cadences and count as many pairs.
        marks = ",".join("?" * len(batches))
        found = {b: (n, json.loads(r), json.loads(c)) for b, n, r, c in self._query(
            "SELECT batch_id, count(*), json_group_array(DISTINCT record_id),"
            f" json_group_array(DISTINCT cadence_id) FROM rows WHERE batch_id IN ({marks})"
            " GROUP BY batch_id", [b.batch_id for b in batches])}
        for b in batches:
            n, records, cadences = found.get(b.batch_id, (0, [], []))
            want_r, want_c = set(b.record_ids), set(b.cadence_ids)
            if not (n == len(want_r) * len(want_c) and set(records) == want_r
                    and set(cadences) == want_c):
                raise JournalError(f"journal {self.path} is inconsistent: batch {b.batch_id} does "
                                   "not match its input rows; refusing to send it")

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
                    self._open_batch(db, batch_id)  # raises: unknown, or no longer open
                    raise AssertionError("unreachable")  # pragma: no cover
                out[batch_id] = got[0]
        return out

    def record_outcomes(self, batch_id: str, outcomes: Iterable[PairOutcome],
                        attempts: int | None = None, final: bool = True) -> None:
        """Store the outcome of pairs of one batch and, when ``final``, mark it answered.

        A final record must leave no pair of the batch without an outcome. ``attempts`` defaults to
        the number of :meth:`mark_sent` calls the journal saw for the batch (across resumes).
        """
        outs = list(outcomes)
        with self._tx() as db:
            sent, records, cadences = self._open_batch(db, batch_id)
            covered = self._apply(db, batch_id, records, cadences, outs,
                                  sent if attempts is None else attempts)
            if final:
                left = 0 if covered else db.execute(
                    "SELECT count(*) FROM rows WHERE batch_id = ? AND status = 'not_sent'",
                    (batch_id,)).fetchone()[0]
                if left:
                    raise ValueError(f"batch {batch_id}: {left} pair(s) left without an outcome")
                db.execute("UPDATE batches SET state = 'answered' WHERE batch_id = ?", (batch_id,))

    def record_groups(self, batch_id: str, groups: Sequence[OutcomeGroup],
                      attempts: int | None = None) -> None:
        """Store a whole answer given as groups of pairs sharing one result; mark it answered.

        The groups must cover every pair of the batch exactly once. Each group is written with one
        statement (per 500 records), so the usual answer costs one UPDATE, however many pairs.
        ``attempts`` defaults as for :meth:`record_outcomes`.
        """
        with self._tx() as db:
            sent, records, cadences = self._open_batch(db, batch_id)
            _check_cover(batch_id, records, cadences, groups)
            attempts = sent if attempts is None else attempts
            now, n_pairs = utc_now(), len(records) * len(cadences)
            for g in groups:
                key = _stored((g.status, g.code, g.message, g.http_status, g.retryable))
                if g.size == n_pairs:
                    got = db.execute(_SET_ROWS + " WHERE batch_id = ?",
                                     (*key, attempts, now, batch_id)).rowcount
                else:
                    got = 0
                    c_marks = ",".join("?" * len(g.cadence_ids))
                    for chunk in range(0, len(g.record_ids), 500):
                        ids = g.record_ids[chunk:chunk + 500]
                        got += db.execute(
                            _SET_ROWS + f" WHERE batch_id = ? AND record_id IN"
                            f" ({','.join('?' * len(ids))}) AND cadence_id IN ({c_marks})",
                            (*key, attempts, now, batch_id, *ids, *g.cadence_ids)).rowcount
                if got != g.size:
                    raise JournalError(f"batch {batch_id}: its rows do not match its pairs")
            db.execute("UPDATE batches SET state = 'answered' WHERE batch_id = ?", (batch_id,))

    def settle_and_split(self, batch_id: str, outcomes: Iterable[PairOutcome],
                         children: Sequence[Batch], attempts: int | None = None) -> None:
        """Settle some pairs of a batch and re-plan the rest as new pending child batches.

        The children must cover exactly the batch's pairs that ``outcomes`` leaves unsettled, each
        pair once, with the parent's module. The parent's remaining rows move to their child.
        """
        outs = list(outcomes)
        with self._tx() as db:
            sent, records, cadences = self._open_batch(db, batch_id)
            module = db.execute("SELECT module FROM batches WHERE batch_id = ?",
                                (batch_id,)).fetchone()[0]
            self._apply(db, batch_id, records, cadences, outs,
                        sent if attempts is None else attempts)
            settled = {(o.record_id, o.cadence_id) for o in outs}
            remaining = {p for p in db.execute(
                "SELECT record_id, cadence_id FROM rows WHERE batch_id = ?", (batch_id,))
                if p not in settled}
            moves = _check_children(db, batch_id, module, remaining, children)
            (last,) = db.execute("SELECT coalesce(max(seq), 0) FROM batches").fetchone()
            _insert_batches(db, children, seq0=last + 1, parent=batch_id)
            db.executemany("UPDATE rows SET batch_id = ? WHERE batch_id = ? AND record_id = ?"
                           " AND cadence_id = ?", [(c, batch_id, r, k) for c, r, k in moves])
            db.execute("UPDATE batches SET state = ? WHERE batch_id = ?",
                       ("split" if children else "answered", batch_id))

    def _open_batch(self, db: sqlite3.Connection, batch_id: str
                    ) -> tuple[int, tuple[str, ...], tuple[str, ...]]:
        """(attempts, record ids, cadence ids) of a batch that may still be answered."""
        got = db.execute("SELECT state, attempts, record_ids, cadence_ids FROM batches"
                         " WHERE batch_id = ?", (batch_id,)).fetchone()
        if got is None:
            raise ValueError(f"unknown batch {batch_id!r}")
        if got[0] not in _OPEN_STATES:
            raise ValueError(f"batch {batch_id} is already {got[0]}; it must not be sent again")
        return got[1], tuple(json.loads(got[2])), tuple(json.loads(got[3]))

    @staticmethod
    def _apply(db: sqlite3.Connection, batch_id: str, records: Sequence[str],
               cadences: Sequence[str], outs: list[PairOutcome], attempts: int) -> bool:
        """Write the outcomes; returns whether they cover every pair of the batch.

        Outcomes are checked against the batch's records × cadences in Python, then written in
        as few statements as their shape allows: one UPDATE for the whole batch when the pairs
        share one result (the usual answer), one per group of whole records, else one per pair.
        """
        if not outs:
            return False
        want_r, want_c = frozenset(records), frozenset(cadences)
        pairs = list(map(_PAIR, outs))
        distinct = set(pairs)
        if len(distinct) != len(outs):
            raise ValueError(f"batch {batch_id}: a pair has two outcomes")
        if not distinct.issubset(itertools.product(want_r, want_c)):
            stray = next(p for p in pairs if p[0] not in want_r or p[1] not in want_c)
            raise ValueError(f"batch {batch_id}: pair {stray} is not one of its pairs")
        results = list(map(_RESULT, outs))
        groups: dict[tuple, list[tuple[str, str]]] = {}
        if len(set(results)) == 1:  # the usual answer: one result for every pair
            groups[_stored(results[0])] = pairs
        else:
            for result, pair in zip(results, pairs, strict=True):
                groups.setdefault(_stored(result), []).append(pair)
        n_pairs = len(want_r) * len(want_c)
        now = utc_now()
        covered = len(outs) == n_pairs
        order = sorted(groups, key=lambda k: len(groups[k]), reverse=True)
        if covered:  # the largest group first, for the whole batch; the others overwrite it
            base = order.pop(0)
            got = db.execute(_SET_ROWS + " WHERE batch_id = ?",
                             (*base, attempts, now, batch_id)).rowcount
            if got != n_pairs:
                raise JournalError(f"batch {batch_id} has {got} rows for its {n_pairs} pairs")
        for key in order:
            whole, loose = _whole_records(groups[key], len(want_c))
            for chunk in range(0, len(whole), 500):
                ids = whole[chunk:chunk + 500]
                marks = ",".join("?" * len(ids))
                got = db.execute(_SET_ROWS + f" WHERE batch_id = ? AND record_id IN ({marks})",
                                 (*key, attempts, now, batch_id, *ids)).rowcount
                if got != len(ids) * len(want_c):
                    raise JournalError(f"batch {batch_id}: its rows do not match its pairs")
            if loose:
                got = db.executemany(
                    _SET_ROWS + " WHERE batch_id = ? AND record_id = ? AND cadence_id = ?",
                    [(*key, attempts, now, batch_id, r, c) for r, c in loose]).rowcount
                if got != len(loose):
                    raise JournalError(f"batch {batch_id}: its rows do not match its pairs")
        return covered

    def requeue_retryable(self, max_rounds: int) -> int:
        """Plan the pairs answered ``failed`` with ``retryable`` true as new pending batches.

        Run at the start of a resumed job, so the same command re-sends what may succeed now and
        a nightly re-run converges; at most ``max_rounds`` times per job. A pair goes back only
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
            failed: dict[tuple[str, str, int], dict[str, list[str]]] = {}
            for batch_id, module, attempts, record, cadence in db.execute(
                    "SELECT b.batch_id, b.module, b.attempts, r.record_id, r.cadence_id"
                    " FROM rows r JOIN batches b ON b.batch_id = r.batch_id"
                    " WHERE r.status = 'failed' AND r.retryable = 1"
                    " AND b.state NOT IN ('pending', 'sent') ORDER BY b.seq, r.pos"):
                failed.setdefault((batch_id, module, attempts), {}).setdefault(
                    record, []).append(cadence)
            if not failed:
                return 0
            rounds += 1
            (seq,) = db.execute("SELECT coalesce(max(seq), 0) FROM batches").fetchone()
            moves: list[tuple[str, str, str, str]] = []
            for (parent, module, attempts), cadences_of in failed.items():
                by_set: dict[tuple[str, ...], list[str]] = {}
                for record, cadences in cadences_of.items():
                    by_set.setdefault(tuple(cadences), []).append(record)
                children: list[Batch] = []
                for cadences, records in by_set.items():
                    for i in range(0, len(records), MAX_RECORDS_PER_CALL):
                        for j in range(0, len(cadences), MAX_CADENCES_PER_CALL):
                            children.append(Batch(
                                f"{parent}.r{rounds}-{len(children) + 1}", module,
                                tuple(records[i:i + MAX_RECORDS_PER_CALL]),
                                cadences[j:j + MAX_CADENCES_PER_CALL]))
                _insert_batches(db, children, seq0=seq + 1, parent=parent)
                seq += len(children)
                db.executemany("UPDATE batches SET attempts = ? WHERE batch_id = ?",
                               [(attempts, child.batch_id) for child in children])
                moves += [(child.batch_id, parent, r, c)
                          for child in children for r, c in child.pairs()]
            db.executemany(
                "UPDATE rows SET batch_id = ?, status = 'not_sent', code = NULL, message = NULL,"
                " http_status = NULL, finished_at = NULL WHERE batch_id = ? AND record_id = ?"
                " AND cadence_id = ?", moves)
            _set_meta(db, _K_ROUNDS, rounds)
            return len(moves)

    def retryable_failures(self) -> int:
        """Pairs answered ``failed`` with ``retryable`` true (what a retry round would send)."""
        return self._query("SELECT count(*) FROM rows WHERE status = 'failed'"
                           " AND retryable = 1")[0][0]

    def batch_counts(self) -> dict[str, dict[str, int]]:
        """state → {"batches": n, "pairs": n}: for progress bars and resume messages."""
        return {s: {"batches": n, "pairs": p or 0} for s, n, p in self._query(
            "SELECT state, count(*), sum(npairs) FROM batches GROUP BY state")}

    # ------------------------------------------------------------------ counters, metadata

    def add_counters(self, **deltas: int) -> None:
        """:meth:`count` and commit now (with any deltas still waiting)."""
        self.count(**deltas)
        with self._tx():
            pass

    def counters(self) -> dict[str, int]:
        got = dict(self._query("SELECT name, value FROM counters"))
        return {k: int(got.get(k, 0)) for k in (*_COUNTERS, "runs")}

    def calls_per_second(self) -> list[tuple[int, int, int]]:
        """The call log per second: (unix second, calls sent, calls answered 429), in time
        order, seconds without a call left out."""
        return self._query("SELECT CAST(at AS INTEGER) AS s, count(*), sum(throttled)"
                           " FROM calls GROUP BY s ORDER BY s")

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

    def iter_result_chunks(self, chunk_rows: int = CHUNK_ROWS) -> Iterator[pa.Table]:
        """Every row in input order, as tables of :data:`RESULT_SCHEMA`."""
        after = 0
        while True:
            got = self._query(f"SELECT pos, {', '.join(RESULT_COLUMNS)} FROM rows WHERE pos > ?"
                              " ORDER BY pos LIMIT ?", (after, chunk_rows))
            if not got:
                return
            after = got[-1][0]
            cols = list(zip(*got, strict=True))[1:]
            del got
            arrays = [pa.array(col, type=f.type if f.type != pa.bool_() else pa.int8())
                      for col, f in zip(cols, RESULT_SCHEMA, strict=True)]
            arrays[10] = pc.cast(arrays[10], pa.bool_())
            yield pa.Table.from_arrays(arrays, schema=RESULT_SCHEMA)

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
    """Create ``path`` empty with mode 0600 unless it exists; never through a symbolic link."""
    try:
        fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_NOFOLLOW, 0o600)
    except OSError as exc:
        raise JournalError(f"cannot create journal {path}: {exc.strerror}") from None
    with suppress(OSError):
        os.fchmod(fd, 0o600)  # a journal made by an older batcher was 0644
    os.close(fd)


def _acquire_lock(path: Path) -> int:
    lock_path = path.with_name(path.name + ".lock")
    try:
        fd = os.open(lock_path, os.O_RDWR | os.O_CREAT | os.O_NOFOLLOW, 0o600)
    except OSError as exc:
        what = "is a symbolic link" if exc.errno == errno.ELOOP else exc.strerror
        raise JournalError(f"cannot lock journal {path}: {lock_path.name} {what}") from None
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError as exc:
        holder = os.pread(fd, 32, 0).decode("ascii", "replace").strip() or "unknown"
        os.close(fd)
        if exc.errno in (errno.EWOULDBLOCK, errno.EAGAIN, errno.EACCES):
            raise JournalError(
                f"journal {path} is in use by another batcher run (pid {holder}): wait for it "
                "to finish, then re-run this command (a second journal for the same job would "
                "send every call twice and both runs would write the same results)") from None
        raise JournalError(f"cannot lock journal {path}: {exc.strerror}") from None
    try:  # the holder's pid, for the message of a run refused meanwhile
        os.ftruncate(fd, 0)
        os.pwrite(fd, f"{os.getpid()}\n".encode(), 0)
    except OSError as exc:
        os.close(fd)
        raise _disk_failure(path, f"cannot write its lock file {lock_path.name} "
                                  f"({exc.strerror})") from None
    return fd


def _release_lock(fd: int) -> None:
    with suppress(OSError):
        os.ftruncate(fd, 0)
    os.close(fd)  # closing the descriptor drops the flock


def _connect(path: Path) -> sqlite3.Connection:
    try:
        db = sqlite3.connect(path, isolation_level=None, check_same_thread=False)
    except sqlite3.Error as exc:
        raise _open_failure(path, exc) from None
    try:
        db.execute("PRAGMA journal_mode = WAL")
        # NORMAL with WAL: every commit survives a crash or kill -9 of this process; only a power
        # loss can drop the last answers, and then their batches are merely sent again (a re-send
        # of an applied call is harmless: it reports the pairs not_enrolled, hedged). FULL would
        # put an fsync in the event loop on every answer and cap the job's call rate.
        db.execute("PRAGMA synchronous = NORMAL")
        db.execute("PRAGMA cache_size = -32000")  # bounded: 32 MB whatever the job size
        db.execute("PRAGMA journal_size_limit = 67108864")
    except sqlite3.Error as exc:
        db.close()
        raise _open_failure(path, exc) from None
    return db


def _open_failure(path: Path, exc: sqlite3.Error) -> JournalError | JournalIOError:
    """A file that is no journal at all is a usage error (exit 2); a journal whose disk fails
    (full, read-only, I/O, damaged pages) is an abort the same command resumes once fixed."""
    name = getattr(exc, "sqlite_errorname", "") or ""
    if name == "SQLITE_NOTADB":
        return JournalError(f"{path} is not a batcher journal ({exc})")
    if name.startswith("SQLITE_CANTOPEN"):
        return JournalError(f"cannot open journal {path}: {_sqlite_text(exc)}")
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


def _prepare(db: sqlite3.Connection, path: Path, fingerprint: str | None,
             input_name: str | None) -> bool:
    """Create the schema if needed and check the input binding; returns ``is_new``."""
    db.execute("BEGIN IMMEDIATE")
    try:
        tables = {r[0] for r in db.execute("SELECT name FROM sqlite_master WHERE type = 'table'")}
        if tables and "meta" not in tables:
            raise JournalError(f"{path} is an SQLite file but not a batcher journal")
        if not tables:
            for statement in filter(str.strip, _SCHEMA.split(";")):
                db.execute(statement)
        db.execute(_CALLS_TABLE)
        meta = dict(db.execute("SELECT key, value FROM meta"))
        version = json.loads(meta.get(_K_VERSION, str(SCHEMA_VERSION)))
        if version != SCHEMA_VERSION:
            raise JournalError(f"journal {path} has format {version}; this batcher reads "
                               f"format {SCHEMA_VERSION}")
        loaded = _K_LOADED in meta
        if fingerprint is None:
            if not loaded:
                raise JournalError(f"journal {path} holds no job (it was never loaded)")
        elif loaded and json.loads(meta[_K_FINGERPRINT]) != fingerprint:
            was = json.loads(meta.get(_K_INPUT, "null")) or "another file"
            now = f"{input_name!r}" if input_name else "this input"
            raise JournalError(
                f"journal {path} belongs to another input: it was made for {was!r} "
                f"(fingerprint {json.loads(meta[_K_FINGERPRINT])[:12]}), but {now} has fingerprint "
                f"{fingerprint[:12]}. Use another --journal, or delete this one to start over.")
        elif not loaded:  # nothing was done yet: (re)bind to this input
            _set_meta(db, _K_VERSION, SCHEMA_VERSION)
            _set_meta(db, _K_FINGERPRINT, fingerprint)
            _set_meta(db, _K_INPUT, input_name)
            if _K_STARTED not in meta:
                _set_meta(db, _K_STARTED, utc_now())
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


def _col(chunk: pa.RecordBatch, name: str) -> pa.Array:
    return pc.cast(chunk.column(name), pa.string())


def _load_records(chunk: pa.RecordBatch, now: str, pos0: int) -> tuple[list[tuple], int]:
    """One chunk of reader rows → INSERT parameters; the status mapping is done columnwise."""
    status = _col(chunk, "status")
    known = pc.is_in(status, value_set=pa.array(["valid", "invalid", "duplicate"]))
    if not pc.all(pc.fill_null(known, False)).as_py():
        raise ValueError("rows table: status must be valid, invalid or duplicate")
    valid = pc.equal(status, "valid")
    invalid = pc.equal(status, "invalid")
    null = pa.scalar(None, pa.string())
    batch_id = pc.if_else(valid, _col(chunk, "batch_id"), null)
    n_valid = pc.sum(valid).as_py() or 0
    if pc.sum(pc.is_valid(batch_id)).as_py() != n_valid:
        raise ValueError("rows table: a valid row has no batch_id")
    if "code" in chunk.schema.names:
        code = pc.coalesce(_col(chunk, "code"), pa.scalar("INVALID_INPUT"))
    else:
        code = pa.scalar("INVALID_INPUT")
    columns = [
        pc.cast(chunk.column("row"), pa.int64()),
        _col(chunk, "module"), _col(chunk, "record_id"), _col(chunk, "cadence_id"),
        pc.if_else(valid, pa.scalar(Status.NOT_SENT.value), status),
        pc.if_else(invalid, code, null),
        pc.if_else(valid, null, _col(chunk, "reason")),
        batch_id,
        pc.cast(valid, pa.int8()),  # a row never attempted is worth retrying
        pc.if_else(valid, null, pa.scalar(now)),
    ]
    positions = range(pos0, pos0 + chunk.num_rows)  # the results' order: the input's
    return list(zip(positions, *(c.to_pylist() for c in columns), strict=True)), n_valid


def _insert_batches(db: sqlite3.Connection, batches: Iterable[Batch], seq0: int,
                    parent: str | None = None) -> int:
    """Insert batches in order from ``seq0``, in slices; returns the number of pairs."""
    total, seq, buf = 0, seq0, []
    for b in batches:
        if not b.record_ids or not b.cadence_ids:
            raise ValueError(f"batch {b.batch_id} is empty")
        n = len(b.record_ids) * len(b.cadence_ids)
        buf.append((seq, b.batch_id, b.module, json.dumps(list(b.record_ids)),
                    json.dumps(list(b.cadence_ids)), n, parent))
        total += n
        seq += 1
        if len(buf) >= 10_000:
            _flush_batches(db, buf)
            buf = []
    _flush_batches(db, buf)
    return total


def _flush_batches(db: sqlite3.Connection, buf: list[tuple]) -> None:
    try:
        db.executemany("INSERT INTO batches (seq, batch_id, module, record_ids, cadence_ids,"
                       " npairs, parent) VALUES (?, ?, ?, ?, ?, ?, ?)", buf)
    except sqlite3.IntegrityError:
        raise ValueError("plan error: a batch id is used twice") from None


_PAIR = operator.attrgetter("record_id", "cadence_id")
_RESULT = operator.attrgetter("status", "code", "message", "http_status", "retryable")


def _stored(result: tuple) -> tuple:
    """An outcome's (status, code, message, http_status, retryable) as the rows table holds it."""
    status, code, message, http_status, retryable = result
    text = _OUTCOME_STATUS.get(status)
    if text is None:
        raise ValueError(f"{Status(status)} is not an outcome")
    return text, code or None, message or None, http_status, int(bool(retryable))


def _whole_records(pairs: list[tuple[str, str]], n_cadences: int
                   ) -> tuple[list[str], list[tuple[str, str]]]:
    """Split distinct pairs into records present with all their cadences, and the other pairs."""
    per_record: dict[str, int] = {}
    for r, _ in pairs:
        per_record[r] = per_record.get(r, 0) + 1
    whole = [r for r, n in per_record.items() if n == n_cadences]
    if len(whole) == len(per_record):
        return whole, []
    full = set(whole)
    return whole, [p for p in pairs if p[0] not in full]


def _check_cover(batch_id: str, records: Sequence[str], cadences: Sequence[str],
                 groups: Sequence[OutcomeGroup]) -> None:
    """Groups must name only the batch's pairs, each pair exactly once, and all of them."""
    want_r, want_c = frozenset(records), frozenset(cadences)
    per_record: dict[str, set[str]] = {}
    total = 0
    for g in groups:
        g_r, g_c = set(g.record_ids), set(g.cadence_ids)
        if len(g_r) != len(g.record_ids) or len(g_c) != len(g.cadence_ids):
            raise ValueError(f"batch {batch_id}: a pair has two outcomes")
        if not (g_r <= want_r and g_c <= want_c):
            stray = next((r, c) for r in g.record_ids for c in g.cadence_ids
                         if r not in want_r or c not in want_c)
            raise ValueError(f"batch {batch_id}: pair {stray} is not one of its pairs")
        total += len(g_r) * len(g_c)
        if len(groups) > 1:
            for r in g.record_ids:
                seen = per_record.setdefault(r, set())
                if not seen.isdisjoint(g_c):
                    raise ValueError(f"batch {batch_id}: a pair has two outcomes")
                seen |= g_c
    # distinct pairs of the batch, as many as it has: every pair once
    left = len(want_r) * len(want_c) - total
    if left:
        raise ValueError(f"batch {batch_id}: {left} pair(s) left without an outcome")


def _check_children(db: sqlite3.Connection, parent: str, module: str,
                    remaining: set[tuple[str, str]], children: Sequence[Batch]
                    ) -> list[tuple[str, str, str]]:
    """Validate a split; returns (child id, record, cadence) for every moved row."""
    moves: list[tuple[str, str, str]] = []
    seen: set[tuple[str, str]] = set()
    for child in children:
        if child.module != module:
            raise ValueError(f"child {child.batch_id} has module {child.module}, parent {module}")
        if db.execute("SELECT 1 FROM batches WHERE batch_id = ?", (child.batch_id,)).fetchone():
            raise ValueError(f"batch id {child.batch_id} already exists")
        for pair in child.pairs():
            if pair not in remaining:
                raise ValueError(f"child {child.batch_id}: pair {pair} is not an unsettled pair "
                                 f"of {parent}")
            if pair in seen:
                raise ValueError(f"child {child.batch_id}: pair {pair} is in two children")
            seen.add(pair)
            moves.append((child.batch_id, *pair))
    if children and seen != remaining:
        raise ValueError(f"split of {parent}: {len(remaining - seen)} unsettled pair(s) are in no "
                         "child")
    if not children and remaining:
        raise ValueError(f"split of {parent} without children leaves {len(remaining)} pair(s)")
    return moves
