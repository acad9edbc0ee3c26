"""Real Debezium fixtures through the JSON-lines source into a real PostgreSQL: exact or parked."""

from __future__ import annotations

import hashlib
from pathlib import Path
from typing import Any
from uuid import UUID

import pytest
from psycopg2 import sql

from destinations.postgresql.destination import PostgreSQLDestination
from tests.compute.sources.debezium_run import (
    assert_outcome,
    one_line,
    run_fixture,
    schemaless,
    table_of,
)
from tests.compute.sources.debezium_truth import TRUTHS, Truth

UUID_OID = 2950  # pg_type.oid of uuid


def qualified(table: str) -> sql.Composable:
    schema, _, name = table.rpartition(".")
    return sql.SQL(".").join(map(sql.Identifier, [schema or "public", name]))


def make_table(conn: Any, table: str, truth: Truth) -> None:
    schema = table.rpartition(".")[0] or "public"
    key = sql.SQL(", ").join(map(sql.Identifier, truth.key))
    with conn.cursor() as cur:
        cur.execute(sql.SQL("CREATE SCHEMA IF NOT EXISTS {}").format(sql.Identifier(schema)))
        cur.execute(sql.SQL("DROP TABLE IF EXISTS {}").format(qualified(table)))
        cur.execute(
            sql.SQL("CREATE TABLE {} ({}, PRIMARY KEY ({}))").format(
                qualified(table), sql.SQL(truth.ddl), key
            )
        )
        if truth.before is not None:
            cols = list(truth.before)
            cur.execute(
                sql.SQL("INSERT INTO {} ({}) VALUES ({})").format(
                    qualified(table),
                    sql.SQL(", ").join(map(sql.Identifier, cols)),
                    sql.SQL(", ").join(sql.Placeholder() * len(cols)),
                ),
                [truth.before[c] for c in cols],
            )


def read_rows(conn: Any, table: str) -> list[dict[str, Any]]:
    with conn.cursor() as cur:
        cur.execute(sql.SQL("SELECT * FROM {}").format(qualified(table)))
        names = [d[0] for d in cur.description]
        oids = [d[1] for d in cur.description]
        return [
            {n: landed(v, oid) for n, v, oid in zip(names, r, oids, strict=True)}
            for r in cur.fetchall()
        ]


def landed(value: Any, type_oid: int) -> Any:
    """psycopg2's value as the truth spells it: bytea as its digest, uuid as UUID (psycopg2
    reads a uuid column as str unless told otherwise)."""
    if isinstance(value, memoryview):
        return ("sha256", hashlib.sha256(bytes(value)).hexdigest())
    if type_oid == UUID_OID and value is not None:
        return UUID(value)
    return value


def into_postgresql(tmp_path: Path, dsn: str, line: str, table: str, truth: Truth) -> list[str]:
    return run_fixture(tmp_path, PostgreSQLDestination("1", "PG", dsn), line, table, truth)


@pytest.mark.parametrize("truth", TRUTHS, ids=[t.fixture for t in TRUTHS])
def test_fixture_lands_exactly_in_postgresql_or_is_set_aside(
    truth: Truth, tmp_path: Path, postgres_dsn: str, pg_conn: Any
) -> None:
    line = one_line(truth.fixture, truth.topic)
    table = table_of(line, truth)
    make_table(pg_conn, table, truth)
    reasons = into_postgresql(tmp_path, postgres_dsn, line, table, truth)
    assert_outcome(read_rows(pg_conn, table), reasons, truth)


def test_bytea_without_schema_is_never_written_as_its_base64_text(
    tmp_path: Path, postgres_dsn: str, pg_conn: Any
) -> None:
    """The base64 of a schemaless bytea is parked naming the converter's schemas; the ASCII
    bytes of "ASNFZ4mrze8=" never reach the column."""
    (truth,) = [t for t in TRUTHS if t.fixture.endswith("orders_other_types_noschema.json")]
    line = one_line(truth.fixture, truth.topic)
    table = table_of(line, truth)
    make_table(pg_conn, table, truth)
    reasons = into_postgresql(tmp_path, postgres_dsn, line, table, truth)
    assert any("value.converter.schemas.enable=true" in r for r in reasons), reasons
    assert read_rows(pg_conn, table) == []


def test_decimal_without_schema_as_base64_is_parked_naming_decimal_handling_mode(
    tmp_path: Path, postgres_dsn: str, pg_conn: Any
) -> None:
    """The payment fixture with its schema dropped (what schemas.enable=false sends: the
    same payload): amount "ASs=" cannot be read as 2.99 without the scale; parked."""
    (truth,) = [t for t in TRUTHS if t.fixture.endswith("payment_snapshot_decimal_schema.json")]
    line = schemaless(truth)
    table = table_of(line, truth)
    make_table(pg_conn, table, truth)
    reasons = into_postgresql(tmp_path, postgres_dsn, line, table, truth)
    assert any("decimal.handling.mode" in r for r in reasons), reasons
    assert read_rows(pg_conn, table) == []
