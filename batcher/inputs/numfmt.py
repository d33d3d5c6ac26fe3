"""A cell's value as an .xlsx sheet shows it under its number format, for the columns the
results carry: a zip code ``02134`` formatted ``00000``, ``3.50`` formatted ``0.00``, ``25%``,
``31/01/2024`` formatted ``dd/mm/yyyy``.

Not a whole Excel formatter: the common codes are rendered (digit placeholders ``0 # ?``,
thousands separators, scaling commas ``#,##0,``, decimals, percent, scientific ``0.00E+00``,
literal text and currency signs, sections for negative and zero values, a text section
``;@`` (numbers use the others), colours; dates and times in ``y m d h s AM/PM`` and elapsed
``[h]``); for anything else :func:`shown` says None, and the cell keeps the text
``xlsx.cell_text`` gives it (the value, not its look): fractions (``# ?/?``), conditions
(``[<=9999999]``), fills, locale-dependent codes (the short date
14 and 22, Excel's ``m/d/yyyy`` shown in each user's own order, and the built-in currencies
5-8; dates keep ISO 8601 there) and month or day names of another language than English.
"""

from __future__ import annotations

import datetime as dt
import math
import re
from collections.abc import Callable, Sequence
from decimal import ROUND_HALF_UP, Decimal
from functools import lru_cache

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

#: built-in format ids (ECMA-376 18.8.30) with the same look everywhere; the others (5-8
#: currencies, 14 and 22 short dates, 27-36 and 50-58 East Asian) follow the user's locale
BUILTIN = {
    0: "General", 1: "0", 2: "0.00", 3: "#,##0", 4: "#,##0.00", 9: "0%", 10: "0.00%",
    11: "0.00E+00", 12: "# ?/?", 13: "# ??/??", 15: "d-mmm-yy", 16: "d-mmm", 17: "mmm-yy",
    18: "h:mm AM/PM", 19: "h:mm:ss AM/PM", 20: "h:mm", 21: "h:mm:ss", 37: "#,##0 ;(#,##0)",
    38: "#,##0 ;[Red](#,##0)", 39: "#,##0.00;(#,##0.00)", 40: "#,##0.00;[Red](#,##0.00)",
    45: "mm:ss", 46: "[h]:mm:ss", 47: "mmss.0", 48: "##0.0E+0", 49: "@",
}

_MONTHS = ("January", "February", "March", "April", "May", "June", "July", "August",
           "September", "October", "November", "December")
_DAYS = ("Monday", "Tuesday", "Wednesday", "Thursday", "Friday", "Saturday", "Sunday")
_EPOCH = dt.datetime(1899, 12, 30)  # Excel's day 0 (in its 1900 system, past February 1900)
_LAST_SERIAL = 2958466  # 10000-01-01: past Excel's last day

#: a format code's pieces: quoted text, an escaped character, a space as wide as a character,
#: a fill, a bracket, AM/PM, a run of one date letter, any other character
_TOKEN = re.compile(r'"[^"]*"|\\.|_.|\*.|\[[^\]]*\]|AM/PM|am/pm|A/P|a/p|([yYmMdDhHsS])\1*|.',
                    re.S)
_DATE_LETTERS = set("yYmMdDhHsS")
_COLOUR = re.compile(r"(?i)red|black|blue|cyan|green|magenta|white|yellow|color\s*\d+")
#: English locales of a [$-409] tag: names as this module writes them
_ENGLISH = {"409", "809", "C09", "1009", "1409", "1809", "2009", "2409", "2809", "2C09",
            "3009", "3409", "4009", "4409", "4809", "F800", "F400"}

Renderer = Callable[[object], "str | None"]
#: a number section's renderer of many numbers ≥ 0 at once: each one's text, or None where
#: the value is left to the one-at-a-time renderer
Many = Callable[[np.ndarray], np.ndarray]


def shown(value: object, code: str) -> str | None:
    """The text a cell of ``value`` (a number, or a date, time or duration as python-calamine
    reads one) shows under the number format ``code``; None when the code is General or text
    (``@``), or one this module does not render."""
    if isinstance(value, bool | str):
        return None  # TRUE / FALSE, and text, look the same under any number format
    try:
        render = _compiled(code)
        return None if render is None else render(value)
    except (ArithmeticError, LookupError, ValueError):  # a code of an odd shape: not ours
        return None


