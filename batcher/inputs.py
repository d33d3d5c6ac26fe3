"""CSV/Parquet → one normalised row per input data row: valid pair, ``invalid`` or ``duplicate``.

Everything is columnar (pyarrow + numpy) because inputs reach tens of millions of rows, and ids are
read as strings from the first byte so that no 19-digit id ever passes through a float.
"""

from __future__ import annotations

import csv
import hashlib
import os
import re
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.csv as pacsv
import pyarrow.parquet as pq

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


@dataclass(frozen=True)
class InputTable:
    """The reader's verdict on every data row, in input order.

    ``table`` columns: row (1-based), module, record_id, cadence_id, status (valid / invalid /
    duplicate), code (for invalid rows), reason (why invalid, or which row it repeats).
    """

    path: Path
    table: pa.Table
    columns_found: tuple[str, ...]
    _valid_mask: np.ndarray = field(repr=False)
    #: codes of the valid rows, in the order of valid_arrays()
    codes: PairCodes | None = field(default=None, repr=False)

    @property
    def rows(self) -> int:
        return self.table.num_rows

    def count(self, status: str) -> int:
        return int(pc.sum(pc.equal(self.table["status"], status)).as_py() or 0)

    def valid_arrays(self) -> tuple[pa.ChunkedArray, pa.ChunkedArray, pa.ChunkedArray]:
        """(module, record_id, cadence_id) of the valid, first-seen pairs, in input order."""
        valid = self.table.filter(pa.array(self._valid_mask))
        return valid["module"], valid["record_id"], valid["cadence_id"]

    def valid_pairs(self) -> Iterator[tuple[str, str, str]]:
        module, record, cadence = self.valid_arrays()
        yield from zip(module.to_pylist(), record.to_pylist(), cadence.to_pylist(), strict=True)

    def valid_row_indices(self) -> np.ndarray:
        """0-based positions in ``table`` of the valid rows (same order as valid_arrays)."""
        return np.flatnonzero(self._valid_mask)

    def fingerprint(self) -> str:
        """Content hash of the input: a journal is bound to the exact bytes it was made from."""
        with open(self.path, "rb") as fh:
            return hashlib.file_digest(fh, "sha256").hexdigest()


def read_input(path: str | os.PathLike[str], default_module: str | None = None) -> InputTable:
    """Read and validate an input file; raise InputError when the file as a whole is unusable."""
    path = Path(path)
    if default_module is not None and canonical_module(default_module) is None:
        raise InputError(f"--module {default_module!r} is not a valid Zoho module API name")
    raw, found = _read_raw(path)
    if len(raw["record_id"]) == 0:
        raise InputError(f"{path}: has a header ({', '.join(found)}) but no data rows")
    return _validate(path, raw, found, default_module)


# --------------------------------------------------------------------------- reading


def _read_raw(path: Path) -> tuple[dict[str, pa.ChunkedArray], tuple[str, ...]]:
    if not path.exists():
        raise InputError(f"{path}: no such file")
    if path.is_dir():
        raise InputError(f"{path}: is a directory, not a CSV or Parquet file")
    try:
        with open(path, "rb") as fh:
            head = fh.read(_SNIFF_BYTES)
            fh.seek(0, os.SEEK_END)
            size = fh.tell()
    except OSError as exc:
        raise InputError(f"{path}: cannot be read ({exc.strerror})") from None
    if not head.strip(b"\xef\xbb\xbf \t\r\n"):
        raise InputError(f"{path}: the file is empty")
    if head.startswith(_PARQUET_MAGIC) or path.suffix.lower() in (".parquet", ".pq"):
        return _read_parquet(path, head, size)
    if b"\x00" in head:
        raise InputError(f"{path}: is not UTF-8 text (it contains NUL bytes: a binary file or "
                         "UTF-16 text); save it as 'CSV UTF-8' or Parquet")
    return _read_csv(path, head)


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


def _read_parquet(path: Path, head: bytes, size: int) -> tuple[dict, tuple[str, ...]]:
    try:
        pf = pq.ParquetFile(path)
        names = pf.schema_arrow.names
        roles = _require_columns(path, names)
        table = pf.read(columns=list(roles.values()))
    except InputError:
        raise
    except Exception as exc:  # pyarrow raises several types for damaged files
        what = "truncated or damaged" if head.startswith(_PARQUET_MAGIC) else "not a Parquet file"
        raise InputError(f"{path}: {what} ({type(exc).__name__}: {_excerpt(exc)})") from None
    return {role: _as_strings(table[name]) for role, name in roles.items()}, tuple(names)


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


