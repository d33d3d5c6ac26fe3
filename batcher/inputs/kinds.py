"""What an input file is, before any reader touches it, and what a Parquet role column holds.

``sniff_kind`` names the reader (CSV, gzipped CSV, Parquet, .xlsx) from the file's first bytes,
and refuses, in one line naming the format found and what to do, the files people pass by
mistake: zips, legacy or password-protected Office files, OpenDocument, other compressors, PDFs,
UTF-16 text, Excel's SYLK, DIF, XML Spreadsheet 2003 and single-file web page formats, dBASE
tables; ``space_aligned`` names Excel's space-padded text (.prn), which has no delimiter.
``parquet_problem`` and ``parquet_text`` let the
Parquet reader take a role column of any type without crashing: nested columns are refused by
name, scalar ones become text.
"""

from __future__ import annotations

import re
import struct
import zipfile
import zlib
from pathlib import Path

import pyarrow as pa
import pyarrow.compute as pc

from ..arrays import strings_of
from ..errors import InputError, Interrupted

HEAD_BYTES = 64 * 1024  # what callers pass as ``head``, and what a gzip head is inflated to

_ZIP = (b"PK\x03\x04", b"PK\x05\x06")  # an archive with files; an empty one
_OLE2 = b"\xd0\xcf\x11\xe0\xa1\xb1\x1a\xe1"
_GZIP = b"\x1f\x8b"
_RESAVE = "save it as .xlsx or CSV UTF-8"
_DECOMPRESS = "decompress it and pass the CSV (a gzipped CSV, .csv.gz, is read as it is)"
_EXPORT = "export the list as CSV UTF-8 or .xlsx"

#: formats recognised by their first bytes and refused: (pattern at offset 0, found, what to do)
_FOREIGN = tuple((re.compile(magic, re.S), found, todo) for magic, found, todo in (
    (rb"BZh[1-9](?:1AY&SY|\x17rE8P\x90)", "a bzip2-compressed file", _DECOMPRESS),
    (rb"\xfd7zXZ\x00", "an xz-compressed file", _DECOMPRESS),
    (rb"\x28\xb5\x2f\xfd", "a zstd-compressed file", _DECOMPRESS),
    (rb"7z\xbc\xaf\x27\x1c", "a 7-Zip archive", "extract it and pass the CSV"),
    (rb"Rar!\x1a\x07", "a RAR archive", "extract it and pass the CSV"),
    (rb"%PDF-", "a PDF document", _EXPORT),
    (rb"ARROW1\x00\x00", "an Arrow IPC (Feather) file", "write it as Parquet or CSV UTF-8"),
    (rb"SQLite format 3\x00", "an SQLite database", "export the table as CSV UTF-8"),
    # UTF-32 before UTF-16: FF FE 00 00 starts with the UTF-16 little-endian mark
    (rb"\xff\xfe\x00\x00|\x00\x00\xfe\xff", "UTF-32 text", "save it as CSV UTF-8"),
    (rb"\xff\xfe|\xfe\xff", "UTF-16 text", "save it as CSV UTF-8"),
    # Excel's other text save-as formats: read as CSV, their first line would be taken for
    # a header ("ID;PWXL;N;E", "TABLE") and the file refused for its columns
    (rb"ID;P[^\r\n]*\r?\n[A-Z];", "a SYLK spreadsheet (.slk)", _RESAVE),
    (rb"TABLE\r?\n0,1\r?\n", "a DIF spreadsheet (.dif)", _RESAVE),
    # Excel's "Single File Web Page": a MIME message, its headers first
    (rb"(?:[A-Za-z][A-Za-z0-9-]*:[^\r\n]*\r?\n){0,20}(?i:mime-version):",
     "a single-file web page (.mht, .mhtml)", f"open it in Excel and {_RESAVE}"),
))

#: what a gzip may hold besides CSV text, for naming it
_CONTAINERS = ((b"PAR1", "a Parquet file"), (_ZIP, "a zip archive"),
               (_OLE2, "an Office 97-2003 file"), (_GZIP, "another gzip"))

#: web pages and XML that spreadsheet tools save under .xls names ("Excel" report exports)
_MARKUP = re.compile(rb"\s*<(?:!doctype\s+html|html|\?xml|table)", re.I)

_ODF = "application/vnd.oasis.opendocument."

_XLSX_SUFFIXES = (".xlsx", ".xlsm")

_ZIP_NAME_AT = 30  # a local file header's name follows its 30 fixed bytes

_PARQUET_SUFFIXES = (".parquet", ".pq")