def shown_all(values: Sequence[object], code: str) -> list[str | None]:
    """``[shown(v, code) for v in values]``: a column of numbers under a plain code
    (``0.00``, ``00000``, ``#,##0``, ``0%``) placed all at once (a sheet's 300,000 amounts in
    a few array steps, not a Decimal each), any other value rendered once however often it
    repeats (a date, a zip code under ``000-00``)."""
    render = _compiled_or_none(code)
    if render is None:
        return [None] * len(values)
    kinds = set(map(type, values))
    many: Many | None = getattr(render, "many", None)
    if many is None or not kinds <= {float, int}:
        return _each(values, code, bool in kinds)
    try:
        out = many(np.array(values, dtype=np.float64))
    except (ArithmeticError, LookupError, ValueError):  # as shown(): each value on its own
        return _each(values, code)
    left = np.flatnonzero(np.equal(out, None))
    if len(left):
        out[left] = _each([values[i] for i in left], code)
    return out.tolist()


def _each(values: Sequence[object], code: str, typed: bool = False) -> list[str | None]:
    """shown() of each value, each distinct one rendered once. ``typed``: told apart by type
    too (True == 1 == 1.0, and a boolean keeps its own text; 1 and 1.0 look the same)."""
    keys: Sequence[object] = list(zip(map(type, values), values, strict=True)) if typed \
        else values
    looks: dict[object, str | None] = dict.fromkeys(keys)
    for key in looks:
        looks[key] = shown(key[1] if typed else key, code)  # type: ignore[index]
    return list(map(looks.__getitem__, keys))


def _compiled_or_none(code: str) -> Renderer | None:
    try:
        return _compiled(code)
    except (ArithmeticError, LookupError, ValueError):
        return None


@lru_cache(maxsize=256)
def _compiled(code: str) -> Renderer | None:
    if code in ("", "General", "@") or code.lower() == "general":
        return None
    sections = _sections(code)
    if sections is None or len(sections) > 4:
        return None
    if len(sections) > 1 and (len(sections) == 4 or _is_text(sections[-1])):
        # the text section (Excel's [$-409]m/d/yy h:mm AM/PM;@, 0.00;-0.00;0;@): text cells
        # alone use it, and they never reach here; numbers are shown by the others
        sections = sections[:-1]
    parsed = [_section(s) for s in sections]
    if any(p is None for p in parsed):
        return None
    if any(kind == "date" for kind, _ in parsed):
        kind, tokens = parsed[0]
        return _date_renderer(tokens) if kind == "date" else None
    return _number_renderer([tokens for _, tokens in parsed])


def _sections(code: str) -> list[str] | None:
    """``code`` cut at its ``;`` (not those quoted or escaped)."""
    out, start = [], 0
    for m in _TOKEN.finditer(code):
        if m.group() == ";":
            out.append(code[start:m.start()])
            start = m.end()
    out.append(code[start:])
    return out


def _is_text(section: str) -> bool:
    """Whether ``section`` is a text section: it places the text (``@``, not quoted)."""
    return any(m.group() == "@" for m in _TOKEN.finditer(section))


