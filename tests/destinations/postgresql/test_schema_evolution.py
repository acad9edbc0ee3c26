"""schema_evolution on a real PostgreSQL: a missing table created, a new column added,
nothing else changed on its own, and "none" refusing to start without the table."""

from __future__ import annotations

import threading
from datetime import UTC, date, datetime
from decimal import Decimal
from typing import Any
from uuid import UUID

import pytest

from config.errors import ConfigError
from destinations.errors import FailureKind
from destinations.postgresql.destination import PostgreSQLDestination
from destinations.records import ChangeRecord, Operation, SourcePosition
from tests.destinations.postgresql.test_destination import create_table, rows

ROW = {
    "id": 1,
    "amount": Decimal("12.50"),
    "name": "ann",
    "paid_at": datetime(2026, 1, 2, 3, 4, 5, 6, tzinfo=UTC),
    "seen_at": datetime(2026, 1, 2, 3, 4, 5),
    "born": date(1990, 5, 6),
    "ref": UUID("12345678-1234-5678-1234-567812345678"),
    "doc": {"a": [1, 2]},
    "blob": b"\x00\xff",
    "active": True,
    "ratio": 0.25,
    "note": None,
}


def upsert(key: int, commit: int, **row: Any) -> ChangeRecord:
    return ChangeRecord(
        "public.accounts",
        Operation.INSERT,
        {"id": key},
        {**ROW, "id": key, **row},
        SourcePosition(commit),
    )


def column_types(conn: Any, schema: str, table: str) -> dict[str, str]:
    with conn.cursor() as cur:
        cur.execute(
            "SELECT attname, format_type(atttypid, atttypmod) FROM pg_attribute "
            "WHERE attrelid = %s::regclass AND attnum > 0 AND NOT attisdropped ORDER BY attnum",
            (f"{schema}.{table}",),
        )
        return dict(cur.fetchall())


def primary_key(conn: Any, schema: str, table: str) -> list[str]:
    with conn.cursor() as cur:
        cur.execute(
            "SELECT a.attname FROM pg_index i JOIN pg_attribute a ON a.attrelid = i.indrelid "
            "AND a.attnum = ANY(i.indkey) WHERE i.indrelid = %s::regclass AND i.indisprimary",
            (f"{schema}.{table}",),
        )
        return [r[0] for r in cur.fetchall()]


def failure_of(destination: PostgreSQLDestination, records: list[ChangeRecord]) -> Any:
    """How the destination classifies the error ``records`` fail with; closes it."""
    try:
        with pytest.raises(Exception) as caught:  # noqa: B017 - psycopg2's own classes
            destination.write_batch("public.accounts", records)
        return destination.classify_error(caught.value)
    finally:
        destination.close()


def make(dsn: str, schema: str, **options: Any) -> PostgreSQLDestination:
    return PostgreSQLDestination(
        "1",
        "PG",
        dsn,
        table_map={"public.accounts": f"{schema}.accounts", "public.log": f"{schema}.log"},
        **options,
    )


@pytest.mark.parametrize("guard", [False, True])
def test_basic_creates_the_missing_table_typed_from_the_values(
    postgres_dsn: str, pg_conn: Any, pg_schema: str, guard: bool
) -> None:
    destination = make(postgres_dsn, pg_schema, schema_evolution="basic", position_guard=guard)
    try:
        assert destination.write_batch("public.accounts", [upsert(1, 10), upsert(2, 11)]) == 2
    finally:
        destination.close()
    expected = {
        "id": "bigint",
        "amount": "numeric",
        "name": "text",
        "paid_at": "timestamp with time zone",
        "seen_at": "timestamp without time zone",
        "born": "date",
        "ref": "uuid",
        "doc": "jsonb",
        "blob": "bytea",
        "active": "boolean",
        "ratio": "double precision",
        "note": "text",
    }
    if guard:
        expected |= {"_rosetta_commit": "bigint", "_rosetta_seq": "bigint"}
    assert column_types(pg_conn, pg_schema, "accounts") == expected
    assert primary_key(pg_conn, pg_schema, "accounts") == ["id"]
    landed = rows(pg_conn, pg_schema, "accounts", ", ".join(ROW))
    # psycopg2 reads bytea back as a memoryview and uuid as text.
    read_back = [[bytes(v) if isinstance(v, memoryview) else v for v in row] for row in landed]
    written = [
        [str(v) if isinstance(v, UUID) else v for v in {**ROW, "id": k}.values()] for k in (1, 2)
    ]
    assert read_back == written


