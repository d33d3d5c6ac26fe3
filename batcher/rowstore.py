"""The journal's row store: the input's rows, coded (:mod:`batcher.inputs.coded`: ids as
integers), as compressed Arrow chunks stored once at load,
and the join that makes results of them (each row with its batch's outcome, unless a pair
outcome of its own overrides it).

Kept apart from :mod:`batcher.journal`, which owns the SQLite file, its transactions and the
batches: here is what turns ten million rows into a few hundred blobs and back.
"""

from __future__ import annotations

import sqlite3
import threading
import zlib
from collections import deque
from collections.abc import Callable, Iterable
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.ipc as ipc

from .arrays import arrow_of
from .inputs.coded import CHUNK_ROWS, CODED_SCHEMA, STATUSES, coded_of, status_index
from .models import RESULT_COLUMNS, Batch, Status

NONE = np.zeros(0, dtype=np.int64)
# LZ4, not zstd: the chunks are written once before the first call and read once or twice; zstd
# made them 90 MB instead of 144 MB for ten million rows, for twice the CPU (0.53 s against 0.28)
# in a load that has both cores busy
_IPC = ipc.IpcWriteOptions(compression="lz4")
_CODE, _REASON = CODED_SCHEMA.get_field_index("code"), CODED_SCHEMA.get_field_index("reason")
_VALID, _INVALID = STATUSES.index("valid"), STATUSES.index("invalid")

#: Arrow schema of the results, column for column RESULT_COLUMNS
RESULT_SCHEMA = pa.schema([
    ("row", pa.int64()), ("module", pa.string()), ("record_id", pa.string()),
    ("cadence_id", pa.string()), ("status", pa.string()), ("code", pa.string()),
    ("message", pa.string()), ("http_status", pa.int64()), ("attempts", pa.int64()),
    ("batch_id", pa.string()), ("retryable", pa.bool_()), ("finished_at", pa.string()),
])
assert tuple(RESULT_SCHEMA.names) == RESULT_COLUMNS


#: the code of a pair whose call left but whose answer was never recorded (the run stopped)
NO_ANSWER = "NO_ANSWER"
NO_ANSWER_TEXT = ("sent, but the run stopped before an answer was recorded: Zoho may have "
                   "applied it; the same command sends it again")


def no_answer(own: tuple, attempts: int) -> tuple:
    """A pair outcome row (pos, seq, status, code, message, http_status, retryable, attempts,
    finished_at) of a moved pair whose batch was sent and never answered, saying so."""
    pos, seq, status, _, _, http, retryable, shown, at = own
    return (pos, seq, status, NO_ANSWER, NO_ANSWER_TEXT, http, retryable, max(shown, attempts),
            at)


def ipc_bytes(table: pa.Table) -> bytes:
    sink = pa.BufferOutputStream()
    with ipc.new_stream(sink, table.schema, options=_IPC) as writer:
        writer.write_table(table)
    return sink.getvalue().to_pybytes()


def insert_chunk(db: sqlite3.Connection, first: int, n: int, data: Future[bytes]) -> None:
    blob = data.result()
    db.execute("INSERT INTO row_chunks (first, n, data, crc) VALUES (?, ?, ?, ?)",
               (first, n, blob, zlib.crc32(blob)))


def rows_problem(db: sqlite3.Connection, rows: int) -> str | None:
    """What is wrong with the stored rows of a loaded journal — a chunk missing, or damaged
    inside (which SQLite's page checks do not see) — else None. Reads every chunk once: about
    a fifth of a second per ten million rows, so a resume stops before its first call rather
    than when the results are due."""
    expected = 1
    for first, n, data, crc in db.execute("SELECT first, n, data, crc FROM row_chunks"
                                          " ORDER BY first"):
        if first != expected:
            return f"rows {expected:,} to {first - 1:,} are missing"
        if zlib.crc32(data) != crc:
            return f"the rows from {first:,} are damaged"
        expected = first + n
    if expected != rows + 1:
        return f"rows {expected:,} to {rows:,} are missing"
    return None


