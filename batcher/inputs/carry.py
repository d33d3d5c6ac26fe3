"""The input's own columns (Email, Name, Owner…), carried to the results by reading the input
again when they are written: nothing of them is held or stored in the meantime, so a job of
tens of millions of rows keeps its memory flat. The journal is bound to the input's
fingerprint, so the second read sees the rows the job was planned from. An .xlsx sheet, held
whole in memory since it was opened, is not read again (seconds for a large sheet)."""

from __future__ import annotations

import os
from collections.abc import Callable, Iterator
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from ..arrays import arrow_of
from .formats import as_strings, open_source, raw_batches
from .options import InputOptions
from .records import RecordList, expanded
from .source import Source

_CARRY = "carry:"  # role names of carried columns: never a role of the reader's own


@dataclass(frozen=True)
class Carried:
    """The input's other columns: ``names`` in file order, and ``tables()`` streaming them as
    string tables whose rows line up one-to-one, in order, with the results rows (blank rows
    left out, a record list's rows repeated per cadence)."""

    names: tuple[str, ...]
    tables: Callable[[], Iterator[pa.Table]]


def carried_columns(path: str | os.PathLike[str], options: InputOptions,
                    records: RecordList | None = None, source: Source | None = None
                    ) -> Carried | None:
    """The input's columns other than record id, cadence id and module; None when it has none.
    Every column is carried, a name the header holds again made distinct as an .xlsx sheet's
    is (``Notes``, ``Notes (2)``: :attr:`Source.names`).
    ``records``: a record list's cadences as the scan had them (``--cadence`` ids are taken
    from ``options``). ``source``: the input as opened with these ``options``: its rows are
    taken from it when it holds all its columns in memory (an .xlsx sheet) and the file is as
    it was then. Raises InputError when the file cannot be read."""
    records = records or (RecordList.given(options.cadences) if options.cadences else None)
    src = source if source is not None and _whole(source, Path(path)) else \
        open_source(Path(path), options)
    names = tuple(n for n in src.names if n not in src.roles.values())
    if not names:
        return None
    src = replace(src, roles={**src.roles, **{_CARRY + n: n for n in names}})

    def tables() -> Iterator[pa.Table]:
        texts = {_CARRY + n: carried_text for n in names}
        for batch in expanded(raw_batches(src, texts), records, options.module, encoded=False):
            table = pa.table({n: batch[_CARRY + n] for n in names})
            blank = batch.get("blank")
            yield table if blank is None else table.filter(arrow_of(~np.asarray(blank)))

    return Carried(names, tables)


def _whole(source: Source, path: Path) -> bool:
    """Whether ``source`` is the file at ``path`` as it is now, every column of it in memory
    (a CSV the exact reader took holds only its role columns)."""
    return (source.kind == "table" and source.table is not None and source.path == path
            and set(source.names) <= set(source.table.column_names) and source.still_current())


#: floats below this are whole numbers exactly (2**53): their digits are the number's
_EXACT_WHOLE = float(2**53)


def carried_text(col: pa.Array) -> pa.Array:
    """A Parquet column as the text a user reads in it. A whole float is its digits: pandas
    stores a column of whole numbers with one missing as floats, and Arrow's text of a phone
    number 491511234567.0 is ``4.91511234567e+11``; other values as :func:`as_strings`."""
    if not pa.types.is_floating(col.type):
        return as_strings(col)
    values = pc.cast(col, pa.float64())
    text = pc.cast(values, pa.string())
    x = values.to_numpy(zero_copy_only=False)  # nulls as NaN: never whole
    with np.errstate(invalid="ignore"):
        whole = np.isfinite(x) & (np.abs(x) < _EXACT_WHOLE) & (x == np.trunc(x))
    if not whole.any():
        return text
    mask = arrow_of(whole)
    digits = pc.cast(pc.cast(values.filter(mask), pa.int64()), pa.string())
    return pc.replace_with_mask(text, mask, digits)
