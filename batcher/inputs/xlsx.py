"""Excel ``.xlsx`` → its first visible sheet as text: the header row, a string column per header.

Ids must be text cells. Excel keeps 15 significant digits of a number: the id
1990117000000120345 typed into a Number cell is stored as 1.99011700000012E+18 and saved as
1990117000000120000, a different (often real) record. So a number is never turned back into a
long digit string: one whose integer part has more than 15 digits becomes Excel's scientific
text, ``1.99011700000012E+18``, which the id rules report as ``ROUNDED_ID``.

The sheet is read with python-calamine (Rust) directly, cell types intact: pandas' calamine
engine turns a whole float into an int, so 1.99011700000012E+18 would come out as the digits
1990117000000120064, and it reads error cells as missing values.
"""

from __future__ import annotations

import datetime as dt
import math
import posixpath
import re
import zipfile
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from itertools import compress, repeat
from operator import is_not, itemgetter
from pathlib import Path
from typing import NamedTuple
from xml.etree import ElementTree
from xml.sax.saxutils import unescape

import numpy as np
import pyarrow as pa
from python_calamine import CalamineWorkbook, SheetTypeEnum, SheetVisibleEnum

from ..arrays import strings_of
from ..errors import InputError, Interrupted, machine_limit
from ..hostsettings import collector_spared
from ..streams import without_rust_panics
from .columns import distinct_names
from .kinds import HEAD_BYTES, one_line, sniff_kind
from .numfmt import BUILTIN, shown_all
from .xlsxcells import CellFault, PlainSheet, column_index, date_styles, letters, placed_cells

_EXACT_DIGITS = 15  # Excel's precision: numbers of more digits are already rounded
_EXACT_LIMIT = 10**_EXACT_DIGITS  # the first number whose integer part has 16 digits


@dataclass(frozen=True)
class XlsxSheet:
    """The first sheet of a workbook, as text.

    ``header``: row 1's cells as text, one per column from the sheet's first used column. An
    empty (or blank) header cell is named ``column_N``, N being its column's number in the
    sheet (A = 1); a repeated name is kept distinct as ``columns.distinct_names`` says
    (`` (2)``, `` (3)``…), as a CSV's or a Parquet file's is. ``table``: one string column per
    header name, in order; one row per sheet row after the header, in sheet order, so row i
    is sheet row i + 2 (a result's ``row + 1`` is the line Excel shows); blank rows are kept
    as rows of ``""``, trailing ones dropped. Cells become text as ``cell_text`` says.
    """

    header: list[str]
    table: pa.Table
    #: the columns with values and not one text cell among them (numbers, dates…)
    no_text: frozenset[str] = frozenset()
    #: sheet rows (1-based, as Excel numbers them) hidden by a filter or by hand, with data
    hidden: tuple[int, ...] = ()
    #: sheet rows (1-based) that are an Excel table's totals row (Table Design > Total Row: a
    #: "Total" label, a count or SUBTOTAL): not data, so read as blank rows
    totals: tuple[int, ...] = ()
    #: merges down one column whose value was given to every row they span (``A2:A4``)
    merged: tuple[str, ...] = ()
    #: the header as the sheet gives it (``header`` before a repeated name is suffixed): the
    #: columns are matched to their roles on it, so two ``record_id`` columns are refused as in
    #: a CSV, not the first taken and the other carried as ``record_id (2)``
    given: tuple[str, ...] = ()
    #: column name → its cells as the sheet shows them (``numfmt``: ``02134`` formatted
    #: ``00000``, ``3.50``, ``25%``, ``31/01/2024``), for the columns where a number format
    #: changes a cell's text: what the results carry. The id columns are read from ``table``,
    #: the values (a number formatted ``0`` shows a rounded id as digits)
    shown: dict[str, pa.Array] = field(default_factory=dict)
    #: (line, log event) of what else the reader did with odd cells, said like the merges:
    #: cells read as their plain value, merges over several columns left in their top-left
    #: cell, totals rows read for their cells outside the table
    notes: tuple[tuple[str, str], ...] = ()


def read_xlsx(path: Path) -> XlsxSheet:
    """The first visible sheet of the .xlsx (or .xlsm) workbook at ``path``.

    Raises InputError, one line naming the file and what to do, when the workbook cannot be
    read (damaged, password-protected, not a workbook), has no sheets, its first sheet is
    empty, or the sheet's row 1 (the header) is blank.
    """
    # a sheet's rows become Python lists by the hundred thousand: a young collection every
    # 700 of them would walk them again and again
    with collector_spared(_READ_GC_THRESHOLD0):
        return _read(path)


#: objects made between two young collections while a sheet is read
_READ_GC_THRESHOLD0 = 200_000


