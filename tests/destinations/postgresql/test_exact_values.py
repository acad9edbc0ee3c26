"""Decoded CDC values land exactly in real PostgreSQL column types, or are refused.

Every path is covered: execute_values (small batches), COPY into a stage
table (large batches), and the position-guarded staged path. A value is
written, read back, and compared equal and of the same type; a value a column
would change (round, truncate, reinterpret) is refused as permanent with the
column and the fix named, and the table is left untouched.
"""

from __future__ import annotations

import uuid
from collections.abc import Callable, Iterator
from datetime import UTC, date, datetime, time, timedelta, timezone
from decimal import Decimal
from typing import Any

import psycopg2.extras
import pytest

from destinations.errors import FailureKind, PermanentDestinationError
from destinations.postgresql.destination import PostgreSQLDestination
from tests.builders import upsert
from tests.destinations.postgresql.test_destination import create_table, rows

PATHS: dict[str, dict[str, Any]] = {
    "values": {"copy_threshold": 10**9},
    "copy": {"copy_threshold": 0},
    "guarded": {"position_guard": True},
}
GUARD_COLUMNS = ", _rosetta_commit bigint, _rosetta_seq bigint"

# column, type, value written, value read back (when psycopg2 reads it as another type)
EXACT: list[tuple[str, str, Any, Any]] = [
    ("big", "numeric", Decimal("12345678901234567890.123456789012345678"), None),
    ("scaled", "numeric(10,2)", Decimal("-1.50"), None),
    ("trail0", "numeric(10,2)", Decimal("7.100"), Decimal("7.10")),
    ("nan", "numeric", Decimal("NaN"), None),
    ("ts", "timestamp", datetime(2024, 2, 29, 23, 59, 59, 999999), None),
    ("ts_min", "timestamp", datetime(1, 1, 1, 0, 0, 0, 1), None),
    (
        "ts_utc",
        "timestamp",
        datetime(2024, 1, 2, 3, 4, 5, 6, tzinfo=UTC),
        datetime(2024, 1, 2, 3, 4, 5, 6),
    ),
    (
        "tstz",
        "timestamptz",
        datetime(2024, 1, 2, 3, 4, 5, 6, tzinfo=timezone(timedelta(hours=5, minutes=30))),
        None,
    ),
    (
        "tstz_naive",
        "timestamptz",
        datetime(2024, 1, 2, 3, 4, 5, 6),
        datetime(2024, 1, 2, 3, 4, 5, 6, tzinfo=UTC),
    ),
    ("d", "date", date(1970, 1, 1), None),
    ("d_min", "date", date(1, 1, 1), None),
    ("t", "time", time(23, 59, 59, 999999), None),
    ("ttz", "timetz", time(1, 2, 3, 4, tzinfo=timezone(timedelta(hours=-3))), None),
    ("ts3", "timestamp(3)", datetime(2024, 1, 2, 3, 4, 5, 123000), None),
    ("span", "interval", timedelta(days=-3, seconds=5, microseconds=1), None),
    ("span_big", "interval", timedelta(days=999999, microseconds=999999), None),
    ("b", "bytea", bytes(range(256)), None),
    ("b_hex", "bytea", "\\x00ff41", b"\x00\xffA"),
    ("u", "uuid", uuid.UUID("12345678-1234-5678-1234-567812345678"), None),
    ("doc", "jsonb", {"a": [1, 2.5, None, "x\ty", {"b": True}]}, None),
    ("doc_text", "json", '{"kept": "as text"}', {"kept": "as text"}),
    ("doc_list", "jsonb", [1, "two", None], None),
    ("doc_bool", "jsonb", True, None),
    # The JSON-lines source reads fractional numbers as Decimals: they stay numbers.
    (
        "doc_dec",
        "json",
        {"price": Decimal("1.50"), "big": [Decimal("12345678901234567890.5"), Decimal("-0")]},
        # psycopg2 reads json numbers as floats (json_text's own tests check the digits).
        {"price": 1.5, "big": [12345678901234567890.5, -0.0]},
    ),
    ("ints", "int[]", [1, None, -3], None),
    ("texts", "text[]", ["a,b", 'q"uote', "back\\slash", None, "", "NULL", "{x}", "tab\t"], None),
    ("nums", "numeric[]", [Decimal("1.10"), Decimal("-2"), None], None),
    ("grid", "int[]", [[1, 2], [3, 4]], None),
    ("stamps", "timestamp[]", [datetime(2024, 1, 2, 3, 4, 5, 6), None], None),
    ("days", "date[]", [date(2024, 1, 2)], None),
    ("flags", "boolean[]", [True, False, None], None),
    ("blobs", "bytea[]", [b"\x00\xff\\", None], None),
    ("empty", "text[]", [], None),
    ("bits", "bit(4)", "0101", None),
    ("varbits", "varbit", "10110", None),
    ("padded", "char(5)", "ab   ", None),  # a bare ::character cast would keep 'a'
    ("f", "float8", 0.1, None),
    ("f_inf", "float8", float("-inf"), None),
    ("flag", "boolean", False, None),
    ("n", "bigint", 2**63 - 1, None),
    ("s", "text", "żółw\\N\ttab", None),
]


