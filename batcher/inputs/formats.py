"""Input files by kind (CSV, .xlsx, Parquet): opening, and reading the role columns as Arrow,
in two passes that give every data record once, in file order."""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator, Mapping
from contextlib import contextmanager
from dataclasses import replace
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from ..arrays import both
from ..errors import InputError, Interrupted, machine_limit
from .columns import require_columns
from .csvfile import csv_raw_parts, csv_scan_parts, csv_source
from .kinds import HEAD_BYTES, one_line, parquet_problem, parquet_text, sniff_kind
from .options import InputOptions
from .rounding import EXPORT_AS_TEXT
from .source import Source, empty_values, file_stamp, table_parts

_PARQUET_MAGIC = b"PAR1"
_BATCH_ROWS = 1 << 18  # rows a batch of the second pass holds: memory stays flat
CHUNK_ROWS = 1 << 24  # rows the first pass reads at once, on Arrow's threads: ~0.5 GB at most
#: a Parquet column read from many row groups is joined into one chunk up to this size: a text
#: column of long values stays within a string array's 2 GB
_JOIN_BYTES = 1 << 30


def _columns(src: Source, table: pa.Table) -> dict[str, pa.ChunkedArray]:
    return {role: table[name] for role, name in src.roles.items()}


def _readable(table: Any) -> Any:
    """``table`` (a Table or a RecordBatch read from Parquet) in the types every kernel of the
    reader takes: view columns (``string_view``, ``binary_view``: what Polars and pyarrow's
    view types write; ``take`` has no kernel for them) as plain ``string`` / ``binary``, and a
    text column holding bytes that are not UTF-8 (Parquet writers do not all check) as binary,
    so ``parquet_text`` names each such value instead of the job failing on it."""
    fields = list(table.schema)
    kinds = [_readable_kind(f.type, table.column(i)) for i, f in enumerate(fields)]
    if kinds == [f.type for f in fields]:
        return table
    return table.cast(pa.schema([f.with_type(k) for f, k in zip(fields, kinds, strict=True)]))


def _readable_kind(kind: pa.DataType, column: Any) -> pa.DataType:
    if pa.types.is_dictionary(kind):
        value = _readable_kind(kind.value_type, pa.chunked_array(
            [c.dictionary for c in getattr(column, "chunks", [column])], kind.value_type))
        return kind if value == kind.value_type else pa.dictionary(kind.index_type, value)
    if pa.types.is_binary_view(kind):
        return pa.binary()
    text = (pa.types.is_string(kind) or pa.types.is_large_string(kind)
            or pa.types.is_string_view(kind))
    if not text:
        return kind
    chunks = getattr(column, "chunks", [column])
    if not pa.types.is_string_view(kind) and all(map(_ascii, chunks)):
        return kind
    try:
        column.validate(full=True)  # UTF-8 checked
    except pa.ArrowInvalid:
        return pa.large_binary() if pa.types.is_large_string(kind) else pa.binary()
    return pa.string() if pa.types.is_string_view(kind) else kind


def _ascii(chunk: pa.Array) -> bool:
    """Whether a string chunk's text is all ASCII, so valid UTF-8: one pass over its bytes, a
    tenth of the full validation's cost (ids are digits)."""
    data = chunk.buffers()[2]
    if not len(chunk) or data is None:
        return True
    large = pa.types.is_large_string(chunk.type)
    offsets = np.frombuffer(chunk.buffers()[1], dtype=np.int64 if large else np.int32,
                            count=len(chunk) + 1, offset=chunk.offset * (8 if large else 4))
    text = np.frombuffer(data, dtype=np.uint8)[offsets[0]:offsets[-1]]
    return not len(text) or int(text.max()) < 0x80


