"""The columnar scan: one normalised row per input data row — valid pair, ``invalid`` or
``duplicate`` — with integer codes for the planner; of the row text, only the invalid rows' is
kept (one pass over the file: the rows' verdicts are made from the codes, :mod:`.coded`)."""

from __future__ import annotations

import hashlib
import os
import shlex
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from ..arrays import arrow_of, both, kept, numpy_of
from ..errors import InputError
from ..hashing import concat, encode_parts, take
from .carry import carried_columns
from .coded import CHUNK_ROWS as CODED_ROWS
from .coded import VALID, coded_chunks, text_of
from .codes import Repeats, cadence_codes, common_dictionary, first_of_code, masks_and_repeats
from .formats import CHUNK_ROWS, as_strings, open_source, scan_chunks
from .ids import (
    all_of,
    canonical_module,
    clean_ids,
    dictionary_ids,
    dictionary_modules,
    error_value_reason,
    id_reasons,
    in_order_of_use,
    module_column,
    module_key,
    record_ids,
)
from .options import InputOptions
from .records import RecordList, expanded
from .rounding import EXPORT_AS_TEXT, ROUNDED_ID, among, rounding_evidence, zero_tailed
from .source import Source, Stamp, file_stamp

_NO_IDS = np.zeros(0, dtype=np.uint64)


_ROUNDED = (" may have been rounded by a spreadsheet (Excel keeps 15 significant digits and "
            "writes the rest as zeros, so it may name another record, and this file's ids show "
            f"that rounding); {EXPORT_AS_TEXT}")
#: the invalid rows the scan keeps: position (0-based), their text as the check cleaned it,
#: and why they are invalid
_INVALID_SCHEMA = pa.schema([
    ("position", pa.int64()), ("module", pa.string()), ("record_id", pa.string()),
    ("cadence_id", pa.string()), ("code", pa.string()), ("reason", pa.string()),
])


def rounded_reason(what: str, value: int) -> str:
    return f"{what} {value}{_ROUNDED}"


def unusual_line(scan: InputScan) -> str:
    """One warning line for ids kept although they end like rounded ones, unusually often."""
    shown = ", ".join(scan.unusual_ids[:5]) + (", ..." if len(scan.unusual_ids) > 5 else "")
    return (f"warning: {len(scan.unusual_ids)} ids end in the zeros Excel's rounding leaves "
            f"({shown}), more often than chance would; they were kept — if this file went "
            "through a spreadsheet, check them")


def hidden_line(scan: InputScan) -> str:
    """One warning line for the rows a sheet hides, which its reader sends like the others."""
    rows = scan.hidden_rows
    shown = ", ".join(map(str, rows[:5])) + (f" and {len(rows) - 5} more" if len(rows) > 5 else "")
    return (f"warning: {len(rows)} rows of the sheet are hidden (a filter, or hidden by hand: "
            f"sheet rows {shown}); batcher reads them like the others and sends them — delete "
            "them from the sheet if they are not part of the list")


def totals_line(scan: InputScan) -> str:
    """One warning line for the totals rows of the sheet's Excel tables, read as blank rows."""
    rows = scan.totals_rows
    which = (f"sheet row {rows[0]} is the totals row" if len(rows) == 1 else
             f"sheet rows {', '.join(map(str, rows))} are the totals rows")
    return (f"warning: {which} of an Excel table (Table Design > Total Row): a sum of the "
            "list, not a row of it, so batcher does not read it as a data row (no results "
            "row; counted with the blank rows)")


def merged_line(scan: InputScan) -> str:
    """One warning line for the merges down a column whose value each row they span took."""
    cells = scan.merged_cells
    shown = ", ".join(cells[:5]) + (f" and {len(cells) - 5} more" if len(cells) > 5 else "")
    these = "1 merged cell spans" if len(cells) == 1 else f"{len(cells)} merged cells span"
    return (f"warning: {these} rows of one column ({shown}); batcher gives each row the "
            "merged value, as the sheet shows it — if a row is not meant to have it, unmerge "
            "the cells and fill them in")


def sheet_lines(scan: InputScan) -> list[tuple[str, str]]:
    """(line, log event) of what the reader did with a sheet's hidden rows, tables' totals rows
    and merged cells: said even with --quiet, and kept with the job's warnings."""
    return [(line, event) for line, event in (
        (scan.hidden_rows and hidden_line(scan), "hidden_rows"),
        (scan.totals_rows and totals_line(scan), "totals_rows"),
        (scan.merged_cells and merged_line(scan), "merged_cells"),
        *scan.sheet_notes) if line]


