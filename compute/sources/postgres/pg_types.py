"""PostgreSQL's text output of a value, by type OID, as the exact Python value to write.

Each mapped type reads back into a PostgreSQL column unchanged: integers,
numeric as Decimal (NaN and the infinities too), floats (shortest exact
text, ``extra_float_digits`` of 1 or more), bool, timestamps naive or aware
with the session's own offset, dates, times, intervals as a timedelta when
one holds them exactly (no months, a time part under a day) and as their
text otherwise, UUID, bytea as bytes, and arrays of these as (nested) lists.
Text-like types (text, varchar, json, bit strings, ...) stay text. A value
Python cannot hold (``infinity``, a BC or five-digit year, ``24:00:00``)
raises UnmappableValue: it is refused, never written as something else.
A type OID not known here gets no converter: the caller keeps the text.
"""

from __future__ import annotations

import re
import uuid
from collections.abc import Callable
from datetime import date, datetime, time, timedelta
from decimal import Decimal
from typing import Any

Converter = Callable[[str], Any]

# Settings for the replication connection (``options='-c DateStyle=ISO ...'``)
# under which every converter below reads the server's text exactly, whatever
# the server's own defaults; client_encoding makes the server convert text
# from the database's encoding to the UTF-8 the parser decodes. TimeZone is
# left alone: each timestamptz carries its offset.
SESSION_SETTINGS: dict[str, str] = {
    "client_encoding": "UTF8",
    "DateStyle": "ISO",
    "IntervalStyle": "postgres",
    "extra_float_digits": "3",
    "bytea_output": "hex",
}


def session_options() -> str:
    """``SESSION_SETTINGS`` as a libpq ``options`` value."""
    return " ".join(f"-c {name}={value}" for name, value in SESSION_SETTINGS.items())


class UnmappableValue(ValueError):
    """A value no Python value holds exactly; ``reason`` says what and the fix."""

    def __init__(self, type_name: str, text: str, reason: str) -> None:
        super().__init__(f"{type_name} value {text[:60]!r}: {reason}")
        self.type_name = type_name
        self.text = text
        self.reason = reason


_OUT_OF_RANGE = (
    "outside what Python's datetime holds (years 1 to 9999, no infinity); "
    "the change is refused rather than written as another value"
)


def _bool(text: str) -> bool:
    if text == "t":
        return True
    if text == "f":
        return False
    raise UnmappableValue("boolean", text, "expected 't' or 'f'")


def _numeric(text: str) -> Decimal:
    return Decimal(text)  # 'NaN', 'Infinity' and '-Infinity' included


def _float(text: str) -> float:
    return float(text)  # 'NaN', 'Infinity', '-Infinity', '1e+30'


def _temporal(type_name: str, parse: Callable[[str], Any]) -> Converter:
    def convert(text: str) -> Any:
        try:
            return parse(text)
        except ValueError:
            if text.endswith(" BC") or "infinity" in text or re.match(r"\d{5}", text):
                raise UnmappableValue(type_name, text, _OUT_OF_RANGE) from None
            if text.startswith("24:00:00"):
                raise UnmappableValue(
                    type_name, text, "24:00:00 has no Python time of day; the change is refused"
                ) from None
            raise UnmappableValue(
                type_name,
                text,
                "not ISO text: start replication with DateStyle=ISO (session_options())",
            ) from None

    return convert


_INTERVAL = re.compile(
    r"(?:(-?\d+) years? ?)?(?:(-?\d+) mons? ?)?(?:(-?\d+) days? ?)?"
    r"(?:([+-]?)(\d+):(\d\d):(\d\d)(?:\.(\d{1,6}))?)?"
)