def _read(path: Path) -> XlsxSheet:
    with ThreadPoolExecutor(1) as pool:
        # calamine and zlib release the GIL: the scan for error cells costs no time
        marks = pool.submit(_sheet_marks, path)
        sheet, (rows, first_row, first_col, read_faults), skipped_to = _load(path)
    faults = tuple(read_faults)
    if not rows:
        raise InputError(f"{path}: the first sheet ({one_line(sheet, 80)!r}) is empty; put the "
                         "list on the first sheet, with the column names on row 1")
    # past an export summary, the marks are the list sheet's (rare: read again, not in parallel)
    texts, hidden, merged, totals, formats, undated = (marks.result() if skipped_to is None
                                                       else _sheet_marks(path, skipped_to))
    _fill(rows, {(row - first_row, col - first_col): text for (row, col), text in texts.items()})
    faults += _plain_undated(rows, undated, first_row, first_col, faults)
    merged = [(top - first_row, bottom - first_row, left - first_col, right - first_col)
              for top, bottom, left, right in merged]
    filled = _fill_down(rows, [(top, bottom, left) for top, bottom, left, right in merged
                               if left == right])
    unfilled = _unfilled(rows, merged, filled)
    header = [cell_text(v) for v in rows[0]]
    if first_row or not any(h.strip() for h in header):
        raise InputError(f"{path}: row 1 of the first sheet ({one_line(sheet, 80)!r}) is blank; "
                         "put the column names on row 1")
    while len(rows) > 1 and all(v == "" for v in rows[-1]):
        rows.pop()
    # after the trailing blank rows go: a totals row emptied here stays, counted as blank
    total_rows, beside = _clear_totals(rows, [(r - first_row, left - first_col,
                                               right - first_col) for r, left, right in totals])
    notes = tuple(note for note in (
        _faults_line(faults), _beside_totals_line(beside, first_row, first_col),
        _unfilled_line(unfilled, first_row, first_col)) if note)
    given = tuple(h if h.strip() else f"column_{first_col + j + 1}" for j, h in enumerate(header))
    names = list(distinct_names(given))
    # hidden rows (a filter, or hidden by hand) that hold data: sheet lines, as Excel shows them
    hidden_data = tuple(r + 1 for r in sorted(hidden) if 1 <= r < len(rows)
                        and any(v != "" for v in rows[r]))
    body = rows[1:]
    cells = [list(map(itemgetter(j), body)) for j in range(len(names))]  # a list per column
    del rows, body  # the row lists (the values stay, in cells)
    formats = {(col - first_col, code): at - (first_row + 1)
               for (col, code), at in formats.items()}
    formatted = {j for j, _ in formats}
    texts_of: dict[int, list[str]] = {}  # of the formatted columns, for their looks
    columns = []
    for j, values in enumerate(cells):
        made = _texts(values)
        columns.append(_strings(made))
        if j in formatted:
            texts_of[j] = made
    no_text = frozenset(name for name, values in zip(names, cells, strict=True)
                        if _no_text(values))
    shown = {names[j]: _strings(looks) for j, looks in _looks(cells, texts_of, formats).items()}
    return XlsxSheet(names, pa.Table.from_arrays(columns, names=names), no_text, hidden_data,
                     tuple(r + first_row + 1 for r in total_rows),
                     tuple(f"{letters(first_col + col)}{first_row + top + 1}:"
                           f"{letters(first_col + col)}{first_row + bottom + 1}"
                           for top, bottom, col in filled), given, shown, notes)


def _no_text(values: list) -> bool:
    """Whether a column has values and not one text cell among them (numbers, dates…)."""
    if str not in set(map(type, values)):
        return bool(values)  # an empty cell is ""
    return not any(v.__class__ is str and v.strip() for v in values) and any(
        v != "" for v in values)


#: cells that look the same under any number format: text (an error cell, a formula, an empty
#: one) and TRUE
_AS_IS = frozenset({str, bool})


def _looks(cells: list[list], texts: dict[int, list[str]],
           formats: dict[tuple[int, str], np.ndarray]) -> dict[int, list[str]]:
    """column → its cells as text, those of a number format as the sheet shows them
    (``numfmt``), for the columns with a number or date cell of such a format. ``cells``: the
    values, a list per column; ``texts``: the texts of those of ``formats``' columns;
    ``formats``: (column, format code) → the positions in those lists of its cells."""
    looks: dict[int, list[str]] = {}
    for (j, code), at in formats.items():
        if not 0 <= j < len(cells):
            continue
        column = cells[j]
        at = at[(at >= 0) & (at < len(column))]
        values = column if len(at) == len(column) else [column[i] for i in at.tolist()]
        shows = ~np.fromiter(map(_AS_IS.__contains__, map(type, values)), bool, len(values))
        if not shows.all():
            at, values = at[shows], list(compress(values, shows))
        shown = shown_all(values, code)
        rendered = np.fromiter(map(is_not, shown, repeat(None)), bool, len(shown))
        if not rendered.any():
            continue
        out = looks.get(j)
        if out is None:
            out = looks[j] = list(texts[j])
        for i, text in zip(at[rendered].tolist(), compress(shown, rendered), strict=True):
            out[i] = text
    return looks


def _load(path: Path) -> tuple[str, PlainSheet, int | None]:
    """(first sheet's name, its rows as calamine values with the 0-based sheet row and column
    of ``rows[0][0]`` and the cells read as their plain value, the sheet's index when an
    export summary before it was skipped, else None). Rows are none for an empty sheet."""
    skipped_to = None
    try:
        # from a file object calamine tells the format by content, not by the file's name; a
        # panic of its is answered here, in one line: its hook's text is not shown
        with without_rust_panics(), open(path, "rb") as fh, \
                CalamineWorkbook.from_filelike(fh) as book:
            if not book.sheet_names:
                raise LookupError("the workbook has no sheets")
            index = _first_visible(book.sheets_metadata) or 0
            rows = _iterated(book, path, index)
            if _export_summary(rows.rows) and (after := _first_visible(
                    book.sheets_metadata, index + 1)) is not None:
                skipped_to = after
                rows = _iterated(book, path, after)
    except Interrupted:  # a signal, not the file's fault
        raise
    except BaseException as exc:  # calamine's errors, ValueError on odd cells, Rust panics
        if not _calamine_fault(exc):
            raise
        if limit := machine_limit(exc, f"reading {path}"):
            raise limit from None
        raise InputError(_unreadable(path, exc)) from None
    return book.sheet_names[skipped_to if skipped_to is not None else index], rows, skipped_to


def _calamine_fault(exc: BaseException) -> bool:
    """Whether calamine raised ``exc`` for the file: its errors, or a Rust panic (pyo3's
    PanicException is a BaseException, past ``except Exception``), not a signal."""
    return isinstance(exc, Exception) or type(exc).__name__ == "PanicException"


