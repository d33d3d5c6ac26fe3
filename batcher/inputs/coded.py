"""The reader's verdict on every row in a compact, columnar form, and its text form.

Coded rows (:data:`CODED_SCHEMA`) carry a canonical id (15-19 digits, no leading zero — every
valid row's) as a uint64, which maps one-to-one onto its text, and the few other ids as text;
module and cadence are dictionary-encoded. The scan makes them from its integer codes without
reading the file a second time (:func:`coded_chunks`); the journal stores them as they are; the
text form (:func:`text_of`: row, module, record_id, cadence_id, status, code, reason, all
strings but ``row``) is what results and :class:`InputTable` show.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from typing import TYPE_CHECKING

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from ..arrays import arrow_of, numpy_of, searchsorted, strings_of

if TYPE_CHECKING:
    from .scan import InputScan

VALID, INVALID, DUPLICATE = "valid", "invalid", "duplicate"
#: a status's index in the ``status`` column's dictionary
STATUSES = (VALID, INVALID, DUPLICATE)
#: rows a coded table holds (the journal stores them so: a chunk is read back whole)
CHUNK_ROWS = 50_000

_DICT = pa.dictionary(pa.int32(), pa.string())
CODED_SCHEMA = pa.schema([
    ("row", pa.int64()), ("module", _DICT),
    ("record", pa.uint64()),  # the id when canonical, else null ...
    ("record_text", pa.string()),  # ... and then its text (null when the row has none)
    ("cadence_id", _DICT), ("status", pa.dictionary(pa.int8(), pa.string())),
    ("code", pa.string()), ("reason", pa.string()),
])
#: the text form's columns
TEXT_SCHEMA = pa.schema([
    ("row", pa.int64()), ("module", pa.string()), ("record_id", pa.string()),
    ("cadence_id", pa.string()), ("status", pa.string()), ("code", pa.string()),
    ("reason", pa.string()),
])
_CANONICAL = r"^[1-9][0-9]{0,18}$"  # fits a uint64 and is its decimal text, one-to-one
_STATUS_WORDS = pa.array(STATUSES, pa.string())


def text_of(coded: pa.Table | pa.RecordBatch) -> pa.Table:
    """Coded rows → their text form (:data:`TEXT_SCHEMA`)."""
    record = pc.coalesce(pc.cast(coded.column("record"), pa.string()),
                         coded.column("record_text"))
    return pa.Table.from_arrays([
        coded.column("row"), pc.cast(coded.column("module"), pa.string()), record,
        pc.cast(coded.column("cadence_id"), pa.string()),
        pc.cast(coded.column("status"), pa.string()), coded.column("code"),
        coded.column("reason")], schema=TEXT_SCHEMA)


def coded_of(rows: pa.Table | pa.RecordBatch) -> pa.Table:
    """Text-form rows (as :data:`TEXT_SCHEMA`, ``status`` one of :data:`STATUSES`) → coded."""
    record = rows.column("record_id")
    canonical = pc.fill_null(pc.match_substring_regex(record, _CANONICAL), False)
    null = pa.scalar(None, pa.string())
    status = pc.index_in(rows.column("status"), value_set=_STATUS_WORDS)
    return pa.Table.from_arrays([
        pc.cast(rows.column("row"), pa.int64()), _dictionary(rows.column("module")),
        pc.cast(pc.if_else(canonical, record, null), pa.uint64()),
        pc.if_else(canonical, null, record), _dictionary(rows.column("cadence_id")),
        pa.DictionaryArray.from_arrays(pc.cast(status, pa.int8()), _STATUS_WORDS),
        rows.column("code"), rows.column("reason")], schema=CODED_SCHEMA)


def status_index(coded: pa.Table | pa.RecordBatch) -> np.ndarray:
    """Each row's index into :data:`STATUSES` (int8)."""
    col = coded.column("status")
    parts = col.chunks if isinstance(col, pa.ChunkedArray) else [col]
    return np.concatenate([numpy_of(c.indices) for c in parts]) if parts else \
        np.zeros(0, np.int8)


def _dictionary(col: pa.Array | pa.ChunkedArray) -> pa.Array:
    col = pc.cast(col, pa.string())
    if isinstance(col, pa.ChunkedArray):
        col = col.combine_chunks()
    return pc.cast(pc.dictionary_encode(col), _DICT)


