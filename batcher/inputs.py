"""CSV/Parquet → one normalised row per input data row: valid pair, ``invalid`` or ``duplicate``.

Everything is columnar (pyarrow + numpy) because inputs reach tens of millions of rows, and ids are
read as strings from the first byte so that no 19-digit id ever passes through a float.
"""

from __future__ import annotations

import csv
import hashlib
import os
import re
from collections import deque
from collections.abc import Callable, Iterable, Iterator, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

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


_BATCH_ROWS = 1 << 18  # rows validated at a time: memory stays flat whatever the file's size


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
    #: text of each record code / cadence code
    record_text: pa.Array = field(repr=False)
    cadence_text: pa.Array = field(repr=False)
    #: 0-based rows that repeat an earlier pair, ascending, and the row each repeats
    dup_rows: np.ndarray = field(repr=False)
    dup_first: np.ndarray = field(repr=False)
    stamp: tuple[int, int] = (0, 0)

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


def scan_input(path: str | os.PathLike[str], default_module: str | None = None) -> InputScan:
    """First pass over an input, in bounded memory; InputError when the file is unusable."""
    path = Path(path)
    check_input(path, default_module)
    source = _open(path)
    stamp = source.stamp()
    rows = invalid = 0
    examples: list[tuple[int, str]] = []
    pair_rows, rec, cad, mod = [], [], [], []
    module_names: dict[str, int] = {}
    for part in _bounded_map(lambda raw: _scan_batch(raw, default_module),
                             _raw_batches(source)):
        invalid += len(part.bad)
        examples += [(rows + i + 1, part.reasons[i]) for i in part.bad[: 10 - len(examples)]]
        pair_rows.append(part.valid + rows)
        rec.append(part.record)
        cad.append(part.cadence)
        local = np.array([module_names.setdefault(m, len(module_names)) for m in part.modules],
                         dtype=np.int32)
        mod.append(local[part.module] if len(local) else np.zeros(0, np.int32))
        rows += part.rows
    if rows == 0:
        raise InputError(f"{path}: has a header ({', '.join(source.found)}) but no data rows")
    return _finish_scan(source, default_module, stamp, rows, invalid, tuple(examples),
                        np.concatenate(pair_rows), np.concatenate(rec), np.concatenate(cad),
                        np.concatenate(mod), list(module_names))


@dataclass(frozen=True)
class _ScannedBatch:
    rows: int
    valid: np.ndarray  # positions of the valid rows
    bad: list[int]  # positions of the invalid rows
    reasons: dict[int, str]
    record: np.ndarray  # uint64 ids of the valid rows
    cadence: np.ndarray
    modules: list[str]  # the batch's module names ...
    module: np.ndarray  # ... and the index into them of each valid row


def _scan_batch(raw: dict[str, pa.Array], default_module: str | None) -> _ScannedBatch:
    chk = _check(raw, 0, default_module)
    n = chk.table.num_rows
    idx = np.flatnonzero(chk.valid)
    t = chk.table if len(idx) == n else chk.table.take(pa.array(idx))
    enc = pc.dictionary_encode(t["module"]).combine_chunks()
    return _ScannedBatch(
        rows=n, valid=idx, bad=np.flatnonzero(~chk.valid).tolist(), reasons=chk.reasons,
        record=pc.cast(t["record_id"], pa.uint64()).to_numpy(),
        cadence=pc.cast(t["cadence_id"], pa.uint64()).to_numpy(),
        modules=enc.dictionary.to_pylist(), module=enc.indices.to_numpy(zero_copy_only=False))


def _bounded_map(fn: Callable[[Any], Any], items: Iterable[Any], workers: int = 2
                 ) -> Iterator[Any]:
    """``map`` on a few threads, in order, holding at most ``workers + 1`` items at a time:
    Arrow and numpy release the GIL, so validating one batch overlaps reading the next."""
    with ThreadPoolExecutor(workers) as pool:
        pending: deque[Future[Any]] = deque()
        for item in items:
            pending.append(pool.submit(fn, item))
            if len(pending) > workers:
                yield pending.popleft().result()
        while pending:
            yield pending.popleft().result()


