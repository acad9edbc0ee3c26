"""Schema evolution on PostgreSQL: create a missing target table, add a missing column.

Runs inside the batch's own transaction, before its writes: the DDL commits
with the rows it was made for, or rolls back with them. A transaction-scoped
advisory lock on the target's name serialises engines and pipelines evolving
the same table, and ``IF NOT EXISTS`` makes the loser's statement a no-op.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Mapping, Sequence

from psycopg2 import sql
from psycopg2.extensions import cursor as PgCursor

from destinations.postgresql.apply import TableInfo
from destinations.postgresql.catalog import Target, read_table_info, target_exists, target_ident
from destinations.records import POSITION_COLUMNS, ChangeRecord
from destinations.schema_evolution import ColumnType, Kind, key_of, needed_columns

logger = logging.getLogger(__name__)

# A column's type from the kind of its values, when the source does not say.
PG_TYPES: dict[Kind, str] = {
    Kind.BOOLEAN: "boolean",
    Kind.INTEGER: "bigint",
    Kind.DECIMAL: "numeric",
    Kind.FLOAT: "double precision",
    Kind.TEXT: "text",
    Kind.TIMESTAMP: "timestamp",
    Kind.TIMESTAMPTZ: "timestamptz",
    Kind.DATE: "date",
    Kind.TIME: "time",
    Kind.TIMETZ: "timetz",
    Kind.INTERVAL: "interval",
    Kind.UUID: "uuid",
    Kind.JSON: "jsonb",
    Kind.BYTES: "bytea",
}


def pg_type(column: ColumnType) -> str:
    """The source's own type when it is a PostgreSQL source, else the kind's (``PG_TYPES``)."""
    return column.source or PG_TYPES[column.kind]


def evolve(
    cur: PgCursor,
    target: Target,
    info: TableInfo | None,
    records: Sequence[ChangeRecord],
    *,
    positions: bool,
    append: bool,
    source_types: Callable[[], Mapping[str, str] | None],
    owner: str,
) -> bool | None:
    """Create ``target`` or add the columns ``records`` need; True when a statement changed it,
    None when the target does not exist and ``records`` (truncates only) name no column.

    ``info`` is what this session last read of the target (None: not read).
    ``positions`` adds the position columns to a new table (the position
    guard or an append-only table needs them); ``append`` makes them its
    unique key instead of the changes' key. ``source_types`` is asked only when
    a table or column is to be made.
    """
    if info is not None and all(c in info.columns for c in needed_columns(records)):
        return False  # the usual batch: no statement, no question to the source
    columns = needed_columns(records, source_types())
    ident = target_ident(target)
    cur.execute("SELECT pg_advisory_xact_lock(hashtext(%s))", ("rosetta.schema:" + str(target),))
    if not target_exists(cur, target):
        if not columns:
            logger.info(
                "schema evolution: truncate of a target that does not exist yet, nothing to "
                "empty destination=%s target=%s",
                owner,
                ident.as_string(cur),
            )
            return None  # only truncates: no column to create the table from
        _create(cur, ident, columns, key_of(records), positions=positions, append=append)
        logger.info(
            "schema evolution: created target table destination=%s target=%s columns=%s key=%s",
            owner,
            ident.as_string(cur),
            ",".join(f"{c}:{pg_type(t)}" for c, t in columns.items()),
            ",".join(key_of(records)) or "-",
        )
        return True
    info = read_table_info(cur, target)
    missing = {c: t for c, t in columns.items() if c not in info.columns}
    if not missing:
        return True  # what this session had read is out of date: read it again
    cur.execute(
        sql.SQL("ALTER TABLE {} {}").format(
            ident,
            sql.SQL(", ").join(
                sql.SQL("ADD COLUMN IF NOT EXISTS {} {}").format(
                    sql.Identifier(c), sql.SQL(pg_type(t))
                )
                for c, t in missing.items()
            ),
        )
    )
    logger.info(
        "schema evolution: added nullable columns destination=%s target=%s columns=%s",
        owner,
        ident.as_string(cur),
        ",".join(f"{c}:{pg_type(t)}" for c, t in missing.items()),
    )
    return True


def _create(
    cur: PgCursor,
    ident: sql.Identifier,
    columns: Mapping[str, ColumnType],
    key: tuple[str, ...],
    *,
    positions: bool,
    append: bool,
) -> None:
    parts = [
        sql.SQL("{} {}").format(sql.Identifier(c), sql.SQL(pg_type(t))) for c, t in columns.items()
    ]
    if positions or append or not key:
        parts += [sql.SQL("{} bigint").format(sql.Identifier(c)) for c in POSITION_COLUMNS]
    unique = POSITION_COLUMNS if append or not key else key
    constraint = "UNIQUE" if append or not key else "PRIMARY KEY"
    parts.append(
        sql.SQL(constraint + " ({})").format(sql.SQL(", ").join(map(sql.Identifier, unique)))
    )
    cur.execute(
        sql.SQL("CREATE TABLE IF NOT EXISTS {} ({})").format(ident, sql.SQL(", ").join(parts))
    )
