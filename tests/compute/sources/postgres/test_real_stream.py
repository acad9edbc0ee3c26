"""Real pgoutput bytes from a wal_level=logical server: every mapped type decoded, then replayed.

The slot is read with psycopg2's LogicalReplicationConnection (decode=False),
the messages are parsed and decoded here, and the rows are written through
PostgreSQLDestination into a second server; both tables must then print the
same text, column by column.
"""

from __future__ import annotations

import logging
import uuid
from collections.abc import Callable
from datetime import date, datetime, time, timedelta, timezone
from decimal import Decimal
from typing import Any

import psycopg2
import pytest
from psycopg2 import sql

from compute.sources.postgres.row_decoder import ColumnValueError
from destinations.postgresql.destination import PostgreSQLDestination
from tests.compute.sources.postgres.replication import (
    LOGICAL_SETTINGS,
    change_records,
    create_slot,
    parse_all,
    read_slot,
)
from tests.servers import PostgresServer

COLUMNS = """
    id int PRIMARY KEY,
    i2 smallint, i4 integer, i8 bigint, num numeric, num_s numeric(12,2),
    f4 real, f8 double precision, b boolean,
    t text, vc varchar(20), bp char(5), nm name, ch "char", oid_ oid,
    ts timestamp, ts3 timestamp(3), tstz timestamptz, d date, tm time, tmtz timetz,
    iv interval, u uuid, j json, jb jsonb, by bytea, bt bit(4), vb varbit,
    inet_ inet, mac macaddr, mood_ mood,
    ai int[], at text[], an numeric[], ats timestamptz[], ab bool[], aby bytea[],
    a2 int[], ad date[], aiv interval[], au uuid[], aj jsonb[]
"""

ROW_1 = {
    "id": 1,
    "i2": -32768,
    "i4": 2147483647,
    "i8": -9223372036854775808,
    "num": "12345678901234567890.000000000123",
    "num_s": "-1.50",
    "f4": "1.1",
    "f8": "0.1",
    "b": True,
    "t": 'tab\there\nnew "q" \\ back é 😀 \r',
    "vc": "varchar",
    "bp": "ab",
    "nm": "a name",
    "ch": "x",
    "oid_": 4000000000,
    "ts": "2024-02-29 23:59:59.999999",
    "ts3": "2024-01-02 03:04:05.123",
    "tstz": "2024-06-30 12:00:00.5+02",
    "d": "2024-02-29",
    "tm": "23:59:59.999999",
    "tmtz": "12:34:56.789+05:30",
    "iv": "3 days 04:05:06.789",
    "u": "a0eebc99-9c0b-4ef8-bb6d-6bb9bd380a11",
    "j": '{"b": 1,  "a": [1, 2.50]}',
    "jb": '{"b": 1, "a": [1, 2.50]}',
    "by": "\\x00ff10",
    "bt": "1010",
    "vb": "001",
    "inet_": "192.168.0.1/24",
    "mac": "08:00:2b:01:02:03",
    "mood_": "happy",
    "ai": "{1,NULL,3}",
    "at": ["a b", "NULL", None, "", 'q"x', "{}", "back\\slash", "comma,", " pad "],
    "an": "{1.5,NaN,NULL,-Infinity}",
    "ats": '{"2024-01-01 00:00:00+00","2024-07-01 10:00:00.25+03"}',
    "ab": "{t,f,NULL}",
    "aby": '{"\\\\x00ff",NULL}',
    "a2": "{{1,2},{3,4}}",
    "ad": "{2024-01-01}",
    "aiv": '{"1 day","1 mon","-1 days +02:00:00"}',
    "au": "{a0eebc99-9c0b-4ef8-bb6d-6bb9bd380a11}",
    "aj": '{"{\\"k\\": [1, 2]}"}',
}

ROW_2 = {
    "id": 2,
    "num": "NaN",
    "f4": "Infinity",
    "f8": "-Infinity",
    "iv": "-1 days +02:00:00",
    "tstz": "1850-01-01 00:00:00+00",
    "tm": "00:00:00",
    "tmtz": "00:00:00-03:30",
    "ai": "{}",
    "a2": "[0:1]={7,8}",
    "t": "",
    "by": "\\x",
}