def _iterated(book: CalamineWorkbook, path: Path, index: int) -> PlainSheet:
    """The ``index``-th sheet's rows. calamine converts every cell as it goes and refuses the
    whole sheet for one it cannot (a duration past its range, a shared text the workbook
    lacks…): then its cells are read one by one from the XML, each odd one kept as its plain
    value and named (``xlsxcells``)."""
    from .xlsxcells import read_plain  # only for such a sheet

    try:
        sheet = book.get_sheet_by_index(index)  # its cells are parsed here…
        rows = list(sheet.iter_rows())  # …and made Python values here
    except Interrupted:
        raise
    except BaseException as exc:
        if not _calamine_fault(exc) or machine_limit(exc):
            raise
        try:
            with zipfile.ZipFile(path) as zf:
                part = _first_sheet_part(zf, index)
            return read_plain(path, part)
        except Exception:  # the XML cannot be read either: calamine's reason is the one
            raise exc from None
    end = sheet.end
    if not rows or end is None:
        return PlainSheet([], 0, 0, ())
    # rows end at ``end``; where they start differs between calamine versions (row 1 or the
    # first used row; the first used column)
    return PlainSheet(rows, end[0] + 1 - len(rows), end[1] + 1 - len(rows[0]), ())


#: what Apple Numbers writes at the top of the "Export Summary" sheet it puts before the
#: tables ("Include a summary worksheet"): a note and a list of the tables, never the list
_NUMBERS_SUMMARY = "This document was exported from Numbers."


def _export_summary(rows: list[list]) -> bool:
    first = rows[0][0] if rows and rows[0] else None
    return isinstance(first, str) and first.lstrip().startswith(_NUMBERS_SUMMARY)


def _fill(rows: list[list], texts: dict[tuple[int, int], str]) -> None:
    """Put each text at its (row, column) of ``rows`` where calamine left the cell empty, the
    rows made longer and wider when it lies past them: calamine leaves out a formula that has
    no saved value, and so a last row of them (a row it would otherwise count as blank)."""
    texts = {at: text for at, text in texts.items() if at[0] >= 0 and at[1] >= 0}
    if not texts:
        return
    width = max(len(rows[0]), 1 + max(j for _, j in texts))
    for row in rows:
        row.extend([""] * (width - len(row)))
    rows.extend([""] * width for _ in range(1 + max(i for i, _ in texts) - len(rows)))
    for (i, j), text in texts.items():
        if rows[i][j] == "":
            rows[i][j] = text


def _plain_undated(rows: list[list], undated: dict[tuple[int, int], str], first_row: int,
                   first_col: int, faults: tuple[CellFault, ...]) -> tuple[CellFault, ...]:
    """Put back the plain number of each date-formatted cell that is no date (negative, NaN):
    calamine makes -3 ``00:00:00`` and NaN 1899-12-30 without a word, a made-up value (an id
    or a module among them) where Excel shows ``#######``. Returns the cells, named."""
    known = {f.ref for f in faults}  # read by ``xlsxcells`` already, as their plain value
    out = []
    for (row, col), raw in sorted(undated.items()):
        ref = f"{letters(col)}{row + 1}"
        i, j = row - first_row, col - first_col
        if ref in known or not (0 <= i < len(rows) and 0 <= j < len(rows[i])):
            continue
        try:
            rows[i][j] = float(raw)
        except ValueError:  # no number ("-."): calamine's reading stays
            continue
        out.append(CellFault(ref, f"{raw} is out of range for its date format"))
    return tuple(out)


def _fill_down(rows: list[list], merged: list[tuple[int, int, int]]
               ) -> list[tuple[int, int, int]]:
    """Give each empty cell of a merge down one column (an id merged over the rows of its
    cadences: Excel keeps the value in the top cell only) the top cell's value, as the sheet
    shows it. (top row, bottom row, column), 0-based in ``rows``; a merge that starts in the
    header, or spans columns (a value shown across an id column would name another), is left
    as it is. Returns the merges that gave a value to a cell (the user is told: a merge can
    also be a layout habit, not a statement that each row holds the value)."""
    filled = []
    for top, bottom, col in merged:
        if top < 1 or top >= len(rows) or col < 0 or col >= len(rows[top]):
            continue
        value = rows[top][col]
        if value == "":
            continue
        gave = False
        for row in rows[top + 1:bottom + 1]:
            if col < len(row) and row[col] == "":
                row[col] = value
                gave = True
        if gave:
            filled.append((top, min(bottom, len(rows) - 1), col))
    return filled


def _clear_totals(rows: list[list], totals: list[tuple[int, int, int]]
                  ) -> tuple[list[int], dict[int, list[int]]]:
    """Empty each Excel table's totals row, (row, first column, last column) 0-based in
    ``rows``, over the table's columns: the row Excel adds under a table ("Total", a count of
    the ids) is a sum of the list, not a row of it. Returns the rows (0-based) that held
    something and now hold nothing (blank rows), and row → its columns outside the tables
    that still hold something: such a row stays a data row (what is beside a table may be a
    record), and is said."""
    cleared = set()
    for r, left, right in totals:
        if not 1 <= r < len(rows):  # never the header; past the end: nothing in it
            continue
        row = rows[r]
        span = range(max(left, 0), min(right + 1, len(row)))
        if any(row[j] != "" for j in span):
            cleared.add(r)
        for j in span:
            row[j] = ""
    beside = {r: [j for j, v in enumerate(rows[r]) if v != ""] for r in sorted(cleared)}
    beside = {r: cols for r, cols in beside.items() if cols}
    return sorted(cleared - beside.keys()), beside


