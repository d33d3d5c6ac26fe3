"""CSV files: pyarrow while the rows are regular (nearly always, and fast); from the first part
with a row of the wrong number of fields, the stdlib's reader, which takes any row and says
which are ragged. Every record comes once, in file order, in both passes."""

from __future__ import annotations

import codecs
import csv
import gzip
import re
import threading
import zlib
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from dataclasses import replace
from operator import itemgetter
from pathlib import Path
from typing import Any, TextIO

import numpy as np
import pyarrow as pa
import pyarrow.csv as pacsv

from ..arrays import arrow_of, strings_of
from ..errors import InputError, machine_limit
from ..hostsettings import unraisable_ignored
from ..stopping import read_aside
from .columns import require_columns
from .dialect import Dialect, detect
from .kinds import HEAD_BYTES, not_text, one_line, space_aligned
from .options import InputOptions
from .source import ID_ROLES, Source, empty_values, table_parts


def csv_source(path: Path, head: bytes, kind: str, options: InputOptions) -> Source:
    """A CSV (``kind`` "csv", or "csv.gz" for a gzipped one) opened: its dialect (detected on
    ``head``, the file's first bytes, or ``options.delimiter``) and header. InputError when it
    cannot be one."""
    compression = None
    if kind == "csv.gz":
        compression, head = "gzip", _gunzipped_head(path)
    if not_text(head):
        raise InputError(f"{path}: is not UTF-8 text (it contains NUL bytes: a binary file or "
                         "UTF-16 text); save it as 'CSV UTF-8' or Parquet")
    try:
        dialect = detect(head, options.delimiter)
    except InputError as exc:
        raise InputError(f"{path}: {exc}") from None
    header = list(dialect.header)
    if options.delimiter is None and len(header) == 1:  # no delimiter splits the header
        lines = head.decode("utf-8", "replace").splitlines()[dialect.skip_rows:][:50]
        if aligned := space_aligned(lines):
            raise InputError(f"{path}: {aligned}")
    roles = require_columns(path, header, options, _rows_below(head, dialect, options),
                            dialect.rows_above + 1)
    return Source(path, "csv", roles, tuple(header), dialect, compression)


def _rows_below(head: bytes, dialect: Dialect, options: InputOptions
                ) -> Iterator[tuple[int, tuple[str, ...]]]:
    """(row as a spreadsheet shows it, fields) of the lines under the header, each split as if
    it were the header (a title line above the column names has no delimiter to detect)."""
    lines = head.splitlines(keepends=True)[dialect.skip_rows:]
    given = options.delimiter or (dialect.delimiter if dialect.skip_rows > dialect.rows_above
                                  else None)  # a sep= line names it
    for k in range(1, len(lines)):
        try:
            below = detect(b"".join(lines[k:]), given)
        except InputError:  # a line no header can be read from: the refusal stands as it is
            continue
        if below.header:
            yield dialect.rows_above + 1 + k + below.rows_above, below.header


def csv_scan_parts(src: Source, encoded: list[str], wanted: list[str], chunk_rows: int
                   ) -> Iterator[dict[str, Any]]:
    """The first pass: the ``wanted`` columns (``encoded`` ones dictionary-encoded), whole or
    in parts of about ``chunk_rows`` rows."""
    dict_type = pa.dictionary(pa.int32(), pa.string())
    types = {n: dict_type if n in encoded else pa.string() for n in wanted}
    # a gzip's size says little of its rows: it is read as a stream of blocks
    whole = not src.compression and src.path.stat().st_size <= chunk_rows * _CSV_ROW_BYTES
    block = _CSV_BLOCK if whole else min(1 << 26, chunk_rows * _CSV_ROW_BYTES)
    # pyarrow checks the columns it reads; the others are checked beside it, on the spare core
    stop = threading.Event()
    with ThreadPoolExecutor(1, "batcher-utf8") as pool:
        checked = pool.submit(check_utf8, src, stop)
        try:
            yield from _csv_parts(src, types, block, whole, chunk_rows)
        finally:
            stop.set()  # given up (an error, a signal): the check ends at its next block
        checked.result()