def test_basic_adds_a_new_column_nullable_and_leaves_old_rows_alone(
    postgres_dsn: str, pg_conn: Any, pg_schema: str
) -> None:
    create_table(pg_conn, pg_schema, "accounts", "id int PRIMARY KEY, name text NOT NULL")
    destination = make(postgres_dsn, pg_schema, schema_evolution="basic")
    try:
        first = ChangeRecord(
            "public.accounts",
            Operation.INSERT,
            {"id": 1},
            {"id": 1, "name": "a"},
            SourcePosition(1),
        )
        destination.write_batch("public.accounts", [first])
        widened = first._replace(
            key={"id": 2}, after={"id": 2, "name": "b", "tier": 3}, position=SourcePosition(2)
        )
        destination.write_batch("public.accounts", [widened])
        destination.write_batch("public.accounts", [widened])  # delivered again: no new DDL
    finally:
        destination.close()
    assert column_types(pg_conn, pg_schema, "accounts") == {
        "id": "integer",
        "name": "text",
        "tier": "bigint",
    }
    with pg_conn.cursor() as cur:
        cur.execute(
            "SELECT attnotnull FROM pg_attribute WHERE attrelid = %s::regclass "
            "AND attname = 'tier'",
            (f"{pg_schema}.accounts",),
        )
        assert cur.fetchone() == (False,)
    assert rows(pg_conn, pg_schema, "accounts") == [(1, "a", None), (2, "b", 3)]


def test_the_sources_own_types_win_over_the_values(
    postgres_dsn: str, pg_conn: Any, pg_schema: str
) -> None:
    destination = make(postgres_dsn, pg_schema, schema_evolution="basic")
    asked: list[str] = []

    def source_types(table: str) -> dict[str, str]:
        asked.append(table)
        return {
            "id": "integer",
            "amount": "numeric(12,2)",
            "name": "character varying(20)",
            "doc": "jsonb",
            "tags": "text[]",
        }

    destination.source_types = source_types
    change = ChangeRecord(
        "public.accounts",
        Operation.INSERT,
        {"id": 7},
        {"id": 7, "amount": Decimal("3.10"), "name": "x", "doc": '{"k": 1}', "tags": ["a", "b"]},
        SourcePosition(1),
    )
    try:
        destination.write_batch("public.accounts", [change])
        # Later batches with the same columns ask the source nothing (a connection each).
        destination.write_batch("public.accounts", [change._replace(position=SourcePosition(2))])
        destination.write_batch("public.accounts", [change._replace(position=SourcePosition(3))])
    finally:
        destination.close()
    assert asked == ["public.accounts"]
    assert column_types(pg_conn, pg_schema, "accounts") == {
        "id": "integer",
        "amount": "numeric(12,2)",
        "name": "character varying(20)",
        "doc": "jsonb",
        "tags": "text[]",
    }
    assert rows(pg_conn, pg_schema, "accounts") == [(7, Decimal("3.10"), "x", {"k": 1}, ["a", "b"])]


def test_a_keyless_table_is_created_append_only_and_a_replay_adds_nothing(
    postgres_dsn: str, pg_conn: Any, pg_schema: str
) -> None:
    destination = make(postgres_dsn, pg_schema, schema_evolution="basic")
    batch = [
        ChangeRecord("public.log", Operation.INSERT, {}, {"n": n}, SourcePosition(5, n))
        for n in range(3)
    ]
    try:
        destination.write_batch("public.log", batch)
        destination.write_batch("public.log", batch)
    finally:
        destination.close()
    assert rows(pg_conn, pg_schema, "log", "n, _rosetta_commit, _rosetta_seq") == [
        (0, 5, 0),
        (1, 5, 1),
        (2, 5, 2),
    ]


def test_a_type_change_is_not_followed_the_change_is_parked_with_the_reason(
    postgres_dsn: str, pg_conn: Any, pg_schema: str
) -> None:
    create_table(pg_conn, pg_schema, "accounts", "id int PRIMARY KEY, qty int")
    destination = make(postgres_dsn, pg_schema, schema_evolution="basic")
    change = ChangeRecord(
        "public.accounts",
        Operation.INSERT,
        {"id": 1},
        {"id": 1, "qty": "many"},
        SourcePosition(1),
    )
    failure = failure_of(destination, [change])
    assert failure.kind is FailureKind.PERMANENT
    assert "integer" in failure.message and "many" in failure.message
    assert column_types(pg_conn, pg_schema, "accounts") == {"id": "integer", "qty": "integer"}


def test_a_column_dropped_at_the_source_that_the_target_requires_parks_naming_it(
    postgres_dsn: str, pg_conn: Any, pg_schema: str
) -> None:
    create_table(pg_conn, pg_schema, "accounts", "id int PRIMARY KEY, region text NOT NULL")
    destination = make(postgres_dsn, pg_schema, schema_evolution="basic")
    change = ChangeRecord(
        "public.accounts", Operation.INSERT, {"id": 1}, {"id": 1}, SourcePosition(1)
    )
    failure = failure_of(destination, [change])
    assert failure.kind is FailureKind.PERMANENT
    assert '"region"' in failure.message and "not-null" in failure.message