@pytest.fixture
def make_destination(postgres_dsn: str) -> Iterator[Callable[..., PostgreSQLDestination]]:
    made: list[PostgreSQLDestination] = []

    def make(schema: str, **kwargs: Any) -> PostgreSQLDestination:
        destination = PostgreSQLDestination(
            "1", "PG-Exact", dsn=postgres_dsn, table_map={"public.src": (schema, "t")}, **kwargs
        )
        made.append(destination)
        return destination

    yield make
    for destination in made:
        destination.close()


def read_back(conn: Any, schema: str, columns: list[str]) -> list[tuple[Any, ...]]:
    psycopg2.extras.register_uuid(conn_or_curs=conn)
    found = rows(conn, schema, "t", ", ".join(columns))
    return [tuple(bytes(v) if isinstance(v, memoryview) else v for v in row) for row in found]


def normalised(value: Any) -> Any:
    """memoryviews inside arrays as bytes, so that they compare."""
    if isinstance(value, list):
        return [normalised(v) for v in value]
    return bytes(value) if isinstance(value, memoryview) else value


@pytest.mark.parametrize("path", PATHS)
def test_every_decoded_type_is_written_exactly(
    path: str, pg_conn: Any, pg_schema: str, make_destination: Callable[..., PostgreSQLDestination]
) -> None:
    options = PATHS[path]
    guard = GUARD_COLUMNS if options.get("position_guard") else ""
    definitions = ", ".join(f"{c} {t}" for c, t, _, _ in EXACT)
    create_table(pg_conn, pg_schema, "t", f"id int PRIMARY KEY, {definitions}{guard}")
    row = {c: v for c, _, v, _ in EXACT}
    # Twice: the insert, then the same values through the update of an existing row.
    make_destination(pg_schema, **options).write_batch("public.src", [upsert({"id": 1}, row, 1, 0)])
    make_destination(pg_schema, **options).write_batch(
        "public.src", [upsert({"id": 1}, row, 2, 0), upsert({"id": 2}, row, 2, 1)]
    )

    columns = [c for c, _, _, _ in EXACT]
    for found in read_back(pg_conn, pg_schema, columns):
        for (column, column_type, written, expected), value in zip(EXACT, found, strict=True):
            want = written if expected is None else expected
            value = normalised(value)
            if isinstance(want, Decimal) and want.is_nan():
                assert isinstance(value, Decimal) and value.is_nan(), column
                continue
            assert value == want, f"{column} {column_type}: wrote {written!r}, read {value!r}"
            assert type(value) is type(want), f"{column} {column_type}: {type(value)}"
            if isinstance(want, Decimal):  # the scale too, not only the value
                assert str(value) == str(want), column


