"""The input reader as an operations user meets it: what each file becomes, row by row.

Contract: DESIGN.md §2 "Input" — every data row comes out once, in order, as a valid pair,
``invalid`` with a reason, or ``duplicate`` of the first row with the same pair; a file that
cannot be used at all is one clear InputError line naming the file and what was found.
"""

from __future__ import annotations

import csv
import io
import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from batcher.errors import InputError, UsageError
from batcher.inputs import InputOptions, InputScan, read_input, scan_input
from batcher.inputs.carry import carried_columns

SAMPLE = Path(__file__).resolve().parent.parent / "sample_data"
BAD = SAMPLE / "bad"

REC = "554023000001798647"
REC2 = "554023000001798648"
REC3 = "554023000001798649"
CAD = "554023000004092008"
CAD2 = "554023000004092009"


def write(tmp_path: Path, text: str, name: str = "in.csv", encoding: str = "utf-8") -> Path:
    path = tmp_path / name
    path.write_bytes(text.encode(encoding))
    return path


def rows_of(path: Path, default_module: str | None = None) -> list[dict]:
    return read_input(path, options=default_module).table.to_pylist()


def only_row(path: Path, default_module: str | None = None) -> dict:
    rows = rows_of(path, default_module)
    assert len(rows) == 1
    return rows[0]


def input_error(path: Path, default_module: InputOptions | str | None = None) -> str:
    with pytest.raises(InputError) as info:
        read_input(path, options=default_module)
    return str(info.value)


def assert_one_clear_line(message: str, path: Path) -> None:
    """What a user sees on the terminal: one printable line that says which file."""
    assert str(path) in message
    assert "\n" not in message and "\r" not in message
    assert message.isprintable(), f"control characters in {message!r}"
    assert "Traceback" not in message
    assert len(message) < 600


# --------------------------------------------------------------------------- the bad corpus

#: what the one-line message must say for each file of sample_data/bad (lower-cased substrings)
BAD_EXPECTED: dict[str, tuple[str, ...]] = {
    "empty.csv": ("empty",),
    "header_only.csv": ("no data rows", "record_id", "cadence_id"),
    "no_usable_columns.csv": ("columns found", "email", "campaign"),
    "only_record_column.csv": ("cadence_id", "columns found", "record_id"),
    "latin1.csv": ("utf-8",),
    "truncated.parquet": ("truncated or damaged",),
    "not_really.parquet": ("not a parquet file",),
    "binary_junk.csv": ("binary data", "csv utf-8"),
}
#: files that are readable but whose rows must all come out invalid, with this reason
BAD_ROWS_EXPECTED: dict[str, tuple[str, str]] = {
    "float_ids.parquet": ("ROUNDED_ID", "rounded by a spreadsheet"),
    "ragged.csv": ("INVALID_INPUT", "ragged row: line 2 has 4 fields, the header has 3"),
}


def test_bad_corpus_expectations_name_existing_files():
    listed = {p.name for p in BAD.iterdir()}
    assert set(BAD_EXPECTED) | set(BAD_ROWS_EXPECTED) <= listed


@pytest.mark.parametrize("path", sorted(BAD.iterdir()), ids=lambda p: p.name)
def test_every_bad_sample_is_refused_clearly(path: Path):
    if path.name in BAD_ROWS_EXPECTED:
        table = read_input(path, options="Leads")
        rows = table.table.to_pylist()
        assert rows, "a readable bad file must still report its rows"
        for row in rows:
            assert row["status"] == "invalid"
            code, phrase = BAD_ROWS_EXPECTED[path.name]
            assert row["code"] == code
            assert phrase in row["reason"]
        assert list(table.valid_pairs()) == []
        return
    with pytest.raises(InputError) as info:
        read_input(path, options="Leads")
    message = str(info.value)
    assert_one_clear_line(message, path)
    assert info.value.exit_code == 2
    for phrase in BAD_EXPECTED.get(path.name, ()):
        assert phrase in message.lower(), f"{phrase!r} missing from {message!r}"


def test_float_ids_never_turn_into_digits():
    """A float column must not yield a 'valid' id that differs from what the user had."""
    rows = rows_of(BAD / "float_ids.parquet")
    assert [r["row"] for r in rows] == [1, 2]
    for r in rows:
        assert r["status"] == "invalid"
        assert "record id" in r["reason"]
        assert not r["record_id"].isdigit()


def test_directory_as_input(tmp_path: Path):
    message = input_error(tmp_path)
    assert_one_clear_line(message, tmp_path)
    assert "directory" in message


def test_missing_file(tmp_path: Path):
    path = tmp_path / "nope.csv"
    message = input_error(path)
    assert_one_clear_line(message, path)
    assert "no such file" in message


def test_a_ragged_row_deep_in_a_large_file_is_invalid_and_the_rest_proceeds(tmp_path: Path):
    good = "".join(f"{int(REC) + i},{CAD},Leads\n" for i in range(60_000))  # past a block
    path = write(tmp_path, "record_id,cadence_id,module\n" + good
                 + f"{REC2},{CAD},Leads,\x1b[2J\n" + f"{int(REC) + 100_000},{CAD},Leads\n")
    rows = rows_of(path)
    assert len(rows) == 60_002 and [r["row"] for r in rows[-2:]] == [60_001, 60_002]
    assert rows[-2]["status"] == "invalid"
    assert rows[-2]["reason"].startswith("ragged row: line 60002 has 4 fields, the header has 3")
    assert REC2 in rows[-2]["reason"]  # whose row it was
    assert {r["status"] for r in rows[:60_000]} == {"valid"} and rows[-1]["status"] == "valid"


def test_input_error_is_a_usage_error():
    assert issubclass(InputError, UsageError)


def test_utf16_file_says_it_is_not_utf8(tmp_path: Path):
    """Excel's 'Unicode text' export: the message must point at the encoding, not a parse error."""
    path = write(tmp_path, f"record_id,cadence_id\r\n{REC},{CAD}\r\n", encoding="utf-16")
    message = input_error(path, "Leads")
    assert_one_clear_line(message, path)
    assert "utf-8" in message.lower()


def test_whitespace_only_file_is_empty(tmp_path: Path):
    path = write(tmp_path, "\ufeff \r\n\r\n")
    assert "empty" in input_error(path)


def test_invalid_default_module_is_refused(tmp_path: Path):
    path = write(tmp_path, f"record_id,cadence_id\n{REC},{CAD}\n")
    message = input_error(path, default_module="Leads/../admin")
    assert "--module" in message and "Leads/../admin" in message


# --------------------------------------------------------------------------- CSV dialects


@pytest.mark.parametrize("delimiter", [",", ";", "\t", "|"],
                         ids=["comma", "semicolon", "tab", "pipe"])
def test_delimiters_are_sniffed(tmp_path: Path, delimiter: str):
    lines = [
        ["record_id", "cadence_id", "module", "owner"],
        [REC, CAD, "Leads", "ann@example.com"],
        [REC2, CAD2, "Contacts", "bob@example.com"],
    ]
    path = write(tmp_path, "\n".join(delimiter.join(line) for line in lines) + "\n")
    table = read_input(path)
    assert list(table.valid_pairs()) == [("Leads", REC, CAD), ("Contacts", REC2, CAD2)]
    assert table.columns_found == ("record_id", "cadence_id", "module", "owner")


def test_utf8_bom_and_crlf(tmp_path: Path):
    path = write(tmp_path, f"\ufeffrecord_id,cadence_id,module\r\n{REC},{CAD},Leads\r\n"
                           f"{REC2},{CAD},Leads\r\n")
    table = read_input(path)
    assert table.columns_found[0] == "record_id"  # no BOM glued to the first header
    assert list(table.valid_pairs()) == [("Leads", REC, CAD), ("Leads", REC2, CAD)]
    assert all("\r" not in v for r in table.table.to_pylist() for v in r.values()
               if isinstance(v, str))


def test_bom_with_semicolons_and_crlf(tmp_path: Path):
    path = write(tmp_path, f"\ufeffRecord Id;Cadence Id\r\n{REC};{CAD}\r\n")
    assert list(read_input(path, "Deals").valid_pairs()) == [("Deals", REC, CAD)]


@pytest.mark.parametrize("delimiter", [",", ";"])
def test_quoted_fields_containing_the_delimiter(tmp_path: Path, delimiter: str):
    buf = io.StringIO()
    writer = csv.writer(buf, delimiter=delimiter, quoting=csv.QUOTE_MINIMAL, lineterminator="\n")
    writer.writerow(["Owner", "record_id", "cadence_id", "Note"])
    writer.writerow([f"Smith{delimiter} John", REC, CAD, f"left{delimiter} see HR"])
    writer.writerow([f"Doe{delimiter} Jane", REC2, CAD2, 'said "bye"'])
    path = write(tmp_path, buf.getvalue())
    table = read_input(path, "Leads")
    assert list(table.valid_pairs()) == [("Leads", REC, CAD), ("Leads", REC2, CAD2)]