def test_a_failed_batch_takes_its_ddl_back_with_it(
    postgres_dsn: str, pg_conn: Any, pg_schema: str
) -> None:
    """The table is created in the batch's transaction: a batch that fails leaves no table."""
    destination = make(postgres_dsn, pg_schema, schema_evolution="basic")
    bad = [upsert(1, 1), upsert(2, 2, name="a\x00b")]  # text cannot hold a NUL
    try:
        with pytest.raises(ValueError, match="NUL") as caught:
            destination.write_batch("public.accounts", bad)
        assert destination.classify_error(caught.value).kind is FailureKind.PERMANENT
    finally:
        destination.close()
    with pg_conn.cursor() as cur:
        cur.execute("SELECT to_regclass(%s)", (f"{pg_schema}.accounts",))
        assert cur.fetchone() == (None,)


def test_two_writers_creating_the_same_table_at_once_both_land(
    postgres_dsn: str, pg_conn: Any, pg_schema: str
) -> None:
    writers = [make(postgres_dsn, pg_schema, schema_evolution="basic") for _ in range(4)]
    errors: list[BaseException] = []
    start = threading.Barrier(len(writers))

    def write(index: int) -> None:
        try:
            start.wait()
            writers[index].write_batch("public.accounts", [upsert(index, index)])
        except BaseException as error:  # noqa: BLE001 - reported below
            errors.append(error)

    threads = [threading.Thread(target=write, args=(i,)) for i in range(len(writers))]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(30)
    for writer in writers:
        writer.close()
    assert errors == []
    assert [r[0] for r in rows(pg_conn, pg_schema, "accounts", "id")] == [0, 1, 2, 3]


def test_none_leaves_the_table_alone_and_holds_its_changes(
    postgres_dsn: str, pg_conn: Any, pg_schema: str
) -> None:
    destination = make(postgres_dsn, pg_schema)
    failure = failure_of(destination, [upsert(1, 1)])
    assert failure.kind is FailureKind.TABLE
    assert "does not exist" in failure.message


@pytest.mark.parametrize("mode", ["none", "basic"])
def test_start_up_check_of_a_missing_table(postgres_dsn: str, pg_schema: str, mode: str) -> None:
    destination = make(postgres_dsn, pg_schema, schema_evolution=mode)
    try:
        problems = destination.check_tables({"public.accounts": ("id",)})
    finally:
        destination.close()
    if mode == "basic":
        assert problems == []
    else:
        assert problems == [
            f"{destination}: table public.accounts -> {pg_schema}.accounts: the target table "
            "does not exist; fix: create it (with a primary key on the source's key columns), "
            'or set schema_evolution = "basic" on the destination to have it created from the '
            "first changes"
        ]


def test_an_unknown_mode_is_refused_naming_the_accepted_ones(postgres_dsn: str) -> None:
    with pytest.raises(ConfigError) as caught:
        PostgreSQLDestination("9", "PG", postgres_dsn, schema_evolution="full")
    assert str(caught.value).endswith(
        "destination 9: schema_evolution must be one of 'none', 'basic', got 'full'"
    ) or "schema_evolution must be one of 'none', 'basic', got 'full'" in str(caught.value)


def truncate(commit: int) -> ChangeRecord:
    return ChangeRecord("public.accounts", Operation.TRUNCATE, {}, None, SourcePosition(commit))


@pytest.mark.parametrize("guard", [False, True])
def test_a_truncate_of_a_target_not_created_yet_is_done_already(
    postgres_dsn: str, pg_conn: Any, pg_schema: str, guard: bool
) -> None:
    """A truncate at the head of a new table's changes (pgbench -i, a copy taken again) must
    not hold the very inserts that would create the table: there is nothing to empty."""
    destination = make(postgres_dsn, pg_schema, schema_evolution="basic", position_guard=guard)
    try:
        assert destination.write_batch("public.accounts", [truncate(1)]) == 1
        with pg_conn.cursor() as cur:
            cur.execute("SELECT to_regclass(%s)", (f"{pg_schema}.accounts",))
            assert cur.fetchone() == (None,)  # nothing created from nothing
        batch = [truncate(2), upsert(1, 3), truncate(4), upsert(2, 5, name="b")]
        assert destination.write_batch("public.accounts", batch) == 4
    finally:
        destination.close()
    assert rows(pg_conn, pg_schema, "accounts", "id, name") == [(2, "b")]


def test_with_none_a_truncate_of_a_missing_target_holds_the_table(
    postgres_dsn: str, pg_schema: str
) -> None:
    destination = make(postgres_dsn, pg_schema)
    assert failure_of(destination, [truncate(1), upsert(1, 2)]).kind is FailureKind.TABLE