def cat(parts: list[np.ndarray]) -> np.ndarray:
    return np.concatenate(parts) if parts else np.zeros(0, dtype=np.int64)


def text_column(chunk: pa.RecordBatch, name: str) -> pa.Array:
    return pc.cast(chunk.column(name), pa.string())


class Ranker:
    """Batch and place of each row's pair, looked up in a plan held in memory (small jobs)."""

    def __init__(self, batches: list[Batch]) -> None:
        self._seq = {b.batch_id: seq for seq, b in enumerate(batches, 1)}
        self._batches = batches
        self._places: dict[int, dict[tuple[str, str], int]] = {}

    def of(self, batch_ids: list[str | None], records: list[str], cadences: list[str]
           ) -> tuple[np.ndarray, np.ndarray]:
        seq = np.empty(len(batch_ids), dtype=np.int64)
        rank = np.empty(len(batch_ids), dtype=np.int64)
        for i, (b, r, c) in enumerate(zip(batch_ids, records, cadences, strict=True)):
            if b is None:
                raise ValueError("rows table: a valid row has no batch_id")
            s = self._seq.get(b)
            if s is None:
                raise ValueError(f"plan error: a row names batch {b}, which is not planned")
            places = self._places.get(s)
            if places is None:
                pairs = self._batches[s - 1].pairs()
                places = self._places[s] = {p: k for k, p in enumerate(pairs)}
            k = places.get((r, c))
            if k is None:
                raise ValueError(f"plan error: the pair ({r}, {c}) of a row is not one of batch "
                                 f"{b}'s pairs")
            seq[i], rank[i] = s, k
        return seq, rank


@dataclass
class Stored:
    """What storing the rows found: counts, and each valid row's position (and, when the rows
    carry them, its batch seq and rank)."""

    n_rows: int
    kept: dict[str, int]
    places: np.ndarray
    seq: np.ndarray
    rank: np.ndarray


def store_rows(db: sqlite3.Connection, tables: Iterable[pa.Table], chunk_rows: int,
                pool: ThreadPoolExecutor, stop: threading.Event,
                ranker: Callable[[], Ranker] | None) -> Stored:
    """Insert the rows as compressed chunks, each compressed in ``pool`` while the next is read
    (both release the GIL). ``ranker``: None when the plan comes apart (a PlanMaker), else how
    to look up the batch of each row's ``batch_id``."""
    n_rows = 0
    kept: dict[str, int] = {}
    seqs, ranks, places = [], [], []
    packed: deque[tuple[int, int, Future[bytes]]] = deque()
    lookup: Ranker | None = None
    for chunk in (c for t in tables for c in t.to_batches(max_chunksize=chunk_rows)):
        if stop.is_set():
            raise Stopped
        if ranker is not None and lookup is None:
            lookup = ranker()
        stored, at, seq, rank = stored_rows(chunk, lookup)
        seqs.append(seq)
        ranks.append(rank)
        places.append(at + n_rows + 1)
        for word, n in zip(STATUSES, np.bincount(status_index(stored), minlength=3).tolist(),
                           strict=True):
            if n:
                kept[word] = kept.get(word, 0) + n
        packed.append((n_rows + 1, chunk.num_rows, pool.submit(ipc_bytes, stored)))
        n_rows += chunk.num_rows
        while len(packed) > 2 or (packed and packed[0][2].done()):
            insert_chunk(db, *packed.popleft())
    while packed:
        insert_chunk(db, *packed.popleft())
    return Stored(n_rows, kept, cat(places), cat(seqs), cat(ranks))


class Stopped(Exception):
    """The load was given up (its caller's error or signal is what gets reported)."""


