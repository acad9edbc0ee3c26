"""Truncates under the position guard: no older change brings a truncated row back."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest
from psycopg2 import sql

from destinations.postgresql.destination import PostgreSQLDestination
from destinations.postgresql.truncate_watermark import TRUNCATES_TABLE
from destinations.records import ChangeRecord, Operation, SourcePosition
from tests.destinations.postgresql.test_destination import create_table, rows
from tests.destinations.postgresql.test_ordered_changes import _table, move, truncate, upsert


def delete(id_: int, commit: int) -> ChangeRecord:
    return ChangeRecord("public.docs", Operation.DELETE, {"id": id_}, None, SourcePosition(commit))


@pytest.fixture
def guarded(postgres_dsn: str, pg_conn: Any, pg_schema: str) -> Iterator[PostgreSQLDestination]:
    _table(pg_conn, pg_schema)
    made = PostgreSQLDestination(
        "1", "PG", postgres_dsn, table_map={"public.docs": f"{pg_schema}.docs"}, position_guard=True
    )
    yield made
    made.close()


def _ids(pg_conn: Any, pg_schema: str) -> list[tuple[Any, ...]]:
    return rows(pg_conn, pg_schema, "docs", "id, title")


def _watermark(pg_conn: Any, pg_schema: str) -> list[tuple[Any, ...]]:
    with pg_conn.cursor() as cur:
        cur.execute(
            sql.SQL("SELECT table_name, _rosetta_commit, _rosetta_seq FROM {}").format(
                sql.Identifier(pg_schema, TRUNCATES_TABLE)
            )
        )
        return cur.fetchall()


def test_an_insert_older_than_an_applied_truncate_stays_out(
    guarded: PostgreSQLDestination, pg_conn: Any, pg_schema: str
) -> None:
    guarded.write_batch("public.docs", [upsert(1, 10, title="a"), upsert(2, 11, title="b")])
    guarded.write_batch("public.docs", [truncate(20)])
    assert _ids(pg_conn, pg_schema) == []
    assert _watermark(pg_conn, pg_schema) == [("docs", 20, 0)]
    # The p10 insert replayed later (a re-delivery, a parked change replayed by hand).
    guarded.write_batch("public.docs", [upsert(1, 10, title="a")])
    guarded.write_batch("public.docs", [upsert(2, 11, title="b"), move(2, 3, 12, title="m")])
    assert _ids(pg_conn, pg_schema) == []
    # A change newer than the truncate is applied as usual.
    guarded.write_batch("public.docs", [upsert(1, 21, title="new")])
    assert _ids(pg_conn, pg_schema) == [(1, "new")]


def test_an_older_truncate_after_newer_rows_keeps_them(
    guarded: PostgreSQLDestination, pg_conn: Any, pg_schema: str
) -> None:
    """Out of order: the truncate at 20 arrives after a change at 30 was applied.

    The source had row 1 (10) truncated at 20, then row 2 written at 30: the
    table must end with row 2 alone, as if the truncate had come in order.
    """
    guarded.write_batch("public.docs", [upsert(1, 10, title="old")])
    guarded.write_batch("public.docs", [upsert(2, 30, title="newer")])
    guarded.write_batch("public.docs", [truncate(20)])
    assert _ids(pg_conn, pg_schema) == [(2, "newer")]
    assert _watermark(pg_conn, pg_schema) == [("docs", 20, 0)]
    guarded.write_batch("public.docs", [upsert(1, 10, title="old")])  # replayed: stays out
    assert _ids(pg_conn, pg_schema) == [(2, "newer")]


def test_a_truncate_twice_or_an_older_one_erases_nothing_newer(
    guarded: PostgreSQLDestination, pg_conn: Any, pg_schema: str
) -> None:
    guarded.write_batch("public.docs", [upsert(1, 10, title="a"), truncate(20)])
    guarded.write_batch("public.docs", [upsert(2, 25, title="b")])
    guarded.write_batch("public.docs", [truncate(20)])  # delivered again
    assert _ids(pg_conn, pg_schema) == [(2, "b")]
    guarded.write_batch("public.docs", [truncate(15)])  # older than the watermark
    assert _ids(pg_conn, pg_schema) == [(2, "b")]
    assert _watermark(pg_conn, pg_schema) == [("docs", 20, 0)]
    guarded.write_batch("public.docs", [truncate(40)])
    assert _ids(pg_conn, pg_schema) == []
    assert _watermark(pg_conn, pg_schema) == [("docs", 40, 0)]


def test_a_truncate_clears_the_tombstones_older_than_it(
    guarded: PostgreSQLDestination, pg_conn: Any, pg_schema: str
) -> None:
    guarded.write_batch("public.docs", [upsert(i, 10, title="x") for i in (1, 2, 3)])
    guarded.write_batch("public.docs", [delete(1, 11), delete(2, 12)])
    guarded.write_batch("public.docs", [delete(3, 40)])  # newer than the truncate below
    tombstones = "docs__rosetta_tombstones"
    assert rows(pg_conn, pg_schema, tombstones, "id, _rosetta_commit") == [
        (1, 11),
        (2, 12),
        (3, 40),
    ]
    guarded.write_batch("public.docs", [truncate(30)])
    assert rows(pg_conn, pg_schema, tombstones, "id, _rosetta_commit") == [(3, 40)]
    # An old delete replayed leaves no tombstone either: the watermark covers it.
    guarded.write_batch("public.docs", [delete(2, 12)])
    assert rows(pg_conn, pg_schema, tombstones, "id, _rosetta_commit") == [(3, 40)]


def test_a_failed_batch_leaves_no_watermark(
    guarded: PostgreSQLDestination, pg_conn: Any, pg_schema: str
) -> None:
    """The watermark is written in the truncate's transaction: all of it lands or none."""
    guarded.write_batch("public.docs", [upsert(1, 10, title="a")])
    bad = ChangeRecord(
        "public.docs",
        Operation.INSERT,
        {"id": 2},
        {"id": 2, "nope": 1},
        upsert(2, 21).position,
    )
    with pytest.raises(Exception, match="nope"):
        guarded.write_batch("public.docs", [truncate(20), bad])
    assert _ids(pg_conn, pg_schema) == [(1, "a")]
    assert _watermark(pg_conn, pg_schema) == []


