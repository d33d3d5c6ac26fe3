"""File kinds by magic bytes, refusals in one line, and Parquet role columns of any type."""

from __future__ import annotations

import bz2
import gzip
import io
import lzma
import struct
import subprocess
import sys
import zipfile
from decimal import Decimal
from pathlib import Path

import openpyxl
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from batcher.errors import InputError
from batcher.inputs.kinds import HEAD_BYTES, parquet_problem, parquet_text, sniff_kind

CSV = b"record_id,cadence_id\n1990117000000120345,1990117000000099001\n"


def _sniff(tmp_path: Path, name: str, data: bytes) -> str:
    path = tmp_path / name
    path.write_bytes(data)
    return sniff_kind(path, data[:HEAD_BYTES])


def _refusal(tmp_path: Path, name: str, data: bytes) -> str:
    with pytest.raises(InputError) as info:
        _sniff(tmp_path, name, data)
    message = str(info.value)
    assert message.startswith(f"{tmp_path / name}: is ")
    assert "\n" not in message and "Traceback" not in message
    return message


def _zip(members: dict[str, bytes]) -> bytes:
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w") as zf:
        for name, body in members.items():
            zf.writestr(name, body)
    return buf.getvalue()


def _xlsx_bytes() -> bytes:
    wb = openpyxl.Workbook()
    wb.active.append(["record_id"])
    buf = io.BytesIO()
    wb.save(buf)
    return buf.getvalue()


def _parquet_bytes() -> bytes:
    buf = io.BytesIO()
    pq.write_table(pa.table({"record_id": ["1990117000000120345"]}), buf)
    return buf.getvalue()


def _ole2(stream_name: str) -> bytes:
    """A compound file header (512-byte sectors, directory in sector 0) and one directory
    entry: enough for the sniffer, which reads no further."""
    header = bytearray(512)
    header[:8] = b"\xd0\xcf\x11\xe0\xa1\xb1\x1a\xe1"
    struct.pack_into("<H", header, 30, 9)
    struct.pack_into("<I", header, 48, 0)
    entry = bytearray(128)
    name = stream_name.encode("utf-16-le")
    entry[:len(name)] = name
    return bytes(header) + bytes(entry) + bytes(384)


@pytest.mark.parametrize(("name", "data", "kind"), [
    ("list.csv", CSV, "csv"),
    ("list.csv", b"\xef\xbb\xbf" + CSV, "csv"),
    ("list.txt", "record_id;Name\n1990117000000120345;José\n".encode(), "csv"),
    ("list.csv.gz", gzip.compress(CSV), "csv.gz"),
    ("list", gzip.compress(CSV), "csv.gz"),
    ("list.parquet", b"not really parquet\n", "parquet"),  # its reader reports the damage
    ("list.PQ", b"\x00\x01garbage", "parquet"),
    # a header that starts as a SYLK or DIF file does, in a CSV: still CSV
    ("list.csv", b"ID;Phone\r\n1990117000000120345;555\r\n", "csv"),
    ("list.csv", b"TABLE,id\n0,1\n", "csv"),
])
def test_kinds_of_plain_files(tmp_path, name, data, kind):
    assert _sniff(tmp_path, name, data) == kind


def test_parquet_and_workbooks_by_magic_whatever_their_names(tmp_path):
    assert _sniff(tmp_path, "export.csv", _parquet_bytes()) == "parquet"
    assert _sniff(tmp_path, "list.xlsx", _xlsx_bytes()) == "xlsx"
    assert _sniff(tmp_path, "macros.xlsm", _xlsx_bytes()) == "xlsx"
    assert _sniff(tmp_path, "download", _xlsx_bytes()) == "xlsx"


def test_a_damaged_workbook_is_left_to_the_xlsx_reader(tmp_path):
    cut = _xlsx_bytes()[:3000]  # the zip's directory, at its end, is gone
    assert _sniff(tmp_path, "list.xlsx", cut) == "xlsx"
    assert _sniff(tmp_path, "list.bin", cut) == "xlsx"  # an xl/ part in the head says so