def stored_rows(chunk: pa.RecordBatch, ranker: Ranker | None
                 ) -> tuple[pa.Table, np.ndarray, np.ndarray, np.ndarray]:
    """One chunk of reader rows, coded or in text form → (the coded table stored, the valid
    rows' indices, and — with a ``ranker`` — their batch seq and rank, looked up from the
    ``batch_id`` column)."""
    if chunk.schema.names[:len(CODED_SCHEMA)] == CODED_SCHEMA.names:
        if ranker is not None:
            raise ValueError("rows table: coded rows carry no batch_id")
        stored = pa.Table.from_batches([chunk]).select(CODED_SCHEMA.names).cast(CODED_SCHEMA)
        index = status_index(stored)
        return _notes(stored, index), np.flatnonzero(index == _VALID), NONE, NONE
    wanted = {"row", "module", "record_id", "cadence_id", "status", "reason"}
    if ranker is not None:
        wanted.add("batch_id")
    missing = wanted - set(chunk.schema.names)
    if missing:
        raise ValueError(f"rows table lacks column(s) {sorted(missing)}")
    status = text_column(chunk, "status")
    known = pc.is_in(status, value_set=pa.array(STATUSES))
    if not pc.all(pc.fill_null(known, False)).as_py():
        raise ValueError("rows table: status must be valid, invalid or duplicate")
    valid = pc.equal(status, "valid")
    at = np.flatnonzero(valid.to_numpy(zero_copy_only=False))
    seq = rank = NONE
    if ranker is not None:
        seq, rank = ranker.of(*(text_column(chunk, c).take(arrow_of(at)).to_pylist()
                                for c in ("batch_id", "record_id", "cadence_id")))
    null = pa.nulls(chunk.num_rows, pa.string())
    coded = coded_of(pa.table({
        "row": chunk.column("row"),
        **{c: text_column(chunk, c) for c in ("module", "record_id", "cadence_id")},
        "status": status,
        "code": text_column(chunk, "code") if "code" in chunk.schema.names else null,
        "reason": text_column(chunk, "reason")}))
    return _notes(coded, status_index(coded)), at, seq, rank


def _notes(coded: pa.Table, status: np.ndarray) -> pa.Table:
    """``code`` only on invalid rows (``INVALID_INPUT`` when none is given), ``reason`` on all
    but valid ones; ``status``: each row's index into :data:`STATUSES`."""
    null = pa.scalar(None, pa.string())
    invalid = arrow_of(status == _INVALID)
    # no text under the rows a note leaves null (if_else keeps its other side's values there:
    # 'INVALID_INPUT' under every valid row, 4 bytes a row once compressed)
    code = pc.coalesce(coded.column("code"), pa.scalar("INVALID_INPUT")).filter(invalid)
    coded = coded.set_column(_CODE, "code", pc.replace_with_mask(
        pa.nulls(len(status), pa.string()), invalid, code.combine_chunks()))
    return coded.set_column(_REASON, "reason", pc.if_else(arrow_of(status == _VALID), null,
                                                          coded.column("reason")))


def positions_of(blob: bytes, npairs: int) -> np.ndarray:
    """A batch's ``positions`` blob → int64 positions: 4 bytes each while they fit (every job
    under two billion rows), else 8, told by the blob's length against the batch's pairs."""
    width = np.int32 if len(blob) == 4 * npairs else np.int64
    return np.frombuffer(blob, dtype=width).astype(np.int64)


def planned_seqs(batches: Iterable[tuple[int, int, bytes]], n_rows: int) -> np.ndarray:
    """Each stored row's planned batch, by position - 1 (int32, 0 for a row no batch holds),
    from the planned batches' (seq, npairs, positions)."""
    seq_of = np.zeros(n_rows, dtype=np.int32)
    by_width: dict[type, list[tuple[int, int, bytes]]] = {np.int32: [], np.int64: []}
    for batch in batches:
        by_width[np.int32 if len(batch[2]) == 4 * batch[1] else np.int64].append(batch)
    for width, these in by_width.items():  # all at once: a 10M-pair plan has 47k batches
        if these:
            seqs, npairs, blobs = zip(*these, strict=True)
            at = np.frombuffer(b"".join(blobs), dtype=width).astype(np.int64)
            at -= 1
            seq_of[at] = np.repeat(np.asarray(seqs, dtype=np.int32), npairs)
    return seq_of


