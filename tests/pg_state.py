"""Read PostgreSQL tables back in the shape of ``SyntheticSource.expected_state``."""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

import psycopg2
import psycopg2.extras
from psycopg2 import sql

from compute.sources.synthetic_source import primary_key, table_columns


def fetch_state(
    dsn: str, tables: Iterable[str]
) -> dict[str, dict[tuple[Any, ...], dict[str, Any]]]:
    """``{table: {key tuple: row}}`` for the generated columns of each table."""
    state: dict[str, dict[tuple[Any, ...], dict[str, Any]]] = {}
    conn = psycopg2.connect(dsn)
    # uuid columns as UUID objects, like the source's rows; only on this
    # connection, so other code in the process keeps psycopg2's default (str).
    psycopg2.extras.register_uuid(conn_or_curs=conn)
    try:
        with conn.cursor() as cur:
            for table in tables:
                columns = table_columns(table)
                schema, _, name = table.rpartition(".")
                cur.execute(
                    sql.SQL("SELECT {} FROM {}").format(
                        sql.SQL(", ").join(map(sql.Identifier, columns)),
                        sql.Identifier(schema or "public", name),
                    )
                )
                key = primary_key(table)
                rows = {}
                for values in cur.fetchall():
                    row = dict(zip(columns, values, strict=True))
                    rows[tuple(row[k] for k in key)] = row
                state[table] = rows
    finally:
        conn.close()
    return state


def differences(
    expected: dict[str, dict[Any, Any]], actual: dict[str, dict[Any, Any]]
) -> list[str]:
    """Human-readable differences between two table states (empty when equal)."""
    problems: list[str] = []
    for table, rows in expected.items():
        got = actual.get(table, {})
        missing = rows.keys() - got.keys()
        extra = got.keys() - rows.keys()
        wrong = [k for k in rows.keys() & got.keys() if rows[k] != got[k]]
        if missing:
            problems.append(f"{table}: {len(missing)} rows missing, e.g. {sorted(missing)[:3]}")
        if extra:
            problems.append(
                f"{table}: {len(extra)} rows that should not exist, e.g. {sorted(extra)[:3]}"
            )
        if wrong:
            k = sorted(wrong)[0]
            problems.append(f"{table}: {len(wrong)} rows differ, e.g. {k}: {got[k]} != {rows[k]}")
    return problems
