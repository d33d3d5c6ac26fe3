"""One odd cell of an .xlsx never refuses the whole list; merges and totals rows the reader
does not take as they look are said, and what is said is what is done."""

from __future__ import annotations

import datetime as dt
import os
import re
import subprocess
import sys
import zipfile
from pathlib import Path

import openpyxl
import pytest
import xlsxwriter

from batcher.inputs.xlsx import read_xlsx

SHEET = "xl/worksheets/sheet1.xml"
REC = ["5540230000017986100", "5540230000017986101", "5540230000017986102"]
CAD = "5540230000040000001"


def _book(path: Path) -> Path:
    """Three rows as xlsxwriter saves them (shared strings, as Excel does): ids as text, a
    date, a duration, a TRUE, a number."""
    wb = xlsxwriter.Workbook(path)
    ws = wb.add_worksheet()
    date = wb.add_format({"num_format": "yyyy-mm-dd"})
    hours = wb.add_format({"num_format": "[h]:mm:ss"})
    ws.write_row(0, 0, ["Record Id", "Cadence Id", "When", "Took", "Done", "Note"])
    for i, rec in enumerate(REC):
        ws.write_string(i + 1, 0, rec)
        ws.write_string(i + 1, 1, CAD)
        ws.write_datetime(i + 1, 2, dt.datetime(2024, 1, 31 - i), date)
        ws.write_number(i + 1, 3, 0.5 + i, hours)
        ws.write_boolean(i + 1, 4, True)
        ws.write_string(i + 1, 5, f"note {i}")
    wb.close()
    return path


def _set_cell(path: Path, ref: str, xml: str) -> Path:
    """Replace cell ``ref``'s XML with ``xml``, as another tool might have written it."""
    with zipfile.ZipFile(path) as zf:
        parts = {i.filename: zf.read(i) for i in zf.infolist()}
    parts[SHEET], n = re.subn(rb'<c r="%s"[^>]*?(?:/>|>.*?</c>)' % ref.encode(), xml.encode(),
                              parts[SHEET])
    assert n == 1
    with zipfile.ZipFile(path, "w", zipfile.ZIP_DEFLATED) as zf:
        for name, body in parts.items():
            zf.writestr(name, body)
    return path


def _rows(path: Path) -> list[dict]:
    return read_xlsx(path).table.to_pylist()


#: a cell calamine cannot convert, which made it refuse the whole sheet (or panic), and the
#: text the row then holds there
ODD = {
    # a number formatted as a duration past timedelta's range: OverflowError "days=…"
    "huge duration": ('<c r="D3" s="2"><v>1e16</v></c>', "D", "1E+16"),
    # the same negative: a Rust panic, past ``except Exception``
    "negative duration": ('<c r="D3" s="2"><v>-1e16</v></c>', "D", "-1E+16"),
    # a shared-text index past the table's end
    "shared text out of range": ('<c r="F3" t="s"><v>99999999999</v></c>', "F",
                                 "<unreadable cell F3>"),
    "TRUE/FALSE of another value": ('<c r="E3" t="b"><v>7</v></c>', "E", "7"),
    "unknown error value": ('<c r="F3" t="e"><v>#WHAT</v></c>', "F", "#WHAT"),
}


@pytest.mark.parametrize("case", sorted(ODD))
def test_one_odd_cell_is_read_as_its_plain_value_the_sheet_as_it_is(tmp_path, case):
    """Each was 'not a readable .xlsx workbook' (or a Rust panic and a traceback) for the whole
    list: now every other cell reads as before, that one as its plain value, and one line
    names it."""
    xml, col, text = ODD[case]
    clean = _rows(_book(tmp_path / "clean.xlsx"))
    path = _set_cell(_book(tmp_path / "odd.xlsx"), f"{col}3", xml)
    sheet = read_xlsx(path)
    rows = sheet.table.to_pylist()
    name = {"D": "Took", "E": "Done", "F": "Note"}[col]
    assert rows[1][name] == text
    rows[1][name] = clean[1][name]
    assert rows == clean  # dates, durations, TRUE, text: as calamine reads them
    [(line, event)] = sheet.notes
    assert line.startswith(f"warning: 1 cell could not be read as the sheet's format says "
                           f"({col}3: ")
    assert event == "unreadable_cells"


