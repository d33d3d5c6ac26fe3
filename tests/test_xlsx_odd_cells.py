"""One odd cell of an .xlsx never refuses the whole list; merges and totals rows the reader
does not take as they look are said, and what is said is what is done."""

from __future__ import annotations

import datetime as dt
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
    assert line.startswith("warning: 1 merged cell spans several rows and columns, or starts "
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