def _read_csv(path: Path, head: bytes) -> tuple[dict, tuple[str, ...]]:
    delimiter = _sniff_delimiter(head)
    parse = pacsv.ParseOptions(delimiter=delimiter, newlines_in_values=False)
    try:
        header = pacsv.open_csv(
            path, parse_options=parse,
            convert_options=pacsv.ConvertOptions(column_types={}, include_columns=[]),
        ).schema.names
    except (pa.ArrowInvalid, OSError, UnicodeDecodeError) as exc:
        raise InputError(f"{path}: not a readable CSV file ({_excerpt(exc)})") from None
    header = [h.lstrip("\ufeff") for h in header]
    roles = _require_columns(path, header)
    wanted = list(dict.fromkeys(roles.values()))
    convert = pacsv.ConvertOptions(
        column_types={n: pa.string() for n in wanted}, include_columns=wanted,
        strings_can_be_null=False, quoted_strings_can_be_null=False,
    )
    try:
        table = pacsv.read_csv(
            path, read_options=pacsv.ReadOptions(block_size=1 << 23),
            parse_options=parse, convert_options=convert,
        )
    except pa.ArrowInvalid as exc:
        msg = _excerpt(exc, 300)
        if "UTF8" in str(exc) or "utf8" in str(exc).lower():
            msg = "it is not UTF-8 text; save it as 'CSV UTF-8'"
        raise InputError(f"{path}: cannot be read as CSV: {msg}") from None
    return {role: table[name] for role, name in roles.items()}, tuple(header)


# --------------------------------------------------------------------------- validation


def _clean(col: pa.Array) -> pa.Array:
    col = pc.utf8_trim_whitespace(pc.fill_null(col, ""))
    prefixed = pc.starts_with(col, "zcrm_")
    if pc.any(prefixed).as_py():
        col = pc.if_else(prefixed, pc.utf8_slice_codeunits(col, 5), col)
    return col


def _id_ok(col: pa.Array | pa.ChunkedArray) -> np.ndarray:
    length = pc.utf8_length(col)
    ok = pc.and_(pc.and_(pc.greater_equal(length, 15), pc.less_equal(length, 19)),
                 pc.ascii_is_decimal(col))
    return pc.fill_null(ok, False).to_numpy(zero_copy_only=False).astype(bool, copy=False)


def _clean_ids(col: pa.ChunkedArray) -> tuple[pa.Array, np.ndarray]:
    """Trimmed, ``zcrm_``-free ids and which are valid. Only the rows that fail as they stand
    are cleaned: a clean file of tens of millions of ids is not copied twice for nothing."""
    col = col.combine_chunks() if isinstance(col, pa.ChunkedArray) else col
    ok = _id_ok(col)
    if ok.all():
        return col, ok
    bad = np.flatnonzero(~ok)
    fixed = _clean(col.take(pa.array(bad)))
    col = pc.replace_with_mask(col, pa.array(~ok), fixed)
    ok[bad] = _id_ok(fixed)
    return col, ok


def _id_reasons(col: pa.ChunkedArray, bad: np.ndarray, what: str) -> dict[int, str]:
    """Row index → why its id is unusable, for the (few) rows flagged bad."""
    idx = np.flatnonzero(bad)
    if not len(idx):
        return {}
    reasons = {}
    for i, v in zip(idx.tolist(), col.take(pa.array(idx)).to_pylist(), strict=True):
        if v == "":
            reasons[i] = f"missing {what}"
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
        return pa.array(np.full(n, default, dtype=object), pa.string()), np.zeros(n, dtype=bool)
    col = pc.utf8_trim_whitespace(pc.fill_null(raw["module"], "")).combine_chunks()
    enc = col.dictionary_encode()
    names = [canonical_module(v) if v else default for v in enc.dictionary.to_pylist()]
    table = pa.array(names, pa.string())
    modules = table.take(enc.indices)
    return modules, ~pc.is_valid(modules).to_numpy(zero_copy_only=False)


def _codes(values: np.ndarray) -> tuple[np.ndarray, int]:
    codes, uniques = pd.factorize(values, sort=False)
    return codes.astype(np.int64, copy=False), len(uniques)


@dataclass(frozen=True)
class PairCodes:
    """Integer codes of the valid pairs (module, record, cadence), as the planner takes them."""

    module: np.ndarray
    module_names: list[str]
    record: np.ndarray
    cadence: np.ndarray

    def filter(self, keep: np.ndarray) -> PairCodes:
        return PairCodes(self.module[keep], self.module_names, self.record[keep],
                         self.cadence[keep])


def _suspects(key: np.ndarray, rc: np.ndarray, n_rec: int, n_cad: int) -> np.ndarray | None:
    """Positions that may repeat an earlier pair: none (None) when every key is distinct.

    One scatter into a bitmap of all (cadence, record) combinations tells whether anything
    repeats and, per record, how many distinct cadences it has; only the rows of records with
    fewer distinct cadences than rows need the (costly) hashing.
    """
    if n_cad * n_rec > max(8 * len(key), 1 << 26):
        return np.arange(len(key))  # the bitmap would be too big: hash everything
    seen = np.zeros(n_cad * n_rec, dtype=np.bool_)
    seen[key] = True
    if int(np.count_nonzero(seen)) == len(key):
        return None
    distinct = seen.reshape(n_cad, n_rec).sum(axis=0)
    return np.flatnonzero((np.bincount(rc, minlength=n_rec) != distinct)[rc])