# column type, value, words the refusal must contain
REFUSED: list[tuple[str, Any, tuple[str, ...]]] = [
    ("bytea", "AQID", ("column c is bytea", "text", "value.converter.schemas.enable=true")),
    ("numeric", "AeJA", ("column c is numeric", "not a decimal", "decimal.handling.mode=string")),
    ("numeric(10,2)", Decimal("1.234"), ("numeric(10,2)", "more than 2 decimal places")),
    ("numeric(10,2)", 0.125, ("numeric(10,2)", "more than 2 decimal places")),
    ("numeric(10,2)", "1.005", ("numeric(10,2)", "more than 2 decimal places")),
    ("numeric", True, ("column c is numeric", "boolean")),
    (
        "timestamp",
        1_700_000_000_000_000,
        ("column c is timestamp", "a number", "time.precision.mode"),
    ),
    ("date", 19724, ("column c is date", "a number", "value.converter.schemas.enable=true")),
    ("time", 3_600_000_000, ("column c is time", "a number", "time.precision.mode")),
    ("timestamptz", 1.5, ("column c is timestamp with time zone", "a number")),
    ("interval", 1_000_000, ("column c is interval", "interval.handling.mode=string")),
    (
        "timestamp",
        datetime(2024, 1, 2, 3, tzinfo=timezone(timedelta(hours=2))),
        ("offset", "timestamptz"),
    ),
    ("time", time(3, 4, tzinfo=UTC), ("column c is time without time zone", "offset", "timetz")),
    ("date", datetime(2024, 1, 2, 3, 4), ("column c is date", "time of day")),
    ("time", datetime(2024, 1, 2, 3, 4), ("column c is time", "a timestamp")),
    ("timestamp(3)", datetime(2024, 1, 2, 3, 4, 5, 123456), ("timestamp(3)", "fraction digits")),
    ("time(0)", time(3, 4, 5, 1), ("time(0)", "fraction digits")),
    ("text", b"\x01\x02", ("column c is text", "bytes", "bytea")),
]


@pytest.mark.parametrize("path", PATHS)
@pytest.mark.parametrize(("column_type", "value", "words"), REFUSED, ids=lambda x: repr(x)[:30])
def test_a_value_its_column_would_change_is_refused(
    path: str,
    column_type: str,
    value: Any,
    words: tuple[str, ...],
    pg_conn: Any,
    pg_schema: str,
    make_destination: Callable[..., PostgreSQLDestination],
) -> None:
    options = PATHS[path]
    guard = GUARD_COLUMNS if options.get("position_guard") else ""
    create_table(pg_conn, pg_schema, "t", f"id int PRIMARY KEY, c {column_type}{guard}")
    destination = make_destination(pg_schema, **options)

    with pytest.raises(PermanentDestinationError) as caught:
        destination.write_batch(
            "public.src", [upsert({"id": 1}, {"c": None}, 1), upsert({"id": 2}, {"c": value}, 2)]
        )

    for word in words:
        assert word in str(caught.value)
    assert destination.classify_error(caught.value).kind is FailureKind.PERMANENT
    assert rows(pg_conn, pg_schema, "t", "id") == []  # nothing of the batch was written
    # The row alone (as the engine retries it when isolating the poison) is refused
    # the same way, and the good row alone goes in.
    with pytest.raises(PermanentDestinationError):
        destination.write_batch("public.src", [upsert({"id": 2}, {"c": value}, 2)])
    destination.write_batch("public.src", [upsert({"id": 1}, {"c": None}, 1)])
    assert rows(pg_conn, pg_schema, "t", "id") == [(1,)]


def test_a_bytea_key_given_as_text_is_refused_for_a_delete_too(
    pg_conn: Any, pg_schema: str, make_destination: Callable[..., PostgreSQLDestination]
) -> None:
    from tests.builders import delete

    create_table(pg_conn, pg_schema, "t", "id bytea PRIMARY KEY, v int")
    destination = make_destination(pg_schema)
    with pytest.raises(PermanentDestinationError, match="column id is bytea"):
        destination.write_batch("public.src", [delete({"id": "AQID"}, 1)])
