"""CSV files as spreadsheets and CRMs write them: delimiters, Excel's ``sep=`` line, gzip, long
and multi-line fields, ragged and blank rows.

Contract: DESIGN.md §2 "Input" — the delimiter is detected (robust to quotes and apostrophes in
text) or given with ``--delimiter``; a ragged row is ``invalid`` with its line, the rest goes
on; a row of empty fields is ``blank``, not a data row; ``row + 1`` is the spreadsheet's line.

The reader's part (``raw_batches`` / ``scan_chunks``: every record once, in order, with
``ragged`` and ``blank`` when there is something to say) is tested directly, and what a user
sees of the same files through the scan. The corpus (``tests/corpus``, with each file's
expected statuses and codes in ``expected.json``) holds spreadsheet-made files, .xlsx too.
"""

from __future__ import annotations

import csv
import gzip
import io
import json
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from batcher.errors import InputError
from batcher.inputs import InputOptions, csvfile, read_input
from batcher.inputs.dialect import Dialect, detect
from batcher.inputs.formats import as_strings, open_source, raw_batches, scan_chunks

CORPUS = Path(__file__).parent / "corpus"
EXPECTED = json.loads((CORPUS / "expected.json").read_text(encoding="utf-8"))

REC = "1990117000000120345"
CAD = "1990117000000098001"
CAD2 = "1990117000000098002"
HEADER = ["Owner", "Record Id", "Cadence Id", "Module", "Notes"]

def rec(i: int) -> str:
    """A distinct, real-looking 19-digit record id (never ending in zeros: not 'rounded')."""
    return str(1990117000000120345 + 7 * i)


def write_csv(path: Path, rows: list[list[str]], *, delimiter: str = ",", sep: bool = False,
              bom: bool = False, gz: bool = False, terminator: str = "\r\n") -> Path:
    """``rows`` as Excel writes them (QUOTE_MINIMAL), optionally with a ``sep=`` line, a BOM,
    gzipped."""
    buf = io.StringIO()
    if sep:
        buf.write(f"sep={delimiter}{terminator}")
    csv.writer(buf, delimiter=delimiter, lineterminator=terminator).writerows(rows)
    data = (("\ufeff" if bom else "") + buf.getvalue()).encode()
    path.write_bytes(gzip.compress(data) if gz else data)
    return path


def data_rows(n: int, note: str = "ok") -> list[list[str]]:
    return [["ana@example.com", rec(i), CAD, "Leads", note] for i in range(n)]


def seen(path: Path, options: InputOptions | str | None = None) -> list[tuple[int, str, str]]:
    """(row, status, record id) of every result row, as the user sees them."""
    table = read_input(path, options).table.to_pylist()
    return [(r["row"], r["status"], r["record_id"]) for r in table]


def positions(path: Path, options: InputOptions | None = None, *, chunk_rows: int | None = None
              ) -> tuple[list[str], list[str | None], list[bool]]:
    """(record id, ragged reason, blank) of every position the reader gives: the second pass,
    or the first in chunks of ``chunk_rows``. Checks the batch contract on the way."""
    src = open_source(path, options or InputOptions())
    parts = raw_batches(src) if chunk_rows is None else scan_chunks(src, chunk_rows)
    ids: list[str] = []
    ragged: list[str | None] = []
    blank: list[bool] = []
    for part in parts:
        n = len(part["record_id"])
        assert set(part) <= {"record_id", "cadence_id", "module", "ragged", "blank"}
        assert all(len(part[k]) == n for k in part)
        ids += as_strings(part["record_id"]).to_pylist()
        if "ragged" in part:  # only when some row is
            assert isinstance(part["ragged"], pa.Array) and part["ragged"].type == pa.string()
            assert part["ragged"].null_count < n
            ragged += part["ragged"].to_pylist()
        else:
            ragged += [None] * n
        if "blank" in part:
            assert isinstance(part["blank"], np.ndarray) and part["blank"].dtype == bool
            assert part["blank"].any()
            blank += part["blank"].tolist()
        else:
            blank += [False] * n
    return ids, ragged, blank


def assert_one_clear_line(message: str, path: Path | None = None) -> None:
    if path is not None:
        assert str(path) in message
    assert "\n" not in message and "\r" not in message and message.isprintable()
    assert "Traceback" not in message and len(message) < 600


# --------------------------------------------------------------------------- detection


