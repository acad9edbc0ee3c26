"""Builds and sends the statements that apply a planned batch to its target table.

Small batches go straight to the target with typed ``VALUES`` lists
(``execute_values``). Large ones, and every batch with the position guard
on, are copied into temporary stage tables with ``COPY``, then applied with
``DELETE ... USING stage`` and ``INSERT ... SELECT ... ON CONFLICT (pk) DO
UPDATE`` statements sent together in one round trip.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass, field

import psycopg2
import psycopg2.extras
from psycopg2 import sql
from psycopg2.extensions import cursor as PgCursor

from destinations.net_effect import BatchLayout, ColumnBatch
from destinations.postgresql.copy_text import NULL, CopyReader, copy_column, copy_lines, text_value
from destinations.postgresql.truncate_watermark import create_truncates_table, not_truncated
from destinations.records import POSITION_COLUMNS, POSITION_COMMIT_COLUMN, POSITION_SEQ_COLUMN

_DELETE_FLAG = "_rosetta_stage_delete"  # stage-only column: True for a delete
_COPY_CHUNK_ROWS = (
    5000  # rows formatted per COPY chunk; the server parses one while we format the next
)


@dataclass(frozen=True)
class TableInfo:
    """What the catalog says about a target table."""

    schema: str
    name: str
    # column name -> base type, in table order. Without the type modifier on
    # purpose: an explicit cast to varchar(3) would silently truncate, while
    # assigning the base-typed value to the column checks the length (22001).
    columns: dict[str, str]
    # column name -> type with its modifier (numeric(12,2), timestamp(3) ...):
    # what the value checks compare a value's scale and precision against.
    full_types: dict[str, str] = field(default_factory=dict)

    @property
    def ident(self) -> sql.Identifier:
        return sql.Identifier(self.schema, self.name)

    def __str__(self) -> str:
        return f"{self.schema}.{self.name}"


def apply_values(cur: PgCursor, info: TableInfo, plan: BatchLayout) -> None:
    """Small batches: upsert and delete straight from typed VALUES lists."""
    target = info.ident
    keys = plan.keys
    for group in plan.upserts:
        query = sql.SQL("INSERT INTO {} ({}) VALUES {} ON CONFLICT ({}) {}").format(
            target,
            idents(group.columns),
            sql.Placeholder(),
            idents(keys),
            _on_conflict_set(group.columns, keys, guard=False),
        )
        _execute_values(cur, query, group, _template(info, group.columns))
    if plan.deletes:
        query = sql.SQL("DELETE FROM {} AS t USING (VALUES {}) AS d ({}) WHERE {}").format(
            target, sql.Placeholder(), idents(keys), _key_match("t", "d", keys)
        )
        _execute_values(cur, query, plan.deletes, _template(info, keys))


def apply_staged(
    cur: PgCursor,
    info: TableInfo,
    plan: BatchLayout,
    tombstones: sql.Identifier | None,
    copy_chunks: list[list[str]] | None = None,
) -> None:
    """COPY the changes into temporary stage tables, then apply them in one round trip.

    ``copy_chunks`` is the COPY text of each stage, when formatted ahead.
    """
    creates: list[sql.Composable] = []
    statements: list[sql.Composable] = []
    copies: list[tuple[sql.Composable, CopyReader]] = []
    for index, (stage_columns, upserts, deletes) in enumerate(stages(plan)):
        stage = sql.Identifier(f"_rosetta_stage_{index}")
        text = (
            iter(copy_chunks[index])
            if copy_chunks is not None
            else stage_chunks(stage_columns, upserts, deletes)
        )
        creates.append(
            sql.SQL(
                "CREATE TEMPORARY TABLE {} ON COMMIT DROP AS "
                "SELECT {}, NULL::boolean AS {} FROM {} WITH NO DATA"
            ).format(stage, idents(stage_columns), sql.Identifier(_DELETE_FLAG), info.ident)
        )
        copies.append(
            (
                sql.SQL("COPY {} ({}) FROM STDIN").format(
                    stage, idents(stage_columns + (_DELETE_FLAG,))
                ),
                CopyReader(text),
            )
        )
        columns = tuple(c for c in stage_columns if c not in POSITION_COLUMNS)
        statements += _staged_sql(
            info, stage, columns, plan.keys, tombstones, bool(upserts), bool(deletes)
        )
    cur.execute(sql.SQL("; ").join(creates))
    for copy_sql, buffer in copies:
        try:
            cur.copy_expert(copy_sql, buffer, size=1 << 20)
        except psycopg2.Error as exc:
            if buffer.error is not None:  # a value we could not format: permanent
                raise buffer.error from exc
            raise
    cur.execute(sql.SQL("; ").join(statements))


def idents(names: Iterable[str]) -> sql.Composed:
    return sql.SQL(", ").join(sql.Identifier(n) for n in names)


def _qualified(alias: str, column: str) -> sql.Composed:
    return sql.SQL("{}.{}").format(sql.Identifier(alias), sql.Identifier(column))


def _key_match(left: str, right: str, keys: Sequence[str]) -> sql.Composed:
    return sql.SQL(" AND ").join(
        sql.SQL("{} = {}").format(_qualified(left, k), _qualified(right, k)) for k in keys
    )


def _position(alias: str) -> sql.Composed:
    return sql.SQL("({}, {})").format(
        _qualified(alias, POSITION_COMMIT_COLUMN), _qualified(alias, POSITION_SEQ_COLUMN)
    )


def _on_conflict_set(columns: Sequence[str], keys: Sequence[str], *, guard: bool) -> sql.Composed:
    updates = [c for c in columns if c not in keys]
    if guard:
        updates += [POSITION_COMMIT_COLUMN, POSITION_SEQ_COLUMN]
    if not updates:
        return sql.Composed([sql.SQL("DO NOTHING")])
    assignments = sql.SQL(", ").join(
        sql.SQL("{} = EXCLUDED.{}").format(sql.Identifier(c), sql.Identifier(c)) for c in updates
    )
    if not guard:
        return sql.SQL("DO UPDATE SET {}").format(assignments)
    # Only a newer change may overwrite; rows from before the guard count as oldest.
    return sql.SQL("DO UPDATE SET {} WHERE {} IS NULL OR {} < {}").format(
        assignments,
        _qualified("t", POSITION_COMMIT_COLUMN),
        _position("t"),
        sql.SQL("(EXCLUDED.{}, EXCLUDED.{})").format(
            sql.Identifier(POSITION_COMMIT_COLUMN), sql.Identifier(POSITION_SEQ_COLUMN)
        ),
    )


def _staged_sql(
    info: TableInfo,
    stage: sql.Identifier,
    columns: tuple[str, ...],
    keys: tuple[str, ...],
    tombstones: sql.Identifier | None,
    has_upserts: bool,
    has_deletes: bool,
) -> list[sql.Composable]:
    """The statements that apply one stage table to the target."""
    flag = _qualified("s", _DELETE_FLAG)
    target = sql.SQL("{} AS t").format(info.ident)
    source = sql.SQL("{} AS s").format(stage)
    match = _key_match("t", "s", keys)
    insert_columns = columns + ((POSITION_COMMIT_COLUMN, POSITION_SEQ_COLUMN) if tombstones else ())
    select_list = sql.SQL(", ").join(_qualified("s", c) for c in insert_columns)

    def upsert(where: sql.Composable) -> sql.Composed:
        """Upsert the stage rows matching ``where`` into the target."""
        return sql.SQL("INSERT INTO {} ({}) SELECT {} FROM {} WHERE {} ON CONFLICT ({}) {}").format(
            target,
            idents(insert_columns),
            select_list,
            source,
            where,
            idents(keys),
            _on_conflict_set(columns, keys, guard=tombstones is not None),
        )

    statements: list[sql.Composable] = []
    if tombstones is None:
        if has_deletes:
            statements.append(
                sql.SQL("DELETE FROM {} USING {} WHERE {} AND {}").format(
                    target, source, flag, match
                )
            )
        if not has_upserts:
            return statements
        statements.append(upsert(sql.SQL("NOT {}").format(flag)))
        return statements

    tomb_match = _key_match("b", "s", keys)
    newer_than_row = sql.SQL("({} IS NULL OR {} < {})").format(
        _qualified("t", POSITION_COMMIT_COLUMN), _position("t"), _position("s")
    )
    tomb = sql.SQL("{} AS b").format(tombstones)
    # Changes not newer than the table's last truncate are refused like older ones.
    after_truncate = not_truncated(info, _position("s"))
    if has_deletes:
        statements += [
            # 1. A delete removes the row unless the row is newer.
            sql.SQL("DELETE FROM {} USING {} WHERE {} AND {} AND {}").format(
                target, source, flag, match, newer_than_row
            ),
            # 2. Remember applied deletes (row gone or never there), newest wins.
            sql.SQL(
                "INSERT INTO {} AS b ({}, {}, {}) SELECT {}, {}, {} FROM {} WHERE {} "
                "AND NOT EXISTS (SELECT 1 FROM {} WHERE {}) AND {} "
                "ON CONFLICT ({}) DO UPDATE SET {} = EXCLUDED.{}, {} = EXCLUDED.{} "
                "WHERE {} < (EXCLUDED.{}, EXCLUDED.{})"
            ).format(
                tombstones,
                idents(keys),
                sql.Identifier(POSITION_COMMIT_COLUMN),
                sql.Identifier(POSITION_SEQ_COLUMN),
                sql.SQL(", ").join(_qualified("s", k) for k in keys),
                _qualified("s", POSITION_COMMIT_COLUMN),
                _qualified("s", POSITION_SEQ_COLUMN),
                source,
                flag,
                target,
                match,
                after_truncate,
                idents(keys),
                sql.Identifier(POSITION_COMMIT_COLUMN),
                sql.Identifier(POSITION_COMMIT_COLUMN),
                sql.Identifier(POSITION_SEQ_COLUMN),
                sql.Identifier(POSITION_SEQ_COLUMN),
                _position("b"),
                sql.Identifier(POSITION_COMMIT_COLUMN),
                sql.Identifier(POSITION_SEQ_COLUMN),
            ),
        ]
    if not has_upserts:
        return statements
    statements += [
        # 3. Upserts, unless a tombstone or the row itself is at least as new.
        upsert(
            sql.SQL("NOT {} AND NOT EXISTS (SELECT 1 FROM {} WHERE {} AND {} >= {}) AND {}").format(
                flag, tomb, tomb_match, _position("b"), _position("s"), after_truncate
            )
        ),
        # 4. A newer upsert makes older tombstones of its key useless.
        sql.SQL("DELETE FROM {} USING {} WHERE NOT {} AND {} AND {} < {}").format(
            tomb, source, flag, tomb_match, _position("b"), _position("s")
        ),
    ]
    return statements


def _template(info: TableInfo, columns: Sequence[str]) -> str:
    """An execute_values row template that casts each value to its column's type."""
    return "(" + ", ".join(f"%s::{cast_type(info.columns[c])}" for c in columns) + ")"


