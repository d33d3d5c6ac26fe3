"""Input files by kind (CSV, Parquet): opening, sniffing, and reading the role columns as Arrow."""

from __future__ import annotations

import csv
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.csv as pacsv

from ..errors import InputError
from .codes import both
from .columns import require_columns
from .options import InputOptions

_PARQUET_MAGIC = b"PAR1"


_SNIFF_BYTES = 64 * 1024


def _excerpt(exc: BaseException, limit: int = 200) -> str:
    """Library error text, shortened and kept to one printable line (it may quote raw bytes)."""
    return "".join(c if c.isprintable() else repr(c)[1:-1] for c in str(exc)[:limit])


_BATCH_ROWS = 1 << 18  # rows a batch of the second pass holds: memory stays flat


CHUNK_ROWS = 1 << 24  # rows the first pass reads at once, on Arrow's threads: ~0.5 GB at most


_CSV_ROW_BYTES = 64  # a CSV of up to CHUNK_ROWS rows of this size is read whole


_CSV_BLOCK = 1 << 23  # bytes per block of a whole read: enough for both threads, few chunks


@dataclass(frozen=True)
class Source:
    """An input file that was opened far enough to know its kind and columns."""

    path: Path
    kind: str  # "csv" or "parquet"
    roles: dict[str, str]  # role → column name
    found: tuple[str, ...]
    delimiter: str = ","

    def stamp(self) -> tuple[int, int]:
        st = self.path.stat()
        return st.st_size, st.st_mtime_ns


def _columns(src: Source, table: pa.Table) -> dict[str, pa.ChunkedArray]:
    return {role: table[name] for role, name in src.roles.items()}


def _read_row_groups(src: Source, encoded: list[str], groups: list[int], columns: list[str]
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
    return pa.concat_tables(both(read, [(groups[:half],), (groups[half:],)]))


def scan_chunks(src: Source, chunk_rows: int) -> Iterator[dict[str, Any]]:
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


def open_source(path: Path, options: InputOptions) -> Source:
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
        return Source(path, "parquet", require_columns(path, names, options), tuple(names))
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
    return Source(path, "csv", require_columns(path, header, options), tuple(header), delimiter)


def _parquet_problem(path: Path, head: bytes, exc: BaseException) -> str:
    what = "truncated or damaged" if head.startswith(_PARQUET_MAGIC) else "not a Parquet file"
    return f"{path}: {what} ({type(exc).__name__}: {_excerpt(exc)})"


@contextmanager
def _parquet_errors(src: Source) -> Iterator[None]:
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
def _csv_errors(src: Source) -> Iterator[None]:
    try:
        yield
    except pa.ArrowInvalid as exc:
        msg = _excerpt(exc, 300)
        if "UTF8" in str(exc) or "utf8" in str(exc).lower():
            msg = "it is not UTF-8 text; save it as 'CSV UTF-8'"
        raise InputError(f"{src.path}: cannot be read as CSV: {msg}") from None


def raw_batches(src: Source) -> Iterator[dict[str, pa.Array]]:
    """The id and module columns, as strings, a batch at a time."""
    wanted = list(dict.fromkeys(src.roles.values()))
    if src.kind == "parquet":
        import pyarrow.parquet as pq

        with _parquet_errors(src):
            for batch in pq.ParquetFile(src.path).iter_batches(batch_size=_BATCH_ROWS,
                                                                columns=wanted):
                yield {role: as_strings(batch.column(name)) for role, name in src.roles.items()}
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


def as_strings(col: pa.ChunkedArray) -> pa.ChunkedArray:
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

