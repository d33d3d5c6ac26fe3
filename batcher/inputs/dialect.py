"""CSV dialect detection: the delimiter, the lines before the header, and the header itself,
decided from the first bytes of the file.

``csv.Sniffer`` guesses from character counts and takes apostrophes for quotes, so a comma file
whose notes say ``see you; 'maybe'; bye`` comes out as one column. Here each candidate delimiter
parses the sample as whole, quote-aware records (only ``"`` quotes), and the one that splits the
header and the records into the same number of fields, more than one, wins.
"""

from __future__ import annotations

import csv
import io
import re
from contextlib import suppress
from dataclasses import dataclass
from itertools import islice

from ..errors import InputError

#: candidates, in the order that breaks a tie the header and the sample leave
DELIMITERS = (",", ";", "\t", "|")

_NAMED = {"tab": "\t", "\\t": "\t", "comma": ",", "semicolon": ";", "pipe": "|"}

_SAMPLE_RECORDS = 200  # header included: enough to see a delimiter's consistency

_SEP_LINE = re.compile(r'sep=([^"\r\n])(?:\r\n|\n|\r|$)', re.IGNORECASE)  # Excel's first line

#: lines before the header with nothing in them: empty, or only delimiters, spaces and empty
#: quoted fields (how Excel saves a sheet's empty first rows: ",,"; other tools: '"",""')
_EMPTY_LINES = re.compile(r'(?:(?:[ \t,;|]|"")*(?:\r\n|\n|\r))*')

_LINE_END = re.compile(r"\r\n|\n|\r")
#: what makes a line a data record: a Zoho id (15-19 digits) among its fields
_ID = re.compile(r"(?<!\d)[1-9]\d{14,18}(?!\d)")


@dataclass(frozen=True)
class Dialect:
    """How to read a CSV file.

    ``delimiter``: one character. ``skip_rows``: lines before the header (Excel's ``sep=`` line,
    empty lines); ``rows_above``: those of them a spreadsheet shows as rows (the empty ones:
    Excel hides a ``sep=`` line), so data record ``i`` (1-based) is on its row
    ``i + 1 + rows_above``. ``newlines_in_values``: a quoted field of the sample spans lines
    (the reader must find records quote-aware). ``header``: the header's fields, as they are
    (may be empty when the sample holds no line).
    """

    delimiter: str = ","
    skip_rows: int = 0
    newlines_in_values: bool = False
    header: tuple[str, ...] = ()
    rows_above: int = 0


def detect(head: bytes, delimiter: str | None) -> Dialect:
    """The dialect of a CSV whose first bytes (decompressed, UTF-8, with or without BOM) are
    ``head``; what follows its last line break (a record the head cut) is left out.

    The delimiter is ``delimiter`` when given (the ``--delimiter`` flag: one character, or
    ``tab``/``\\t``, ``comma``, ``semicolon``, ``pipe``), else the one Excel's ``sep=X`` first
    line names, else the candidate among ``,`` ``;`` tab ``|`` whose header has more than one
    field and whose sampled records most often have as many (ties: the one that splits the
    header into more fields, then the order above). A ``sep=`` line is skipped either way.
    Raises InputError (one line) for a bad ``delimiter``.
    """
    given = _given(delimiter) if delimiter is not None else None
    text = _whole_records(head.decode("utf-8", errors="replace").removeprefix("\ufeff"))
    skip = 0
    sep = _SEP_LINE.match(text)
    if sep:
        skip, text = 1, text[sep.end():]
    empty = _EMPTY_LINES.match(text).group()  # the header is the first line with something
    above = len(_LINE_END.findall(empty))
    skip += above
    text = text[len(empty):]
    chosen = given or (sep.group(1) if sep else _best(text))
    records = _records(text, chosen)
    if records:
        _refuse_unclosed_quote(text, chosen, len(records[0]), skip)
    return Dialect(chosen, skip, any("\n" in f or "\r" in f for r in records for f in r),
                   tuple(records[0]) if records else (), above)


def _refuse_unclosed_quote(text: str, delimiter: str, width: int, skip: int) -> None:
    """A quote that never closes makes the rest of the file one field, and its rows silently
    vanish. A quoted field holding lines that look like whole records (as many delimiters as a
    record has, and an id among them) is that: InputError naming the line where the quote
    opened. A note that merely holds line breaks and delimiters has no ids."""
    if width < 3:
        return
    reader = csv.reader(io.StringIO(text, newline=""), delimiter=delimiter, quotechar='"',
                        doublequote=True, strict=False)
    start = 1
    with suppress(csv.Error):
        for record in islice(reader, _SAMPLE_RECORDS):
            for field in record:
                lines = field.splitlines()
                if len(lines) > 1 and any(line.count(delimiter) >= width - 1 and _ID.search(line)
                                          for line in lines):
                    raise InputError(
                        f"line {start + skip}: a quote opens there and does not close where "
                        "the field ends, so the lines after it would be read as one field; "
                        "fix the quote (or double it: \"\") and run again")
            start = reader.line_num + 1


def _given(value: str) -> str:
    char = _NAMED.get(value.lower(), value)
    if len(char) != 1 or char in "\"\r\n":
        raise InputError(f"--delimiter {value!r}: give one character (not a quote or a line "
                         "break), or one of tab, comma, semicolon, pipe")
    return char


def _whole_records(text: str) -> str:
    """``text`` up to its last line break: a head read from a longer file ends mid-record."""
    end = max(text.rfind("\n"), text.rfind("\r"))
    return text[:end + 1] if end >= 0 else text


def _records(text: str, delimiter: str) -> list[list[str]]:
    """The first records of ``text`` as the CSV reader sees them (an empty line is ``[]``)."""
    reader = csv.reader(io.StringIO(text, newline=""), delimiter=delimiter, quotechar='"',
                        doublequote=True, strict=False)
    out: list[list[str]] = []
    with suppress(csv.Error):  # a NUL or an overlong field: judge on the records before it
        for record in islice(reader, _SAMPLE_RECORDS):
            out.append(record)
    return out


def _best(text: str) -> str:
    def score(delimiter: str) -> tuple[bool, int, int]:
        records = _records(text, delimiter)
        if not records:
            return False, 0, 0
        width = len(records[0])
        data = [r for r in records[1:] if any(f.strip() for f in r)]  # blank rows say nothing
        return width > 1, sum(len(r) == width for r in data), width

    return max(DELIMITERS, key=score)