#: more distinct cadence ids than any Zoho org has cadences: a Zoho org has at most a few
#: hundred (the edition caps active cadences per module in the tens to low hundreds), so a file
#: with over a thousand names something else in its cadence column — most often record ids
ORG_CADENCES_MAX = 1000


def swapped_columns_line(scan: InputScan) -> str | None:
    """One hint line for stderr when the cadence ids look like record ids (more distinct ones
    than an org can have cadences: ``ORG_CADENCES_MAX``), else None; naming the columns the
    other way round is what fixes a file whose headers were mixed up."""
    if scan.records is not None or len(scan.cadence_text) <= ORG_CADENCES_MAX:
        return None
    # a cadence under two modules is two codes, one id
    n_cadences = pc.count_distinct(scan.cadence_text).as_py()
    if n_cadences <= ORG_CADENCES_MAX:
        return None
    roles = scan.source.roles
    record, cadence = roles.get("record_id", "record_id"), roles.get("cadence_id", "cadence_id")
    return (f"hint: column {cadence!r} holds {n_cadences:,} distinct cadence ids and column "
            f"{record!r} {len(scan.record_values):,} record ids; an org has at most a few "
            f"hundred cadences, so the columns may be swapped — if so, name them: "
            f"--record-column {shlex.quote(cadence)} --cadence-column {shlex.quote(record)}")