def coded_chunks(scan: InputScan, verdicts: Sequence[tuple[str, str]] = (),
                 verdict_of_pair: np.ndarray | None = None, chunk_rows: int = CHUNK_ROWS
                 ) -> Iterator[pa.Table]:
    """Every data row of ``scan``, in input order, coded, in tables of at most ``chunk_rows``
    rows — made from the scan's codes and the invalid rows it kept, no second read.

    ``verdict_of_pair`` (index into ``verdicts`` (code, reason), -1 for none) marks the pairs
    the preflight refused: they are ``invalid`` with that code and reason. Blank rows have no
    row. Raises RuntimeError when the scan's parts do not cover every position exactly once.
    """
    codes, pair_rows = scan.codes, scan.pair_rows
    dup_rows = scan.dup_rows
    dup_pair = searchsorted(pair_rows, scan.dup_first)  # the first-seen pair a repeat is
    bad = scan.invalid_rows
    bad_at = numpy_of(bad.column("position"))
    names = pa.array(codes.module_names, pa.string())
    verdict_code = strings_of([c for c, _ in verdicts])
    verdict_reason = strings_of([r for _, r in verdicts])
    row_of = scan.position_rows
    same_as = "same pair as row "
    for p0 in range(0, scan.positions, chunk_rows):
        p1 = min(p0 + chunk_rows, scan.positions)
        n = p1 - p0
        status = np.full(n, -1, dtype=np.int8)
        module = np.zeros(n, dtype=np.int32)
        cadence = np.zeros(n, dtype=np.int32)
        record = np.zeros(n, dtype=np.uint64)
        # the pairs, then the repeats (their first pair's codes), then the invalid rows
        k0, k1 = np.searchsorted(pair_rows, np.array([p0, p1], pair_rows.dtype))
        at = (pair_rows[k0:k1] - p0).astype(np.int64)
        status[at] = 0
        module[at] = codes.module[k0:k1]
        cadence[at] = codes.cadence[k0:k1]
        record[at] = scan.record_values[codes.record[k0:k1]]
        d0, d1 = np.searchsorted(dup_rows, np.array([p0, p1], dup_rows.dtype))
        dat = (dup_rows[d0:d1] - p0).astype(np.int64)
        first = dup_pair[d0:d1]
        if (status[dat] != -1).any():
            raise RuntimeError("reader: a repeated row is also a pair")
        status[dat] = 2
        module[dat] = codes.module[first]
        cadence[dat] = codes.cadence[first]
        record[dat] = scan.record_values[codes.record[first]]
        i0, i1 = np.searchsorted(bad_at, np.array([p0, p1], bad_at.dtype))
        iat = (bad_at[i0:i1] - p0).astype(np.int64)
        if (status[iat] != -1).any():
            raise RuntimeError("reader: an invalid row is also a pair")
        status[iat] = 1
        inv = bad.slice(i0, i1 - i0)
        # code and reason: the repeats', the refused pairs', the invalid rows'
        first_rows = scan.dup_first[d0:d1] + 1 if row_of is None else row_of[scan.dup_first[d0:d1]]
        notes_at = [dat, iat]
        codes_of = [pa.nulls(len(dat), pa.string()), inv.column("code")]
        reasons_of = [pc.binary_join_element_wise(
            same_as, pc.cast(arrow_of(np.asarray(first_rows, np.int64)), pa.string()), ""),
            inv.column("reason")]
        if verdict_of_pair is not None:
            v = verdict_of_pair[k0:k1]
            refused = v >= 0
            vat = at[refused]
            status[vat] = 1
            notes_at.append(vat)
            codes_of.append(verdict_code.take(arrow_of(v[refused])))
            reasons_of.append(verdict_reason.take(arrow_of(v[refused])))
        blank = scan.blank_rows[np.searchsorted(scan.blank_rows, p0):
                                np.searchsorted(scan.blank_rows, p1)] - p0
        if (status[blank] != -1).any() or np.count_nonzero(status < 0) != len(blank):
            raise RuntimeError("reader: the scan's rows do not cover the input")
        keep = np.flatnonzero(status >= 0)
        positions = keep + p0
        note = np.full(n, -1, dtype=np.int64)
        note[np.concatenate(notes_at)] = np.arange(sum(len(a) for a in notes_at))
        note_of = arrow_of(note[keep])
        note_of = pc.if_else(pc.less(note_of, 0), pa.scalar(None, pa.int64()), note_of)
        # module and cadence: the scan's dictionaries, then the invalid rows' own text
        local = np.full(n, -1, dtype=np.int64)
        local[iat] = np.arange(len(iat))
        yield pa.Table.from_arrays([
            arrow_of(positions + 1 if row_of is None else row_of[positions].astype(np.int64)),
            _with_text(module, iat, names, inv.column("module"), keep),
            _masked(record, iat, keep),
            pc.take(inv.column("record_id"), _or_null(local[keep])) if len(iat) else
            pa.nulls(len(keep), pa.string()),
            _with_text(cadence, iat, scan.cadence_text, inv.column("cadence_id"), keep),
            pa.DictionaryArray.from_arrays(arrow_of(status[keep]), _STATUS_WORDS),
            pc.take(pa.concat_arrays([_array(c) for c in codes_of]), note_of),
            pc.take(pa.concat_arrays([_array(r) for r in reasons_of]), note_of),
        ], schema=CODED_SCHEMA)


def _array(col: pa.Array | pa.ChunkedArray) -> pa.Array:
    col = pc.cast(col, pa.string())
    return col.combine_chunks() if isinstance(col, pa.ChunkedArray) else col


def _or_null(index: np.ndarray) -> pa.Array:
    return pa.array(index, mask=index < 0) if (index < 0).any() else arrow_of(index)


def _masked(record: np.ndarray, iat: np.ndarray, keep: np.ndarray) -> pa.Array:
    """The uint64 ids, null at the invalid rows (their text is in ``record_text``)."""
    if not len(iat):
        return arrow_of(record[keep])
    valid = np.ones(len(record), dtype=bool)
    valid[iat] = False
    return pa.array(record[keep], pa.uint64(), mask=~valid[keep])


def _with_text(index: np.ndarray, iat: np.ndarray, dictionary: pa.Array,
               texts: pa.Array | pa.ChunkedArray, keep: np.ndarray) -> pa.Array:
    """A dictionary column: the scan's codes, and at the invalid rows their own text (null when
    they have none) appended to the dictionary."""
    dictionary = _array(dictionary)
    if len(iat):
        texts = _array(texts)
        index = index.astype(np.int64)
        index[iat] = len(dictionary) + np.arange(len(iat))
        has = numpy_of(texts.is_valid())
        index[iat[~has]] = -1
        dictionary = pa.concat_arrays([dictionary, texts])
    return pa.DictionaryArray.from_arrays(_or_null(index[keep]).cast(pa.int32()), dictionary)