#: a dBASE III table of one 19-character field and one record, as LibreOffice saves one
DBF = (struct.pack("<BBBBIHH20x", 3, 124, 5, 17, 1, 65, 20)
       + struct.pack("<11sc4xBB14x", b"RECORD_ID", b"C", 19, 0) + b"\r"
       + b" 5540230000017986100\x1a")

ODS_MIMETYPE = b"application/vnd.oasis.opendocument.spreadsheet"


@pytest.mark.parametrize(("name", "data", "found", "todo"), [
    ("list.ods", _zip({"mimetype": ODS_MIMETYPE, "content.xml": b"<x/>"}),
     "an OpenDocument spreadsheet (.ods)", "save it as .xlsx or CSV UTF-8"),
    ("notes.odt", _zip({"mimetype": b"application/vnd.oasis.opendocument.text"}),
     "an OpenDocument text document", "export the list as CSV UTF-8 or .xlsx"),
    ("list.docx", _zip({"[Content_Types].xml": b"", "word/document.xml": b""}),
     "a Word document (.docx)", "export the list"),
    ("deck.pptx", _zip({"ppt/presentation.xml": b""}), "a PowerPoint presentation (.pptx)",
     "export the list"),
    ("list.xlsb", _zip({"xl/workbook.bin": b""}), "an Excel binary workbook (.xlsb)",
     "save it as .xlsx or CSV UTF-8"),
    ("list.numbers", _zip({"Index/Document.iwa": b""}), "an Apple Numbers document",
     "export it as .xlsx or CSV UTF-8"),
    ("lists.zip", _zip({"a.csv": CSV, "b.csv": CSV}), "a zip archive holding a.csv, b.csv",
     "unzip it and pass the CSV"),
    ("many.zip", _zip({f"dir/{c}.csv": CSV for c in "abcde"}),
     "a zip archive holding dir/a.csv, dir/b.csv, dir/c.csv… (5 files)", "unzip it"),
    ("none.zip", _zip({}), "an empty zip archive", "pass the CSV"),
    ("cut.zip", _zip({"a.csv": CSV * 50})[:60], "a damaged zip archive", "make the archive"),
    ("old.xls", _ole2("Workbook"), "a legacy Excel .xls (or other Office 97-2003) file",
     "save it as .xlsx or CSV UTF-8"),
    ("locked.xlsx", _ole2("EncryptedPackage"), "a password-protected (encrypted) Office file",
     "remove the password"),
    ("list.csv.gz", gzip.compress(_parquet_bytes()), "gzip of a Parquet file, not of CSV text",
     "gunzip"),
    ("list.csv.gz", gzip.compress(_zip({"a.csv": CSV})), "gzip of a zip archive", "gunzip"),
    ("list.csv.gz", gzip.compress(bytes(range(256)) * 4), "gzip of UTF-16 text or binary data",
     "gunzip"),
    ("list.csv.gz", gzip.compress(CSV.decode().encode("utf-16")), "gzip of UTF-16 text",
     "gunzip"),
    ("list.csv.gz", b"\x1f\x8b\x09" + gzip.compress(CSV)[3:], "a damaged gzip file",
     "compress the CSV again"),
    ("list.csv.gz", gzip.compress(b""), "a gzip file holding nothing", "compress"),
    ("list.csv.bz2", bz2.compress(CSV), "a bzip2-compressed file", "decompress it"),
    ("list.csv.xz", lzma.compress(CSV), "an xz-compressed file", "decompress it"),
    ("list.csv.zst", b"\x28\xb5\x2f\xfd" + bytes(20), "a zstd-compressed file", "decompress"),
    ("list.7z", b"7z\xbc\xaf\x27\x1c" + bytes(26), "a 7-Zip archive", "extract it"),
    ("list.rar", b"Rar!\x1a\x07\x01\x00" + bytes(20), "a RAR archive", "extract it"),
    ("list.pdf", b"%PDF-1.7\n%\xe2\xe3\xcf\xd3\n", "a PDF document", "export the list"),
    ("list.feather", b"ARROW1\x00\x00" + bytes(16), "an Arrow IPC (Feather) file", "Parquet"),
    ("list.db", b"SQLite format 3\x00" + bytes(84), "an SQLite database", "export the table"),
    ("list.csv", CSV.decode().encode("utf-16"), "UTF-16 text", "save it as CSV UTF-8"),
    ("list.csv", CSV.decode().encode("utf-16-be"), "UTF-16 text or binary data (it has NUL",
     "save it as CSV UTF-8"),
    ("list.csv", CSV.decode().encode("utf-32"), "UTF-32 text", "save it as CSV UTF-8"),
    ("list.csv", b"id\n1\x00\x00\x002\n", "UTF-16 text or binary data", "CSV UTF-8"),
    ("report.xls", b"\r\n<!DOCTYPE html><html><table><tr><td>id</td></tr></table>",
     "an HTML or XML document", "open it in Excel and save it as .xlsx or CSV UTF-8"),
    ("report.xls", b'<?xml version="1.0"?><Workbook/>', "an HTML or XML document", "Excel"),
    # Excel's "SYLK (Symbolic Link)" and "DIF (Data Interchange Format)" save-as formats
    ("list.slk", b'ID;PWXL;N;E\r\nP;PGeneral\r\nC;Y1;X1;K"record_id"\r\nE\r\n',
     "a SYLK spreadsheet (.slk)", "save it as .xlsx or CSV UTF-8"),
    ("list.dif", b'TABLE\r\n0,1\r\n"EXCEL"\r\nVECTORS\r\n0,2\r\n""\r\n',
     "a DIF spreadsheet (.dif)", "save it as .xlsx or CSV UTF-8"),
    # Excel's "Single File Web Page" and "XML Spreadsheet 2003"; LibreOffice's flat .fods
    # and dBASE; an XPS print: each named, not read as a CSV of one odd column
    ("list.mht", b'MIME-Version: 1.0\r\nX-Document-Type: Workbook\r\nContent-Type: '
     b'multipart/related; boundary="----=_NextPart"\r\n\r\n', "a single-file web page (.mht",
     "open it in Excel and save it as .xlsx or CSV UTF-8"),
    ("list.mhtml", b"From: <Saved by Blink>\r\nSubject: list\r\nMIME-Version: 1.0\r\n",
     "a single-file web page", "save it as .xlsx"),
    ("list.xml", b'<?xml version="1.0"?>\r\n<?mso-application progid="Excel.Sheet"?>\r\n'
     b'<Workbook xmlns="urn:schemas-microsoft-com:office:spreadsheet">',
     "an Excel XML Spreadsheet 2003 (.xml)", "open it in Excel and save it as .xlsx"),
    ("list.fods", b'<?xml version="1.0" encoding="UTF-8"?>\n<office:document office:mimetype='
     b'"application/vnd.oasis.opendocument.spreadsheet">', "an OpenDocument flat XML "
     "spreadsheet (.fods)", "save it as .xlsx or CSV UTF-8"),
    ("list.dbf", DBF, "a dBASE table (.dbf)", "save it as .xlsx or CSV UTF-8"),
    ("list.xps", _zip({"FixedDocumentSequence.fdseq": b"", "Documents/1/FixedDocument.fdoc":
                       b""}), "an XPS document", "export the list"),
])
def test_refusals_name_the_file_the_format_and_what_to_do(tmp_path, name, data, found, todo):
    message = _refusal(tmp_path, name, data)
    assert found in message
    assert todo in message


