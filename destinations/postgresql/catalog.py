"""What the PostgreSQL catalog says of a target table: whether it exists, its columns and types."""

from __future__ import annotations

from psycopg2 import sql
from psycopg2.extensions import cursor as PgCursor

from destinations.postgresql.apply import TableInfo

Target = tuple[str | None, str]


def target_ident(target: Target) -> sql.Identifier:
    schema, name = target
    return sql.Identifier(schema, name) if schema else sql.Identifier(name)


def target_exists(cur: PgCursor, target: Target) -> bool:
    """True when ``target`` resolves to a relation (on the search path when unqualified)."""
    cur.execute("SELECT to_regclass(%s) IS NOT NULL", (target_ident(target).as_string(cur),))
    row = cur.fetchone()
    return bool(row and row[0])


def read_table_info(cur: PgCursor, target: Target) -> TableInfo:
    """The target's schema, name and columns; raises 42P01 (undefined table) when there is none."""
    # ::regclass resolves the quoted name like any statement would.
    cur.execute(
        "SELECT c.oid, n.nspname, c.relname FROM pg_class c "
        "JOIN pg_namespace n ON n.oid = c.relnamespace WHERE c.oid = %s::regclass",
        (target_ident(target).as_string(cur),),
    )
    oid, nspname, relname = cur.fetchone()  # type: ignore[misc]
    cur.execute(
        "SELECT attname, format_type(atttypid, NULL), format_type(atttypid, atttypmod) "
        "FROM pg_attribute "
        "WHERE attrelid = %s AND attnum > 0 AND NOT attisdropped ORDER BY attnum",
        (oid,),
    )
    rows = cur.fetchall()
    return TableInfo(nspname, relname, {r[0]: r[1] for r in rows}, {r[0]: r[2] for r in rows})
