"""The columnar scan: one normalised row per input data row — valid pair, ``invalid`` or
``duplicate`` — with integer codes for the planner; no row text is kept between the passes."""

from __future__ import annotations

import hashlib
import os
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from functools import cached_property
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from ..arrays import arrow_of
from ..errors import InputError
from .codes import (
    cadence_codes,
    common_dictionary,
    concat,
    encode_parts,
    first_of_code,
    masks_and_repeats,
    take,
)
from .formats import CHUNK_ROWS, Source, as_strings, open_source, raw_batches, scan_chunks
from .ids import (
    all_of,
    canonical_module,
    clean_ids,
    dictionary_ids,
    dictionary_modules,
    id_reasons,
    in_order_of_use,
    module_column,
    record_ids,
)
from .options import InputOptions

VALID, INVALID, DUPLICATE = "valid", "invalid", "duplicate"


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
class InputScan:
    """The first pass over an input: counts, duplicates and integer codes; no row text is kept.

    Ids are canonical digit strings (15-19 digits, no leading zero), so each maps one-to-one
    onto a uint64: hashing integers is far cheaper than hashing strings, and a job of tens of
    millions of rows holds a few bytes per pair instead of its text. ``tables()`` reads the
    file again, batch by batch, to hand the rows' text to the journal.
    """

    source: Source
    options: InputOptions
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
        first = first_of_code(self.codes.cadence, len(self.cadence_text))
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
        for raw in raw_batches(self.source):
            chk = _check(raw, row0, self.options.module)
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


def read_input(path: str | os.PathLike[str], options: InputOptions | str | None = None
               ) -> InputTable:
    """Read and validate a (small) input into one table; InputError when the file is unusable."""
    scan = scan_input(path, options)
    table = pa.concat_tables(list(scan.tables())).drop_columns(["batch_id"])
    return InputTable(scan=scan, table=table)


def file_fingerprint(path: str | os.PathLike[str]) -> str:
    """Content hash of an input: a journal is bound to the exact bytes it was made from."""
    with open(path, "rb") as fh:
        return hashlib.file_digest(fh, "sha256").hexdigest()


def check_input(path: str | os.PathLike[str], options: InputOptions | str | None = None
                ) -> None:
    """Raise InputError now if the file cannot be an input at all (kind, header, columns)."""
    options = InputOptions.of(options)
    if options.module is not None and canonical_module(options.module) is None:
        raise InputError(f"--module {options.module!r} is not a valid Zoho module API name")
    open_source(Path(path), options)


def scan_input(path: str | os.PathLike[str], options: InputOptions | str | None = None, *,
               chunk_rows: int = CHUNK_ROWS) -> InputScan:
    """First pass over an input; InputError when the file is unusable.

    Whole columns are read at once (up to ``chunk_rows`` rows), so that Arrow reads them on
    its own threads; the cadence and module columns come dictionary-encoded, so only their
    few distinct values are validated and parsed, and ids are checked with a few vectorised
    kernels over the whole column."""
    path = Path(path)
    options = InputOptions.of(options)
    check_input(path, options)
    source = open_source(path, options)
    default_module = options.module
    stamp = source.stamp()
    rows = invalid = 0
    examples: list[tuple[int, str]] = []
    pair_rows, rec, cad, mod = [], [], [], []
    cad_values: list[np.ndarray] = []
    module_names: dict[str, int] = {}
    for cols in scan_chunks(source, chunk_rows):
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
                   else take(local, part.module))
        rows += part.rows
    if rows == 0:
        raise InputError(f"{path}: has a header ({', '.join(source.found)}) but no data rows")
    cad_index, cad_uniques = common_dictionary(cad, cad_values)
    return _finish_scan(source, options, stamp, rows, invalid, tuple(examples),
                        concat(pair_rows), concat(rec), cad_index, cad_uniques, concat(mod),
                        list(module_names))


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
        cadences = pool.submit(dictionary_ids, cols["cadence_id"])
        mod_index, mod_names, mod_ok = dictionary_modules(cols.get("module"), n,
                                                           default_module)
        record, rec_ok = record_ids(as_strings(cols["record_id"]), pool)
        cad_index, cad_values, cad_ok = cadences.result()
    valid_mask = all_of([ok for ok in (rec_ok, cad_ok, mod_ok) if ok is not None])
    valid = np.arange(n, dtype=np.int32 if n < 1 << 31 else np.int64)  # half the memory
    bad = np.zeros(0, np.int64)
    if valid_mask is not None and not valid_mask.all():
        valid, bad = np.flatnonzero(valid_mask), np.flatnonzero(~valid_mask)
        record, cad_index, mod_index = record[valid], cad_index[valid], mod_index[valid]
    modules, module = in_order_of_use(mod_index, mod_names)
    return _ScannedChunk(
        rows=n, valid=valid, invalid=len(bad), examples=_examples(cols, bad[:n_examples],
                                                                   default_module),
        record=record, cadence=cad_index, cadence_values=cad_values, modules=modules,
        module=module)


