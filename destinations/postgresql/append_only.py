"""Append-only tables: their changes laid out as new rows, each once, by its source position.

A table without a usable key (an audit log, pgbench's ``pgbench_history``)
cannot be upserted or deleted by key. Declared ``append_only`` (or sending
changes without a key), its inserts become new rows that carry their source
position in ``_rosetta_commit``/``_rosetta_seq``; a unique constraint on that
pair makes a replayed insert a no-op (``ON CONFLICT DO NOTHING``). Updates and
deletes have no row to name and are refused for good (parked).
"""

from __future__ import annotations

from collections.abc import Sequence

from destinations.errors import (
    PermanentDestinationError,
    TableLevelDestinationError,
    append_only_refusal,
)
from destinations.net_effect import ColumnBatch
from destinations.postgresql.apply import TableInfo
from destinations.postgresql.position_guard import with_positions, without_positions
from destinations.postgresql.value_check import checked_group
from destinations.records import POSITION_COLUMNS, ChangeRecord, Operation

_ROW_OPS = (Operation.INSERT, Operation.SNAPSHOT_READ)


def position_columns_ddl(table: str) -> str:
    """The statement that gives ``table`` its position columns and their unique constraint."""
    commit, seq = POSITION_COLUMNS
    return (
        f"ALTER TABLE {table} ADD COLUMN {commit} bigint, ADD COLUMN {seq} bigint, "
        f"ADD UNIQUE ({commit}, {seq})"
    )


def append_groups(info: TableInfo, records: Sequence[ChangeRecord]) -> list[ColumnBatch]:
    """The inserts of ``records`` grouped by the columns they write, positions last.

    Raises ``PermanentDestinationError`` for an update or delete (naming it),
    a target without the position columns (naming the DDL), a row column the
    target lacks, or a value it cannot store.
    """
    columns = info.columns
    if not all(c in columns for c in POSITION_COLUMNS):
        raise TableLevelDestinationError(
            f"append-only target table {info} lacks the position columns that make a "
            f"replayed insert a no-op: {position_columns_ddl(str(info))}"
        )
    groups: dict[tuple[str, ...], list[ChangeRecord]] = {}
    seen: set[tuple[int, int]] = set()
    for record in records:
        if record.op not in _ROW_OPS or record.after is None:
            raise PermanentDestinationError(append_only_refusal(record))
        if record.position in seen:  # the same change twice in one batch: once is enough
            continue
        seen.add(record.position)
        groups.setdefault(tuple(record.after), []).append(record)
    batches = []
    for names, rows in groups.items():
        missing = [c for c in names if c not in columns]
        if missing:
            raise TableLevelDestinationError(
                f"record columns missing from the append-only target of {rows[0].table}: "
                f"{', '.join(sorted(missing))} (target has: {', '.join(columns)})"
            )
        data = [[row.after[name] for row in rows] for name in names]  # type: ignore[index]
        group = without_positions(ColumnBatch(names, data, rows))
        batches.append(with_positions(checked_group(columns, info.full_types, group)))
    return batches
