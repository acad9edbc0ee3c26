"""A source table's column types as the source's catalog names them, for schema evolution.

A destination creating a target table (``schema_evolution = "basic"``) asks
for them, once per table or new column, so that a ``numeric(12,2)``, a
``varchar(20)`` or a ``jsonb`` column is created as such rather than guessed
from the values (a ``jsonb`` value arrives as text). Types of the server's
own (OID below 16384) keep their name; a user-defined type (an enum, a
domain, a composite) does not exist at the destination, and its values
arrive as text, so it is ``text`` there.
"""

from __future__ import annotations

import logging

import psycopg2

logger = logging.getLogger(__name__)

# OIDs below this are the server's own (FirstNormalObjectId).
_FIRST_USER_OID = 16384

_COLUMN_TYPES = """
SELECT a.attname,
       CASE WHEN a.atttypid < %s THEN format_type(a.atttypid, a.atttypmod) ELSE 'text' END
FROM pg_attribute a
WHERE a.attrelid = %s::regclass AND a.attnum > 0 AND NOT a.attisdropped
ORDER BY a.attnum
"""


def read_column_types(dsn: str, table: str, timeout: float = 5.0) -> dict[str, str] | None:
    """``table``'s columns and their types; None when the source cannot say (unreachable,
    no such table): the destination then types the columns from their values."""
    try:
        conn = psycopg2.connect(
            dsn,
            connect_timeout=max(2, int(timeout)),
            application_name="rosetta-types",
            options=f"-c statement_timeout={int(timeout * 1000)}",
        )
    except psycopg2.Error as error:
        logger.warning(
            "cannot read the source's column types, typing from values: table=%s error=%s",
            table,
            str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__,
        )
        return None
    try:
        with conn.cursor() as cur:
            schema, dot, name = table.partition(".")
            ident = ".".join(
                '"' + part.replace('"', '""') + '"'
                for part in ((schema, name) if dot else (table,))
            )
            cur.execute(_COLUMN_TYPES, (_FIRST_USER_OID, ident))
            return {str(column): str(kind) for column, kind in cur.fetchall()}
    except psycopg2.Error as error:
        logger.warning(
            "cannot read the source's column types, typing from values: table=%s error=%s",
            table,
            str(error).strip().splitlines()[0],
        )
        return None
    finally:
        conn.close()
