"""The position guard's truncate watermark: a truncate's position, so no older change comes back.

A TRUNCATE empties the table and leaves nothing behind, so without a memory
of it an older insert or update replayed after it (a re-delivery, another
lane, a parked change replayed by hand) would bring its row back. With the
guard on, an applied truncate stores its position in ``_rosetta_truncates``
(one row per target table, in the target's schema), in the transaction of
the truncate itself; every guarded write then refuses a change whose
position is not newer than that watermark, like any change older than the
row. The table's tombstones older than the truncate go with it: the
watermark refuses everything they did.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from psycopg2 import sql
from psycopg2.extensions import cursor as PgCursor

from destinations.postgresql.position_guard import tombstone_table_name
from destinations.records import POSITION_COMMIT_COLUMN, POSITION_SEQ_COLUMN, SourcePosition

if TYPE_CHECKING:  # apply.py builds its statements with not_truncated
    from destinations.postgresql.apply import TableInfo

TRUNCATES_TABLE = "_rosetta_truncates"
_TABLE_COLUMN = "table_name"


def truncates_table(schema: str) -> sql.Identifier:
    """The watermark table of the target tables in ``schema``."""
    return sql.Identifier(schema, TRUNCATES_TABLE)


def create_truncates_table(cur: PgCursor, schema: str) -> bool:
    """Create ``schema._rosetta_truncates`` if missing; True if it was."""
    table = truncates_table(schema)
    cur.execute("SELECT to_regclass(%s)", (table.as_string(cur),))
    row = cur.fetchone()
    if row is not None and row[0] is not None:
        return False
    # Serialise creators, as for the tombstone tables.
    cur.execute("SELECT pg_advisory_xact_lock(hashtext('rosetta.tombstones'))")
    cur.execute(
        sql.SQL(
            "CREATE TABLE IF NOT EXISTS {} ({} text PRIMARY KEY, {} bigint NOT NULL, "
            "{} bigint NOT NULL, truncated_at timestamptz NOT NULL DEFAULT now())"
        ).format(
            table,
            sql.Identifier(_TABLE_COLUMN),
            sql.Identifier(POSITION_COMMIT_COLUMN),
            sql.Identifier(POSITION_SEQ_COLUMN),
        )
    )
    return True


def not_truncated(info: TableInfo, position: sql.Composable) -> sql.Composed:
    """SQL true when ``position`` (a row value) is newer than ``info``'s truncate watermark."""
    return sql.SQL(
        "NOT EXISTS (SELECT 1 FROM {} AS w WHERE w.{} = {} AND (w.{}, w.{}) >= {})"
    ).format(
        truncates_table(info.schema),
        sql.Identifier(_TABLE_COLUMN),
        sql.Literal(info.name),
        sql.Identifier(POSITION_COMMIT_COLUMN),
        sql.Identifier(POSITION_SEQ_COLUMN),
        position,
    )


def watermark(cur: PgCursor, info: TableInfo, *, lock: bool = False) -> SourcePosition | None:
    """The position of the newest truncate applied to ``info``, or None."""
    cur.execute(
        sql.SQL("SELECT {}, {} FROM {} WHERE {} = {}{}").format(
            sql.Identifier(POSITION_COMMIT_COLUMN),
            sql.Identifier(POSITION_SEQ_COLUMN),
            truncates_table(info.schema),
            sql.Identifier(_TABLE_COLUMN),
            sql.Literal(info.name),
            sql.SQL(" FOR UPDATE" if lock else ""),
        )
    )
    row = cur.fetchone()
    return None if row is None else SourcePosition(row[0], row[1])


def apply_guarded_truncate(cur: PgCursor, info: TableInfo, position: SourcePosition) -> str:
    """Apply a truncate at ``position`` under the guard; returns what it did (for the log).

    * not newer than the watermark (delivered again, or an older truncate
      after a newer one): skipped, the newer truncate already removed all it
      would;
    * rows newer than it exist (an older truncate arriving after newer
      changes, out of order): a TRUNCATE cannot spare them, so it is not run;
      the rows older than it are deleted instead, which leaves the table as
      if the truncate had come in order;
    * else ``TRUNCATE``.

    Then the watermark moves to ``position`` and the tombstones older than it
    are deleted, in this same transaction.
    """
    create_truncates_table(cur, info.schema)
    mark = watermark(cur, info, lock=True)
    if mark is not None and tuple(position) <= tuple(mark):
        return f"skipped: not newer than the last truncate at {mark}"
    commit, seq = sql.Identifier(POSITION_COMMIT_COLUMN), sql.Identifier(POSITION_SEQ_COLUMN)
    # Literals, no parameters: an identifier may hold a '%'.
    at = sql.SQL("({}, {})").format(sql.Literal(position.commit), sql.Literal(position.seq))
    newer = sql.SQL("({}, {}) > {}").format(commit, seq, at)
    cur.execute(sql.SQL("SELECT EXISTS (SELECT 1 FROM {} WHERE {})").format(info.ident, newer))
    row = cur.fetchone()
    if row is not None and row[0]:
        # Rows from before the guard (no position) count as oldest.
        cur.execute(
            sql.SQL("DELETE FROM {} WHERE {} IS NULL OR NOT {}").format(info.ident, commit, newer)
        )
        done = f"rows newer than it kept, {cur.rowcount} older deleted"
    else:
        cur.execute(sql.SQL("TRUNCATE TABLE {}").format(info.ident))
        done = "truncated"
    cur.execute(
        sql.SQL(
            "INSERT INTO {} AS w ({}, {}, {}) VALUES ({}, {}) ON CONFLICT ({}) "
            "DO UPDATE SET {} = EXCLUDED.{}, {} = EXCLUDED.{}, truncated_at = now()"
        ).format(
            truncates_table(info.schema),
            sql.Identifier(_TABLE_COLUMN),
            commit,
            seq,
            sql.Literal(info.name),
            sql.SQL(", ").join(map(sql.Literal, position)),
            sql.Identifier(_TABLE_COLUMN),
            commit,
            commit,
            seq,
            seq,
        )
    )
    tombstones = sql.Identifier(info.schema, tombstone_table_name(info.name))
    cur.execute("SELECT to_regclass(%s)", (tombstones.as_string(cur),))
    row = cur.fetchone()
    if row is not None and row[0] is not None:
        cur.execute(
            sql.SQL("DELETE FROM {} WHERE ({}, {}) < {}").format(tombstones, commit, seq, at)
        )
    return done