def test_quoted_ids_are_read_as_plain_ids(tmp_path: Path):
    path = write(tmp_path, f'"record_id","cadence_id","module"\n"{REC}","{CAD}","Leads"\n')
    assert list(read_input(path).valid_pairs()) == [("Leads", REC, CAD)]


# --------------------------------------------------------------------------- columns


@pytest.mark.parametrize(
    ("record_header", "cadence_header", "module_header"),
    [
        ("record_id", "cadence_id", "module"),
        ("Record Id", "Cadence Id", "Module"),
        ("id", "cadences_id", "MODULE"),
        ("RECORD_ID", "Cadence", "module"),
        ("Record_Id", "CADENCES ID", "Module"),
        (" record id ", " cadence_id ", " module "),
        ("recordid", "cadenceid", "mOdUlE"),
        # headers pasted from a web page or another file: a zero-width space, a word joiner,
        # a non-breaking space, a BOM inside; they read "Module" and were carried instead
        ("Record\u00a0Id", "Cadence\u200b Id", "\u200bModule"),
        ("\u2060Record Id", "Cadence Id\ufeff", "Mod\u200dule"),
    ],
)
def test_header_variants(tmp_path: Path, record_header: str, cadence_header: str,
                         module_header: str):
    path = write(tmp_path, f"{record_header},{cadence_header},{module_header}\n"
                           f"{REC},{CAD},Contacts\n")
    assert list(read_input(path).valid_pairs()) == [("Contacts", REC, CAD)]


def test_columns_may_come_in_any_order_and_extras_are_ignored(tmp_path: Path):
    path = write(tmp_path, "Owner,Module,Email,Cadence,Notes,Record Id,Stage\n"
                           f"ann,Leads,ann@example.com,{CAD},x,{REC},Closed\n"
                           f"bob,Leads,bob@example.com,{CAD2},,{REC2},\n")
    table = read_input(path)
    assert list(table.valid_pairs()) == [("Leads", REC, CAD), ("Leads", REC2, CAD2)]
    assert table.table.column_names == [
        "row", "module", "record_id", "cadence_id", "status", "code", "reason"]
    assert "Owner" in table.columns_found and "Stage" in table.columns_found


def test_two_headers_for_one_role_are_refused_naming_both(tmp_path: Path):
    """`Record Id` and `Id` both present: which one holds the records is the user's call."""
    path = write(tmp_path, f"Id,Record Id,cadence_id\n1,{REC},{CAD}\n")
    message = input_error(path, "Leads")
    assert_one_clear_line(message, path)
    assert "'Id'" in message and "'Record Id'" in message and "--record-column" in message
    chosen = InputOptions(module="Leads", record_column="Record Id")
    assert list(read_input(path, chosen).valid_pairs()) == [("Leads", REC, CAD)]


def test_column_flags_name_a_header_exactly(tmp_path: Path):
    path = write(tmp_path, f"Lead ID,Seq,Kind\n{REC},{CAD},Leads\n")
    chosen = InputOptions(record_column="Lead ID", cadence_column="Seq", module_column="Kind")
    assert list(read_input(path, chosen).valid_pairs()) == [("Leads", REC, CAD)]
    message = input_error(path, InputOptions(record_column="lead id", cadence_column="Seq"))
    assert_one_clear_line(message, path)
    assert "--record-column 'lead id': no such column" in message and "'Lead ID'" in message


def test_unusable_columns_message_lists_what_was_found(tmp_path: Path):
    path = write(tmp_path, f"Contact,Cadence Name\n{REC},Spring\n")
    message = input_error(path)
    assert_one_clear_line(message, path)
    assert "record_id or cadence_id" in message
    assert "'Contact'" in message and "'Cadence Name'" in message


# --------------------------------------------------------------------------- values


def test_values_are_trimmed_and_zcrm_prefix_removed(tmp_path: Path):
    path = write(tmp_path, "record_id,cadence_id,module\n"
                           f"  zcrm_{REC} , {CAD}\t,  leads \n"
                           f"zcrm_{REC2},zcrm_{CAD},Leads\n")
    rows = rows_of(path)
    assert [(r["record_id"], r["cadence_id"], r["module"], r["status"]) for r in rows] == [
        (REC, CAD, "Leads", "valid"),
        (REC2, CAD, "Leads", "valid"),
    ]


def test_a_csv_id_written_as_a_formula_is_told_to_give_the_id_not_to_save_a_sheet(
        tmp_path: Path):
    """Found by trying: a CSV's ``="554…"`` (Excel's way to keep an id as text) was told to
    "save the sheet from Excel or LibreOffice", advice for a workbook a program wrote: a CSV
    has no formula value to save. The reason says to give the id itself, for any format."""
    path = write(tmp_path, f'record_id,cadence_id\n="{REC}",{CAD}\n')
    (row,) = rows_of(path, "Leads")
    assert row["status"] == "invalid"
    assert "is a formula, not its value; give the id itself" in row["reason"]
    assert "save the sheet" not in row["reason"]



@pytest.mark.parametrize("rid", ["9223372036854775807", "1234567890123456789",
                                 "9999999999999999999", "100000000000000"])
def test_long_ids_survive_exactly_as_strings_csv(tmp_path: Path, rid: str):
    path = write(tmp_path, f"record_id,cadence_id\n{rid},{rid}\n{rid},{CAD}\n{rid},{rid}\n")
    table = read_input(path, "Leads")
    assert table.table.schema.field("record_id").type == pa.string()
    assert list(table.valid_pairs()) == [("Leads", rid, rid), ("Leads", rid, CAD)]
    assert table.table.to_pylist()[2]["status"] == "duplicate"


def test_19_digit_ids_from_parquet_int64_are_exact(tmp_path: Path):
    ids = [9223372036854775807, 1234567890123456789, 554023000001798647]
    path = tmp_path / "ids.parquet"
    pq.write_table(pa.table({"record_id": pa.array(ids, pa.int64()),
                             "cadence_id": pa.array([554023000004092008] * 3, pa.int64())}), path)
    table = read_input(path, "Leads")
    assert [p[1] for p in table.valid_pairs()] == [str(i) for i in ids]
    assert {p[2] for p in table.valid_pairs()} == {CAD}


def test_parquet_rows_with_every_field_empty_are_blank_not_invalid(tmp_path: Path):
    """As in a CSV or a sheet: a row of nulls or empty texts is not a data row (no results row,
    counted blank); a row with only a note is one (invalid: no record id). Ids as int64 and
    text, module dictionary-encoded, the note column read only for the rows that need it."""
    path = tmp_path / "blank.parquet"
    pq.write_table(pa.table({
        "record_id": pa.array([int(REC), None, None, None, int(REC2)], pa.int64()),
        "cadence_id": [CAD, None, "", " ", CAD],
        "module": pa.array(["Leads", None, "", None, "Leads"]).dictionary_encode(),
        "note": ["a", None, "", "only a note", None],
    }), path)
    scan = scan_input(path)
    assert (scan.rows, scan.blank) == (3, 2)
    rows = read_input(path).table.to_pylist()
    assert [(r["row"], r["status"]) for r in rows] == [(1, "valid"), (4, "invalid"),
                                                       (5, "valid")]
    assert "missing record id" in rows[1]["reason"]
    from batcher.inputs.carry import carried_columns
    carried = carried_columns(path, InputOptions())
    assert pa.concat_tables(carried.tables())["note"].to_pylist() == ["a", "only a note", None]


def test_parquet_rows_empty_but_for_nan_or_empty_bytes_are_blank(tmp_path: Path):
    """pandas writes a missing number as NaN, and a missing blob can be b'': a row holding
    nothing else is blank too; a row with a real number and no ids is a data row (invalid)."""
    path = tmp_path / "nan.parquet"
    pq.write_table(pa.table({
        "record_id": [REC, None, None, None],
        "cadence_id": [CAD, None, None, ""],
        "score": pa.array([1.0, float("nan"), None, 2.5], pa.float64()),
        "blob": pa.array([b"x", b"", None, b""], pa.binary()),
    }), path)
    scan = scan_input(path, "Leads")
    assert (scan.rows, scan.blank) == (2, 2)
    rows = read_input(path, "Leads").table.to_pylist()
    assert [(r["row"], r["status"]) for r in rows] == [(1, "valid"), (4, "invalid")]