def _unfilled(rows: list[list], merged: list[tuple[int, int, int, int]],
              filled: list[tuple[int, int, int]]) -> list[tuple[int, int, int, int]]:
    """The merges whose value stays in their top-left cell alone: those over several columns,
    on one row or several (a value shown across an id column and the next would give an id
    to a column, and rows, that never had it: only the sheet's author knows which cell it is
    meant for), and those that start in the header. Merges with an empty top-left cell show
    nothing, and are left out."""
    done = {(top, col) for top, _, col in filled}
    out = []
    for top, bottom, left, right in merged:
        if (bottom <= top and right <= left) or bottom < 1 or (top, left) in done or not (
                0 <= top < len(rows) and 0 <= left < len(rows[top])):
            continue
        if rows[top][left] != "" and (left != right or top < 1):
            out.append((top, bottom, left, right))
    return out


def _shortlist(items: list[str]) -> str:
    return ", ".join(items[:5]) + (f" and {len(items) - 5} more" if len(items) > 5 else "")


def _faults_line(faults: tuple[CellFault, ...]) -> tuple[str, str] | None:
    if not faults:
        return None
    these = "1 cell" if len(faults) == 1 else f"{len(faults)} cells"
    return (f"warning: {these} could not be read as the sheet's format says "
            f"({_shortlist([f'{f.ref}: {f.why}' for f in faults])}); batcher reads each as its "
            "plain value (a row whose id is such a cell is invalid) — check these cells",
            "unreadable_cells")


def _beside_totals_line(beside: dict[int, list[int]], first_row: int, first_col: int
                        ) -> tuple[str, str] | None:
    if not beside:
        return None
    rows = [r + first_row + 1 for r in beside]
    cells = [f"{letters(first_col + j)}{first_row + r + 1}" for r, cols in beside.items()
             for j in cols]
    which = (f"sheet row {rows[0]} is the totals row" if len(rows) == 1 else
             f"sheet rows {', '.join(map(str, rows))} are the totals rows")
    return (f"warning: {which} of an Excel table but also {'has' if len(rows) == 1 else 'have'}"
            f" cells outside the table ({_shortlist(cells)}): batcher leaves out the table's "
            "totals and reads the rest of the row as a data row — move those cells off the "
            "totals row if they are not a record", "totals_beside")


def _unfilled_line(unfilled: list[tuple[int, int, int, int]], first_row: int, first_col: int
                   ) -> tuple[str, str] | None:
    if not unfilled:
        return None
    refs = [f"{letters(first_col + left)}{first_row + top + 1}:"
            f"{letters(first_col + right)}{first_row + bottom + 1}"
            for top, bottom, left, right in unfilled]
    these = "1 merged cell spans" if len(refs) == 1 else f"{len(refs)} merged cells span"
    return (f"warning: {these} several columns, or starts in the header "
            f"({_shortlist(refs)}); batcher reads the value in its top-left cell only, the "
            "other cells it covers as empty — if they are meant to have it, unmerge the "
            "cells and fill them in", "merged_unfilled")


def _unreadable(path: Path, exc: BaseException) -> str:
    """The refusal of a file that is no workbook at all (named by its magic bytes), else a
    damaged-workbook line with the library's reason."""
    try:
        with open(path, "rb") as fh:
            head = fh.read(HEAD_BYTES)
        sniff_kind(path, head)
    except InputError as refused:
        return str(refused)
    except OSError:
        pass
    return (f"{path}: is not a readable .xlsx workbook ({type(exc).__name__}: {one_line(exc)}); "
            "open it in Excel and save it again as .xlsx, or save it as CSV UTF-8")


def cell_text(value: object) -> str:
    """The text of one calamine cell value.

    Text as it is; empty ``""``; ``TRUE``/``FALSE``; a number whose integer part has more than
    15 digits as Excel's scientific text (``1.99011700000012E+18``: 15 significant digits,
    trailing zeros dropped); another whole number as its digits (``123456789012345``); any
    other number as its shortest repr (``0.5``); dates, datetimes and times in ISO 8601
    (``2024-01-31``, ``2024-01-31T08:30:00``, ``08:30:00``); durations as ISO 8601
    ``[-]PnDTnHnMnS``. Error cells (``#N/A``) reach here as their text, and formulas without
    a saved value as their formula (``="554…"``; see ``_sheet_marks``).
    """
    if isinstance(value, str):
        return value
    if isinstance(value, bool):
        return "TRUE" if value else "FALSE"
    if isinstance(value, int | float):
        return _number_text(value)
    if isinstance(value, dt.timedelta):
        return _duration_text(value)
    if isinstance(value, dt.date | dt.time):
        return value.isoformat()
    return str(value)


def _number_text(x: int | float) -> str:
    if -_EXACT_LIMIT < x < _EXACT_LIMIT:
        return str(int(x)) if x == int(x) else repr(x)
    if not math.isfinite(x):
        return str(x)  # never written by Excel, but "NaN" parses as a number
    mantissa, exponent = f"{x:.{_EXACT_DIGITS - 1}E}".split("E")
    return f"{mantissa.rstrip('0').rstrip('.')}E{exponent}"


def _duration_text(td: dt.timedelta) -> str:
    sign, td = ("-", -td) if td < dt.timedelta(0) else ("", td)
    hours, rest = divmod(td.seconds, 3600)
    minutes, seconds = divmod(rest, 60)
    secs = f"{seconds}.{td.microseconds:06d}".rstrip("0") if td.microseconds else str(seconds)
    return f"{sign}P{td.days}DT{hours}H{minutes}M{secs}S"


