"""The first sheet of an .xlsx as text: ids exactly, rounded numbers as Excel shows them, rows in
place, and every unusable workbook refused in one line."""

from __future__ import annotations

import datetime as dt
import importlib.util
import io
import re
import subprocess
import sys
import zipfile
from pathlib import Path

import openpyxl
import pytest

from batcher.errors import InputError
from batcher.inputs import InputOptions, xlsx
from batcher.inputs.formats import open_source
from batcher.inputs.xlsx import cell_text, read_xlsx

CORPUS = Path(__file__).parent / "corpus"
SCIENTIFIC = re.compile(r"^[+-]?[0-9]+(\.[0-9]*)?[eE][+-]?[0-9]+$")  # the id rules' pattern
SHEET = "xl/worksheets/sheet1.xml"


def _workbook(path: Path, rows: list[list], header: list | None = None) -> Path:
    wb = openpyxl.Workbook()
    ws = wb.active
    ws.append(header or ["Record Id", "Cadence Id"])
    for row in rows:
        ws.append(row)
    wb.save(path)
    return path


def _rewrite(path: Path, old: str, new: str) -> None:
    """Replace text in the sheet's XML, for cells openpyxl does not write (full-precision
    numbers, formulas with cached values)."""
    with zipfile.ZipFile(path) as zf:
        parts = {i.filename: zf.read(i) for i in zf.infolist()}
    assert old.encode() in parts[SHEET]
    parts[SHEET] = parts[SHEET].replace(old.encode(), new.encode())
    with zipfile.ZipFile(path, "w", zipfile.ZIP_DEFLATED) as zf:
        for name, body in parts.items():
            zf.writestr(name, body)


def _column(path: Path, name: str = "Record Id") -> list[str]:
    return read_xlsx(path).table[name].to_pylist()


def _refusal(path: Path) -> str:
    with pytest.raises(InputError) as info:
        read_xlsx(path)
    message = str(info.value)
    assert message.startswith(f"{path}: ")
    assert "\n" not in message and "Traceback" not in message
    return message


def test_text_ids_are_read_exactly(tmp_path):
    ids = ["1990117000000120345", " 1990117000000120346 ", "zcrm_1990117000000120347",
           "0001990117000000120", "1990117000000120345.0", "Leads-ü"]
    path = _workbook(tmp_path / "ids.xlsx", [[i, "1990117000000099001"] for i in ids])
    sheet = read_xlsx(path)
    assert sheet.header == ["Record Id", "Cadence Id"]
    assert sheet.table.column_names == sheet.header
    assert sheet.table["Record Id"].to_pylist() == ids
    assert sheet.table["Cadence Id"].to_pylist() == ["1990117000000099001"] * len(ids)


def test_a_19_digit_number_is_excels_scientific_text_never_digits(tmp_path):
    path = _workbook(tmp_path / "n.xlsx", [[1990117000000120345], [-1990117000000120345]])
    assert _column(path) == ["1.99011700000012E+18", "-1.99011700000012E+18"]
    assert all(SCIENTIFIC.match(v) for v in _column(path))


def test_a_number_saved_with_all_its_digits_is_still_scientific(tmp_path):
    path = _workbook(tmp_path / "n.xlsx", [[1.5]])
    _rewrite(path, "<v>1.5</v>", "<v>1990117000000120345</v>")  # not from Excel, but possible
    assert _column(path) == ["1.99011700000012E+18"]


def test_numbers_of_at_most_15_digits_are_their_digits(tmp_path):
    path = _workbook(tmp_path / "n.xlsx", [[123456789012345], [999999999999999], [12.0], [0],
                                           [1234567890123456]])
    assert _column(path) == ["123456789012345", "999999999999999", "12", "0",
                             "1.23456789012346E+15"]


@pytest.mark.parametrize(("value", "text"), [
    ("id", "id"), ("", ""), (True, "TRUE"), (False, "FALSE"),
    (1990117000000120345, "1.99011700000012E+18"), (1.99011700000012e18, "1.99011700000012E+18"),
    (1e15, "1E+15"), (-1e15, "-1E+15"), (1e300, "1E+300"), (999999999999999.0, "999999999999999"),
    (999999999999999.5, "999999999999999.5"), (0.5, "0.5"), (-5.0, "-5"), (-0.0, "0"),
    (1e-07, "1e-07"), (0.1 + 0.2, "0.30000000000000004"), (float("nan"), "nan"),
    (dt.date(2024, 1, 31), "2024-01-31"), (dt.datetime(2024, 1, 31, 8, 30), "2024-01-31T08:30:00"),
    (dt.time(8, 30, 5), "08:30:05"), (dt.timedelta(days=1, hours=2), "P1DT2H0M0S"),
    (dt.timedelta(seconds=-90.5), "-P0DT0H1M30.5S"),
])
def test_cell_text_rules(value, text):
    assert cell_text(value) == text


