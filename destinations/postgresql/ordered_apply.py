"""The statements of a truncate and of a key move (an update that moves a row to a new key)."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from psycopg2 import sql
from psycopg2.extensions import cursor as PgCursor

from destinations.errors import PermanentDestinationError
from destinations.ordered_parts import MOVE, TRUNCATE, Part
from destinations.postgresql.apply import TableInfo, cast_type
from destinations.postgresql.copy_text import text_value
from destinations.records import POSITION_COMMIT_COLUMN, POSITION_SEQ_COLUMN, ChangeRecord


def apply_parts(
    cur: PgCursor,
    info: TableInfo,
    parts: list[Part],
    guard: bool,
    apply_rows: Callable[[list[ChangeRecord]], None],
) -> None:
    """Each part in order: truncates, key moves, and runs of other changes (``apply_rows``)."""
    for kind, records in parts:
        if kind == TRUNCATE:
            apply_truncate(cur, info)
        elif kind == MOVE:
            apply_move(cur, info, records[0], guard=guard)
        else:
            apply_rows(records)
            # A staged write's stage tables live until commit: drop them now, so
            # that a later part of this transaction can create its own.
            cur.execute("DISCARD TEMP")


def apply_truncate(cur: PgCursor, info: TableInfo) -> None:
    """Empty the target (the source table was truncated)."""
    cur.execute(sql.SQL("TRUNCATE TABLE {}").format(info.ident))


def apply_move(cur: PgCursor, info: TableInfo, record: ChangeRecord, *, guard: bool) -> None:
    """Move the row at ``record.moved_from`` to ``record.key`` in place, with ``after``'s values.

    The columns the source left out as unchanged stay as the row holds them.
    PermanentDestinationError (the change is parked, naming why) when no row
    holds the old key: those columns' values exist nowhere else.
    """
    old = record.moved_from or {}
    values = {**(record.after or {}), **record.key}
    missing = [c for c in [*values, *old] if c not in info.columns]
    if missing:
        raise PermanentDestinationError(
            f"record columns missing from target table {info}: {', '.join(sorted(missing))} "
            f"(target has: {', '.join(info.columns)})"
        )
    assignments = [
        sql.SQL("{} = %s::{}").format(sql.Identifier(c), sql.SQL(cast_type(info.columns[c])))
        for c in values
    ]
    params: list[Any] = [text_value(v) for v in values.values()]
    if guard:
        assignments += [
            sql.SQL("{} = %s").format(sql.Identifier(POSITION_COMMIT_COLUMN)),
            sql.SQL("{} = %s").format(sql.Identifier(POSITION_SEQ_COLUMN)),
        ]
        params += [record.position.commit, record.position.seq]
    where = [
        sql.SQL("{} = %s::{}").format(sql.Identifier(c), sql.SQL(cast_type(info.columns[c])))
        for c in old
    ]
    params += [text_value(v) for v in old.values()]
    # Identifiers may hold '%': escape the composed text, then put the placeholders back.
    marker = "\x00rosetta-param\x00"
    query = sql.SQL("UPDATE {} SET {} WHERE {}").format(
        info.ident, sql.SQL(", ").join(assignments), sql.SQL(" AND ").join(where)
    )
    text = query.as_string(cur).replace("%s", marker).replace("%", "%%").replace(marker, "%s")
    cur.execute(text, params)
    if cur.rowcount == 0:
        unchanged = ", ".join(record.unchanged)
        raise PermanentDestinationError(
            f"key change of {record.table} at {record.position} from {old} to "
            f"{dict(record.key)}: no row with the old key at target table {info}, and the "
            f"unchanged columns ({unchanged}) the source did not send exist only in that "
            "row; parked (copy the row from the source, then replay or drop it)"
        )