def _section(section: str) -> tuple[str, list[tuple[str, str]]] | None:
    """("number" or "date", the section's tokens as (kind, text)); None when it is not
    rendered here."""
    tokens: list[tuple[str, str]] = []
    foreign = False  # a [$-407] locale: month and day names in its language
    for m in _TOKEN.finditer(section):
        t = m.group()
        if t[0] == '"':
            tokens.append(("lit", t[1:-1]))
        elif t[0] == "\\":
            tokens.append(("lit", t[1]))
        elif t[0] == "_":
            tokens.append(("lit", " "))  # a space as wide as the character
        elif t[0] == "*" and len(t) == 2:
            return None  # a fill repeats a character to the cell's width: unknown here
        elif t[0] == "[" and len(t) > 1:
            inner = t[1:-1]
            if _COLOUR.fullmatch(inner):
                continue
            if inner.startswith("$"):  # [$€-407]: a currency sign, and its locale
                sign, _, locale = inner[1:].partition("-")
                foreign = foreign or bool(locale) and locale.upper().lstrip("0") not in _ENGLISH
                if sign:
                    tokens.append(("lit", sign))
            elif re.fullmatch(r"(?i)h+|m+|s+", inner):
                tokens.append(("elapsed", inner.lower()))
            else:
                return None  # a condition ([<=9999999]) or another bracket
        elif t in ("AM/PM", "am/pm", "A/P", "a/p"):
            tokens.append(("ampm", t))
        elif t[0] in _DATE_LETTERS:
            tokens.append(("date", t.lower()))
        elif t in "0#?.,%Ee+-" and t:
            tokens.append(("num", t))
        elif t == "@":
            return None  # a text section: only text values use it
        elif t == "/" and any(k == "num" for k, _ in tokens):
            return None  # a fraction
        else:
            tokens.append(("lit", t))
    date = any(k in ("date", "elapsed", "ampm") for k, _ in tokens)
    if not date:
        # a sign that is no exponent's is text
        tokens = [("lit", v) if k == "num" and v in "+-" and not (
            i and tokens[i - 1][1] in "Ee") else (k, v) for i, (k, v) in enumerate(tokens)]
        return "number", tokens
    tokens = [("lit", v) if k == "num" and v in "+-," else (k, v) for k, v in tokens]
    if foreign and any(k == "date" and v[0] in "md" and len(v) >= 3 for k, v in tokens):
        return None
    if any(k == "num" and v not in ".0" for k, v in tokens):
        return None
    return "date", tokens


# --- numbers ------------------------------------------------------------------------------

def _number_renderer(sections: list[list[tuple[str, str]]]) -> Renderer | None:
    parts = [_number_part(s) for s in sections[:3]]
    if any(p is None for p in parts):
        return None

    def render(value: object) -> str | None:
        if not isinstance(value, int | float) or not math.isfinite(value):
            return None
        if value < 0 and len(parts) >= 2:
            return parts[1](-value)  # the section shows the sign it wants: (1.50)
        if value == 0 and len(parts) >= 3:
            return parts[2](0)
        text = parts[0](abs(value))
        # one section: a minus first, unless the number rounds to nothing shown (-0.001: 0.00)
        return "-" + text if value < 0 and any(c in "123456789" for c in text) else text

    def many(x: np.ndarray) -> np.ndarray:
        """render() of each of ``x`` (floats), None where a section has no many()."""
        out = np.full(len(x), None, dtype=object)
        with np.errstate(invalid="ignore"):
            finite, negative, zero = np.isfinite(x), x < 0, x == 0
        rest = finite.copy()
        if len(parts) >= 2:
            _many_into(out, parts[1], negative & finite, -x)
            rest &= ~negative
        if len(parts) >= 3:
            _many_into(out, parts[2], zero, x)
            rest &= ~zero
        _many_into(out, parts[0], rest, np.abs(x))
        if len(parts) == 1:
            signed = np.flatnonzero(rest & negative & (out != None))  # noqa: E711
            if len(signed):
                texts = pa.array(out[signed], pa.string())
                minus = pc.match_substring_regex(texts, "[1-9]").to_numpy(zero_copy_only=False)
                out[signed[minus]] = pc.binary_join_element_wise(
                    "-", texts.filter(minus), "").to_numpy(zero_copy_only=False)
        return out

    render.many = many  # type: ignore[attr-defined]
    return render


def _many_into(out: np.ndarray, part: Callable[[float], str], where: np.ndarray,
               x: np.ndarray) -> None:
    """out[where] = the section's texts of x[where], where it renders many at once."""
    many: Many | None = getattr(part, "many", None)
    if many is not None and where.any():
        out[where] = many(x[where])


