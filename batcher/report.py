"""Results, retry file and summary from a journal, written atomically and streamed chunk by chunk.

The three files are first written to hidden temporary files in the target directory and renamed
into place only when all of them are complete, so a user (or cron) never sees a truncated results
file, and a failed write leaves the previous run's files untouched. They are created with mode
0600 (they hold the job's record ids), and the temporary files a killed run left are removed.
Counts are taken from the rows actually written, then reconciled against the number of input rows
the journal loaded.
"""

from __future__ import annotations

import json
import os
import secrets
from collections.abc import Callable, Iterable, Iterator
from contextlib import ExitStack, contextmanager
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Protocol

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.csv as pacsv
import pyarrow.parquet as pq

from .journal import CHUNK_ROWS, RESULT_SCHEMA, utc_now
from .models import SUCCESS_STATUSES, Status

RETRY_COLUMNS = ("module", "record_id", "cadence_id")
_PARQUET_SUFFIXES = (".parquet", ".pq")
#: the extensions ``--results`` may have
RESULT_SUFFIXES = (".csv", *_PARQUET_SUFFIXES)
_STATUS_ORDER = [s.value for s in Status]


class ResultSource(Protocol):
    """What :func:`write_results` needs from a journal."""

    rows: int
    started_at: str

    def iter_result_chunks(self, chunk_rows: int = ...) -> Iterator[pa.Table]: ...

    def counters(self) -> dict[str, int]: ...


@dataclass(frozen=True)
class Summary:
    rows: int
    by_status: dict[str, int]
    #: status → code → rows, for rows that carry a code
    by_code: dict[str, dict[str, int]]
    calls: int
    retries: int
    throttled: int
    credits: int
    duration_s: float
    results_path: str
    retry_path: str
    summary_path: str
    retry_rows: int
    reconcile: str
    reconciled: bool
    started_at: str | None = None
    #: answer entries that named a record or cadence the call did not hold (never evidence)
    ignored_entries: int = 0
    #: all-empty input rows: not data rows, no results row (``rows`` does not count them)
    blank: int = 0
    finished_at: str | None = None
    extra: dict[str, Any] = field(default_factory=dict)

    def exit_code(self) -> int:
        """0 when every row ended well, else 1 (aborts, exit 3, are the caller's to decide)."""
        bad = sum(n for s, n in self.by_status.items() if s not in SUCCESS_STATUSES)
        return 0 if bad == 0 and self.reconciled else 1

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    def human(self) -> str:
        lines = [self.reconcile]
        if self.blank:
            lines.append(f"{self.blank} blank rows skipped (no data, no results row)")
        if not self.reconciled:
            lines.insert(0, "WARNING: the status counts do not add up to the input rows")
        problems = [f"{status}: " + ", ".join(f"{n} {code}" for code, n in sorted(
                        self.by_code[status].items(), key=lambda kv: (-kv[1], kv[0])))
                    for status in (Status.FAILED, Status.INVALID) if self.by_code.get(status)]
        if problems:
            lines.append("; ".join(problems))
        lines.append(f"{self.calls} calls, {self.retries} retries, {self.throttled} × 429, "
                     f"{self.credits} credits, {self.duration_s:.1f} s")
        if self.ignored_entries:
            lines.append(f"{self.ignored_entries} answer entries named records or cadences "
                         "that were not in their call: ignored, never taken as evidence")
        lines.append(f"results: {self.results_path}")
        retry = f"{self.retry_rows} rows to retry" if self.retry_rows else "nothing to retry"
        lines.append(f"retry:   {self.retry_path} ({retry})")
        lines.append(f"summary: {self.summary_path}")
        return "\n".join(lines)


def side_paths(results_path: str | os.PathLike[str]) -> tuple[Path, Path]:
    """(retry file, summary file) beside the results: ``<stem>.retry.csv``, ``<stem>.summary.json``.
    """
    p = Path(results_path)
    return p.with_name(p.stem + ".retry.csv"), p.with_name(p.stem + ".summary.json")


def reconcile_line(rows: int, by_status: dict[str, int]) -> tuple[str, bool]:
    """``1000 rows = 900 unenrolled + 100 failed`` and whether the parts add up to ``rows``."""
    parts = [f"{by_status[s]} {s}" for s in _STATUS_ORDER if by_status.get(s)]
    parts += [f"{n} {s}" for s, n in sorted(by_status.items()) if s not in _STATUS_ORDER and n]
    total = sum(by_status.values())
    if total == rows:
        return f"{rows} rows = {' + '.join(parts) or '0'}", True
    return f"{rows} rows != {' + '.join(parts) or '0'} (= {total})", False