def _interval(text: str) -> timedelta | str:
    """A timedelta when it reads back as the same interval; the text itself otherwise.

    An interval keeps months, days and a time part apart ('1 day' is not
    '24:00:00' to PostgreSQL's output). A timedelta is written back as days
    plus seconds under one day, so only intervals without months and with a
    time part from 0 up to a day come back identical; any other interval
    (and any other IntervalStyle) stays text, which PostgreSQL reads exactly.
    """
    match = _INTERVAL.fullmatch(text)
    if match is None or not text:
        return text
    years, months, days, sign, hours, minutes, seconds, fraction = match.groups()
    if (years and int(years)) or (months and int(months)):
        return text
    total = 0
    if hours is not None:
        if sign == "-" or int(hours) >= 24:
            return text
        micros = int((fraction or "").ljust(6, "0"))
        total = (int(hours) * 3600 + int(minutes) * 60 + int(seconds)) * 1_000_000 + micros
    return timedelta(days=int(days or 0), microseconds=total)


_OCTAL = re.compile(rb"\\(\\|[0-3][0-7]{2})")


def _bytea(text: str) -> bytes:
    if text.startswith("\\x"):
        return bytes.fromhex(text[2:])
    # bytea_output = escape: printable ASCII as is, '\\' and '\ooo' octal escapes.
    return _OCTAL.sub(
        lambda m: b"\\" if m.group(1) == b"\\" else bytes([int(m.group(1), 8)]),
        text.encode("ascii"),
    )


_SCALARS: dict[int, tuple[str, Converter | None]] = {
    16: ("boolean", _bool),
    17: ("bytea", _bytea),
    18: ('"char"', None),
    19: ("name", None),
    20: ("bigint", int),
    21: ("smallint", int),
    23: ("integer", int),
    25: ("text", None),
    26: ("oid", int),
    114: ("json", None),
    142: ("xml", None),
    650: ("cidr", None),
    700: ("real", _float),
    701: ("double precision", _float),
    774: ("macaddr8", None),
    829: ("macaddr", None),
    869: ("inet", None),
    1042: ("character", None),
    1043: ("character varying", None),
    1082: ("date", _temporal("date", date.fromisoformat)),
    1083: ("time without time zone", _temporal("time", time.fromisoformat)),
    1114: ("timestamp without time zone", _temporal("timestamp", datetime.fromisoformat)),
    1184: ("timestamp with time zone", _temporal("timestamptz", datetime.fromisoformat)),
    1186: ("interval", _interval),
    1266: ("time with time zone", _temporal("timetz", time.fromisoformat)),
    1560: ("bit", None),
    1562: ("bit varying", None),
    1700: ("numeric", _numeric),
    2950: ("uuid", uuid.UUID),
    3802: ("jsonb", None),
}

# Array type OID -> its element type OID.
_ARRAYS: dict[int, int] = {
    1000: 16,
    1001: 17,
    1002: 18,
    1003: 19,
    1016: 20,
    1005: 21,
    1007: 23,
    1009: 25,
    1028: 26,
    199: 114,
    143: 142,
    651: 650,
    1021: 700,
    1022: 701,
    775: 774,
    1040: 829,
    1041: 869,
    1014: 1042,
    1015: 1043,
    1182: 1082,
    1183: 1083,
    1115: 1114,
    1185: 1184,
    1187: 1186,
    1270: 1266,
    1561: 1560,
    1563: 1562,
    1231: 1700,
    2951: 2950,
    3807: 3802,
}


def _keep(text: str) -> str:
    return text


class ArrayTextError(ValueError):
    """Text that is not PostgreSQL's array text format."""


_UNESCAPE = re.compile(r"\\(.)", re.DOTALL)


def parse_array(text: str, convert: Converter = _keep) -> list[Any]:
    """PostgreSQL's array text (``{1,NULL,"a b",{...}}``) as nested lists; NULL is None.

    ``convert`` turns each element's text into its value. Quoted elements
    may hold any character (backslash escapes ``\\"`` and ``\\\\``); an
    unquoted ``NULL`` (any case) is NULL, a quoted one is the text.
    Raises ArrayTextError for anything else, such as explicit bounds
    (``[0:1]={1,2}``), which a list cannot keep.
    """
    items, end = _parse_level(text, _skip_space(text, 0), convert)
    if _skip_space(text, end) != len(text):
        raise ArrayTextError(f"text after the array's closing brace: {text[:60]!r}")
    return items