def _read_row_groups(src: Source, encoded: list[str], groups: list[int], columns: list[str]
                     ) -> pa.Table:
    """Row groups read in two halves on two threads: Arrow decodes each column on one thread,
    and the record id column is most of the work."""
    import pyarrow.parquet as pq

    def read(part: list[int]) -> pa.Table:
        pf = pq.ParquetFile(src.path, read_dictionary=encoded)  # one reader per thread
        return _readable(pf.read_row_groups(part, columns=columns))

    if len(groups) < 2:
        return _fewer_chunks(read(groups))
    half = len(groups) // 2
    return _fewer_chunks(pa.concat_tables(both(read, [(groups[:half],), (groups[half:],)])))


def _fewer_chunks(table: pa.Table) -> pa.Table:
    """``table`` with a column of many small chunks (one per row group) made one chunk: a file
    of many tiny row groups (a streaming writer's) then costs the reader's per-chunk steps
    once, not once per group. A column of more than ``_JOIN_BYTES`` keeps its chunks."""
    cols = [pa.chunked_array([col.combine_chunks()], col.type)
            if col.num_chunks > 1 + len(col) // 4096 and col.nbytes <= _JOIN_BYTES else col
            for col in table.columns]
    return pa.Table.from_arrays(cols, schema=table.schema)


def _joined_batches(batches: Iterable[pa.RecordBatch]) -> Iterator[pa.RecordBatch]:
    """Consecutive batches joined into about ``_BATCH_ROWS`` rows, in order: rows, values and
    types as they were (batches too big to join stay as they are)."""
    held: list[pa.RecordBatch] = []
    rows = 0
    for batch in batches:
        if held and rows + batch.num_rows > _BATCH_ROWS:
            yield from _joined(held)
            held, rows = [], 0
        held.append(batch)
        rows += batch.num_rows
    if held:
        yield from _joined(held)


def _joined(batches: list[pa.RecordBatch]) -> list[pa.RecordBatch]:
    if len(batches) == 1:
        return batches
    try:
        one = pa.Table.from_batches(batches).combine_chunks().to_batches()
    except (pa.ArrowInvalid, pa.ArrowCapacityError):  # text over a string array's 2 GB
        return batches
    return one if len(one) == 1 else batches


def scan_chunks(src: Source, chunk_rows: int) -> Iterator[dict[str, Any]]:
    """The id and module columns, whole (or in chunks of about ``chunk_rows`` rows), the
    cadence and module columns dictionary-encoded (a CSV read by the exact reader: plain),
    with a CSV's ``ragged`` and ``blank`` as ``raw_batches`` gives them."""
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
                    yield _parquet_chunk(src, encoded, chunk, wanted)
                    chunk, held = [], 0
                chunk.append(g)
                held += n
            if chunk:
                yield _parquet_chunk(src, encoded, chunk, wanted)
        return
    parts = (table_parts(src, 0, chunk_rows) if src.kind == "table"
             else csv_scan_parts(src, encoded, wanted, chunk_rows))
    yield from _numbered(parts, src.dialect.rows_above)


def _numbered(parts: Iterable[dict[str, Any]], above: int) -> Iterator[dict[str, Any]]:
    """The parts of a CSV whose header a spreadsheet shows below empty rows, each with the
    ``row`` of its records: ``row + 1`` is then still the row the spreadsheet shows."""
    at = 1 + above
    for cols in parts:
        n = len(cols["record_id"])
        if above:
            cols["row"] = np.arange(at, at + n, dtype=np.int64)
        at += n
        yield cols


def _parquet_chunk(src: Source, encoded: list[str], groups: list[int], wanted: list[str]
                   ) -> dict[str, Any]:
    """The role columns of some row groups, with ``blank`` when rows have every field empty:
    those the role columns leave empty are judged on the file's other columns too (read only
    then: a file of data rows never pays for them)."""
    cols = _columns(src, _read_row_groups(src, encoded, groups, wanted))
    # dictionary-encoded columns first: judged on their few distinct values, one without an
    # empty value ends the search before a column of ten million ids is looked at
    roles = sorted(dict.fromkeys(src.roles), key=lambda r: not pa.types.is_dictionary(
        cols[r].type))
    blank = all_empty(cols[r] for r in roles)
    others = [n for n in dict.fromkeys(src.found) if n not in wanted]
    if blank is not None and others:
        import pyarrow.parquet as pq

        rest = _fewer_chunks(_readable(pq.ParquetFile(src.path).read_row_groups(
            groups, columns=others)))
        also = all_empty(rest.columns)
        blank = None if also is None else blank & also
    if blank is not None and blank.any():
        cols["blank"] = blank
    return cols


