"""The start-up check of a target table: the unique key its writes rely on, from the catalog.

An upsert by key needs a primary key or unique constraint on exactly the key
columns (``ON CONFLICT (key)``); an append-only table needs one on its
position columns. Without it every write would fail and its changes be
parked, so the engine refuses to start and says which statement fixes it.
"""

from __future__ import annotations

import re

from psycopg2.extensions import cursor as PgCursor

from destinations.postgresql.append_only import position_columns_ddl
from destinations.records import POSITION_COLUMNS

_PLAIN = re.compile(r"[a-z_][a-z0-9_$]*")

# Unique indexes usable by ON CONFLICT: valid, on plain columns, without a predicate.
_UNIQUE_KEYS = """
SELECT i.indisprimary,
       array(SELECT a.attname FROM unnest(i.indkey) AS k(n)
             JOIN pg_attribute a ON a.attrelid = i.indrelid AND a.attnum = k.n)
FROM pg_index i
WHERE i.indrelid = %s AND i.indisunique AND i.indisvalid
  AND i.indpred IS NULL AND i.indexprs IS NULL
ORDER BY i.indisprimary DESC, i.indexrelid
"""


def _quoted(name: str) -> str:
    """``name`` as SQL: as it is when it needs no quotes (the common case), else quoted."""
    if _PLAIN.fullmatch(name):
        return name
    return '"' + name.replace('"', '""') + '"'


def target_problem(
    cur: PgCursor,
    table: str,
    schema: str | None,
    name: str,
    keys: tuple[str, ...] | None,
    append_only: bool,
    create_missing: bool = False,
) -> str | None:
    """What target table ``schema.name`` of source table ``table`` lacks, with the fix;
    None if it has what its writes need (or does not exist yet).

    ``keys`` are the key columns the source gives (None: they come with each
    change, so any primary key or unique constraint will do). A target that
    does not exist is a problem unless ``create_missing`` (schema evolution
    creates it with the first write).
    """
    target = ".".join(_quoted(n) for n in (schema, name) if n is not None)
    cur.execute("SELECT to_regclass(%s)::oid", (target,))
    row = cur.fetchone()
    if row is None or row[0] is None:
        if create_missing:
            return None
        return (
            f"table {table} -> {target}: the target table does not exist; fix: create it "
            "(with a primary key on the source's key columns), or set schema_evolution = "
            '"basic" on the destination to have it created from the first changes'
        )
    oid = row[0]
    cur.execute(_UNIQUE_KEYS, (oid,))
    unique = [(bool(primary), tuple(columns)) for primary, columns in cur.fetchall()]
    shown = "; ".join(
        f"{'PRIMARY KEY' if primary else 'UNIQUE'} ({', '.join(columns)})"
        for primary, columns in unique
    )
    has = f" (it has {shown})" if shown else " (it has none)"
    if append_only:
        if any(set(columns) == set(POSITION_COLUMNS) for _, columns in unique):
            return None
        cur.execute(
            "SELECT count(*) FROM pg_attribute WHERE attrelid = %s AND attname = ANY(%s) "
            "AND NOT attisdropped",
            (oid, list(POSITION_COLUMNS)),
        )
        present = cur.fetchone()
        fix = (
            f"ALTER TABLE {target} ADD UNIQUE ({', '.join(POSITION_COLUMNS)})"
            if present is not None and present[0] == len(POSITION_COLUMNS)
            else position_columns_ddl(target)
        )
        return (
            f"table {table} -> {target}: append-only, but no unique constraint on "
            f"({', '.join(POSITION_COLUMNS)}) to make a replayed insert a no-op{has}; "
            f"fix: {fix}"
        )
    if keys is None:
        if unique:
            return None
        return (
            f"table {table} -> {target}: no primary key or unique constraint to upsert by; "
            f"fix: ALTER TABLE {target} ADD PRIMARY KEY (<the key columns of its changes>), "
            "or declare it in the pipeline's append_only"
        )
    if any(set(columns) == set(keys) for _, columns in unique):
        return None
    return (
        f"table {table} -> {target}: no primary key or unique constraint on exactly the "
        f"source's key ({', '.join(keys)}){has}; fix: ALTER TABLE {target} ADD PRIMARY KEY "
        f"({', '.join(keys)}), or declare it in the pipeline's append_only"
    )