def _texts(values: list) -> list[str]:
    """Each cell's text (:func:`cell_text`): the numbers all at once, another value made once
    however often it repeats (a date)."""
    kinds = set(map(type, values))
    if kinds <= {str}:
        return values
    if kinds == {float}:
        return _number_texts(values)
    if float not in kinds:
        return _each_text(values, bool in kinds)
    floats = np.fromiter(map(_FLOAT.__contains__, map(type, values)), bool, len(values))
    out = np.empty(len(values), dtype=object)
    out[floats] = _number_texts(list(compress(values, floats)))
    out[~floats] = _each_text(list(compress(values, ~floats)), bool in kinds)
    return out.tolist()


_FLOAT = frozenset({float})


def _each_text(values: list, typed: bool) -> list[str]:
    """cell_text() of each value, each distinct one made once. ``typed``: told apart by type
    too (TRUE is among them: True == 1 == 1.0)."""
    keys = list(zip(map(type, values), values, strict=True)) if typed else values
    texts: dict = dict.fromkeys(keys)
    for key in texts:
        texts[key] = cell_text(key[1] if typed else key)
    return list(map(texts.__getitem__, keys))


def _number_texts(numbers: list[float]) -> list[str]:
    """``_number_text`` of each float: digits of the whole ones, repr of the others below
    10**15 (a float's own text, each made in C), and Excel's scientific text past that."""
    x = np.array(numbers, dtype=np.float64)
    with np.errstate(invalid="ignore"):
        exact = np.abs(x) < _EXACT_LIMIT  # NaN and infinities too: not
    out = np.empty(len(x), dtype=object)
    whole = exact & (x == np.trunc(x))
    out[whole] = list(map(str, x[whole].astype(np.int64).tolist()))
    part = exact & ~whole
    out[part] = list(map(repr, x[part].tolist()))
    for i in np.flatnonzero(~exact).tolist():
        out[i] = _number_text(numbers[i])
    return out.tolist()


def _strings(texts: list[str]) -> pa.Array:
    joined = "".join(texts)
    data = joined.encode()
    if len(data) != len(joined):
        return strings_of(texts)  # not ASCII: a value's bytes are not its characters
    # ASCII (ids always are): the offsets are the characters' running count, three times
    # faster than encoding each value
    offsets = np.zeros(len(texts) + 1, np.int64)
    np.cumsum(np.fromiter(map(len, texts), np.int64, len(texts)), out=offsets[1:])
    if len(data) < 2**31:
        kind, offsets = pa.string(), offsets.astype(np.int32)
    else:
        kind = pa.large_string()
    return pa.Array.from_buffers(kind, len(texts), [None, pa.py_buffer(offsets),
                                                    pa.py_buffer(data)])


#: an error cell (t="e", not self-closing) and what it holds; any namespace prefix
_ERROR_CELL = re.compile(
    rb"<(?:\w+:)?c\s(?=[^>]*\bt=[\"']e[\"'])([^>]*?)(?<!/)>(.*?)</(?:\w+:)?c>", re.S)
#: a formula cell without a saved value (openpyxl writes ``<f>…</f><v/>``; Excel and
#: LibreOffice save every value): its attributes and its formula
_UNVALUED_CELL = re.compile(
    rb"<(?:\w+:)?c\b([^>]*?)(?<!/)>\s*<(?:\w+:)?f\b[^>]*?(?:/>|>([^<]*)</(?:\w+:)?f>)\s*"
    rb"(?:<(?:\w+:)?v\s*/>|<(?:\w+:)?v>\s*</(?:\w+:)?v>)?\s*</(?:\w+:)?c>")
#: what only such a cell holds (a value-less <v>, or a formula closing its cell): a chunk
#: without any of these is not parsed for them
_UNVALUED_HINTS = (b"<v/>", b"<v />", b"<v></v>", b"f></c>", b"/></c>", b":v/>", b":v />",
                   b":f></")
_CELL_REF = re.compile(rb"\br=[\"']([A-Z]{1,3})([0-9]{1,7})[\"']")
#: a cell's type other than a number's: Excel saves a formula whose value is "" (an IF that
#: leaves a row empty, filled down past the list) as ``t="str"`` with an empty ``<v>``
_TYPED = re.compile(rb"\bt=[\"'](?!n[\"'])")
_CELL_STYLE = re.compile(rb"\bs=[\"']([0-9]{1,6})[\"']")
#: a number cell whose saved value no date can be (negative, NaN): its attributes and value
_NO_DATE_CELL = re.compile(
    rb"<(?:\w+:)?c\s([^>]*?)(?<!/)>\s*(?:<(?:\w+:)?f\b[^>]*?(?:/>|>[^<]*</(?:\w+:)?f>)\s*)?"
    rb"<(?:\w+:)?v>\s*(-[0-9.Ee+-]+|[Nn][Aa][Nn])\s*</")
#: what only a chunk with such a value holds (memchr-fast, unlike a regex)
_NO_DATE_HINTS = (b"v>-", b"v>N", b"v>n")
_CELL_VALUE = re.compile(rb"<(?:\w+:)?v>([^<]*)</")
_RANGE = re.compile(r"\$?([A-Z]{1,3})\$?([0-9]{1,7}):\$?([A-Z]{1,3})\$?([0-9]{1,7})")
#: a hidden row's opening tag, with its number or without (:func:`_positional_marks`)
_ANY_HIDDEN_ROW = re.compile(rb"<(?:\w+:)?row\s[^>]*\bhidden=[\"'](?:1|true)[\"']")
#: a hidden row's opening tag, and its number
_HIDDEN_ROW = re.compile(
    rb"<(?:\w+:)?row\s(?=[^>]*\bhidden=[\"'](?:1|true)[\"'])[^>]*?\br=[\"']([0-9]{1,7})[\"']")
#: a merged range (``A2:A4``, ``C2:D5``), after the sheet's cells
_MERGED_RANGE = re.compile(rb"<(?:\w+:)?mergeCell\s[^>]*?\bref=[\"']([A-Z]{1,3})([0-9]{1,7}):"
                           rb"([A-Z]{1,3})([0-9]{1,7})[\"']")