def test_parquet_uint64_ids_above_int64(tmp_path: Path):
    path = tmp_path / "ids.parquet"
    pq.write_table(pa.table({"record_id": pa.array([9999999999999999999], pa.uint64()),
                             "cadence_id": [CAD]}), path)
    assert list(read_input(path, "Leads").valid_pairs()) == [
        ("Leads", "9999999999999999999", CAD)]


def test_parquet_string_and_dictionary_columns(tmp_path: Path):
    path = tmp_path / "dict.parquet"
    pq.write_table(pa.table({
        "Record Id": pa.array([f"zcrm_{REC}", REC2, f" {REC3} "]),
        "Cadence": pa.array([CAD, CAD2, CAD]).dictionary_encode(),
        "Module": pa.array(["leads", "Contacts", "leads"]).dictionary_encode(),
        "Owner": ["a", "b", "c"],
    }), path)
    assert pq.read_schema(path).field("Cadence").type.id == pa.dictionary(
        pa.int32(), pa.string()).id
    assert list(read_input(path).valid_pairs()) == [
        ("Leads", REC, CAD), ("Contacts", REC2, CAD2), ("Leads", REC3, CAD)]


def test_parquet_dictionary_of_integers(tmp_path: Path):
    path = tmp_path / "dictint.parquet"
    pq.write_table(pa.table({
        "record_id": pa.array([int(REC), int(REC2)], pa.int64()),
        "cadence_id": pa.array([int(CAD), int(CAD)], pa.int64()).dictionary_encode(),
    }), path)
    assert list(read_input(path, "Leads").valid_pairs()) == [
        ("Leads", REC, CAD), ("Leads", REC2, CAD)]


def test_parquet_view_columns_read_like_strings(tmp_path: Path):
    """Polars and pyarrow write string_view / binary_view columns: an invalid row among them
    is reported (not an internal error), a whitespace-only row is blank, and the carried
    columns line up with the rows."""
    sv = pa.string_view()
    path = tmp_path / "views.parquet"
    pq.write_table(pa.table({
        "record_id": pa.array([REC, "  ", None, "bad"], sv),
        "cadence_id": pa.array([CAD, " ", None, CAD], sv),
        "module": pa.array(["Leads", "", None, "Leads"], sv),
        "Email": pa.array(["a@x", " ", None, "c"], sv),
        "Blob": pa.array([b"x", b"", None, b"z"], pa.binary_view()),
    }), path, row_group_size=2)
    scan = scan_input(path)
    assert (scan.rows, scan.blank) == (2, 2)
    rows = read_input(path).table.to_pylist()
    assert [(r["row"], r["status"]) for r in rows] == [(1, "valid"), (4, "invalid")]
    assert "'bad'" in rows[1]["reason"]
    carried = carried_columns(path, InputOptions())
    assert pa.concat_tables(carried.tables()).to_pydict() == {"Email": ["a@x", "c"],
                                                               "Blob": ["x", "z"]}


@pytest.mark.parametrize("module", [
    pa.array([None, "Contacts", None]),
    pa.array([None, "Contacts", None]).dictionary_encode(),
    pa.nulls(3),  # an all-empty column, as pandas writes one of None
])
def test_parquet_rows_without_a_module_take_the_module_flag(tmp_path: Path, module):
    """A null module (pandas' None) on a valid row stopped the job with an internal error
    when --module gave the module: each such row takes --module, the others keep theirs."""
    path = tmp_path / "modules.parquet"
    pq.write_table(pa.table({"record_id": [REC, REC2, REC3], "cadence_id": [CAD] * 3,
                             "module": module}), path)
    given = [m or "Leads" for m in module.to_pylist()]
    assert list(read_input(path, "Leads").valid_pairs()) == [
        (given[0], REC, CAD), (given[1], REC2, CAD), (given[2], REC3, CAD)]
    assert scan_input(path, "Leads").pairs == 3


def _unchecked_text(values: list[bytes]) -> pa.Array:
    """A string column holding the bytes as they are, as writers that do not check UTF-8
    (Spark, hand-made files) store them."""
    raw = pa.array(values, pa.binary())
    return pa.Array.from_buffers(pa.string(), len(values), raw.buffers())


def test_parquet_text_that_is_not_utf8_is_that_rows_reason_not_a_crash(tmp_path: Path):
    """A string column with bytes that are not UTF-8 made the job an 'internal error' (exit 3,
    'resume'), every time: the value is named as not UTF-8, in the ids, the module (also
    dictionary-encoded) and the carried columns alike."""
    path = tmp_path / "latin1.parquet"
    pq.write_table(pa.table({
        "record_id": _unchecked_text([REC.encode(), REC2.encode()[:-1] + b"\xe9"]),
        "cadence_id": [CAD, CAD],
        "module": _unchecked_text([b"Leads", b"Lead\xe9"]),
        "Name": _unchecked_text([b"Caf\xe9", b"ok"]),
    }), path)
    rows = read_input(path).table.to_pylist()
    assert [(r["row"], r["status"]) for r in rows] == [(1, "valid"), (2, "invalid")]
    assert "not UTF-8" in rows[1]["reason"] and "\\xe9" in rows[1]["reason"]
    carried = carried_columns(path, InputOptions())
    assert pa.concat_tables(carried.tables())["Name"].to_pylist() == [
        "<not UTF-8: Caf\\xe9>", "ok"]


def test_parquet_of_many_tiny_row_groups_reads_as_one_group(tmp_path: Path):
    """A streaming writer's file of one-row groups is read with its chunks joined (a Python
    step per row group made 1M rows cost 20 s): every row keeps its verdict, reason, row
    number and carried values — a blank row, a bad id, a repeat, a module dictionary that
    differs per group, bytes that are not UTF-8 in one group."""
    n = 60
    recs = [str(554023000001798647 + i) for i in range(n)]
    recs[7], recs[20], recs[44] = "", "12x", recs[32]
    cads = [CAD if i % 3 else CAD2 for i in range(n)]
    cads[7] = None
    mods = ["Leads" if i % 4 else "Contacts" for i in range(n)]
    mods[7] = None
    notes = [f"n{i}".encode() for i in range(n)]
    notes[7], notes[45] = None, b"caf\xe9"
    table = pa.table({"record_id": recs, "cadence_id": cads,
                      "module": pa.array(mods).dictionary_encode(),
                      "note": _unchecked_text([b"" if v is None else v for v in notes])})
    one, tiny = tmp_path / "one.parquet", tmp_path / "tiny.parquet"
    pq.write_table(table, one)
    pq.write_table(table, tiny, row_group_size=1)
    assert pq.ParquetFile(tiny).num_row_groups == n
    got, want = read_input(tiny).table, read_input(one).table
    assert got.to_pylist() == want.to_pylist()
    assert [r["status"] for r in got.to_pylist()].count("invalid") == 1
    assert (scan_input(tiny).blank, scan_input(tiny).duplicates) == (1, 1)
    carried = [pa.concat_tables(carried_columns(p, InputOptions()).tables()).to_pylist()
               for p in (tiny, one)]
    assert carried[0] == carried[1] and len(carried[0]) == n - 1
    assert carried[0][44]["note"].startswith("<not UTF-8")


def test_parquet_row_group_of_blank_rows_is_blank_not_a_damaged_file(tmp_path: Path):
    """A row group whose cadence column is all null reads as a dictionary with no values: the
    blank check indexed into it and the file was refused as 'truncated or damaged' (exit 2)."""
    n = 4096
    path = tmp_path / "tail.parquet"
    pq.write_table(pa.table({
        "record_id": [str(554023000001000000 + i) for i in range(n)] + [None, None],
        "cadence_id": [CAD] * n + [None, None],
        "module": ["Leads"] * n + [None, None]}), path, row_group_size=n)
    assert pq.ParquetFile(path).num_row_groups == 2
    scan = scan_input(path)
    assert (scan.rows, scan.blank, scan.pairs) == (n, 2, n)


def test_parquet_nulls_are_reported_not_dropped(tmp_path: Path):
    path = tmp_path / "nulls.parquet"
    pq.write_table(pa.table({
        "record_id": pa.array([int(REC), None, int(REC2)], pa.int64()),
        "cadence_id": pa.array([CAD, CAD, None]),
        "module": pa.array(["Leads", "Leads", None]),
    }), path)
    rows = rows_of(path)
    assert [r["status"] for r in rows] == ["valid", "invalid", "invalid"]
    assert "missing record id" in rows[1]["reason"]
    assert "missing cadence id" in rows[2]["reason"]


def test_parquet_detected_by_content_and_csv_named_parquet_refused(tmp_path: Path):
    disguised = tmp_path / "export.csv"
    pq.write_table(pa.table({"record_id": [REC], "cadence_id": [CAD]}), disguised)
    assert list(read_input(disguised, "Leads").valid_pairs()) == [("Leads", REC, CAD)]
    fake = write(tmp_path, f"record_id,cadence_id\n{REC},{CAD}\n", name="list.parquet")
    message = input_error(fake, "Leads")
    assert_one_clear_line(message, fake)
    assert "not a parquet file" in message.lower()