def test_zip_member_names_are_kept_to_one_printable_line(tmp_path):
    message = _refusal(tmp_path, "odd.zip", _zip({"a\nb.csv": CSV}))
    assert "a\\nb.csv" in message


def test_the_encryption_marker_is_found_past_the_head(tmp_path):
    data = bytearray(_ole2("Workbook")) + bytearray(2 * HEAD_BYTES)
    struct.pack_into("<I", data, 48, 200)  # the directory at sector 200, beyond the head
    entry = "EncryptedPackage".encode("utf-16-le")
    at = 201 * 512
    data[at:at + len(entry)] = entry
    assert "password-protected" in _refusal(tmp_path, "locked.xlsx", bytes(data))


ROLES = {"record_id": "record_id", "cadence_id": "cadence_id"}


@pytest.mark.parametrize("kind", [
    pa.struct([("a", pa.int64())]),
    pa.map_(pa.string(), pa.int64()),
    pa.list_(pa.string()),
    pa.large_list(pa.int64()),
    pa.list_(pa.int64(), 2),
    pa.dense_union([pa.field("a", pa.int64())]),
    pa.dictionary(pa.int32(), pa.list_(pa.string())),
])
def test_a_nested_role_column_is_named_with_its_type(kind):
    schema = pa.schema([("record_id", kind), ("cadence_id", pa.string())])
    message = parquet_problem(schema, ROLES)
    assert message == (f"column 'record_id' is {kind} (a nested type); "
                       "ids must be text or integer columns")


