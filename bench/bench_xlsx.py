"""Excel input benchmark: reading an .xlsx sheet against the same rows as CSV, in one run.

    .venv/bin/python bench/bench_xlsx.py [--rows 100000] [--repeat 3]

Builds (once, cached in bench/data/) --rows rows of record id and cadence id (text, 19 digits),
module and a note, as CSV and as two .xlsx sheets: "plain" (those columns only) and
"formatted" (three carried columns of a number format besides: a zip code ``00000``, a date
``dd/mm/yyyy``, an amount ``0.00``, each shown as the sheet shows it). Then, interleaved, best
of --repeat each, in this process:

- csv: ``scan_input`` of the CSV (what ``batcher plan`` reads and checks): the baseline;
- xlsx plain / xlsx formatted: ``scan_input`` of each sheet;
- calamine: python-calamine's read of the sheet into Python rows, the floor of any read of it
  (``get_sheet_by_index`` + ``iter_rows``).

Prints each figure with its ratio to the CSV's and, for a sheet, to calamine's read of it;
asserts nothing (about 30 s).
"""

from __future__ import annotations

import argparse
import datetime as dt
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from batcher.inputs import scan_input  # noqa: E402

DATA = ROOT / "bench" / "data"
_RECORD_BASE = 5_540_230_000_000_000_000
_CADENCE_BASE = 5_540_230_000_004_092_008


def build(rows: int) -> dict[str, Path]:
    """The CSV and the two sheets of ``rows`` rows (made once)."""
    import xlsxwriter

    paths = {k: DATA / f"xlsx-{rows}-{k}.{ext}" for k, ext in
             (("csv", "csv"), ("plain", "xlsx"), ("formatted", "xlsx"))}
    if all(p.exists() for p in paths.values()):
        return paths
    DATA.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(7)
    records = (_RECORD_BASE + rng.choice(10**12, rows, replace=False)).astype(str).tolist()
    cadences = (_CADENCE_BASE + 7919 * rng.integers(0, 40, rows)).astype(str).tolist()
    modules = np.where(np.arange(rows) % 3, "Leads", "Contacts").tolist()
    notes = [f"call back re ticket {n}" for n in rng.integers(0, 100_000, rows).tolist()]
    zips = rng.integers(1000, 99_999, rows).tolist()
    days = rng.integers(0, 700, rows).tolist()
    amounts = np.round(rng.uniform(0, 5000, rows), 2).tolist()
    with open(paths["csv"], "w") as fh:
        fh.write("record_id,cadence_id,module,Note\n")
        fh.writelines(f"{r},{c},{m},{n}\n" for r, c, m, n in zip(records, cadences, modules,
                                                                 notes, strict=True))
    for kind in ("plain", "formatted"):
        book = xlsxwriter.Workbook(paths[kind], {"constant_memory": True})
        sheet = book.add_worksheet("List")
        looks = [book.add_format({"num_format": f}) for f in ("00000", "dd/mm/yyyy", "0.00")]
        more = ["Zip", "Enrolled", "Amount"] if kind == "formatted" else []
        sheet.write_row(0, 0, ["record_id", "cadence_id", "module", "Note", *more])
        start = dt.datetime(2023, 1, 1)
        for i in range(rows):
            sheet.write_string(i + 1, 0, records[i])
            sheet.write_string(i + 1, 1, cadences[i])
            sheet.write_string(i + 1, 2, modules[i])
            sheet.write_string(i + 1, 3, notes[i])
            if more:
                sheet.write_number(i + 1, 4, zips[i], looks[0])
                sheet.write_datetime(i + 1, 5, start + dt.timedelta(days=days[i]), looks[1])
                sheet.write_number(i + 1, 6, amounts[i], looks[2])
        book.close()
    return paths


def calamine_rows(path: Path) -> int:
    from python_calamine import CalamineWorkbook

    with open(path, "rb") as fh, CalamineWorkbook.from_filelike(fh) as book:
        return len(list(book.get_sheet_by_index(0).iter_rows()))


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--rows", type=int, default=100_000)
    ap.add_argument("--repeat", type=int, default=3)
    args = ap.parse_args()
    start = time.perf_counter()
    paths = build(args.rows)
    if time.perf_counter() - start > 1:
        print(f"inputs of {args.rows:,} rows built in {time.perf_counter() - start:.0f} s")
    runs = {"csv": lambda: scan_input(paths["csv"]),
            "xlsx plain": lambda: scan_input(paths["plain"]),
            "calamine plain": lambda: calamine_rows(paths["plain"]),
            "xlsx formatted": lambda: scan_input(paths["formatted"]),
            "calamine formatted": lambda: calamine_rows(paths["formatted"])}
    best = dict.fromkeys(runs, float("inf"))
    for _ in range(args.repeat):
        for name, run in runs.items():
            began = time.perf_counter()
            run()
            best[name] = min(best[name], time.perf_counter() - began)
    print(f"{args.rows:,} rows, best of {args.repeat}")
    print(f"{'read':18} {'seconds':>8} {'vs csv':>7} {'vs calamine':>12} {'us/row':>7}")
    for name, seconds in best.items():
        floor = best.get(name.replace("xlsx", "calamine"))
        against = f"{seconds / floor:11.2f}x" if name.startswith("xlsx") and floor else ""
        print(f"{name:18} {seconds:8.2f} {seconds / best['csv']:6.1f}x {against:>12} "
              f"{seconds / args.rows * 1e6:7.1f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