def one_line(text: object, limit: int = 200) -> str:
    """``text`` shortened to ``limit`` characters, with control characters escaped: library
    messages and names inside files may hold newlines or raw bytes."""
    return "".join(c if c.isprintable() else repr(c)[1:-1] for c in str(text)[:limit])


def sniff_kind(path: Path, head: bytes) -> str:
    """``"csv"``, ``"csv.gz"``, ``"parquet"`` or ``"xlsx"``: the reader for ``path``.

    ``head`` is the file's first bytes (``HEAD_BYTES`` of them, or the whole file when shorter).
    Magic bytes decide first; zips and Office 97-2003 files are opened to tell their kinds
    apart. Without a known magic, a ``.parquet``/``.pq`` name means Parquet (its reader reports
    the damage); text without NUL bytes is CSV (so is an empty head: the caller reports empty
    files). Raises InputError, one line naming the file, the format found and what to do, for
    any other format.
    """
    if head.startswith(b"PAR1"):
        return "parquet"
    if head.startswith(_ZIP):
        return _zip_kind(path, head)
    if head.startswith(_OLE2):
        raise _refuse(path, *_ole2_found(path, head))
    if head.startswith(_GZIP):
        return _gzip_kind(path, head)
    found = _foreign(head) or _dbase(head)
    if found:
        raise _refuse(path, *found)
    if path.suffix.lower() in _PARQUET_SUFFIXES:
        return "parquet"
    found = _not_csv_text(head)
    if found:
        raise _refuse(path, *found)
    return "csv"


def _refuse(path: Path, found: str, todo: str) -> InputError:
    return InputError(f"{path}: is {found}; {todo}")


def _foreign(data: bytes) -> tuple[str, str] | None:
    for magic, found, todo in _FOREIGN:
        if magic.match(data):
            return found, todo
    return None


#: the version bytes a dBASE table starts with (III, IV, V, FoxPro, Visual FoxPro; with memos)
_DBASE_VERSIONS = frozenset(b"\x02\x03\x04\x05\x30\x31\x32\x43\x63\x83\x8b\xcb\xf5\xfb")


_DBASE_TYPES = frozenset(bytes([c]) for c in b"CNFLDMBGPYTIV@O+0")


def _dbase(head: bytes) -> tuple[str, str] | None:
    """A dBASE table (.dbf, which LibreOffice still saves a sheet as): a version byte, a last
    update date (YY MM DD), and a header of 32-byte field descriptors ended by 0x0D, the
    first one's name NUL-padded (text never holds a NUL) and its type a dBASE letter."""
    if len(head) < 66 or head[0] not in _DBASE_VERSIONS or not (
            1 <= head[2] <= 12 and 1 <= head[3] <= 31) or b"\x00" not in head[33:43] or \
            head[43:44] not in _DBASE_TYPES:
        return None
    size, = struct.unpack_from("<H", head, 8)
    if size < 65 or size > len(head) or head[size - 1] != 0x0D:
        return None
    return "a dBASE table (.dbf)", f"open it in a spreadsheet and {_RESAVE}"


#: every byte but the control characters text does not hold (all of C0 but tab, LF, CR)
_NOT_CONTROL = bytes(b for b in range(256) if b >= 32 or b in b"\t\n\r")


def not_text(data: bytes) -> bool:
    """Whether bytes holding a NUL are UTF-16 (no byte-order mark) or binary data rather than
    text: NULs two in a row (binary headers, padding), or control characters one in twenty or
    more (UTF-16 of digits and commas has a NUL every other byte; binary data has them
    everywhere). A stray NUL is data: an export may carry one in a text field, and refusing
    the file for it would refuse it for one cell (or not, past its first 64 KiB)."""
    if b"\x00" not in data:
        return False
    return b"\x00\x00" in data or len(data.translate(None, _NOT_CONTROL)) * 20 >= len(data)


def _not_csv_text(data: bytes) -> tuple[str, str] | None:
    """(found, what to do) when text-looking bytes are not CSV: UTF-16 without a byte-order
    mark, or binary data (:func:`not_text`), or a web page / XML document."""
    if not_text(data):
        return "UTF-16 text or binary data (it has NUL bytes)", "save it as CSV UTF-8"
    if _MARKUP.match(data.removeprefix(b"\xef\xbb\xbf")):
        found = next((name for mark, name in _XML_SHEETS if mark in data),
                     "an HTML or XML document (some 'Excel' exports are web pages)")
        return found, f"open it in Excel and {_RESAVE}"
    return None


