"""The input's own columns (Email, Name, Owner…), carried to the results by reading the input
again when they are written: nothing of them is held or stored in the meantime, so a job of
tens of millions of rows keeps its memory flat. The journal is bound to the input's
fingerprint, so the second read sees the rows the job was planned from."""

from __future__ import annotations

import os
from collections import Counter
from collections.abc import Callable, Iterator
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np
import pyarrow as pa

from ..arrays import arrow_of
from .formats import open_source, raw_batches
from .options import InputOptions
from .records import RecordList, expanded

_CARRY = "carry:"  # role names of carried columns: never a role of the reader's own


@dataclass(frozen=True)
class Carried:
    """The input's other columns: ``names`` in file order, and ``tables()`` streaming them as
    string tables whose rows line up one-to-one, in order, with the results rows (blank rows
    left out, a record list's rows repeated per cadence)."""

    names: tuple[str, ...]
    tables: Callable[[], Iterator[pa.Table]]
    #: names the header holds more than once: only the first such column is carried
    repeated: tuple[str, ...] = ()


def carried_columns(path: str | os.PathLike[str], options: InputOptions,
                    records: RecordList | None = None) -> Carried | None:
    """The input's columns other than record id, cadence id and module; None when it has none.
    ``records``: a record list's cadences as the scan had them (``--cadence`` ids are taken
    from ``options``). Raises InputError when the file cannot be read."""
    records = records or (RecordList.given(options.cadences) if options.cadences else None)
    src = open_source(Path(path), options)
    names = tuple(dict.fromkeys(n for n in src.found if n not in src.roles.values()))
    if not names:
        return None
    src = replace(src, roles={**src.roles, **{_CARRY + n: n for n in names}})

    def tables() -> Iterator[pa.Table]:
        for batch in expanded(raw_batches(src), records, options.module, encoded=False):
            table = pa.table({n: batch[_CARRY + n] for n in names})
            blank = batch.get("blank")
            yield table if blank is None else table.filter(arrow_of(~np.asarray(blank)))

    counts = Counter(src.found)
    repeated = tuple(n for n in names if counts[n] > 1)
    return Carried(names, tables, repeated)
