from __future__ import annotations

import csv
import json
import re
import threading
from collections.abc import Iterator
from pathlib import Path

import pyarrow as pa
import pyarrow.csv as pacsv
import pyarrow.parquet as pq
import pytest

from batcher.inputs import read_input
from batcher.journal import Journal
from batcher.models import Batch, PairOutcome, Status
from batcher.report import OUTPUT_SCHEMA, reconcile_line, side_paths, write_results

from .test_journal import C1, C2, C3, PLAN, R1, R2, R3, ROWS, rows_table


@pytest.fixture
def journal(tmp_path: Path) -> Iterator[Journal]:
    """The small job of test_journal after a run: b1 answered with a mix, b2 never sent."""
    with Journal.open(tmp_path / "job.journal", "fp") as j:
        j.load(rows_table(), PLAN)
        j.mark_sent("b1")
        j.record_outcomes("b1", [
            PairOutcome(R1, C1, Status.UNENROLLED, "SUCCESS", "records manually unenrolled", 200),
            PairOutcome(R1, C2, Status.NOT_ENROLLED, "SUCCESS", "", 200),
            PairOutcome(R2, C1, Status.FAILED, "INTERNAL_SERVER_ERROR", "boom, \"again\"", 500,
                        retryable=True),
            PairOutcome(R2, C2, Status.FAILED, "INVALID_DATA", "given id seems to be invalid",
                        400, retryable=False),
        ], attempts=1)
        j.add_counters(calls=3, retries=2, throttled=1, credits=3)
        yield j


def read_results_csv(path: Path) -> pa.Table:
    return pacsv.read_csv(path, convert_options=pacsv.ConvertOptions(
        column_types={c: pa.string() for c in ("module", "record_id", "cadence_id", "code",
                                               "message", "batch_id", "finished_at")}))


def test_csv_results_round_trip_with_exact_ids(journal: Journal, tmp_path: Path) -> None:
    out = tmp_path / "results.csv"
    write_results(journal, out, duration_s=1.25)
    with open(out, newline="") as fh:
        raw = list(csv.DictReader(fh))
    assert tuple(raw[0]) == tuple(OUTPUT_SCHEMA.names)
    assert [r["record_id"] for r in raw] == [row[1] for row in ROWS]
    assert [r["cadence_id"] for r in raw] == [row[2] for row in ROWS]
    assert [r["status"] for r in raw] == ["unenrolled", "not_enrolled", "failed", "failed",
                                          "duplicate", "invalid", "not_sent", "invalid"]
    assert raw[2]["message"] == 'boom, "again"' and raw[2]["retryable"] == "true"
    table = read_results_csv(out)
    assert table["row"].to_pylist() == list(range(1, 9))
    assert table["record_id"].to_pylist()[:4] == [R1, R1, R2, R2]
    assert table["http_status"].to_pylist()[:4] == [200, 200, 500, 400]


def test_parquet_results_keep_the_schema_and_exact_ids(journal: Journal, tmp_path: Path) -> None:
    out = tmp_path / "results.parquet"
    summary = write_results(journal, out, duration_s=0.5)
    table = pq.read_table(out)
    assert table.schema.equals(OUTPUT_SCHEMA)
    assert table["record_id"].to_pylist() == [row[1] for row in ROWS]
    assert table["row"].to_pylist() == list(range(1, 9))
    assert summary.retry_path == str(tmp_path / "results.retry.csv")
    assert Path(summary.retry_path).exists()  # the retry file is CSV whatever the results format


def test_retry_file_holds_not_sent_and_retryable_failures_and_is_a_valid_input(
        journal: Journal, tmp_path: Path) -> None:
    summary = write_results(journal, tmp_path / "results.csv", duration_s=0)
    retry = Path(summary.retry_path)
    assert retry.read_text().splitlines()[0] == "module,record_id,cadence_id"
    with open(retry, newline="") as fh:
        got = [tuple(r.values()) for r in csv.DictReader(fh)]
    assert got == [("Leads", R2, C1), ("Contacts", R3, C3)]  # not the INVALID_DATA failure
    assert summary.retry_rows == 2
    again = read_input(retry)
    assert list(again.valid_pairs()) == got
    assert again.rows == 2