def check_utf8(src: Source, stop: threading.Event | None = None, block_bytes: int = 1 << 22
               ) -> None:
    """InputError naming the line of the first bytes that are not UTF-8, in any column: the
    results carry the input's other columns, read again once the calls are made, so a file is
    refused before anything is sent, not after (ASCII blocks, nearly every file, are checked
    at memory speed). Returns early once ``stop`` is set."""
    decoder = codecs.getincrementaldecoder("utf-8")()
    done = 0
    opener: Callable[..., Any] = gzip.open if src.compression else open
    with _csv_errors(src), opener(src.path, "rb") as fh:
        while (block := fh.read(block_bytes)) and not (stop and stop.is_set()):
            pending = len(decoder.getstate()[0])
            try:
                if pending or not block.isascii():
                    decoder.decode(block)
            except UnicodeDecodeError as exc:
                raise InputError(_not_utf8(src, done - pending + exc.start)) from None
            done += len(block)
        try:
            decoder.decode(b"", final=True)
        except UnicodeDecodeError as exc:  # a character cut short by the end of the file
            raise InputError(_not_utf8(src, done - len(decoder.getstate()[0]) + exc.start)) \
                from None


def _not_utf8(src: Source, at: int) -> str:
    """The message for bytes at offset ``at`` (of the text, once inflated) that are not UTF-8."""
    line = 1
    opener: Callable[..., Any] = gzip.open if src.compression else open
    with opener(src.path, "rb") as fh:
        while at > 0 and (block := fh.read(min(at, 1 << 22))):
            line += block.count(b"\n")
            at -= len(block)
    return (f"{src.path}: is not UTF-8 text (line {line} holds bytes that are not); save it as "
            "'CSV UTF-8' (Excel: Save As, CSV UTF-8) and run it again")


def csv_raw_parts(src: Source, wanted: list[str], part_rows: int) -> Iterator[dict[str, Any]]:
    """The second pass: the ``wanted`` columns as strings, a part at a time."""
    yield from _csv_parts(src, dict.fromkeys(wanted, pa.string()), 1 << 21, False, part_rows)


_CSV_ROW_BYTES = 64  # a CSV of up to CHUNK_ROWS rows of this size is read whole



_CSV_BLOCK = 1 << 23  # bytes per block of a whole read: enough for both threads, few chunks



_BLOCK_CAP = 1 << 30  # a block must hold a whole record: blocks grow to this for long fields



_SHOWN = 120  # characters of a ragged row quoted in its reason
_TABLE_CHUNK = 1 << 16  # rows the exact reader holds as Python strings before making Arrow



def _gunzipped_head(path: Path) -> bytes:
    """The first bytes a gzip inflates to; InputError unless they can be CSV text."""
    try:
        with gzip.open(path, "rb") as fh:
            head = fh.read(HEAD_BYTES)
    except (OSError, EOFError, zlib.error) as exc:  # gzip.BadGzipFile is an OSError
        raise InputError(f"{path}: a damaged or truncated gzip file ({one_line(exc)})") from None
    if not head.strip(b"\xef\xbb\xbf \t\r\n"):
        raise InputError(f"{path}: the file is empty (a gzip of nothing)")
    if not_text(head):  # Parquet, zip, another gzip, UTF-16…
        raise InputError(f"{path}: a gzip of something that is not CSV text (binary data or "
                         "UTF-16 text); decompress it and pass a CSV UTF-8 or Parquet file")
    return head



@contextmanager
def _csv_errors(src: Source) -> Iterator[None]:
    """Any failure of a CSV reader (pyarrow's, the stdlib's, gzip's) becomes one InputError."""
    try:
        yield
    except (pa.ArrowException, OSError, EOFError, zlib.error, csv.Error, UnicodeError) as exc:
        if limit := machine_limit(exc, f"reading {src.path}"):
            raise limit from None
        msg = one_line(exc, 300)
        if isinstance(exc, UnicodeError) or "utf8" in str(exc).lower():
            msg = "it is not UTF-8 text; save it as 'CSV UTF-8'"
        raise InputError(f"{src.path}: cannot be read as CSV: {msg}") from None



