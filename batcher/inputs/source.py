"""An opened input: its kind, columns and, for rows read into memory, the rows themselves."""

from __future__ import annotations

import os
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from ..arrays import numpy_of
from .columns import distinct_names
from .dialect import Dialect

#: the roles the reader takes from a row (the others are columns carried to the results)
ID_ROLES = frozenset({"record_id", "cadence_id", "module"})

#: a file's (size, mtime, inode, ctime): see :func:`file_stamp`
Stamp = tuple[int, int, int, int]


def file_stamp(path: str | os.PathLike[str]) -> Stamp:
    """The file's (size, mtime in ns, inode, ctime in ns): while it is the same, so are its
    bytes — a writer can set the mtime back, not the ctime, and a file put in its place by a
    rename has another inode. OSError when it is gone."""
    st = os.stat(path)
    return st.st_size, st.st_mtime_ns, st.st_ino, st.st_ctime_ns


@dataclass(frozen=True)
class Source:
    """An input file that was opened far enough to know its kind and columns.

    ``kind``: "csv", "parquet", or "table" for rows already read into memory (an .xlsx sheet,
    or a CSV the exact reader took): ``table`` holds the role columns as strings (each under
    its name in :attr:`names`), ``ragged``
    why each row is ragged (null for a good row; None when none is) and ``blank`` which rows
    have only empty fields (None when none has). A CSV's ``dialect`` says how to read it (its
    header is ``found``); ``compression`` is "gzip" for a gzipped one.
    """

    path: Path
    kind: str  # "csv", "parquet" or "table"
    roles: dict[str, str]  # role → column name
    found: tuple[str, ...]
    dialect: Dialect = Dialect()
    compression: str | None = None
    table: pa.Table | None = field(default=None, repr=False, compare=False)
    ragged: pa.Array | None = field(default=None, repr=False, compare=False)
    blank: np.ndarray | None = field(default=None, repr=False, compare=False)
    #: an .xlsx sheet's rows hidden (a filter, or by hand) that hold data, as Excel numbers them
    hidden: tuple[int, ...] = field(default=(), repr=False, compare=False)
    #: an .xlsx sheet's Excel-table totals rows (read as blank rows), as Excel numbers them
    totals: tuple[int, ...] = field(default=(), repr=False, compare=False)
    #: an .xlsx sheet's merges down a column whose value was given to each row (``A2:A4``)
    merged: tuple[str, ...] = field(default=(), repr=False, compare=False)
    #: (line, log event) of what the .xlsx reader did with other odd cells (``XlsxSheet.notes``)
    notes: tuple[tuple[str, str], ...] = field(default=(), repr=False, compare=False)
    #: the file's :meth:`stamp` when it was opened: a Source is reused only while it holds
    opened: Stamp | None = field(default=None, repr=False, compare=False)

    @property
    def names(self) -> tuple[str, ...]:
        """Each column's name as the readers address it: ``found`` made distinct
        (``columns.distinct_names``), so a name the header holds twice names two columns."""
        return distinct_names(self.found)

    def stamp(self) -> Stamp:
        return file_stamp(self.path)

    def still_current(self) -> bool:
        """Whether the file is as it was when opened (its kind, header and dialect hold)."""
        try:
            return self.opened is not None and self.stamp() == self.opened
        except OSError:
            return False



def empty_values(col: pa.Array | pa.ChunkedArray) -> np.ndarray | None:
    """Which values are missing (null), or text that is empty or whitespace only; None when
    none is."""
    chunks = col.chunks if isinstance(col, pa.ChunkedArray) else [col]
    masks = [_empty_chunk(c) for c in chunks]
    if all(m is None for m in masks):
        return None
    return np.concatenate([np.zeros(len(c), dtype=bool) if m is None else m
                           for c, m in zip(chunks, masks, strict=True)])



def _empty_chunk(arr: pa.Array) -> np.ndarray | None:
    null = numpy_of(arr.is_null()) if arr.null_count else None
    if pa.types.is_dictionary(arr.type):  # judged on its distinct values
        values = _empty_chunk(arr.dictionary)
        if values is None or not len(values):  # no values: every row is null (or none is)
            return null
        found = values[numpy_of(pc.fill_null(arr.indices, 0))]
        return found if null is None else found | null
    if pa.types.is_floating(arr.type):  # NaN: how pandas writes a missing number
        nan = numpy_of(pc.fill_null(pc.is_nan(arr), True))
        return nan if nan.any() else null
    if pa.types.is_binary(arr.type) or pa.types.is_large_binary(arr.type):
        empty = numpy_of(pc.fill_null(pc.equal(pc.binary_length(arr), 0), True))
        return empty if empty.any() else null
    if not (pa.types.is_string(arr.type) or pa.types.is_large_string(arr.type)):
        return null  # a number or a date is empty only when missing
    # utf8_is_space is false for "": two kernels and two reductions, no string copied
    space, length = pc.utf8_is_space(arr), pc.binary_length(arr)
    if null is None and not pc.any(space).as_py() and (pc.min(length).as_py() or 0) > 0:
        return None
    return numpy_of(pc.fill_null(pc.or_(space, pc.equal(length, 0)), True))



def table_parts(src: Source, start: int, part_rows: int) -> Iterator[dict[str, Any]]:
    """A "table" Source's rows from position ``start`` on, ``part_rows`` at a time."""
    n = src.table.num_rows
    for lo in range(start, n, part_rows):
        k = min(part_rows, n - lo)
        part: dict[str, Any] = {role: src.table[name].slice(lo, k).combine_chunks()
                                for role, name in src.roles.items()}
        if src.ragged is not None and src.ragged[lo:lo + k].null_count < k:
            part["ragged"] = src.ragged[lo:lo + k]
        if src.blank is not None and src.blank[lo:lo + k].any():
            part["blank"] = src.blank[lo:lo + k]
        yield part

