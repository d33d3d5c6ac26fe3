"""A carried .xlsx cell as the sheet shows it under its number format: the common codes
rendered exactly, the others left to the value's own text (None)."""

from __future__ import annotations

import datetime as dt

import pytest

from batcher.inputs.numfmt import shown

MONEY = '"$"#,##0.00_);[Red]\\("$"#,##0.00\\)'  # Excel's currency, negatives in parentheses


@pytest.mark.parametrize(("value", "code", "text"), [
    (2134.0, "00000", "02134"),  # a zip code
    (123456789, "000-00-0000", "123-45-6789"),
    (5551234567, "(000) 000-0000", "(555) 123-4567"),
    (3.5, "0.00", "3.50"),
    (3.5, "0", "4"), (2.5, "0", "3"), (2.675, "0.00", "2.68"),  # half up, as typed
    (0.5, "#.00", ".50"), (1.25, "#.##", "1.25"), (7, "0.0", "7.0"),
    (0.256, "0%", "26%"), (0.2567, "0.00%", "25.67%"),
    (1234567.891, "#,##0.00", "1,234,567.89"), (0, "#,##0", "0"),
    (-1234.5, MONEY, "($1,234.50)"), (1234.5, MONEY, "$1,234.50 "),
    (-5, "$#,##0.00", "-$5.00"), (-0.001, "0.00", "0.00"),
    (-3.14159, "0.00;(0.00)", "(3.14)"), (0, '#,##0;-#,##0;"-"', "-"),
    (1234.5, "#,##0.00 [$€-407]", "1,234.50 €"),
    (12345.678, "0.00E+00", "1.23E+04"), (0.00001234, "0.00E+00", "1.23E-05"),
    (12, '0" items"', "12 items"),
    (dt.date(2024, 1, 31), "dd/mm/yyyy", "31/01/2024"),
    (dt.date(2024, 1, 31), "mm/dd/yyyy", "01/31/2024"),
    (dt.date(2024, 3, 5), "d-mmm-yy", "5-Mar-24"),
    (dt.date(2024, 3, 5), "dddd, mmmm d, yyyy", "Tuesday, March 5, 2024"),
    (dt.datetime(2024, 1, 31, 8, 30, 5), "yyyy-mm-dd hh:mm:ss", "2024-01-31 08:30:05"),
    (dt.datetime(2024, 1, 31, 8, 30, 5, 600000), "h:mm:ss", "8:30:06"),
    (dt.datetime(2024, 1, 31, 8, 30, 5, 600000), "mm:ss.0", "30:05.6"),
    (dt.time(8, 30), "h:mm", "8:30"), (dt.time(14, 30), "h:mm AM/PM", "2:30 PM"),
    (dt.timedelta(hours=30, minutes=15), "[h]:mm", "30:15"),
    (45000.0, "yyyy-mm-dd", "2023-03-15"),  # a serial number under a date format
    # left to the value's own text: General, text, booleans, and codes not rendered here
    (0.3, "General", None), (42.0, "@", None), (True, "0.00", None), (1.5, "# ?/?", None),
    (5, "[<=9999999]###-####", None), (1000, "0,", None),
    (dt.date(2024, 1, 31), "[$-407]mmmm yyyy", None),  # German month names
])
def test_common_number_formats_show_as_the_sheet_does(value, code, text):
    assert shown(value, code) == text
