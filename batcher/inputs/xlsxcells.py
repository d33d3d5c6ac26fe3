"""A sheet's cells read from its XML, one cell at a time: the way in when calamine refuses the
whole sheet for one odd cell.

calamine converts every cell of a sheet as it goes and raises (or panics) on the first it
cannot: a number formatted as a duration past ~2.7 million years (``[h]:mm:ss`` over 1e16, an
OverflowError or a Rust panic), a shared-string index past the table's end, a boolean cell
that holds neither 0 nor 1, an error value it does not know. Excel or another tool may still
have written such a cell, and one cell must not refuse a whole list: here each cell is
converted on its own (as calamine would: text, numbers, dates, times, durations), and one that
cannot be is kept as its plain value and named (``CellFault``), so its row is read and the
user told.
"""

from __future__ import annotations

import datetime as dt
import math
import posixpath
import re
import zipfile
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import IO, NamedTuple
from xml.etree import ElementTree

from .ids import EXCEL_ERRORS

#: builtin number formats that are dates or times (ECMA-376 18.8.30), and the elapsed ones
_DATE_IDS = frozenset({*range(14, 23), 45, 47, *range(27, 37), *range(50, 59)})
_DURATION_IDS = frozenset({46})
_QUOTED = re.compile(r'"[^"]*"|\\.|_.|\*.')
_ELAPSED = re.compile(r"\[(?:h+|m+|s+)\]", re.I)
_BRACKET = re.compile(r"\[[^\]]*\]")
_DATE_LETTER = re.compile(r"[dmyhs]", re.I)
_EPOCH = {False: dt.datetime(1899, 12, 30), True: dt.datetime(1904, 1, 1)}
_REF = re.compile(r"([A-Z]{1,3})([0-9]{1,7})")


class CellFault(NamedTuple):
    """A cell read as its plain value: its reference (``B7``) and why."""

    ref: str
    why: str


class PlainSheet(NamedTuple):
    rows: list[list]
    first_row: int  # 0-based sheet row of rows[0]
    first_col: int  # 0-based sheet column of rows[i][0]
    faults: tuple[CellFault, ...]


def unreadable_text(ref: str) -> str:
    """The text of a cell whose value cannot be found (a shared string the workbook lacks): it
    names the cell, so an id there is refused with a reason that says where."""
    return f"<unreadable cell {ref}>"


def read_plain(path: Path, part: str) -> PlainSheet:
    """The cells of the sheet at zip path ``part``, as calamine would give them, each odd one
    kept as its plain value and named."""
    with zipfile.ZipFile(path) as zf:
        strings = _shared_strings(zf)
        kinds = date_styles(zf)
        epoch = _EPOCH[_date1904(zf)]
        cells: dict[tuple[int, int], object] = {}
        faults: list[CellFault] = []
        with zf.open(part) as fh:
            for row, col, el in placed_cells(fh):
                value = _value(el, f"{letters(col)}{row + 1}", strings, kinds, epoch, faults)
                if value != "":
                    cells[(row, col)] = value
    if not cells:
        return PlainSheet([], 0, 0, tuple(faults))
    top = min(r for r, _ in cells)
    left = min(c for _, c in cells)
    width = 1 + max(c for _, c in cells) - left
    rows = [[""] * width for _ in range(1 + max(r for r, _ in cells) - top)]
    for (r, c), value in cells.items():
        rows[r - top][c - left] = value
    return PlainSheet(rows, top, left, tuple(faults))


def placed_cells(fh: IO[bytes], on_row: Callable[[int, ElementTree.Element], None] | None = None
                 ) -> Iterator[tuple[int, int, ElementTree.Element]]:
    """Each cell of a sheet part with its 0-based (row, column): by its ``r`` when it has one,
    else after the one before it (``r`` is optional: Excel reads a sheet whose writer left it
    out so). ``on_row(row, element)`` sees each row as it starts; a cell is cleared once the
    caller has taken it."""
    row = col = -1
    for event, el in ElementTree.iterparse(fh, events=("start", "end")):
        tag = el.tag.rpartition("}")[2]
        if event == "start" and tag == "row":
            r = el.get("r")
            row = int(r) - 1 if r and r.isdigit() else row + 1
            col = -1
            if on_row is not None:
                on_row(row, el)
        elif event == "end" and tag == "c":
            ref = _REF.fullmatch(el.get("r") or "")
            col = column_index(ref[1]) if ref else col + 1
            yield row, col, el
            el.clear()
        elif event == "end" and tag == "row":
            el.clear()


