"""Id and module text → validity, canonical values and the reason a row is invalid.

Ids are read as strings from the first byte, so no 19-digit id ever passes through a float."""

from __future__ import annotations

import re
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from ..arrays import arrow_of, both, numpy_of, strings_of
from ..hashing import HALVES_MIN, take
from .codes import first_of_code
from .formats import as_strings
from .rounding import EXPORT_AS_TEXT, ROUNDED_ID

_CANONICAL_MODULES = {m.lower(): m for m in ("Leads", "Contacts", "Deals", "Vendors")}


_MODULE_RE = re.compile(r"^[A-Za-z][A-Za-z0-9_]{0,99}$")


#: a number as a spreadsheet writes it (a decimal comma in European locales): 1.99012E+18
_SCI_RE = r"^[+-]?[0-9]+([.,][0-9]*)?[eE][+-]?[0-9]+$"
#: a number a spreadsheet wrote in a number format with digit groups (``#,##0``), in any
#: locale's separator (, . space, no-break spaces, ')
_GROUPED_RE = re.compile(
    r"^[1-9][0-9]{0,2}(?P<sep>[,. \u00a0\u202f'])[0-9]{3}(?:(?P=sep)[0-9]{3})+$")


def canonical_module(name: str) -> str | None:
    """The module's API name, or None when it cannot be one (keeps URLs safe from odd input)."""
    name = name.strip()
    if not _MODULE_RE.match(name):
        return None
    return _CANONICAL_MODULES.get(name.lower(), name)


def module_key(name: str) -> str:
    """What makes two module names one module: Zoho matches a module's API name ignoring case
    (``partners__c`` is ``Partners__c``), so a pair under both spellings is one pair, once."""
    return name.casefold()


def all_of(masks: list[np.ndarray]) -> np.ndarray | None:
    """The rows every mask keeps (None when there is no mask: every row)."""
    if not masks:
        return None
    out = masks[0].copy() if len(masks) > 1 else masks[0]
    for m in masks[1:]:
        out &= m
    return out


