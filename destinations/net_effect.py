"""Collapse a batch of changes to its net effect: one change per primary key."""

from __future__ import annotations

from collections.abc import Sequence
from operator import attrgetter
from typing import Any

from destinations.errors import PermanentDestinationError
from destinations.records import ChangeRecord

_BY_POSITION = attrgetter("position")


def net_effect(records: Sequence[ChangeRecord]) -> list[ChangeRecord]:
    """The last change per key, by source position.

    The sort is stable, so changes with equal positions keep their batch order.
    Applying only the last change of each key gives the same table as applying
    every change in order, because each change carries the full row (upsert) or
    removes it (delete). Raises ``PermanentDestinationError`` for a record that
    cannot be applied at all (an upsert without a row, a record without a key).
    """
    latest: dict[tuple[Any, ...], ChangeRecord] = {}
    for record in sorted(records, key=_BY_POSITION):
        if not record.key:
            raise PermanentDestinationError(
                f"change without a primary key: table={record.table} position={record.position}"
            )
        if record.after is None and not record.op.is_delete:
            raise PermanentDestinationError(
                f"{record.op.name.lower()} without a row image: table={record.table} "
                f"key={dict(record.key)} position={record.position}"
            )
        latest[record.key_values] = record
    return list(latest.values())


def row_of(record: ChangeRecord) -> dict[str, Any]:
    """The row an upsert writes: its after image, with the key columns filled from ``key``."""
    assert record.after is not None
    row = dict(record.after)
    for column, value in record.key.items():
        row.setdefault(column, value)
    return row
