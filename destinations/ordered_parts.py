"""Splits a table's batch where changes must be applied one by one: truncates and key moves.

A batch is normally collapsed to one change per key (``net_effect``), which
reorders changes of different keys freely. A truncate removes every row, and
a key move (``ChangeRecord.moved_from``) takes its unchanged columns from the
row at the old key: each must see exactly the changes before it applied and
none after, so the batch is cut around them.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import NamedTuple

from destinations.records import ChangeRecord, Operation

ROWS, TRUNCATE, MOVE = "rows", "truncate", "move"


class Part(NamedTuple):
    """``ROWS``: changes that may be collapsed; ``TRUNCATE`` or ``MOVE``: one change."""

    kind: str
    records: list[ChangeRecord]


def _special(record: ChangeRecord) -> str | None:
    if record.op is Operation.TRUNCATE:
        return TRUNCATE
    if record.unchanged and record.moved_from is not None:
        return MOVE
    return None


def ordered_parts(records: Sequence[ChangeRecord]) -> list[Part] | None:
    """``records`` (source order) cut around truncates and key moves; None when it has none."""
    # The common batch has neither: one cheap pass tells.
    if not any(r.op is Operation.TRUNCATE or r.unchanged for r in records):
        return None
    parts: list[Part] = []
    run: list[ChangeRecord] = []
    for record in records:
        kind = _special(record)
        if kind is None:
            run.append(record)
            continue
        if run:
            parts.append(Part(ROWS, run))
            run = []
        parts.append(Part(kind, [record]))
    if run:
        parts.append(Part(ROWS, run))
    if all(part.kind == ROWS for part in parts):
        return None  # unchanged columns, but no move: the usual path keeps them
    return parts


def key_move_refusal(record: ChangeRecord) -> str:
    """Why a destination that cannot move a row in place parks a key move."""
    return (
        f"key change of {record.table} at {record.position} from {record.moved_from} to "
        f"{dict(record.key)} with unchanged columns ({', '.join(record.unchanged)}) the source "
        "did not send: this destination cannot move a row to a new key in place, and a "
        "delete then an insert would lose those columns; parked"
    )