def record_ids(col: pa.ChunkedArray | pa.Array, pool: ThreadPoolExecutor
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
    if bounds[-1] < HALVES_MIN or not 0 < half < len(chunks):
        return values, None if parse(0, len(chunks)) else ok
    clean = all(both(parse, [(0, half), (half, len(chunks))], pool))
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
        cleaned, good = clean_ids(col)
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


def dictionary(col: Any) -> tuple[np.ndarray, pa.Array]:
    """(index per row, -1 for null; distinct values as strings) of a column. Chunks of a
    dictionary column each have their own dictionary (Parquet row groups, CSV blocks): only
    the dictionaries are hashed, and each chunk's indices are mapped into one array."""
    chunks = col.chunks if isinstance(col, pa.ChunkedArray) else [col]
    if not pa.types.is_dictionary(col.type):
        chunks = [pc.dictionary_encode(as_strings(c)) for c in chunks]
    dicts = [as_strings(c.dictionary) for c in chunks]
    enc = (pa.concat_arrays(dicts) if dicts else strings_of([])).dictionary_encode()
    codes = numpy_of(enc.indices)
    index = np.empty(sum(len(c) for c in chunks), dtype=np.int32)
    at = lo = 0
    for chunk, d in zip(chunks, dicts, strict=True):
        lut = np.append(codes[lo:lo + len(d)], np.int32(-1))  # the last entry: null
        ix = chunk.indices
        if ix.null_count:
            ix = pc.fill_null(ix, arrow_of(np.full(1, len(d)))[0].cast(ix.type))
        index[at:at + len(chunk)] = take(lut, numpy_of(ix))
        at += len(chunk)
        lo += len(d)
    return index, enc.dictionary


def dictionary_ids(col: Any) -> tuple[np.ndarray, np.ndarray, np.ndarray | None]:
    """(index per row into values, uint64 value of each distinct id (0 when invalid), valid
    per row or None when all are): a column of few distinct ids is validated and parsed once
    per distinct id."""
    index, values = dictionary(col)
    cleaned, ok = clean_ids(values)
    parsed = np.zeros(len(ok), dtype=np.uint64)
    if ok.any():
        parsed[ok] = numpy_of(pc.cast(cleaned.filter(arrow_of(ok)), pa.uint64()))
    if ok.all() and (not len(index) or index.min() >= 0):
        return index, parsed, None
    ok = np.append(ok, False)  # index -1 (null) lands on this
    return index, parsed, ok[index]


def dictionary_modules(col: Any, n: int, default_module: str | None
                        ) -> tuple[np.ndarray, list[str | None], np.ndarray | None]:
    """(index per row into names; names, the last for a null; valid per row or None when all
    are: a missing or malformed module without --module is invalid)."""
    default = canonical_module(default_module) if default_module else None
    if col is None:
        return (np.zeros(n, dtype=np.int32), [default, None],
                None if default else np.zeros(n, bool))
    index, values = dictionary(col)
    names = [canonical_module(v) if v.strip() else default for v in values.to_pylist()]
    names.append(default)  # null
    ok = np.array([m is not None for m in names])
    # the last name (a null's) is only used by null rows: without them, no pass over the rows
    if ok[:-1].all() and (ok[-1] or not len(index) or index.min() >= 0):
        return index, names, None
    return np.where(ok[index], index, 0), names, ok[index]


def in_order_of_use(index: np.ndarray, names: list[str | None]) -> tuple[list[str], np.ndarray]:
    """Distinct names of the valid rows in order of first row, and each row's index into them
    (the order modules were always numbered in). ``index``: into ``names``, -1 for a null (a
    row that takes ``--module``: the last of ``names``)."""
    if not len(index):
        return [], np.zeros(0, np.int32)
    no_null = index.min() >= 0
    first = first_of_code(index, len(names), len(names) - 1 if no_null else None)
    order = np.flatnonzero(first < len(index))
    order = order[np.argsort(first[order], kind="stable")]
    out: dict[str, int] = {}  # module_key → number
    spelled: list[str] = []
    local = np.zeros(len(names), dtype=np.int32)
    for i in order.tolist():
        local[i] = out.setdefault(module_key(names[i]), len(out))  # type: ignore[arg-type]
        if len(spelled) < len(out):
            spelled.append(names[i])  # type: ignore[arg-type]
    if no_null and len(out) == len(order) and np.array_equal(order, np.arange(len(out))):
        return spelled, index  # numbered as they come: keep the column as it is
    # Arrow's take refuses -1: a null (a Parquet row without a module) is then numpy's
    return spelled, take(local, index) if no_null else local[index]


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


def clean_ids(col: pa.ChunkedArray) -> tuple[pa.Array, np.ndarray]:
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


#: the error values a spreadsheet shows (and writes to CSV) for a formula that failed, and
#: what each most often means
EXCEL_ERRORS = {
    "#N/A": "a lookup such as VLOOKUP or XLOOKUP found nothing",
    "#REF!": "a formula refers to a cell or sheet that was deleted",
    "#VALUE!": "a formula got a value of the wrong type",
    "#NAME?": "a formula names a function or range that does not exist",
    "#DIV/0!": "a division by zero",
    "#NUM!": "a number out of range",
    "#NULL!": "two ranges that do not meet",
    "#SPILL!": "a formula's results had no room to spill",
    "#CALC!": "a formula could not be calculated",
    "#GETTING_DATA": "the value was still being fetched when the file was saved",
    "#FIELD!": "a data type has no such field",
    "#BLOCKED!": "a blocked external connection",
    "#CONNECT!": "an external source could not be reached",
    "#BUSY!": "the value was still being calculated when the file was saved",
    "#UNKNOWN!": "a data type this version of the spreadsheet does not know",
}


def error_value_reason(what: str, value: str, wanted: str) -> str | None:
    """Why ``value`` is unusable when it is a spreadsheet's error value (``#N/A``), else None."""
    meaning = EXCEL_ERRORS.get(value.strip().upper())
    if meaning is None:
        return None
    return (f"bad {what}: {value!r} is a spreadsheet error value, not {wanted} ({meaning}); "
            f"fix the formula, or put the {what} itself in the cell, and run these rows again")


def id_reasons(col: pa.ChunkedArray, bad: np.ndarray, what: str
               ) -> dict[int, tuple[str, str]]:
    """Row index → (code, why its id is unusable), for the (few) rows flagged bad: a number
    a spreadsheet wrote in scientific notation is ``ROUNDED_ID``, anything else
    ``INVALID_INPUT``."""
    idx = np.flatnonzero(bad)
    if not len(idx):
        return {}
    reasons = {}
    for i, v in zip(idx.tolist(), col.take(arrow_of(idx)).to_pylist(), strict=True):
        code = "INVALID_INPUT"
        if v == "":
            reason = f"missing {what}"
        elif v.isascii() and v.isdigit() and v.startswith("0") and 15 <= len(v) <= 19:
            reason = f"bad {what}: {v!r} starts with 0, which a Zoho id never does"
        elif re.match(_SCI_RE, v) or re.match(r"^[0-9]+[.,][0-9]+$", v):
            code = ROUNDED_ID
            reason = (f"bad {what}: {v!r} is a number rounded by a spreadsheet (it keeps 15 "
                      f"significant digits); {EXPORT_AS_TEXT}")
        elif _GROUPED_RE.match(v) and len(re.sub(r"[^0-9]", "", v)) > 15:
            # a number cell formatted with thousands separators: kept to 15 digits, like any
            code = ROUNDED_ID
            reason = (f"bad {what}: {v!r} is a number a spreadsheet wrote with digit groups "
                      f"(it keeps 15 significant digits of a number); {EXPORT_AS_TEXT}")
        elif error := error_value_reason(what, v, "an id"):
            reason = error
        elif v.startswith("="):
            # a workbook a program wrote keeps no formula's value; a CSV's ="…" is text
            # (Excel's way to keep an id as text): either way, the id alone is what to give
            reason = (f"bad {what}: {v!r} is a formula, not its value; give the id itself "
                      "(a workbook a program wrote keeps no formula's value: open and save it "
                      "in Excel or LibreOffice, or paste the ids as values), and run these "
                      "rows again")
        else:
            reason = f"bad {what}: {v!r} is not a 15-19 digit Zoho id"
        reasons[i] = (code, reason)
    return reasons


def module_column(raw: dict, n: int, default_module: str | None) -> tuple[pa.Array, np.ndarray]:
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