def _number_part(tokens: list[tuple[str, str]]) -> Callable[[float], str] | None:
    """A section's renderer of a number ≥ 0 (the sign, if any, is the section's text)."""
    at = [i for i, (k, v) in enumerate(tokens) if k == "num" and v != "%"]
    percent = sum(1 for k, v in tokens if k == "num" and v == "%")
    if not at:  # text only ("-" for zero)
        text = "".join(v for _, v in tokens)

        def constant(x: float) -> str:
            return text

        constant.many = lambda x: np.full(len(x), text, dtype=object)  # type: ignore[attr-defined]
        return constant
    before = "".join(v for _, v in tokens[:at[0]])
    after = "".join(v for _, v in tokens[at[-1] + 1:])
    inner = tokens[at[0]:at[-1] + 1]
    # a comma at the number's end or just before its point scales by a thousand each
    # (#,##0, shows 12,345,678 as 12,346; 0.0,,"M" as 12.3M), the one between digits groups
    scale = 0
    while inner[-1] == ("num", ","):
        inner, scale = inner[:-1], scale + 1
    while (point := inner.index(("num", ".")) if ("num", ".") in inner else 0) and \
            inner[point - 1] == ("num", ","):
        inner, scale = inner[:point - 1] + inner[point:], scale + 1
    if any(v in "Ee" for k, v in inner if k == "num"):
        return None if scale else _scientific(inner, before, after, percent)
    return _fixed(inner, before, after, percent, scale)


def _fixed(inner: list[tuple[str, str]], before: str, after: str, percent: int, scale: int = 0
           ) -> Callable[[float], str] | None:
    points = [i for i, (k, v) in enumerate(inner) if k == "num" and v == "."]
    if len(points) > 1:
        return None
    whole = inner[:points[0]] if points else inner
    frac = inner[points[0] + 1:] if points else []
    grouping = any(k == "num" and v == "," for k, v in whole)
    whole = [(k, v) for k, v in whole if not (k == "num" and v == ",")]
    if grouping and any(k == "lit" for k, _ in whole) or any(
            k == "num" and v == "," for k, v in frac):
        return None
    places = sum(1 for k, v in frac if k == "num" and v in "0#?")
    step = Decimal(1).scaleb(-places)
    zeros = sum(1 for k, v in whole if v == "0")
    # 0, 0.00, #,##0.00, 00000: Decimal's own formatting, without placing digit by digit
    plain = (all(k == "num" and v in "0#" for k, v in whole) and all(v == "0" for _, v in frac)
             and (not grouping or zeros <= 1) and not (points and not places))
    spec = f"{',' if grouping else ''}.{places}f"

    def render(x: float) -> str:
        # the float's shortest text, so 2.675 formatted 0.00 is 2.68 as Excel shows it
        # the percent's hundreds and the scaling commas' thousands, exactly (no float product)
        value = Decimal(repr(float(x))).scaleb(2 * percent - 3 * scale).quantize(
            step, ROUND_HALF_UP)
        if plain:
            int_digits, point, decimals = format(value, spec).partition(".")
            return before + int_digits.lstrip("0").rjust(zeros, "0") + point + decimals + after
        int_digits, _, decimals = f"{value:f}".partition(".")
        text = _integer(whole, int_digits.lstrip("0"), grouping)
        if points:
            text += "." + _decimals(frac, decimals)
        return before + text + after

    if plain and not scale and places + 2 * percent <= _EXACT_PLACES:
        render.many = lambda x: _plain_many(  # type: ignore[attr-defined]
            x, before, after, places, percent, grouping, zeros)
    return render


#: the most decimals (a percent's two more included) a number is placed with at once: 10**q
#: is then an exact float
_EXACT_PLACES = 15
#: below this many units of 10**-q, floats lie closer together than a unit: the one whole
#: number of units that rounds to a float is its shortest text's
_EXACT_UNITS = float(2**51)


