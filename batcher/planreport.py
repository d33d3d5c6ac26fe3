"""`batcher plan`: what a run of this input would send, and what it would cost."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from .inputs import DUPLICATE, INVALID, InputTable, read_input
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

    def as_dict(self) -> dict[str, Any]:
        return {
            "rows": self.rows, "pairs": self.pairs, "invalid": self.invalid,
            "duplicates": self.duplicates, "modules": self.modules, "cadences": self.cadences,
            "batches": self.batches, "lower_bound": self.lower_bound,
            "naive_batches": self.naive_batches,
            "invalid_examples": [{"row": r, "reason": t} for r, t in self.invalid_examples],
        }

    def exit_code(self) -> int:
        if self.invalid:
            return 1
        return 0 if self.pairs else 2

    def human(self) -> str:
        lines = [
            f"{self.rows} rows: {self.pairs} pairs to un-enroll, {self.invalid} invalid, "
            f"{self.duplicates} duplicates",
            f"{self.batches} calls planned (lower bound {self.lower_bound}, "
            f"naive per-cadence chunking {self.naive_batches}) over {self.cadences} cadences",
        ]
        for name, stats in sorted(self.modules.items()):
            lines.append(
                f"  {name}: {stats['pairs']} pairs, {stats['records']} records, "
                f"{stats['cadences']} cadences -> {stats['batches']} calls "
                f"(lower bound {stats['lower_bound']})"
            )
        for row, reason in self.invalid_examples:
            lines.append(f"  row {row}: {reason}")
        if self.invalid > len(self.invalid_examples):
            lines.append(f"  ... and {self.invalid - len(self.invalid_examples)} more invalid rows")
        if not self.pairs:
            lines.append("nothing to send: no valid pair in the input")
        return "\n".join(lines)


def summarise(table: InputTable, plan: Plan, examples: int = 10) -> PlanReport:
    invalid_rows = table.table.filter(pc.equal(table.table["status"], INVALID))
    shown = invalid_rows.slice(0, examples)
    module_stats = {name: _stats_dict(s) for name, s in plan.per_module.items()}
    return PlanReport(
        rows=table.rows,
        pairs=plan.n_pairs,
        invalid=invalid_rows.num_rows,
        duplicates=table.count(DUPLICATE),
        cadences=sum(s["cadences"] for s in module_stats.values()),
        batches=plan.n_batches,
        lower_bound=plan.lower_bound,
        naive_batches=plan.naive_batches,
        modules=module_stats,
        invalid_examples=tuple(zip(shown["row"].to_pylist(), shown["reason"].to_pylist(),
                                   strict=True)),
    )


def _stats_dict(stats: Any) -> dict[str, Any]:
    fields = ("pairs", "records", "cadences", "batches", "lower_bound", "naive_batches",
              "strategy")
    return {f: getattr(stats, f) for f in fields if hasattr(stats, f)}


def plan_input(path: str, default_module: str | None = None) -> PlanReport:
    table = read_input(path, default_module)
    return summarise(table, plan_table(table))


def plan_table(table: InputTable, keep: np.ndarray | None = None) -> Plan:
    """Plan the reader's valid pairs (``keep``: which of them are still wanted, e.g. after the
    preflight), reusing the reader's integer codes so that nothing is hashed twice."""
    _, record, cadence = table.valid_arrays()
    codes = table.codes
    if keep is not None:
        take = pa.array(np.flatnonzero(keep))
        record, cadence, codes = record.take(take), cadence.take(take), codes.filter(keep)
    return plan_codes(codes.module, codes.module_names, codes.record, record, codes.cadence,
                      cadence, text_per_pair=True)
