"""Append-only tables and the start-up check of target keys, against a real PostgreSQL."""

from __future__ import annotations

from typing import Any

import pytest
from psycopg2 import sql

from destinations.errors import PermanentDestinationError
from destinations.postgresql.destination import PostgreSQLDestination
from destinations.records import ChangeRecord, Operation, SourcePosition
from tests.destinations.postgresql.test_destination import create_table, rows

POSITIONS = "_rosetta_commit bigint, _rosetta_seq bigint, UNIQUE (_rosetta_commit, _rosetta_seq)"


def insert(n: int, commit: int, seq: int = 0, **row: Any) -> ChangeRecord:
    """A keyless insert into ``public.log``."""
    return ChangeRecord(
        "public.log", Operation.INSERT, {}, {"n": n, **row}, SourcePosition(commit, seq)
    )


@pytest.fixture
def destination(postgres_dsn: str, pg_schema: str) -> Any:
    made = PostgreSQLDestination(
        "1", "PG", postgres_dsn, table_map={"public.log": f"{pg_schema}.log"}
    )
    yield made
    made.close()


@pytest.mark.parametrize("declared", [True, False])
def test_inserts_land_once_however_often_they_are_written(
    destination: PostgreSQLDestination, pg_conn: Any, pg_schema: str, declared: bool
) -> None:
    """Declared append-only, or keyless changes: each insert is a row, once by its position,
    two equal rows at different positions are two rows, and a replay adds nothing."""
    create_table(pg_conn, pg_schema, "log", f"n int, note text, {POSITIONS}")
    if declared:
        destination.append_only = frozenset({"public.log"})
    batch = [insert(1, 10), insert(1, 10, 1), insert(2, 11, 0, note="x"), insert(3, 12)]
    assert destination.write_batch("public.log", batch) == 4
    destination.write_batch("public.log", batch)  # delivered again
    destination.write_prepared(destination.prepare_batch("public.log", batch[1:] + batch[:1]))
    assert rows(pg_conn, pg_schema, "log", "n, note, _rosetta_commit, _rosetta_seq") == [
        (1, None, 10, 0),
        (1, None, 10, 1),
        (2, "x", 11, 0),
        (3, None, 12, 0),
    ]


def test_a_declared_table_ignores_the_key_its_changes_carry(
    destination: PostgreSQLDestination, pg_conn: Any, pg_schema: str
) -> None:
    create_table(pg_conn, pg_schema, "log", f"n int, {POSITIONS}")
    destination.append_only = frozenset({"log"})  # the bare name matches too
    keyed = [insert(1, 10)._replace(key={"n": 1}), insert(1, 11)._replace(key={"n": 1})]
    destination.write_batch("public.log", keyed)
    assert rows(pg_conn, pg_schema, "log", "n, _rosetta_commit") == [(1, 10), (1, 11)]


@pytest.mark.parametrize("op", [Operation.UPDATE, Operation.DELETE])
def test_update_or_delete_is_refused_for_good_and_writes_nothing(
    destination: PostgreSQLDestination, pg_conn: Any, pg_schema: str, op: Operation
) -> None:
    create_table(pg_conn, pg_schema, "log", f"n int, {POSITIONS}")
    change = insert(2, 11)._replace(op=op, after=None if op is Operation.DELETE else {"n": 2})
    with pytest.raises(PermanentDestinationError) as caught:
        destination.write_batch("public.log", [insert(1, 10), change])
    assert str(caught.value).startswith(
        f"{op.name.lower()} of append-only table public.log at 0/B#0: an append-only table "
        "takes inserts only"
    )
    assert destination.classify_error(caught.value).kind.value == "permanent"
    assert rows(pg_conn, pg_schema, "log") == []  # the batch is all or nothing


def test_a_target_without_position_columns_is_refused_with_the_ddl(
    destination: PostgreSQLDestination, pg_conn: Any, pg_schema: str
) -> None:
    create_table(pg_conn, pg_schema, "log", "n int")
    with pytest.raises(PermanentDestinationError) as caught:
        destination.write_batch("public.log", [insert(1, 10)])
    assert (
        f"ALTER TABLE {pg_schema}.log ADD COLUMN _rosetta_commit bigint, ADD COLUMN "
        "_rosetta_seq bigint, ADD UNIQUE (_rosetta_commit, _rosetta_seq)"
    ) in str(caught.value)


@pytest.mark.parametrize(
    ("ddl", "keys", "problem"),
    [
        ("id int PRIMARY KEY, b int", ("id",), None),
        ("id int, b int, UNIQUE (b, id)", ("id", "b"), None),
        ("id int, b int", None, "no primary key or unique constraint to upsert by"),
        ("id int, b int, UNIQUE (b)", None, None),
        ("id int PRIMARY KEY, b int", ("b",), "(b) (it has PRIMARY KEY (id))"),
        ("id int, b int, UNIQUE (id, b)", ("id",), "(id) (it has UNIQUE (id, b))"),
    ],
)
def test_check_tables_wants_a_unique_key_on_exactly_the_source_key(
    destination: PostgreSQLDestination,
    pg_conn: Any,
    pg_schema: str,
    ddl: str,
    keys: tuple[str, ...] | None,
    problem: str | None,
) -> None:
    create_table(pg_conn, pg_schema, "log", ddl)
    problems = destination.check_tables({"public.log": keys})
    if problem is None:
        assert problems == []
    else:
        [line] = problems
        assert line.startswith(f"Destination PG (ID=1): table public.log -> {pg_schema}.log: ")
        assert problem in line


def test_check_tables_accepts_no_partial_or_expression_index(
    destination: PostgreSQLDestination, pg_conn: Any, pg_schema: str
) -> None:
    """ON CONFLICT (id) cannot use either: the check must not count them."""
    create_table(pg_conn, pg_schema, "log", "id int, b int")
    with pg_conn.cursor() as cur:
        table = sql.Identifier(pg_schema, "log")
        cur.execute(sql.SQL("CREATE UNIQUE INDEX ON {} (id) WHERE b > 0").format(table))
        cur.execute(sql.SQL("CREATE UNIQUE INDEX ON {} ((id + 1))").format(table))
    [line] = destination.check_tables({"public.log": ("id",)})
    assert "(id) (it has none)" in line


def test_check_tables_names_missing_targets_and_skips_unreachable_servers(
    destination: PostgreSQLDestination,
) -> None:
    [line] = destination.check_tables({"public.log": ("id",)})  # no such table
    assert "the target table does not exist" in line
    destination.schema_evolution = "basic"  # the first write creates it
    assert destination.check_tables({"public.log": ("id",)}) == []
    down = PostgreSQLDestination("2", "down", "host=127.0.0.1 port=1", connect_timeout=2)
    assert down.check_tables({"public.log": ("id",)}) == []