ROW_3 = {"id": 3, "num": "-Infinity", "f8": "NaN", "iv": "1 year 2 mons", "f4": "-0"}
ROW_4 = {"id": 4, "iv": "25:00:00", "num": "Infinity", "f8": "1e+300"}

# Values Python has no exact value for: each row is refused naming its column.
REFUSED = [
    {"id": 5, "ts": "infinity"},
    {"id": 6, "d": "0044-03-15 BC"},
    {"id": 7, "tm": "24:00:00"},
    {"id": 8, "tstz": "-infinity"},
]

KOLKATA = timezone(timedelta(hours=5, minutes=30))

EXPECTED_1 = {
    "id": 1,
    "i2": -32768,
    "i4": 2147483647,
    "i8": -9223372036854775808,
    "num": Decimal("12345678901234567890.000000000123"),
    "num_s": Decimal("-1.50"),
    "f4": 1.1,
    "f8": 0.1,
    "b": True,
    "t": 'tab\there\nnew "q" \\ back é 😀 \r',
    "vc": "varchar",
    "bp": "ab   ",
    "nm": "a name",
    "ch": "x",
    "oid_": 4000000000,
    "ts": datetime(2024, 2, 29, 23, 59, 59, 999999),
    "ts3": datetime(2024, 1, 2, 3, 4, 5, 123000),
    "tstz": datetime(2024, 6, 30, 15, 30, 0, 500000, tzinfo=KOLKATA),
    "d": date(2024, 2, 29),
    "tm": time(23, 59, 59, 999999),
    "tmtz": time(12, 34, 56, 789000, tzinfo=KOLKATA),
    "iv": timedelta(days=3, hours=4, minutes=5, seconds=6, microseconds=789000),
    "u": uuid.UUID("a0eebc99-9c0b-4ef8-bb6d-6bb9bd380a11"),
    "j": '{"b": 1,  "a": [1, 2.50]}',
    "jb": '{"a": [1, 2.50], "b": 1}',
    "by": b"\x00\xff\x10",
    "bt": "1010",
    "vb": "001",
    "inet_": "192.168.0.1/24",
    "mac": "08:00:2b:01:02:03",
    "mood_": "happy",
    "ai": [1, None, 3],
    "at": ["a b", "NULL", None, "", 'q"x', "{}", "back\\slash", "comma,", " pad "],
    "an": [Decimal("1.5"), Decimal("NaN"), None, Decimal("-Infinity")],
    "ats": [
        datetime(2024, 1, 1, 5, 30, tzinfo=KOLKATA),
        datetime(2024, 7, 1, 12, 30, 0, 250000, tzinfo=KOLKATA),
    ],
    "ab": [True, False, None],
    "aby": [b"\x00\xff", None],
    "a2": [[1, 2], [3, 4]],
    "ad": [date(2024, 1, 1)],
    "aiv": [timedelta(days=1), "1 mon", timedelta(days=-1, hours=2)],
    "au": [uuid.UUID("a0eebc99-9c0b-4ef8-bb6d-6bb9bd380a11")],
    "aj": ['{"k": [1, 2]}'],
}

# Kolkata's offset in 1850 was its local mean time, +05:53:28.
LMT = timezone(timedelta(hours=5, minutes=53, seconds=28))
EXPECTED_2 = {
    "num": Decimal("NaN"),
    "f4": float("inf"),
    "f8": float("-inf"),
    "iv": timedelta(days=-1, hours=2),
    "tstz": datetime(1850, 1, 1, 5, 53, 28, tzinfo=LMT),
    "tm": time(0, 0),
    "tmtz": time(0, 0, tzinfo=timezone(-timedelta(hours=3, minutes=30))),
    "ai": [],
    "a2": "[0:1]={7,8}",
    "t": "",
    "by": b"",
}
EXPECTED_3 = {
    "num": Decimal("-Infinity"),
    "f8": float("nan"),
    "iv": "1 year 2 mons",
    "f4": -0.0,
}
EXPECTED_4 = {"iv": "25:00:00", "num": Decimal("Infinity"), "f8": 1e300}