@pytest.mark.parametrize(("delimiter", "text"), [
    (",", "Said: see you; 'maybe'; bye"),
    (";", "Called back, 'not interested', closed"),
    ("\t", "Smith, Jones; 'Ltd' | Co"),
    ("|", "a, b; 'c'\td"),
])
def test_detect_takes_the_delimiter_that_splits_every_record_alike(delimiter: str, text: str):
    rows = [["record_id", "cadence_id", "notes"]] + [[rec(i), CAD, text] for i in range(5)]
    head = "".join(delimiter.join(r) + "\r\n" for r in rows).encode()
    assert detect(head, None) == Dialect(delimiter, 0, False, ("record_id", "cadence_id",
                                                                  "notes"))


def test_detect_breaks_a_tie_by_the_header():
    # the record has as many fields as the header on ',' (2) and on ';' (3): more fields win
    head = b"record_id;cadence_id;Notes, misc\n1,2;3;4\n"
    assert detect(head, None).delimiter == ";"


@pytest.mark.parametrize("sep", [";", ",", "\t", "|"])
def test_detect_honours_and_skips_an_excel_sep_line(sep: str):
    head = f"sep={sep}\r\nrecord_id{sep}cadence_id\r\n{REC}{sep}{CAD}\r\n".encode()
    assert detect(head, None) == Dialect(sep, 1, False, ("record_id", "cadence_id"))
    assert detect(b"\xef\xbb\xbf" + head, None).skip_rows == 1  # a BOM before it


@pytest.mark.parametrize(("given", "char"), [
    ("tab", "\t"), ("TAB", "\t"), ("\\t", "\t"), ("\t", "\t"), ("comma", ","),
    ("semicolon", ";"), ("pipe", "|"), (";", ";"), (":", ":"),
])
def test_a_given_delimiter_wins(given: str, char: str):
    head = f"sep=,\nrecord_id{char}cadence_id\n{REC}{char}{CAD}\n".encode()
    dialect = detect(head, given)
    assert (dialect.delimiter, dialect.skip_rows) == (char, 1)
    assert dialect.header == ("record_id", "cadence_id")


@pytest.mark.parametrize("given", ["", "ab", '"', "\n", "semi", "\\n"])
def test_a_bad_delimiter_is_one_clear_line(given: str):
    with pytest.raises(InputError) as info:
        detect(b"record_id,cadence_id\n", given)
    assert_one_clear_line(str(info.value))
    assert "--delimiter" in str(info.value) and info.value.exit_code == 2


def test_detect_notices_quoted_line_breaks_and_leading_empty_lines():
    head = f'\n\nrecord_id,notes\n{REC},"two\nlines"\n'.encode()
    assert detect(head, None) == Dialect(",", 2, True, ("record_id", "notes"), rows_above=2)


def test_detect_copes_with_a_head_cut_inside_a_quoted_note():
    rows = "".join(f"{rec(i)};{CAD};Leads\n" for i in range(50))
    head = f"record_id;cadence_id;module\n{rows}{REC};{CAD};\"cut, in, a\nnote, and".encode()
    # the cut record's line break is inside quotes: the file has line breaks in values
    assert detect(head, None) == Dialect(";", 0, True, ("record_id", "cadence_id", "module"))


# --------------------------------------------------------------------------- reproduced bugs


@pytest.mark.parametrize(("delimiter", "text"), [
    (",", "Said: see you; 'maybe'; bye"),
    (";", "Called back, 'not interested', closed"),
])
def test_text_holding_other_delimiters_and_apostrophes_is_read(tmp_path: Path, delimiter: str,
                                                                text: str):
    path = write_csv(tmp_path / "in.csv", [HEADER] + data_rows(3, text), delimiter=delimiter)
    assert seen(path) == [(i + 1, "valid", rec(i)) for i in range(3)]
    assert read_input(path).columns_found == tuple(HEADER)


@pytest.mark.parametrize("sep", [";", ",", "\t"])
def test_excel_sep_line_is_honoured_and_skipped(tmp_path: Path, sep: str):
    path = write_csv(tmp_path / "in.csv", [HEADER] + data_rows(3, "see; you, 'then'"),
                     delimiter=sep, sep=True)
    assert read_input(path).columns_found == tuple(HEADER)
    assert seen(path) == [(i + 1, "valid", rec(i)) for i in range(3)]


