"""A carried .xlsx cell as the sheet shows it under its number format: the common codes
rendered exactly, the others left to the value's own text (None)."""

from __future__ import annotations

import datetime as dt

import pytest

from batcher.inputs.numfmt import shown, shown_all

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
    (5, "[<=9999999]###-####", None),
    (dt.date(2024, 1, 31), "[$-407]mmmm yyyy", None),  # German month names
])
def test_common_number_formats_show_as_the_sheet_does(value, code, text):
    assert shown(value, code) == text


@pytest.mark.parametrize(("value", "code", "text"), [
    # scaling commas: each one at the number's end, or just before its point, shows the value
    # in thousands (Excel: "a comma that follows a digit placeholder scales by 1,000")
    (12345678, "#,##0,", "12,346"), (12345, '#,##0,"K"', "12K"), (1500, "0,", "2"),
    (12345678, '0.0,,"M"', "12.3M"), (12345678, "#,##0.00,,", "12.35"),
    (-1500, "#,##0,", "-2"), (1234567, "0,.00", "1234.57"),
    # a text section (@, the last of 2-4, or any 4th): text cells alone use it, numbers the rest
    (dt.datetime(2024, 1, 31, 14, 5), "[$-409]m/d/yy\\ h:mm\\ AM/PM;@", "1/31/24 2:05 PM"),
    (dt.date(2024, 1, 31), "[$-409]mmmm d, yyyy;@", "January 31, 2024"),
    (3.5, "0.00;-0.00;0;@", "3.50"), (-3.5, "0.00;@", "-3.50"), (0.25, "0%;@", "25%"),
    (0, '0.00;-0.00;"zero";@', "zero"), (1234.5, '#,##0.00_);(#,##0.00);"-"??_);@_)',
                                         "1,234.50 "),
    (-7, '0;"minus "0;0;"text"', "minus 7"),
])
def test_scaling_commas_and_text_sections_show_as_excel_shows_them(value, code, text):
    """These kept the value's own text (12345678 under #,##0, carried as 12345678, the sheet
    showing 12,346; a date of Excel's [$-409]…;@ formats as 2024-01-31T14:05:00)."""
    assert shown(value, code) == text
    assert shown_all([value, value], code) == [text, text]


#: values a whole column of numbers holds, and those that must not be placed by position:
#: half-up rounding from the shortest text (2.675), past 2**51 units, -0.0, huge and tiny
EDGES = [0.0, -0.0, 3.5, 2.675, 1.005, 0.125, -0.001, 0.005, 9.995, 2134.0, 19.99, -1234.5,
         0.0049999, 1e-7, 5e-324, 123456789012.345, 1e15, 1e16, float(2**51), float(2**52) + 1,
         4503599627370495.5, 1e300, -1e300, 7, -7, 10**20, 0]


@pytest.mark.parametrize("code", [
    "00000", "0", "0.00", "#,##0", "#,##0.00", "#,###", "0%", "0.00%", "0.0%;-0.0%", MONEY,
    "0.00;(0.00)", '#,##0;-#,##0;"-"', '0.00;"neg"', '"Q1 "0.00', "#,##0.00 [$€-407]",
    "0.000000000000000", "#.00", "000-00-0000", "0.00E+00", "dd/mm/yyyy", "General",
    "#,##0,", '0.0,,"M"', "0.00;-0.00;0;@"])
def test_a_column_shows_each_value_as_that_value_alone_shows(code):
    """A column of numbers is placed all at once: each cell reads exactly as it does by
    itself, the rounding of 2.675 and the numbers past the exact range included."""
    import random

    rnd = random.Random(code)
    values = EDGES + [round(rnd.uniform(-1e6, 1e6), rnd.randrange(5)) for _ in range(2000)] + [
        rnd.uniform(-1e4, 1e4) for _ in range(500)] + [float(rnd.randrange(10**6))
                                                      for _ in range(500)]
    assert shown_all(values, code) == [shown(v, code) for v in values]
    mixed = values[:50] + [True, False, "text", "", dt.date(2024, 1, 31), 1, 1.0]
    assert shown_all(mixed, code) == [shown(v, code) for v in mixed]
