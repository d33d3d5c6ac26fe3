"""Writes ``spreadsheet_export.xlsx``: a CRM export after a person worked on it in Excel.

What such files hold: ``zcrm_``-prefixed record ids, ids retyped into Number cells (rounded to
15 digits: 1990117000000120347 became 1.99011700000012E+18), a 15-digit number, padded text,
a blank row left by a deleted line, a VLOOKUP that found no cadence (``#N/A``), datetimes, a
second sheet that is not the list. Run ``python tests/corpus/make_xlsx.py`` (needs openpyxl);
the workbook's content is the same on every run (openpyxl's save time is overwritten).
"""

from __future__ import annotations

import datetime as dt
import io
import re
import zipfile
from pathlib import Path

import openpyxl

HEADER = ["Record Id", "Cadence Id", "Module", "Full Name", "Email", "Enrolled On"]
ROWS = [
    ["zcrm_1990117000000120345", "1990117000000099001", "Leads", "Ana Pérez",
     "ana@example.com", dt.datetime(2024, 5, 2, 9, 15)],
    ["1990117000000120346", "1990117000000099001", "Contacts", "Bo Li", "bo@example.com",
     dt.datetime(2024, 5, 2, 9, 16)],
    [],
    [1990117000000120347, "1990117000000099001", "Leads", "Chidi Okafor", "chidi@example.com",
     dt.datetime(2024, 5, 3, 14, 0)],
    [" 1990117000000120348 ", "1990117000000099002", "leads", "Dana Kim", "dana@example.com",
     dt.datetime(2024, 5, 3, 14, 5)],
    ["1990117000000120349", "#N/A", "Leads", "Eli Cohen", "eli@example.com",
     dt.datetime(2024, 5, 4, 8, 0)],
    [199011700000012, "1990117000000099002", "Deals", "Fay Wong", "fay@example.com",
     dt.datetime(2024, 5, 4, 8, 30)],
]
_SAVED = dt.datetime(2024, 5, 6, 9, 0)


def build() -> bytes:
    wb = openpyxl.Workbook()
    ws = wb.active
    ws.title = "Enrolments"
    ws.append(HEADER)
    for row in ROWS:
        ws.append(row)  # openpyxl stores "#N/A" as an error cell, as Excel does
    for cell in ws["F"][1:]:
        cell.number_format = "yyyy-mm-dd hh:mm"
    wb.create_sheet("Notes").append(["Sent by marketing, 2024-05-06"])
    wb.properties.created = _SAVED
    buf = io.BytesIO()
    wb.save(buf)
    return _without_save_time(buf.getvalue())


def _without_save_time(data: bytes) -> bytes:
    """openpyxl stamps the time of saving into docProps/core.xml and every zip entry."""
    out = io.BytesIO()
    stamp = _SAVED.strftime("%Y-%m-%dT%H:%M:%SZ").encode()
    with zipfile.ZipFile(io.BytesIO(data)) as src, \
            zipfile.ZipFile(out, "w", zipfile.ZIP_DEFLATED) as dst:
        for info in src.infolist():
            body = src.read(info)
            if info.filename == "docProps/core.xml":
                body = re.sub(rb"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\dZ", stamp, body)
            dst.writestr(zipfile.ZipInfo(info.filename, _SAVED.timetuple()[:6]), body,
                         zipfile.ZIP_DEFLATED)
    return out.getvalue()


if __name__ == "__main__":
    Path(__file__).with_name("spreadsheet_export.xlsx").write_bytes(build())