def cast_type(base: str) -> str:
    # A bare ``bit`` or ``character`` cast means bit(1) or char(1) and would
    # cut '0101' to '0' and 'ab' to 'a'; the assignment to the column then
    # checks the length.
    return _UNBOUNDED.get(base, base)


_UNBOUNDED = {"bit": "bit varying", "character": "bpchar"}


def _execute_values(cur: PgCursor, query: sql.Composed, batch: ColumnBatch, template: str) -> None:
    if not batch:
        return
    # Identifiers may contain '%', which the parameter formatting would read
    # as a placeholder: escape the composed text, then put the one %s back.
    marker = "\x00rosetta-values\x00"
    text = query.as_string(cur).replace("%s", marker).replace("%", "%%").replace(marker, "%s")
    # Values go as the same text COPY would send, cast by the template, so
    # both paths store a value identically (an aware datetime in a timestamp
    # column, a UUID, a NaN...).
    columns = [list(map(text_value, column)) for column in batch.data]
    rows = list(zip(*columns, strict=True))
    psycopg2.extras.execute_values(cur, text, rows, template=template, page_size=len(rows))


def stages(
    plan: BatchLayout,
) -> list[tuple[tuple[str, ...], ColumnBatch | None, ColumnBatch | None]]:
    """The stage tables of a staged write: (columns, upserts, deletes) for each.

    One stage per upsert column set; deletes ride in the first stage with
    only their key (and position) set.
    """
    stages: list[tuple[ColumnBatch | None, ColumnBatch | None]] = [
        (group, plan.deletes if index == 0 and plan.deletes else None)
        for index, group in enumerate(plan.upserts)
    ] or [(None, plan.deletes)]
    return [
        ((upserts or deletes or plan.deletes).columns, upserts, deletes)
        for upserts, deletes in stages
    ]


