"""PostgreSQL text output, as the documentation shows it, mapped to exact values or refused."""

from __future__ import annotations

import uuid
from datetime import date, datetime, time, timedelta, timezone
from decimal import Decimal
from typing import Any

import pytest

from compute.sources.postgres.pg_types import (
    ArrayTextError,
    UnmappableValue,
    converter,
    is_known,
    parse_array,
    session_options,
    type_name,
)
from compute.sources.postgres.pgoutput import UNCHANGED, Column, PgOutputError, Relation
from compute.sources.postgres.row_decoder import ColumnValueError, RowDecoder

INT4, TEXT, NUMERIC, INTERVAL, BYTEA, TIMESTAMP, TIMESTAMPTZ, DATE, TIME = (
    23,
    25,
    1700,
    1186,
    17,
    1114,
    1184,
    1082,
    1083,
)


def convert(type_oid: int, text: str) -> Any:
    function = converter(type_oid)
    assert function is not None
    return function(text)


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("00:00:00", timedelta(0)),
        ("1 day", timedelta(days=1)),
        (
            "3 days 04:05:06.789",
            timedelta(days=3, hours=4, minutes=5, seconds=6, microseconds=789000),
        ),
        ("-1 days +02:00:00", timedelta(days=-1, hours=2)),
        ("-7 days", timedelta(days=-7)),
        ("23:59:59.999999", timedelta(hours=23, minutes=59, seconds=59, microseconds=999999)),
        # Kept as text: a timedelta would read back as another interval.
        ("1 mon", "1 mon"),
        ("1 year 2 mons 3 days", "1 year 2 mons 3 days"),
        ("25:00:00", "25:00:00"),
        ("-00:00:01", "-00:00:01"),
        ("1 day -01:00:00", "1 day -01:00:00"),
        # Other IntervalStyles stay text, which PostgreSQL reads in any style.
        ("P1D", "P1D"),
        ("@ 1 day", "@ 1 day"),
        ("1 0:00:00", "1 0:00:00"),
    ],
)
def test_an_interval_is_a_timedelta_only_when_it_reads_back_identical(
    text: str, expected: timedelta | str
) -> None:
    got = convert(INTERVAL, text)
    assert (got, type(got)) == (expected, type(expected))


@pytest.mark.parametrize(
    ("type_oid", "text", "expected"),
    [
        (16, "t", True),
        (16, "f", False),
        (20, "-9223372036854775808", -(2**63)),
        (NUMERIC, "1.50", Decimal("1.50")),
        (NUMERIC, "NaN", Decimal("NaN")),
        (NUMERIC, "-Infinity", Decimal("-Infinity")),
        (701, "1e+300", 1e300),
        (700, "-Infinity", float("-inf")),
        (BYTEA, "\\x00ff", b"\x00\xff"),
        (BYTEA, "a\\000\\\\b\\377", b"a\x00\\b\xff"),  # bytea_output = escape
        (TIMESTAMP, "2024-02-29 23:59:59.5", datetime(2024, 2, 29, 23, 59, 59, 500000)),
        (
            TIMESTAMPTZ,
            "1850-01-01 05:53:28+05:53:28",
            datetime(1850, 1, 1, 5, 53, 28, tzinfo=timezone(timedelta(seconds=21208))),
        ),
        (DATE, "0001-01-01", date(1, 1, 1)),
        (TIME, "00:00:00.000001", time(0, 0, 0, 1)),
        (1266, "12:00:00-03:30", time(12, tzinfo=timezone(-timedelta(hours=3, minutes=30)))),
        (
            2950,
            "a0eebc99-9c0b-4ef8-bb6d-6bb9bd380a11",
            uuid.UUID(int=0xA0EEBC999C0B4EF8BB6D6BB9BD380A11),
        ),
        (1007, "{{1,NULL},{3,4}}", [[1, None], [3, 4]]),
        (1007, "[0:1]={7,8}", "[0:1]={7,8}"),  # explicit bounds: the text keeps them
        (1009, '{"a \\"q\\"",NULL,"NULL",""}', ['a "q"', None, "NULL", ""]),
    ],
)
def test_documented_texts_map_to_exact_values(type_oid: int, text: str, expected: Any) -> None:
    assert repr(convert(type_oid, text)) == repr(expected)


@pytest.mark.parametrize(
    ("type_oid", "text", "says"),
    [
        (TIMESTAMP, "infinity", "years 1 to 9999, no infinity"),
        (TIMESTAMPTZ, "-infinity", "no infinity"),
        (DATE, "0044-03-15 BC", "years 1 to 9999"),
        (TIMESTAMP, "10000-01-01 00:00:00", "years 1 to 9999"),
        (TIME, "24:00:00", "24:00:00"),
        (1266, "24:00:00+00", "24:00:00"),
        (TIMESTAMP, "Tue Jan 02 03:04:05 2024", "DateStyle=ISO"),
        (16, "yes", "expected 't' or 'f'"),
        (1007, "{1,2", "unterminated"),
        (1007, "{1}x", "after the array"),
    ],
)
def test_values_python_cannot_hold_are_refused(type_oid: int, text: str, says: str) -> None:
    with pytest.raises(UnmappableValue, match=says) as caught:
        convert(type_oid, text)
    assert caught.value.text == text


def test_the_array_parser_reads_input_spacing_and_escapes() -> None:
    assert parse_array(' { 1 , "a b" , null , {x} } ') == ["1", "a b", None, ["x"]]
    assert parse_array('{a\\,b,c\\"}') == ["a,b", 'c"']
    assert parse_array("{}") == []
    for bad in ("", "1,2", '{"a}', "{,}", "{a b c"):
        with pytest.raises(ArrayTextError):
            parse_array(bad)


def test_text_like_and_unknown_types_keep_their_text() -> None:
    for oid in (TEXT, 1043, 1042, 114, 3802, 1560, 1562, 869):
        assert converter(oid) is None and is_known(oid)
    assert converter(16385) is None and not is_known(16385)
    assert type_name(1231) == "numeric[]" and type_name(16385) is None


def test_session_options_fix_the_output_styles_the_converters_read() -> None:
    assert session_options() == (
        "-c client_encoding=UTF8 -c DateStyle=ISO -c IntervalStyle=postgres "
        "-c extra_float_digits=3 -c bytea_output=hex"
    )


RELATION = Relation(
    9,
    "public",
    "t",
    "d",
    (
        Column("id", INT4, -1, True),
        Column("doc", TEXT, -1, False),
        Column("at", TIMESTAMP, -1, False),
    ),
)


def test_a_row_names_unchanged_columns_and_never_sets_them_to_none() -> None:
    decoder = RowDecoder(RELATION)
    row = decoder.decode(("1", UNCHANGED, None))
    assert row.values == {"id": 1, "at": None}
    assert row.unchanged == ("doc",)
    assert decoder.key(("1", None, None)) == {"id": 1}


def test_a_bad_value_names_table_column_and_type() -> None:
    decoder = RowDecoder(RELATION)
    with pytest.raises(ColumnValueError, match=r"public\.t\.at: timestamp value 'infinity'"):
        decoder.decode(("1", "x", "infinity"))
    with pytest.raises(ColumnValueError, match=r"public\.t\.id: integer value 'x'.*not valid"):
        decoder.decode(("x", "x", None))
    with pytest.raises(PgOutputError, match="a tuple of 2 columns for public.t"):
        decoder.decode(("1", "x"))
    with pytest.raises(PgOutputError, match="key column sent as unchanged"):
        decoder.key((UNCHANGED, None, None))
