"""CSV/Parquet → one normalised row per input data row: valid pair, ``invalid`` or ``duplicate``.

Everything is columnar (pyarrow + numpy) because inputs reach tens of millions of rows, and ids are
read as strings from the first byte so that no 19-digit id ever passes through a float.
"""

from __future__ import annotations

import csv
import hashlib
import os
import re
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from dataclasses import dataclass, field
from functools import cached_property
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.csv as pacsv

from .arrays import arrow_of, numpy_of, strings_of
from .errors import InputError

VALID, INVALID, DUPLICATE = "valid", "invalid", "duplicate"

#: normalised header → role; headers are compared lower-cased with spaces, "_" and "-" removed
_ALIASES = {
    "recordid": "record_id", "id": "record_id", "recordids": "record_id", "ids": "record_id",
    "cadenceid": "cadence_id", "cadencesid": "cadence_id", "cadence": "cadence_id",
    "cadenceids": "cadence_id", "cadencesids": "cadence_id",
    "module": "module", "modulename": "module", "moduleapiname": "module",
}
_CANONICAL_MODULES = {m.lower(): m for m in ("Leads", "Contacts", "Deals", "Vendors")}
_MODULE_RE = re.compile(r"^[A-Za-z][A-Za-z0-9_]{0,99}$")
_SCI_RE = r"^[+-]?[0-9]+(\.[0-9]*)?[eE][+-]?[0-9]+$"
_PARQUET_MAGIC = b"PAR1"
_SNIFF_BYTES = 64 * 1024


def _excerpt(exc: BaseException, limit: int = 200) -> str:
    """Library error text, shortened and kept to one printable line (it may quote raw bytes)."""
    return "".join(c if c.isprintable() else repr(c)[1:-1] for c in str(exc)[:limit])


def _normalise_header(name: str) -> str:
    return re.sub(r"[\s_\-]+", "", str(name).strip().lstrip("\ufeff")).lower()


def canonical_module(name: str) -> str | None:
    """The module's API name, or None when it cannot be one (keeps URLs safe from odd input)."""
    name = name.strip()
    if not _MODULE_RE.match(name):
        return None
    return _CANONICAL_MODULES.get(name.lower(), name)


_BATCH_ROWS = 1 << 18  # rows a batch of the second pass holds: memory stays flat
_CHUNK_ROWS = 1 << 24  # rows the first pass reads at once, on Arrow's threads: ~0.5 GB at most
_CSV_ROW_BYTES = 64  # a CSV of up to _CHUNK_ROWS rows of this size is read whole
_CSV_BLOCK = 1 << 23  # bytes per block of a whole read: enough for both threads, few chunks


@dataclass(frozen=True)
class PairCodes:
    """Integer codes of valid pairs (module, record, cadence), as the planner takes them."""

    module: np.ndarray
    module_names: list[str]
    record: np.ndarray
    cadence: np.ndarray

    def filter(self, keep: np.ndarray) -> PairCodes:
        return PairCodes(self.module[keep], self.module_names, self.record[keep],
                         self.cadence[keep])


@dataclass(frozen=True)
class _Source:
    """An input file that was opened far enough to know its kind and columns."""

    path: Path
    kind: str  # "csv" or "parquet"
    roles: dict[str, str]  # role → column name
    found: tuple[str, ...]
    delimiter: str = ","

    def stamp(self) -> tuple[int, int]:
        st = self.path.stat()
        return st.st_size, st.st_mtime_ns


@dataclass(frozen=True)
class InputScan:
    """The first pass over an input: counts, duplicates and integer codes; no row text is kept.

    Ids are canonical digit strings (15-19 digits, no leading zero), so each maps one-to-one
    onto a uint64: hashing integers is far cheaper than hashing strings, and a job of tens of
    millions of rows holds a few bytes per pair instead of its text. ``tables()`` reads the
    file again, batch by batch, to hand the rows' text to the journal.
    """

    source: _Source
    default_module: str | None
    rows: int
    invalid: int
    invalid_examples: tuple[tuple[int, str], ...]
    #: 0-based rows of the valid, first-seen pairs, ascending; codes follow the same order
    pair_rows: np.ndarray = field(repr=False)
    codes: PairCodes = field(repr=False)
    #: uint64 value of each record code; text of each cadence code
    record_values: np.ndarray = field(repr=False)
    cadence_text: pa.Array = field(repr=False)
    #: 0-based rows that repeat an earlier pair, ascending, and the row each repeats
    dup_rows: np.ndarray = field(repr=False)
    dup_first: np.ndarray = field(repr=False)
    stamp: tuple[int, int] = (0, 0)
    #: module code of each cadence code (a cadence code never spans two modules)
    cadence_modules: np.ndarray | None = field(default=None, repr=False)
    #: per record code, the OR of ``1 << cadence code`` of its pairs (64 cadences or fewer)
    record_masks: np.ndarray | None = field(default=None, repr=False)

    @cached_property
    def record_text(self) -> pa.Array:
        """Text of each record code (only a run needs it: ``batcher plan`` never does)."""
        return pc.cast(arrow_of(self.record_values, pa.uint64()), pa.string())

    @property
    def path(self) -> Path:
        return self.source.path

    @property
    def pairs(self) -> int:
        return len(self.pair_rows)

    @property
    def duplicates(self) -> int:
        return len(self.dup_rows)

    def cadence_keys(self) -> list[tuple[str, str]]:
        """(module, cadence id) of every cadence code, for the preflight."""
        if not len(self.codes.cadence):
            return []
        first = _first_of_code(self.codes.cadence, len(self.cadence_text))
        mods = self.codes.module[first]
        return [(self.codes.module_names[m], c) for m, c in
                zip(mods.tolist(), self.cadence_text.to_pylist(), strict=True)]

    def fingerprint(self) -> str:
        return file_fingerprint(self.path)

    def tables(self, *, verdicts: Sequence[tuple[str, str]] = (),
               verdict_of_pair: np.ndarray | None = None,
               batch_ids: Callable[[int, int], pa.Array] | None = None) -> Iterator[pa.Table]:
        """The second pass: every row, in input order, with its final reader status.

        ``verdict_of_pair`` (index into ``verdicts`` (code, reason), -1 for none) marks pairs the
        preflight rejected; ``batch_ids(k0, k1)`` gives the batch of the k0..k1-th pairs that
        are still valid. Raises InputError when the file no longer matches the first pass.
        """
        if self.source.stamp() != self.stamp:
            raise InputError(f"{self.path}: the file changed while batcher was reading it")
        pair_k = planned_k = 0
        row0 = 0
        for raw in _raw_batches(self.source):
            chk = _check(raw, row0, self.default_module)
            n = chk.table.num_rows
            row1 = row0 + n
            status = np.where(chk.valid, 0, 1).astype(np.int8)  # 0 valid, 1 invalid, 2 duplicate
            code = chk.codes
            reason = chk.reasons
            d0, d1 = np.searchsorted(self.dup_rows, [row0, row1])
            dups = self.dup_rows[d0:d1] - row0
            status[dups] = 2
            for i, first in zip(dups.tolist(), self.dup_first[d0:d1].tolist(), strict=True):
                reason[i] = f"same pair as row {first + 1}"
            k1 = pair_k + int(np.searchsorted(self.pair_rows[pair_k:], row1))
            here = self.pair_rows[pair_k:k1] - row0
            if not np.array_equal(np.flatnonzero(status == 0), here):
                raise InputError(f"{self.path}: the file changed while batcher was reading it")
            batch = pa.nulls(n, pa.string())
            if verdict_of_pair is not None:
                verdict = verdict_of_pair[pair_k:k1]
                for i, v in zip(here[verdict >= 0].tolist(), verdict[verdict >= 0].tolist(),
                                strict=True):
                    status[i] = 1
                    code[i], reason[i] = verdicts[v]
            planned = np.flatnonzero(status == 0)
            if batch_ids is not None and len(planned):
                mask = np.zeros(n, dtype=bool)
                mask[planned] = True
                batch = pc.replace_with_mask(
                    batch, pa.array(mask), batch_ids(planned_k, planned_k + len(planned)))
            planned_k += len(planned)
            pair_k = k1
            t = chk.table
            yield pa.table({
                "row": t["row"], "module": t["module"], "record_id": t["record_id"],
                "cadence_id": t["cadence_id"],
                "status": pc.cast(pa.DictionaryArray.from_arrays(
                    pa.array(status), pa.array([VALID, INVALID, DUPLICATE])), pa.string()),
                "code": _sparse_strings(n, code),
                "reason": _sparse_strings(n, reason),
                "batch_id": batch,
            })
            row0 = row1
        if self.source.stamp() != self.stamp or row0 != self.rows:
            raise InputError(f"{self.path}: the file changed while batcher was reading it")