def stage_chunks(
    columns: tuple[str, ...], upserts: ColumnBatch | None, deletes: ColumnBatch | None
) -> Iterator[str]:
    """COPY text for one stage table (its columns, then the delete flag), in chunks."""
    if upserts:
        for start in range(0, len(upserts), _COPY_CHUNK_ROWS):
            end = start + _COPY_CHUNK_ROWS
            fields = [copy_column(values[start:end]) for values in upserts.data]
            yield copy_lines([*fields, ["f"] * len(fields[0])])
    if deletes:
        given = dict(zip(deletes.columns, deletes.data, strict=True))
        for start in range(0, len(deletes), _COPY_CHUNK_ROWS):
            end = start + _COPY_CHUNK_ROWS
            count = len(deletes.records[start:end])
            nulls = [NULL] * count  # a delete sets only its key (and position)
            fields = [copy_column(given[c][start:end]) if c in given else nulls for c in columns]
            yield copy_lines([*fields, ["t"] * count])


def apply_append(
    cur: PgCursor, info: TableInfo, groups: Sequence[ColumnBatch], *, guard: bool = False
) -> None:
    """Append-only tables: insert each change as a new row, once.

    ``groups`` carry the position columns last (``with_positions``); the
    target's unique constraint on them turns a replayed insert into nothing.
    With the guard on, an insert not newer than the table's last applied
    truncate stays out too (``truncate_watermark``), as for keyed tables.
    """
    conflict = idents(POSITION_COLUMNS)
    if guard:
        create_truncates_table(cur, info.schema)  # the guarded insert reads it
    for group in groups:
        if guard:
            query = sql.SQL(
                "INSERT INTO {} ({}) SELECT * FROM (VALUES {}) AS v ({}) WHERE {} "
                "ON CONFLICT ({}) DO NOTHING"
            ).format(
                info.ident,
                idents(group.columns),
                sql.Placeholder(),
                idents(group.columns),
                not_truncated(info, _position("v")),
                conflict,
            )
        else:
            query = sql.SQL("INSERT INTO {} ({}) VALUES {} ON CONFLICT ({}) DO NOTHING").format(
                info.ident, idents(group.columns), sql.Placeholder(), conflict
            )
        _execute_values(cur, query, group, _template(info, group.columns))


def create_tombstone_table(
    cur: PgCursor, info: TableInfo, tomb: sql.Identifier, keys: Sequence[str]
) -> bool:
    """Create the position guard's tombstone table ``tomb`` if missing; True if it was."""
    cur.execute("SELECT to_regclass(%s)", (tomb.as_string(cur),))
    row = cur.fetchone()
    if row is not None and row[0] is not None:
        return False
    # Serialise creators (two pipelines starting together) so that
    # CREATE ... IF NOT EXISTS cannot race on the catalog.
    cur.execute("SELECT pg_advisory_xact_lock(hashtext('rosetta.tombstones'))")
    key_defs = [sql.SQL("{} {}").format(sql.Identifier(k), sql.SQL(info.columns[k])) for k in keys]
    cur.execute(
        sql.SQL(
            "CREATE TABLE IF NOT EXISTS {} ({}, {} bigint NOT NULL, {} bigint NOT NULL, "
            "PRIMARY KEY ({}))"
        ).format(
            tomb,
            sql.SQL(", ").join(key_defs),
            sql.Identifier(POSITION_COMMIT_COLUMN),
            sql.Identifier(POSITION_SEQ_COLUMN),
            idents(keys),
        )
    )
    return True