def _examples(cols: dict[str, Any], bad: np.ndarray, default_module: str | None
              ) -> list[tuple[int, str]]:
    """Reasons of a few invalid rows, from the full check of those rows alone."""
    if not len(bad):
        return []
    take = arrow_of(bad)
    raw = {role: as_strings(col.take(take)) for role, col in cols.items()}
    reasons = _check(raw, 0, default_module).reasons
    return [(int(i), reasons[k]) for k, i in enumerate(bad.tolist())]


def _finish_scan(source: Source, options: InputOptions, stamp: tuple[int, int],
                 rows: int, invalid: int, examples: tuple, pair_rows: np.ndarray,
                 rec: np.ndarray, cad: np.ndarray, cad_values: np.ndarray, mod: np.ndarray,
                 names: list[str]) -> InputScan:
    """Codes and duplicates of the valid rows: a pair that repeats is not a pair to plan.

    ``cad`` indexes ``cad_values`` (distinct uint64 cadence ids)."""
    with ThreadPoolExecutor(1) as pool:
        rc, rec_uniques, grouping = encode_parts(rec, pool)
        del rec
        cc, used = cadence_codes(cad, len(cad_values), mod, len(names))
        cad_text = pc.cast(arrow_of(cad_values[used % len(cad_values)], pa.uint64()),
                           pa.string())
        cad_module = used // len(cad_values)
        n_rec, n_cad = len(rec_uniques), len(cad_text)
        masks, dup = masks_and_repeats(rc, cc, n_rec, n_cad,
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
            masks, _ = masks_and_repeats(rc, cc, n_rec, n_cad, sums)
    return InputScan(
        source=source, options=options, rows=rows, invalid=invalid,
        invalid_examples=examples, pair_rows=pair_rows,
        codes=PairCodes(mod, names, rc, cc), record_values=rec_uniques,
        cadence_text=cad_text, dup_rows=dup_rows, dup_first=dup_first, stamp=stamp,
        cadence_modules=cad_module, record_masks=masks)


@dataclass
class _Checked:
    """One batch of rows after validation, before duplicates (which need the whole file)."""

    table: pa.Table  # row, module, record_id, cadence_id (cleaned)
    valid: np.ndarray
    codes: dict[int, str]  # position → code, for invalid rows
    reasons: dict[int, str]  # position → why


def _check(raw: dict[str, pa.Array], row0: int, default_module: str | None) -> _Checked:
    n = len(raw["record_id"])
    record, rec_ok = clean_ids(raw["record_id"])
    cadence, cad_ok = clean_ids(raw["cadence_id"])
    module, module_bad = module_column(raw, n, default_module)
    reasons = id_reasons(cadence, ~cad_ok, "cadence id")
    reasons.update(id_reasons(record, ~rec_ok, "record id"))  # the record's reason comes first
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