def test_parquet_without_usable_columns_names_them(tmp_path: Path):
    path = tmp_path / "cols.parquet"
    pq.write_table(pa.table({"email": ["a@example.com"], "score": [3]}), path)
    message = input_error(path)
    assert_one_clear_line(message, path)
    assert "'email'" in message and "'score'" in message


# --------------------------------------------------------------------------- modules


def test_module_column_and_default_module(tmp_path: Path):
    path = write(tmp_path, "record_id,cadence_id,module\n"
                           f"{REC},{CAD},Contacts\n"
                           f"{REC2},{CAD},\n"
                           f"{REC3},{CAD},   \n")
    assert [(r["module"], r["status"]) for r in rows_of(path, "Leads")] == [
        ("Contacts", "valid"), ("Leads", "valid"), ("Leads", "valid")]
    rows = rows_of(path)
    assert [r["status"] for r in rows] == ["valid", "invalid", "invalid"]
    assert rows[1]["module"] is None
    for r in rows[1:]:
        assert r["reason"].startswith("missing module"), r["reason"]
        assert r["code"] == "INVALID_INPUT"


def test_no_module_column_uses_default_or_marks_every_row(tmp_path: Path):
    path = write(tmp_path, f"record_id,cadence_id\n{REC},{CAD}\n{REC2},{CAD}\n")
    assert {r["module"] for r in rows_of(path, "vendors")} == {"Vendors"}
    rows = rows_of(path)
    assert len(rows) == 2
    assert all(r["status"] == "invalid" and "missing module" in r["reason"] for r in rows)
    assert list(read_input(path).valid_pairs()) == []


@pytest.mark.parametrize(("given_name", "canonical"), [
    ("leads", "Leads"), ("LEADS", "Leads"), (" contacts ", "Contacts"), ("deals", "Deals"),
    ("Vendors", "Vendors"), ("Partners__c", "Partners__c"),
])
def test_module_names_are_canonical(tmp_path: Path, given_name: str, canonical: str):
    path = write(tmp_path, f"record_id,cadence_id,module\n{REC},{CAD},{given_name}\n")
    row = only_row(path)
    assert (row["module"], row["status"]) == (canonical, "valid")


@pytest.mark.parametrize("bad_module", ["Leads/../x", "Leads?x=1", "1Leads", "Le ads", "Léads",
                                        "Leads%2F"])
def test_malformed_module_names_are_invalid(tmp_path: Path, bad_module: str):
    path = write(tmp_path, f"record_id,cadence_id,module\n{REC},{CAD},{bad_module}\n"
                           f"{REC2},{CAD},Leads\n")
    rows = rows_of(path, default_module="Leads")  # a default never rescues a bad name
    assert rows[0]["status"] == "invalid"
    assert "bad module name" in rows[0]["reason"]
    # shown as written, like a bad id: a typo must be findable from the results
    assert rows[0]["module"] == bad_module and repr(bad_module) in rows[0]["reason"]
    assert rows[1]["status"] == "valid"


@pytest.mark.parametrize("far", [False, True], ids=["in the first 64 KiB", "beyond"])
def test_a_stray_nul_byte_is_data_not_a_binary_file(tmp_path: Path, far: bool):
    """Found by trying: one NUL byte in a text field refused the whole CSV as 'UTF-16 or
    binary' — when it was in the file's first 64 KiB; further on, the file was read. Now a few
    NULs are data wherever they are: in an id, that row is invalid (its reason printable); in
    another column, carried as it is."""
    filler = "".join(f"Leads,{554023000002000000 + i},{CAD},x\n" for i in range(5000 * far))
    path = write(tmp_path, "module,record_id,cadence_id,Note\n" + filler
                 + f"Leads,{REC},{CAD},a\x00b\nLeads,{REC2}\x0077,{CAD},c\n")
    rows = rows_of(path)[-2:]
    assert [r["status"] for r in rows] == ["valid", "invalid"]
    assert "\\x00" in rows[1]["reason"] and "\x00" not in rows[1]["reason"]
    carried = carried_columns(path, InputOptions())
    notes = [n for t in carried.tables() for n in t.column("Note").to_pylist()]
    assert notes[-2:] == ["a\x00b", "c"]


# --------------------------------------------------------------------------- invalid ids


@pytest.mark.parametrize(("value", "reason"), [
    ("55402300000179", "not a 15-19 digit"),              # 14 digits
    ("55402300000179864712", "not a 15-19 digit"),        # 20 digits
    ("55402300000179864x", "not a 15-19 digit"),          # typo
    ("abc", "not a 15-19 digit"),
    ("-554023000001798647", "not a 15-19 digit"),
    ("5540 2300 0001 7986", "not a 15-19 digit"),
    ("ZCRM_554023000001798647", "not a 15-19 digit"),
    ("", "missing"),
    ("5.54023E+17", "rounded by a spreadsheet"),
    ("5.54023e17", "rounded by a spreadsheet"),
    ("554023000001798647.0", "rounded by a spreadsheet"),
    # these parse as numbers, so they are caught by length and first digit, not by parsing
    ("0554023000001798647", "starts with 0"),
    ("00000000000000001", "starts with 0"),
    ("0x016345785D8A0000", "not a 15-19 digit"),  # hex of 10**17
    ("12345678901234", "not a 15-19 digit"),
])
@pytest.mark.parametrize("column", ["record", "cadence"])
def test_invalid_ids_are_reported_with_a_reason(tmp_path: Path, value: str, reason: str,
                                                column: str):
    bad = f"{value},{CAD}" if column == "record" else f"{REC},{value}"
    path = write(tmp_path, f"record_id,cadence_id,module\n{REC2},{CAD},Leads\n{bad},Leads\n"
                           f"{REC3},{CAD},Leads\n")
    table = read_input(path)
    rows = table.table.to_pylist()
    assert [r["row"] for r in rows] == [1, 2, 3]
    assert [r["status"] for r in rows] == ["valid", "invalid", "valid"]
    assert rows[1]["code"] == ("ROUNDED_ID" if "spreadsheet" in reason else "INVALID_INPUT")
    assert f"{column} id" in rows[1]["reason"]
    assert reason in rows[1]["reason"]
    if value:
        assert repr(value) in rows[1]["reason"]  # the user sees what was in the cell
    assert rows[0]["reason"] is None and rows[0]["code"] is None
    assert list(table.valid_pairs()) == [("Leads", REC2, CAD), ("Leads", REC3, CAD)]


def test_spreadsheet_reason_mentions_formatting_as_text(tmp_path: Path):
    path = write(tmp_path, f"record_id,cadence_id\n5.54023E+17,{CAD}\n")
    reason = only_row(path, "Leads")["reason"]
    assert "5.54023E+17" in reason and "text" in reason


# --------------------------------------------------------------------------- duplicates, order


def test_duplicates_point_at_the_first_row(tmp_path: Path):
    path = write(tmp_path, "record_id,cadence_id,module\n"
                           f"{REC},{CAD},Leads\n"         # 1
                           f"{REC2},{CAD},Leads\n"        # 2
                           f"{REC},{CAD},Leads\n"         # 3 dup of 1
                           f"zcrm_{REC}, {CAD},leads\n"   # 4 dup of 1 (not of 3)
                           f"{REC},{CAD},Contacts\n"      # 5 other module: not a dup
                           f"{REC},{CAD2},Leads\n"        # 6 other cadence
                           f"{REC2},{CAD},Leads\n"        # 7 dup of 2
                           f"{REC},{CAD},Contacts\n")     # 8 dup of 5
    table = read_input(path)
    rows = table.table.to_pylist()
    assert [(r["row"], r["status"], r["reason"]) for r in rows] == [
        (1, "valid", None),
        (2, "valid", None),
        (3, "duplicate", "same pair as row 1"),
        (4, "duplicate", "same pair as row 1"),
        (5, "valid", None),
        (6, "valid", None),
        (7, "duplicate", "same pair as row 2"),
        (8, "duplicate", "same pair as row 5"),
    ]
    assert all(r["code"] is None for r in rows)
    assert list(table.valid_pairs()) == [
        ("Leads", REC, CAD), ("Leads", REC2, CAD), ("Contacts", REC, CAD), ("Leads", REC, CAD2)]
    assert table.count("valid") == 4 and table.count("duplicate") == 4
    assert table.count("invalid") == 0


def test_repeated_invalid_rows_stay_invalid(tmp_path: Path):
    path = write(tmp_path, f"record_id,cadence_id\nabc,{CAD}\nabc,{CAD}\n{REC},{CAD}\n")
    assert [r["status"] for r in rows_of(path, "Leads")] == ["invalid", "invalid", "valid"]