@pytest.mark.parametrize("name", ["export.csv.gz", "export.csv"])
def test_gzip_is_read_transparently_whatever_its_name(tmp_path: Path, name: str):
    path = write_csv(tmp_path / name, [HEADER] + data_rows(4), bom=True, gz=True)
    assert seen(path) == [(i + 1, "valid", rec(i)) for i in range(4)]


def test_a_plain_csv_named_gz_is_read_as_text(tmp_path: Path):
    path = write_csv(tmp_path / "export.csv.gz", [HEADER] + data_rows(2))
    assert seen(path) == [(1, "valid", rec(0)), (2, "valid", rec(1))]


def test_gzip_of_something_that_is_not_csv_text_is_refused(tmp_path: Path):
    inner = tmp_path / "list.parquet"
    pq.write_table(pa.table({"record_id": [REC], "cadence_id": [CAD]}), inner)
    path = tmp_path / "list.csv.gz"
    path.write_bytes(gzip.compress(inner.read_bytes()))
    with pytest.raises(InputError) as info:
        read_input(path, "Leads")
    assert_one_clear_line(str(info.value), path)
    assert "gzip of a Parquet file, not of CSV text" in str(info.value).removeprefix(str(path))


@pytest.mark.parametrize("data", [b"\x1f\x8b\x08\x00garbage", gzip.compress(b"x" * 10)[:12]],
                         ids=["damaged", "truncated"])
def test_a_damaged_gzip_is_one_clear_line(tmp_path: Path, data: bytes):
    path = tmp_path / "in.csv.gz"
    path.write_bytes(data)
    with pytest.raises(InputError) as info:
        read_input(path, "Leads")
    assert_one_clear_line(str(info.value), path)
    said = str(info.value).removeprefix(str(path))
    assert "damaged gzip" in said or "damaged or truncated gzip" in said or "cut short" in said


def test_a_4_mb_field_in_an_ignored_column_is_read(tmp_path: Path):
    rows = data_rows(30_000)
    rows[20_000][-1] = "x" * (4 << 20)  # beyond the first blocks of both passes
    path = write_csv(tmp_path / "big_field.csv", [HEADER] + rows)
    expected = [(i + 1, "valid", rec(i)) for i in range(30_000)]
    assert seen(path, "Leads") == expected
    # the first pass in small chunks (blocks of 64 KB) meets it too
    assert positions(path, chunk_rows=1000)[0] == [rec(i) for i in range(30_000)]


def test_quoted_line_breaks_make_one_record(tmp_path: Path):
    """A CRM notes column: line breaks only past the first 64 KB, so the first read does not
    expect them, and many blocks (small chunks) end inside a note."""
    rows = data_rows(2_000, "plain note")
    for i in range(1_500, 2_000):
        rows[i][-1] = f"Spoke to Ana.\nShe said: \"call in Q3\";\r\nDon't email, 'ever'.\n{i}"
    path = write_csv(tmp_path / "notes.csv", [HEADER] + rows)
    assert seen(path) == [(i + 1, "valid", rec(i)) for i in range(2_000)]
    for chunk_rows in (100, 1_000_000):
        ids, ragged, blank = positions(path, chunk_rows=chunk_rows)
        assert ids == [rec(i) for i in range(2_000)]
        assert not any(ragged) and not any(blank)


def _ragged_file(tmp_path: Path) -> Path:
    """3,000 data rows; line 2,501 (data row 2,500) has a fifth field."""
    lines = ["record_id,cadence_id,module,notes"]
    lines += [f"{rec(i)},{CAD},Leads,note {i}" for i in range(3_000)]
    lines[2_500] = f"{rec(2_499)},{CAD},Leads,Acme, Inc"
    path = tmp_path / "ragged.csv"
    path.write_text("\n".join(lines) + "\n")
    return path


@pytest.mark.parametrize("chunk_rows", [None, 500, 1 << 24],
                         ids=["second pass", "first pass in chunks", "first pass whole"])
def test_a_ragged_row_is_named_by_its_line_and_the_rest_is_read(tmp_path: Path, chunk_rows):
    ids, ragged, blank = positions(_ragged_file(tmp_path), chunk_rows=chunk_rows)
    assert len(ids) == 3_000
    assert ragged[2_499].startswith("line 2501 has 5 fields, the header has 4: '")
    assert ids[2_499] == ""  # a ragged row's fields say nothing reliable
    assert [r for r in ragged if r] == [ragged[2_499]]
    assert ids[:2_499] + ids[2_500:] == [rec(i) for i in range(3_000) if i != 2_499]
    assert not any(blank)


