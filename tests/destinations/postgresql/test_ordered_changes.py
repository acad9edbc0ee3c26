"""Truncates and key moves (a key change with unchanged columns), against a real PostgreSQL."""

from __future__ import annotations

from typing import Any

import pytest

from destinations.errors import PermanentDestinationError
from destinations.postgresql.destination import PostgreSQLDestination
from destinations.records import ChangeRecord, Operation, SourcePosition
from tests.destinations.postgresql.test_destination import create_table, rows

POSITIONS = "_rosetta_commit bigint, _rosetta_seq bigint"


def upsert(id_: int, commit: int, **row: Any) -> ChangeRecord:
    return ChangeRecord(
        "public.docs", Operation.INSERT, {"id": id_}, {"id": id_, **row}, SourcePosition(commit)
    )


def truncate(commit: int) -> ChangeRecord:
    return ChangeRecord("public.docs", Operation.TRUNCATE, {}, None, SourcePosition(commit))


def move(old: int, new: int, commit: int, **row: Any) -> ChangeRecord:
    """The source's key change whose ``body`` was not sent (unchanged TOAST)."""
    return ChangeRecord(
        "public.docs",
        Operation.UPDATE,
        {"id": new},
        {"id": new, **row},
        SourcePosition(commit, 1),
        {"id": old},
        None,
        ("body",),
    )


@pytest.fixture(params=[False, True], ids=["plain", "guarded"])
def destination(request: Any, postgres_dsn: str, pg_schema: str) -> Any:
    made = PostgreSQLDestination(
        "1",
        "PG",
        postgres_dsn,
        table_map={"public.docs": f"{pg_schema}.docs"},
        position_guard=request.param,
    )
    yield made
    made.close()


def _table(pg_conn: Any, pg_schema: str) -> None:
    create_table(
        pg_conn, pg_schema, "docs", f"id int PRIMARY KEY, title text, body text, {POSITIONS}"
    )


@pytest.mark.parametrize("prepared", [False, True])
def test_a_truncate_applies_between_the_changes_around_it(
    destination: PostgreSQLDestination, pg_conn: Any, pg_schema: str, prepared: bool
) -> None:
    """Changes before the truncate are gone, those after it stay, in one batch."""
    _table(pg_conn, pg_schema)
    destination.write_batch("public.docs", [upsert(1, 5, title="old"), upsert(9, 5, title="x")])
    batch = [
        upsert(2, 10, title="a"),
        upsert(1, 11, title="b"),
        truncate(12),
        upsert(3, 13, title="c"),
    ]
    batch.append(upsert(1, 14, title="d"))
    if prepared:
        destination.write_prepared(destination.prepare_batch("public.docs", batch))
    else:
        assert destination.write_batch("public.docs", batch) == 5
    assert rows(pg_conn, pg_schema, "docs", "id, title") == [(1, "d"), (3, "c")]


def test_a_key_move_keeps_the_unchanged_column(
    destination: PostgreSQLDestination, pg_conn: Any, pg_schema: str
) -> None:
    _table(pg_conn, pg_schema)
    destination.write_batch("public.docs", [upsert(1, 5, title="t", body="x" * 5000)])
    batch = [move(1, 2, 10, title="t2"), upsert(3, 11, title="z")]
    destination.write_batch("public.docs", batch)
    moved = [(2, "t2", 5000), (3, "z", None)]
    assert rows(pg_conn, pg_schema, "docs", "id, title, length(body)") == moved
    destination.write_batch("public.docs", batch)  # delivered again: the row is already moved
    assert rows(pg_conn, pg_schema, "docs", "id, title, length(body)") == moved


def test_a_key_move_without_the_old_row_is_refused_naming_why(
    destination: PostgreSQLDestination, pg_conn: Any, pg_schema: str
) -> None:
    _table(pg_conn, pg_schema)
    with pytest.raises(PermanentDestinationError, match="no row with the old key.*body"):
        destination.write_batch("public.docs", [upsert(5, 9, title="q"), move(1, 2, 10)])
    # The batch is one transaction: nothing of it landed.
    assert rows(pg_conn, pg_schema, "docs", "id") == []


def test_a_guarded_move_never_overwrites_a_newer_row(
    postgres_dsn: str, pg_conn: Any, pg_schema: str
) -> None:
    destination = PostgreSQLDestination(
        "1", "PG", postgres_dsn, table_map={"public.docs": f"{pg_schema}.docs"}, position_guard=True
    )
    try:
        _table(pg_conn, pg_schema)
        destination.write_batch("public.docs", [upsert(1, 5, title="t", body="b")])
        destination.write_batch("public.docs", [move(1, 2, 10, title="moved")])
        destination.write_batch("public.docs", [upsert(2, 20, title="newer")])
        destination.write_batch("public.docs", [move(1, 2, 10, title="moved")])  # a late replay
        assert rows(pg_conn, pg_schema, "docs", "id, title, body, _rosetta_commit") == [
            (2, "newer", "b", 20)
        ]
    finally:
        destination.close()
