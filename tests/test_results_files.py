"""The results files as a user opens them: xlsx cells, formula safety, the input's own columns."""

from __future__ import annotations

import csv
import os
import threading
from collections.abc import Iterator
from pathlib import Path

import openpyxl
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from batcher import report
from batcher.errors import InputError, UsageError
from batcher.inputs import read_input
from batcher.inputs.carry import Carried
from batcher.journal import Journal
from batcher.models import PairOutcome, Status
from batcher.report import (
    OUTPUT_SCHEMA,
    XLSX_MAX_ROWS,
    carried_names,
    check_results_capacity,
    side_paths,
    write_results,
)

from .test_journal import C1, C2, C3, PLAN, R1, R2, R3, ROWS, rows_table

HOSTILE = '=HYPERLINK("http://x.example","click")'
DDE = "=cmd|' /C calc'!A0"
CARRIED = {  # one value per input row of ROWS
    "Email": [f"u{i}@x.example" for i in range(1, 9)],
    "status": ["hot", "cold", "warm", "", None, "hot", "new", "old"],
    "Note": ["a", "b", DDE, "-5", "+1", "@me", "\tx", "ok"],
}
OUT_NAMES = (*OUTPUT_SCHEMA.names, "Email", "input_status", "Note")


@pytest.fixture
def journal(tmp_path: Path) -> Iterator[Journal]:
    """The job of test_journal after a run whose server answered a hostile message."""
    with Journal.open(tmp_path / "job.journal", "fp") as j:
        j.load(rows_table(), PLAN)
        j.record_outcomes("b1", [
            PairOutcome(R1, C1, Status.UNENROLLED, "SUCCESS", "records manually unenrolled", 200),
            PairOutcome(R1, C2, Status.NOT_ENROLLED, "SUCCESS", "", 200),
            PairOutcome(R2, C1, Status.FAILED, "INTERNAL_SERVER_ERROR", HOSTILE, 500,
                        retryable=True),
            PairOutcome(R2, C2, Status.FAILED, "INVALID_DATA", "bad", 400, retryable=False),
        ], attempts=1)
        j.add_counters(calls=3, credits=4)
        yield j


def carried(sizes: tuple[int, ...] = (3, 1, 0, 4), data: dict | None = None) -> Carried:
    """The input's own columns streamed in chunks of ``sizes`` rows (not the results' chunks)."""
    names = data or CARRIED
    table = pa.table(names, schema=pa.schema([(n, pa.string()) for n in names]))

    def tables() -> Iterator[pa.Table]:
        at = 0
        for n in sizes:
            yield table.slice(at, n)
            at += n

    return Carried(tuple(table.column_names), tables)


def read_csv(path: Path) -> list[dict[str, str]]:
    with open(path, newline="") as fh:
        return list(csv.DictReader(fh))


def read_sheet(path: Path) -> tuple[openpyxl.Workbook, list[list[openpyxl.cell.Cell]]]:
    book = openpyxl.load_workbook(path)
    return book, [list(row) for row in book["results"].iter_rows()]


def test_xlsx_results_hold_ids_as_text_a_frozen_filtered_header_and_a_summary(
        journal: Journal, tmp_path: Path) -> None:
    out = tmp_path / "r.xlsx"
    summary = write_results(journal, out, duration_s=1.5, chunk_rows=3,
                            cadence_names={C1: "Spring", C2: "Autumn"})
    book, rows = read_sheet(out)
    assert book.sheetnames == ["results", "summary"]
    sheet = book["results"]
    assert sheet.freeze_panes == "A2"
    assert sheet.auto_filter.ref == f"A1:M{len(ROWS) + 1}"
    assert tuple(c.value for c in rows[0]) == tuple(OUTPUT_SCHEMA.names)
    data = [{h: c for h, c in zip(OUTPUT_SCHEMA.names, r, strict=False)} for r in rows[1:]]
    assert [r["record_id"].value for r in data] == [row[1] for row in ROWS]
    for r in data:
        for name in ("record_id", "cadence_id"):
            assert r[name].data_type == "s", (name, r[name].value)
    assert [r["row"].value for r in data] == list(range(1, 9))
    assert data[2]["batch_id"].data_type == "s"
    assert (data[2]["http_status"].value, data[2]["retryable"].value) == (500, True)
    assert [r["cadence_name"].value for r in data[:4]] == ["Spring", "Autumn", "Spring", "Autumn"]
    assert data[6]["cadence_name"].value is None  # C3 is not in the org's list
    assert data[2]["message"].value == "'" + HOSTILE
    figures = {row[0].value: row[1].value for row in book["summary"].iter_rows()}
    assert figures["rows"] == 8 and figures["reconcile"] == summary.reconcile
    assert figures["status failed"] == 2 and figures["code failed INVALID_DATA"] == 1
    assert (figures["calls"], figures["credits"], figures["duration_s"]) == (3, 4, 1.5)
    assert os.stat(out).st_mode & 0o777 == 0o600