def _insert(cur: Any, table: sql.Composable, row: dict[str, Any]) -> None:
    cur.execute(
        sql.SQL("INSERT INTO {} ({}) VALUES ({})").format(
            table,
            sql.SQL(", ").join(map(sql.Identifier, row)),
            sql.SQL(", ").join(sql.Placeholder() * len(row)),
        ),
        list(row.values()),
    )


def _table_text(dsn: str, table: sql.Composable) -> list[dict[str, str | None]]:
    """Every column of every row as PostgreSQL prints it, in one fixed session setting."""
    conn = psycopg2.connect(dsn, options="-c TimeZone=UTC -c DateStyle=ISO -c extra_float_digits=3")
    try:
        with conn.cursor() as cur:
            cur.execute(sql.SQL("SELECT * FROM {} LIMIT 0").format(table))
            names = [d.name for d in cur.description]
            texts = sql.SQL(", ").join(sql.SQL("{}::text").format(sql.Identifier(n)) for n in names)
            cur.execute(sql.SQL("SELECT {} FROM {} ORDER BY 1").format(texts, table))
            return [dict(zip(names, row, strict=True)) for row in cur.fetchall()]
    finally:
        conn.close()


@pytest.fixture
def source(postgres_server_factory: Callable[..., PostgresServer]) -> PostgresServer:
    return postgres_server_factory(LOGICAL_SETTINGS)


def test_every_mapped_type_decodes_exactly_and_round_trips(
    source: PostgresServer,
    pg_conn: Any,
    pg_schema: str,
    postgres_dsn: str,
    caplog: pytest.LogCaptureFixture,
) -> None:
    conn = psycopg2.connect(source.dsn)
    conn.autocommit = True
    with conn.cursor() as cur:
        cur.execute("CREATE TYPE mood AS ENUM ('sad', 'happy')")
        cur.execute(f"CREATE TABLE every_type ({COLUMNS})")
        create_slot(conn, "s1", "p1")
        for row in (ROW_1, ROW_2, ROW_3, ROW_4, *REFUSED):
            _insert(cur, sql.Identifier("every_type"), row)
    conn.close()

    caplog.set_level(logging.WARNING, "compute.sources.postgres")
    payloads = read_slot(source.dsn, "s1", "p1", commits=4 + len(REFUSED), time_zone="Asia/Kolkata")
    refused: list[Exception] = []
    records = change_records(parse_all(payloads), on_error=refused.append)

    assert [r.key for r in records] == [{"id": 1}, {"id": 2}, {"id": 3}, {"id": 4}]
    rows = [r.after for r in records]
    assert rows[0] is not None
    assert rows[0].keys() == EXPECTED_1.keys()
    for column, expected in EXPECTED_1.items():
        # repr: the type shows (Decimal('1.5'), not '1.5'), and NaN equals itself
        assert repr(rows[0][column]) == repr(expected), column
    assert rows[0]["tstz"].utcoffset() == KOLKATA.utcoffset(None)
    for row, expected_row in zip(rows[1:], (EXPECTED_2, EXPECTED_3, EXPECTED_4), strict=True):
        assert row is not None
        for column, expected in expected_row.items():
            assert repr(row[column]) == repr(expected), column
        assert all(v is None for c, v in row.items() if c not in expected_row and c != "id")
    assert [(type(e), e.column, e.text) for e in refused] == [  # type: ignore[attr-defined]
        (ColumnValueError, "ts", "infinity"),
        (ColumnValueError, "d", "0044-03-15 BC"),
        (ColumnValueError, "tm", "24:00:00"),
        (ColumnValueError, "tstz", "-infinity"),
    ]
    assert "every_type.ts" in str(refused[0]) and "infinity" in str(refused[0])
    unknown = [r.getMessage() for r in caplog.records if "without a mapping" in r.getMessage()]
    assert len(unknown) == 1 and "table=public.every_type column=mood_" in unknown[0]

    target = sql.Identifier(pg_schema, "every_type")
    with pg_conn.cursor() as cur:
        cur.execute(
            sql.SQL("CREATE TYPE {} AS ENUM ('sad', 'happy')").format(
                sql.Identifier(pg_schema, "mood")
            )
        )
        cur.execute(sql.SQL("SET search_path TO {}, public").format(sql.Identifier(pg_schema)))
        cur.execute(sql.SQL("CREATE TABLE {} (" + COLUMNS + ")").format(target))
        cur.execute("SET search_path TO DEFAULT")
    for copy_threshold in (1, 1000):  # COPY and VALUES paths alike
        with pg_conn.cursor() as cur:
            cur.execute(sql.SQL("TRUNCATE {}").format(target))
        destination = PostgreSQLDestination(
            "d1",
            "pg",
            postgres_dsn,
            table_map={"public.every_type": f"{pg_schema}.every_type"},
            copy_threshold=copy_threshold,
        )
        try:
            destination.write_batch("public.every_type", records)
        finally:
            destination.close()
        source_text = [
            r for r in _table_text(source.dsn, sql.Identifier("every_type")) if r["id"] in "1234"
        ]
        got_text = _table_text(postgres_dsn, target)
        assert len(got_text) == len(source_text) == 4
        for got_row, source_row in zip(got_text, source_text, strict=True):
            differ = [(c, v, source_row[c]) for c, v in got_row.items() if v != source_row[c]]
            assert differ == [], f"row {source_row['id']}, copy_threshold={copy_threshold}"