def test_usable_role_columns_and_other_columns_of_any_type_pass():
    schema = pa.schema([("record_id", pa.int64()), ("cadence_id", pa.null()),
                        ("module", pa.dictionary(pa.int8(), pa.string())),
                        ("tags", pa.list_(pa.string())), ("raw", pa.binary()),
                        ("at", pa.timestamp("ms"))])
    assert parquet_problem(schema, {**ROLES, "module": "module"}) is None
    assert parquet_problem(schema, {"record_id": "absent"}) is None  # the column check's job


def test_a_nested_module_column_says_modules_are_text():
    schema = pa.schema([("mod", pa.struct([("x", pa.string())]))])
    assert parquet_problem(schema, {"module": "mod"}) == (
        "column 'mod' is struct<x: string> (a nested type); module names must be text columns")


def test_binary_with_bad_utf8_becomes_a_marker_and_the_rest_text():
    col = pa.array([b"1990117000000120345", b"12\xff\xfe3\\", None, "é".encode()], pa.binary())
    assert parquet_text(col).to_pylist() == [
        "1990117000000120345", "<not UTF-8: 12\\xff\\xfe3\\x5c>", None, "é"]
    large = parquet_text(col.cast(pa.large_binary()))
    assert large.to_pylist()[1] == "<not UTF-8: 12\\xff\\xfe3\\x5c>"


def test_a_long_bad_value_is_shortened():
    text = parquet_text(pa.array([b"\xff" * 100])).to_pylist()[0]
    assert text == "<not UTF-8: " + "\\xff" * 32 + "…>"


def test_chunks_stay_chunks_and_only_bad_ones_are_marked():
    col = pa.chunked_array([pa.array([b"1990117000000120345"]), pa.array([b"\x80", b"ok"])])
    out = parquet_text(col)
    assert isinstance(out, pa.ChunkedArray) and out.num_chunks == 2
    assert out.to_pylist() == ["1990117000000120345", "<not UTF-8: \\x80>", "ok"]


def test_dictionary_columns_are_decoded_first():
    col = pa.chunked_array([pa.array([b"Leads", b"\xc3", b"Leads"]).dictionary_encode()])
    assert parquet_text(col).to_pylist() == ["Leads", "<not UTF-8: \\xc3>", "Leads"]
    names = pa.array(["Leads", None, "Deals"]).dictionary_encode()
    assert parquet_text(names).to_pylist() == ["Leads", None, "Deals"]