class _NeedsExact(Exception):
    """The rows from position ``at`` on need the exact reader."""

    def __init__(self, at: int) -> None:
        super().__init__(at)
        self.at = at



class _Irregular:
    """pyarrow's ``invalid_row_handler``: notes that a row has the wrong number of fields and
    stops the read (no Python runs for regular rows, so the fast path pays nothing)."""

    def __init__(self) -> None:
        self.seen = False

    def __call__(self, row: Any) -> str:
        self.seen = True
        return "error"



def _csv_parts(src: Source, types: dict[str, pa.DataType], block: int, whole: bool,
               part_rows: int) -> Iterator[dict[str, Any]]:
    """Every record of the CSV once, in file order: pyarrow's parts (the whole file at once
    when ``whole``, else a part per block of ``block`` bytes) while the rows are regular, then
    the exact reader's, ``part_rows`` at a time. Raises InputError when the file cannot be read."""
    with _csv_errors(src):
        try:
            yield from _fast_parts(src, types, block, whole)
        except _NeedsExact as need:
            yield from table_parts(_exact_source(src), need.at, part_rows)



def _fast_parts(src: Source, types: dict[str, pa.DataType], block: int, whole: bool
                ) -> Iterator[dict[str, Any]]:
    """pyarrow's parts, with ``blank`` when a row's role fields are all empty. A read that fails
    for a quoted line break or a record longer than a block starts again where it failed, quote
    aware or with larger blocks. Raises _NeedsExact at the first part pyarrow cannot give whole
    (an irregular row; other columns it cannot read to judge a blank row), ArrowInvalid for any
    other failure."""
    done, newlines = 0, src.dialect.newlines_in_values
    blanks: list[tuple[int, np.ndarray]] = []  # the rest of the file's blank rows, once read
    while True:
        irregular = _Irregular()
        try:
            # pyarrow reports the UnicodeDecodeError of a ragged row it could not decode for
            # the handler as 'Exception ignored' on stderr, then fails the read (handled below)
            with unraisable_ignored(UnicodeDecodeError):
                for part in _arrow_parts(src, types, block, newlines, whole, done, irregular):
                    if irregular.seen:
                        raise _NeedsExact(done)
                    yield _with_blank(src, part, done, blanks)
                    done += part.num_rows
            return
        except pa.ArrowInvalid as exc:
            # a ragged row that is not UTF-8 never reaches the handler (pyarrow decodes its
            # text first): the exact reader takes it, and says what the encoding is
            if irregular.seen or _RAGGED.search(str(exc)):
                raise _NeedsExact(done) from None
            again = _read_again(exc, block, newlines)
            if again is None:
                raise
            block, newlines = again



_RAGGED = re.compile(r"Expected \d+ columns, got \d+")


def _read_again(exc: pa.ArrowInvalid, block: int, newlines: bool) -> tuple[int, bool] | None:
    """(block size, quote-aware record finding) to read again with after ``exc``, None when
    neither helps. A restart is quote aware: only so are the rows it skips counted right."""
    if "out of sync" in str(exc) and not newlines:  # a block ended inside a quoted line break
        return block, True
    if "straddl" in str(exc) and block < _BLOCK_CAP:  # a record longer than a block
        return min(block * 16, _BLOCK_CAP), True
    return None