HOSTILE = {
    **LOGICAL_SETTINGS,
    "DateStyle": "'SQL, DMY'",
    "IntervalStyle": "sql_standard",
    "bytea_output": "escape",
    "extra_float_digits": "0",
    "TimeZone": "'America/St_Johns'",
}


def test_the_session_options_override_the_servers_output_styles(
    postgres_server_factory: Callable[..., PostgresServer],
) -> None:
    server = postgres_server_factory(HOSTILE)
    conn = psycopg2.connect(server.dsn)
    conn.autocommit = True
    with conn.cursor() as cur:
        cur.execute("CREATE TABLE t (id int PRIMARY KEY, ts timestamptz, f float8, b bytea)")
        create_slot(conn, "s1", "p1")
        cur.execute(
            "INSERT INTO t VALUES "
            "(1, '2024-03-04 05:06:07.5+00', 0.1::float8 + 0.2::float8, '\\x00ff')"
        )
    conn.close()
    newfoundland = timezone(-timedelta(hours=3, minutes=30))

    (record,) = change_records(
        parse_all(read_slot(server.dsn, "s1", "p1", commits=1, time_zone=None))
    )
    assert record.after == {
        "id": 1,
        "ts": datetime(2024, 3, 4, 1, 36, 7, 500000, tzinfo=newfoundland),
        "f": 0.30000000000000004,  # all the digits, though extra_float_digits is 0
        "b": b"\x00\xff",
    }
    assert record.after["ts"].utcoffset() == newfoundland.utcoffset(None)
    # Without them the server's own DateStyle is refused, never misread.
    refused: list[Exception] = []
    change_records(
        parse_all(read_slot(server.dsn, "s1", "p1", commits=1, session=False, time_zone=None)),
        on_error=refused.append,
    )
    assert len(refused) == 1 and "DateStyle=ISO" in str(refused[0])


def test_text_of_a_latin1_database_arrives_as_utf8(
    postgres_server_factory: Callable[..., PostgresServer],
) -> None:
    server = postgres_server_factory(LOGICAL_SETTINGS)
    conn = psycopg2.connect(server.dsn)
    conn.autocommit = True
    with conn.cursor() as cur:
        cur.execute(
            "CREATE DATABASE latin ENCODING 'LATIN1' LC_COLLATE 'C' LC_CTYPE 'C' TEMPLATE template0"
        )
    conn.close()
    dsn = server.dsn.replace("dbname=postgres", "dbname=latin")
    conn = psycopg2.connect(dsn)
    conn.autocommit = True
    with conn.cursor() as cur:
        cur.execute("CREATE TABLE t (id int PRIMARY KEY, name text)")
        create_slot(conn, "s1", "p1")
        cur.execute("INSERT INTO t VALUES (1, 'Crème brûlée ÿ')")
    conn.close()
    (record,) = change_records(parse_all(read_slot(dsn, "s1", "p1", commits=1)))
    assert record.after == {"id": 1, "name": "Crème brûlée ÿ"}