def test_blank_rows_are_kept_in_place_and_trailing_ones_dropped(tmp_path):
    wb = openpyxl.Workbook()
    ws = wb.active
    ws["A1"], ws["B1"] = "Record Id", "Cadence Id"
    ws["A2"] = "1990117000000120345"
    ws["B4"] = "1990117000000099001"  # row 3 blank; row 4 has no record id
    ws["A7"] = "1990117000000120346"
    ws["A12"].number_format = "@"  # formatted, empty: no row of its own
    wb.save(tmp_path / "gaps.xlsx")
    table = read_xlsx(tmp_path / "gaps.xlsx").table
    # row i of the table is sheet row i + 2
    assert table["Record Id"].to_pylist() == ["1990117000000120345", "", "", "", "",
                                              "1990117000000120346"]
    assert table["Cadence Id"].to_pylist() == ["", "", "1990117000000099001", "", "", ""]


def test_header_quirks(tmp_path):
    header = ["Record Id", None, "Record Id", 2024, "  ", "Record Id (2)", "Record Id"]
    path = _workbook(tmp_path / "h.xlsx", [list(range(7))], header)
    sheet = read_xlsx(path)
    # a name the header holds itself ("Record Id (2)") stays its column's: a repeat of "Record
    # Id" takes the next number free (before, the repeat took it, and the column so named was
    # "Record Id (2) (2)": --record-column "Record Id (2)" named the wrong column)
    assert sheet.header == ["Record Id", "column_2", "Record Id (3)", "2024", "column_5",
                            "Record Id (2)", "Record Id (4)"]
    assert sheet.table.column_names == sheet.header
    assert sheet.table.to_pylist() == [dict(zip(sheet.header, "0123456", strict=True))]


@pytest.mark.parametrize("kind", ["xlsx", "csv"])
def test_a_column_named_by_a_flag_is_that_column_whatever_the_header_repeats(tmp_path, kind):
    """--record-column "Record Id (2)" names the column so headed, not the second "Record Id"
    (before, an .xlsx renamed that repeat "Record Id (2)" and took its values for the ids)."""
    header = ["Record Id", "Record Id", "Record Id (2)", "Cadence Id", "Module"]
    row = ["1990117000000120345", "1990117000000120346", "1990117000000120347",
           "5540230000040000001", "Leads"]
    if kind == "xlsx":
        path = _workbook(tmp_path / "h.xlsx", [row], header)
    else:
        path = tmp_path / "h.csv"
        path.write_text(",".join(header) + "\n" + ",".join(row) + "\n")
    from batcher.inputs import read_input

    table = read_input(path, InputOptions(record_column="Record Id (2)")).table
    assert table["record_id"].to_pylist() == ["1990117000000120347"]


def test_empty_header_cells_are_named_by_their_sheet_column(tmp_path):
    wb = openpyxl.Workbook()
    ws = wb.active
    ws["C1"], ws["E1"] = "Record Id", "Cadence Id"
    ws["C2"], ws["D2"], ws["E2"] = "1990117000000120345", "x", "1990117000000099001"
    wb.save(tmp_path / "cols.xlsx")
    sheet = read_xlsx(tmp_path / "cols.xlsx")
    assert sheet.header[-3:] == ["Record Id", "column_4", "Cadence Id"]
    assert sheet.table["column_4"].to_pylist() == ["x"]


def test_dates_booleans_and_errors(tmp_path):
    path = _workbook(tmp_path / "kinds.xlsx", [
        [dt.date(2024, 1, 31), dt.datetime(2024, 1, 31, 8, 30)],
        [True, "#N/A"],
        [0.5, "#DIV/0!"],
    ])
    sheet = read_xlsx(path)
    assert sheet.table["Record Id"].to_pylist() == ["2024-01-31", "TRUE", "0.5"]
    assert sheet.table["Cadence Id"].to_pylist() == ["2024-01-31T08:30:00", "#N/A", "#DIV/0!"]


def test_a_formula_error_shows_its_cached_error_text(tmp_path):
    path = _workbook(tmp_path / "f.xlsx", [["1990117000000120345", "lookup"]])
    _rewrite(path, '<c r="B2" t="inlineStr"><is><t>lookup</t></is></c>',
             '<c r="B2" s="0" t="e"><f>VLOOKUP(A2,Sheet2!A:B,2,FALSE)</f><v>#N/A</v></c>')
    assert _column(path, "Cadence Id") == ["#N/A"]