def _encode(values: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Codes in order of first appearance, and the value of each code (Arrow's hash table is
    the fastest at hand for tens of millions of uint64)."""
    enc = pc.dictionary_encode(pa.array(values, pa.uint64()))
    return (enc.indices.to_numpy(zero_copy_only=False).astype(np.int64),
            enc.dictionary.to_numpy(zero_copy_only=False))


def _dense(values: np.ndarray, bound: int) -> tuple[np.ndarray, np.ndarray]:
    """Renumber values in [0, bound) to 0..k-1 (ascending): codes and the value of each code."""
    if bound > max(4 * len(values), 1 << 20):
        codes, uniques = pd.factorize(values, sort=True)
        return codes.astype(np.int64, copy=False), uniques
    present = np.zeros(bound, dtype=np.bool_)
    present[values] = True
    uniques = np.flatnonzero(present)
    renumber = np.cumsum(present, dtype=np.int64) - 1
    return renumber[values], uniques


def _first_of_code(codes: np.ndarray, n_codes: int) -> np.ndarray:
    first = np.empty(n_codes, dtype=np.int64)
    first[codes[::-1]] = np.arange(len(codes) - 1, -1, -1)  # the last write wins: the earliest
    return first


def _finish_scan(source: _Source, default_module: str | None, stamp: tuple[int, int],
                 rows: int, invalid: int, examples: tuple, pair_rows: np.ndarray,
                 rec: np.ndarray, cad: np.ndarray, mod: np.ndarray, names: list[str]
                 ) -> InputScan:
    """Codes and duplicates of the valid rows: a pair that repeats is not a pair to plan."""
    rc, rec_uniques = _encode(rec)
    cc, cad_uniques = _encode(cad)
    cad_text = pc.cast(pa.array(cad_uniques, pa.uint64()), pa.string())
    if len(names) > 1:  # a cadence under two modules is two cadences to the planner
        cc, combined = _dense(mod.astype(np.int64) * len(cad_uniques) + cc,
                              len(names) * len(cad_uniques))
        cad_text = cad_text.take(pa.array(combined % max(len(cad_uniques), 1)))
    del rec, cad
    dup = _repeats(cc * len(rec_uniques) + rc, rc, len(rec_uniques), len(cad_text))
    dup_rows = dup_first = np.zeros(0, dtype=np.int64)
    if dup is not None:
        is_dup = dup >= 0
        dup_rows, dup_first = pair_rows[is_dup], pair_rows[dup[is_dup]]
        keep = ~is_dup
        pair_rows, rc, cc, mod = pair_rows[keep], rc[keep], cc[keep], mod[keep]
    return InputScan(
        source=source, default_module=default_module, rows=rows, invalid=invalid,
        invalid_examples=examples, pair_rows=pair_rows,
        codes=PairCodes(mod.astype(np.int64), names, rc, cc),
        record_text=pc.cast(pa.array(rec_uniques, pa.uint64()), pa.string()),
        cadence_text=cad_text, dup_rows=dup_rows, dup_first=dup_first, stamp=stamp)


def _repeats(key: np.ndarray, rc: np.ndarray, n_rec: int, n_cad: int) -> np.ndarray | None:
    """For each position, the earlier position holding the same key (else -1); None when no
    key repeats.

    One scatter into a bitmap of all (cadence, record) combinations tells whether anything
    repeats and, per record, how many distinct cadences it has; only the rows of records with
    fewer distinct cadences than rows need the (costly) hashing.
    """
    if n_cad * n_rec <= max(24 * len(key), 1 << 26):  # a byte per combination: <= 24 per row
        seen = np.zeros(n_cad * n_rec, dtype=np.bool_)
        seen[key] = True
        if int(np.count_nonzero(seen)) == len(key):
            return None
        distinct = seen.reshape(n_cad, n_rec).sum(axis=0)
        del seen
        sub = np.flatnonzero((np.bincount(rc, minlength=n_rec) != distinct)[rc])
    else:
        sub = np.arange(len(key))
    pair, uniques = pd.factorize(key[sub], sort=False)
    if len(uniques) == len(sub):
        return None
    earlier = sub[_first_of_code(pair, len(uniques))[pair]]
    out = np.full(len(key), -1, dtype=np.int64)
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


def _raw_batches(src: _Source) -> Iterator[dict[str, pa.Array]]:
    """The id and module columns, as strings, a batch at a time."""
    wanted = list(dict.fromkeys(src.roles.values()))
    if src.kind == "parquet":
        try:
            for batch in pq.ParquetFile(src.path).iter_batches(batch_size=_BATCH_ROWS,
                                                                columns=wanted):
                yield {role: _as_strings(batch.column(name)) for role, name in src.roles.items()}
        except InputError:
            raise
        except Exception as exc:
            with open(src.path, "rb") as fh:
                head = fh.read(4)
            raise InputError(_parquet_problem(src.path, head, exc)) from None
        return
    convert = pacsv.ConvertOptions(
        column_types={n: pa.string() for n in wanted}, include_columns=wanted,
        strings_can_be_null=False, quoted_strings_can_be_null=False)
    try:
        reader = pacsv.open_csv(
            src.path, read_options=pacsv.ReadOptions(block_size=1 << 21),
            parse_options=pacsv.ParseOptions(delimiter=src.delimiter), convert_options=convert)
        for batch in reader:
            yield {role: batch.column(name) for role, name in src.roles.items()}
    except pa.ArrowInvalid as exc:
        msg = _excerpt(exc, 300)
        if "UTF8" in str(exc) or "utf8" in str(exc).lower():
            msg = "it is not UTF-8 text; save it as 'CSV UTF-8'"
        raise InputError(f"{src.path}: cannot be read as CSV: {msg}") from None


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
        "row": pa.array(np.arange(row0 + 1, row0 + n + 1, dtype=np.int64)),
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
    col = pc.utf8_trim_whitespace(pc.fill_null(col, ""))
    prefixed = pc.starts_with(col, "zcrm_")
    if pc.any(prefixed).as_py():
        col = pc.if_else(prefixed, pc.utf8_slice_codeunits(col, 5), col)
    return col


def _id_ok(col: pa.Array | pa.ChunkedArray) -> np.ndarray:
    """15-19 ASCII digits, not starting with 0: Zoho ids never do, and a canonical id maps
    one-to-one onto a uint64."""
    length = pc.utf8_length(col)
    ok = pc.and_(pc.and_(pc.greater_equal(length, 15), pc.less_equal(length, 19)),
                 pc.and_(pc.ascii_is_decimal(col), pc.invert(pc.starts_with(col, "0"))))
    return pc.fill_null(ok, False).to_numpy(zero_copy_only=False).astype(bool, copy=False)


def _clean_ids(col: pa.ChunkedArray) -> tuple[pa.Array, np.ndarray]:
    """Trimmed, ``zcrm_``-free ids and which are valid. Only the rows that fail as they stand
    are cleaned: a clean file of tens of millions of ids is not copied twice for nothing."""
    ok = _id_ok(col)
    if ok.all():
        return col, ok
    col = col.combine_chunks() if isinstance(col, pa.ChunkedArray) else col
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
        return pa.array(np.full(n, default, dtype=object), pa.string()), np.zeros(n, dtype=bool)
    col = pc.utf8_trim_whitespace(pc.fill_null(raw["module"], ""))
    enc = (col.combine_chunks() if isinstance(col, pa.ChunkedArray) else col).dictionary_encode()
    names = [canonical_module(v) if v else default for v in enc.dictionary.to_pylist()]
    table = pa.array(names, pa.string())
    modules = table.take(enc.indices)
    return modules, ~pc.is_valid(modules).to_numpy(zero_copy_only=False)


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


