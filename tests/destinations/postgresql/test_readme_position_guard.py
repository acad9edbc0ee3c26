"""The README's "Position guard" DDL, read from the README, on a real PostgreSQL.

The DDL is run as the README gives it (in a fresh schema instead of
``public``), then a guarded destination writes the README's example events
and a replay of an older change, and the newer row must stay.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from psycopg2 import sql

from compute.sources.jsonl_source import JsonLinesSource
from destinations.errors import PermanentDestinationError
from destinations.postgresql.destination import PostgreSQLDestination
from destinations.records import ChangeRecord

README = Path(__file__).resolve().parents[3] / "README.md"


def readme_section(name: str) -> str:
    text = README.read_text(encoding="utf-8")
    match = re.search(rf"<!-- {name}:start -->\n(.*?)<!-- {name}:end -->", text, re.DOTALL)
    assert match is not None, f"README.md has no {name} section"
    return match.group(1)


def readme_code(name: str) -> str:
    block = re.search(r"```[a-z]*\n(.*?)```", readme_section(name), re.DOTALL)
    assert block is not None, f"README section {name} has no code block"
    return block.group(1)


def readme_ddl(schema: str) -> list[str]:
    """The README's statements, ``public.`` replaced by ``schema``, comments dropped."""
    text = readme_code("readme-position-guard-ddl")
    text = "\n".join(line for line in text.splitlines() if not line.startswith("--"))
    text = text.replace("public.", f'"{schema}".')
    return [statement.strip() for statement in text.split(";") if statement.strip()]


def readme_user_events(tmp_path: Path) -> list[ChangeRecord]:
    """The README's example events of ``public.users``, read by the JSON-lines source."""
    path = tmp_path / "readme_events.jsonl"
    path.write_text(readme_code("readme-events"), encoding="utf-8")
    source = JsonLinesSource("2", path, None)
    try:
        records = list(source.read(1000).records)
    finally:
        source.close()
    return [r for r in records if r.table == "public.users"]


def users(conn: Any, schema: str, table: str = "users") -> list[tuple[Any, ...]]:
    with conn.cursor() as cur:
        cur.execute(sql.SQL("SELECT * FROM {} ORDER BY 1").format(sql.Identifier(schema, table)))
        return cur.fetchall()


def columns(conn: Any, schema: str, table: str) -> list[tuple[Any, ...]]:
    """(name, type, nullable) of each column, and the primary key's columns."""
    with conn.cursor() as cur:
        cur.execute(
            "SELECT column_name, data_type, is_nullable FROM information_schema.columns "
            "WHERE table_schema = %s AND table_name = %s ORDER BY ordinal_position",
            (schema, table),
        )
        found = cur.fetchall()
        cur.execute(
            "SELECT a.attname FROM pg_index i JOIN pg_attribute a ON a.attrelid = i.indrelid "
            "AND a.attnum = ANY(i.indkey) WHERE i.indrelid = %s::regclass AND i.indisprimary",
            (sql.Identifier(schema, table).as_string(conn),),
        )
        return found + [("primary key", *sorted(r[0] for r in cur.fetchall()))]


@pytest.fixture
def guarded(postgres_dsn: str) -> Iterator[Callable[[str], PostgreSQLDestination]]:
    made: list[PostgreSQLDestination] = []

    def make(schema: str) -> PostgreSQLDestination:
        destination = PostgreSQLDestination(
            "2",
            "PG-Guarded",
            postgres_dsn,
            position_guard=True,
            table_map={"public.users": f"{schema}.users"},
        )
        made.append(destination)
        return destination

    yield make
    for destination in made:
        destination.close()


def test_readme_ddl_lets_a_guarded_destination_refuse_an_older_replay(
    tmp_path: Path, pg_conn: Any, pg_schema: str, guarded: Callable[[str], PostgreSQLDestination]
) -> None:
    with pg_conn.cursor() as cur:
        for statement in readme_ddl(pg_schema):
            cur.execute(statement)
    snapshot, insert, update, delete = readme_user_events(tmp_path)
    destination = guarded(pg_schema)
    destination.write_batch("public.users", [snapshot, insert])
    destination.write_batch("public.users", [update, delete])
    assert update.after is not None
    newer = [(2, "bo@example.org", update.after["balance"], update.position.commit, 1)]
    assert users(pg_conn, pg_schema) == newer
    assert users(pg_conn, pg_schema, "users__rosetta_tombstones") == [
        (1, delete.position.commit, 0)
    ]

    # A replay after a crash: the older insert and snapshot come again.
    destination.write_batch("public.users", [snapshot, insert])
    assert users(pg_conn, pg_schema) == newer  # row 2 keeps its update, row 1 stays deleted


def test_readme_tombstone_table_is_the_one_the_destination_creates(
    tmp_path: Path, pg_conn: Any, pg_schema: str, guarded: Callable[[str], PostgreSQLDestination]
) -> None:
    with pg_conn.cursor() as cur:
        for statement in readme_ddl(pg_schema):
            if "__rosetta_tombstones" not in statement:
                cur.execute(statement)
        cur.execute(sql.SQL("CREATE SCHEMA {}").format(sql.Identifier(pg_schema + "_readme")))
    try:
        with pg_conn.cursor() as cur:
            for statement in readme_ddl(pg_schema + "_readme"):
                cur.execute(statement)
        delete = readme_user_events(tmp_path)[3]
        guarded(pg_schema).write_batch("public.users", [delete])  # creates its own
        assert columns(pg_conn, pg_schema, "users__rosetta_tombstones") == columns(
            pg_conn, pg_schema + "_readme", "users__rosetta_tombstones"
        )
    finally:
        with pg_conn.cursor() as cur:
            cur.execute(
                sql.SQL("DROP SCHEMA {} CASCADE").format(sql.Identifier(pg_schema + "_readme"))
            )


def test_without_the_readme_columns_the_refusal_is_the_one_it_quotes(
    tmp_path: Path, pg_conn: Any, pg_schema: str, guarded: Callable[[str], PostgreSQLDestination]
) -> None:
    with pg_conn.cursor() as cur:
        cur.execute(readme_ddl(pg_schema)[0])  # the table without the position columns
    quoted = re.search(
        r"Without them every change to the table is refused and parked with\s+`([^`]+)`",
        README.read_text(encoding="utf-8"),
    )
    assert quoted is not None
    expected = " ".join(quoted.group(1).split()).replace("public.", f"{pg_schema}.")
    with pytest.raises(PermanentDestinationError) as raised:
        guarded(pg_schema).write_batch("public.users", readme_user_events(tmp_path)[:1])
    assert expected in str(raised.value)