def write_results(journal: ResultSource, results_path: str | os.PathLike[str], *,
                  duration_s: float, extra: dict[str, Any] | None = None,
                  chunk_rows: int = CHUNK_ROWS, blank: int = 0) -> Summary:
    """Write results (CSV, or Parquet for ``.parquet``/``.pq``), retry file and summary.
    ``blank``: the input's all-empty rows, counted apart from its data rows."""
    results = Path(os.path.abspath(results_path))
    retry, summary_file = side_paths(results)
    for target in (results, retry, summary_file):
        _remove_stale_temps(target)
    by_status: dict[str, int] = {}
    by_code: dict[str, dict[str, int]] = {}
    written = retry_rows = 0
    with ExitStack() as stack:
        tmp_results = stack.enter_context(_atomic(results))
        tmp_retry = stack.enter_context(_atomic(retry))
        tmp_summary = stack.enter_context(_atomic(summary_file))
        out = stack.enter_context(_results_writer(results, tmp_results))
        retry_out = stack.enter_context(pacsv.CSVWriter(
            tmp_retry, pa.schema([(c, pa.string()) for c in RETRY_COLUMNS]),
            write_options=pacsv.WriteOptions(quoting_header="none")))
        for chunk in journal.iter_result_chunks(chunk_rows=chunk_rows):
            chunk = chunk.cast(RESULT_SCHEMA)
            out.write_table(chunk)
            written += chunk.num_rows
            _count(chunk, by_status, by_code)
            again = chunk.filter(_retry_mask(chunk)).select(list(RETRY_COLUMNS))
            retry_rows += again.num_rows
            if again.num_rows:
                retry_out.write_table(again)
        rows = journal.rows
        line, ok = reconcile_line(rows, by_status)
        if written != rows:
            line, ok = f"{line}; {written} rows written", False
        counters = journal.counters()
        summary = Summary(
            rows=rows, by_status=by_status, by_code=by_code,
            calls=counters.get("calls", 0), retries=counters.get("retries", 0),
            throttled=counters.get("throttled", 0), credits=counters.get("credits", 0),
            duration_s=round(float(duration_s), 3), results_path=str(results),
            retry_path=str(retry), summary_path=str(summary_file), retry_rows=retry_rows,
            reconcile=line, reconciled=ok, started_at=journal.started_at,
            ignored_entries=counters.get("ignored_entries", 0), blank=blank,
            finished_at=utc_now(), extra=dict(extra or {}))
        doc = summary.to_dict()
        doc["results"], doc["retry"] = doc.pop("results_path"), doc.pop("retry_path")
        del doc["summary_path"]
        with open(tmp_summary, "w", encoding="utf-8") as fh:
            json.dump(doc, fh, indent=2, sort_keys=False, default=str)
            fh.write("\n")
    return summary


def _count(chunk: pa.Table, by_status: dict[str, int],
           by_code: dict[str, dict[str, int]]) -> None:
    grouped = chunk.group_by(["status", "code"], use_threads=False).aggregate([("row", "count")])
    for status, code, n in zip(*(grouped.column(c).to_pylist()
                                 for c in ("status", "code", "row_count")), strict=True):
        by_status[status] = by_status.get(status, 0) + n
        if code:
            codes = by_code.setdefault(status, {})
            codes[code] = codes.get(code, 0) + n


def _retry_mask(chunk: pa.Table) -> pa.ChunkedArray:
    status = chunk["status"]
    failed_retryable = pc.and_(pc.equal(status, Status.FAILED.value),
                               pc.fill_null(chunk["retryable"], False))
    return pc.or_(pc.equal(status, Status.NOT_SENT.value), failed_retryable)


@contextmanager
def _results_writer(results: Path, tmp: Path) -> Iterator[Any]:
    if results.suffix.lower() in _PARQUET_SUFFIXES:
        with pq.ParquetWriter(tmp, RESULT_SCHEMA, compression="zstd") as writer:
            yield writer
    else:
        with pacsv.CSVWriter(tmp, RESULT_SCHEMA,
                             write_options=pacsv.WriteOptions(quoting_header="none")) as writer:
            yield writer


@contextmanager
def _atomic(target: Path) -> Iterator[Path]:
    """A temporary path beside ``target``, renamed onto it if the block succeeds, else removed.

    Nested blocks rename in reverse order of entry, so the results file (entered first) lands last.
    """
    tmp = target.with_name(f".{target.name}.{os.getpid()}.{secrets.token_hex(4)}.tmp")
    os.close(os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600))
    try:
        yield tmp
        with open(tmp, "rb+") as fh:
            os.fsync(fh.fileno())
        os.replace(tmp, target)
    finally:
        tmp.unlink(missing_ok=True)


def _remove_stale_temps(target: Path) -> None:
    """Remove the temporary files of ``target`` that a killed run left (their pid is gone)."""
    for tmp in target.parent.glob(f".{target.name}.*.tmp"):
        pid = tmp.name[len(target.name) + 2:].split(".", 1)[0]
        if not pid.isdigit():
            continue
        try:
            os.kill(int(pid), 0)
        except ProcessLookupError:
            tmp.unlink(missing_ok=True)
        except OSError:  # alive (another user's), or not ours to judge
            pass


class UnplannedResults:
    """Results straight from the reader, for a job stopped before its journal was loaded.

    An abort during preflight (bad credentials, say) must still say what happened to every row:
    the valid ones were ``not_sent``; the journal stays empty, so the next run starts afresh.
    """

    def __init__(self, rows: int, tables: Callable[[], Iterable[pa.Table]], started_at: str,
                 message: str, counters: Callable[[], dict[str, int]] = dict) -> None:
        self._tables = tables
        self._message = message
        self._counters = counters
        self.rows = rows
        self.started_at = started_at

    def counters(self) -> dict[str, int]:
        """What was spent before the stop (the preflight's reads, say)."""
        return self._counters()

    def iter_result_chunks(self, chunk_rows: int = CHUNK_ROWS) -> Iterator[pa.Table]:
        for t in self._tables():
            valid = pc.equal(t["status"], "valid")
            n = t.num_rows
            yield pa.table({
                "row": t["row"], "module": t["module"], "record_id": t["record_id"],
                "cadence_id": t["cadence_id"],
                "status": pc.if_else(valid, Status.NOT_SENT.value, t["status"]),
                "code": t["code"],
                "message": pc.if_else(valid, self._message, t["reason"]),
                "http_status": pa.nulls(n, pa.int64()), "attempts": pa.array([0] * n, pa.int64()),
                "batch_id": pa.nulls(n, pa.string()),
                "retryable": pc.if_else(valid, True, False),
                "finished_at": pa.nulls(n, pa.string()),
            }, schema=RESULT_SCHEMA)