def _arrow_parts(src: Source, types: dict[str, pa.DataType], block: int, newlines: bool,
                 whole: bool, start: int, irregular: _Irregular) -> Iterator[Any]:
    """Tables (or record batches) of the ``types`` columns from data position ``start`` on."""
    if src.names == src.found:
        read = pacsv.ReadOptions(block_size=block, skip_rows=src.dialect.skip_rows,
                                 skip_rows_after_names=start)
    else:  # a name the header holds twice: each column by its distinct name, the header skipped
        read = pacsv.ReadOptions(block_size=block, skip_rows=src.dialect.skip_rows,
                                 column_names=list(src.names), skip_rows_after_names=start + 1)
    convert = pacsv.ConvertOptions(column_types=types, include_columns=list(types),
                                   strings_can_be_null=False, quoted_strings_can_be_null=False)
    with pa.input_stream(src.path, compression=src.compression) as stream:
        # an explicit stream: the content, not a ".gz" name, says whether to inflate
        parse = _parse_options(src, newlines, irregular)
        if whole:  # the streaming reader hooks no signal; the whole read does (read_aside)
            yield read_aside(lambda: pacsv.read_csv(stream, read_options=read,
                                                    parse_options=parse,
                                                    convert_options=convert))
        else:
            yield from pacsv.open_csv(stream, read_options=read, parse_options=parse,
                                      convert_options=convert)



def _parse_options(src: Source, newlines: bool, irregular: _Irregular) -> pacsv.ParseOptions:
    # pyarrow finds records faster when no value spans lines; empty lines are rows (blank ones)
    return pacsv.ParseOptions(delimiter=src.dialect.delimiter, newlines_in_values=newlines,
                              ignore_empty_lines=False, invalid_row_handler=irregular)



def _with_blank(src: Source, part: Any, at: int, blanks: list[tuple[int, np.ndarray]]
                ) -> dict[str, Any]:
    """The role columns of a part at data position ``at``, with ``blank`` when some row is.

    Only a row whose role fields are all empty may be blank; when the file has other columns,
    they are read (once, from that row to the end: ``blanks``) to decide. Raises _NeedsExact
    when pyarrow cannot read them."""
    cols = {role: part.column(name) for role, name in src.roles.items()}
    empty = _empty_roles(part, list(dict.fromkeys(src.roles.values())))
    if empty is None:
        return cols
    others = [i for i, name in enumerate(src.names) if name not in src.roles.values()]
    if others:
        rows = np.flatnonzero(empty)
        if not blanks:
            flags = _blank_rows(src, at + int(rows[0]), others)
            if flags is None:
                raise _NeedsExact(at)
            blanks.append((at + int(rows[0]), flags))
        first, flags = blanks[0]
        rows_there = rows + (at - first)  # every candidate lies at or after the first one
        if rows_there[-1] >= len(flags):  # the file changed under us: let the exact reader see
            raise _NeedsExact(at)
        empty[rows] = flags[rows_there]
    if empty.any():
        cols["blank"] = empty
    return cols



def _empty_roles(part: Any, names: list[str]) -> np.ndarray | None:
    """Rows whose ``names`` fields are all empty or whitespace, None when none is. Dictionary
    columns go first (their few values are judged once), the others on those rows only."""
    names = sorted(names, key=lambda n: not pa.types.is_dictionary(part.schema.field(n).type))
    empty = empty_values(part.column(names[0]))
    for name in names[1:]:
        if empty is None:
            return None
        rows = np.flatnonzero(empty)
        found = empty_values(part.column(name).take(arrow_of(rows)))
        empty[rows] = False if found is None else found
    return empty if empty is not None and empty.any() else None



def _blank_rows(src: Source, start: int, others: list[int]) -> np.ndarray | None:
    """Whether each row from data position ``start`` on has its ``others`` fields (indexes
    into the header) all empty or whitespace; None when pyarrow cannot read them all."""
    read = pacsv.ReadOptions(block_size=_CSV_BLOCK, skip_rows=src.dialect.skip_rows,
                             autogenerate_column_names=True, skip_rows_after_names=start + 1)
    names = [f"f{i}" for i in others]  # the header is data here: duplicate names do no harm
    convert = pacsv.ConvertOptions(column_types=dict.fromkeys(names, pa.string()),
                                   include_columns=names, strings_can_be_null=False,
                                   quoted_strings_can_be_null=False)
    flags = []
    try:
        with pa.input_stream(src.path, compression=src.compression) as stream:
            for batch in pacsv.open_csv(stream, read_options=read, convert_options=convert,
                                        parse_options=_parse_options(src, True, _Irregular())):
                blank = np.ones(batch.num_rows, dtype=bool)
                for col in batch.columns:
                    found = empty_values(col)
                    blank &= False if found is None else found
                flags.append(blank)
    except pa.ArrowException:  # a ragged row, a field longer than a block, bad UTF-8…
        return None
    return np.concatenate(flags) if flags else np.zeros(0, dtype=bool)