_CHUNK = 1 << 22
_OVERLAP = 1 << 16  # longer than any cell: a formula is at most 8,192 characters


class _Marks(NamedTuple):
    texts: dict[tuple[int, int], str]
    hidden: set[int]
    #: (top row, bottom row, left column, right column), 0-based
    merged: list[tuple[int, int, int, int]]
    #: the sheet's Excel tables' totals rows: (row, first column, last column), 0-based
    totals: list[tuple[int, int, int]]
    #: (0-based column, number format code) → the 0-based rows of the cells styled with it
    #: (ascending): a format other than General or text (``@``)
    formats: dict[tuple[int, str], np.ndarray]
    #: (0-based row, column) → the saved value of each date-formatted number no date can be
    #: (negative, NaN), which calamine turns into a made-up time or date
    undated: dict[tuple[int, int], str]


def _sheet_marks(path: Path, index: int | None = None) -> _Marks:
    """What calamine does not tell of the first sheet: (0-based row, column) → text of its
    error cells (``#N/A``, ``#REF!``…), which it reads as empty (python-calamine issue #105: a
    VLOOKUP that found nothing must show as ``#N/A``, not as a missing id), and of its formulas
    without a saved value (a sheet a program wrote and no spreadsheet saved), which it leaves
    out: ``=`` and the formula, so such an id is invalid, named, and its row never taken for
    a blank one; its hidden rows
    (0-based), which a filter hides from the person who hands the file over; its merges
    down one column, as (top row, bottom row, column), 0-based; and its Excel tables' totals
    rows, as (row, first column, last column), 0-based; and the number format of each cell
    whose style has one (``numfmt``: a carried cell is shown as the sheet shows it). The
    sheet's XML is streamed; only chunks that hold an error cell, a hidden row or a formatted
    style are parsed; a sheet whose
    such cells or rows carry no reference (``r``: optional, and some writers leave it out) is
    parsed again whole, counting cells and rows. ``index``: of
    the workbook's ``index``-th sheet instead. Best effort: nothing when the sheet's part
    cannot be found."""
    found: dict[tuple[int, int], str] = {}
    hidden: set[int] = set()
    merged: set[tuple[int, int, int, int]] = set()
    # a cell the chunks' overlap holds twice is here twice, till the rows are made distinct
    formats: dict[tuple[int, str], list[np.ndarray]] = {}
    undated: dict[tuple[int, int], str] = {}
    positional = False
    try:
        with zipfile.ZipFile(path) as zf:
            part = _first_sheet_part(zf, index)
            styles = _number_formats(zf)
            styled = _styled_cell(styles)
            dated = frozenset(k for k, kind in date_styles(zf).items() if kind == "date")
            undated_cell = _undated_cell(dated)
            needles = [q % k for k in styles for q in (b' s="%d"', b" s='%d'")]
            with zf.open(part) as fh:
                tail = b""
                while chunk := fh.read(_CHUNK):
                    data = tail + chunk
                    if styled is not None and (len(styles) > _NEEDLES
                                               or any(n in data for n in needles)):
                        _parse_formats(data, styled, styles, formats)
                    if b't="e"' in data or b"t='e'" in data:  # memchr-fast, unlike a regex
                        positional |= _found(found, _parse_errors(data))
                    # a formula's <f> first (2 searches, not 8: a sheet has none, or values)
                    if (b"<f" in data or b":f" in data) and any(
                            hint in data for hint in _UNVALUED_HINTS):
                        positional |= _found(found, _parse_unvalued(data))
                    if undated_cell is not None and any(h in data for h in _NO_DATE_HINTS):
                        undated.update(_parse_undated(data, undated_cell, dated))
                    if b"hidden=" in data:
                        rows = [int(m[1]) - 1 for m in _HIDDEN_ROW.finditer(data)]
                        hidden.update(rows)
                        positional |= len(_ANY_HIDDEN_ROW.findall(data)) > len(rows)
                    if b"mergeCell" in data:  # a merge the overlap holds twice is one
                        merged.update(_merges(data))
                    tail = data[-_OVERLAP:]  # a cell cut by the chunk's end is whole in the next
            if positional:
                with zf.open(part) as fh:
                    found, hidden = _positional_marks(fh)
            try:
                totals = _table_totals(zf, part)
            except Exception:  # a damaged table part: the rows are read as they are
                totals = []
    except Exception:  # calamine read the sheet: without the part, nothing is marked
        return _Marks({}, set(), [], [], {}, {})
    return _Marks(found, hidden, sorted(merged), totals,
                  {key: _distinct(np.concatenate(rows)) for key, rows in formats.items()},
                  undated)


def _distinct(rows: np.ndarray) -> np.ndarray:
    """The rows once each, ascending: np.unique hashes, 10x slower on rows nearly in order."""
    rows = np.sort(rows, kind="stable")  # runs in order: merged, not sorted again
    return rows[np.concatenate(([True], rows[1:] != rows[:-1]))]


def _found(found: dict[tuple[int, int], str],
           parsed: dict[tuple[int, int] | None, str]) -> bool:
    """Add the cells ``parsed`` placed to ``found``; whether one of them had no reference."""
    unplaced = parsed.pop(None, None) is not None
    found.update(parsed)  # type: ignore[arg-type]  # None popped
    return unplaced


def _positional_marks(fh) -> tuple[dict[tuple[int, int], str], set[int]]:
    """The error cells, formulas without a value and hidden rows of a sheet part, each cell and
    row placed by its ``r`` when it has one, else after the one before it (as Excel reads a
    sheet whose writer left the references out)."""
    found: dict[tuple[int, int], str] = {}
    hidden: set[int] = set()

    def on_row(row: int, el: ElementTree.Element) -> None:
        if el.get("hidden") in ("1", "true"):
            hidden.add(row)

    for row, col, el in placed_cells(fh, on_row):
        text = _marked_text(el)
        if text is not None:
            found[(row, col)] = text
    return found, hidden