def test_a_ragged_row_is_invalid_with_its_line_the_others_valid(tmp_path: Path):
    rows = read_input(_ragged_file(tmp_path), "Leads").table.to_pylist()
    assert [r["row"] for r in rows] == list(range(1, 3_001))
    bad = rows[2_499]
    assert (bad["row"], bad["status"], bad["code"]) == (2_500, "invalid", "INVALID_INPUT")
    assert "line 2501" in bad["reason"]
    assert sum(r["status"] == "valid" for r in rows) == 2_999


def _trailing_blank_file(tmp_path: Path) -> Path:
    text = "record_id,cadence_id,module,owner\r\n"
    text += "".join(f"{rec(i)},{CAD},Leads,ana\r\n" for i in range(3))
    text += ",,,\r\n" * 3 + " ,\t, ,\r\n" + ",,\r\n"  # Excel's formatted range; a short one
    path = tmp_path / "trailing.csv"
    path.write_text(text)
    return path


@pytest.mark.parametrize("chunk_rows", [None, 1 << 24])
def test_rows_of_only_delimiters_are_blank_not_ragged(tmp_path: Path, chunk_rows):
    ids, ragged, blank = positions(_trailing_blank_file(tmp_path), chunk_rows=chunk_rows)
    assert ids[:3] == [rec(i) for i in range(3)]
    assert blank == [False] * 3 + [True] * 5
    assert not any(ragged)


def test_trailing_blank_rows_have_no_result_and_are_counted(tmp_path: Path):
    table = read_input(_trailing_blank_file(tmp_path), "Leads")
    assert [(r["row"], r["status"]) for r in table.table.to_pylist()] == [
        (1, "valid"), (2, "valid"), (3, "valid")]
    assert table.scan.blank == 5


def _empty_lines_file(tmp_path: Path) -> Path:
    path = tmp_path / "gaps.csv"
    path.write_text(f"record_id,cadence_id,module,owner\n{rec(0)},{CAD},Leads,ana\n\n"
                    f"{rec(1)},{CAD},Leads,ana\n\n\n{rec(2)},{CAD2},Contacts,li\n")
    return path


def test_empty_lines_are_blank_positions(tmp_path: Path):
    for chunk_rows in (None, 1 << 24):
        ids, ragged, blank = positions(_empty_lines_file(tmp_path), chunk_rows=chunk_rows)
        assert blank == [False, True, False, True, True, False]
        assert [ids[i] for i in (0, 2, 5)] == [rec(0), rec(1), rec(2)]
        assert not any(ragged)


def test_empty_lines_keep_later_row_numbers(tmp_path: Path):
    """``row + 1`` is the line a spreadsheet shows: 2, 4 and 7 here."""
    assert seen(_empty_lines_file(tmp_path)) == [
        (1, "valid", rec(0)), (3, "valid", rec(1)), (6, "valid", rec(2))]


@pytest.mark.parametrize("above", ["\n\n", ",,,\n", "\r\n;;;\r\n \r\n", "sep=,\n\n",
                                   '"","","",""\n'])
def test_rows_above_the_header_keep_the_row_numbers_a_spreadsheet_shows(tmp_path: Path, above):
    """Empty rows above the header, as Excel saves them (",,,"), are shown by a spreadsheet:
    ``row + 1`` is still the row it shows the record on (Excel hides a sep= line), for the
    rows themselves and for the row a repeat names."""
    path = tmp_path / "above.csv"
    path.write_text(above + "record_id,cadence_id,module,owner\n"
                    f"{rec(0)},{CAD},Leads,ana\nbad,{CAD},Leads,bo\n{rec(0)},{CAD},Leads,ana\n"
                    f"{rec(1)},{CAD},Leads\n")
    shown = len([line for line in above.splitlines() if not line.startswith("sep=")])
    header_row = 1 + shown
    rows = seen(path)
    assert [row for row, _, _ in rows] == [header_row + i for i in range(4)]
    assert [status for _, status, _ in rows] == ["valid", "invalid", "duplicate", "invalid"]
    table = read_input(path).table
    assert table["reason"][2].as_py() == f"same pair as row {header_row}"
    # the ragged row's line is the one a spreadsheet shows it on: its row + 1
    assert f"line {header_row + 4} has 3 fields" in table["reason"][3].as_py()