def _duplicates(module: pa.Array, record: pa.Array, cadence: pa.Array, valid: np.ndarray
                ) -> tuple[np.ndarray, PairCodes]:
    """For each row, the 0-based index of the earlier row with the same valid pair (else -1),
    and the codes of the valid rows.

    Ids are 15-19 digits, so they parse exactly into uint64; hashing integers is far cheaper
    than hashing tens of millions of strings, and the codes are handed on to the planner so
    nothing is hashed twice.
    """
    first_of = np.full(len(valid), -1, dtype=np.int64)
    idx = np.flatnonzero(valid)
    if len(idx) < len(valid):
        take = pa.array(idx)
        module, record, cadence = module.take(take), record.take(take), cadence.take(take)
    mod = pc.dictionary_encode(module)
    mod = mod.combine_chunks() if isinstance(mod, pa.ChunkedArray) else mod
    mc, first_index = pd.factorize(mod.indices.to_numpy(zero_copy_only=False), sort=False)
    mc, n_mod = mc.astype(np.int64, copy=False), len(first_index)
    names = [str(mod.dictionary[int(i)]) for i in first_index]
    cc, n_cad = _codes(pc.cast(cadence, pa.uint64()).to_numpy())
    rc, n_rec = _codes(pc.cast(record, pa.uint64()).to_numpy())
    if n_mod > 1:  # (module, cadence) combinations that occur: at most one per row
        cc, n_cad = _codes(mc * n_cad + cc)
    codes = PairCodes(mc, names, rc, cc)
    if len(idx) < 2:
        return first_of, codes
    key = cc * n_rec + rc  # < rows * records: fits in int64 for any input that fits in memory
    sub = _suspects(key, rc, n_rec, n_cad)
    if sub is None:
        return first_of, codes
    pair, n_pairs = _codes(key[sub])
    first = np.empty(n_pairs, dtype=np.int64)
    first[pair[::-1]] = sub[::-1]  # the last write wins: the earliest row of each pair
    earlier = first[pair]
    dup = earlier != sub
    first_of[idx[sub[dup]]] = idx[earlier[dup]]
    return first_of, codes


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


def _with_duplicate_reasons(reason: pa.Array, first_of: np.ndarray, duplicate: np.ndarray
                            ) -> pa.Array:
    if not duplicate.any():
        return reason
    text = pc.binary_join_element_wise(
        "same pair as row ", pc.cast(pa.array(first_of[duplicate] + 1), pa.string()), "")
    return pc.replace_with_mask(reason, pa.array(duplicate), text)


def _validate(path: Path, raw: dict, found: tuple[str, ...], default_module: str | None
              ) -> InputTable:
    n = len(raw["record_id"])
    record, rec_ok = _clean_ids(raw["record_id"])
    cadence, cad_ok = _clean_ids(raw["cadence_id"])
    module, module_bad = _modules(raw, n, default_module)

    valid = rec_ok & cad_ok & ~module_bad
    first_of, codes = _duplicates(module, record, cadence, valid)
    duplicate = first_of >= 0
    if duplicate.any():
        codes = codes.filter(~duplicate[valid])
    valid &= ~duplicate

    reasons = _id_reasons(cadence, ~cad_ok, "cadence id")
    reasons.update(_id_reasons(record, ~rec_ok, "record id"))  # the record's reason comes first
    for i in np.flatnonzero(module_bad & rec_ok & cad_ok).tolist():
        reasons[i] = "missing module (add a module column or pass --module)"
        if "module" in raw and (raw["module"][i].as_py() or "").strip():
            reasons[i] = "bad module name (not a Zoho module API name)"
    invalid_rows = list(reasons)

    status_idx = np.where(valid, 0, np.where(duplicate, 2, 1)).astype(np.int8)
    status = pc.cast(pa.DictionaryArray.from_arrays(
        pa.array(status_idx), pa.array([VALID, INVALID, DUPLICATE])), pa.string())
    table = pa.table({
        "row": pa.array(np.arange(1, n + 1, dtype=np.int64)),
        "module": module,
        "record_id": record,
        "cadence_id": cadence,
        "status": status,
        "code": _sparse_strings(n, dict.fromkeys(invalid_rows, "INVALID_INPUT")),
        "reason": _with_duplicate_reasons(_sparse_strings(n, reasons), first_of, duplicate),
    })
    return InputTable(path=path, table=table, columns_found=found, _valid_mask=valid,
                      codes=codes)