#: spreadsheets saved as one XML document, by a mark in their first bytes
_XML_SHEETS = ((b"urn:schemas-microsoft-com:office:spreadsheet",
                "an Excel XML Spreadsheet 2003 (.xml)"),
               (b"opendocument.spreadsheet", "an OpenDocument flat XML spreadsheet (.fods)"))

#: Excel's "Formatted Text (Space delimited)": columns padded with spaces to their width
_PRN = "space-aligned text (Excel's 'Formatted Text (Space delimited)', .prn)"


def space_aligned(lines: list[str]) -> str | None:
    """What the first ``lines`` of a text file whose header no delimiter splits (a header,
    then records) are, and what to do, when they are columns padded with spaces, as a .prn's
    are: the header (or most lines, under a title) has values apart by two spaces or more, or
    the header and every record split at spaces into as many values, more than one; else
    None. A one-column list (``Record Id`` over ids) is not that."""
    lines = [line.strip() for line in lines if line.strip()]
    if not lines:
        return None
    header, records = lines[0], lines[1:]
    gaps = [len(re.split(r" {2,}", line)) > 1 for line in lines]
    padded = gaps[0] or sum(gaps) * 2 > len(gaps)
    width = len(header.split())
    spaced = width > 1 and bool(records) and all(len(r.split()) == width for r in records)
    if not (padded or spaced):
        return None
    return (f"is {_PRN}: its columns are padded with spaces, not delimited, so they cannot be "
            f"told apart safely; {_RESAVE}")


def _zip_kind(path: Path, head: bytes) -> str:
    """``"xlsx"`` for an OOXML workbook (``xl/`` parts: .xlsx, .xlsm); refuses other zips by
    what they hold. A zip whose directory cannot be read is left to the .xlsx reader when it
    looks like a workbook (its name, or an ``xl/`` part in ``head``), else refused as damaged."""
    try:
        with zipfile.ZipFile(path) as zf:
            names = zf.namelist()
            mimetype = zf.read("mimetype")[:100] if "mimetype" in names else b""
    except Interrupted:  # a signal, not the file's fault
        raise
    except Exception as exc:  # zipfile raises BadZipFile, OSError, EOFError, ValueError…
        if path.suffix.lower() in _XLSX_SUFFIXES or re.search(
                rb"PK\x03\x04.{%d}xl/" % (_ZIP_NAME_AT - 4), head, re.S):
            return "xlsx"
        raise _refuse(path, f"a damaged zip archive ({one_line(exc)})",
                      "make the archive again, or pass the CSV it was made from") from None
    found = _zip_found(names, mimetype.decode("ascii", "replace"))
    if found is None:
        return "xlsx"
    raise _refuse(path, *found)


def _zip_found(names: list[str], mimetype: str) -> tuple[str, str] | None:
    """(found, what to do) for a zip that is not an OOXML workbook, None for one that is."""
    if mimetype.startswith(_ODF + "spreadsheet"):
        return "an OpenDocument spreadsheet (.ods)", _RESAVE
    if mimetype.startswith(_ODF):
        return f"an OpenDocument {one_line(mimetype[len(_ODF):], 40)} document", _EXPORT
    if "xl/workbook.bin" in names:
        return "an Excel binary workbook (.xlsb)", _RESAVE
    if any(n.startswith("xl/") for n in names):
        return None
    if "word/document.xml" in names:
        return "a Word document (.docx)", _EXPORT
    if "ppt/presentation.xml" in names:
        return "a PowerPoint presentation (.pptx)", _EXPORT
    if "FixedDocumentSequence.fdseq" in names:
        return "an XPS document", _EXPORT
    if "Index/Document.iwa" in names:
        return "an Apple Numbers document", "export it as .xlsx or CSV UTF-8"
    files = [n for n in names if not n.endswith("/")]
    if not files:
        return "an empty zip archive", "pass the CSV itself"
    shown = one_line(", ".join(files[:3]))
    more = f"… ({len(files)} files)" if len(files) > 3 else ""
    return f"a zip archive holding {shown}{more}", "unzip it and pass the CSV"


def _ole2_found(path: Path, head: bytes) -> tuple[str, str]:
    """(found, what to do) for an OLE2 compound file. A password-protected .xlsx is one too:
    its directory names an ``EncryptedPackage`` stream."""
    if "EncryptedPackage".encode("utf-16-le") in head + _ole2_directory(path, head):
        return ("a password-protected (encrypted) Office file",
                f"remove the password in Excel, or {_RESAVE}")
    return "a legacy Excel .xls (or other Office 97-2003) file", _RESAVE