@pytest.mark.parametrize("chunk_rows", [None, 20, 1 << 24])
def test_a_row_with_only_a_note_is_a_data_row_not_blank(tmp_path: Path, chunk_rows):
    """Empty role fields alone do not make a blank row: the other columns are read to judge
    (in small chunks too, where the rows to judge lie in several parts)."""
    lines = [f"{rec(i)},{CAD},Leads,ana" for i in range(300)]
    special = {10: ",,,", 150: ",,,call back in May", 290: ",, ,", 295: " ,,,\t"}
    for i, line in special.items():
        lines[i] = line
    path = tmp_path / "in.csv"
    path.write_text("record_id,cadence_id,module,note\n" + "\n".join(lines) + "\n")
    ids, ragged, blank = positions(path, chunk_rows=chunk_rows)
    assert [i for i, b in enumerate(blank) if b] == [10, 290, 295]
    assert ids[150] == "" and ids[:10] == [rec(i) for i in range(10)]
    assert not any(ragged)


def test_a_header_cell_with_a_line_break(tmp_path: Path):
    path = write_csv(tmp_path / "in.csv", [["Record\nId", "Cadence Id", "Module"],
                                          [REC, CAD, "Leads"]])
    assert read_input(path).columns_found[0] == "Record\nId"
    assert seen(path) == [(1, "valid", REC)]


def test_a_single_column_record_list_with_empty_lines(tmp_path: Path):
    path = tmp_path / "records.csv"
    path.write_text(f"record_id\n{rec(0)}\n\n  \n{rec(1)}\n")
    ids, ragged, blank = positions(path, InputOptions(cadences=(CAD,)))
    assert (ids[0], ids[3], blank) == (rec(0), rec(1), [False, True, True, False])
    assert not any(ragged)


def test_the_delimiter_flag_is_used(tmp_path: Path):
    # one column on ',' (the header has no ','): only the flag can tell it is '|'
    path = tmp_path / "in.txt"
    path.write_text(f"record_id|cadence_id\n{REC}|{CAD}\n")
    assert seen(path, InputOptions(module="Leads", delimiter="pipe")) == [(1, "valid", REC)]
    with pytest.raises(InputError) as info:
        read_input(path, InputOptions(module="Leads", delimiter="pipes"))
    assert_one_clear_line(str(info.value))


# --------------------------------------------------------------------------- the fast path


@pytest.fixture
def no_exact_reader(monkeypatch: pytest.MonkeyPatch) -> None:
    def refuse(src):
        raise AssertionError(f"{src.path.name} went to the exact reader")

    monkeypatch.setattr(csvfile, "_exact_source", refuse)


@pytest.mark.usefixtures("no_exact_reader")
def test_regular_files_stay_on_pyarrow(tmp_path: Path):
    """Long fields, line breaks in notes, ',,,' rows, empty lines, gzip, sep= lines: all
    regular, all read by pyarrow (the exact reader is for ragged rows only)."""
    test_a_4_mb_field_in_an_ignored_column_is_read(tmp_path)
    test_quoted_line_breaks_make_one_record(tmp_path)
    assert sum(positions(CORPUS / "trailing_blank_rows.csv")[2]) == 5
    test_empty_lines_are_blank_positions(tmp_path)
    test_excel_sep_line_is_honoured_and_skipped(tmp_path, ";")
    test_gzip_is_read_transparently_whatever_its_name(tmp_path, "export.csv")


def test_a_whitespace_line_is_irregular_yet_blank(tmp_path: Path):
    path = tmp_path / "in.csv"
    path.write_text(f"record_id,cadence_id\n{REC},{CAD}\n   \n{rec(1)},{CAD}\n")
    assert positions(path, InputOptions(module="Leads"))[2] == [False, True, False]


# --------------------------------------------------------------------------- unreadable files


def test_bad_utf8_in_a_role_column_of_a_ragged_file_is_one_line(tmp_path: Path):
    path = tmp_path / "in.csv"
    path.write_bytes(f"record_id,cadence_id,module\n{REC},{CAD},L\xe9ads\n1,2,3,4\n"
                     .encode("latin-1"))
    with pytest.raises(InputError) as info:
        read_input(path)
    assert_one_clear_line(str(info.value), path)
    assert "utf-8" in str(info.value).lower()