def test_scalars_are_cast_and_strings_kept_as_they_are():
    text = pa.chunked_array([pa.array(["1990117000000120345"], pa.large_string())])
    assert parquet_text(text) is text
    assert parquet_text(pa.array([1990117000000120345, None], pa.uint64())).to_pylist() == [
        "1990117000000120345", None]
    assert parquet_text(pa.array([Decimal("1990117000000120345")], pa.decimal128(19, 0))
                        ).to_pylist() == ["1990117000000120345"]
    assert parquet_text(pa.array([1.990117000000120345e18])).to_pylist() == [
        "1.9901170000001203e+18"]
    assert parquet_text(pa.nulls(2)).to_pylist() == [None, None]
    assert parquet_text(pa.array([b"ab"], pa.binary(2))).to_pylist() == ["ab"]


def test_types_arrow_cannot_cast_still_become_text():
    interval = pa.array([pa.MonthDayNano([1, 2, 3])], pa.month_day_nano_interval())
    assert parquet_text(interval).to_pylist() == ["MonthDayNano(months=1, days=2, nanoseconds=3)"]
    nested = pa.array([{"a": 1}], pa.struct([("a", pa.int64())]))
    assert parquet_text(nested).to_pylist() == ["{'a': 1}"]


#: Excel's "Formatted Text (Space delimited)" (.prn): columns padded to their widths
PRN = ("Record Id           Cadence Id          Module\r\n"
       "5540230000017986100 5540230000040000001 Leads \r\n"
       "5540230000017986101 5540230000040000001 Leads \r\n")


@pytest.mark.parametrize(("name", "text"), [
    ("list.prn", PRN),
    ("list.txt", PRN),  # by its content, whatever its name
    ("list.prn", "record_id cadence_id\n5540230000017986100 5540230000040000001\n"),
    ("list.prn", "Leavers March\n\nRecord Id   Cadence Id\n5540230000017986100  "
                 "5540230000040000001\n5540230000017986101  5540230000040000001\n"),
])
def test_space_aligned_text_is_named_and_refused(tmp_path, name, text):
    """A .prn was read as a CSV of one column named 'Record Id     Cadence Id     Module'
    and refused for its columns, which says nothing of the file's format."""
    from batcher.inputs import InputOptions
    from batcher.inputs.formats import open_source

    path = tmp_path / name
    path.write_text(text)
    with pytest.raises(InputError) as info:
        open_source(path, InputOptions(module="Leads"))
    assert str(info.value) == (
        f"{path}: is space-aligned text (Excel's 'Formatted Text (Space delimited)', .prn): "
        "its columns are padded with spaces, not delimited, so they cannot be told apart "
        "safely; save it as .xlsx or CSV UTF-8")


@pytest.mark.parametrize("text", [
    "Record Id\n5540230000017986100\n5540230000017986101  \n",  # one column, padded
    "Record Id,Cadence Id\n5540230000017986100,5540230000040000001\n",
    "Record  Id;Cadence  Id\n5540230000017986100;5540230000040000001\n",
])
def test_one_column_lists_and_delimited_files_are_not_space_aligned(tmp_path, text):
    from batcher.inputs import InputOptions
    from batcher.inputs.formats import open_source

    path = tmp_path / "list.prn"
    path.write_text(text)
    src = open_source(path, InputOptions(module="Leads", cadences=("5540230000040000001",))
                      if "Cadence" not in text else InputOptions(module="Leads"))
    assert src.kind == "csv" and "record_id" in src.roles


def test_plan_of_a_prn_file_exits_2_in_one_line(tmp_path):
    path = tmp_path / "leavers.prn"
    path.write_text(PRN)
    done = subprocess.run([sys.executable, "-m", "batcher", "plan", str(path)],
                          cwd=Path(__file__).parents[1], capture_output=True, text=True,
                          timeout=60)
    assert done.returncode == 2
    assert done.stderr == (f"batcher: {path}: is space-aligned text (Excel's 'Formatted Text "
                           "(Space delimited)', .prn): its columns are padded with spaces, not "
                           "delimited, so they cannot be told apart safely; save it as .xlsx "
                           "or CSV UTF-8\n")