def test_an_unreadable_id_cell_makes_its_row_invalid_naming_the_cell(tmp_path):
    path = _set_cell(_book(tmp_path / "ids.xlsx"), "A3", '<c r="A3" t="s"><v>4096</v></c>')
    done = subprocess.run([sys.executable, "-m", "batcher", "plan", str(path), "--module", "Leads"],
                          cwd=Path(__file__).parents[1], capture_output=True, text=True,
                          timeout=60)
    assert "Traceback" not in done.stderr
    assert done.stdout.startswith("3 rows: 2 pairs to un-enroll, 1 invalid"), done.stdout
    assert "<unreadable cell A3>" in done.stdout + done.stderr  # the invalid row's reason
    assert ("warning: 1 cell could not be read as the sheet's format says (A3: its shared text "
            "(4096) is not in the workbook)") in done.stderr


def test_a_merge_over_rows_and_columns_is_left_in_its_top_left_cell_and_said(tmp_path):
    """A2:B3 merged shows one value across the id and cadence columns: it was neither filled
    nor said, and row 3 came out 'missing record id' unexplained. It is never copied (into
    the cadence column, or down into rows that did not show it in that column alone), and
    said; a merge down one column is filled as before."""
    wb = openpyxl.Workbook()
    ws = wb.active
    ws.append(["Record Id", "Cadence Id", "Module"])
    ws.append([REC[0], None, "Leads"])
    ws.append([None, None, None])
    ws.append([REC[1], CAD, "Leads"])
    ws.append([REC[2], CAD, None])
    ws.merge_cells("A2:B3")
    ws.merge_cells("C4:C5")
    wb.save(tmp_path / "m.xlsx")
    sheet = read_xlsx(tmp_path / "m.xlsx")
    assert sheet.table.to_pylist() == [
        {"Record Id": REC[0], "Cadence Id": "", "Module": "Leads"},
        {"Record Id": "", "Cadence Id": "", "Module": ""},
        {"Record Id": REC[1], "Cadence Id": CAD, "Module": "Leads"},
        {"Record Id": REC[2], "Cadence Id": CAD, "Module": "Leads"}]
    assert sheet.merged == ("C4:C5",)
    [(line, event)] = sheet.notes
    assert line.startswith("warning: 1 merged cell spans several columns, or starts "
                           "in the header (A2:B3); batcher reads the value in its top-left "
                           "cell only")
    assert event == "merged_unfilled"


def test_a_totals_row_with_cells_beside_the_table_is_read_as_a_data_row_and_said_so(tmp_path):
    """The totals row had a note in a column outside its table: the row was kept as a data row
    while the line said it was not read. Now the line says what is done: the table's totals
    left out, the rest of the row read."""
    from openpyxl.worksheet.table import Table

    wb = openpyxl.Workbook()
    ws = wb.active
    ws.append(["Record Id", "Cadence Id", "Note"])
    for rec in REC[:2]:
        ws.append([rec, CAD, None])
    ws.append(["Total", 2, "checked by Ana"])  # C4: beside the table A1:B4
    table = Table(displayName="Leavers", ref="A1:B4", totalsRowCount=1)
    table._initialise_columns()
    ws.add_table(table)
    wb.save(tmp_path / "t.xlsx")
    sheet = read_xlsx(tmp_path / "t.xlsx")
    assert sheet.totals == ()  # the totals line is not said of it
    assert sheet.table.to_pylist()[-1] == {"Record Id": "", "Cadence Id": "",
                                           "Note": "checked by Ana"}
    [(line, event)] = sheet.notes
    assert line.startswith("warning: sheet row 4 is the totals row of an Excel table but also "
                           "has cells outside the table (C4): batcher leaves out the table's "
                           "totals and reads the rest of the row as a data row")
    done = subprocess.run([sys.executable, "-m", "batcher", "plan", str(tmp_path / "t.xlsx"),
                           "--module", "Leads"],
                          cwd=Path(__file__).parents[1], capture_output=True, text=True,
                          timeout=60)
    assert done.stdout.startswith("3 rows: 2 pairs to un-enroll, 1 invalid"), done.stdout
    assert "sheet row 4 is the totals row of an Excel table but also has cells" in done.stderr
    assert "not read it as a data row" not in done.stderr