@dataclass(frozen=True)
class InputTable:
    """The reader's verdict on every data row, in input order, as one table (small inputs).

    ``table`` columns: row (1-based), module, record_id, cadence_id, status (valid / invalid /
    duplicate), code (for invalid rows), reason (why invalid, or which row it repeats).
    """

    scan: InputScan
    table: pa.Table

    @property
    def path(self) -> Path:
        return self.scan.path

    @property
    def columns_found(self) -> tuple[str, ...]:
        return self.scan.source.found

    @property
    def codes(self) -> PairCodes:
        return self.scan.codes

    @property
    def rows(self) -> int:
        return self.table.num_rows

    def count(self, status: str) -> int:
        return int(pc.sum(pc.equal(self.table["status"], status)).as_py() or 0)

    def valid_arrays(self) -> tuple[pa.ChunkedArray, pa.ChunkedArray, pa.ChunkedArray]:
        """(module, record_id, cadence_id) of the valid, first-seen pairs, in input order."""
        valid = self.table.take(pa.array(self.scan.pair_rows))
        return valid["module"], valid["record_id"], valid["cadence_id"]

    def valid_pairs(self) -> Iterator[tuple[str, str, str]]:
        module, record, cadence = self.valid_arrays()
        yield from zip(module.to_pylist(), record.to_pylist(), cadence.to_pylist(), strict=True)

    def valid_row_indices(self) -> np.ndarray:
        """0-based positions in ``table`` of the valid rows (same order as valid_arrays)."""
        return self.scan.pair_rows

    def fingerprint(self) -> str:
        return self.scan.fingerprint()


def read_input(path: str | os.PathLike[str], default_module: str | None = None) -> InputTable:
    """Read and validate a (small) input into one table; InputError when the file is unusable."""
    scan = scan_input(path, default_module)
    table = pa.concat_tables(list(scan.tables())).drop_columns(["batch_id"])
    return InputTable(scan=scan, table=table)


def file_fingerprint(path: str | os.PathLike[str]) -> str:
    """Content hash of an input: a journal is bound to the exact bytes it was made from."""
    with open(path, "rb") as fh:
        return hashlib.file_digest(fh, "sha256").hexdigest()


def check_input(path: str | os.PathLike[str], default_module: str | None = None) -> None:
    """Raise InputError now if the file cannot be an input at all (kind, header, columns)."""
    if default_module is not None and canonical_module(default_module) is None:
        raise InputError(f"--module {default_module!r} is not a valid Zoho module API name")
    _open(Path(path))


def scan_input(path: str | os.PathLike[str], default_module: str | None = None, *,
               chunk_rows: int = _CHUNK_ROWS) -> InputScan:
    """First pass over an input; InputError when the file is unusable.

    Whole columns are read at once (up to ``chunk_rows`` rows), so that Arrow reads them on
    its own threads; the cadence and module columns come dictionary-encoded, so only their
    few distinct values are validated and parsed, and ids are checked with a few vectorised
    kernels over the whole column."""
    path = Path(path)
    check_input(path, default_module)
    source = _open(path)
    stamp = source.stamp()
    rows = invalid = 0
    examples: list[tuple[int, str]] = []
    pair_rows, rec, cad, mod = [], [], [], []
    cad_values: list[np.ndarray] = []
    module_names: dict[str, int] = {}
    for cols in _scan_chunks(source, chunk_rows):
        part = _scan_chunk(cols, default_module, 10 - len(examples))
        invalid += part.invalid
        examples += [(rows + i + 1, reason) for i, reason in part.examples]
        pair_rows.append(part.valid.astype(np.int64) + rows if rows else part.valid)
        rec.append(part.record)
        cad.append(part.cadence)
        cad_values.append(part.cadence_values)
        local = np.array([module_names.setdefault(m, len(module_names)) for m in part.modules],
                         dtype=np.int32)
        same = np.array_equal(local, np.arange(len(local)))
        mod.append(part.module.astype(np.int32, copy=False) if same
                   else _take(local, part.module))
        rows += part.rows
    if rows == 0:
        raise InputError(f"{path}: has a header ({', '.join(source.found)}) but no data rows")
    cad_index, cad_uniques = _common_dictionary(cad, cad_values)
    return _finish_scan(source, default_module, stamp, rows, invalid, tuple(examples),
                        _cat(pair_rows), _cat(rec), cad_index, cad_uniques, _cat(mod),
                        list(module_names))