def test_duplicate_of_a_row_whose_module_came_from_the_default(tmp_path: Path):
    path = write(tmp_path, f"record_id,cadence_id,module\n{REC},{CAD},\n{REC},{CAD},Leads\n")
    rows = rows_of(path, "Leads")
    assert [(r["status"], r["reason"]) for r in rows] == [
        ("valid", None), ("duplicate", "same pair as row 1")]


def test_sample_file_every_row_reported_in_order():
    path = SAMPLE / "offboarding.csv"
    lines = path.read_text(encoding="utf-8").splitlines()[1:]
    table = read_input(path)
    rows = table.table.to_pylist()
    assert len(rows) == len(lines)  # nothing dropped
    assert [r["row"] for r in rows] == list(range(1, len(lines) + 1))
    for line, row in zip(lines, rows, strict=True):
        assert row["record_id"] == line.split(",")[0].removeprefix("zcrm_")
    assert sum(table.count(s) for s in ("valid", "invalid", "duplicate")) == len(rows)
    tail = rows[-5:]
    assert [r["status"] for r in tail] == ["invalid", "invalid", "invalid", "duplicate", "invalid"]
    assert "spreadsheet" in tail[0]["reason"]
    assert "missing module" in tail[1]["reason"]
    assert "bad record id" in tail[2]["reason"]
    assert tail[3]["reason"] == "same pair as row 1"
    assert "missing cadence id" in tail[4]["reason"]


def test_sample_parquet_matches_the_csv_pairs():
    csv_table = read_input(SAMPLE / "offboarding.csv")
    parquet_table = read_input(SAMPLE / "offboarding.parquet")
    assert parquet_table.count("valid") == parquet_table.rows
    assert list(parquet_table.valid_pairs()) == list(csv_table.valid_pairs())


def test_valid_arrays_and_pairs_are_first_seen_valid_rows_in_order(tmp_path: Path):
    path = write(tmp_path, "record_id,cadence_id,module\n"
                           f"{REC3},{CAD},Leads\n"
                           f"bad,{CAD},Leads\n"
                           f"{REC},{CAD2},Contacts\n"
                           f"{REC3},{CAD},Leads\n"
                           f"{REC2},{CAD},Leads\n")
    table = read_input(path)
    module, record, cadence = table.valid_arrays()
    assert module.to_pylist() == ["Leads", "Contacts", "Leads"]
    assert record.to_pylist() == [REC3, REC, REC2]
    assert cadence.to_pylist() == [CAD, CAD2, CAD]
    assert record.type == pa.string() and cadence.type == pa.string()
    pairs = list(table.valid_pairs())
    assert pairs == [("Leads", REC3, CAD), ("Contacts", REC, CAD2), ("Leads", REC2, CAD)]
    assert all(isinstance(v, str) for p in pairs for v in p)
    assert table.valid_row_indices().tolist() == [0, 2, 4]


def test_fingerprint_follows_the_file_content(tmp_path: Path):
    path = write(tmp_path, f"record_id,cadence_id\n{REC},{CAD}\n")
    first = read_input(path, "Leads").fingerprint()
    assert re.fullmatch(r"[0-9a-f]{64}", first)
    assert read_input(path, "Leads").fingerprint() == first
    copy = write(tmp_path, f"record_id,cadence_id\n{REC},{CAD}\n", name="copy.csv")
    assert read_input(copy, "Leads").fingerprint() == first
    path.write_text(f"record_id,cadence_id\n{REC},{CAD2}\n")
    assert read_input(path, "Leads").fingerprint() != first


# --------------------------------------------------------------------------- property test

_GOOD_IDS = [REC, REC2, REC3, CAD, CAD2, "9999999999999999999", "100000000000000",
             "1234567890123456789"]
_BAD_IDS = ["", "123", "55402300000179", "55402300000179864712", "5.54023E+17", "abc",
            "554023000001798647.5", "zcrm_", "12345678901234a"]
_MODULES = ["Leads", "leads", " leads ", "Contacts", "CONTACTS", "Partners__c", "", "  ",
            "Leads/../x", "1bad"]


def _id_values() -> st.SearchStrategy[str]:
    good = st.sampled_from(_GOOD_IDS)
    dressed = st.tuples(st.sampled_from(["", " ", "\t"]), st.sampled_from(["", "zcrm_"]), good,
                        st.sampled_from(["", " "])).map("".join)
    return st.one_of(dressed, st.sampled_from(_BAD_IDS))


_ROW = st.tuples(_id_values(), _id_values(), st.sampled_from(_MODULES))


def _oracle(rows: list[tuple[str, str, str]], default: str | None
            ) -> list[tuple[str, str | None]]:
    """(status, the reason of a duplicate or the code of an invalid row, else None) per row,
    from the contract alone."""
    canonical = {"leads": "Leads", "contacts": "Contacts", "deals": "Deals", "vendors": "Vendors"}

    def clean(v: str) -> str:
        v = v.strip()
        return v[5:] if v.startswith("zcrm_") else v

    def module_of(m: str) -> str | None:
        m = m.strip()
        if not m:
            return default
        if not re.fullmatch(r"[A-Za-z][A-Za-z0-9_]*", m):
            return None
        return canonical.get(m.lower(), m)

    first: dict[tuple[str, str, str], int] = {}
    out: list[tuple[str, str | None]] = []
    for n, (rec, cad, mod) in enumerate(rows, start=1):
        rec, cad, module = clean(rec), clean(cad), module_of(mod)
        ok = all(re.fullmatch(r"[0-9]{15,19}", v) for v in (rec, cad)) and module is not None
        if not ok:
            # a number a spreadsheet wrote as a float lost digits; the record's reason first
            bad = rec if not re.fullmatch(r"[0-9]{15,19}", rec) else cad
            rounded = re.fullmatch(r"[0-9.]+([eE][+-]?[0-9]+)?", bad) and not bad.isdigit()
            out.append(("invalid", "ROUNDED_ID" if rounded else "INVALID_INPUT"))
        elif (module, rec, cad) in first:
            out.append(("duplicate", f"same pair as row {first[(module, rec, cad)]}"))
        else:
            first[(module, rec, cad)] = n
            out.append(("valid", None))
    return out


