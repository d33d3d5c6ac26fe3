"""Results writer benchmark: seconds and peak memory to write a job's results from its journal.

Run: .venv/bin/python bench/bench_results.py [--rows 1000000] [--workdir DIR]

Builds a journal of ``--rows`` rows (``Journal.load``; nine batches in ten answered, the tenth
not sent, one answer in a hundred a retryable failure with a hostile message), then writes its
results as CSV, Parquet and xlsx, each without and with three carried input columns (Email, Name,
Owner, streamed in chunks of another size than the journal's). Each write runs in a fresh child
process so that its peak RSS (VmHWM: the kernel resets it at exec, unlike ru_maxrss) is its own;
CPU seconds beside wall seconds tell a busy machine from a slow writer. Prints the figures;
asserts nothing.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

import pyarrow as pa
import pyarrow.compute as pc

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from batcher.inputs.carry import Carried  # noqa: E402
from batcher.journal import Journal  # noqa: E402
from batcher.models import Batch, PairOutcome, Status  # noqa: E402
from batcher.report import write_results  # noqa: E402

CADENCE = "5540230000040001"
PER_BATCH = 100
CARRY_CHUNK = 65_536  # a reader's chunk, unlike the journal's 50,000
HOSTILE = '=HYPERLINK("http://x.example","click")'


def record_ids(start: int, n: int) -> pa.Array:
    return pc.cast(pa.array(range(3_000_000_000_000_000 + start,
                                  3_000_000_000_000_000 + start + n), pa.int64()), pa.string())


def build_journal(path: Path, rows: int) -> None:
    """A journal of ``rows`` rows in batches of 100, all but every tenth batch answered."""
    n_batches = -(-rows // PER_BATCH)
    table = pa.table({
        "row": pa.array(range(1, rows + 1), pa.int64()),
        "module": pa.array(["Leads"] * rows, pa.string()),
        "record_id": record_ids(0, rows),
        "cadence_id": pa.array([CADENCE] * rows, pa.string()),
        "status": pa.array(["valid"] * rows, pa.string()),
        "reason": pa.nulls(rows, pa.string()),
        "batch_id": pc.cast(pa.array([i // PER_BATCH for i in range(rows)], pa.int64()),
                            pa.string()),
    })
    ids = table["record_id"].to_pylist()
    batches = [Batch(str(b), "Leads", tuple(ids[b * PER_BATCH:(b + 1) * PER_BATCH]), (CADENCE,))
               for b in range(n_batches)]
    with Journal.open(path, "bench") as journal:
        journal.load(table, batches)
        for b in batches:
            if int(b.batch_id) % 10 == 9:
                continue  # never sent: not_sent rows, to retry
            journal.record_outcomes(b.batch_id, [
                PairOutcome(r, CADENCE, Status.FAILED, "INTERNAL_SERVER_ERROR", HOSTILE, 500,
                            retryable=True) if i == 0 else
                PairOutcome(r, CADENCE, Status.UNENROLLED, "SUCCESS",
                            "records manually unenrolled", 200)
                for i, r in enumerate(b.record_ids)], attempts=1)
        journal.add_counters(calls=n_batches - n_batches // 10, credits=n_batches)


def carried(rows: int) -> Carried:
    """Email, Name and Owner, made a reader's chunk at a time (some names start with '-')."""
    def tables() -> Iterator[pa.Table]:
        for start in range(0, rows, CARRY_CHUNK):
            n = min(CARRY_CHUNK, rows - start)
            nums = pc.cast(pa.array(range(start, start + n), pa.int64()), pa.string())
            yield pa.table({
                "Email": pc.binary_join_element_wise("user", nums, "@example.com", ""),
                "Name": pc.binary_join_element_wise("-Smith ", nums, ""),
                "Owner": pa.array([f"owner {i % 50}" for i in range(n)], pa.string()),
            })
    return Carried(("Email", "Name", "Owner"), tables)


def peak_rss_mb() -> float:
    """This process's peak resident memory (Linux's VmHWM, else ru_maxrss), in MiB."""
    try:
        with open("/proc/self/status") as fh:
            return next(int(line.split()[1]) for line in fh if line.startswith("VmHWM")) / 1024
    except OSError:
        return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def cpu_s() -> float:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


def write_once(journal_path: Path, results: Path, with_carried: bool) -> dict:
    """One write in this process: wall and CPU seconds, peak RSS (and before it), file size."""
    before = peak_rss_mb()
    with Journal.open(journal_path, None) as journal:
        start, cpu = time.perf_counter(), cpu_s()
        summary = write_results(journal, results, duration_s=0.0,
                                carried=carried(journal.rows) if with_carried else None,
                                cadence_names={CADENCE: "Spring campaign"})
        seconds, cpu = time.perf_counter() - start, cpu_s() - cpu
    return {"seconds": seconds, "cpu_s": cpu, "peak_rss_mb": round(peak_rss_mb()),
            "rss_before_mb": round(before), "file_mb": round(results.stat().st_size / 2**20),
            "retry_rows": summary.retry_rows}


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--rows", type=int, default=1_000_000)
    ap.add_argument("--workdir", type=Path, help="keep (and reuse) the journal and files here")
    ap.add_argument("--formats", default="csv,parquet,xlsx")
    ap.add_argument("--one", nargs=3, metavar=("JOURNAL", "RESULTS", "CARRIED"),
                    help=argparse.SUPPRESS)  # the child process's write
    args = ap.parse_args()
    if args.one:
        journal, results, with_carried = args.one
        print(json.dumps(write_once(Path(journal), Path(results), with_carried == "1")))
        return 0
    work = args.workdir or Path(tempfile.mkdtemp(prefix="bench-results-"))
    work.mkdir(parents=True, exist_ok=True)
    journal = work / f"results-{args.rows}.journal"
    if not journal.exists():
        start = time.perf_counter()
        build_journal(journal, args.rows)
        print(f"journal of {args.rows:,} rows built in {time.perf_counter() - start:.0f} s")
    print(f"{'format':8} {'carried':8} {'wall s':>8} {'cpu s':>8} {'peak MB':>8} "
          f"{'base MB':>8} {'file MB':>8} {'retry':>8}")
    for suffix in args.formats.split(","):
        for with_carried in ("0", "1"):
            results = work / f"out-{with_carried}.{suffix}"
            got = json.loads(subprocess.run(
                [sys.executable, __file__, "--one", str(journal), str(results), with_carried],
                check=True, capture_output=True, text=True).stdout)
            print(f"{suffix:8} {'3 cols' if with_carried == '1' else 'none':8} "
                  f"{got['seconds']:8.1f} {got['cpu_s']:8.1f} {got['peak_rss_mb']:8} "
                  f"{got['rss_before_mb']:8} {got['file_mb']:8} {got['retry_rows']:8}",
                  flush=True)
    if not args.workdir:
        for p in work.iterdir():
            p.unlink()
        os.rmdir(work)
    return 0


if __name__ == "__main__":
    sys.exit(main())