def batch_order(seq: np.ndarray, rank: np.ndarray, pos: np.ndarray
                 ) -> tuple[np.ndarray, np.ndarray]:
    """The planned rows' positions grouped by batch, each batch's in its pairs' order:
    ``order[offsets[s - 1]:offsets[s]]`` are batch ``s``'s. Raises when two rows take one place
    or a row's place is beyond its batch's pairs."""
    counts = np.bincount(seq, minlength=1)
    offsets = np.cumsum(counts)
    if len(seq) and (rank.min() < 0 or (rank >= counts[seq]).any()):
        raise ValueError("plan error: a row's place is beyond its batch's pairs")
    return placed(offsets[seq - 1] + rank if len(seq) else seq, pos), offsets


def placed(slots: np.ndarray, pos: np.ndarray) -> np.ndarray:
    """The positions ``pos`` laid out at their places ``slots`` (one each, 0 … n - 1: the
    batches' pairs end to end). Raises when a place is out of range or taken twice."""
    if len(slots) and (slots.min() < 0 or slots.max() >= len(slots)):
        raise ValueError("plan error: a row's place is beyond the batches' pairs")
    order = np.full(len(slots), -1, dtype=np.int64)
    order[slots] = pos
    if (order < 0).any():
        raise ValueError("plan error: a pair appears twice in one batch")
    return order