def test_summary_reconciles_and_reports_counts(journal: Journal, tmp_path: Path) -> None:
    summary = write_results(journal, tmp_path / "out.csv", duration_s=2.5, extra={"dry_run": False})
    assert summary.reconciled
    assert summary.reconcile == ("8 rows = 1 unenrolled + 1 not_enrolled + 2 failed + 2 invalid"
                                 " + 1 duplicate + 1 not_sent")
    head, parts = summary.reconcile.split(" = ")
    assert sum(int(p.split()[0]) for p in parts.split(" + ")) == int(head.split()[0]) == len(ROWS)
    assert summary.exit_code() == 1
    doc = json.loads((tmp_path / "out.summary.json").read_text())
    assert doc["rows"] == 8
    assert doc["by_status"] == {"unenrolled": 1, "not_enrolled": 1, "failed": 2, "invalid": 2,
                                "duplicate": 1, "not_sent": 1}
    assert doc["by_code"]["failed"] == {"INTERNAL_SERVER_ERROR": 1, "INVALID_DATA": 1}
    assert doc["by_code"]["invalid"] == {"INVALID_INPUT": 2}
    # by cadence (DESIGN: "counts by status, code and cadence"), most rows first; a row without
    # a module is counted under module null
    assert doc["by_cadence"] == [
        {"module": "Leads", "cadence_id": C1, "rows": 4,
         "by_status": {"unenrolled": 1, "failed": 1, "duplicate": 1, "invalid": 1}},
        {"module": "Leads", "cadence_id": C2, "rows": 2,
         "by_status": {"not_enrolled": 1, "failed": 1}},
        {"module": None, "cadence_id": C3, "rows": 1, "by_status": {"invalid": 1}},
        {"module": "Contacts", "cadence_id": C3, "rows": 1, "by_status": {"not_sent": 1}}]
    assert doc["other_cadences"] is None
    assert (doc["calls"], doc["retries"], doc["throttled"], doc["credits"]) == (3, 2, 1, 3)
    assert doc["duration_s"] == 2.5 and doc["reconciled"] is True
    assert doc["results"] == str(tmp_path / "out.csv")
    assert doc["retry"] == str(tmp_path / "out.retry.csv")
    assert doc["reconcile"] == summary.reconcile and doc["extra"] == {"dry_run": False}
    text = summary.human()
    assert summary.reconcile in text and str(tmp_path / "out.csv") in text
    assert "3 calls, 2 retries, 1 × 429" in text
    assert "failed: 1 INTERNAL_SERVER_ERROR, 1 INVALID_DATA" in text
    assert "2 rows to retry" in text


