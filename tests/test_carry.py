"""The input's own columns, read again for the results: one row per results row, in order."""

from __future__ import annotations

from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq

from batcher.inputs import InputOptions, RecordList, read_input
from batcher.inputs.carry import carried_columns

ROOT = Path(__file__).resolve().parent.parent


def carried(path: Path, options: InputOptions | None = None, records=None) -> list[dict]:
    found = carried_columns(path, options or InputOptions(), records)
    assert found is not None
    return pa.concat_tables(list(found.tables())).to_pylist()


def test_a_spreadsheet_csv_carries_its_columns_row_for_row():
    path = ROOT / "sample_data" / "spreadsheet_made.csv"
    rows = read_input(path).table.to_pylist()
    got = carried(path)
    assert len(got) == len(rows)  # blank rows left out on both sides
    assert got[0] == {"Name": "Ana Müller", "Notes": "Said: see you; 'maybe'; bye"}
    assert got[2]["Notes"] == "Two lines:\nfollow-up cancelled"
    # the ragged row (one field too many) carries its own fields, so it can be told whose it
    # was; the field past the header's count has no column
    assert got[4] == {"Name": "Gus", "Notes": "extra"}


def test_an_xlsx_carries_its_columns_and_skips_its_blank_row():
    path = ROOT / "tests" / "corpus" / "spreadsheet_export.xlsx"
    rows = read_input(path).table.to_pylist()
    got = carried(path)
    assert len(got) == len(rows)
    assert got[0]["Email"] == "ana@example.com"


def test_a_record_list_repeats_its_columns_per_cadence(tmp_path: Path):
    path = tmp_path / "list.csv"
    path.write_text("record_id,module,Email\n1990117000000120345,Leads,a@x.example\n"
                    ",,\n1990117000000120346,Leads,b@x.example\n")
    cads = ("5540230000040000001", "5540230000040000002")
    options = InputOptions(cadences=cads)
    rows = read_input(path, options).table.to_pylist()
    got = carried(path, options, RecordList.given(cads))
    assert [g["Email"] for g in got] == ["a@x.example"] * 2 + ["b@x.example"] * 2
    assert len(got) == len(rows)


def test_parquet_columns_of_any_type_become_text_and_none_means_none(tmp_path: Path):
    path = tmp_path / "in.parquet"
    pq.write_table(pa.table({"record_id": ["1990117000000120345"],
                             "cadence_id": ["5540230000040000001"], "module": ["Leads"],
                             "score": [7], "tags": [["a", "b"]]}), path)
    assert carried(path) == [{"score": "7", "tags": "['a', 'b']"}]
    bare = tmp_path / "bare.csv"
    bare.write_text("record_id,cadence_id,module\n1990117000000120345,5540230000040000001,Leads\n")
    assert carried_columns(bare, InputOptions()) is None


def test_a_parquet_float_column_of_whole_numbers_is_carried_as_its_digits(tmp_path: Path):
    # pandas stores whole numbers with one missing as float64: a phone of 12 digits must read
    # 491511234567, never 4.91511234567e+11; a fraction or a number past 2**53 keeps its text
    path = tmp_path / "in.parquet"
    pq.write_table(pa.table({"record_id": ["1990117000000120345"] * 4,
                             "cadence_id": ["5540230000040000001"] * 4, "module": ["Leads"] * 4,
                             "phone": [491511234567.0, None, 1.5, 1e20],
                             "zip": pa.array([2134.0, -3.0, None, 0.0], pa.float32())}), path)
    assert carried(path) == [{"phone": "491511234567", "zip": "2134"},
                             {"phone": None, "zip": "-3"},
                             {"phone": "1.5", "zip": None},
                             {"phone": "1e+20", "zip": "0"}]


def _sheet(path: Path, email: str) -> Path:
    import openpyxl

    book = openpyxl.Workbook()
    book.active.append(["Module", "Record Id", "Cadence Id", "Email", "Zip"])
    book.active.append(["Leads", "554023000001798649", "554023000004092008", email, 2134])
    book.active["E2"].number_format = "00000"
    book.save(path)
    return path


def test_a_sheet_held_in_memory_gives_its_columns_without_being_read_again(tmp_path: Path,
                                                                          monkeypatch):
    """An .xlsx is read whole when opened: its columns come from that read (seconds saved on
    a large sheet), as the sheet shows them, while the file is as it was."""
    from batcher.inputs import xlsx
    from batcher.inputs.formats import open_source

    path = _sheet(tmp_path / "in.xlsx", "ana@example.com")
    source = open_source(path, InputOptions())

    def read_again(path):
        raise AssertionError("the sheet was read again")

    monkeypatch.setattr(xlsx, "read_xlsx", read_again)
    found = carried_columns(path, InputOptions(), source=source)
    assert found is not None
    assert pa.concat_tables(list(found.tables())).to_pylist() == [
        {"Email": "ana@example.com", "Zip": "02134"}]


def test_a_sheet_changed_since_it_was_opened_is_read_again_for_its_columns(tmp_path: Path):
    """Never the rows of a sheet as it was: once the file changed, it is read again."""
    from batcher.inputs.formats import open_source

    path = _sheet(tmp_path / "in.xlsx", "ana@example.com")
    source = open_source(path, InputOptions())
    _sheet(tmp_path / "new.xlsx", "bo@example.com").replace(path)
    found = carried_columns(path, InputOptions(), source=source)
    assert found is not None
    assert pa.concat_tables(list(found.tables())).to_pylist() == [
        {"Email": "bo@example.com", "Zip": "02134"}]


def test_a_csv_held_in_memory_with_its_id_columns_only_is_read_again_for_the_others():
    """A CSV the exact reader took holds only its id columns: the others are read again."""
    from batcher.inputs.csvfile import _exact_source
    from batcher.inputs.formats import open_source

    path = ROOT / "sample_data" / "spreadsheet_made.csv"
    source = _exact_source(open_source(path, InputOptions()))
    assert source.kind == "table" and "Name" not in source.table.column_names
    found = carried_columns(path, InputOptions(), source=source)
    assert found is not None
    assert pa.concat_tables(list(found.tables())).to_pylist() == carried(path)