def _marked_text(cell: ElementTree.Element) -> str | None:
    """The text calamine leaves out of a cell: an error's, or ``=`` and a formula without a
    saved value; None for any other cell."""
    children = {child.tag.rpartition("}")[2]: child for child in cell}
    value = children.get("v")
    typ = cell.get("t", "n")
    if typ == "e":
        return value.text if value is not None and value.text else None
    formula = children.get("f")
    if formula is None or (value is not None and value.text) or typ != "n":
        return None  # a value was saved (t="str" with an empty one: "", an IF's)
    return "=" + (formula.text or "")


#: a table part's relationship, from its sheet's
_TABLE_REL = "/table"


def _table_totals(zf: zipfile.ZipFile, part: str) -> list[tuple[int, int, int]]:
    """(row, first column, last column), 0-based, of the totals rows of the sheet's Excel
    tables (Insert > Table, then Table Design > Total Row): a table's ``ref`` ends with its
    ``totalsRowCount`` totals rows."""
    folder, name = posixpath.split(part)
    rels_part = posixpath.join(folder, "_rels", name + ".rels")
    if rels_part not in zf.namelist():
        return []
    out = []
    for rel in ElementTree.fromstring(zf.read(rels_part)).iterfind("{*}Relationship"):
        target = rel.get("Target") or ""
        if not (rel.get("Type") or "").endswith(_TABLE_REL) or rel.get("TargetMode"):
            continue
        target = target[1:] if target.startswith("/") else posixpath.normpath(
            posixpath.join(folder, target))
        table = ElementTree.fromstring(zf.read(target))
        count = int(table.get("totalsRowCount") or 0)
        ref = _RANGE.fullmatch(table.get("ref") or "")
        if not count or not ref:
            continue
        left, right = column_index(ref[1]), column_index(ref[3])
        bottom = int(ref[4]) - 1
        out += [(r, left, right) for r in range(bottom - count + 1, bottom + 1)]
    return out


#: a chunk is searched for formatted cells when it holds one of their styles' ``s="N"``
#: (memchr-fast), up to this many styles; a workbook of more is searched chunk by chunk
_NEEDLES = 16


def _number_formats(zf: zipfile.ZipFile) -> dict[int, str]:
    """Cell style (``s``) → its number format code, for the styles of a format that is not
    General or text: xl/styles.xml's ``cellXfs``, their ``numFmtId`` a custom ``numFmt`` or
    a built-in one (``numfmt.BUILTIN``; a locale-dependent built-in is left out)."""
    try:
        root = ElementTree.fromstring(zf.read("xl/styles.xml"))
    except Exception:  # no styles, or damaged ones: the values' own text, the rest marked
        return {}
    custom = {int(f.get("numFmtId")): f.get("formatCode", "")
              for f in root.iterfind("{*}numFmts/{*}numFmt")
              if (f.get("numFmtId") or "").isdigit()}
    out = {}
    for k, xf in enumerate(root.iterfind("{*}cellXfs/{*}xf")):
        fmt = int(xf.get("numFmtId") or 0) if (xf.get("numFmtId") or "0").isdigit() else 0
        code = custom.get(fmt, BUILTIN.get(fmt, ""))
        if code and code not in ("General", "@"):
            out[k] = code
    return out


def _styled_cell(styles: dict[int, str]
                 ) -> tuple[re.Pattern[bytes], re.Pattern[bytes]] | None:
    """A cell whose ``s`` is one of ``styles``: ``<c r="B12" s="3"`` as nearly every writer has
    it (the reference and style, ``B12" s="3``: a pattern that starts with its literal text is
    searched for as fast as a string), and its reference and style in any order, of any
    namespace prefix."""
    if not styles:
        return None
    alternatives = b"|".join(b"%d" % k for k in sorted(styles))
    plain = re.compile(rb"<c r=\"([A-Z]{1,3}[0-9]{1,7}\" s=\"(?:" + alternatives + rb"))\"")
    return plain, re.compile(rb"<(?:\w+:)?c\s(?=[^>]*?\bs=[\"'](" + alternatives + rb")[\"'])"
                      rb"[^>]*?\br=[\"']([A-Z]{1,3})([0-9]{1,7})[\"']|"
                      rb"<(?:\w+:)?c\s[^>]*?\br=[\"']([A-Z]{1,3})([0-9]{1,7})[\"']"
                      rb"(?=[^>]*?\bs=[\"'](" + alternatives + rb")[\"'])")


def _parse_formats(data: bytes, styled: tuple[re.Pattern[bytes], re.Pattern[bytes]],
                   styles: dict[int, str], into: dict[tuple[int, str], list[np.ndarray]]
                   ) -> None:
    # Excel, LibreOffice, openpyxl and xlsxwriter write <c r="B12" s="3": a plain pattern
    cells = styled[0].findall(data)
    if cells:
        col, row, style = _refs_and_styles(cells)
    else:
        found = [(m[2], m[3], m[1]) if m[1] is not None else (m[4], m[5], m[6])
                 for m in styled[1].finditer(data)]
        if not found:
            return
        col = np.array([column_index(c.decode()) for c, _, _ in found], dtype=np.int64)
        row = np.array([int(r) - 1 for _, r, _ in found], dtype=np.int64)
        style = np.array([int(s) for _, _, s in found], dtype=np.int64)
    keys, group = np.unique(col << 32 | style, return_inverse=True)
    for k, key in enumerate(keys.tolist()):
        into.setdefault((key >> 32, styles[key & 0xFFFFFFFF]), []).append(row[group == k])


