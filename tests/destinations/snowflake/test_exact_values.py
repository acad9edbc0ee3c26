"""Decoded CDC values land exactly in Snowflake column types (fakesnow), or are refused.

Each value is written through the real connector, read back and compared
equal and of the same type (a VARIANT reads back as its JSON text, as from
Snowflake itself); a value its column would change is refused as permanent
with the column and the fix named, and nothing of the batch is written.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from datetime import UTC, date, datetime, time, timedelta, timezone
from decimal import Decimal
from typing import Any

import pytest

from destinations.errors import FailureKind, PermanentDestinationError
from destinations.snowflake.destination import SnowflakeDestination
from tests.builders import upsert
from tests.destinations.snowflake import test_destination as shared

# The Snowflake tests' fixtures: the shared fakesnow database, a fresh schema, destinations.
DATABASE, run = shared.DATABASE, shared.run
sf_admin, sf_schema, make_destination = shared.sf_admin, shared.sf_schema, shared.make_destination

# column, type, value written, value read back (when the connector reads another type)
EXACT: list[tuple[str, str, Any, Any]] = [
    ("N", "NUMBER(38,6)", Decimal("-12345678901234567890.123456"), None),
    ("SCALED", "NUMBER(10,2)", Decimal("7.100"), Decimal("7.10")),
    (
        "WHOLE",
        "NUMBER(38,0)",
        Decimal("123456789012345678"),
        123456789012345678,
    ),
    ("TN", "TIMESTAMP_NTZ", datetime(2024, 2, 29, 23, 59, 59, 999999), None),
    (
        "TZ",
        "TIMESTAMP_TZ",
        datetime(2024, 1, 2, 3, 4, 5, 6, tzinfo=timezone(timedelta(hours=5))),
        None,
    ),
    ("TL", "TIMESTAMP_LTZ", datetime(2024, 1, 2, 3, 4, 5, 6, tzinfo=UTC), None),
    ("D", "DATE", date(1970, 1, 1), None),
    ("TM", "TIME", time(23, 59, 59, 999999), None),
    ("B", "BINARY", bytes(range(256)), bytearray(range(256))),
    ("V", "VARIANT", {"a": [1, 2.5, None, "x"], "b": True}, None),
    # Numbers, not quoted strings (read back through json.loads: floats).
    (
        "VD",
        "VARIANT",
        {"price": Decimal("1.50"), "n": [Decimal("-2.25")]},
        {"price": 1.5, "n": [-2.25]},
    ),
    ("A", "ARRAY", [1, "two", None], None),
    ("O", "OBJECT", {"k": {"n": 1}}, None),
    ("BO", "BOOLEAN", False, None),
    ("F", "FLOAT", 0.1, None),
    ("S", "VARCHAR", "żółw\\N\t'", None),
    ("BITS", "VARCHAR", "0101", None),
    # A time of day with an offset (PostgreSQL's timetz) has no Snowflake type: its ISO text.
    (
        "TTZ",
        "VARCHAR",
        time(3, 4, 5, 6, tzinfo=timezone(timedelta(hours=-2, minutes=-30))),
        "03:04:05.000006-02:30",
    ),
    (
        "SPAN",
        "NUMBER(38,6)",
        timedelta(days=-3, seconds=5, microseconds=1),
        Decimal("-259194.999999"),
    ),
]


def test_every_decoded_type_is_written_exactly(
    sf_admin: Any, sf_schema: str, make_destination: Callable[..., SnowflakeDestination]
) -> None:
    definitions = ", ".join(f"{c} {t}" for c, t, _, _ in EXACT)
    run(sf_admin, f"CREATE TABLE {DATABASE}.{sf_schema}.T (ID INT, {definitions})")
    row = {c: v for c, _, v, _ in EXACT}
    destination = make_destination(sf_schema, table_map={"public.src": "T"})
    destination.write_batch("public.src", [upsert({"ID": 1}, row, 1)])
    # The update path (MERGE ... WHEN MATCHED) too.
    destination.write_batch("public.src", [upsert({"ID": 1}, row, 2), upsert({"ID": 2}, row, 3)])

    found = run(
        sf_admin, f"SELECT {', '.join(c for c, _, _, _ in EXACT)} FROM {DATABASE}.{sf_schema}.T"
    )
    assert len(found) == 2
    for values in found:
        for (column, column_type, written, expected), value in zip(EXACT, values, strict=True):
            want = written if expected is None else expected
            if column_type in ("VARIANT", "ARRAY", "OBJECT"):
                value = json.loads(value)
            assert value == want, f"{column} {column_type}: wrote {written!r}, read {value!r}"
            assert type(value) is type(want), f"{column} {column_type}: {type(value)}"
            if isinstance(want, Decimal):
                assert str(value) == str(want), column


REFUSED: list[tuple[str, Any, tuple[str, ...]]] = [
    ("BINARY", "AQID", ("column C is BINARY", "text", "value.converter.schemas.enable=true")),
    ("BINARY", "ABCD", ("column C is BINARY", "text")),  # valid hex: would land as other bytes
    (
        "NUMBER(38,0)",
        "AeJA",
        ("column C is NUMBER(38,0)", "not a decimal", "decimal.handling.mode=string"),
    ),
    ("NUMBER(10,2)", Decimal("1.234"), ("NUMBER(10,2)", "more than 2 decimal places")),
    ("NUMBER(38,0)", 1.5, ("NUMBER(38,0)", "more than 0 decimal places")),
    (
        "TIMESTAMP_NTZ",
        1_700_000_000,
        ("column C is TIMESTAMP_NTZ(9)", "a number", "time.precision.mode"),
    ),
    ("DATE", 19724, ("column C is DATE", "a number")),
    ("TIME", 3_600_000_000, ("column C is TIME(9)", "a number")),
    (
        "TIMESTAMP_NTZ",
        datetime(2024, 1, 2, 3, tzinfo=timezone(timedelta(hours=2))),
        ("offset", "TIMESTAMP_TZ"),
    ),
    (
        "TIME",
        time(3, 4, tzinfo=UTC),
        ("column C is TIME(9)", "Snowflake has no time with a time zone"),
    ),
    ("DATE", datetime(2024, 1, 2, 3, 4), ("column C is DATE", "time of day")),
    ("VARCHAR", b"\x01", ("column C is VARCHAR", "bytes", "BINARY")),
]


@pytest.mark.parametrize(("column_type", "value", "words"), REFUSED, ids=lambda x: repr(x)[:30])
def test_a_value_its_column_would_change_is_refused(
    column_type: str,
    value: Any,
    words: tuple[str, ...],
    sf_admin: Any,
    sf_schema: str,
    make_destination: Callable[..., SnowflakeDestination],
) -> None:
    run(sf_admin, f"CREATE TABLE {DATABASE}.{sf_schema}.T (ID INT, C {column_type})")
    destination = make_destination(sf_schema, table_map={"public.src": "T"})

    with pytest.raises(PermanentDestinationError) as caught:
        destination.write_batch(
            "public.src", [upsert({"ID": 1}, {"C": None}, 1), upsert({"ID": 2}, {"C": value}, 2)]
        )

    for word in words:
        assert word in str(caught.value)
    assert destination.classify_error(caught.value).kind is FailureKind.PERMANENT
    assert run(sf_admin, f"SELECT ID FROM {DATABASE}.{sf_schema}.T") == []
    destination.write_batch("public.src", [upsert({"ID": 1}, {"C": None}, 1)])
    assert run(sf_admin, f"SELECT ID FROM {DATABASE}.{sf_schema}.T") == [(1,)]