# The only characters the array format treats as space around elements
# (array_isspace); str.isspace() would also take '\x1f' or '\xa0', which
# PostgreSQL prints unquoted as element text.
_SPACE = " \t\n\r\v\f"


def _skip_space(text: str, pos: int) -> int:
    while pos < len(text) and text[pos] in _SPACE:
        pos += 1
    return pos


def _parse_level(text: str, pos: int, convert: Converter) -> tuple[list[Any], int]:
    if pos >= len(text) or text[pos] != "{":
        raise ArrayTextError(f"expected '{{' at character {pos} of {text[:60]!r}")
    items: list[Any] = []
    pos = _skip_space(text, pos + 1)
    if pos < len(text) and text[pos] == "}":
        return items, pos + 1
    while True:
        pos = _skip_space(text, pos)
        if pos >= len(text):
            raise ArrayTextError(f"unterminated array: {text[:60]!r}")
        char = text[pos]
        if char == "{":
            item, pos = _parse_level(text, pos, convert)
            items.append(item)
        elif char == '"':
            end = pos + 1
            while end < len(text) and text[end] != '"':
                end += 2 if text[end] == "\\" else 1
            if end >= len(text):
                raise ArrayTextError(f"unterminated quoted element: {text[:60]!r}")
            items.append(convert(_UNESCAPE.sub(r"\1", text[pos + 1 : end])))
            pos = end + 1
        else:
            end = pos
            while end < len(text) and text[end] not in ",}":
                end += 2 if text[end] == "\\" else 1
            raw = text[pos:end].rstrip(_SPACE)
            if not raw:
                raise ArrayTextError(f"bad element at character {pos} of {text[:60]!r}")
            unquoted = _UNESCAPE.sub(r"\1", raw)
            items.append(None if raw.upper() == "NULL" else convert(unquoted))
            pos = end
        pos = _skip_space(text, pos)
        if pos >= len(text):
            raise ArrayTextError(f"unterminated array: {text[:60]!r}")
        if text[pos] == "}":
            return items, pos + 1
        if text[pos] != ",":
            raise ArrayTextError(f"expected ',' or '}}' at character {pos} of {text[:60]!r}")
        pos += 1


def _array(type_name: str, element: Converter | None) -> Converter:
    convert = element or _keep

    def to_list(text: str) -> list[Any] | str:
        if text.startswith("["):
            return text  # explicit lower bounds: only the text keeps them
        try:
            return parse_array(text, convert)
        except ArrayTextError as error:
            raise UnmappableValue(type_name, text, str(error)) from None

    return to_list


def type_name(type_oid: int) -> str | None:
    """The SQL name of a type this module knows, None for others."""
    if type_oid in _SCALARS:
        return _SCALARS[type_oid][0]
    element = _ARRAYS.get(type_oid)
    return None if element is None else _SCALARS[element][0] + "[]"


def is_known(type_oid: int) -> bool:
    return type_oid in _SCALARS or type_oid in _ARRAYS


# The method itself: a C call, no Python frame per value.
_utf8: Callable[[bytes], str] = bytes.decode


def bytes_converter(type_oid: int) -> Callable[[bytes], Any]:
    """``converter(type_oid)`` (or the text itself) from the value's UTF-8 bytes.

    ``int`` and ``float`` read the bytes themselves, saving the decode: where
    they succeed the result is the text's (they may refuse what the text form
    accepts, such as non-ASCII digits, so a caller retries from the text then).
    """
    convert = converter(type_oid)
    if convert is None:
        return _utf8
    if convert is int or convert is _float:
        return float if convert is _float else int
    return lambda raw: convert(raw.decode())


def converter(type_oid: int) -> Converter | None:
    """The function from text to value for ``type_oid``; None when the text is the value.

    None both for text-like types and for types not known here; tell them
    apart with ``is_known``.
    """
    if type_oid in _SCALARS:
        return _SCALARS[type_oid][1]
    element = _ARRAYS.get(type_oid)
    if element is None:
        return None
    name, convert = _SCALARS[element]
    return _array(name + "[]", convert)