def test_the_xlsx_summary_sheet_says_why_rows_are_not_sent_and_the_inputs_warnings(
        journal: Journal, tmp_path: Path) -> None:
    """Found by trying: the summary sheet of a job stopped (a signal, --max-calls) or of a dry run
    listed its not_sent rows without saying it was stopped, or never meant to send; nor did it
    carry the warnings (ids that look rounded) that summary.json and the page show."""
    stopped = "interrupted by SIGTERM; re-run the same command to resume"
    warning = "2 rows have ids that look rounded by a spreadsheet"
    for name, extra, said in (
            ("stopped.xlsx", {"aborted": stopped, "warnings": [warning]},
             {"aborted": stopped, "warning": warning}),
            ("dry.xlsx", {"dry_run": True}, {"dry run": "nothing was sent"})):
        write_results(journal, tmp_path / name, duration_s=0.5, extra=extra)
        book = openpyxl.load_workbook(tmp_path / name)
        figures = {row[0].value: row[1].value for row in book["summary"].iter_rows()}
        assert {k: figures.get(k) for k in said} == said, figures
        assert figures["status not_sent"] == 1


def test_text_that_a_spreadsheet_would_evaluate_is_defused_in_csv_and_xlsx_not_parquet(
        journal: Journal, tmp_path: Path) -> None:
    defused = ["a", "b", "'" + DDE, "'-5", "'+1", "'@me", "'\tx", "ok"]
    write_results(journal, tmp_path / "r.csv", duration_s=0, carried=carried())
    rows = read_csv(tmp_path / "r.csv")
    assert rows[2]["message"] == "'" + HOSTILE
    assert [r["Note"] for r in rows] == defused
    assert [r["record_id"] for r in rows] == [row[1] for row in ROWS]  # digits: untouched

    write_results(journal, tmp_path / "r.xlsx", duration_s=0, carried=carried())
    _, cells = read_sheet(tmp_path / "r.xlsx")
    note = OUT_NAMES.index("Note")
    assert [r[note].value for r in cells[1:]] == defused
    assert cells[3][OUT_NAMES.index("message")].value == "'" + HOSTILE

    write_results(journal, tmp_path / "r.parquet", duration_s=0, carried=carried())
    raw = pq.read_table(tmp_path / "r.parquet")
    assert raw["message"][2].as_py() == HOSTILE
    assert raw["Note"].to_pylist() == CARRIED["Note"]

    retry = read_csv(side_paths(tmp_path / "r.csv")[0])
    assert [r["Note"] for r in retry] == [DDE, "\tx"]  # an input again: values as given


def test_the_cells_given_a_leading_quote_are_counted_in_the_summary_and_its_sheet(
        journal: Journal, tmp_path: Path) -> None:
    # an input '+49 30' reads "'+49 30" in the results, as an input "'+49 30" would: the user
    # must be told that the ' is ours, and how many cells have it (1 message, 5 notes)
    csv_summary = write_results(journal, tmp_path / "r.csv", duration_s=0, carried=carried())
    assert csv_summary.extra["formula_cells_defused"] == 6
    line = report.defused_cells_line(csv_summary)
    assert line and line.startswith("6 text cell(s) of ") and "leading '" in line
    xlsx_summary = write_results(journal, tmp_path / "r.xlsx", duration_s=0,
                                 carried=carried())
    assert xlsx_summary.extra["formula_cells_defused"] == 6
    book, _ = read_sheet(tmp_path / "r.xlsx")
    figures = {row[0].value: row[1].value for row in book["summary"].iter_rows()}
    assert figures["cells given a leading '"] == 6
    raw = write_results(journal, tmp_path / "r.parquet", duration_s=0, carried=carried())
    assert "formula_cells_defused" not in raw.extra and report.defused_cells_line(raw) is None