def all_empty(columns: Iterable[pa.ChunkedArray | pa.Array]) -> np.ndarray | None:
    """Rows whose values are all empty (:func:`empty_values`); None when no row is."""
    blank = None
    for col in columns:
        found = empty_values(col)
        if found is None:
            return None
        blank = found if blank is None else blank & found
    return blank


def open_source(path: Path, options: InputOptions) -> Source:
    """The input opened: its kind, columns (and an .xlsx sheet's rows); InputError, one line,
    when it cannot be an input."""
    if not path.exists():
        raise InputError(f"{path}: no such file")
    if path.is_dir():
        raise InputError(f"{path}: is a directory, not a CSV or Parquet file")
    if not path.is_file():  # /dev/stdin, a named pipe: read once, and gone
        raise InputError(f"{path}: is a pipe or a device, not a file; batcher reads its input "
                         "more than once (to check, plan and write the results) and binds the "
                         "journal to it: save the list to a file and give that")
    try:
        stamp = file_stamp(path)
        with open(path, "rb") as fh:
            head = fh.read(HEAD_BYTES)
    except OSError as exc:
        raise InputError(f"{path}: cannot be read ({exc.strerror})") from None
    if not head.strip(b"\xef\xbb\xbf \t\r\n"):
        raise InputError(f"{path}: the file is empty")
    kind = sniff_kind(path, head)  # refuses zip, .xls, PDF... naming what it found
    if kind == "parquet":
        src = _parquet_source(path, head, options)
    elif kind == "xlsx":
        src = _xlsx_source(path, options)
    else:
        src = csv_source(path, head, kind, options)
    return replace(src, opened=stamp)


def _parquet_source(path: Path, head: bytes, options: InputOptions) -> Source:
    import pyarrow.parquet as pq  # only Parquet inputs pay for it (and for pyarrow.fs)

    try:
        schema = pq.ParquetFile(path).schema_arrow
    except Interrupted:  # a signal, not the file's fault
        raise
    except Exception as exc:  # pyarrow raises several types for damaged files
        if limit := machine_limit(exc, f"reading {path}"):
            raise limit from None
        raise InputError(_parquet_problem(path, head, exc)) from None
    roles = require_columns(path, schema.names, options)
    problem = parquet_problem(schema, roles)
    if problem:
        raise InputError(f"{path}: {problem}")
    return Source(path, "parquet", roles, tuple(schema.names))


def _xlsx_source(path: Path, options: InputOptions) -> Source:
    """The first sheet, read whole (a sheet holds at most 1,048,576 rows): a "table" Source."""
    from .xlsx import read_xlsx  # only .xlsx inputs pay for loading it

    sheet = read_xlsx(path)
    # matched on the names as given: a role's name is then one the sheet holds once, which is
    # also its column's name in the table (only later repeats are renamed)
    roles = require_columns(path, list(sheet.given or sheet.header), options,
                            below=((i + 2, [c[i].as_py() for c in sheet.table.columns])
                                   for i in range(sheet.table.num_rows)))
    numbers = [roles[r] for r in ("record_id", "cadence_id") if roles.get(r) in sheet.no_text]
    if numbers:  # DESIGN: an .xlsx without a text id column is not an input
        raise InputError(f"{path}: column {numbers[0]!r} holds numbers, not text: Excel keeps 15 "
                         "digits of a number, so its ids are rounded (another record's, often); "
                         f"{EXPORT_AS_TEXT}")
    blank = all_empty(sheet.table.columns)
    # every column kept (the sheet is in memory anyway): the results carry the others, as the
    # sheet shows them; the ids are read from their values
    table = sheet.table
    for name, looks in sheet.shown.items():
        if name not in roles.values():
            table = table.set_column(table.schema.get_field_index(name), name, looks)
    return Source(path, "table", roles, tuple(sheet.header), table=table,
                  blank=blank if blank is not None and blank.any() else None,
                  hidden=sheet.hidden, totals=sheet.totals, merged=sheet.merged,
                  notes=sheet.notes)