def test_an_unguarded_truncate_needs_no_side_table(
    postgres_dsn: str, pg_conn: Any, pg_schema: str
) -> None:
    create_table(pg_conn, pg_schema, "plain", "id int PRIMARY KEY, title text")
    destination = PostgreSQLDestination(
        "1", "PG", postgres_dsn, table_map={"public.docs": f"{pg_schema}.plain"}
    )
    try:
        destination.write_batch("public.docs", [upsert(1, 10, title="a"), truncate(20)])
        destination.write_batch("public.docs", [upsert(1, 10, title="a")])
        # Without the guard nothing remembers the truncate: the replay lands.
        assert rows(pg_conn, pg_schema, "plain", "id, title") == [(1, "a")]
    finally:
        destination.close()


def test_an_append_only_insert_older_than_an_applied_truncate_stays_out(
    postgres_dsn: str, pg_conn: Any, pg_schema: str
) -> None:
    """Keyless rows carry their position too: the watermark refuses an older replayed insert."""
    create_table(
        pg_conn,
        pg_schema,
        "log",
        "n int, _rosetta_commit bigint, _rosetta_seq bigint, "
        "UNIQUE (_rosetta_commit, _rosetta_seq)",
    )
    destination = PostgreSQLDestination(
        "1",
        "PG",
        postgres_dsn,
        table_map={"public.log": f"{pg_schema}.log"},
        position_guard=True,
    )
    destination.append_only = frozenset({"public.log"})

    def insert(n: int, commit: int) -> ChangeRecord:
        return ChangeRecord("public.log", Operation.INSERT, {}, {"n": n}, SourcePosition(commit))

    def truncate_log(commit: int) -> ChangeRecord:
        return ChangeRecord("public.log", Operation.TRUNCATE, {}, None, SourcePosition(commit))

    try:
        destination.write_batch("public.log", [insert(1, 10), insert(2, 11)])
        destination.write_batch("public.log", [truncate_log(20)])
        destination.write_batch("public.log", [insert(1, 10), insert(2, 11)])  # replayed
        assert rows(pg_conn, pg_schema, "log", "n") == []
        destination.write_batch("public.log", [insert(3, 21), insert(2, 11)])
        assert rows(pg_conn, pg_schema, "log", "n, _rosetta_commit") == [(3, 21)]
    finally:
        destination.close()