def _cat(arrays: list[np.ndarray]) -> np.ndarray:
    return arrays[0] if len(arrays) == 1 else np.concatenate(arrays)


def _common_dictionary(index: list[np.ndarray], values: list[np.ndarray]
                       ) -> tuple[np.ndarray, np.ndarray]:
    """Chunks' (index per row into the chunk's values) → (index per row into distinct values,
    the distinct values): only the few values are hashed, never a value per row."""
    codes, uniques = _encode(_cat(values))
    if len(index) == 1 and np.array_equal(codes, np.arange(len(codes))):
        return index[0], uniques  # one chunk of distinct values: its index already is one
    bounds = np.cumsum([0] + [len(v) for v in values])
    return _cat([_take(codes[lo:hi], ix) for ix, lo, hi in zip(index, bounds[:-1], bounds[1:],
                                                             strict=True)]), uniques


@dataclass(frozen=True)
class _ScannedChunk:
    rows: int
    valid: np.ndarray  # positions of the valid rows
    invalid: int
    examples: list[tuple[int, str]]  # (position, reason) of the first invalid rows
    record: np.ndarray  # uint64 ids of the valid rows
    cadence: np.ndarray  # index of each valid row into cadence_values
    cadence_values: np.ndarray  # uint64 value of each distinct cadence id (0 when invalid)
    modules: list[str]  # the chunk's module names, in order of first valid row ...
    module: np.ndarray  # ... and the index into them of each valid row


def _scan_chunk(cols: dict[str, Any], default_module: str | None, n_examples: int
                ) -> _ScannedChunk:
    """Validity, uint64 ids and module of every row: the same verdicts as ``_check``."""
    n = len(cols["record_id"])
    with ThreadPoolExecutor(1) as pool:  # Arrow's kernels release the GIL: work on both cores
        cadences = pool.submit(_dictionary_ids, cols["cadence_id"])
        mod_index, mod_names, mod_ok = _dictionary_modules(cols.get("module"), n,
                                                           default_module)
        record, rec_ok = _record_ids(_as_strings(cols["record_id"]), pool)
        cad_index, cad_values, cad_ok = cadences.result()
    valid_mask = _all_of([ok for ok in (rec_ok, cad_ok, mod_ok) if ok is not None])
    valid = np.arange(n, dtype=np.int32 if n < 1 << 31 else np.int64)  # half the memory
    bad = np.zeros(0, np.int64)
    if valid_mask is not None and not valid_mask.all():
        valid, bad = np.flatnonzero(valid_mask), np.flatnonzero(~valid_mask)
        record, cad_index, mod_index = record[valid], cad_index[valid], mod_index[valid]
    modules, module = _in_order_of_use(mod_index, mod_names)
    return _ScannedChunk(
        rows=n, valid=valid, invalid=len(bad), examples=_examples(cols, bad[:n_examples],
                                                                   default_module),
        record=record, cadence=cad_index, cadence_values=cad_values, modules=modules,
        module=module)


def _all_of(masks: list[np.ndarray]) -> np.ndarray | None:
    """The rows every mask keeps (None when there is no mask: every row)."""
    if not masks:
        return None
    out = masks[0].copy() if len(masks) > 1 else masks[0]
    for m in masks[1:]:
        out &= m
    return out