def _parquet_problem(path: Path, head: bytes, exc: BaseException) -> str:
    what = "truncated or damaged" if head.startswith(_PARQUET_MAGIC) else "not a Parquet file"
    return f"{path}: {what} ({type(exc).__name__}: {one_line(exc)})"


@contextmanager
def _parquet_errors(src: Source) -> Iterator[None]:
    """Any failure of the Parquet reader becomes one clear InputError."""
    try:
        yield
    except (InputError, Interrupted):
        raise
    except Exception as exc:  # pyarrow raises several types for damaged files
        if limit := machine_limit(exc, f"reading {src.path}"):
            raise limit from None
        with open(src.path, "rb") as fh:
            head = fh.read(4)
        raise InputError(_parquet_problem(src.path, head, exc)) from None




def raw_batches(src: Source, texts: Mapping[str, Callable[[pa.Array], pa.Array]] | None = None
                ) -> Iterator[dict[str, Any]]:
    """The id and module columns, as strings, a batch at a time: every data record of the file
    once, in file order. A CSV's batch may also hold, when there is something to say about its
    rows, ``ragged`` (a string array: for a ragged row, why, naming its spreadsheet line; null
    for the others; a ragged row's role values are "") and ``blank`` (a numpy bool array: the
    row's fields, all of them, are empty or whitespace). Raises InputError when the file
    cannot be read. ``texts``: role → how a Parquet column of that role becomes text, instead
    of :func:`as_strings`."""
    wanted = list(dict.fromkeys(src.roles.values()))
    texts = texts or {}
    if src.kind == "parquet":
        import pyarrow.parquet as pq

        with _parquet_errors(src):
            every = set(wanted) >= set(src.names)  # blank rows are judged on every field
            # read by the file's names: a name read gives every column of that name, in file
            # order, so a column is its name's n-th (a name the file holds twice is no key)
            given = list(dict.fromkeys(src.found[i] for i, n in enumerate(src.names)
                                       if n in wanted))
            nth = {n: (src.found[i], src.found[:i].count(src.found[i]))
                   for i, n in enumerate(src.names)}
            for batch in map(_readable, _joined_batches(pq.ParquetFile(src.path).iter_batches(
                    batch_size=_BATCH_ROWS, columns=given))):
                read = batch.schema.names
                at = {n: [i for i, r in enumerate(read) if r == name][k]
                      for n, (name, k) in nth.items() if n in wanted}
                out = {role: texts.get(role, as_strings)(batch.column(at[name]))
                       for role, name in src.roles.items()}
                blank = all_empty(batch.columns) if every else None
                if blank is not None and blank.any():
                    out["blank"] = blank
                yield out
        return
    if src.kind == "table":
        yield from table_parts(src, 0, _BATCH_ROWS)
        return
    yield from csv_raw_parts(src, wanted, _BATCH_ROWS)


def as_strings(col: pa.ChunkedArray | pa.Array) -> pa.ChunkedArray | pa.Array:
    """Any scalar column as ``pa.string()``, never raising (``kinds.parquet_text``): a float
    keeps its text, so the row says why it cannot be an id, never a rounded id's digits."""
    col = parquet_text(col)
    return col if pa.types.is_string(col.type) else pc.cast(col, pa.string())


