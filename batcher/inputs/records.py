"""Record lists: a file of records without a cadence column, un-enrolled from given cadences.

Each input row becomes one position per cadence it asks for (``--cadence`` ids, or with
``--all-cadences`` the manual cadences of the row's module), so the scan and the planner see
ordinary (record, cadence) pairs; every position keeps the number of the row it came from.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import pyarrow as pa

from ..arrays import arrow_of, strings_of
from ..errors import InputError
from .ids import canonical_module, clean_ids, dictionary

#: the key of a record list's cadences for every module (``--cadence``)
ANY_MODULE = ""
#: why a row of an ``--all-cadences`` list names no cadence when the job stopped before it read
#: the org's cadences: the row is not sent (:class:`~batcher.report.UnplannedResults`), not
#: invalid, and no claim is made about the org's cadences
UNREAD = "no cadence named: the run stopped before it read the org's cadences"


@dataclass(frozen=True)
class RecordList:
    """module API name (or ``ANY_MODULE``) → the cadence ids each of its records leaves."""

    cadences: Mapping[str, Sequence[str]]
    #: the org's cadences were never read (``--all-cadences``, a job stopped before): no row
    #: has a cadence, and none is said to be without one in the org
    unread: bool = False

    @classmethod
    def given(cls, cadences: Sequence[str]) -> RecordList:
        """``--cadence`` ids, checked: InputError naming any that is not a Zoho id."""
        cleaned, ok = clean_ids(strings_of(list(cadences)))
        bad = [c for c, good in zip(cadences, ok, strict=True) if not good]
        if bad:
            raise InputError(f"--cadence {bad[0]!r} is not a 15-19 digit Zoho cadence id")
        return cls({ANY_MODULE: tuple(dict.fromkeys(cleaned.to_pylist()))})

    def of_module(self, module: str | None) -> Sequence[str]:
        """The cadences a record of ``module`` leaves. A module's name is matched ignoring case,
        as Zoho matches it (a custom module given as ``vendors_x__c`` is ``Vendors_X__c``)."""
        if ANY_MODULE in self.cadences:
            return self.cadences[ANY_MODULE]
        if not module:
            return ()
        found = self.cadences.get(module)
        if found is None:
            folded = module.casefold()
            found = next((c for m, c in self.cadences.items() if m.casefold() == folded), ())
        return found

    def expand(self, batch: dict[str, Any], row0: int, default_module: str | None,
               encoded: bool = True) -> dict[str, Any]:
        """One batch of input rows → one position per (row, cadence), in row order then in the
        order of the cadences. An invalid row (ragged, bad id, missing module) is invalid once
        per cadence, as a valid row would be a pair per cadence. A blank row (no results row),
        or one whose module has no cadence, stays one position (with no cadence: the scan
        reports it). Adds ``row``: the 1-based input row of every position. ``encoded``: the
        cadence column dictionary-encoded."""
        n = len(batch["record_id"])
        per_code, code, modules = self._cadences_per_row(batch, n, default_module)
        count = np.array([max(1, len(c)) for c in per_code], dtype=np.int64)[code]
        if "blank" in batch:
            count[batch["blank"]] = 1
        take = np.repeat(np.arange(n, dtype=np.int64), count)
        within = np.arange(len(take)) - np.repeat(np.cumsum(count) - count, count)
        flat = [c for cads in per_code for c in cads] + [""]
        start = np.cumsum([0] + [len(c) for c in per_code])[:-1]
        has = np.array([len(c) > 0 for c in per_code])[code][take]
        index = np.where(has, start[code][take] + within, len(flat) - 1).astype(np.int32)
        out = {key: _take(col, take) for key, col in batch.items()}
        said = np.zeros(n, dtype=bool)  # blank and ragged rows have their own say
        for key in ("blank", "ragged"):
            if key in batch:
                said |= batch[key] if key == "blank" else np.asarray(batch[key].is_valid())
        none = ~has & ~said[take]
        if none.any():  # why a row has no cadence: its module, not a "missing cadence id"
            why = [UNREAD if self.unread else _no_cadence(m) for m in modules]
            out["problem"] = strings_of([why[c] if lack else None for c, lack in
                                         zip(code[take].tolist(), none.tolist(), strict=True)])
        cadence = pa.DictionaryArray.from_arrays(arrow_of(index), strings_of(flat))
        out["cadence_id"] = cadence if encoded else cadence.dictionary_decode()
        out["row"] = take + (row0 + 1) if "row" not in batch else batch["row"][take]
        return out

    def _cadences_per_row(self, batch: dict[str, Any], n: int, default_module: str | None
                          ) -> tuple[list[Sequence[str]], np.ndarray, list[str | None]]:
        """(cadences of each distinct module value, the value's index per row, the module of
        each value)."""
        if ANY_MODULE in self.cadences or "module" not in batch:
            module = None if ANY_MODULE in self.cadences else canonical_module(
                default_module or "")
            return [self.of_module(module)], np.zeros(n, dtype=np.int64), [module]
        index, values = dictionary(batch["module"])
        default = canonical_module(default_module) if default_module else None
        names = [canonical_module(v) if v.strip() else default for v in values.to_pylist()]
        names.append(default)
        per_code = [self.of_module(m) for m in names]
        return per_code, np.where(index < 0, len(names) - 1, index), names


def _no_cadence(module: str | None) -> str:
    if module is None:
        return "missing module (add a module column or pass --module)"
    return f"no cadence to leave: this org has no manual_enrollment cadence in module {module}"


def _take(col: Any, take: np.ndarray) -> Any:
    if isinstance(col, np.ndarray):
        return col[take]
    return col.take(arrow_of(take))


def expanded(batches: Iterator[dict[str, Any]], records: RecordList | None,
             default_module: str | None, encoded: bool = True) -> Iterator[dict[str, Any]]:
    """``batches`` as they are, or expanded to (row, cadence) positions for a record list."""
    if records is None:
        yield from batches
        return
    row0 = 0
    for batch in batches:
        yield records.expand(batch, row0, default_module, encoded)
        row0 += len(batch["record_id"])