def test_the_summary_lists_the_largest_cadences_and_sums_the_others(
        journal: Journal, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A million cadences (swapped columns) must not make a summary of a million lines: past
    BY_CADENCE_MAX, the smaller ones are summed in ``other_cadences``, and all still add up."""
    import batcher.report as report

    monkeypatch.setattr(report, "BY_CADENCE_MAX", 2)
    write_results(journal, tmp_path / "out.csv", duration_s=0)
    doc = json.loads((tmp_path / "out.summary.json").read_text())
    assert [(c["module"], c["cadence_id"], c["rows"]) for c in doc["by_cadence"]] == [
        ("Leads", C1, 4), ("Leads", C2, 2)]
    assert doc["other_cadences"] == {"cadences": 2, "rows": 2,
                                     "by_status": {"invalid": 1, "not_sent": 1}}
    assert sum(c["rows"] for c in doc["by_cadence"]) + doc["other_cadences"]["rows"] == 8


def test_counts_regrouped_along_the_way_are_the_counts(journal: Journal, tmp_path: Path,
                                                       monkeypatch: pytest.MonkeyPatch) -> None:
    """The tally regroups what it counted once it holds many groups (a million cadences):
    counted in chunks of 2 rows and regrouped every few, the summary is the same."""
    import batcher.report as report

    whole = write_results(journal, tmp_path / "a.csv", duration_s=0)
    monkeypatch.setattr(report, "_COMPACT_ROWS", 2)
    parts = write_results(journal, tmp_path / "b.csv", duration_s=0, chunk_rows=2)
    assert (parts.by_status, parts.by_code, parts.by_cadence) == (
        whole.by_status, whole.by_code, whole.by_cadence)
    assert parts.reconciled


def test_the_duration_counts_the_writing_of_the_results(journal: Journal, tmp_path: Path) -> None:
    """A clock given as the duration is read once every results row is written: the summary's
    seconds are the run's, not the run's minus its results (minutes on a large job)."""
    source = _Source(journal)
    read_at: list[int] = []

    def clock() -> float:
        read_at.append(source.chunks)
        return 4.5 + len(read_at)

    summary = write_results(source, tmp_path / "out.xlsx", duration_s=clock, chunk_rows=3)
    # 8 rows in chunks of 3: read after the last chunk, and again once the workbook (written
    # out when it is closed) is finished; the summary file has the last reading
    assert read_at == [3, 3]
    assert summary.duration_s == 6.5
    assert json.loads((tmp_path / "out.summary.json").read_text())["duration_s"] == 6.5


def test_exit_code_is_zero_only_when_every_row_ended_well(tmp_path: Path) -> None:
    rows = [row for row in ROWS if row[3] != "invalid"]
    with Journal.open(tmp_path / "j", "fp") as j:
        j.load(rows_table(rows), PLAN)
        j.record_outcomes("b1", [PairOutcome(r, c, Status.UNENROLLED) for r in (R1, R2)
                                 for c in (C1, C2)], attempts=1)
        assert write_results(j, tmp_path / "a.csv", duration_s=0).exit_code() == 1  # b2 not sent
        j.record_outcomes("b2", [PairOutcome(R3, C3, Status.SCHEDULED, "SCHEDULED")], attempts=1)
        summary = write_results(j, tmp_path / "a.csv", duration_s=0)
    assert summary.exit_code() == 0
    assert summary.reconcile == "6 rows = 4 unenrolled + 1 scheduled + 1 duplicate"
    assert summary.retry_rows == 0 and "nothing to retry" in summary.human()
    assert (tmp_path / "a.retry.csv").read_text() == "module,record_id,cadence_id\n"


def test_reconcile_line_flags_a_missing_row() -> None:
    line, ok = reconcile_line(10, {"unenrolled": 7, "failed": 2})
    assert not ok and line.startswith("10 rows != 7 unenrolled + 2 failed")
    assert reconcile_line(0, {}) == ("0 rows = 0", True)


class _Source:
    """A journal stand-in whose stream fails, or loses a row, part-way."""

    def __init__(self, real: Journal, *, fail_after: int | None = None, drop: int = 0) -> None:
        self.real, self.fail_after, self.drop = real, fail_after, drop
        self.rows, self.started_at = real.rows, real.started_at
        self.chunks = 0  # chunks handed out so far

    def counters(self) -> dict[str, int]:
        return self.real.counters()

    def iter_result_chunks(self, chunk_rows: int = 50_000,
                           until: threading.Event | None = None) -> Iterator[pa.Table]:
        for i, chunk in enumerate(self.real.iter_result_chunks(chunk_rows=chunk_rows,
                                                               until=until)):
            if self.fail_after is not None and i >= self.fail_after:
                raise OSError("disk full")
            self.chunks += 1
            yield chunk.slice(self.drop)


@pytest.mark.parametrize("name", ["results.csv", "results.parquet", "results.xlsx"])
def test_a_failed_write_leaves_the_previous_files_and_no_partial_file(
        journal: Journal, tmp_path: Path, name: str) -> None:
    out = tmp_path / name
    write_results(journal, out, duration_s=1)
    retry, summary = side_paths(out)
    before = {p: p.read_bytes() for p in (out, retry, summary)}
    with pytest.raises(OSError, match="disk full"):
        write_results(_Source(journal, fail_after=1), out, duration_s=1, chunk_rows=3)
    assert {p: p.read_bytes() for p in (out, retry, summary)} == before
    assert sorted(p.name for p in tmp_path.iterdir() if not p.name.startswith("job.journal")) \
        == sorted(p.name for p in before)


def test_a_failed_first_write_leaves_no_file_at_all(journal: Journal, tmp_path: Path) -> None:
    out = tmp_path / "fresh" / "results.csv"
    out.parent.mkdir()
    with pytest.raises(OSError):
        write_results(_Source(journal, fail_after=0), out, duration_s=1)
    assert list(out.parent.iterdir()) == []


def test_rows_lost_between_journal_and_file_are_not_reconciled(journal: Journal,
                                                                tmp_path: Path) -> None:
    summary = write_results(_Source(journal, drop=1), tmp_path / "r.csv", duration_s=0,
                            chunk_rows=4)
    assert not summary.reconciled and summary.exit_code() == 1
    assert re.match(r"8 rows != .* \(= 6\); 6 rows written$", summary.reconcile)
    assert summary.human().startswith("WARNING")


def test_split_children_appear_in_results_under_their_batch(tmp_path: Path) -> None:
    with Journal.open(tmp_path / "j", "fp") as j:
        j.load(rows_table(), PLAN)
        j.settle_and_split("b1", [PairOutcome(R1, C1, Status.FAILED, "INVALID_DATA")],
                           [Batch("b1.1", "Leads", (R1,), (C2,)),
                            Batch("b1.2", "Leads", (R2,), (C1, C2))], attempts=1)
        j.record_outcomes("b1.2", [PairOutcome(R2, c, Status.UNENROLLED) for c in (C1, C2)],
                          attempts=1)
        write_results(j, tmp_path / "r.parquet", duration_s=0)
    table = pq.read_table(tmp_path / "r.parquet")
    assert table["batch_id"].to_pylist()[:4] == ["b1", "b1.1", "b1.2", "b1.2"]
    assert table["status"].to_pylist()[:4] == ["failed", "not_sent", "unenrolled", "unenrolled"]