def _record_ids(col: pa.ChunkedArray | pa.Array, pool: ThreadPoolExecutor
                ) -> tuple[np.ndarray, np.ndarray | None]:
    """(uint64 of each record id, 0 when invalid; valid per row, None when all are), chunk by
    chunk into one array, the second half of the chunks on ``pool``."""
    chunks = col.chunks if isinstance(col, pa.ChunkedArray) else [col]
    bounds = np.cumsum([0] + [len(c) for c in chunks])
    values = np.empty(bounds[-1], dtype=np.uint64)
    ok = np.empty(bounds[-1], dtype=bool)

    def parse(lo: int, hi: int) -> bool:
        clean = True
        for i in range(lo, hi):
            clean &= _parse_ids(chunks[i], values[bounds[i]:bounds[i + 1]],
                                ok[bounds[i]:bounds[i + 1]])
        return clean

    half = int(np.searchsorted(bounds, bounds[-1] // 2))
    if bounds[-1] < _HALVES_MIN or not 0 < half < len(chunks):
        return values, None if parse(0, len(chunks)) else ok
    clean = all(_both(parse, [(0, half), (half, len(chunks))], pool))
    return values, None if clean else ok


#: scalars for compute calls, made without pa.scalar (which imports pandas)
_EMPTY = strings_of([""])[0]
_FALSE = arrow_of(np.zeros(1, dtype=bool))[0]
_ZERO = arrow_of(np.zeros(1, dtype=np.int32))[0]


def _parse_ids(col: pa.Array, values: np.ndarray, ok: np.ndarray) -> bool:
    """Write the uint64 of each id (0 when invalid) and its validity; True when all are valid.

    One cast and a length check, as long as the chunk parses as a whole: an id that parses
    has digits only (no sign, no blank), or is hex ("0x..."), so it is canonical exactly when
    it has 15-19 characters and does not start with 0. Other chunks are cleaned (trimmed,
    ``zcrm_`` removed) and checked row by row."""
    try:
        parsed = None if col.null_count else pc.cast(col, pa.uint64())
    except (pa.ArrowInvalid, pa.ArrowNotImplementedError):
        parsed = None
    if parsed is None:
        cleaned, good = _clean_ids(col)
        values[:] = 0
        values[good] = numpy_of(pc.cast(cleaned.filter(arrow_of(good)), pa.uint64()))
        ok[:] = good
        return bool(good.all())
    values[:] = numpy_of(parsed)
    length = numpy_of(pc.binary_length(col))
    np.greater_equal(length, 15, out=ok)
    ok &= length <= 19
    zero = pc.starts_with(col, "0")
    if pc.any(zero).as_py():
        ok &= ~numpy_of(zero)
    return bool(ok.all())


def _dictionary(col: Any) -> tuple[np.ndarray, pa.Array]:
    """(index per row, -1 for null; distinct values as strings) of a column. Chunks of a
    dictionary column each have their own dictionary (Parquet row groups, CSV blocks): only
    the dictionaries are hashed, and each chunk's indices are mapped into one array."""
    chunks = col.chunks if isinstance(col, pa.ChunkedArray) else [col]
    if not pa.types.is_dictionary(col.type):
        chunks = [pc.dictionary_encode(_as_strings(c)) for c in chunks]
    dicts = [_as_strings(c.dictionary) for c in chunks]
    enc = (pa.concat_arrays(dicts) if dicts else strings_of([])).dictionary_encode()
    codes = numpy_of(enc.indices)
    index = np.empty(sum(len(c) for c in chunks), dtype=np.int32)
    at = lo = 0
    for chunk, d in zip(chunks, dicts, strict=True):
        lut = np.append(codes[lo:lo + len(d)], np.int32(-1))  # the last entry: null
        ix = chunk.indices
        if ix.null_count:
            ix = pc.fill_null(ix, arrow_of(np.full(1, len(d)))[0].cast(ix.type))
        index[at:at + len(chunk)] = _take(lut, numpy_of(ix))
        at += len(chunk)
        lo += len(d)
    return index, enc.dictionary


def _dictionary_ids(col: Any) -> tuple[np.ndarray, np.ndarray, np.ndarray | None]:
    """(index per row into values, uint64 value of each distinct id (0 when invalid), valid
    per row or None when all are): a column of few distinct ids is validated and parsed once
    per distinct id."""
    index, values = _dictionary(col)
    cleaned, ok = _clean_ids(values)
    parsed = np.zeros(len(ok), dtype=np.uint64)
    if ok.any():
        parsed[ok] = numpy_of(pc.cast(cleaned.filter(arrow_of(ok)), pa.uint64()))
    if ok.all() and (not len(index) or index.min() >= 0):
        return index, parsed, None
    ok = np.append(ok, False)  # index -1 (null) lands on this
    return index, parsed, ok[index]


def _dictionary_modules(col: Any, n: int, default_module: str | None
                        ) -> tuple[np.ndarray, list[str | None], np.ndarray | None]:
    """(index per row into names; names, the last for a null; valid per row or None when all
    are: a missing or malformed module without --module is invalid)."""
    default = canonical_module(default_module) if default_module else None
    if col is None:
        return (np.zeros(n, dtype=np.int32), [default, None],
                None if default else np.zeros(n, bool))
    index, values = _dictionary(col)
    names = [canonical_module(v) if v.strip() else default for v in values.to_pylist()]
    names.append(default)  # null
    ok = np.array([m is not None for m in names])
    if ok.all():
        return index, names, None
    return np.where(ok[index], index, 0), names, ok[index]


def _in_order_of_use(index: np.ndarray, names: list[str | None]) -> tuple[list[str], np.ndarray]:
    """Distinct names of the valid rows in order of first row, and each row's index into them
    (the order modules were always numbered in)."""
    if not len(index):
        return [], np.zeros(0, np.int32)
    no_null = index.min() >= 0
    first = _first_of_code(index, len(names), len(names) - 1 if no_null else None)
    order = np.flatnonzero(first < len(index))
    order = order[np.argsort(first[order], kind="stable")]
    out: dict[str, int] = {}
    local = np.zeros(len(names), dtype=np.int32)
    for i in order.tolist():
        local[i] = out.setdefault(names[i], len(out))  # type: ignore[arg-type]
    if no_null and len(out) == len(order) and np.array_equal(order, np.arange(len(out))):
        return list(out), index  # numbered as they come: keep the column as it is
    return list(out), _take(local, index)


def _examples(cols: dict[str, Any], bad: np.ndarray, default_module: str | None
              ) -> list[tuple[int, str]]:
    """Reasons of a few invalid rows, from the full check of those rows alone."""
    if not len(bad):
        return []
    take = arrow_of(bad)
    raw = {role: _as_strings(col.take(take)) for role, col in cols.items()}
    reasons = _check(raw, 0, default_module).reasons
    return [(int(i), reasons[k]) for k, i in enumerate(bad.tolist())]


def _columns(src: _Source, table: pa.Table) -> dict[str, pa.ChunkedArray]:
    return {role: table[name] for role, name in src.roles.items()}


def _read_row_groups(src: _Source, encoded: list[str], groups: list[int], columns: list[str]
                     ) -> pa.Table:
    """Row groups read in two halves on two threads: Arrow decodes each column on one thread,
    and the record id column is most of the work."""
    import pyarrow.parquet as pq

    def read(part: list[int]) -> pa.Table:
        pf = pq.ParquetFile(src.path, read_dictionary=encoded)  # one reader per thread
        return pf.read_row_groups(part, columns=columns)

    if len(groups) < 2:
        return read(groups)
    half = len(groups) // 2
    return pa.concat_tables(_both(read, [(groups[:half],), (groups[half:],)]))


def _scan_chunks(src: _Source, chunk_rows: int) -> Iterator[dict[str, Any]]:
    """The id and module columns, whole (or in chunks of about ``chunk_rows`` rows), the
    cadence and module columns dictionary-encoded."""
    encoded = [src.roles[r] for r in ("cadence_id", "module") if r in src.roles]
    wanted = list(dict.fromkeys(src.roles.values()))
    if src.kind == "parquet":
        import pyarrow.parquet as pq

        with _parquet_errors(src):
            pf = pq.ParquetFile(src.path, read_dictionary=encoded)
            chunk: list[int] = []
            held = 0
            for g in range(pf.num_row_groups):
                n = pf.metadata.row_group(g).num_rows
                if chunk and held + n > chunk_rows:
                    yield _columns(src, _read_row_groups(src, encoded, chunk, wanted))
                    chunk, held = [], 0
                chunk.append(g)
                held += n
            if chunk:
                yield _columns(src, _read_row_groups(src, encoded, chunk, wanted))
        return
    dict_type = pa.dictionary(pa.int32(), pa.string())
    types = {n: dict_type if n in encoded else pa.string() for n in wanted}
    convert = pacsv.ConvertOptions(column_types=types, include_columns=wanted,
                                   strings_can_be_null=False, quoted_strings_can_be_null=False)
    parse = pacsv.ParseOptions(delimiter=src.delimiter)
    with _csv_errors(src):
        if src.path.stat().st_size <= chunk_rows * _CSV_ROW_BYTES:
            yield _columns(src, pacsv.read_csv(
                src.path, read_options=pacsv.ReadOptions(block_size=_CSV_BLOCK),
                parse_options=parse, convert_options=convert))
            return
        block = min(1 << 26, chunk_rows * _CSV_ROW_BYTES)
        reader = pacsv.open_csv(src.path, read_options=pacsv.ReadOptions(block_size=block),
                                parse_options=parse, convert_options=convert)
        for batch in reader:
            yield {role: batch.column(name) for role, name in src.roles.items()}


def _encode(values: np.ndarray | pa.Array) -> tuple[np.ndarray, np.ndarray]:
    """Codes in order of first appearance, and the value of each code (Arrow's hash table is
    the fastest at hand for tens of millions of uint64)."""
    enc = pc.dictionary_encode(values if isinstance(values, pa.Array)
                               else arrow_of(values, pa.uint64()))
    return numpy_of(enc.indices), numpy_of(enc.dictionary)


def _first_of_code(codes: np.ndarray, n_codes: int, n_present: int | None = None
                   ) -> np.ndarray:
    """Position of the first occurrence of each code (``len(codes)`` for absent codes).

    Looks at a growing prefix: when codes are few, they all show up early (once the
    ``n_present`` codes known to occur have, the rest is not looked at)."""
    first = np.full(n_codes, len(codes), dtype=np.int64)
    start, width = 0, 1 << 16
    missing = n_codes if n_present is None else n_present
    if n_codes > len(codes) >> 8:  # many codes: one pass over all of them
        width = len(codes)
    while missing and start < len(codes):
        seg = codes[start:start + width]
        here = np.full(n_codes, len(seg), dtype=np.int64)
        here[seg[::-1]] = np.arange(len(seg) - 1, -1, -1)  # the last write wins: the earliest
        new = (first == len(codes)) & (here < len(seg))
        first[new] = here[new] + start
        missing -= int(np.count_nonzero(new))
        start += width
        width *= 4
    return first


def _finish_scan(source: _Source, default_module: str | None, stamp: tuple[int, int],
                 rows: int, invalid: int, examples: tuple, pair_rows: np.ndarray,
                 rec: np.ndarray, cad: np.ndarray, cad_values: np.ndarray, mod: np.ndarray,
                 names: list[str]) -> InputScan:
    """Codes and duplicates of the valid rows: a pair that repeats is not a pair to plan.

    ``cad`` indexes ``cad_values`` (distinct uint64 cadence ids)."""
    with ThreadPoolExecutor(1) as pool:
        rc, rec_uniques, grouping = _encode_parts(rec, pool)
        del rec
        cc, used = _cadence_codes(cad, len(cad_values), mod, len(names))
        cad_text = pc.cast(arrow_of(cad_values[used % len(cad_values)], pa.uint64()),
                           pa.string())
        cad_module = used // len(cad_values)
        n_rec, n_cad = len(rec_uniques), len(cad_text)
        masks, dup = _masks_and_repeats(rc, cc, n_rec, n_cad,
                                        grouping.summer(cc, pool) if grouping else None)
        dup_rows = dup_first = np.zeros(0, dtype=np.int64)
        if dup is not None:
            is_dup = dup >= 0
            dup_rows, dup_first = pair_rows[is_dup], pair_rows[dup[is_dup]]
            sums = None
            if grouping:  # repeats weigh nothing (an extra cadence of weight 0): no regrouping
                kept = grouping.summer(np.where(is_dup, n_cad, cc), pool)

                def sums(table: np.ndarray) -> np.ndarray:
                    return kept(np.append(table, 0.0))

            keep = ~is_dup
            pair_rows, rc, cc, mod = pair_rows[keep], rc[keep], cc[keep], mod[keep]
            masks, _ = _masks_and_repeats(rc, cc, n_rec, n_cad, sums)
    return InputScan(
        source=source, default_module=default_module, rows=rows, invalid=invalid,
        invalid_examples=examples, pair_rows=pair_rows,
        codes=PairCodes(mod, names, rc, cc), record_values=rec_uniques,
        cadence_text=cad_text, dup_rows=dup_rows, dup_first=dup_first, stamp=stamp,
        cadence_modules=cad_module, record_masks=masks)


def _cadence_codes(cad: np.ndarray, n_values: int, mod: np.ndarray, n_mod: int
                   ) -> tuple[np.ndarray, np.ndarray]:
    """(cadence code of each row, module * n_values + value of each code).

    A cadence under two modules is two cadences: codes are numbered module by module, and
    within a module in order of the value's first row, found on a small table of
    (module, value) keys rather than by hashing a key per row."""
    key = cad
    if n_mod > 1:
        key = mod.astype(np.int64 if n_mod * n_values >= 1 << 31 else np.int32)
        key *= n_values
        key += cad
    present = np.sort(numpy_of(pc.unique(arrow_of(key))))  # no intp copy of the keys
    first = _first_of_code(cad, n_values, len(np.unique(present % n_values)))
    used = present[np.lexsort((first[present % n_values], present // n_values))]
    code = np.zeros(n_mod * n_values, dtype=np.int32)
    code[used] = np.arange(len(used), dtype=np.int32)
    return _take(code, key), used


def _take(table: np.ndarray, index: np.ndarray) -> np.ndarray:
    """``table[index]`` by Arrow: it takes int32 indices as they are (numpy converts them
    to a copy in intp first) and reuses its own memory."""
    return numpy_of(pc.take(arrow_of(table), arrow_of(index)))


_GOLDEN = np.uint64(0x9E3779B97F4A7C15)  # Fibonacci hashing: top bits split ids evenly
_HALVES_MIN = 1 << 20  # fewer values are hashed in one go
_PART_BITS = 6  # 64 parts: a part's hash table stays in cache; more parts cost more calls


def _encode_parts(values: np.ndarray, pool: ThreadPoolExecutor
                  ) -> tuple[np.ndarray, np.ndarray, _Grouping | None]:
    """``_encode`` of many ids, on two threads and cache-sized hash tables; also how the rows
    were grouped (None when there were few enough to hash in one go).

    One table for millions of ids misses the cache on nearly every probe and is regrown
    several times. Instead ids are split by hash into 64 parts, each holding its own
    distinct values, and each part is hashed alone: each half of the rows is partitioned
    (a counting sort of one byte), then each half of the parts is hashed, then each half of the
    rows gets its codes back. Codes are numbered part by part."""
    if len(values) < _HALVES_MIN:
        return (*_encode(values), None)
    n_parts, mid = 1 << _PART_BITS, len(values) // 2
    halves = [(0, mid), (mid, len(values))]
    parted = _both(lambda lo, hi: _partition(values[lo:hi], n_parts), halves, pool)
    local = [np.empty(hi - lo, dtype=np.int32) for lo, hi in halves]
    uniques: list[np.ndarray] = [np.zeros(0, np.uint64)] * n_parts

    def encode(first: int, last: int) -> None:
        for p in range(first, last):
            enc = pc.dictionary_encode(pa.chunked_array(
                [ids.slice(b[p], b[p + 1] - b[p]) for _, b, ids in parted], pa.uint64()))
            for (_, b, _), out, chunk in zip(parted, local, enc.chunks, strict=True):
                out[b[p]:b[p + 1]] = numpy_of(chunk.indices)
            uniques[p] = numpy_of(enc.chunk(0).dictionary)

    _both(encode, [(0, n_parts // 2), (n_parts // 2, n_parts)], pool)
    grouping = _Grouping(halves, [order for order, _, _ in parted], [b for _, b, _ in parted],
                         local, np.cumsum([0] + [len(u) for u in uniques]))
    return grouping.codes(pool), np.concatenate(uniques), grouping


@dataclass(frozen=True)
class _Grouping:
    """Rows grouped by hash part, per half of the rows: positions in order of part (``order``),
    where each part starts in that order (``bounds``), and each row's code within its part
    (``local``) in that order; a part's codes start at ``offsets[part]``."""

    halves: list[tuple[int, int]]
    order: list[np.ndarray]
    bounds: list[np.ndarray]
    local: list[np.ndarray]
    offsets: np.ndarray

    def codes(self, pool: ThreadPoolExecutor) -> np.ndarray:
        """The code of each row, in row order."""
        codes = np.empty(self.halves[-1][1], dtype=np.intp)  # what bincount and indexing take

        def scatter(half: int) -> None:
            lo, hi = self.halves[half]
            out, order, b = codes[lo:hi], self.order[half], self.bounds[half]
            for p in range(len(self.offsets) - 1):
                out[order[b[p]:b[p + 1]]] = self.local[half][b[p]:b[p + 1]] + self.offsets[p]

        _both(scatter, [(0,), (1,)], pool)
        return codes

    def summer(self, c: np.ndarray, pool: ThreadPoolExecutor
               ) -> Callable[[np.ndarray], np.ndarray]:
        """Σ ``table[c]`` per code, for any table: summed part by part, where the sums of a
        part stay in cache, not by one pass over the rows scattering into millions of bins."""
        in_order = _both(lambda h: c[slice(*self.halves[h])][self.order[h]], [(0,), (1,)], pool)
        n_parts = len(self.offsets) - 1

        def sums(table: np.ndarray) -> np.ndarray:
            out = np.zeros(int(self.offsets[-1]))
            weights = [_take(table, c_half) for c_half in in_order]

            def run(first: int, last: int) -> None:
                for p in range(first, last):
                    lo, hi = self.offsets[p], self.offsets[p + 1]
                    for b, local, w in zip(self.bounds, self.local, weights, strict=True):
                        out[lo:hi] += np.bincount(local[b[p]:b[p + 1]],
                                                  weights=w[b[p]:b[p + 1]], minlength=hi - lo)

            _both(run, [(0, n_parts // 2), (n_parts // 2, n_parts)], pool)
            return out

        return sums


def _partition(values: np.ndarray, n_parts: int) -> tuple[np.ndarray, np.ndarray, pa.Array]:
    """(positions in order of part, start of each part in that order, the values in it)."""
    part = np.empty(len(values), dtype=np.uint8)
    shift = np.uint64(64 - _PART_BITS)
    for lo in range(0, len(values), _HALVES_MIN):  # in slices: no product of every value at once
        np.right_shift(values[lo:lo + _HALVES_MIN] * _GOLDEN, shift,
                       out=part[lo:lo + _HALVES_MIN], casting="unsafe")
    order = numpy_of(pc.array_sort_indices(arrow_of(part))).view(np.intp)  # counting sort
    bounds = np.zeros(n_parts + 1, dtype=np.int64)
    np.cumsum(np.bincount(part, minlength=n_parts), out=bounds[1:])
    return order, bounds, arrow_of(values).take(arrow_of(order))


def _both(fn: Callable[..., Any], args: list[tuple],
          pool: ThreadPoolExecutor | None = None) -> list[Any]:
    """[``fn(*args[0])``, ``fn(*args[1])``], the second on ``pool`` (or a thread of its own)
    while the first runs here: Arrow's and numpy's kernels release the GIL."""
    if pool is None:
        with ThreadPoolExecutor(1) as own:
            return _both(fn, args, own)
    later = pool.submit(fn, *args[1])
    first = fn(*args[0])
    return [first, later.result()]


_SUM_BITS = 45  # float64 sums of < 512 powers of two below 2**45 stay exact (< 2**53)


def _masks_and_repeats(rc: np.ndarray, cc: np.ndarray, n_rec: int, n_cad: int,
                       sums: Callable[[np.ndarray], np.ndarray] | None = None
                       ) -> tuple[np.ndarray | None, np.ndarray | None]:
    """(per record, the OR of ``1 << cadence`` when there are at most 64 cadences; for each
    position, the earlier position of the same pair, else -1 — None when no pair repeats).

    Per record, Σ 2**cadence has as many one-bits as the record has pairs exactly when no pair
    repeats (a repeat carries), so one weighted bincount per 45 cadences finds the records that
    may hold a repeat; only their rows are hashed. When the one-bits of all records add up to
    the number of pairs, no record holds one, and the pairs are not even counted. ``sums``
    maps a table of one weight per cadence to its sum per record (default: one bincount)."""
    if n_cad > 8 * _SUM_BITS:  # too many passes: hash every pair
        return None, _repeats_among(np.arange(len(rc)), rc, cc, n_rec)
    sums = sums or (lambda table: _sums(rc, cc, table, n_rec))
    masks = np.zeros(n_rec, dtype=np.uint64) if n_cad <= 64 else None
    ones = np.zeros(n_rec, dtype=np.int64)
    for lo in range(0, n_cad, _SUM_BITS):
        powers = np.zeros(n_cad)  # this pass's cadences weigh a power of two, the others 0
        powers[lo:lo + _SUM_BITS] = np.ldexp(1.0, np.arange(min(n_cad, lo + _SUM_BITS) - lo))
        bits = sums(powers).astype(np.uint64)
        ones += np.bitwise_count(bits)
        if masks is not None:
            masks |= bits << np.uint64(lo)
    if int(ones.sum()) == len(rc):
        return masks, None
    # sums are exact below 512 pairs a record (2**9 * 2**44); a record with more pairs has
    # fewer one-bits (at most 53) than pairs anyway: comparing with the count finds them all
    suspect = ones != np.bincount(rc, minlength=n_rec)
    return None, _repeats_among(np.flatnonzero(suspect[rc]), rc, cc, n_rec)


def _sums(r: np.ndarray, c: np.ndarray, table: np.ndarray, n_rec: int) -> np.ndarray:
    """Σ ``table[c]`` per ``r``."""
    return np.bincount(r, weights=_take(table, c), minlength=n_rec)


def _repeats_among(sub: np.ndarray, rc: np.ndarray, cc: np.ndarray, n_rec: int
                   ) -> np.ndarray | None:
    """For each position, the earlier position (within ``sub``) of the same pair, else -1."""
    pair, uniques = _encode(cc[sub].astype(np.uint64) * np.uint64(n_rec) + rc[sub])
    if len(uniques) == len(sub):
        return None
    earlier = sub[_first_of_code(pair, len(uniques))[pair]]
    out = np.full(len(rc), -1, dtype=np.int64)
    repeat = earlier != sub
    out[sub[repeat]] = earlier[repeat]
    return out


# --------------------------------------------------------------------------- reading


def _open(path: Path) -> _Source:
    if not path.exists():
        raise InputError(f"{path}: no such file")
    if path.is_dir():
        raise InputError(f"{path}: is a directory, not a CSV or Parquet file")
    try:
        with open(path, "rb") as fh:
            head = fh.read(_SNIFF_BYTES)
    except OSError as exc:
        raise InputError(f"{path}: cannot be read ({exc.strerror})") from None
    if not head.strip(b"\xef\xbb\xbf \t\r\n"):
        raise InputError(f"{path}: the file is empty")
    if head.startswith(_PARQUET_MAGIC) or path.suffix.lower() in (".parquet", ".pq"):
        import pyarrow.parquet as pq  # only Parquet inputs pay for it (and for pyarrow.fs)

        try:
            names = pq.ParquetFile(path).schema_arrow.names
        except Exception as exc:  # pyarrow raises several types for damaged files
            raise InputError(_parquet_problem(path, head, exc)) from None
        return _Source(path, "parquet", _require_columns(path, names), tuple(names))
    if b"\x00" in head:
        raise InputError(f"{path}: is not UTF-8 text (it contains NUL bytes: a binary file or "
                         "UTF-16 text); save it as 'CSV UTF-8' or Parquet")
    delimiter = _sniff_delimiter(head)
    try:
        header = pacsv.open_csv(
            path, parse_options=pacsv.ParseOptions(delimiter=delimiter),
            convert_options=pacsv.ConvertOptions(column_types={}, include_columns=[]),
        ).schema.names
    except (pa.ArrowInvalid, OSError, UnicodeDecodeError) as exc:
        raise InputError(f"{path}: not a readable CSV file ({_excerpt(exc)})") from None
    header = [h.lstrip("\ufeff") for h in header]
    return _Source(path, "csv", _require_columns(path, header), tuple(header), delimiter)


def _parquet_problem(path: Path, head: bytes, exc: BaseException) -> str:
    what = "truncated or damaged" if head.startswith(_PARQUET_MAGIC) else "not a Parquet file"
    return f"{path}: {what} ({type(exc).__name__}: {_excerpt(exc)})"


@contextmanager
def _parquet_errors(src: _Source) -> Iterator[None]:
    """Any failure of the Parquet reader becomes one clear InputError."""
    try:
        yield
    except InputError:
        raise
    except Exception as exc:  # pyarrow raises several types for damaged files
        with open(src.path, "rb") as fh:
            head = fh.read(4)
        raise InputError(_parquet_problem(src.path, head, exc)) from None


@contextmanager
def _csv_errors(src: _Source) -> Iterator[None]:
    try:
        yield
    except pa.ArrowInvalid as exc:
        msg = _excerpt(exc, 300)
        if "UTF8" in str(exc) or "utf8" in str(exc).lower():
            msg = "it is not UTF-8 text; save it as 'CSV UTF-8'"
        raise InputError(f"{src.path}: cannot be read as CSV: {msg}") from None


def _raw_batches(src: _Source) -> Iterator[dict[str, pa.Array]]:
    """The id and module columns, as strings, a batch at a time."""
    wanted = list(dict.fromkeys(src.roles.values()))
    if src.kind == "parquet":
        import pyarrow.parquet as pq

        with _parquet_errors(src):
            for batch in pq.ParquetFile(src.path).iter_batches(batch_size=_BATCH_ROWS,
                                                                columns=wanted):
                yield {role: _as_strings(batch.column(name)) for role, name in src.roles.items()}
        return
    convert = pacsv.ConvertOptions(
        column_types={n: pa.string() for n in wanted}, include_columns=wanted,
        strings_can_be_null=False, quoted_strings_can_be_null=False)
    with _csv_errors(src):
        reader = pacsv.open_csv(
            src.path, read_options=pacsv.ReadOptions(block_size=1 << 21),
            parse_options=pacsv.ParseOptions(delimiter=src.delimiter), convert_options=convert)
        for batch in reader:
            yield {role: batch.column(name) for role, name in src.roles.items()}


# --------------------------------------------------------------------------- validation


@dataclass
class _Checked:
    """One batch of rows after validation, before duplicates (which need the whole file)."""

    table: pa.Table  # row, module, record_id, cadence_id (cleaned)
    valid: np.ndarray
    codes: dict[int, str]  # position → code, for invalid rows
    reasons: dict[int, str]  # position → why


def _check(raw: dict[str, pa.Array], row0: int, default_module: str | None) -> _Checked:
    n = len(raw["record_id"])
    record, rec_ok = _clean_ids(raw["record_id"])
    cadence, cad_ok = _clean_ids(raw["cadence_id"])
    module, module_bad = _modules(raw, n, default_module)
    reasons = _id_reasons(cadence, ~cad_ok, "cadence id")
    reasons.update(_id_reasons(record, ~rec_ok, "record id"))  # the record's reason comes first
    for i in np.flatnonzero(module_bad & rec_ok & cad_ok).tolist():
        reasons[i] = "missing module (add a module column or pass --module)"
        if "module" in raw and (raw["module"][i].as_py() or "").strip():
            reasons[i] = "bad module name (not a Zoho module API name)"
    table = pa.table({
        "row": arrow_of(np.arange(row0 + 1, row0 + n + 1, dtype=np.int64)),
        "module": module, "record_id": record, "cadence_id": cadence,
    })
    return _Checked(table, rec_ok & cad_ok & ~module_bad, dict.fromkeys(reasons, "INVALID_INPUT"),
                    reasons)


def _roles(names: list[str]) -> dict[str, str]:
    """role → original column name (first match wins, exact role names before aliases)."""
    roles: dict[str, str] = {}
    for name in sorted(names, key=lambda n: _normalise_header(n) not in ("recordid", "cadenceid")):
        role = _ALIASES.get(_normalise_header(name))
        if role and role not in roles:
            roles[role] = name
    return roles


def _require_columns(path: Path, names: list[str]) -> dict[str, str]:
    roles = _roles(names)
    missing = [r for r in ("record_id", "cadence_id") if r not in roles]
    if missing:
        shown = ", ".join(repr(n) for n in names[:20]) or "none"
        raise InputError(
            f"{path}: no usable {' or '.join(missing)} column; columns found: {shown}. "
            "Expected record_id (or id, Record Id) and cadence_id (or cadences_id, cadence), "
            "optionally module."
        )
    return roles


def _as_strings(col: pa.ChunkedArray) -> pa.ChunkedArray:
    """Cast a Parquet column to strings; floats are poisoned, so they are marked, never cast."""
    t = col.type
    if pa.types.is_floating(t):
        # a float cannot hold an 18-19 digit id exactly: keep its text so the row says why
        return pc.cast(col, pa.string())
    if pa.types.is_dictionary(t):
        col = pc.cast(col, t.value_type)
        t = col.type
    if pa.types.is_string(t) or pa.types.is_large_string(t):
        return pc.cast(col, pa.string())
    if pa.types.is_integer(t) or pa.types.is_decimal(t) or pa.types.is_binary(t):
        return pc.cast(col, pa.string())
    return pc.cast(col, pa.string())


def _sniff_delimiter(head: bytes) -> str:
    text = head.decode("utf-8", errors="replace").lstrip("\ufeff")
    lines = [ln for ln in text.splitlines() if ln.strip()][:50]
    if len(lines) > 1 and not text.endswith(("\n", "\r")):
        lines = lines[:-1]  # the last line of the sample may be cut mid-way
    sample = "\n".join(lines)
    try:
        return csv.Sniffer().sniff(sample, delimiters=",;\t|").delimiter
    except csv.Error:
        return ","


def _clean(col: pa.Array) -> pa.Array:
    col = pc.utf8_trim_whitespace(pc.fill_null(col, _EMPTY))
    prefixed = pc.starts_with(col, "zcrm_")
    if pc.any(prefixed).as_py():
        col = pc.if_else(prefixed, pc.utf8_slice_codeunits(col, 5), col)
    return col


def _id_ok(col: pa.Array | pa.ChunkedArray) -> np.ndarray:
    """15-19 ASCII digits, not starting with 0: Zoho ids never do, and a canonical id maps
    one-to-one onto a uint64."""
    length = pc.utf8_length(col)
    ok = pc.and_(pc.ascii_is_decimal(col), pc.invert(pc.starts_with(col, "0")))
    ok = numpy_of(pc.fill_null(ok, _FALSE) if ok.null_count else ok)
    length = numpy_of(pc.fill_null(length, _ZERO) if length.null_count else length)
    return ok & (length >= 15) & (length <= 19)


def _clean_ids(col: pa.ChunkedArray) -> tuple[pa.Array, np.ndarray]:
    """Trimmed, ``zcrm_``-free ids and which are valid. Only the rows that fail as they stand
    are cleaned: a clean file of tens of millions of ids is not copied twice for nothing."""
    ok = _id_ok(col)
    if ok.all():
        return col, ok
    col = col.combine_chunks() if isinstance(col, pa.ChunkedArray) else col
    bad = np.flatnonzero(~ok)
    fixed = _clean(col.take(arrow_of(bad)))
    col = pc.replace_with_mask(col, arrow_of(~ok), fixed)
    ok[bad] = _id_ok(fixed)
    return col, ok


def _id_reasons(col: pa.ChunkedArray, bad: np.ndarray, what: str) -> dict[int, str]:
    """Row index → why its id is unusable, for the (few) rows flagged bad."""
    idx = np.flatnonzero(bad)
    if not len(idx):
        return {}
    reasons = {}
    for i, v in zip(idx.tolist(), col.take(arrow_of(idx)).to_pylist(), strict=True):
        if v == "":
            reasons[i] = f"missing {what}"
        elif v.isascii() and v.isdigit() and v.startswith("0") and 15 <= len(v) <= 19:
            reasons[i] = f"bad {what}: {v!r} starts with 0, which a Zoho id never does"
        elif re.match(_SCI_RE, v) or re.match(r"^[0-9]+\.[0-9]+$", v):
            reasons[i] = (f"bad {what}: {v!r} looks like a number mangled by a spreadsheet "
                          "(ids must keep all 15-19 digits; format the column as text)")
        else:
            reasons[i] = f"bad {what}: {v!r} is not a 15-19 digit Zoho id"
    return reasons


def _modules(raw: dict, n: int, default_module: str | None) -> tuple[pa.Array, np.ndarray]:
    """Canonical module per row and a mask of rows whose module is missing or malformed."""
    default = canonical_module(default_module) if default_module else None
    if "module" not in raw:
        if default is None:
            return pa.nulls(n, pa.string()), np.ones(n, dtype=bool)
        return (strings_of([default]).take(arrow_of(np.zeros(n, dtype=np.int32))),
                np.zeros(n, dtype=bool))
    col = pc.utf8_trim_whitespace(pc.fill_null(raw["module"], _EMPTY))
    enc = (col.combine_chunks() if isinstance(col, pa.ChunkedArray) else col).dictionary_encode()
    names = [canonical_module(v) if v else default for v in enc.dictionary.to_pylist()]
    modules = strings_of(names).take(enc.indices)
    return modules, ~numpy_of(pc.is_valid(modules))


def _sparse_strings(n: int, values: dict[int, str]) -> pa.Array:
    """A string column that is null except at a few rows, built without an n-sized object array."""
    if not values:
        return pa.nulls(n, pa.string())
    labels = sorted(set(values.values()))
    where = {label: i for i, label in enumerate(labels)}
    indices = np.full(n, -1, dtype=np.int32)
    rows = np.fromiter(values.keys(), dtype=np.int64, count=len(values))
    indices[rows] = np.fromiter((where[v] for v in values.values()), dtype=np.int32,
                                count=len(values))
    arr = pa.DictionaryArray.from_arrays(pa.array(indices, mask=indices < 0), pa.array(labels))
    return pc.cast(arr, pa.string())