def _dated(path: Path, ref: str, value: float | str) -> Path:
    """``_book`` with the number ``value`` in cell ``ref``, under the date format (style 1)."""
    return _set_cell(_book(path), ref, f'<c r="{ref}" s="1"><v>{value}</v></c>')


@pytest.mark.parametrize(("value", "text"), [(-3, "-3"), (-1.5, "-1.5"), ("NaN", "nan")])
def test_a_date_formatted_number_no_date_can_be_is_its_plain_number_and_said(tmp_path, value,
                                                                             text):
    """calamine made -3 under a date format ``00:00:00``, -1.5 ``12:00:00`` and NaN
    1899-12-30, silently (Excel shows ``#######``): the results carried a made-up date. Now
    the cell is its plain number, in the table and as the sheet shows it, and one line names
    it; the other cells read as before."""
    clean = _rows(_book(tmp_path / "clean.xlsx"))
    sheet = read_xlsx(_dated(tmp_path / "neg.xlsx", "C3", value))
    rows = sheet.table.to_pylist()
    assert rows[1]["When"] == text
    assert sheet.shown["When"].to_pylist() == ["2024-01-31", text, "2024-01-29"]
    rows[1]["When"] = clean[1]["When"]
    assert rows == clean
    [(line, event)] = sheet.notes
    assert line.startswith("warning: 1 cell could not be read as the sheet's format says "
                           f"(C3: {value} is out of range for its date format)")
    assert event == "unreadable_cells"


def test_a_negative_written_under_a_date_format_by_a_program_is_not_a_time(tmp_path):
    """As a program writes it (xlsxwriter's write_number with a date format), and in a
    formula's saved value: the same."""
    wb = xlsxwriter.Workbook(tmp_path / "w.xlsx")
    ws = wb.add_worksheet()
    date = wb.add_format({"num_format": "dd/mm/yyyy"})
    ws.write_row(0, 0, ["Record Id", "Cadence Id", "Due", "Left"])
    ws.write_row(1, 0, [REC[0], CAD])
    ws.write_number(1, 2, -2, date)
    ws.write_formula(1, 3, "=C2-1", date, -3)
    wb.close()
    sheet = read_xlsx(tmp_path / "w.xlsx")
    assert sheet.table.to_pylist() == [{"Record Id": REC[0], "Cadence Id": CAD, "Due": "-2",
                                        "Left": "-3"}]
    [(line, _)] = sheet.notes
    assert "(C2: -2 is out of range for its date format, D2: -3 is out of range" in line


def test_a_date_formatted_negative_id_or_module_makes_its_row_invalid_never_a_time(tmp_path):
    """A negative number under a date format in the id column came out as the id
    ``00:00:00``, in the module column as the module ``00:00:00``: the row is invalid with
    the cell's own value as the reason, and the cell is named."""
    wb = xlsxwriter.Workbook(tmp_path / "ids.xlsx")
    ws = wb.add_worksheet()
    date = wb.add_format({"num_format": "yyyy-mm-dd"})
    ws.write_row(0, 0, ["Record Id", "Cadence Id", "Module"])
    ws.write_row(1, 0, [REC[0], CAD, "Leads"])
    ws.write_number(2, 0, -2, date)
    ws.write_row(2, 1, [CAD, "Leads"])
    ws.write_row(3, 0, [REC[2], CAD])
    ws.write_number(3, 2, -1, date)
    wb.close()
    done = subprocess.run([sys.executable, "-m", "batcher", "plan", str(tmp_path / "ids.xlsx")],
                          cwd=Path(__file__).parents[1], capture_output=True, text=True,
                          timeout=60)
    assert "Traceback" not in done.stderr
    assert done.stdout.startswith("3 rows: 1 pairs to un-enroll, 2 invalid"), done.stdout
    assert "00:00:00" not in done.stdout + done.stderr
    assert "row 2: bad record id: '-2' is not a 15-19 digit Zoho id" in done.stdout
    assert "'-1'" in done.stdout  # the module's reason names the cell's value
    assert ("warning: 2 cells could not be read as the sheet's format says (A3: -2 is out of "
            "range for its date format, C4: -1 is out of range for its date format)"
            ) in done.stderr