def rounding_line(scan: InputScan) -> str:
    """One line for stderr: how many rows the rounding rule refused, and what to do."""
    rows = "1 row has" if scan.rounded == 1 else f"{scan.rounded} rows have"
    seen = f" ({scan.collapsed})" if scan.collapsed else ""
    return (f"{rows} ids that look rounded by a spreadsheet{seen} (Excel keeps 15 "
            "significant digits: 1990117000000120345 is saved as 1990117000000120000, another "
            f"record); they are invalid ({ROUNDED_ID}) and no call names them; {EXPORT_AS_TEXT}")


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
    """The one pass over an input: counts, duplicates and integer codes; of the rows' text,
    only the invalid rows' is kept.

    Ids are canonical digit strings (15-19 digits, no leading zero), so each maps one-to-one
    onto a uint64: hashing integers is far cheaper than hashing strings, and a job of tens of
    millions of rows holds a few bytes per pair instead of its text. ``coded_tables()`` gives
    every row's verdict from these codes, without reading the file again.
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
    stamp: Stamp = (0, 0, 0, 0)
    #: module code of each cadence code (a cadence code never spans two modules)
    cadence_modules: np.ndarray | None = field(default=None, repr=False)
    #: per record code, the OR of ``1 << cadence code`` of its pairs (64 cadences or fewer)
    record_masks: np.ndarray | None = field(default=None, repr=False)
    #: positions read (result rows and blank rows), and the blank rows among them
    positions: int = 0
    blank: int = 0
    #: a record list's cadences (the file has no cadence column), and the 1-based input row of
    #: each position (None when a position is its row)
    records: RecordList | None = None
    position_rows: np.ndarray | None = field(default=None, repr=False)
    #: the invalid rows (``_INVALID_SCHEMA``, by position) and the blank rows' positions
    invalid_rows: pa.Table = field(default_factory=_INVALID_SCHEMA.empty_table, repr=False)
    blank_rows: np.ndarray = field(default_factory=lambda: np.zeros(0, np.int64), repr=False)
    #: uint64 ids refused as possibly rounded by a spreadsheet, sorted; rows refused so
    rounded_records: np.ndarray = field(default_factory=lambda: _NO_IDS, repr=False)
    rounded_cadences: np.ndarray = field(default_factory=lambda: _NO_IDS, repr=False)
    rounded: int = 0
    #: ids kept that end the way rounding leaves them, more often than chance would: a warning
    unusual_ids: tuple[str, ...] = ()
    #: the rows that showed two records collapsed onto one id, when they decided the rounding
    collapsed: str | None = None
    #: an .xlsx sheet's hidden rows with data, as Excel numbers them: they are sent all the same
    hidden_rows: tuple[int, ...] = ()
    #: an .xlsx sheet's Excel-table totals rows, as Excel numbers them: counted as blank rows
    totals_rows: tuple[int, ...] = ()
    #: an .xlsx sheet's merges down a column whose top value each row they span was given
    merged_cells: tuple[str, ...] = ()
    #: (line, log event) of the .xlsx reader's other odd cells (``XlsxSheet.notes``)
    sheet_notes: tuple[tuple[str, str], ...] = ()
    #: (module, pairs) a module column names over ``--module`` (:func:`module_named_line`)
    module_named: tuple[tuple[str, int], ...] = ()

    def record_id_array(self) -> pa.Array:
        """The id of each record code, as uint64 (a valid id is canonical digits: its text is
        the number's)."""
        return arrow_of(self.record_values, pa.uint64())

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

    def coded_tables(self, *, verdicts: Sequence[tuple[str, str]] = (),
                     verdict_of_pair: np.ndarray | None = None,
                     chunk_rows: int = CODED_ROWS) -> Iterator[pa.Table]:
        """Every row, in input order, with its final reader status, coded (:mod:`.coded`).

        ``verdict_of_pair`` (index into ``verdicts`` (code, reason), -1 for none) marks pairs the
        preflight rejected. Made from the scan alone: the file is not read again.
        """
        return coded_chunks(self, verdicts, verdict_of_pair, chunk_rows)

    def tables(self, *, verdicts: Sequence[tuple[str, str]] = (),
               verdict_of_pair: np.ndarray | None = None) -> Iterator[pa.Table]:
        """:meth:`coded_tables` in text form (row, module, record_id, cadence_id, status, code,
        reason)."""
        for coded in self.coded_tables(verdicts=verdicts, verdict_of_pair=verdict_of_pair):
            yield text_of(coded)

    def row_of(self, position: int) -> int:
        """The 1-based input row of a 0-based position."""
        rows = self.position_rows
        return position + 1 if rows is None else int(rows[position])


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
        valid = self.table.take(arrow_of(self.valid_row_indices()))
        return valid["module"], valid["record_id"], valid["cadence_id"]

    def valid_pairs(self) -> Iterator[tuple[str, str, str]]:
        module, record, cadence = self.valid_arrays()
        yield from zip(module.to_pylist(), record.to_pylist(), cadence.to_pylist(), strict=True)

    def valid_row_indices(self) -> np.ndarray:
        """0-based positions in ``table`` of the valid rows (same order as valid_arrays): a
        scan's positions, less the blank rows before each (the table has none)."""
        return np.flatnonzero(numpy_of(pc.equal(self.table["status"], VALID).combine_chunks()))

    def fingerprint(self) -> str:
        return self.scan.fingerprint()


def read_input(path: str | os.PathLike[str], options: InputOptions | str | None = None
               ) -> InputTable:
    """Read and validate a (small) input into one table; InputError when the file is unusable."""
    scan = scan_input(path, options)
    table = pa.concat_tables(list(scan.tables()))
    return InputTable(scan=scan, table=table)


#: the file was written to while batcher read it (what it read may be half of each version)
CHANGED_WHILE_READ = "the file changed while batcher was reading it; run the command again"


def file_fingerprint(path: str | os.PathLike[str]) -> str:
    """Content hash of an input: a journal is bound to the exact bytes it was made from."""
    return stamped_fingerprint(path)[0]


def stamped_fingerprint(path: str | os.PathLike[str]) -> tuple[str, Stamp]:
    """(:func:`file_fingerprint`, the file's (size, mtime) as it was hashed: a scan's
    ``stamp``); InputError when the file changed while it was hashed. OSError when it cannot be
    read."""
    stamp = file_stamp(path)
    with open(path, "rb") as fh:
        digest = hashlib.file_digest(fh, "sha256").hexdigest()
    if file_stamp(path) != stamp:
        raise InputError(f"{path}: {CHANGED_WHILE_READ}")
    return digest, stamp



def check_input(path: str | os.PathLike[str], options: InputOptions | str | None = None
                ) -> Source:
    """The input opened, or InputError now if the file cannot be an input at all (kind,
    header, columns). Hand it to :func:`scan_input`: a file is opened once (an .xlsx sheet is
    read whole when opened)."""
    options = InputOptions.of(options)
    if options.module is not None and canonical_module(options.module) is None:
        raise InputError(f"--module {options.module!r} is not a valid Zoho module API name")
    return open_source(Path(path), options)


def scan_input(path: str | os.PathLike[str], options: InputOptions | str | None = None, *,
               records: RecordList | None = None, chunk_rows: int = CHUNK_ROWS,
               source: Source | None = None) -> InputScan:
    """First pass over an input; InputError when the file is unusable.

    Whole columns are read at once (up to ``chunk_rows`` rows), so that Arrow reads them on
    its own threads; the cadence and module columns come dictionary-encoded, so only their
    few distinct values are validated and parsed, and ids are checked with a few vectorised
    kernels over the whole column. ``records``: the cadences of a record list (the org's, for
    ``--all-cadences``); ``--cadence`` ids are taken from ``options``. ``source``: the input
    as :func:`check_input` opened it with the same options (opened again if the file changed
    since)."""
    path = Path(path)
    options = InputOptions.of(options)
    if source is None or source.path != path or not source.still_current():
        source = check_input(path, options)
    default_module = options.module
    stamp = source.stamp()
    rows = invalid = blank = 0
    examples: list[tuple[int, str]] = []
    pair_rows, rec, cad, mod, position_rows = [], [], [], [], []
    invalid_rows: list[pa.Table] = []
    blank_rows: list[np.ndarray] = []
    cad_values: list[np.ndarray] = []
    module_names: dict[str, int] = {}  # module_key → number (first spelling: names_seen)
    names_seen: list[str] = []
    records = records or (RecordList.given(options.cadences) if options.cadences else None)
    if options.all_cadences and records is None:
        raise InputError("--all-cadences needs the org's cadences: `batcher run` reads them "
                         "(a dry run shows which cadences each record would leave)")
    for cols in expanded(scan_chunks(source, chunk_rows), records, default_module):
        part = _scan_chunk(cols, default_module)
        invalid += part.invalid
        blank += part.blank
        of_row = cols.get("row")
        shown = part.invalid_rows.slice(0, 10 - len(examples))
        examples += [(rows + i + 1 if of_row is None else int(of_row[i]), reason) for i, reason
                     in zip(shown["position"].to_pylist(), shown["reason"].to_pylist(),
                            strict=True)]
        if part.invalid_rows.num_rows:
            invalid_rows.append(part.invalid_rows.set_column(
                0, "position", pc.add(part.invalid_rows["position"], rows)))
        blank_rows.append(part.blank_at + rows)
        if of_row is not None:
            position_rows.append(of_row)
        pair_rows.append(part.valid.astype(np.int64) + rows if rows else part.valid)
        rec.append(part.record)
        cad.append(part.cadence)
        cad_values.append(part.cadence_values)
        for m in part.modules:
            if module_names.setdefault(module_key(m), len(module_names)) == len(names_seen):
                names_seen.append(m)
        local = np.array([module_names[module_key(m)] for m in part.modules], dtype=np.int32)
        same = np.array_equal(local, np.arange(len(local)))
        mod.append(part.module.astype(np.int32, copy=False) if same
                   else take(local, part.module))
        rows += part.rows
    if rows == blank:
        raise InputError(f"{path}: has a header ({', '.join(source.found)}) but no data rows")
    if source.stamp() != stamp:
        raise InputError(f"{path}: {CHANGED_WHILE_READ}")
    cad_index, cad_uniques = common_dictionary(cad, cad_values)
    found = {"positions": rows, "blank": blank, "records": records, "hidden_rows": source.hidden,
             "totals_rows": source.totals, "merged_cells": source.merged,
             "sheet_notes": source.notes,
             "position_rows": concat(position_rows) if position_rows else None,
             "invalid_rows": pa.concat_tables(invalid_rows) if invalid_rows
             else _INVALID_SCHEMA.empty_table(), "blank_rows": concat(blank_rows)}
    scan = _finish_scan(source, options, stamp, rows - blank, invalid, tuple(examples),
                        concat(pair_rows), concat(rec), cad_index, cad_uniques, concat(mod),
                        names_seen, found)
    return replace(scan, module_named=_module_named(scan))


def _module_named(scan: InputScan) -> tuple[tuple[str, int], ...]:
    """(module, pairs) of the pairs whose module column names another module than
    ``--module``: the flag fills only rows without one, so those go to the column's module."""
    given = scan.options.module
    if given is None or "module" not in scan.source.roles:
        return ()
    names = scan.codes.module_names
    other = [m for m, name in enumerate(names) if module_key(name) != module_key(given)]
    if not other:
        return ()
    pairs = np.bincount(scan.codes.module, minlength=len(names))
    return tuple((names[m], int(pairs[m])) for m in other if pairs[m])


def module_named_line(scan: InputScan) -> str:
    """One warning line for the pairs sent to the module their column names, not to
    ``--module``'s (which fills only the rows without one)."""
    column = scan.source.roles["module"]
    total = sum(n for _, n in scan.module_named)
    shown = ", ".join(f"{n:,} to {m}" for m, n in scan.module_named[:5]) + (
        ", ..." if len(scan.module_named) > 5 else "")
    these = "1 pair names its own" if total == 1 else f"{total:,} pairs name their own"
    return (f"warning: --module {scan.options.module} fills only the rows without a module: "
            f"{these} in column {column!r} and {'is' if total == 1 else 'are'} sent to it "
            f"({shown}); to send {'it' if total == 1 else 'them'} to {scan.options.module}, "
            "empty that column or drop it")


@dataclass(frozen=True)
class _ScannedChunk:
    rows: int
    valid: np.ndarray  # positions of the valid rows
    invalid: int
    blank: int
    invalid_rows: pa.Table  # the invalid rows (``_INVALID_SCHEMA``, positions in the chunk)
    blank_at: np.ndarray  # positions of the blank rows
    record: np.ndarray  # uint64 ids of the valid rows
    cadence: np.ndarray  # index of each valid row into cadence_values
    cadence_values: np.ndarray  # uint64 value of each distinct cadence id (0 when invalid)
    modules: list[str]  # the chunk's module names, in order of first valid row ...
    module: np.ndarray  # ... and the index into them of each valid row


def _scan_chunk(cols: dict[str, Any], default_module: str | None) -> _ScannedChunk:
    """Validity, uint64 ids and module of every row: the same verdicts as ``_check``."""
    n = len(cols["record_id"])
    with ThreadPoolExecutor(1) as pool:  # Arrow's kernels release the GIL: work on both cores
        cadences = pool.submit(dictionary_ids, cols["cadence_id"])
        mod_index, mod_names, mod_ok = dictionary_modules(cols.get("module"), n,
                                                           default_module)
        record, rec_ok = record_ids(as_strings(cols["record_id"]), pool)
        cad_index, cad_values, cad_ok = cadences.result()
    said = [numpy_of(cols[key].is_null()) for key in ("ragged", "problem") if key in cols]
    valid_mask = all_of([ok for ok in (rec_ok, cad_ok, mod_ok, *said) if ok is not None])
    valid = np.arange(n, dtype=np.int32 if n < 1 << 31 else np.int64)  # half the memory
    bad = np.zeros(0, np.int64)
    blank = cols.get("blank")
    if valid_mask is not None and not valid_mask.all():
        valid = np.flatnonzero(valid_mask)
        bad = np.flatnonzero(~valid_mask if blank is None else ~valid_mask & ~blank)
        record, cad_index, mod_index = record[valid], cad_index[valid], mod_index[valid]
    modules, module = in_order_of_use(mod_index, mod_names)
    return _ScannedChunk(
        rows=n, valid=valid, invalid=len(bad),
        blank=0 if blank is None else int(np.count_nonzero(blank)),
        invalid_rows=_invalid_rows(cols, bad, default_module),
        blank_at=np.zeros(0, np.int64) if blank is None else np.flatnonzero(blank),
        record=record, cadence=cad_index, cadence_values=cad_values, modules=modules,
        module=module)


def _invalid_rows(cols: dict[str, Any], bad: np.ndarray, default_module: str | None
                  ) -> pa.Table:
    """The invalid rows at ``bad``, from the full check of those rows alone (they are few: the
    check is the costly part of a read)."""
    if not len(bad):
        return _INVALID_SCHEMA.empty_table()
    take = arrow_of(bad)
    raw = {key: col[bad] if isinstance(col, np.ndarray) else col.take(take)
           for key, col in cols.items()}
    raw.update({role: as_strings(raw[role]) for role in ("record_id", "cadence_id", "module")
                if role in raw})
    chk = _check(raw, 0, default_module)
    if chk.valid.any() or chk.blank is not None:
        raise RuntimeError("reader: the scan and the check disagree on a row")
    t = chk.table
    return pa.Table.from_arrays([
        arrow_of(bad.astype(np.int64)), *(pc.cast(t[c], pa.string()) for c in
                                          ("module", "record_id", "cadence_id")),
        _sparse_strings(len(bad), chk.codes), _sparse_strings(len(bad), chk.reasons),
    ], schema=_INVALID_SCHEMA)


def _finish_scan(source: Source, options: InputOptions, stamp: Stamp,
                 rows: int, invalid: int, examples: tuple, pair_rows: np.ndarray,
                 rec: np.ndarray, cad: np.ndarray, cad_values: np.ndarray, mod: np.ndarray,
                 names: list[str], found: dict[str, Any]) -> InputScan:
    """Codes and duplicates of the valid rows: a pair that repeats is not a pair to plan.

    ``cad`` indexes ``cad_values`` (distinct uint64 cadence ids). Rows whose id the rounding
    rule refuses are taken out first (and the rest scanned again: that is rare)."""
    def refuse(bad: np.ndarray, found_now: dict[str, Any], rec: np.ndarray) -> InputScan:
        """The scan again without the rows ``bad`` refuses as rounded (``rec``: their ids)."""
        row_of = _row_of(found.get("position_rows"))
        more = tuple((row_of(int(p)), rounded_reason(what, int(v))) for p, what, v in
                     _rounded_examples(pair_rows, bad, rec, cad, cad_values, found_now,
                                       10 - len(examples)))
        keep = ~bad
        refused = _rounded_rows(pair_rows[bad], rec[bad], cad_values[cad[bad]], mod[bad], names,
                                found_now["rounded_records"])
        return _finish_scan(
            source, options, stamp, rows, invalid + int(np.count_nonzero(bad)),
            examples + more, pair_rows[keep], rec[keep], cad[keep], cad_values, mod[keep],
            names, {**found, **found_now, "rounded": int(np.count_nonzero(bad)),
                    "invalid_rows": _by_position(found["invalid_rows"], refused)})

    with ThreadPoolExecutor(1) as pool:
        rc, rec_uniques, grouping = encode_parts(rec, pool)
        coding = pool.submit(cadence_codes, cad, len(cad_values), mod, len(names))
        if "rounded" not in found:
            refused = _rounded(rc, rec_uniques, cad, cad_values,
                               typed=found["records"] is not None)
            if refused is not None and refused[0] is None:  # only a warning to give
                found = {**found, **refused[1]}
            elif refused is not None:
                return refuse(*refused, rec)
        del rec
        cc, used = coding.result()
        cad_text = pc.cast(arrow_of(cad_values[used % len(cad_values)], pa.uint64()),
                           pa.string())
        cad_module = used // len(cad_values)
        n_rec, n_cad = len(rec_uniques), len(cad_text)
        masks, dup = masks_and_repeats(rc, cc, n_rec, n_cad,
                                        grouping.by_code(cc, pool) if grouping else None)
        if dup is not None and "rounded" not in found:
            collapsed = _collapsed(source, options, found, pair_rows, dup,
                                   rec_uniques[rc[dup.at]], cad_values[cad[dup.at]])
            if collapsed is not None:
                bad, found_now = _rounded_by(collapsed[:2], rec_uniques, rc, cad, cad_values,
                                             found.get("unusual_ids", ()))
                return refuse(bad, {**found_now, "collapsed": collapsed[2]}, rec_uniques[rc])
        dup_rows = dup_first = np.zeros(0, dtype=np.int64)
        if dup is not None:  # a repeated pair is not a pair to plan (masks leave it out)
            dup_rows, dup_first = pair_rows[dup.at], pair_rows[dup.earlier]
            keep = np.ones(len(rc), dtype=bool)
            keep[dup.at] = False
            mask = arrow_of(keep)
            (pair_rows, rc), (cc, mod) = both(lambda *arrays: [kept(a, mask) for a in arrays],
                                              [(pair_rows, rc), (cc, mod)], pool)
    return InputScan(
        source=source, options=options, rows=rows, invalid=invalid,
        invalid_examples=examples, pair_rows=pair_rows,
        codes=PairCodes(mod, names, rc, cc), record_values=rec_uniques,
        cadence_text=cad_text, dup_rows=dup_rows, dup_first=dup_first, stamp=stamp,
        cadence_modules=cad_module, record_masks=masks, **found)


def _rounded(rc: np.ndarray, rec_uniques: np.ndarray, cad: np.ndarray, cad_values: np.ndarray,
             typed: bool = False) -> tuple[np.ndarray | None, dict[str, Any]] | None:
    """(valid rows to refuse, the refused record and cadence ids) when the record or the
    cadence column shows spreadsheet rounding; (None, the unusual ids to warn of) when one only
    looks odd; else None. ``typed``: the cadences are a record list's (``--cadence`` ids, or
    the org's own): no spreadsheet held them, so only the records are judged."""
    used = cad_values[np.bincount(cad, minlength=len(cad_values)) > 0]
    (records, odd_records), (cadences, odd_cadences) = (
        rounding_evidence(rec_uniques), (None, None) if typed else rounding_evidence(used))
    unusual = tuple(str(v) for odd in (odd_records, odd_cadences) if odd is not None
                    for v in odd.tolist())
    if records is None and cadences is None:
        return (None, {"unusual_ids": unusual}) if unusual else None
    bad = np.zeros(len(rc), dtype=bool)
    if records is not None:
        bad |= among(rec_uniques, records)[rc]
    if cadences is not None:
        bad |= among(cad_values, cadences)[cad]
    return bad, {"rounded_records": _NO_IDS if records is None else records,
                 "rounded_cadences": _NO_IDS if cadences is None else cadences,
                 "unusual_ids": unusual}


def _collapsed(source: Source, options: InputOptions, found: dict[str, Any],
               pair_rows: np.ndarray, dup: Repeats, rec: np.ndarray, cad: np.ndarray
               ) -> tuple[bool, bool, str] | None:
    """(record ids, cadence ids, the first evidence in words): which column shows distinct rows
    collapsed onto one id by a spreadsheet — a repeated pair whose id ends in the zeros
    rounding leaves, on a row whose other columns say otherwise (another name, another email:
    two people, one id); None when no column does. A value empty on either row contradicts
    nothing. ``rec``, ``cad``: the ids of each repeating row (``dup.at``). Reads the input's
    other columns again, only when such a repeat exists (genuine ids seldom end in those
    zeros)."""
    tailed_rec, tailed_cad = zero_tailed(rec), zero_tailed(cad)
    if found["records"] is not None:  # a record list's cadences held by no spreadsheet
        tailed_cad[:] = False
    suspect = np.flatnonzero(tailed_rec | tailed_cad)
    if not len(suspect):
        return None
    carried = carried_columns(source.path, options, found["records"], source)
    if carried is None:  # nothing but the ids: the rows cannot be told apart
        return None
    blank = found["blank_rows"]
    later, first = pair_rows[dup.at[suspect]], pair_rows[dup.earlier[suspect]]
    # the other columns leave out blank rows: a position's place among them
    later, first = (p - np.searchsorted(blank, p) for p in (later, first))
    want = np.unique(np.concatenate([later, first]))
    values: dict[int, tuple[str, ...]] = {}
    at = 0
    for table in carried.tables():
        lo, hi = np.searchsorted(want, [at, at + table.num_rows])
        if hi > lo:
            got = table.take(arrow_of(want[lo:hi] - at))
            texts = zip(*(c.to_pylist() for c in got.columns), strict=True)
            values.update(zip(want[lo:hi].tolist(), texts, strict=True))
        at += table.num_rows
    def conflict(a: int, b: int) -> str | None:  # the first column the two rows disagree on
        for name, x, y in zip(carried.names, values[a], values[b], strict=True):
            x, y = (x or "").strip(), (y or "").strip()
            if x and y and x != y:
                return name
        return None

    differ = [conflict(a, b) for a, b in zip(later.tolist(), first.tolist(), strict=True)]
    hit = np.array([d is not None for d in differ], dtype=bool)
    if not hit.any():
        return None
    i = int(np.flatnonzero(hit)[0])
    row_of = _row_of(found.get("position_rows"))
    ids = f"{int(rec[suspect[i]])}" if tailed_rec[suspect[i]] else f"{int(cad[suspect[i]])}"
    seen = (f"rows {row_of(int(pair_rows[dup.earlier[suspect[i]]]))} and "
            f"{row_of(int(pair_rows[dup.at[suspect[i]]]))} give {ids} with another "
            f"{differ[i]!r}: two records made one")
    return bool(tailed_rec[suspect][hit].any()), bool(tailed_cad[suspect][hit].any()), seen


def _rounded_by(collapsed: tuple[bool, bool], rec_uniques: np.ndarray, rc: np.ndarray,
                cad: np.ndarray, cad_values: np.ndarray, unusual: tuple[str, ...]
                ) -> tuple[np.ndarray, dict[str, Any]]:
    """(rows to refuse, the refused ids): every id that may be rounded, in each column that
    showed rows collapsed onto one id."""
    records = np.sort(rec_uniques[zero_tailed(rec_uniques)]) if collapsed[0] else _NO_IDS
    cadences = np.sort(cad_values[zero_tailed(cad_values)]) if collapsed[1] else _NO_IDS
    bad = among(rec_uniques, records)[rc] | among(cad_values, cadences)[cad]
    refused = {str(v) for v in (*records.tolist(), *cadences.tolist())}
    return bad, {"rounded_records": records, "rounded_cadences": cadences,
                 "unusual_ids": tuple(u for u in unusual if u not in refused)}


def _rounded_examples(pair_rows: np.ndarray, bad: np.ndarray, rec: np.ndarray, cad: np.ndarray,
                      cad_values: np.ndarray, found: dict[str, np.ndarray], n: int
                      ) -> Iterator[tuple[int, str, int]]:
    """(position, "record id" or "cadence id", id) of the first ``n`` refused rows."""
    first = np.flatnonzero(bad)[:max(n, 0)]
    by_record = among(rec[first], found["rounded_records"])
    for i, record in zip(first.tolist(), by_record.tolist(), strict=True):
        if record:
            yield int(pair_rows[i]), "record id", int(rec[i])
        else:
            yield int(pair_rows[i]), "cadence id", int(cad_values[cad[i]])


def _rounded_rows(positions: np.ndarray, record: np.ndarray, cadence: np.ndarray,
                  module: np.ndarray, names: list[str], rounded_records: np.ndarray
                  ) -> pa.Table:
    """The rows the rounding rule refuses, as invalid rows: the record id named first."""
    by_record = among(record, rounded_records)
    value = np.where(by_record, record, cadence)
    what = pa.DictionaryArray.from_arrays(arrow_of(by_record.astype(np.int8)),
                                          pa.array(["cadence id ", "record id "]))
    text = [pc.cast(arrow_of(v, pa.uint64()), pa.string()) for v in (record, cadence)]
    n = len(positions)
    return pa.Table.from_arrays([
        arrow_of(positions.astype(np.int64)),
        pc.take(pa.array(names, pa.string()), arrow_of(module)), *text,
        pa.array([ROUNDED_ID] * n, pa.string()),
        pc.binary_join_element_wise(pc.cast(what, pa.string()),
                                    pc.cast(arrow_of(value, pa.uint64()), pa.string()),
                                    _ROUNDED, ""),
    ], schema=_INVALID_SCHEMA)


def _by_position(*tables: pa.Table) -> pa.Table:
    both = pa.concat_tables(tables)
    return both.take(pc.sort_indices(both["position"]))


def _row_of(position_rows: np.ndarray | None) -> Callable[[int], int]:
    if position_rows is None:
        return lambda p: p + 1
    return lambda p: int(position_rows[p])


@dataclass
class _Checked:
    """One batch of rows after validation, before duplicates (which need the whole file)."""

    table: pa.Table  # row, module, record_id, cadence_id (cleaned)
    valid: np.ndarray
    codes: dict[int, str]  # position → code, for invalid rows
    reasons: dict[int, str]  # position → why
    blank: np.ndarray | None  # rows that are not data rows (no result), None when none are


def _check(raw: dict[str, Any], row0: int, default_module: str | None) -> _Checked:
    n = len(raw["record_id"])
    record, rec_ok = clean_ids(raw["record_id"])
    cadence, cad_ok = clean_ids(raw["cadence_id"])
    module, module_bad = module_column(raw, n, default_module)
    problems = id_reasons(cadence, ~cad_ok, "cadence id")
    problems.update(id_reasons(record, ~rec_ok, "record id"))  # the record's reason comes first
    given = None  # a module name given but not a module's: shown as written, as ids are
    if "module" in raw and module_bad.any():
        given = pc.utf8_trim_whitespace(pc.cast(raw["module"], pa.string()))
        named = pc.and_(arrow_of(module_bad), pc.greater(pc.binary_length(given), 0))
        module = pc.if_else(pc.fill_null(named, False), given, module)
    for i in np.flatnonzero(module_bad & rec_ok & cad_ok).tolist():
        problems[i] = ("INVALID_INPUT", "missing module (add a module column or pass --module)")
        name = given[i].as_py() if given is not None else None
        if name:
            problems[i] = ("INVALID_INPUT", error_value_reason(
                "module name", name, "a module") or f"bad module name: {_shown(name)} is not "
                "a Zoho module API name (Leads, Contacts, Deals…)")
    valid = rec_ok & cad_ok & ~module_bad
    for key, prefix in (("problem", ""), ("ragged", "ragged row: ")):
        said = raw.get(key)
        if said is None or said.null_count == len(said):
            continue
        at = np.flatnonzero(numpy_of(said.is_valid()))
        valid[at] = False
        for i, why in zip(at.tolist(), said.take(arrow_of(at)).to_pylist(), strict=True):
            problems[i] = ("INVALID_INPUT", f"{prefix}{why}")
    blank = raw.get("blank")
    if blank is not None and blank.any():
        valid &= ~blank
        for i in np.flatnonzero(blank).tolist():
            problems.pop(i, None)
    else:
        blank = None
    rows = raw.get("row")
    table = pa.table({
        "row": arrow_of(np.arange(row0 + 1, row0 + n + 1, dtype=np.int64) if rows is None
                        else rows.astype(np.int64)),
        "module": module, "record_id": record, "cadence_id": cadence,
    })
    return _Checked(table, valid, {i: c for i, (c, _) in problems.items()},
                    {i: r for i, (_, r) in problems.items()}, blank)


def _shown(text: str, limit: int = 60) -> str:
    """A user's text quoted for a message, cut when long."""
    return repr(text if len(text) <= limit else text[:limit] + "…")


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