def test_an_xlsx_cell_that_reads_like_rich_text_xml_is_a_text_and_the_book_opens(
        journal: Journal, tmp_path: Path) -> None:
    """xlsxwriter's streaming mode wrote a text that starts with ``<r>`` and ends with ``</r>``
    as raw XML: one such note (``<r>a & b</r>``) made the whole results file unreadable; a
    header of that shape too."""
    notes = ["<r>a & b</r>", "<r>x</r>", "a < b & c > d", *CARRIED["Note"][3:]]
    write_results(journal, tmp_path / "r.xlsx", duration_s=0,
                  carried=carried(data={**CARRIED, "Note": notes, "<r>&</r>": ["y"] * 8}))
    _, cells = read_sheet(tmp_path / "r.xlsx")
    assert [r[OUT_NAMES.index("Note")].value for r in cells[1:]] == [
        *notes[:3], "'-5", "'+1", "'@me", "'\tx", "ok"]
    assert cells[0][-1].value == "<r>&</r>" and [r[-1].value for r in cells[1:]] == ["y"] * 8


def test_a_header_that_would_be_evaluated_is_defused_too(journal: Journal,
                                                          tmp_path: Path) -> None:
    data = {"=SUM(A1)": ["x"] * 8, "a,b": ["y"] * 8}
    table = pa.table(data)
    source = Carried(("=SUM(A1)", "a,b"), lambda: iter([table]))
    write_results(journal, tmp_path / "r.csv", duration_s=0, carried=source)
    header = (tmp_path / "r.csv").read_text().splitlines()[0]
    assert header.endswith('"\'=SUM(A1)","a,b"')  # quoted once a name needs it
    assert list(read_csv(tmp_path / "r.csv")[0])[-2:] == ["'=SUM(A1)", "a,b"]
    write_results(journal, tmp_path / "r.parquet", duration_s=0, carried=source)
    assert pq.read_schema(tmp_path / "r.parquet").names[-2:] == ["=SUM(A1)", "a,b"]


@pytest.mark.parametrize("sizes", [(3, 1, 0, 4), (8,), (1,) * 8, (0, 5, 0, 3, 0)])
@pytest.mark.parametrize("chunk_rows", [3, 8, 50])
def test_the_inputs_own_columns_line_up_with_their_rows_across_chunks(
        journal: Journal, tmp_path: Path, sizes: tuple[int, ...], chunk_rows: int) -> None:
    summary = write_results(journal, tmp_path / "r.parquet", duration_s=0, chunk_rows=chunk_rows,
                            carried=carried(sizes))
    table = pq.read_table(tmp_path / "r.parquet")
    assert tuple(table.column_names) == OUT_NAMES
    assert table["Email"].to_pylist() == CARRIED["Email"]
    assert table["input_status"].to_pylist() == CARRIED["status"]
    assert table["status"].to_pylist()[:3] == ["unenrolled", "not_enrolled", "failed"]
    retry = read_csv(Path(summary.retry_path))
    # the retry file is an input again: its own names, read back as they are (no drift)
    assert [tuple(r) for r in retry][0] == ("module", "record_id", "cadence_id", "Email",
                                            "status", "Note")
    assert [(r["record_id"], r["Email"], r["status"]) for r in retry] == [
        (R2, "u3@x.example", "warm"), (R3, "u7@x.example", "new")]


def test_a_retry_file_with_the_inputs_columns_is_a_valid_input(journal: Journal,
                                                                tmp_path: Path) -> None:
    summary = write_results(journal, tmp_path / "r.csv", duration_s=0, carried=carried())
    again = read_input(summary.retry_path)
    assert list(again.valid_pairs()) == [("Leads", R2, C1), ("Contacts", R3, C3)]
    assert again.rows == 2


def test_names_that_clash_or_read_as_a_role_get_input_prefix() -> None:
    assert carried_names(["Email", "status", "input_status", "ID", "Cadence", "Module Name",
                          "cadence_name"]) == (
        "Email", "input_status", "input_input_status", "input_ID", "input_Cadence",
        "input_Module Name", "input_cadence_name")


def test_names_that_differ_from_the_results_own_only_in_case_or_spacing_are_prefixed_too(
        ) -> None:
    # Excel's tables, SQL and batcher's own header matching take "Status" for "status": a
    # results file with both would hold two columns of one name for them
    assert carried_names(["Status", "ROW", "Finished At", "Batch-ID", "Email", "input_Status"]
                         ) == ("input_Status", "input_ROW", "input_Finished At",
                               "input_Batch-ID", "Email", "input_input_Status")
    # the input's own names that differ in case stay as they are (they clash with no column
    # of ours), and the retry file keeps them all
    assert carried_names(["Email", "EMAIL"]) == ("Email", "EMAIL")
    assert carried_names(["Status", "Row"], report.RETRY_COLUMNS) == ("Status", "Row")


