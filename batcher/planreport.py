"""`batcher plan`: what a run of this input would send, and what it would cost."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pyarrow.compute as pc

from .inputs import InputOptions, InputScan, rounding_line, scan_input, unusual_line
from .planner import Plan, plan_codes


@dataclass(frozen=True)
class PlanReport:
    rows: int
    pairs: int
    invalid: int
    duplicates: int
    cadences: int
    batches: int
    lower_bound: int
    naive_batches: int
    modules: dict[str, dict[str, Any]] = field(default_factory=dict)
    invalid_examples: tuple[tuple[int, str], ...] = ()
    blank: int = 0
    #: rows refused as spreadsheet-rounded, and the line that says so
    rounded: int = 0
    rounding: str | None = None

    def as_dict(self) -> dict[str, Any]:
        return {
            "rows": self.rows, "pairs": self.pairs, "invalid": self.invalid,
            "duplicates": self.duplicates, "modules": self.modules, "cadences": self.cadences,
            "batches": self.batches, "lower_bound": self.lower_bound,
            "naive_batches": self.naive_batches,
            "invalid_examples": [{"row": r, "reason": t} for r, t in self.invalid_examples],
            "blank": self.blank, "rounded": self.rounded,
        }

    def exit_code(self) -> int:
        if self.invalid:
            return 1
        return 0 if self.pairs else 2

    def human(self) -> str:
        lines = [
            f"{self.rows} rows: {self.pairs} pairs to un-enroll, {self.invalid} invalid, "
            f"{self.duplicates} duplicates" + (f", {self.blank} blank rows skipped"
                                                if self.blank else ""),
            f"{self.batches} calls planned (lower bound {self.lower_bound}, "
            f"naive per-cadence chunking {self.naive_batches}) over {self.cadences} cadences",
        ]
        for name, stats in sorted(self.modules.items()):
            lines.append(
                f"  {name}: {stats['pairs']} pairs, {stats['records']} records, "
                f"{stats['cadences']} cadences -> {stats['batches']} calls "
                f"(lower bound {stats['lower_bound']})"
            )
        if self.rounding:
            lines.append(self.rounding)
        for row, reason in self.invalid_examples:
            lines.append(f"  row {row}: {reason}")
        if self.invalid > len(self.invalid_examples):
            lines.append(f"  ... and {self.invalid - len(self.invalid_examples)} more invalid rows")
        if not self.pairs:
            lines.append("nothing to send: no valid pair in the input")
        return "\n".join(lines)


def summarise(scan: InputScan, plan: Plan) -> PlanReport:
    module_stats = {name: _stats_dict(s) for name, s in plan.per_module.items()}
    return PlanReport(
        rows=scan.rows,
        pairs=plan.n_pairs,
        invalid=scan.invalid,
        duplicates=scan.duplicates,
        # distinct ids: a record list's --cadence ids stand for every module's records
        cadences=pc.count_distinct(scan.cadence_text).as_py() if plan.n_pairs else 0,
        batches=plan.n_batches,
        lower_bound=plan.lower_bound,
        naive_batches=plan.naive_batches,
        modules=module_stats,
        invalid_examples=scan.invalid_examples,
        blank=scan.blank,
        rounded=scan.rounded,
        rounding="\n".join(line for line in (
            rounding_line(scan) if scan.rounded else None,
            unusual_line(scan) if scan.unusual_ids else None) if line) or None,
    )


def _stats_dict(stats: Any) -> dict[str, Any]:
    fields = ("pairs", "records", "cadences", "batches", "lower_bound", "naive_batches",
              "strategy")
    return {f: getattr(stats, f) for f in fields if hasattr(stats, f)}


def plan_input(path: str, options: InputOptions | str | None = None) -> PlanReport:
    scan = scan_input(path, options)
    return summarise(scan, plan_scan(scan))


def plan_scan(scan: InputScan, keep: np.ndarray | None = None) -> Plan:
    """Plan the scan's pairs (``keep``: which are still wanted, e.g. after the preflight) from
    the reader's integer codes, so nothing is hashed twice and no row text is needed."""
    codes = scan.codes if keep is None else scan.codes.filter(keep)
    # the records as their uint64 values: a batch's ids are taken as integers and made text a
    # block at a time by the journal, not ten million strings made and then taken
    return plan_codes(codes.module, codes.module_names, codes.record, scan.record_id_array,
                      codes.cadence, scan.cadence_text, cadence_modules=scan.cadence_modules,
                      record_masks=scan.record_masks if keep is None else None)