@settings(max_examples=80, deadline=None,
          suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(rows=st.lists(_ROW, min_size=1, max_size=25),
       delimiter=st.sampled_from([",", ";", "\t", "|"]),
       quoting=st.sampled_from([csv.QUOTE_MINIMAL, csv.QUOTE_ALL]),
       with_module=st.booleans(), with_owner=st.booleans(),
       default=st.sampled_from([None, "Deals"]))
def test_reader_agrees_with_a_simple_oracle(tmp_path: Path, rows, delimiter, quoting,
                                            with_module, with_owner, default):
    if not with_module:
        rows = [(rec, cad, "") for rec, cad, _ in rows]
    header = ["Record Id", "Cadence Id"] + ["Module"] * with_module + ["Owner"] * with_owner
    buf = io.StringIO()
    writer = csv.writer(buf, delimiter=delimiter, quoting=quoting, lineterminator="\r\n")
    writer.writerow(header)
    for rec, cad, mod in rows:
        writer.writerow([rec, cad] + [mod] * with_module + ["ops@example.com"] * with_owner)
    path = write(tmp_path, buf.getvalue(), name="prop.csv")

    # a row whose fields are all empty or whitespace is no data row: no results row, and the
    # rows after it keep their numbers
    blank = [not with_owner and not "".join(r).strip() for r in rows]
    if all(blank):
        input_error(path, default)
        return
    table = read_input(path, options=default)
    got = table.table.to_pylist()
    expected = [e for e, b in zip(_oracle(rows, default), blank, strict=True) if not b]

    assert [r["row"] for r in got] == [n for n, b in enumerate(blank, start=1) if not b]
    assert [r["status"] for r in got] == [s for s, _ in expected]
    for r, (status, said) in zip(got, expected, strict=True):
        if status == "duplicate":
            assert r["reason"] == said
        elif status == "invalid":
            assert r["code"] == said and r["reason"]
        else:
            assert r["reason"] is None and r["code"] is None
    valid = [(r["module"], r["record_id"], r["cadence_id"]) for r in got if r["status"] == "valid"]
    assert list(table.valid_pairs()) == valid
    assert len(set(valid)) == len(valid)


# --------------------------------------------------------------------------- first pass in chunks


def _scan_summary(scan: InputScan) -> tuple:
    """What a user sees of a scan: counts, examples, duplicates and the pairs (as text)."""
    rec = [str(v) for v in scan.record_values[scan.codes.record].tolist()]
    cad = scan.cadence_text.take(pa.array(scan.codes.cadence)).to_pylist()
    mod = [scan.codes.module_names[m] for m in scan.codes.module.tolist()]
    return (scan.rows, scan.invalid, scan.invalid_examples, scan.pair_rows.tolist(),
            scan.dup_rows.tolist(), scan.dup_first.tolist(), list(zip(mod, rec, cad, strict=True)))


def _mixed_rows(n: int, n_cadences: int = 4) -> list[tuple[str, str, str]]:
    """Valid rows with repeats across the file, a few bad ids and modules, two modules."""
    rows = []
    for i in range(n):
        rec = str(554023000001798647 + (i * 7) % (n // 3 + 1))
        cad = str(554023000004092008 + (i * 5) % n_cadences)
        mod = "Contacts" if i % 11 == 0 else "leads"
        if i % 17 == 5:
            rec = "5.54023E+17"
        if i % 23 == 7:
            cad = "zcrm_" + cad
        if i % 29 == 3:
            mod = "1bad"
        rows.append((rec, cad, mod))
    return rows


def _write_both(tmp_path: Path, rows: list[tuple[str, str, str]]) -> tuple[Path, Path]:
    csv_path = tmp_path / "in.csv"
    with open(csv_path, "w", newline="") as fh:
        writer = csv.writer(fh)
        writer.writerow(["record_id", "cadence_id", "module"])
        writer.writerows(rows)
    pq_path = tmp_path / "in.parquet"
    recs, cads, mods = (list(col) for col in zip(*rows, strict=True))
    pq.write_table(pa.table({"record_id": recs, "cadence_id": cads, "module": mods}), pq_path,
                   row_group_size=37)
    return csv_path, pq_path


def test_scanning_in_small_chunks_gives_the_same_verdicts(tmp_path: Path):
    csv_path, pq_path = _write_both(tmp_path, _mixed_rows(400))
    whole = _scan_summary(scan_input(csv_path))
    assert whole[1] > 0 and whole[4], "the input should hold invalid rows and duplicates"
    assert whole[2][0][0] == 4 and whole[2][0][1].startswith("bad module name: '1bad' is not")
    assert any(reason.startswith("bad record id") for _, reason in whole[2])
    # CSV read as a stream of small blocks; Parquet read a few row groups at a time (each
    # with its own cadence dictionary); the whole Parquet file at once
    assert _scan_summary(scan_input(csv_path, chunk_rows=3)) == whole
    assert _scan_summary(scan_input(pq_path, chunk_rows=80)) == whole
    assert _scan_summary(scan_input(pq_path)) == whole


def test_module_first_seen_in_a_later_chunk(tmp_path: Path):
    rows = [(str(554023000001798647 + i), CAD, "Leads") for i in range(50)]
    rows += [(REC, CAD, "Deals"), (REC, CAD, "Leads")]
    _, pq_path = _write_both(tmp_path, rows)
    scan = scan_input(pq_path, chunk_rows=10)
    assert scan.codes.module_names == ["Leads", "Deals"]
    assert scan.dup_rows.tolist() == [51] and scan.dup_first.tolist() == [0]
    assert scan.pairs == 51


@pytest.mark.parametrize("n_cadences", [3, 50, 70, 400])
def test_duplicates_are_found_whatever_the_number_of_cadences(tmp_path: Path, n_cadences: int):
    rows = []
    first: dict[tuple[str, str], int] = {}
    expected_dups = []
    for i in range(1200):
        rec = str(554023000001798647 + (i * 13) % 97)
        cad = str(554023000004092008 + (i * 31) % n_cadences)
        if (rec, cad) in first:
            expected_dups.append((i, first[(rec, cad)]))
        else:
            first[(rec, cad)] = i
        rows.append(f"{rec},{cad}")
    path = write(tmp_path, "record_id,cadence_id\n" + "\n".join(rows) + "\n")
    scan = scan_input(path, "Leads")
    assert list(zip(scan.dup_rows.tolist(), scan.dup_first.tolist(), strict=True)) == \
        expected_dups
    assert scan.pairs == len(first)
    if n_cadences <= 64:  # the planner gets each record's cadence set, exact
        got = scan.record_masks[scan.codes.record]
        assert ((got >> scan.codes.cadence.astype(np.uint64)) & np.uint64(1)).all()
        assert int(np.bitwise_count(scan.record_masks).sum()) == scan.pairs


def test_a_pair_repeated_many_times_is_found(tmp_path: Path):
    rows = [f"{REC},{CAD}"] * 300 + [f"{REC},{CAD2}"]
    path = write(tmp_path, "record_id,cadence_id\n" + "\n".join(rows) + "\n")
    scan = scan_input(path, "Leads")
    assert scan.pairs == 2 and scan.duplicates == 299
    assert set(scan.dup_first.tolist()) == {0}


def test_a_chunk_that_needs_cleaning_does_not_change_the_others(tmp_path: Path):
    """Row groups are checked one by one: clean ones by parsing, the rest by cleaning."""
    recs = [str(554023000001798647 + i) for i in range(100)]
    raw = [r if i < 40 else (f"zcrm_{r}" if i % 2 else f" {r} ") for i, r in enumerate(recs)]
    raw[90] = "0" + recs[90]
    pq.write_table(pa.table({"record_id": raw, "cadence_id": [CAD] * 100}),
                   tmp_path / "in.parquet", row_group_size=37)
    table = read_input(tmp_path / "in.parquet", "Leads")
    assert table.count("invalid") == 1
    assert "starts with 0" in table.table.to_pylist()[90]["reason"]
    assert [r for _, r, _ in table.valid_pairs()] == recs[:90] + recs[91:]


def test_a_large_input_read_in_halves_gives_the_same_verdicts(tmp_path: Path):
    """Past a million rows the reader splits the work in two: nothing may change."""
    rng = np.random.default_rng(7)
    n_rec = 400_000
    order = rng.permutation(3 * n_rec)
    rec = np.repeat(554023000001000000 + rng.choice(10**9, n_rec, replace=False), 3)[order]
    cad = np.tile(554023000004092008 + np.arange(3), n_rec)[order]
    rec[5], cad[5] = rec[4], cad[4]  # a repeat of row 5
    rec_s = pa.array(rec).cast(pa.string())
    bad = 1_000_000
    rec_s = pa.concat_arrays([rec_s[:bad], pa.array(["0" + str(rec[bad])[1:]]), rec_s[bad + 1:]])
    pq.write_table(pa.table({"record_id": rec_s, "cadence_id": pa.array(cad).cast(pa.string())}),
                   tmp_path / "in.parquet", row_group_size=200_000)
    scan = scan_input(tmp_path / "in.parquet", "Leads")
    assert scan.rows == len(rec) and scan.invalid == 1
    assert scan.dup_rows.tolist() == [5] and scan.dup_first.tolist() == [4]
    assert scan.invalid_examples[0][0] == bad + 1
    expected_rows = np.setdiff1d(np.arange(len(rec)), [5, bad])
    assert np.array_equal(scan.pair_rows, expected_rows)
    cadence_values = np.array(scan.cadence_text.cast(pa.uint64()))
    assert np.array_equal(scan.record_values[scan.codes.record], rec[expected_rows])
    assert np.array_equal(cadence_values[scan.codes.cadence], cad[expected_rows])
    assert len(np.unique(scan.record_values)) == len(scan.record_values) == n_rec


@pytest.mark.parametrize("repeat", [False, True])
def test_a_large_input_over_45_cadences_gets_exact_masks(tmp_path: Path, repeat: bool):
    """Past a million rows, per-record cadence masks are summed part by part of the hashed
    records, in two passes past 45 cadences: each record's mask must be exactly its cadences."""
    rng = np.random.default_rng(11)
    n_rec, per = 370_000, 3
    rec = np.repeat(554023000001000000 + rng.choice(10**9, n_rec, replace=False), per)
    cad = 554023000004092008 + np.concatenate(
        [rng.choice(60, per, replace=False) for _ in range(n_rec)])
    order = rng.permutation(len(rec))
    rec, cad = rec[order], cad[order]
    if repeat:
        rec[9], cad[9] = rec[3], cad[3]  # row 9 repeats row 3
    pq.write_table(pa.table({"record_id": pa.array(rec).cast(pa.string()),
                             "cadence_id": pa.array(cad).cast(pa.string())}),
                   tmp_path / "in.parquet", row_group_size=300_000)
    scan = scan_input(tmp_path / "in.parquet", "Leads")
    assert scan.dup_rows.tolist() == ([9] if repeat else [])
    assert scan.dup_first.tolist() == ([3] if repeat else [])
    expected = np.zeros(len(scan.record_values), dtype=np.uint64)
    np.bitwise_or.at(expected, scan.codes.record,
                     np.left_shift(np.uint64(1), scan.codes.cadence.astype(np.uint64)))
    assert scan.record_masks is not None and len(scan.cadence_text) == 60
    assert np.array_equal(scan.record_masks, expected)


def test_planning_an_input_does_not_import_pandas():
    """pandas costs a fifth of a second to import: ``batcher plan`` never needs it."""
    code = ("import sys; from batcher.planreport import plan_input; "
            "[plan_input(p) for p in sys.argv[1:]]; print('pandas' in sys.modules)")
    paths = [str(SAMPLE / "offboarding.csv"), str(SAMPLE / "offboarding.parquet")]
    out = subprocess.run([sys.executable, "-c", code, *paths], capture_output=True, text=True,
                         check=True).stdout
    assert out.strip() == "False"


def test_the_spreadsheet_made_sample_reads_as_a_user_expects():
    """sample_data/spreadsheet_made.csv: Excel's `sep=;` line and BOM, text with `,` `;` and
    apostrophes, a note over two lines, an id cell Excel wrote as a number (decimal comma), a
    ragged row, a `zcrm_` id, a repeated pair and two rows of only semicolons at the end."""
    table = read_input(SAMPLE / "spreadsheet_made.csv")
    got = [(r["row"], r["status"], r["code"]) for r in table.table.to_pylist()]
    assert got == [(1, "valid", None), (2, "valid", None), (3, "valid", None),
                   (4, "invalid", "ROUNDED_ID"), (5, "invalid", "INVALID_INPUT"),
                   (6, "valid", None), (7, "duplicate", None), (8, "valid", None)]
    assert table.scan.blank == 2
    assert "line 6 has 6 fields" in table.table["reason"][4].as_py()
    assert table.table["record_id"][7].as_py() == "1990117000000120349"


def test_valid_pairs_of_a_file_with_blank_rows_mid_file(tmp_path: Path):
    """`batcher sandbox --from` takes a file's valid pairs: blank rows before them must not
    shift which rows those are (an Excel export with a `;;;;` row crashed it)."""
    path = write(tmp_path, f"record_id;cadence_id;module\n;;\n{REC};{CAD};Leads\n;;\n"
                           f"{REC2};{CAD};Leads\n")
    table = read_input(path)
    assert list(table.valid_pairs()) == [("Leads", REC, CAD), ("Leads", REC2, CAD)]
    assert table.scan.blank == 2 and [r["row"] for r in table.table.to_pylist()] == [2, 4]


@pytest.mark.parametrize("kind", ["csv", "xlsx", "parquet"])
def test_two_columns_of_one_name_are_refused_naming_their_positions(tmp_path: Path, kind):
    """Which of two "Record Id" columns holds the ids cannot be known: refused in every kind
    of file (an .xlsx took the first, the second carried as "Record Id (2)", exit 0)."""
    header = ["Record Id", "Owner", "Record Id", "cadence_id"]
    row = [REC, "x", REC2, CAD]
    if kind == "csv":
        path = write(tmp_path, ",".join(header) + "\n" + ",".join(row) + "\n")
    elif kind == "xlsx":
        import openpyxl

        book = openpyxl.Workbook()
        book.active.append(header)
        book.active.append(row)
        book.save(path := tmp_path / "in.xlsx")
    else:
        pq.write_table(pa.Table.from_arrays([pa.array([v]) for v in row], names=header),
                       path := tmp_path / "in.parquet")
    for options in ("Leads", InputOptions(module="Leads", record_column="Record Id")):
        message = input_error(path, options)
        assert_one_clear_line(message, path)
        assert "2 columns are named 'Record Id' (columns 1, 3)" in message


def test_a_ragged_row_that_is_not_utf8_refuses_the_file_without_a_traceback(tmp_path: Path,
                                                                            capfd):
    """pyarrow cannot hand such a row to the ragged-row handler: it printed 'Exception ignored'
    and refused the whole file with its own words; the file is refused in one line."""
    path = tmp_path / "latin1.csv"
    path.write_bytes(f"record_id,cadence_id,module,Name\n{REC},{CAD},Leads,M\xfcller, Hans\n"
                     f"{REC2},{CAD},Leads,Ok\n".encode("latin-1"))
    with pytest.raises(InputError, match=r"is not UTF-8 text \(line 2 holds"):
        rows_of(path)
    assert "Exception ignored" not in capfd.readouterr().err


def test_many_rows_of_few_record_ids_are_hashed_in_parts():
    """Past HALVES_MIN rows ids are hashed in 256 parts; with 40 ids most parts are empty (a
    file whose record and cadence columns are swapped), and codes stay exact."""
    from concurrent.futures import ThreadPoolExecutor

    from batcher.hashing import HALVES_MIN, encode_parts

    rng = np.random.default_rng(0)
    ids = (5_540_230_000_004_092_008 + 7919 * rng.integers(0, 40, HALVES_MIN + 5)).astype(
        np.uint64)
    with ThreadPoolExecutor(1) as pool:
        codes, uniques, _ = encode_parts(ids, pool)
    assert len(uniques) == 40 and np.array_equal(uniques[codes], ids)


@pytest.mark.parametrize("n_cad", [40, 60, 100, 400])
def test_sums_part_by_part_give_the_masks_and_repeats_of_one_plain_count(n_cad):
    """Past HALVES_MIN rows the records' sums and repeats are made part by part of the hashed
    ids (on two threads): the masks and repeats equal those of one pass over the rows."""
    from concurrent.futures import ThreadPoolExecutor

    from batcher.hashing import HALVES_MIN, encode_parts
    from batcher.inputs.codes import masks_and_repeats

    rng = np.random.default_rng(n_cad)
    n = HALVES_MIN + 7
    ids = (5_540_230_000_000_000_000 + 7919 * rng.integers(0, n // 3, n)).astype(np.uint64)
    cc = rng.integers(0, n_cad, n).astype(np.int32)
    with ThreadPoolExecutor(1) as pool:
        rc, uniques, grouping = encode_parts(ids, pool)
        assert grouping is not None
        parted = masks_and_repeats(rc, cc, len(uniques), n_cad, grouping.by_code(cc, pool))
    plain = masks_and_repeats(rc, cc, len(uniques), n_cad)
    assert parted[1] is not None and plain[1] is not None and len(plain[1].at) > 1000
    assert np.array_equal(parted[1].at, plain[1].at)
    assert np.array_equal(parted[1].earlier, plain[1].earlier)
    if n_cad > 64:  # no masks, the repeats alone
        assert parted[0] is None and plain[0] is None
    else:
        assert parted[0] is not None and np.array_equal(parted[0], plain[0])


def test_a_pair_repeated_thousands_of_times_in_a_big_input_keeps_its_record_mask_exact():
    """Part by part too, a record whose sums of powers round (thousands of copies of a pair,
    in both halves of the rows) gets its mask made pair by pair, and every copy is a repeat."""
    from concurrent.futures import ThreadPoolExecutor

    from batcher.hashing import HALVES_MIN, encode_parts
    from batcher.inputs.codes import masks_and_repeats

    rng = np.random.default_rng(7)
    n = HALVES_MIN + 7
    ids = (5_540_230_000_000_000_000 + 7919 * rng.integers(0, n // 3, n)).astype(np.uint64)
    cc = rng.integers(0, 60, n).astype(np.int32)
    copies = np.r_[0:3000, n - 3000:n]  # in both halves
    ids[copies], cc[copies] = ids[0], 44
    ids[5000], cc[5000] = ids[0], 0
    with ThreadPoolExecutor(1) as pool:
        rc, uniques, grouping = encode_parts(ids, pool)
        assert grouping is not None
        masks, dup = masks_and_repeats(rc, cc, len(uniques), 60, grouping.by_code(cc, pool))
    assert masks is not None and dup is not None
    held = np.unique(cc[ids == ids[0]]).tolist()
    assert 0 in held and 44 in held
    assert int(masks[rc[0]]) == sum(1 << c for c in held)
    assert set(copies[1:].tolist()) <= set(dup.at.tolist())
    assert (dup.earlier[np.isin(dup.at, copies[1:])] == 0).all()


@settings(max_examples=60, deadline=None)
@given(st.lists(st.tuples(st.integers(0, 30), st.integers(0, 69)), min_size=1, max_size=300),
       st.sampled_from([3, 64, 70, 400]), st.booleans())
def test_masks_and_repeats_match_a_plain_count(pairs, n_cad, one_pair_a_record):
    """Repeats found by the packed sort are every later copy of a pair, pointing at its first;
    the masks are those of the first copies (a repeat must not carry into another bit). A list
    whose every record holds one pair (out of one cadence, say) takes a path of its own."""
    from batcher.inputs.codes import masks_and_repeats

    # record codes as the reader makes them: dense, every code 0..n_rec-1 held by a row
    _, rc = np.unique([r for r, _ in pairs], return_inverse=True)
    if one_pair_a_record:
        rc = np.random.default_rng(len(pairs)).permutation(len(pairs))
    n_rec = int(rc.max()) + 1
    cc = np.array([c % n_cad for _, c in pairs], dtype=np.int32)
    masks, dup = masks_and_repeats(rc, cc, n_rec, n_cad)
    first: dict[tuple[int, int], int] = {}
    want = {}
    for i, key in enumerate(zip(rc.tolist(), cc.tolist(), strict=True)):
        if key in first:
            want[i] = first[key]
        first.setdefault(key, i)
    got = {} if dup is None else dict(zip(dup.at.tolist(), dup.earlier.tolist(), strict=True))
    assert got == want
    if n_cad <= 64:
        expect = np.zeros(n_rec, dtype=np.uint64)
        for r, c in first:
            expect[r] |= np.uint64(1 << c)
        assert masks is not None and masks.tolist() == expect.tolist()
    else:
        assert masks is None


@settings(max_examples=60, deadline=None)
@given(st.lists(st.tuples(st.integers(0, 40), st.integers(0, 500)), min_size=1, max_size=300),
       st.integers(1, 400))
def test_the_repeats_table_and_the_sort_find_the_same_repeats(pairs, n_cad):
    """The rows of records holding a repeat are looked up in a table of first rows when it is
    small, else sorted: both give every later copy of a pair, pointing at its first, in order."""
    from batcher.inputs.codes import _repeats_by_table, _repeats_sorted

    _, rc = np.unique([r for r, _ in pairs], return_inverse=True)
    cc = np.array([c % n_cad for _, c in pairs], dtype=np.int32)
    n_rec = int(rc.max()) + 1
    sub = np.flatnonzero(np.random.default_rng(len(pairs)).random(len(pairs)) < 0.8)
    if not len(sub):
        return
    table, ordered = (find(sub, rc, cc, n_rec) for find in (_repeats_by_table, _repeats_sorted))
    assert table is not False
    first: dict[tuple[int, int], int] = {}
    want = []
    for i in sub.tolist():
        key = (int(rc[i]), int(cc[i]))
        if key in first:
            want.append((i, first[key]))
        first.setdefault(key, i)
    for found in (table, ordered):
        assert (found is None) == (not want)
        if found is not None:
            assert list(zip(found.at.tolist(), found.earlier.tolist(), strict=True)) == want


def test_a_repeats_table_too_big_for_its_rows_gives_way_to_the_sort():
    """Thousands of cadences over rows of one pair each: the table would be mostly empty."""
    from batcher.inputs.codes import _repeats_among, _repeats_by_table

    rc = np.arange(300_000) % 200_000
    cc = (np.arange(300_000) % 4999).astype(np.int32)
    cc[250_000] = cc[50_000]
    sub = np.arange(len(rc))
    assert _repeats_by_table(sub, rc, cc, 200_000) is False
    dup = _repeats_among(sub, rc, cc, 200_000)
    assert dup is not None and dup.at.tolist() == [250_000]
    assert dup.earlier.tolist() == [50_000]


@pytest.mark.parametrize("distinct", [1, 3000, 2_000_000])
def test_many_values_are_coded_the_same_whether_few_or_many_are_distinct(distinct):
    """Past HALVES_MIN values the masks are hashed on two threads, by halves when few are
    distinct, by parts when many are: every value gets one code, and codes are dense."""
    from concurrent.futures import ThreadPoolExecutor

    from batcher.hashing import HALVES_MIN, encode_many

    rng = np.random.default_rng(distinct)
    values = (rng.integers(0, distinct, 2 * HALVES_MIN) * 0x9E3779B1).astype(np.uint64)
    with ThreadPoolExecutor(1) as pool:
        codes, uniques = encode_many(values, pool)
    assert len(np.unique(uniques)) == len(uniques) == len(np.unique(values))
    assert np.array_equal(uniques[codes], values)


@pytest.mark.parametrize("copies", [511, 512, 5000])
def test_a_pair_repeated_beyond_exact_sums_keeps_its_record_mask_exact(copies):
    """A record's cadences are summed as powers of two; its repeats' powers are taken out
    again. Past 511 pairs a record those float sums round (5000 x 2**44 hides a 2**0): such a
    record's mask is made pair by pair."""
    from batcher.inputs.codes import masks_and_repeats

    rc = np.array([0] * copies + [0, 1, 1, 2], dtype=np.int64)
    cc = np.array([44] * copies + [0, 3, 3, 44], dtype=np.int32)
    masks, dup = masks_and_repeats(rc, cc, 3, 60)
    assert masks is not None
    assert masks.tolist() == [(1 << 44) | 1, 1 << 3, 1 << 44]
    assert dup is not None and dup.at.tolist() == [*range(1, copies), copies + 2]
    assert dup.earlier.tolist() == [0] * (copies - 1) + [copies + 1]


def test_a_pair_repeated_a_million_times_warns_of_nothing_but_the_repeats():
    """Past 2**20 copies of a pair, its record's sum of powers passes 2**64: no numpy warning
    may reach the terminal, and the mask stays exact."""
    import warnings

    from batcher.inputs.codes import masks_and_repeats

    copies = (1 << 20) + 1
    rc = np.concatenate([np.zeros(copies, np.int64), [0, 1]])
    cc = np.concatenate([np.full(copies, 44, np.int32), [0, 44]]).astype(np.int32)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        masks, dup = masks_and_repeats(rc, cc, 2, 50)
    assert masks is not None and masks.tolist() == [(1 << 44) | 1, 1 << 44]
    assert dup is not None and len(dup.at) == copies - 1


def test_a_checked_input_is_opened_once_and_again_only_if_it_changed(tmp_path: Path):
    """`run` checks the input before its journal, then scans it: an .xlsx sheet is read whole
    when opened, so each open cost a read of the workbook (three per job)."""
    import os
    import time

    from batcher.inputs import check_input

    path = tmp_path / "in.csv"
    path.write_text(f"record_id,cadence_id,module\n{REC},{CAD},Leads\n")
    src = check_input(path)
    assert scan_input(path, source=src).source is src
    time.sleep(0.01)
    path.write_text(f"record_id,cadence_id,module,owner\n{REC},{CAD},Leads,x\n{REC2},{CAD},Leads,y\n")
    os.utime(path)
    again = scan_input(path, source=src)
    assert again.source is not src and again.source.found[-1] == "owner" and again.pairs == 2


def test_a_custom_module_spelled_in_other_cases_is_one_module(tmp_path: Path):
    # Zoho matches a module's API name ignoring case: the same pair under partners__c and
    # Partners__c is one pair (sent once, the later row a duplicate), and their records share calls
    rows = [(REC, CAD, "partners__c"), (REC2, CAD, "Leads")] * 3
    rows += [(REC, CAD, "Partners__c"), (REC2, CAD, "PARTNERS__C"), (REC, CAD2, "Partners__C")]
    _, pq_path = _write_both(tmp_path, rows)
    for scan in (scan_input(pq_path), scan_input(pq_path, chunk_rows=2)):
        assert scan.codes.module_names == ["partners__c", "Leads"]
        assert _scan_summary(scan)[-1] == [
            ("partners__c", REC, CAD), ("Leads", REC2, CAD), ("partners__c", REC2, CAD),
            ("partners__c", REC, CAD2)]
        assert scan.dup_rows.tolist() == [2, 3, 4, 5, 6] and scan.dup_first.tolist()[2] == 0
    table = read_input(pq_path)
    assert [r["status"] for r in table.table.to_pylist()] == ["valid", "valid"] + [
        "duplicate"] * 5 + ["valid", "valid"]


@pytest.mark.parametrize("sep", [",", ".", " ", "\u00a0", "'"])
def test_ids_written_with_digit_groups_are_numbers_a_spreadsheet_rounded(tmp_path: Path,
                                                                         sep: str):
    """Excel's "Number, use 1000 separator" saves 554,023,000,001,798,000: a number it kept to
    15 digits, never the id's own digits."""
    grouped = sep.join(["554", "023", "000", "001", "798", "000"])
    path = write(tmp_path, f"record_id;cadence_id;module\n{REC2};{CAD};Leads\n"
                           f"{grouped};{CAD};Leads\n")
    rows = read_input(path).table.to_pylist()
    assert [r["status"] for r in rows] == ["valid", "invalid"]
    assert rows[1]["code"] == "ROUNDED_ID"
    assert f"{grouped!r} is a number a spreadsheet wrote with digit groups" in rows[1]["reason"]