def test_a_rust_panic_on_a_cell_shows_no_panic_text_only_the_line_naming_the_cell(tmp_path):
    """calamine panics on a negative duration past its range: the Rust hook's 'thread …
    panicked at …' (and a whole backtrace under RUST_BACKTRACE) came on stderr before the
    line batcher says. Now that line alone."""
    path = _set_cell(_book(tmp_path / "p.xlsx"), "D3", '<c r="D3" s="2"><v>-1e16</v></c>')
    done = subprocess.run([sys.executable, "-m", "batcher", "plan", str(path), "--module", "Leads"],
                          cwd=Path(__file__).parents[1], capture_output=True, text=True,
                          timeout=60, env={**os.environ, "RUST_BACKTRACE": "1"})
    assert done.returncode == 0, done.stderr
    assert done.stdout.startswith("3 rows: 3 pairs to un-enroll"), done.stdout
    assert done.stderr.splitlines() == [
        "warning: 1 cell could not be read as the sheet's format says (D3: -1e16 is out of "
        "range for its duration format); batcher reads each as its plain value (a row whose "
        "id is such a cell is invalid) — check these cells"]


def test_a_merge_over_columns_of_one_row_is_left_in_its_left_cell_and_said(tmp_path):
    """A3:B3 merged shows the id across the id and cadence columns: row 3 came out 'missing
    cadence id' and nothing said why. The value stays in A3 (never copied into the cadence
    column), and the merge is said like one over rows and columns."""
    wb = openpyxl.Workbook()
    ws = wb.active
    ws.append(["Record Id", "Cadence Id", "Note"])
    ws.append([REC[0], CAD, None])
    ws.append([REC[1], None, None])
    ws.append([REC[2], CAD, "x"])
    ws.merge_cells("A3:B3")
    ws.merge_cells("C2:C2")  # one cell: shows as any other, not said
    wb.save(tmp_path / "m.xlsx")
    sheet = read_xlsx(tmp_path / "m.xlsx")
    assert sheet.table.to_pylist()[1] == {"Record Id": REC[1], "Cadence Id": "", "Note": ""}
    assert sheet.merged == ()
    [(line, event)] = sheet.notes
    assert line.startswith("warning: 1 merged cell spans several columns, or starts in the "
                           "header (A3:B3); batcher reads the value in its top-left cell "
                           "only, the other cells it covers as empty")
    assert event == "merged_unfilled"


def test_thousands_and_a_text_section_are_carried_as_the_sheet_shows_them(tmp_path):
    """Amounts formatted ``#,##0,"K"`` and Excel's ``[$-409]m/d/yy h:mm AM/PM;@`` dates were
    carried as their values (12345678, 2024-01-31T14:05:00): as the sheet shows them now."""
    wb = xlsxwriter.Workbook(tmp_path / "f.xlsx")
    ws = wb.add_worksheet()
    k = wb.add_format({"num_format": '#,##0,"K"'})
    when = wb.add_format({"num_format": "[$-409]m/d/yy\\ h:mm\\ AM/PM;@"})
    ws.write_row(0, 0, ["Record Id", "Cadence Id", "Budget", "When"])
    ws.write_row(1, 0, [REC[0], CAD])
    ws.write_number(1, 2, 12345678, k)
    ws.write_datetime(1, 3, dt.datetime(2024, 1, 31, 14, 5), when)
    wb.close()
    sheet = read_xlsx(tmp_path / "f.xlsx")
    assert sheet.shown["Budget"].to_pylist() == ["12,346K"]
    assert sheet.shown["When"].to_pylist() == ["1/31/24 2:05 PM"]
    assert sheet.table.to_pylist()[0]["Record Id"] == REC[0]