def _exact_source(src: Source) -> Source:
    """The CSV read whole by the stdlib's reader, which takes rows of any length: a "table"
    Source of the role columns, ragged rows and blank rows. A ragged row's id and module
    values are "" (its fields may be shifted: none is taken for an id); the columns carried
    to the results (other roles) hold its fields by position, "" past its end — fields past
    the header's count have no column (its reason quotes the line)."""
    at = [src.names.index(name) for name in src.roles.values()]
    pick = itemgetter(*at) if len(at) > 1 else lambda fields: (fields[at[0]],)
    width = len(src.found)
    kept = {i for i, role in zip(at, src.roles, strict=True) if role not in ID_ROLES}

    def unread(fields: list[str]) -> tuple[str, ...]:
        """A ragged row's role values: only what the results carry beside it."""
        return tuple(fields[i] if i in kept and i < len(fields) else "" for i in at)
    rows: list[tuple[str, ...]] = []
    chunks: list[list[pa.Array]] = [[] for _ in at]
    blank: list[int] = []
    ragged: dict[int, str] = {}
    with _exact_records(src) as records:
        for pos, fields in enumerate(records):
            regular = len(fields) == width
            row = pick(fields) if regular else unread(fields)
            # whitespace joined is whitespace: one strip judges a row, the whole row only
            # when its role fields say nothing
            if not "".join(row).strip() and not "".join(fields).strip():
                blank.append(pos)
            elif not regular:
                # the row's own text, so the results still say whose row it was
                text = src.dialect.delimiter.join(fields)
                text = text if len(text) <= _SHOWN else text[:_SHOWN] + "…"
                # the spreadsheet's row: below the header and the empty rows above it
                line = pos + 2 + src.dialect.rows_above
                ragged[pos] = (f"line {line} has {len(fields)} fields, the header has "
                               f"{width}: {text!r}")
            rows.append(row)
            if len(rows) == _TABLE_CHUNK:
                _flush(rows, chunks)
    _flush(rows, chunks)
    table = pa.table({name: pa.chunked_array(c, pa.string())
                      for name, c in zip(src.roles.values(), chunks, strict=True)})
    flags = np.zeros(table.num_rows, dtype=bool)
    flags[blank] = True
    why = (strings_of([ragged.get(i) for i in range(table.num_rows)]) if ragged else None)
    return replace(src, kind="table", table=table, ragged=why,
                   blank=flags if blank else None)



def _flush(rows: list[tuple[str, ...]], chunks: list[list[pa.Array]]) -> None:
    """Rows of role values → one Arrow chunk per role column."""
    if rows:
        for out, values in zip(chunks, zip(*rows, strict=True), strict=True):
            out.append(pa.array(values, pa.string()))  # in C: the exact reader's rows are many
        rows.clear()



@contextmanager
def _exact_records(src: Source) -> Iterator[Iterator[list[str]]]:
    """The data records of the CSV, each a list of fields, by the stdlib's reader."""
    csv.field_size_limit(max(csv.field_size_limit(), _BLOCK_CAP))  # default: 128 KiB a field
    # bytes that are not UTF-8 pass as surrogates: harmless in ignored columns, refused when
    # a role value holding one is made Arrow
    opener: Callable[..., TextIO] = gzip.open if src.compression else open
    with opener(src.path, "rt", encoding="utf-8-sig", errors="surrogateescape",
                newline="") as fh:
        records = csv.reader(fh, delimiter=src.dialect.delimiter, quotechar='"',
                             doublequote=True, strict=False)
        for _ in range(src.dialect.skip_rows + 1):  # the sep= line, empty lines, the header
            next(records, None)
        yield records