def _plain_many(x: np.ndarray, before: str, after: str, places: int, percent: int,
                grouping: bool, zeros: int) -> np.ndarray:
    """The plain ``_fixed`` render() of each of ``x`` (≥ 0): the value a number of at most
    ``places`` decimals (as typed: 3.5, 2134, 19.99), None for any other (2.675 is rounded
    half up from its shortest text, one at a time). N = x · 10**q, a whole number below 2**51
    whose N / 10**q is x again, is exactly the shortest text's digits: no other number of q
    decimals lies as near x (its floats are closer together than 10**-q)."""
    q = places + 2 * percent
    scale = 10.0 ** q
    with np.errstate(invalid="ignore", over="ignore"):
        units = np.rint(x * scale)
        exact = (units < _EXACT_UNITS) & (units / scale == x)
    out = np.full(len(x), None, dtype=object)
    n = units[exact].astype(np.int64)
    if not len(n):
        return out
    whole, frac = np.divmod(n, 10 ** places)
    ints = _thousands(whole) if grouping else pc.cast(pa.array(whole), pa.string())
    # format(): 0.50's whole part "0" goes, and zeros put back as many as the code shows
    ints = pc.if_else(pa.array(whole == 0), pa.scalar("", pa.string()), ints)
    if zeros:
        ints = pc.utf8_lpad(ints, width=zeros, padding="0")
    pieces: list = [before, ints] if before else [ints]
    if places:
        pieces += [".", pc.utf8_lpad(pc.cast(pa.array(frac), pa.string()), width=places,
                                     padding="0")]
    if after:
        pieces.append(after)
    text = pc.binary_join_element_wise(*pieces, "") if len(pieces) > 1 else ints
    out[exact] = text.to_numpy(zero_copy_only=False)
    return out


def _thousands(n: np.ndarray) -> pa.Array:
    """Each of ``n`` (≥ 0) in digits with thousands separators (1,234,567)."""
    groups, rest = [], n
    while True:
        rest, group = np.divmod(rest, 1000)
        groups.append(group)
        if not rest.any():
            break
    parts = []
    for k, group in enumerate(groups):
        digits = pc.cast(pa.array(group), pa.string())
        shown_as = np.where(n >= 1000 ** (k + 1), 2, np.where((n >= 1000 ** k) | (k == 0), 1, 0))
        # a group below the first is 3 digits (001); the first as it is; past it, none
        parts.append(pc.case_when(pc.make_struct(pa.array(shown_as == 2), pa.array(shown_as == 1)),
                                  pc.utf8_lpad(digits, width=3, padding="0"), digits))
    return pc.binary_join_element_wise(*reversed(parts), ",", null_handling="skip")


def _integer(tokens: list[tuple[str, str]], digits: str, grouping: bool) -> str:
    """The integer's digits in the placeholders, right to left, literals kept where they
    stand (``000-00-0000``); digits beyond the placeholders go in the first. ``0`` shows a
    missing digit as 0, ``?`` as a space, ``#`` not at all."""
    holders = [v for k, v in tokens if k == "num"]
    if grouping:
        digits = digits.rjust(holders.count("0"), "0")
        return ",".join(re.findall(r"\d{1,3}(?=(?:\d{3})*$)", digits))
    out: list[str] = []
    left = len(holders)
    for k, v in reversed(tokens):
        if k != "num":
            out.append(v)
            continue
        left -= 1
        if left == 0 and digits:  # the first placeholder takes every digit left
            out.append(digits)
        elif digits:
            out.append(digits[-1])
        else:
            out.append("0" if v == "0" else " " if v == "?" else "")
        digits = "" if left == 0 else digits[:-1]
    return "".join(reversed(out))


def _decimals(tokens: list[tuple[str, str]], digits: str) -> str:
    """The decimals in their placeholders: past the last significant one, ``#`` shows
    nothing and ``?`` a space."""
    significant = len(digits.rstrip("0"))
    out, at = [], 0
    for k, v in tokens:
        if k != "num" or v not in "0#?":
            out.append(v)
            continue
        digit = digits[at]
        if at >= significant and v != "0":
            digit = " " if v == "?" else ""
        out.append(digit)
        at += 1
    return "".join(out)


def _scientific(inner: list[tuple[str, str]], before: str, after: str, percent: int
                ) -> Callable[[float], str] | None:
    body = [v for k, v in inner if k == "num"]
    if any(k == "lit" for k, _ in inner) or "," in body:
        return None
    at = next(i for i, v in enumerate(body) if v in "Ee")
    mantissa, exponent = body[:at], body[at + 1:]
    if not exponent or exponent[0] not in "+-":
        return None
    point = mantissa.index(".") if "." in mantissa else len(mantissa)
    if point != 1:
        return None  # engineering notation (##0.0E+0): exponents in threes
    places = len(mantissa) - point - 1 if "." in mantissa else 0
    width = max(1, len(exponent) - 1)
    plus, letter = exponent[0] == "+", body[at]

    def render(x: float) -> str:
        digits, exp = f"{float(x) * 100 ** percent:.{places}E}".split("E")
        n = int(exp)
        sign = "-" if n < 0 else "+" if plus else ""
        return f"{before}{digits}{letter}{sign}{abs(n):0{width}d}{after}"

    return render


