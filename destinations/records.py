"""The CDC change record: one insert/update/delete of one row, with its source position."""

from __future__ import annotations

from collections.abc import Mapping
from enum import StrEnum
from typing import Any, NamedTuple


class Operation(StrEnum):
    """Kind of change, with Debezium's one-letter codes as values."""

    INSERT = "c"
    UPDATE = "u"
    DELETE = "d"
    SNAPSHOT_READ = "r"
    # Every row of the table goes (``key`` and ``after`` empty). Not a
    # Debezium code: Debezium's "t" is the same event.
    TRUNCATE = "t"

    @property
    def is_delete(self) -> bool:
        return self is Operation.DELETE


class SourcePosition(NamedTuple):
    """Where a change sits in the source's history; ordered.

    ``commit`` is the position of the change's transaction commit (PostgreSQL:
    the commit LSN as an integer) and ``seq`` the change's order inside that
    transaction. A change's own WAL LSN is not monotonic across concurrent
    transactions, so ordering and "never apply an older change" compare these.
    """

    commit: int
    seq: int = 0

    def __str__(self) -> str:
        return f"{format_pg_lsn(self.commit)}#{self.seq}"


# The two bigint columns a position-guarded target table stores a change's
# ``SourcePosition`` in (see the PostgreSQL destination's position guard).
POSITION_COMMIT_COLUMN = "_rosetta_commit"
POSITION_SEQ_COLUMN = "_rosetta_seq"
POSITION_COLUMNS = (POSITION_COMMIT_COLUMN, POSITION_SEQ_COLUMN)


def parse_pg_lsn(text: str) -> int:
    """``'0/16B3748'`` -> integer LSN; ValueError if malformed."""
    high, sep, low = text.partition("/")
    if not sep or not high or not low:
        raise ValueError(f"not a PostgreSQL LSN (expected 'X/Y' in hex): {text!r}")
    return (int(high, 16) << 32) | int(low, 16)


def format_pg_lsn(value: int) -> str:
    return f"{value >> 32:X}/{value & 0xFFFFFFFF:X}"


class ChangeRecord(NamedTuple):
    """One change to one row of one source table (an immutable value).

    ``table`` is the source table's qualified name (``public.users``). ``key``
    holds the primary-key columns and their values, in key order. ``after`` is
    the row after the change (None for deletes); ``before`` the row before it,
    when the source provides it. Values are JSON-like scalars plus ``Decimal``,
    ``datetime``, ``date``, ``time``, ``UUID`` and ``bytes``.

    ``unchanged`` names the columns the source did not send because they did
    not change (PostgreSQL's unchanged TOAST values): they are absent from
    ``after``, and the destination keeps what it has. An update whose
    ``before`` holds a different key (``moved_from``) moves the row to the new
    key in place, so those columns move with it.

    A NamedTuple rather than a frozen dataclass: the DLQ builds one per queued
    message on every replay, and a tuple is built about three times faster.
    """

    table: str
    op: Operation
    key: Mapping[str, Any]
    after: Mapping[str, Any] | None
    position: SourcePosition
    before: Mapping[str, Any] | None = None
    commit_ts: float | None = None
    unchanged: tuple[str, ...] = ()

    @property
    def key_values(self) -> tuple[Any, ...]:
        return tuple(self.key.values())

    @property
    def moved_from(self) -> dict[str, Any] | None:
        """The key this update moves the row from, or None when it keeps its key.

        Only an update that names unchanged columns is a move: the row must be
        moved in place, since a delete and an insert would lose those columns.
        """
        if self.op is not Operation.UPDATE or not self.unchanged or not self.before:
            return None
        before = self.before
        old = {column: before.get(column) for column in self.key}
        return old if old != dict(self.key) else None