def _ole2_directory(path: Path, head: bytes) -> bytes:
    """The first 4 KiB of the compound file's directory (empty when unreadable): the header
    gives the sector size (offset 30) and the directory's first sector (offset 48)."""
    try:
        shift, = struct.unpack_from("<H", head, 30)
        first, = struct.unpack_from("<I", head, 48)
        with open(path, "rb") as fh:
            fh.seek((first + 1) << shift)
            return fh.read(4096)
    except (struct.error, OSError, ValueError, OverflowError):
        return b""


def _gzip_kind(path: Path, head: bytes) -> str:
    """``"csv.gz"`` when the first ``HEAD_BYTES`` it inflates to look like text; else refused,
    naming what the gzip holds."""
    try:
        text = zlib.decompressobj(wbits=31).decompress(head, HEAD_BYTES)  # 31: gzip header
    except zlib.error as exc:
        raise _refuse(path, f"a damaged gzip file ({one_line(exc)})",
                      "compress the CSV again") from None
    if not text:
        raise _refuse(path, "a gzip file holding nothing (or cut short)",
                      "compress the CSV again")
    inner = _gzipped(text)
    if inner:
        raise _refuse(path, f"gzip of {inner}, not of CSV text",
                      "decompress it (gunzip) and pass what it holds, if that can be read")
    return "csv.gz"


def _gzipped(text: bytes) -> str | None:
    """What the start of a gzip's content is when it is not CSV text, else None."""
    for magic, found in _CONTAINERS:
        if text.startswith(magic):
            return found
    problem = _foreign(text) or _not_csv_text(text)
    return problem[0] if problem else None


#: what the id rules need a role column to hold, by role
_ROLE_TYPES = {"module": "module names must be text columns"}


def parquet_problem(schema: pa.Schema, roles: dict[str, str]) -> str | None:
    """One line naming the first role column (role → column name) of a nested type (struct,
    map, list, union, or a dictionary or extension of those), which no text can be made of;
    None when every role column is usable. Columns missing from ``schema`` are left to the
    column check; non-role columns may be of any type."""
    for role, name in roles.items():
        found = schema.get_all_field_indices(name)
        if not found:
            continue
        kind = schema.field(found[0]).type
        if _nested(kind):
            need = _ROLE_TYPES.get(role, "ids must be text or integer columns")
            return f"column {name!r} is {one_line(kind)} (a nested type); {need}"
    return None


def _nested(kind: pa.DataType) -> bool:
    if pa.types.is_dictionary(kind) or pa.types.is_run_end_encoded(kind):
        return _nested(kind.value_type)
    if isinstance(kind, pa.ExtensionType):
        return _nested(kind.storage_type)
    return pa.types.is_nested(kind)


def parquet_text(col: pa.ChunkedArray | pa.Array) -> pa.ChunkedArray | pa.Array:
    """A role column as text (same length and nulls; a chunked column stays chunked), never
    raising: strings as they are; dictionaries decoded; integers, decimals, dates… cast (floats
    too: the id rules reject them with a reason); binary that is valid UTF-8 as its text, and
    each value that is not as ``<not UTF-8: ...>`` with its bytes escaped, so the row is reported
    invalid instead of failing the run. Values of types Arrow cannot cast (intervals; nested
    types, which ``parquet_problem`` refuses first) become Python's text of them."""
    if pa.types.is_string(col.type) or pa.types.is_large_string(col.type):
        return col
    try:
        return pc.cast(col, pa.string())
    except (pa.ArrowInvalid, pa.ArrowNotImplementedError):
        pass  # bad UTF-8 somewhere, or no cast: only the chunks that fail go value by value
    if isinstance(col, pa.ChunkedArray):
        return pa.chunked_array([parquet_text(c) for c in col.chunks], pa.string())
    try:
        values = col.to_pylist()
    except Exception:  # values Python cannot hold (e.g. dates out of its range): mark the rows
        values = [f"<unreadable {col.type}>"] * len(col)
    return strings_of([None if v is None else _value_text(v) for v in values])


_SHOWN_BYTES = 32


def _value_text(value: object) -> str:
    if not isinstance(value, bytes):
        return str(value)
    try:
        return value.decode("utf-8")
    except UnicodeDecodeError:
        shown = "".join(chr(b) if 0x20 <= b < 0x7F and b != 0x5C else f"\\x{b:02x}"
                        for b in value[:_SHOWN_BYTES])
        return f"<not UTF-8: {shown}{'…' if len(value) > _SHOWN_BYTES else ''}>"