@pytest.mark.parametrize("text", [
    f"record_id,cadence_id,module,owner\n{REC},{CAD},Leads,J\xf6rg\n,,\n",  # ragged, too
    f"record_id,cadence_id,module,owner\r\n{REC},{CAD},Leads,M\xfcller\r\n",  # Excel's "CSV"
    f"record_id,cadence_id,module,N\xe4me\n{REC},{CAD},Leads,Mu\n",  # a header only
])
def test_bad_utf8_in_any_column_refuses_the_file_naming_its_line(tmp_path: Path, text: str):
    """The results carry the other columns, read again after the calls: a file whose other
    columns are not UTF-8 was planned and sent, then its results could never be written (every
    re-run exit 3). It is refused before anything is sent."""
    path = tmp_path / "in.csv"
    path.write_bytes(text.encode("latin-1"))
    with pytest.raises(InputError) as info:
        read_input(path)
    assert_one_clear_line(str(info.value), path)
    line = 1 if "N\xe4me" in text else 2
    assert f"is not UTF-8 text (line {line} holds" in str(info.value)


def test_the_utf8_check_takes_characters_cut_by_its_blocks_and_the_files_end(tmp_path: Path):
    """Multi-byte characters straddle the check's blocks in a good file; a file whose last
    character is cut short is refused (gzipped, it is checked inflated)."""
    good = f"record_id,cadence_id,module,owner\n{REC},{CAD},Leads,{'Jörg Łódź 東京 ' * 50}\n"
    path = tmp_path / "in.csv.gz"
    path.write_bytes(gzip.compress(good.encode()))
    src = open_source(path, InputOptions())
    for block in (1, 2, 3, 5, 7, 4096):
        csvfile.check_utf8(src, block_bytes=block)
    path.write_bytes(gzip.compress(good.encode()[:-3]))  # "東" cut: its first byte stays
    with pytest.raises(InputError, match=r"is not UTF-8 text \(line 2 holds"):
        csvfile.check_utf8(open_source(path, InputOptions()), block_bytes=7)


# --------------------------------------------------------------------------- the corpus


@pytest.mark.parametrize("name", sorted(EXPECTED))
def test_corpus_file_rows(name: str):
    path = CORPUS / name
    expected = EXPECTED[name]
    table = read_input(path)
    got = [[r["row"], r["status"], r["code"]] for r in table.table.to_pylist()]
    assert got == expected["rows"]
    assert table.scan.blank == expected["blank"]


@pytest.mark.parametrize("name", sorted(EXPECTED))
def test_corpus_file_positions(name: str):
    """Both passes give every record once: result rows and blank rows, in the same order."""
    expected = EXPECTED[name]
    second = positions(CORPUS / name)
    assert positions(CORPUS / name, chunk_rows=1 << 24) == second
    ids, ragged, blank = second
    assert sum(blank) == expected["blank"]
    assert len(ids) == len(expected["rows"]) + expected["blank"]
    rows = [i + 1 for i, b in enumerate(blank) if not b]
    assert rows == [row for row, _, _ in expected["rows"]]
    invalid = {row for row, status, _ in expected["rows"] if status == "invalid"}
    assert {i + 1 for i, why in enumerate(ragged) if why} <= invalid


# --------------------------------------------------------------------------- property tests

_CHARS = list("ab z,;|\t\n\"'é") + ["\r\n", "\r"]


@st.composite
def _csv_files(draw: st.DrawFn) -> dict:
    terminator = draw(st.sampled_from(["\r\n", "\n"]))
    chars = _CHARS if terminator == "\r\n" else [c for c in _CHARS if "\r" not in c]
    text = st.lists(st.sampled_from(chars), max_size=12).map("".join)
    n = draw(st.integers(1, 12))
    rows = [[draw(text), rec(i), CAD, draw(st.sampled_from(["Leads", "Contacts"])), draw(text)]
            for i in range(n)]
    return {"rows": rows, "terminator": terminator,
            "delimiter": draw(st.sampled_from([",", ";", "\t", "|"])),
            "sep": draw(st.booleans()), "bom": draw(st.booleans()), "gz": draw(st.booleans())}