def test_retry_file_names_read_back_as_they_are_so_rounds_converge() -> None:
    names = ["Email", "status", "input_status", "ID", "Cadence", "module", "cadence_name"]
    retry = carried_names(names, report.RETRY_COLUMNS)
    assert retry == ("Email", "status", "input_status", "input_ID", "input_Cadence",
                     "input_module", "cadence_name")
    assert carried_names(retry, report.RETRY_COLUMNS) == retry  # the next round's retry file
    assert carried_names(retry) == carried_names(names)  # the next round's results


def _failing(after: int) -> Carried:
    """The input's own columns, whose read fails after ``after`` rows (bytes that are not UTF-8
    in a file an earlier version planned)."""
    good = carried((after,))

    def tables() -> Iterator[pa.Table]:
        yield from good.tables()
        raise InputError("in.csv: cannot be read as CSV: it is not UTF-8 text")

    return Carried(good.names, tables)


@pytest.mark.parametrize(("source", "why"), [
    (lambda: carried((3, 4), {n: (v * 2)[:7] for n, v in CARRIED.items()}), "ended after 7 rows"),
    (lambda: carried((3, 6), {n: (v * 2)[:9] for n, v in CARRIED.items()}),
     "1 rows more than the 8 results rows"),
    (lambda: _failing(4), "it is not UTF-8 text")])
def test_input_columns_that_cannot_be_carried_are_left_out_and_the_results_still_written(
        journal: Journal, tmp_path: Path, source, why: str) -> None:
    """A job whose input's other columns cannot be read to the end (or do not line up) used to
    fail at its results on every re-run, for ever: its results are written without them."""
    out = tmp_path / "r.csv"
    whole = write_results(journal, out, duration_s=0)
    rows = read_csv(out)
    summary = write_results(journal, out, duration_s=0, chunk_rows=3, carried=source())
    assert why in summary.extra["input_columns_left_out"]
    assert report.left_out_line(summary).startswith("the input's own columns are left out")
    assert read_csv(out) == rows and list(rows[0]) == list(OUTPUT_SCHEMA.names)
    assert (summary.by_status, summary.rows) == (whole.by_status, whole.rows)
    assert not [p for p in tmp_path.iterdir() if p.name.endswith(".tmp")]


def test_more_input_columns_than_a_sheet_holds_are_left_out_of_xlsx_not_cut(
        journal: Journal, tmp_path: Path) -> None:
    """A stray cell in a sheet's last column (XFD) makes 16,000 carried columns: xlsxwriter
    would drop the cells past XFD without a word (the stray value among them); the .xlsx
    results leave the input's columns out and say so, CSV results keep every one."""
    names = [f"column_{n}" for n in range(5, 16_385)]
    last = [None, None, "stray", None, None, None, None, None]
    wide = pa.table({**{n: pa.nulls(8, pa.string()) for n in names[:-1]},
                     names[-1]: pa.array(last, pa.string())})
    source = Carried(tuple(names), lambda: iter([wide]))
    summary = write_results(journal, tmp_path / "r.xlsx", duration_s=0, carried=source)
    assert "16,380 columns do not fit" in summary.extra["input_columns_left_out"]
    _, rows = read_sheet(tmp_path / "r.xlsx")
    assert [c.value for c in rows[0]] == list(OUTPUT_SCHEMA.names)
    summary = write_results(journal, tmp_path / "r.csv", duration_s=0, carried=source)
    assert "input_columns_left_out" not in summary.extra
    assert [r["column_16384"] for r in read_csv(tmp_path / "r.csv")] == [
        v or "" for v in last]


def test_xlsx_is_refused_for_more_rows_than_a_sheet_holds(journal: Journal,
                                                         tmp_path: Path) -> None:
    check_results_capacity(tmp_path / "r.xlsx", XLSX_MAX_ROWS)
    check_results_capacity(tmp_path / "r.csv", XLSX_MAX_ROWS + 1)
    with pytest.raises(UsageError, match=r"1,048,576 rows do not fit .*\.csv or \.parquet"):
        check_results_capacity(tmp_path / "r.XLSX", XLSX_MAX_ROWS + 1)


