"""Each published table's key, from its replica identity: what its changes will carry as key."""

from __future__ import annotations

from collections.abc import Collection, Mapping
from typing import NamedTuple

from psycopg2.extensions import cursor as PgCursor

# pg_class.relreplident
DEFAULT, INDEX, FULL, NOTHING = "d", "i", "f", "n"
_IDENTITY_NAMES = {DEFAULT: "DEFAULT", INDEX: "USING INDEX", FULL: "FULL", NOTHING: "NOTHING"}

# The published tables with their replica identity and its key columns, in
# index order: the primary key for DEFAULT, the chosen index for USING INDEX.
_QUERY = """
SELECT p.schemaname || '.' || p.tablename, c.relreplident,
       ARRAY(
           SELECT a.attname::text
           FROM pg_index i
           CROSS JOIN LATERAL unnest(i.indkey) WITH ORDINALITY AS k(attnum, n)
           JOIN pg_attribute a ON a.attrelid = i.indrelid AND a.attnum = k.attnum
           WHERE i.indrelid = c.oid
             AND ((c.relreplident = 'd' AND i.indisprimary)
                  OR (c.relreplident = 'i' AND i.indisreplident))
           ORDER BY k.n
       )
FROM pg_publication_tables p
JOIN pg_namespace ns ON ns.nspname = p.schemaname
JOIN pg_class c ON c.relnamespace = ns.oid AND c.relname = p.tablename
WHERE p.pubname = %s
ORDER BY 1
"""


class TableKey(NamedTuple):
    """A published table's replica identity (``relreplident``) and the key it gives."""

    identity: str
    columns: tuple[str, ...]

    @property
    def identity_name(self) -> str:
        return _IDENTITY_NAMES.get(self.identity, self.identity)


def read_keys(cur: PgCursor, publication: str) -> dict[str, TableKey]:
    """Every table ``publication`` publishes (``schema.table``) and its key."""
    cur.execute(_QUERY, (publication,))
    return {table: TableKey(identity, tuple(columns)) for table, identity, columns in cur}


def is_listed(table: str, names: Collection[str]) -> bool:
    """``table`` (``schema.table``) is in ``names``, qualified or by its bare name."""
    return table in names or table.rpartition(".")[2] in names


def key_problems(
    source_id: str, keys: Mapping[str, TableKey], append_only: Collection[str]
) -> list[str]:
    """One line per table whose replica identity gives a key no write by key can use.

    FULL sends the whole old row as key: every column would be a key column,
    and a target keyed that way takes neither an update of a non-key column
    nor a row with a NULL. Such a table replicates only as append-only.
    """
    problems = []
    for table, key in keys.items():
        if key.identity == FULL and not is_listed(table, append_only):
            problems.append(
                f"source {source_id} (postgresql): table {table} has REPLICA IDENTITY FULL, "
                "so its changes carry the whole row as key; fix: give it a primary key and "
                f"ALTER TABLE {table} REPLICA IDENTITY DEFAULT (or USING INDEX a unique "
                "index), or declare it in the pipeline's append_only (inserts only)"
            )
    return problems