_PROPERTY = settings(max_examples=40, deadline=None,
                     suppress_health_check=[HealthCheck.function_scoped_fixture])


@_PROPERTY
@given(spec=_csv_files())
def test_any_text_round_trips(tmp_path: Path, spec: dict):
    rows = spec.pop("rows")
    path = write_csv(tmp_path / "prop.csv", [HEADER] + rows, **spec)
    assert seen(path) == [(i + 1, "valid", r[1]) for i, r in enumerate(rows)]


@_PROPERTY
@given(spec=_csv_files(), data=st.data())
def test_any_text_round_trips_with_ragged_and_blank_rows(tmp_path: Path, spec: dict,
                                                          data: st.DataObject):
    """The exact reader (a ragged row sends the file to it) agrees with the writer too."""
    rows = spec.pop("rows")
    at = data.draw(st.integers(0, len(rows)))
    rows.insert(at, ["ann", rec(99), CAD])  # ragged: 3 fields of 5
    blank_at = data.draw(st.integers(0, len(rows)))
    rows.insert(blank_at, data.draw(st.sampled_from([[""] * 5, ["", " "], []])))
    path = write_csv(tmp_path / "prop.csv", [HEADER] + rows, **spec)
    ragged_at = at + (blank_at <= at)
    for chunk_rows in (None, 3):
        ids, ragged, blank = positions(path, chunk_rows=chunk_rows)
        assert blank == [i == blank_at for i in range(len(rows))]
        assert [r and r.split(":")[0] for r in ragged] == [
            f"line {i + 2} has 3 fields, the header has 5" if i == ragged_at else None
            for i in range(len(rows))]
        good = [i for i in range(len(rows)) if i not in (blank_at, ragged_at)]
        assert [ids[i] for i in good] == [rows[i][1] for i in good]


def test_a_quote_that_never_closes_is_refused_naming_its_line(tmp_path: Path):
    """It would make the rest of the file one field: 9,900 rows gone without a word."""
    lines = ["record_id,cadence_id,module,note"] + [
        f"{rec(i)},{CAD},Leads,ok" for i in range(300)]
    lines[100] = lines[100].replace(",ok", ',"oops')
    path = tmp_path / "quote.csv"
    path.write_text("\n".join(lines) + "\n")
    with pytest.raises(InputError) as info:
        read_input(path)
    assert_one_clear_line(str(info.value), path)
    assert "line 101: a quote opens there and does not close" in str(info.value)
    # a note that really spans lines is read
    fine = tmp_path / "fine.csv"
    fine.write_text(f'record_id,cadence_id,module,note\n{rec(1)},{CAD},Leads,"two\nlines"\n')
    assert [r["status"] for r in read_input(fine).table.to_pylist()] == ["valid"]


def test_a_note_of_line_breaks_and_delimiters_is_not_taken_for_an_unclosed_quote(tmp_path: Path):
    """A quoted note whose lines hold as many tabs as a record (but no id) is text, not rows
    swallowed by a quote (found by the round-trip property test)."""
    path = tmp_path / "note.csv"
    path.write_bytes(b"Owner\tRecord Id\tCadence Id\tModule\tNotes\r\n"
                     + f"\t{rec(1)}\t{CAD}\tLeads\t".encode() + b'"\n\t\t\t\t"\r\n')
    assert [(r["status"], r["record_id"]) for r in read_input(path).table.to_pylist()] == [
        ("valid", rec(1))]


@pytest.mark.parametrize(("text", "row", "header"), [
    ("Leavers March,,\r\nRecord Id,Cadence Id,Module\r\n", 2, "Record Id"),
    # a title without a delimiter, an empty line, then the semicolon header
    ("Leavers March 2024\r\n\r\nrecord_id;cadence_id\r\n", 3, "record_id"),
    # Excel hides the sep= line: the title is row 1
    ("sep=;\r\nLeavers\r\nid;cadence\r\n", 2, "id"),
])
def test_a_title_above_the_column_names_is_named_with_their_row(tmp_path: Path, text: str,
                                                                 row: int, header: str):
    path = tmp_path / "titled.csv"
    path.write_text(text + "5540230000017986100,5540230000040000001,Leads\r\n")
    with pytest.raises(InputError) as info:
        open_source(path, InputOptions())
    assert f"row {row} looks like them ({header!r}" in str(info.value)
    assert "delete the rows above it" in str(info.value)
