"""The statements of a truncate and of a key move (an update that moves a row to a new key)."""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import Any

from psycopg2 import sql
from psycopg2.extensions import cursor as PgCursor

from destinations.errors import PermanentDestinationError, TableLevelDestinationError
from destinations.ordered_parts import MOVE, TRUNCATE, Part
from destinations.postgresql.apply import TableInfo, cast_type
from destinations.postgresql.copy_text import text_value
from destinations.postgresql.truncate_watermark import (
    apply_guarded_truncate,
    create_truncates_table,
    watermark,
)
from destinations.records import POSITION_COMMIT_COLUMN, POSITION_SEQ_COLUMN, ChangeRecord

logger = logging.getLogger(__name__)


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
            apply_truncate(cur, info, records[0], guard=guard)
        elif kind == MOVE:
            apply_move(cur, info, records[0], guard=guard)
        else:
            apply_rows(records)
            # A staged write's stage tables live until commit: drop them now, so
            # that a later part of this transaction can create its own.
            cur.execute("DISCARD TEMP")


def apply_truncate(cur: PgCursor, info: TableInfo, record: ChangeRecord, *, guard: bool) -> None:
    """Empty the target (the source table was truncated); guarded: see ``truncate_watermark``."""
    if not guard:
        cur.execute(sql.SQL("TRUNCATE TABLE {}").format(info.ident))
        return
    done = apply_guarded_truncate(cur, info, record.position)
    logger.info(
        "truncate applied table=%s position=%s guard=on result=%s", info, record.position, done
    )


def apply_move(cur: PgCursor, info: TableInfo, record: ChangeRecord, *, guard: bool) -> None:
    """Move the row at ``record.moved_from`` to ``record.key`` in place, with ``after``'s values.

    The columns the source left out as unchanged stay as the row holds them.
    A move delivered again (the row already at the new key) updates that row.
    PermanentDestinationError (the change is parked, naming why) when no row
    holds either key: the unchanged columns' values exist nowhere else.
    With the position guard only an older row is changed.
    """
    if guard:
        create_truncates_table(cur, info.schema)
        mark = watermark(cur, info)
        if mark is not None and tuple(record.position) <= tuple(mark):
            return  # the table was truncated after this change: the row stays gone
    old = record.moved_from or {}
    values = {**(record.after or {}), **record.key}
    missing = [c for c in [*values, *old] if c not in info.columns]
    if missing:
        raise TableLevelDestinationError(
            f"record columns missing from target table {info}: {', '.join(sorted(missing))} "
            f"(target has: {', '.join(info.columns)})"
        )
    if _update(cur, info, record, values, old, guard) or _update(
        cur, info, record, values, dict(record.key), guard
    ):
        return
    if guard and _exists(cur, info, dict(record.key)):
        return  # the row at the new key is newer than this change
    unchanged = ", ".join(record.unchanged)
    raise PermanentDestinationError(
        f"key change of {record.table} at {record.position} from {old} to "
        f"{dict(record.key)}: no row with the old key at target table {info}, and the "
        f"unchanged columns ({unchanged}) the source did not send exist only in that "
        "row; parked (copy the row from the source, then replay or drop it)"
    )


def _matching(info: TableInfo, key: dict[str, Any]) -> tuple[list[sql.Composable], list[Any]]:
    where: list[sql.Composable] = [
        sql.SQL("{} = %s::{}").format(sql.Identifier(c), sql.SQL(cast_type(info.columns[c])))
        for c in key
    ]
    return where, [text_value(v) for v in key.values()]


def _update(
    cur: PgCursor,
    info: TableInfo,
    record: ChangeRecord,
    values: dict[str, Any],
    key: dict[str, Any],
    guard: bool,
) -> bool:
    """``UPDATE target SET values WHERE key`` (and older, guarded); True if a row changed."""
    assignments = [
        sql.SQL("{} = %s::{}").format(sql.Identifier(c), sql.SQL(cast_type(info.columns[c])))
        for c in values
    ]
    params: list[Any] = [text_value(v) for v in values.values()]
    where, key_params = _matching(info, key)
    params += key_params
    if guard:
        commit, seq = sql.Identifier(POSITION_COMMIT_COLUMN), sql.Identifier(POSITION_SEQ_COLUMN)
        assignments += [sql.SQL("{} = %s").format(commit), sql.SQL("{} = %s").format(seq)]
        params[len(values) : len(values)] = [record.position.commit, record.position.seq]
        # Rows from before the guard (no position) count as oldest.
        where.append(sql.SQL("({} IS NULL OR ({}, {}) < (%s, %s))").format(commit, commit, seq))
        params += [record.position.commit, record.position.seq]
    query = sql.SQL("UPDATE {} SET {} WHERE {}").format(
        info.ident, sql.SQL(", ").join(assignments), sql.SQL(" AND ").join(where)
    )
    cur.execute(_escaped(cur, query), params)
    return bool(cur.rowcount)


def _exists(cur: PgCursor, info: TableInfo, key: dict[str, Any]) -> bool:
    where, params = _matching(info, key)
    query = sql.SQL("SELECT 1 FROM {} WHERE {}").format(info.ident, sql.SQL(" AND ").join(where))
    cur.execute(_escaped(cur, query), params)
    return cur.fetchone() is not None


def _escaped(cur: PgCursor, query: sql.Composed) -> str:
    """The query's text with a literal '%' (identifiers may hold one) doubled."""
    marker = "\x00rosetta-param\x00"
    return query.as_string(cur).replace("%s", marker).replace("%", "%%").replace(marker, "%s")