def test_formulas_without_a_saved_value_are_named_never_blank_rows(tmp_path):
    """openpyxl (and pandas through it) saves formulas without their values: calamine read
    such cells as empty, so a row of them was counted blank and got no results row, and a
    last row of them was not even that. Each is its formula, and its row invalid, saying so;
    a formula with a saved value is its value."""
    from batcher.inputs import read_input

    path = _workbook(tmp_path / "formulas.xlsx", [
        ['="554023000001798647"', '="554023000004092008"', "=1+1"],
        ["554023000001798648", "554023000004092008", "plain"],
        ["=Lookup!A3", '="554023000004092008"', '=B3&"x"'],
    ], header=["Record Id", "Cadence Id", "Note"])
    _rewrite(path, '<c r="A3" t="inlineStr"><is><t>554023000001798648</t></is></c>',
             '<c r="A3" t="str"><f>Lookup!A2</f><v>554023000001798648</v></c>')
    sheet = read_xlsx(path)
    assert sheet.table["Record Id"].to_pylist() == [
        '="554023000001798647"', "554023000001798648", "=Lookup!A3"]
    assert sheet.table["Note"].to_pylist() == ["=1+1", "plain", '=B3&"x"']
    rows = read_input(path, "Leads").table.to_pylist()
    assert [(r["row"], r["status"]) for r in rows] == [(1, "invalid"), (2, "valid"),
                                                       (3, "invalid")]
    assert "'=\"554023000001798647\"' is a formula, not its value" in rows[0]["reason"]


def test_formulas_excel_saved_as_empty_text_leave_their_rows_blank(tmp_path):
    """A formula filled down past the list (``=IF(Data!A4="","",Data!A4)``) is saved by Excel
    with its value, the empty text (``t="str"`` and an empty ``<v>``): those rows are blank
    rows as the user sees them, not formulas without a value."""
    from batcher.inputs import read_input

    path = _workbook(tmp_path / "filled.xlsx", [
        ["554023000001798647", "554023000004092008"], ["x", "y"], ["x", "y"]])
    for row in (3, 4):
        for col in "AB":
            _rewrite(path, f'<c r="{col}{row}" t="inlineStr"><is><t>{"x" if col == "A" else "y"}'
                     '</t></is></c>', f'<c r="{col}{row}" t="str"><f>IF(Data!{col}{row}="",""'
                     f',Data!{col}{row})</f><v></v></c>')
    assert _column(path) == ["554023000001798647"]
    assert [r["status"] for r in read_input(path, "Leads").table.to_pylist()] == ["valid"]


def test_error_cells_cut_by_a_chunk_end_are_found(tmp_path, monkeypatch):
    path = _workbook(tmp_path / "e.xlsx", [["#N/A", "#REF!"] for _ in range(50)])
    monkeypatch.setattr(xlsx, "_CHUNK", 37)
    monkeypatch.setattr(xlsx, "_OVERLAP", 120)
    sheet = read_xlsx(path)
    assert sheet.table["Record Id"].to_pylist() == ["#N/A"] * 50
    assert sheet.table["Cadence Id"].to_pylist() == ["#REF!"] * 50


def test_only_the_first_sheet_is_read(tmp_path):
    wb = openpyxl.Workbook()
    wb.active.append(["Record Id"])
    wb.active.append(["1990117000000120345"])
    wb.create_sheet("Other").append(["#N/A", "x"])
    wb.save(tmp_path / "two.xlsx")
    assert read_xlsx(tmp_path / "two.xlsx").table.to_pylist() == [
        {"Record Id": "1990117000000120345"}]


def test_the_content_decides_not_the_name(tmp_path):
    path = _workbook(tmp_path / "report.xls", [["1990117000000120345", "#N/A"]])
    assert read_xlsx(path).table.to_pylist() == [
        {"Record Id": "1990117000000120345", "Cadence Id": "#N/A"}]


def test_a_header_only_sheet_has_no_rows(tmp_path):
    table = read_xlsx(_workbook(tmp_path / "h.xlsx", [])).table
    assert table.num_rows == 0 and table.column_names == ["Record Id", "Cadence Id"]


def test_an_empty_first_sheet_is_refused(tmp_path):
    wb = openpyxl.Workbook()
    wb.create_sheet("List").append(["Record Id"])  # the list is on the second sheet
    wb.save(tmp_path / "empty.xlsx")
    message = _refusal(tmp_path / "empty.xlsx")
    assert "the first sheet ('Sheet') is empty" in message
    assert "put the list on the first sheet" in message


def test_a_blank_row_1_is_refused(tmp_path):
    wb = openpyxl.Workbook()
    wb.active["A3"] = "Record Id"
    wb.save(tmp_path / "low.xlsx")
    assert "row 1 of the first sheet ('Sheet') is blank; put the column names on row 1" in (
        _refusal(tmp_path / "low.xlsx"))