class BatchOutcomes:
    """Every batch's outcome as arrays indexed by ``seq``, for joining with the stored rows.

    Index 0 (no batch) holds what a row no batch holds shows in the columns it does not take
    from its stored row (no http status, 0 attempts, no batch, not retryable, finished when the
    rows were loaded), so those columns are one ``take`` each, whatever the mix of rows. A
    column whose rows of a chunk all show one value (a dry run's empty answers, say) is a
    constant array instead, sliced from one made once.
    """

    #: per-batch columns: (name, the stored row's column an unplanned row shows, or None)
    _COLUMNS = (("batch_id", None), ("status", "status"), ("code", "code"),
                ("message", "reason"), ("http_status", None), ("retryable", None),
                ("attempts", None), ("finished_at", None))

    def __init__(self, rows: list[tuple]) -> None:
        n = (rows[-1][0] + 1) if rows else 1
        cols: list[list[Any]] = [[None] * n for _ in range(8)]
        cols[1] = [Status.NOT_SENT.value] * n
        cols[5] = [True] * n
        cols[6] = [0] * n
        for seq, batch_id, state, status, code, message, http, retryable, attempts, at, \
                sent in rows:
            cols[0][seq] = batch_id
            if state == "answered" and status is not None:
                for k, v in enumerate((status, code, message, http, bool(retryable), attempts,
                                       at), 1):
                    cols[k][seq] = v
            elif state == "sent":  # in flight when the run stopped: it may have been applied
                cols[2][seq], cols[3][seq], cols[6][seq] = NO_ANSWER, NO_ANSWER_TEXT, sent
        cols[5][0] = False  # index 0: a row no batch holds (its finished_at: see _values)
        names = [name for name, _ in self._COLUMNS]
        #: name → the one value every batch shows in that column, when they all show one
        self._same: dict[str, Any] = {}
        for name, values in zip(names, cols, strict=True):
            distinct = set(values[1:n])
            if len(distinct) == 1:
                self._same[name] = distinct.pop()
        self._cols = {name: pa.array(values, RESULT_SCHEMA.field(name).type)
                      for name, values in zip(names, cols, strict=True)}
        self._finished_at = cols[7]
        self._loaded: tuple[str, pa.Array] | None = None  # finished_at's values and loaded
        self._constants: dict[tuple[str, Any], pa.Array] = {}

    def _values(self, name: str, loaded: str) -> pa.Array:
        """A column's values by seq (index 0: a row no batch holds)."""
        if name != "finished_at":
            return self._cols[name]
        if self._loaded is None or self._loaded[0] != loaded:
            values = list(self._finished_at)
            values[0] = loaded
            self._loaded = (loaded, pa.array(values, pa.string()))
        return self._loaded[1]

    def _constant(self, name: str, value: Any, n: int) -> pa.Array:
        """``n`` times ``value`` in column ``name``'s type, sliced from one array kept."""
        kept = self._constants.get((name, value))
        if kept is None or len(kept) < n:
            kind = RESULT_SCHEMA.field(name).type
            kept = pa.nulls(max(n, CHUNK_ROWS), kind) if value is None else \
                pa.repeat(pa.scalar(value, kind), max(n, CHUNK_ROWS))
            self._constants[(name, value)] = kept
        return kept.slice(0, n)

    def results(self, part: pa.Table, seq: np.ndarray, p0: int, own: list[tuple], loaded: str
                ) -> pa.Table:
        """Results rows of stored rows ``part`` (positions from ``p0``; ``seq``: each row's
        planned batch, 0 for none); ``own``: the pair outcomes of that range, (pos, seq,
        status, code, message, http_status, retryable, attempts, finished_at) in position
        order.

        Each column is one ``take`` from its batches' values followed by the pair outcomes'
        and, for a column an unplanned row takes from its stored row, the stored rows' (a
        constant when every row shows one value)."""
        n = part.num_rows
        unplanned = np.flatnonzero(seq <= 0)
        batches = len(self._cols["status"])
        index = seq  # each row's place in a column's values: its batch's, or its own outcome's
        extra: dict[str, pa.Array] = {}  # the pair outcomes' values, placed after the batches'
        if own:
            cols = list(zip(*own, strict=True))
            index = seq.astype(np.int64)
            index[np.asarray(cols[0], dtype=np.int64) - p0] = batches + np.arange(len(own))
            extra["batch_id"] = self._cols["batch_id"].take(pa.array(cols[1], pa.int64()))
            for name, col in zip(("status", "code", "message", "http_status", "retryable",
                                  "attempts", "finished_at"), cols[2:], strict=True):
                kind = RESULT_SCHEMA.field(name).type
                extra[name] = pa.array([None if v is None else bool(v) for v in col]
                                       if name == "retryable" else col, kind)
        # the stored columns' rows, placed after the pair outcomes' (made when first needed)
        stored_index: np.ndarray | None = None
        unplanned_values = {"http_status": None, "retryable": False, "attempts": 0,
                            "batch_id": None, "finished_at": loaded}
        out: dict[str, Any] = {}
        for name, stored in self._COLUMNS:
            if not extra:
                if stored is not None and len(unplanned) == n:
                    out[name] = part.column(stored)
                    continue
                if name in self._same:
                    value = self._same[name]
                    if not len(unplanned) or (stored is None
                                              and value == unplanned_values[name]):
                        out[name] = self._constant(name, value, n)
                        continue
                    if stored is not None:
                        planned = arrow_of(seq > 0)
                        out[name] = pc.if_else(planned, pa.scalar(value, RESULT_SCHEMA.field(
                            name).type), part.column(stored))
                        continue
                if stored is None and len(unplanned) == n:
                    out[name] = self._constant(name, unplanned_values[name], n)
                    continue
            values = [self._values(name, loaded)] + ([extra[name]] if extra else [])
            at = index
            if stored is not None and len(unplanned):
                if stored_index is None:
                    stored_index = index.astype(np.int64)
                    stored_index[unplanned] = batches + len(own) + unplanned
                values += part.column(stored).chunks
                at = stored_index
            column = pa.concat_arrays(values) if len(values) > 1 else values[0]
            out[name] = column.take(arrow_of(at))
        arrays = [part.column(n) if n in ("row", "module", "record_id", "cadence_id")
                  else out[n] for n in RESULT_COLUMNS]
        return pa.Table.from_arrays(arrays, schema=RESULT_SCHEMA)