# --- dates and times ----------------------------------------------------------------------

def _date_renderer(tokens: list[tuple[str, str]]) -> Renderer:
    twelve = any(k == "ampm" for k, _ in tokens)
    timed = [i for i, (k, _) in enumerate(tokens) if k in ("date", "elapsed")]
    minutes = set()  # "m" is the minute right after an hour or right before a second
    for n, i in enumerate(timed):
        v = tokens[i][1]
        if v[0] == "m" and len(v) <= 2 and (
                (n and tokens[timed[n - 1]][1][0] == "h")
                or (n + 1 < len(timed) and tokens[timed[n + 1]][1][0] == "s")):
            minutes.add(i)
    # a second's decimals (ss.00): how many, so the time is rounded to them, as Excel does
    places = sum(1 for k, v in tokens if k == "num" and v == "0")

    def render(value: object) -> str | None:
        moment, elapsed = _moment(value)
        if moment is None:
            return None
        shift = dt.timedelta(microseconds=round(moment.microsecond, places - 6)
                             - moment.microsecond)
        moment, elapsed = moment + shift, elapsed + shift
        fraction = f"{moment.microsecond:06d}"
        out, seen = [], 0
        for i, (k, v) in enumerate(tokens):
            if k == "lit" or (k == "num" and v == "."):
                out.append(v)
            elif k == "num":  # a decimal of the second
                out.append(fraction[seen] if seen < 6 else "0")
                seen += 1
            elif k == "elapsed":
                unit = {"h": 3600, "m": 60, "s": 1}[v[0]]
                out.append(f"{int(elapsed.total_seconds() // unit):0{len(v)}d}")
            elif k == "ampm":
                pm = moment.hour >= 12
                out.append(("PM" if pm else "AM") if len(v) > 3 else ("P" if pm else "A"))
            else:
                out.append(_date_part(v, moment, i in minutes, twelve))
        return "".join(out)

    return render


def _moment(value: object) -> tuple[dt.datetime | None, dt.timedelta]:
    """(the value as a date and time, as time since Excel's day 0), for what calamine gives
    a date cell: a datetime, date, time or duration (or a number, under a date format)."""
    if isinstance(value, dt.datetime):
        return value.replace(tzinfo=None), value.replace(tzinfo=None) - _EPOCH
    if isinstance(value, dt.date):
        moment = dt.datetime(value.year, value.month, value.day)
        return moment, moment - _EPOCH
    if isinstance(value, dt.time):
        moment = dt.datetime.combine(_EPOCH.date(), value.replace(tzinfo=None))
        return moment, moment - _EPOCH
    if isinstance(value, dt.timedelta):
        return _EPOCH + value, value
    if isinstance(value, int | float) and 0 <= value < _LAST_SERIAL:
        delta = dt.timedelta(days=float(value))
        return _EPOCH + delta, delta
    return None, dt.timedelta(0)


def _date_part(v: str, m: dt.datetime, minute: bool, twelve: bool) -> str:
    c, n = v[0], len(v)
    if c == "y":
        return f"{m.year % 100:02d}" if n <= 2 else f"{m.year:04d}"
    if c == "m" and minute:
        return f"{m.minute:0{min(n, 2)}d}"
    if c == "m":
        name = _MONTHS[m.month - 1]
        return f"{m.month:0{n}d}" if n <= 2 else name[:3] if n == 3 else name if n == 4 \
            else name[0]
    if c == "d":
        day = _DAYS[m.weekday()]
        return f"{m.day:0{n}d}" if n <= 2 else day[:3] if n == 3 else day
    if c == "h":
        hour = (m.hour % 12 or 12) if twelve else m.hour
        return f"{hour:0{min(n, 2)}d}"
    return f"{m.second:0{min(n, 2)}d}"