def test_a_damaged_workbook_is_refused_in_one_line(tmp_path):
    good = _workbook(tmp_path / "good.xlsx", [["1990117000000120345"]]).read_bytes()
    cut = tmp_path / "cut.xlsx"
    cut.write_bytes(good[: len(good) // 2])
    assert "is not a readable .xlsx workbook" in _refusal(cut)
    assert "save it again as .xlsx, or save it as CSV UTF-8" in _refusal(cut)
    junk = tmp_path / "junk.xlsx"
    junk.write_bytes(b"record_id\n1990117000000120345\n")
    assert "is not a readable .xlsx workbook" in _refusal(junk)


def test_a_workbook_without_a_worksheet_part_is_refused(tmp_path):
    path = _workbook(tmp_path / "nosheet.xlsx", [["1990117000000120345"]])
    with zipfile.ZipFile(path) as zf:
        parts = {i.filename: zf.read(i) for i in zf.infolist() if i.filename != SHEET}
    with zipfile.ZipFile(path, "w") as zf:
        for name, body in parts.items():
            zf.writestr(name, body)
    assert "is not a readable .xlsx workbook" in _refusal(path)


def test_a_password_protected_workbook_is_named(tmp_path):
    header = bytearray(512)
    header[:8] = b"\xd0\xcf\x11\xe0\xa1\xb1\x1a\xe1"
    header[30] = 9  # 512-byte sectors; the directory in sector 0, just after the header
    entry = "EncryptedPackage".encode("utf-16-le")
    path = tmp_path / "locked.xlsx"
    path.write_bytes(bytes(header) + entry + bytes(512 - len(entry)))
    assert "is a password-protected (encrypted) Office file" in _refusal(path)


def test_a_missing_file_is_one_line(tmp_path):
    assert "is not a readable .xlsx workbook" in _refusal(tmp_path / "absent.xlsx")


def test_the_corpus_export():
    path = CORPUS / "spreadsheet_export.xlsx"
    sheet = read_xlsx(path)
    assert sheet.header == ["Record Id", "Cadence Id", "Module", "Full Name", "Email",
                            "Enrolled On"]
    table = sheet.table
    assert table["Record Id"].to_pylist() == [
        "zcrm_1990117000000120345", "1990117000000120346", "", "1.99011700000012E+18",
        " 1990117000000120348 ", "1990117000000120349", "199011700000012"]
    assert table["Cadence Id"].to_pylist()[5] == "#N/A"
    assert table["Full Name"].to_pylist()[0] == "Ana Pérez"
    assert table["Enrolled On"].to_pylist()[:2] == ["2024-05-02T09:15:00", "2024-05-02T09:16:00"]


def test_the_corpus_export_is_what_its_script_makes():
    spec = importlib.util.spec_from_file_location("make_xlsx", CORPUS / "make_xlsx.py")
    script = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(script)
    with zipfile.ZipFile(io.BytesIO(script.build())) as made, \
            zipfile.ZipFile(CORPUS / "spreadsheet_export.xlsx") as committed:
        assert committed.namelist() == made.namelist()
        for name in made.namelist():  # compressed bytes may differ between zlib versions
            assert committed.read(name) == made.read(name), name


def test_a_hidden_first_sheet_is_not_the_list(tmp_path):
    """A hidden lookup sheet first, the list on the visible one: the list's ids are read (the
    lookup's were un-enrolled instead), its error cells too."""
    book = openpyxl.Workbook()
    lookup = book.active
    lookup.title = "lookup"
    lookup.append(["Record Id", "Cadence Id", "Module"])
    lookup.append(["1990117000000120375", "5540230000040000001", "Leads"])
    lookup.sheet_state = "hidden"
    leavers = book.create_sheet("Leavers")
    leavers.append(["Record Id", "Cadence Id", "Module"])
    leavers.append(["1990117000000120345", "5540230000040000001", "Leads"])
    leavers.append(["1990117000000120346", "=NA()", "Leads"])
    leavers["B3"].value = "#N/A"
    leavers["B3"].data_type = "e"
    path = tmp_path / "hidden.xlsx"
    book.save(path)
    sheet = read_xlsx(path)
    assert sheet.table["Record Id"].to_pylist() == ["1990117000000120345", "1990117000000120346"]
    assert sheet.table["Cadence Id"].to_pylist()[1] == "#N/A"


def test_a_chart_sheet_first_is_not_the_list(tmp_path):
    """A chart sheet before the list (where Excel's F11 puts one): it has no cells, so the list
    is the sheet after it, its error and hidden-row marks too (the workbook was refused as
    having an empty first sheet)."""
    book = openpyxl.Workbook()
    leavers = book.active
    leavers.title = "Leavers"
    leavers.append(["Record Id", "Cadence Id", "Module"])
    leavers.append(["1990117000000120345", "5540230000040000001", "Leads"])
    leavers.append(["1990117000000120346", "=NA()", "Leads"])
    leavers["B3"].value = "#N/A"
    leavers["B3"].data_type = "e"
    leavers.append(["1990117000000120347", "5540230000040000001", "Leads"])
    leavers.row_dimensions[4].hidden = True
    book.create_chartsheet("Chart", 0)
    path = tmp_path / "chart.xlsx"
    book.save(path)
    sheet = read_xlsx(path)
    assert sheet.table["Record Id"].to_pylist() == [
        "1990117000000120345", "1990117000000120346", "1990117000000120347"]
    assert sheet.table["Cadence Id"].to_pylist()[1] == "#N/A"
    assert sheet.hidden == (4,)


@pytest.mark.parametrize("numbers", ["Record Id", "Cadence Id"])
def test_an_id_column_of_number_cells_only_is_refused_before_any_call(tmp_path, serve, numbers):
    """DESIGN: "xlsx without a text id column" is exit 2 with one line. Every id of such a
    column was rounded by Excel: it gave exit 1 (every row ROUNDED_ID), which a scheduler
    reads as a job that finished."""
    from batcher.cli import main
    from batcher.sandbox.world import World

    records = [554023000001798600 + i for i in range(4)]
    cadence = 554023000004092008
    rows = [[r if numbers == "Record Id" else str(r),
             cadence if numbers == "Cadence Id" else str(cadence), "Leads"] for r in records]
    path = _workbook(tmp_path / "ids.xlsx", [*rows, [None, None, None]],
                     header=["Record Id", "Cadence Id", "Module"])
    live = serve(World.from_pairs([("Leads", str(r), str(cadence)) for r in records]))
    with pytest.MonkeyPatch.context() as mp:
        for k, v in live.env.items():
            mp.setenv(k, v)
        assert main(["run", str(path), "--results", str(tmp_path / "out.csv")]) == 2
    assert live.sandbox.calls == []
    with pytest.raises(InputError, match=f"column '{numbers}' holds numbers, not text"):
        from batcher.inputs import scan_input

        scan_input(path)


def test_a_number_among_text_ids_is_that_rows_rounded_id(tmp_path):
    from batcher.inputs import read_input

    path = _workbook(tmp_path / "ids.xlsx", [["554023000001798600", "554023000004092008"],
                                             [554023000001798601, "554023000004092008"]])
    got = read_input(path, "Leads").table.to_pylist()
    assert [r["status"] for r in got] == ["valid", "invalid"]
    assert "rounded by a spreadsheet" in got[1]["reason"]


def _filtered(path: Path, n: int = 6) -> Path:
    """A sheet filtered to Keep = yes, as Excel saves it: the "no" rows hidden."""
    import xlsxwriter

    wb = xlsxwriter.Workbook(path)
    ws = wb.add_worksheet()
    ws.write_row(0, 0, ["Record Id", "Cadence Id", "Module", "Keep"])
    for i in range(n):
        keep = "yes" if i % 2 == 0 else "no"
        ws.write_row(i + 1, 0, [str(554023000001798600 + i), "554023000004092008", "Leads", keep])
        if keep == "no":
            ws.set_row(i + 1, None, None, {"hidden": True})
    ws.set_row(n + 3, None, None, {"hidden": True})  # a hidden row with nothing in it
    ws.autofilter(0, 0, n, 3)
    ws.filter_column(3, "Keep == yes")
    wb.close()
    return path


def test_rows_a_filter_hides_are_found_even_across_chunks(tmp_path, monkeypatch):
    path = _filtered(tmp_path / "f.xlsx", 40)
    assert read_xlsx(path).hidden == tuple(range(3, 42, 2))
    monkeypatch.setattr(xlsx, "_CHUNK", 37)
    monkeypatch.setattr(xlsx, "_OVERLAP", 120)
    assert read_xlsx(path).hidden == tuple(range(3, 42, 2))


def test_a_job_says_that_a_filter_hid_rows_it_sends(tmp_path, serve, capsys):
    """The operator filtered the sheet to the rows to take out and saw 3; the file holds 6, and
    all 6 are sent (a filter is a view, not the list): said even with --quiet, and kept."""
    import json

    from batcher.cli import main
    from batcher.sandbox.world import World

    path = _filtered(tmp_path / "f.xlsx")
    live = serve(World.from_pairs([("Leads", str(554023000001798600 + i), "554023000004092008")
                                   for i in range(6)]))
    with pytest.MonkeyPatch.context() as mp:
        for k, v in live.env.items():
            mp.setenv(k, v)
        assert main(["run", str(path), "--results", str(tmp_path / "out.csv"), "--quiet"]) == 0
    err = capsys.readouterr().err
    assert "3 rows of the sheet are hidden (a filter, or hidden by hand: sheet rows 3, 5, 7)" in err
    summary = json.loads((tmp_path / "out.summary.json").read_text())
    assert any("rows of the sheet are hidden" in w for w in summary["extra"]["warnings"])


def test_a_title_on_row_1_names_the_row_of_the_column_names(tmp_path):
    wb = openpyxl.Workbook()
    ws = wb.active
    ws.append(["Leavers, March 2024"])
    ws.merge_cells("A1:C1")
    ws.append([None])
    ws.append(["Record Id", "Cadence Id", "Module"])
    ws.append(["5540230000017986100", "5540230000040000001", "Leads"])
    wb.save(tmp_path / "titled.xlsx")
    with pytest.raises(InputError) as info:
        open_source(tmp_path / "titled.xlsx", InputOptions())
    assert ("row 1 ('Leavers, March 2024', 'column_2', 'column_3') is not the column names; "
            "row 3 looks like them ('Record Id', 'Cadence Id', 'Module'): delete the rows above "
            "it") in str(info.value)


def test_an_id_merged_down_rows_is_each_rows_id_as_the_sheet_shows(tmp_path):
    """Excel keeps a merged cell's value in its top cell only; the rows it spans show it."""
    wb = openpyxl.Workbook()
    ws = wb.active
    ws.append(["Record Id", "Cadence Id", "Note"])
    ws.append(["5540230000017986100", "5540230000040000001", "across"])
    ws.append([None, "5540230000040000002", None])
    ws.append([None, "5540230000040000003", None])
    ws.append(["5540230000017986101", "5540230000040000001", None])
    ws.merge_cells("A2:A4")
    ws.merge_cells("C2:D2")  # across columns: never copied into another column
    wb.save(tmp_path / "merged.xlsx")
    sheet = read_xlsx(tmp_path / "merged.xlsx")
    assert sheet.table["Record Id"].to_pylist() == ["5540230000017986100"] * 3 + [
        "5540230000017986101"]
    assert sheet.header == ["Record Id", "Cadence Id", "Note"]


#: the note Apple Numbers puts at the top of its "Export Summary" sheet (Export To > Excel,
#: "Include a summary worksheet", on by default)
NUMBERS_NOTE = ("This document was exported from Numbers.  Each table was converted to an Excel "
                "worksheet. All other objects on each Numbers sheet were placed on separate "
                "worksheets. Please be aware that formula calculations may differ in Excel.")


def _numbers_export(path: Path) -> Path:
    """An .xlsx as Apple Numbers exports it: a summary sheet first, then a sheet per table."""
    wb = openpyxl.Workbook()
    summary = wb.active
    summary.title = "Export Summary"
    summary["A1"] = NUMBERS_NOTE
    summary.append([])
    summary.append(["Numbers Sheet Name", "Numbers Table Name", "Excel Worksheet Name"])
    summary.append(["Sheet 1", "Table 1", "Sheet 1 - Table 1"])
    table = wb.create_sheet("Sheet 1 - Table 1")
    table.append(["Record Id", "Cadence Id", "Name"])
    table.append(["1990117000000120345", "1990117000000099001", "Ana"])
    table.append(["1990117000000120346", "#N/A", "Bo"])  # an error cell: its marks are read
    table.row_dimensions[3].hidden = True                 # from this sheet, not the summary
    wb.save(path)
    return path


def test_an_apple_numbers_export_summary_is_skipped_for_the_table_after_it(tmp_path):
    sheet = read_xlsx(_numbers_export(tmp_path / "numbers.xlsx"))
    assert sheet.table.to_pylist() == [
        {"Record Id": "1990117000000120345", "Cadence Id": "1990117000000099001", "Name": "Ana"},
        {"Record Id": "1990117000000120346", "Cadence Id": "#N/A", "Name": "Bo"}]
    assert sheet.hidden == (3,)


def test_a_numbers_summary_alone_is_still_the_sheet_read(tmp_path):
    wb = openpyxl.Workbook()
    wb.active["A1"] = NUMBERS_NOTE
    wb.save(tmp_path / "summary.xlsx")
    assert read_xlsx(tmp_path / "summary.xlsx").header == [NUMBERS_NOTE]


def test_plan_reads_a_numbers_export_end_to_end(tmp_path):
    path = _numbers_export(tmp_path / "numbers.xlsx")
    done = subprocess.run([sys.executable, "-m", "batcher", "plan", str(path), "--module",
                           "Leads"], cwd=Path(__file__).parents[1], capture_output=True,
                          text=True, timeout=60)
    assert done.returncode == 1, done.stderr  # the #N/A row is invalid, the other planned
    assert done.stdout.startswith("2 rows: 1 pairs to un-enroll, 1 invalid")
    assert "'#N/A' is a spreadsheet error value, not an id (a lookup" in done.stdout
    assert "Traceback" not in done.stderr


def _table_with_totals(path: Path, merged: bool = False) -> Path:
    """A list made an Excel table (Insert > Table) with its Total Row on: "Total" under the
    ids, a count under the cadences, as Excel saves it (the row is in the table's ``ref``)."""
    from openpyxl.worksheet.table import Table

    wb = openpyxl.Workbook()
    ws = wb.active
    ws.append(["Record Id", "Cadence Id", "Module", "Note"])
    for i in range(3):
        ws.append([str(5540230000017986100 + i), "5540230000040000001", "Leads", "x"])
    ws.append(["Total", None, None, None])
    ws["B5"] = "=SUBTOTAL(103,Leavers[Cadence Id])"
    table = Table(displayName="Leavers", ref="A1:D5", totalsRowCount=1)
    table._initialise_columns()
    table.tableColumns[0].totalsRowLabel = "Total"
    table.tableColumns[1].totalsRowFunction = "count"
    ws.add_table(table)
    if merged:  # one cadence for two records: its cell merged down their rows
        ws["B3"] = None
        ws.merge_cells("B2:B3")
    wb.save(path)
    # Excel saves the count with its value
    _rewrite(path, '<c r="B5"><f>SUBTOTAL(103,Leavers[Cadence Id])</f><v /></c>',
             '<c r="B5"><f>SUBTOTAL(103,Leavers[Cadence Id])</f><v>3</v></c>')
    return path


def test_an_excel_tables_totals_row_is_not_a_data_row(tmp_path):
    """The totals row Excel adds under a table ("Total", a count) was read as a data row:
    'Total' came out invalid and a clean list exited 1. It is a blank row now, and said."""
    sheet = read_xlsx(_table_with_totals(tmp_path / "t.xlsx"))
    assert sheet.totals == (5,)
    assert sheet.table["Record Id"].to_pylist() == [
        "5540230000017986100", "5540230000017986101", "5540230000017986102", ""]
    assert sheet.table["Cadence Id"].to_pylist()[-1] == ""
    done = subprocess.run([sys.executable, "-m", "batcher", "plan", str(tmp_path / "t.xlsx")],
                          cwd=Path(__file__).parents[1], capture_output=True, text=True,
                          timeout=60)
    assert done.returncode == 0, done.stdout + done.stderr
    assert done.stdout.startswith("3 rows: 3 pairs to un-enroll, 0 invalid, 0 duplicates, "
                                  "1 blank rows skipped")
    assert ("warning: sheet row 5 is the totals row of an Excel table (Table Design > Total "
            "Row)") in done.stderr
    assert done.stderr.count("\n") == 1 and "Traceback" not in done.stderr


def test_a_table_without_a_totals_row_keeps_its_last_row(tmp_path):
    from openpyxl.worksheet.table import Table

    wb = openpyxl.Workbook()
    ws = wb.active
    ws.append(["Record Id", "Cadence Id"])
    ws.append(["Total", "5540230000040000001"])  # a data row, whatever its text
    ws.add_table(Table(displayName="Plain", ref="A1:B2"))
    wb.save(tmp_path / "plain.xlsx")
    sheet = read_xlsx(tmp_path / "plain.xlsx")
    assert sheet.totals == () and _column(tmp_path / "plain.xlsx") == ["Total"]


def test_totals_rows_and_merges_are_said_and_kept_with_the_jobs_warnings(tmp_path, serve,
                                                                          capsys):
    """A table's totals row and a cadence merged down two rows: the job does what the sheet
    shows (3 pairs, no 'Total' row) and says both, even with --quiet; the summary keeps them."""
    import json

    from batcher.cli import main
    from batcher.sandbox.world import World

    path = _table_with_totals(tmp_path / "t.xlsx", merged=True)
    assert read_xlsx(path).merged == ("B2:B3",)
    live = serve(World.from_pairs([("Leads", str(554023000001798610 * 10 + i),
                                    "5540230000040000001") for i in range(3)]))
    with pytest.MonkeyPatch.context() as mp:
        for k, v in live.env.items():
            mp.setenv(k, v)
        assert main(["run", str(path), "--results", str(tmp_path / "out.csv"), "--quiet"]) == 0
    err = capsys.readouterr().err
    assert "sheet row 5 is the totals row of an Excel table" in err
    assert ("warning: 1 merged cell spans rows of one column (B2:B3); batcher gives each row "
            "the merged value") in err
    summary = json.loads((tmp_path / "out.summary.json").read_text())
    warnings = summary["extra"]["warnings"]
    assert any("totals row" in w for w in warnings)
    assert any("merged cell" in w for w in warnings)
    assert summary["blank"] == 1


def _without_references(path: Path) -> Path:
    """The sheet as some writers save it: no ``r`` on its rows and cells (it is optional; a
    cell's place is then after the one before it)."""
    with zipfile.ZipFile(path) as zf:
        parts = {i.filename: zf.read(i) for i in zf.infolist()}
    parts[SHEET], n = re.subn(rb'\s(?:r|spans)="[A-Z]*[0-9:]+"', b"", parts[SHEET])
    assert n and b' r="' not in parts[SHEET]
    with zipfile.ZipFile(path, "w", zipfile.ZIP_DEFLATED) as zf:
        for name, body in parts.items():
            zf.writestr(name, body)
    return path


def test_error_cells_and_formulas_without_references_are_invalid_and_named(tmp_path):
    """Error cells and formulas without a saved value were found by their ``r`` only: in a
    sheet without references, a row of them was read as blank (no results row) and a last
    row of them vanished. Each is now its row's invalid id, the error named."""
    from batcher.inputs import read_input

    path = _workbook(tmp_path / "norefs.xlsx", [
        ["5540230000017986100", "5540230000040000001", "ok"],
        ["#N/A", "#REF!", None],                                  # a failed lookup
        ["5540230000017986101", "#VALUE!", "x"],
        ["=Lookup!A3", "5540230000040000001", None],                # no saved value
        ["=Lookup!A4", "=Lookup!B4", None],
    ], header=["Record Id", "Cadence Id", "Note"])
    _without_references(path)
    rows = read_input(path, "Leads").table.to_pylist()
    assert [(r["row"], r["status"]) for r in rows] == [
        (1, "valid"), (2, "invalid"), (3, "invalid"), (4, "invalid"), (5, "invalid")]
    assert rows[1]["reason"].startswith(
        "bad record id: '#N/A' is a spreadsheet error value, not an id (a lookup such as "
        "VLOOKUP or XLOOKUP found nothing); fix the formula, or put the record id itself")
    assert "'#VALUE!' is a spreadsheet error value" in rows[2]["reason"]
    assert "'=Lookup!A3' is a formula, not its value" in rows[3]["reason"]
    assert "'=Lookup!A4' is a formula, not its value" in rows[4]["reason"]


def test_hidden_rows_without_references_are_found(tmp_path):
    path = _without_references(_filtered(tmp_path / "f.xlsx"))
    assert read_xlsx(path).hidden == (3, 5, 7)


@pytest.mark.parametrize("error", ["#N/A", "#REF!", "#VALUE!", "#NAME?", "#DIV/0!"])
def test_an_error_value_in_an_id_column_says_it_is_one(tmp_path, error):
    """From a workbook's error cell or a CSV Excel wrote from one: the reason names the error
    and what made it, not just 'not a Zoho id'."""
    from batcher.inputs import read_input
    from batcher.inputs.ids import EXCEL_ERRORS

    csv = tmp_path / "e.csv"
    csv.write_text(f"Record Id,Cadence Id\n{error},5540230000040000001\n")
    xlsx_path = _workbook(tmp_path / "e.xlsx", [[error, "5540230000040000001"]])
    for path in (csv, xlsx_path):
        row, = read_input(path, "Leads").table.to_pylist()
        assert row["status"] == "invalid"
        assert row["reason"] == (f"bad record id: {error!r} is a spreadsheet error value, not "
                                 f"an id ({EXCEL_ERRORS[error]}); fix the formula, or put the "
                                 "record id itself in the cell, and run these rows again")
    csv.write_text(f"Record Id,Cadence Id,Module\n5540230000017986100,5540230000040000001,"
                   f"{error}\n")
    row, = read_input(csv, None).table.to_pylist()
    assert row["reason"].startswith(f"bad module name: {error!r} is a spreadsheet error value, "
                                    f"not a module ({EXCEL_ERRORS[error]})")


def test_a_whole_column_of_formatted_cells_reads_as_each_cell_alone(tmp_path):
    """The columns are made text a column at a time (numbers placed all at once, a repeated
    value once): each cell reads exactly as it does by itself, under its own format (two in
    one column), beside blanks, text, TRUE, a rounded half (2.675) and numbers past 10**15."""
    import random

    from python_calamine import CalamineWorkbook

    from batcher.inputs.numfmt import shown

    rnd = random.Random(7)
    codes = {"Zip": ["00000"], "Amount": ["0.00", "#,##0.00;(#,##0.00)"],
             "Joined": ["dd/mm/yyyy", "General"], "Plain": ["General"]}
    pick = [lambda: float(rnd.randrange(100, 99999)), lambda: round(rnd.uniform(-1e5, 1e5), 2),
            lambda: rnd.uniform(-10, 10), lambda: 2.675, lambda: 1e16, lambda: -0.001,
            lambda: True, lambda: "n/a", lambda: None, lambda: 0,
            lambda: dt.datetime(2024, 1, 1) + dt.timedelta(hours=rnd.randrange(20000))]
    wb = openpyxl.Workbook()
    ws = wb.active
    ws.append(["Record Id", "Cadence Id", *codes])
    for i in range(400):
        ws.append([str(554023000001798649 + i), "554023000004092008",
                   *(rnd.choice(pick)() for _ in codes)])
        for j, options in enumerate(codes.values()):
            ws.cell(row=i + 2, column=3 + j).number_format = rnd.choice(options)
    path = tmp_path / "formats.xlsx"
    wb.save(path)
    sheet = read_xlsx(path)
    values = CalamineWorkbook.from_path(str(path)).get_sheet_by_index(0).to_python()[1:]
    with zipfile.ZipFile(path) as zf:
        saved = {r.decode(): v.decode() for r, v in re.findall(
            rb'<c r="([A-Z]+[0-9]+)"[^>]*?(?<!/)><v>([^<]*)</v>', zf.read(SHEET))}
    for j, name in enumerate(codes):
        want = []
        for i, row in enumerate(values):
            value, code = row[2 + j], ws.cell(row=i + 2, column=3 + j).number_format
            raw = saved.get(f"{'CDEF'[j]}{i + 2}", "")  # the number as the file has it
            if code == "dd/mm/yyyy" and raw.startswith("-"):
                value = float(raw)  # no date (Excel's #######): its plain number, not calamine's
            look = None if isinstance(value, str | bool) else shown(value, code)
            want.append(cell_text(value) if look is None else look)
        got = (sheet.shown[name] if name in sheet.shown else sheet.table[name]).to_pylist()
        assert got == want, name
    assert "Plain" not in sheet.shown and {"Zip", "Amount", "Joined"} <= set(sheet.shown)