class Undercounted:
    """A source that yields one row more than it says it holds."""

    def __init__(self, real: Journal) -> None:
        self.real, self.rows, self.started_at = real, real.rows - 1, real.started_at

    def counters(self) -> dict[str, int]:
        return self.real.counters()

    def iter_result_chunks(self, chunk_rows: int = 50_000,
                           until: threading.Event | None = None) -> Iterator[pa.Table]:
        return self.real.iter_result_chunks(chunk_rows, until=until)


def test_xlsx_rows_past_the_sheet_are_refused_not_dropped(journal: Journal, tmp_path: Path,
                                                          monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(report, "XLSX_MAX_ROWS", 7)
    with pytest.raises(UsageError, match="8 rows do not fit"):
        write_results(journal, tmp_path / "r.xlsx", duration_s=0)
    with pytest.raises(UsageError, match="8 rows do not fit"):  # at its third chunk
        write_results(Undercounted(journal), tmp_path / "r.xlsx", duration_s=0, chunk_rows=3)
    assert not [p for p in tmp_path.iterdir() if not p.name.startswith("job.journal")]


def test_a_killed_xlsx_writers_scratch_folder_is_swept(journal: Journal, tmp_path: Path) -> None:
    dead = tmp_path / ".r.xlsx.999999999.0a0b0c0d.tmp"
    dead.mkdir()
    (dead / "part").write_text("ids")
    write_results(journal, tmp_path / "r.xlsx", duration_s=0)
    assert not dead.exists()


def test_xlsx_cuts_a_text_too_long_for_a_cell_visibly_and_counts_it(journal: Journal,
                                                                      tmp_path: Path) -> None:
    wide = "😀" * 20_000  # 20,000 characters, 40,000 UTF-16 units: Excel's limit counts these
    notes = ["n" * 40_000, wide, *CARRIED["Note"][2:]]
    data = {**CARRIED, "Note": notes}
    summary = write_results(journal, tmp_path / "r.xlsx", duration_s=0, carried=carried(data=data))
    _, cells = read_sheet(tmp_path / "r.xlsx")
    note = [r[OUT_NAMES.index("Note")].value for r in cells[1:]]
    for text, shown in zip(notes[:2], note[:2], strict=True):
        marker = f"…[cut: {len(text)} chars]"
        assert shown.endswith(marker) and text.startswith(shown[:-len(marker)])
        assert len(shown.encode("utf-16-le")) // 2 <= 32_767
        assert len(shown) > 16_000  # cut to fit, not emptied
    assert note[2:] == ["'" + DDE, "'-5", "'+1", "'@me", "'\tx", "ok"]  # the rest as they were
    assert summary.extra["xlsx_cells_cut"] == 2
    doc = (tmp_path / "r.summary.json").read_text()
    assert '"xlsx_cells_cut": 2' in doc

    write_results(journal, tmp_path / "r.csv", duration_s=0, carried=carried(data=data))
    assert [r["Note"] for r in read_csv(tmp_path / "r.csv")][:2] == notes[:2]  # CSV: whole
    cut = report.cut_cells_line(summary, tmp_path / "job.journal")
    assert cut and cut.startswith("2 cell(s) of ") and "--results" in cut


def test_a_job_says_once_on_stderr_that_xlsx_cells_were_cut(tmp_path: Path, serve) -> None:
    import io
    import json
    from dataclasses import replace

    from batcher.job import run_job
    from batcher.sandbox.world import World

    from .conftest import write_pairs
    from .test_e2e import make_rows, settings

    rows = make_rows(20, 2)
    live = serve(World.from_pairs(rows))
    inp = write_pairs(tmp_path / "in.csv", rows)
    with_note = [line + ("," + ("x" * 40_000 if i % 5 == 1 else "short") if i else ",note")
                 for i, line in enumerate(inp.read_text().splitlines())]
    inp.write_text("\n".join(with_note) + "\n")
    err = io.StringIO()
    result = run_job(replace(settings(tmp_path, inp), results=tmp_path / "out.xlsx"), live.env,
                     stream=err)
    assert result.exit_code == 0
    cut = [line for line in err.getvalue().splitlines() if "cut to fit" in line]
    long_rows = sum(1 for line in with_note[1:] if "x" * 40_000 in line)
    assert len(cut) == 1 and cut[0].startswith(f"batcher: {long_rows} cell(s) of ")
    assert ".csv or .parquet results keep every text whole" in cut[0]
    assert json.loads((tmp_path / "out.summary.json").read_text())["extra"][
        "xlsx_cells_cut"] == long_rows
    _, cells = read_sheet(tmp_path / "out.xlsx")
    notes = [r[-1].value for r in cells[1:]]
    assert sum(1 for n in notes if n.endswith("…[cut: 40000 chars]")) == long_rows


def test_a_jobs_results_carry_a_pandas_parquets_columns_as_a_user_reads_them(
        tmp_path: Path, serve) -> None:
    # a real job over loopback: a phone stored as float64 (pandas, one missing), a "Status"
    # column beside the results' status, and a phone '+49…' that the CSV defuses, said on stderr
    import io
    import json
    from dataclasses import replace

    from batcher.job import run_job
    from batcher.sandbox.world import World

    from .test_e2e import make_rows, settings

    rows = make_rows(6, 1)
    live = serve(World.from_pairs(rows))
    inp = tmp_path / "in.parquet"
    pq.write_table(pa.table({
        "module": [m for m, _, _ in rows], "record_id": [r for _, r, _ in rows],
        "cadence_id": [c for _, _, c in rows],
        "Status": ["hot", "cold", None, "", "new", "old"],
        "phone": [491511234567.0, None, 4930123456.0, 1.5, 0.0, 12345678901.0],
        "intl": ["+49 30 1234", "0049301234", "x", "-", "", None]}), inp)
    err = io.StringIO()
    for name in ("out.csv", "out.xlsx"):
        result = run_job(replace(settings(tmp_path, inp, quiet=False),
                                 results=tmp_path / name), live.env, stream=err)
        assert result.exit_code == 0
    said = [line for line in err.getvalue().splitlines() if "leading '" in line]
    assert len(said) == 2 and said[0].startswith("batcher: 2 text cell(s) of ")

    want_phone = ["491511234567", "", "4930123456", "1.5", "0", "12345678901"]
    got = read_csv(tmp_path / "out.csv")
    assert [r["record_id"] for r in got] == [r for _, r, _ in rows]
    assert [r["phone"] for r in got] == want_phone
    assert [r["input_Status"] for r in got] == ["hot", "cold", "", "", "new", "old"]
    assert [r["status"] for r in got] == ["unenrolled"] * 6
    assert [r["intl"] for r in got] == ["'+49 30 1234", "0049301234", "x", "'-", "", ""]
    assert json.loads((tmp_path / "out.summary.json").read_text())["extra"][
        "formula_cells_defused"] == 2

    _, cells = read_sheet(tmp_path / "out.xlsx")
    header = [c.value for c in cells[0]]
    phone = header.index("phone")
    assert [r[phone].value for r in cells[1:]] == [p or None for p in want_phone]
    assert all(r[phone].data_type == "s" for r in cells[1:] if r[phone].value)
    assert header.count("input_Status") == 1 and "Status" not in header


def test_long_carried_cells_are_written_in_pieces_row_for_row(
        journal: Journal, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Found by trying: a results chunk (50,000 rows) took its carried columns whole, so an
    input of 20 KB notes held a gigabyte of them at once (memory grew with the row's size).
    The chunk is now cut where its carried cells reach CARRY_BYTES: here a piece a row or
    two, and the files are the same, row for row, as written in one piece."""
    notes = [f"note {i}: " + "x" * (300 * i) for i in range(1, 9)]
    data = {**CARRIED, "Note": notes}
    whole = tmp_path / "whole"
    whole.mkdir()
    for name in ("r.csv", "r.parquet"):
        write_results(journal, whole / name, duration_s=0, carried=carried(data=data))
    monkeypatch.setattr(report, "CARRY_BYTES", 1000)
    pieces = []
    real = report._write_chunk
    monkeypatch.setattr(report, "_write_chunk",
                        lambda out, chunk, *a: (pieces.append(chunk.num_rows),
                                                real(out, chunk, *a))[1])
    for name in ("r.csv", "r.parquet"):
        summary = write_results(journal, tmp_path / name, duration_s=0,
                                carried=carried(data=data))
        assert summary.rows == len(ROWS)
    assert len(pieces) > 2 and sum(pieces) == 2 * len(ROWS)  # cut, and no row lost or twice
    assert read_csv(tmp_path / "r.csv") == read_csv(whole / "r.csv")
    assert [r["Note"] for r in read_csv(tmp_path / "r.csv")] == notes
    assert pq.read_table(tmp_path / "r.parquet").equals(pq.read_table(whole / "r.parquet"))
    retry = read_csv(side_paths(tmp_path / "r.csv")[0])
    assert retry and retry == read_csv(side_paths(whole / "r.csv")[0])