def _value(cell: ElementTree.Element, ref: str, strings: list[str], kinds: dict[int, str],
           epoch: dt.datetime, faults: list[CellFault]) -> object:
    typ = cell.get("t", "n")
    children = {child.tag.rpartition("}")[2]: child for child in cell}
    v = children.get("v")
    text = v.text or "" if v is not None else ""
    if typ == "inlineStr":
        inline = children.get("is")
        return "" if inline is None else "".join(
            t.text or "" for t in inline.iter() if t.tag.rpartition("}")[2] == "t")
    if typ == "s":
        index = int(text) if text.strip().isdigit() else -1
        if 0 <= index < len(strings):
            return strings[index]
        faults.append(CellFault(ref, f"its shared text ({text.strip() or 'none'}) is not in "
                                     "the workbook"))
        return unreadable_text(ref)
    if typ == "b":
        if text.strip() in ("0", "1"):
            return text.strip() == "1"
        faults.append(CellFault(ref, f"a TRUE/FALSE cell holding {text!r}"))
        return text
    if typ == "e" and text.strip().upper() not in EXCEL_ERRORS:
        faults.append(CellFault(ref, f"an error value no spreadsheet writes ({text!r})"))
    if typ in ("str", "d", "e"):
        return text  # an error's text: the id rules name it (``#N/A``)
    if not text.strip():
        return ""
    try:
        number = float(text)
    except ValueError:
        return text  # as calamine: the cell's text
    kind = kinds.get(int(cell.get("s") or 0) if (cell.get("s") or "0").isdigit() else 0)
    if kind is None:
        return number
    moment = _moment(number, kind, epoch)
    if moment is None:
        faults.append(CellFault(ref, f"{text.strip()} is out of range for its "
                                     f"{'duration' if kind == 'duration' else 'date'} format"))
        return number
    return moment


def _moment(x: float, kind: str, epoch: dt.datetime) -> object | None:
    """A date-formatted number as calamine gives it (a date, a datetime, a time below one day,
    a duration), to the millisecond; None when there is no such value."""
    if not math.isfinite(x):
        return None
    try:
        span = dt.timedelta(milliseconds=round(x * 86_400_000))
        if kind == "duration":
            return span
        if x < 0:
            return None
        if x < 1:
            return (dt.datetime.min + span).time()
        moment = epoch + span
    except (OverflowError, ValueError):
        return None
    return moment.date() if x == int(x) else moment


def _shared_strings(zf: zipfile.ZipFile) -> list[str]:
    target = _workbook_part(zf, "/sharedStrings")
    if target is None:
        return []
    out = []
    for si in ElementTree.fromstring(zf.read(target)).iterfind("{*}si"):
        # its text or its runs', not a phonetic guide's (``rPh``): what Excel shows
        out.append("".join(t.text or "" for t in (*si.iterfind("{*}t"),
                                                   *si.iterfind("{*}r/{*}t"))))
    return out


def date_styles(zf: zipfile.ZipFile) -> dict[int, str]:
    """Cell style → "date" or "duration", for the styles whose number format is one."""
    try:
        root = ElementTree.fromstring(zf.read("xl/styles.xml"))
    except Exception:  # no styles: no dates
        return {}
    custom = {f.get("numFmtId"): f.get("formatCode", "")
              for f in root.iterfind("{*}numFmts/{*}numFmt")}
    out = {}
    for k, xf in enumerate(root.iterfind("{*}cellXfs/{*}xf")):
        fid = xf.get("numFmtId") or "0"
        if fid in custom:
            kind = _code_kind(custom[fid])
        elif fid.isdigit():
            kind = ("duration" if int(fid) in _DURATION_IDS
                    else "date" if int(fid) in _DATE_IDS else None)
        else:
            kind = None
        if kind:
            out[k] = kind
    return out


def _code_kind(code: str) -> str | None:
    bare = _QUOTED.sub("", code)
    if _ELAPSED.search(bare):
        return "duration"
    return "date" if _DATE_LETTER.search(_BRACKET.sub("", bare)) else None


def _date1904(zf: zipfile.ZipFile) -> bool:
    try:
        pr = ElementTree.fromstring(zf.read("xl/workbook.xml")).find("{*}workbookPr")
    except Exception:
        return False
    return pr is not None and (pr.get("date1904") or "").lower() in ("1", "true")


def _workbook_part(zf: zipfile.ZipFile, kind: str) -> str | None:
    try:
        rels = ElementTree.fromstring(zf.read("xl/_rels/workbook.xml.rels"))
    except KeyError:
        return None
    for rel in rels.iterfind("{*}Relationship"):
        if (rel.get("Type") or "").endswith(kind):
            target = rel.get("Target") or ""
            return target[1:] if target.startswith("/") else posixpath.normpath(
                f"xl/{target}")
    return None


def letters(col: int) -> str:
    """The letters of a 0-based column (0 → A, 26 → AA)."""
    out = ""
    col += 1
    while col:
        col, rest = divmod(col - 1, 26)
        out = chr(65 + rest) + out
    return out


def column_index(letters: str) -> int:
    """The 0-based column of a reference's letters (A → 0, AA → 26)."""
    col = 0
    for letter in letters:
        col = col * 26 + ord(letter) - 64
    return col - 1