def _refs_and_styles(cells: list[bytes]) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(0-based column, 0-based row, style) of each ``B12" s="3``, as arrays: read by
    position in a byte matrix, not a cell at a time."""
    found = np.array(cells)  # fixed width, zero-padded
    m = found.view(np.uint8).reshape(len(found), found.dtype.itemsize).astype(np.int64)
    letters = ((m[:, :3] >= 65) & (m[:, :3] <= 90)).sum(axis=1)  # A-Z: 1 to 3
    quote = (m == 34).argmax(axis=1)  # the reference's closing "
    col = np.zeros(len(m), np.int64)
    row = np.zeros(len(m), np.int64)
    style = np.zeros(len(m), np.int64)
    for k in range(m.shape[1]):
        c = m[:, k]
        col = np.where(k < letters, col * 26 + c - 64, col)
        row = np.where((k >= letters) & (k < quote), row * 10 + c - 48, row)
        style = np.where((k > quote + 4) & (c != 0), style * 10 + c - 48, style)  # past " s="
    return col - 1, row - 1, style


def _merges(data: bytes) -> Iterator[tuple[int, int, int, int]]:
    for m in _MERGED_RANGE.finditer(data):
        top, left = _position(m)
        yield top, int(m[4]) - 1, left, column_index(m[3].decode())


def _undated_cell(dated: frozenset[int]) -> re.Pattern[bytes] | None:
    """A number cell of a style in ``dated`` whose value no date can be, as nearly every writer
    has it (``<c r="B12" s="3"><v>-2</v>``: searched as fast as a string, as ``_styled_cell``);
    None without such styles."""
    if not dated:
        return None
    alternatives = b"|".join(b"%d" % k for k in sorted(dated))
    return re.compile(rb'<c r="([A-Z]{1,3})([0-9]{1,7})" s="(?:' + alternatives +
                      rb')"(?: t="n")?>(?:<f>[^<]*</f>|<f [^>]*/>)?<v>(-[0-9.Ee+-]+|[Nn][Aa][Nn])'
                      rb'</v>')


def _parse_undated(data: bytes, plain: re.Pattern[bytes], dated: frozenset[int]
                   ) -> dict[tuple[int, int], str]:
    """(0-based row, column) → saved value of the number cells of a date style in ``dated``
    whose value is negative or NaN (a cell without a reference is left: best effort)."""
    if b'<c r="' in data:  # the plain way of writing cells: the fast pattern finds them all
        return {_position(m): m[3].decode("ascii") for m in plain.finditer(data)}
    found = {}
    for cell in _NO_DATE_CELL.finditer(data):
        ref, style = _CELL_REF.search(cell[1]), _CELL_STYLE.search(cell[1])
        if ref and style and int(style[1]) in dated and not _TYPED.search(cell[1]):
            found[_position(ref)] = cell[2].decode("ascii", "replace")
    return found


def _parse_errors(data: bytes) -> dict[tuple[int, int] | None, str]:
    found = {}
    for cell in _ERROR_CELL.finditer(data):
        ref, value = _CELL_REF.search(cell[1]), _CELL_VALUE.search(cell[2])
        if value:  # without a reference: placed by counting (None)
            found[_position(ref) if ref else None] = value[1].decode("utf-8", "replace")
    return found


def _parse_unvalued(data: bytes) -> dict[tuple[int, int] | None, str]:
    found = {}
    for cell in _UNVALUED_CELL.finditer(data):
        if _TYPED.search(cell[1]):  # a value of a type was saved: "" (an IF)
            continue
        ref = _CELL_REF.search(cell[1])
        formula = unescape((cell[2] or b"").decode("utf-8", "replace"),
                           {"&quot;": '"', "&apos;": "'"})
        found[_position(ref) if ref else None] = "=" + formula
    return found


def _position(ref: re.Match) -> tuple[int, int]:
    """(0-based row, column) of a cell reference such as ``B12``."""
    return int(ref[2]) - 1, column_index(ref[1].decode())


def _first_visible(sheets: list, start: int = 0) -> int | None:
    """The index of the first sheet of cells a user sees, from ``start`` on (a hidden lookup
    sheet often comes first: its ids are not the list; a chart sheet, as Excel's F11 puts it,
    has no cells); None when there is none."""
    return next((i for i, m in enumerate(sheets) if i >= start and m.typ == SheetTypeEnum.
                 WorkSheet and m.visible == SheetVisibleEnum.Visible), None)


def _first_sheet_part(zf: zipfile.ZipFile, index: int | None = None) -> str:
    """The zip path of the workbook's first visible sheet (as ``_first_visible`` picks it): the
    first ``<sheet>`` of xl/workbook.xml without a hidden state, through its relationship id in
    xl/_rels/workbook.xml.rels; or of its ``index``-th ``<sheet>`` (calamine's order)."""
    sheets = list(ElementTree.fromstring(zf.read("xl/workbook.xml")).iterfind(".//{*}sheet"))
    rels = {r.get("Id"): (r.get("Type") or "", r.get("Target") or "") for r in
            ElementTree.fromstring(zf.read("xl/_rels/workbook.xml.rels")).iterfind(
                "{*}Relationship")}

    def rel(sheet: ElementTree.Element) -> tuple[str, str]:
        # r:id, in the transitional or the strict relationships namespace
        return rels[next(v for k, v in sheet.attrib.items() if k.endswith("}id"))]

    sheet = sheets[index] if index is not None else next(
        (s for s in sheets if s.get("state", "visible") == "visible"
         and rel(s)[0].endswith("/worksheet")), sheets[0])
    target = rel(sheet)[1]
    return target[1:] if target.startswith("/") else posixpath.normpath(f"xl/{target}")
