"""Schema evolution (``schema_evolution = "basic"``): the columns a batch needs, and their types.

With ``"basic"`` (as Debezium's JDBC sink names it) a destination creates a
missing target table from the changes' columns and key, and adds a column the
target lacks, always nullable. Nothing else changes on its own: a value whose
type the existing column cannot hold is refused by the destination's value
check (the change is parked with the reason), and a column gone from the
source stays at the target (its new rows leave it NULL; a NOT NULL one makes
the insert fail, and the change is parked naming it).

A column's type comes from the source's relation when the source knows it
(the PostgreSQL source: ``Source.column_types``) and from the batch's values
otherwise; this module reduces the values to a ``ColumnType`` and each
destination maps it to its own SQL (documented in the README).
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from datetime import date, datetime, time, timedelta
from decimal import Decimal
from enum import StrEnum
from typing import Any, NamedTuple
from uuid import UUID

from config.errors import ConfigError
from destinations.records import POSITION_COLUMNS, ChangeRecord

SCHEMA_EVOLUTION_MODES = ("none", "basic")


class Kind(StrEnum):
    """A kind of value; each destination maps it to a column type of its own."""

    BOOLEAN = "boolean"
    INTEGER = "integer"
    DECIMAL = "decimal"
    FLOAT = "float"
    TEXT = "text"
    TIMESTAMP = "timestamp"
    TIMESTAMPTZ = "timestamptz"
    DATE = "date"
    TIME = "time"
    TIMETZ = "timetz"
    INTERVAL = "interval"
    UUID = "uuid"
    JSON = "json"
    BYTES = "bytes"


# Two kinds seen in one column widen to the kind that holds both, else to text.
_WIDER: dict[frozenset[Kind], Kind] = {
    frozenset({Kind.INTEGER, Kind.DECIMAL}): Kind.DECIMAL,
    frozenset({Kind.INTEGER, Kind.FLOAT}): Kind.FLOAT,
    frozenset({Kind.DECIMAL, Kind.FLOAT}): Kind.DECIMAL,
    frozenset({Kind.TIMESTAMP, Kind.TIMESTAMPTZ}): Kind.TIMESTAMPTZ,
    frozenset({Kind.TIME, Kind.TIMETZ}): Kind.TIMETZ,
}
_INT64 = 2**63


class ColumnType(NamedTuple):
    """What a new column must hold: a kind of value, the largest decimal scale seen,
    and the source's own type name when the source knows it."""

    kind: Kind
    scale: int = 0
    source: str | None = None


def checked_mode(owner: str, value: object) -> str:
    """``value`` as a schema_evolution mode; ConfigError naming the accepted ones."""
    if value not in SCHEMA_EVOLUTION_MODES:
        raise ConfigError(
            [
                f"{owner}: schema_evolution must be one of "
                f"{', '.join(repr(m) for m in SCHEMA_EVOLUTION_MODES)}, got {value!r}"
            ]
        )
    return str(value)


def value_kind(value: Any) -> Kind | None:
    """The kind of one value; None for NULL (it says nothing of the type)."""
    if value is None:
        return None
    if isinstance(value, bool):
        return Kind.BOOLEAN
    if isinstance(value, int):
        return Kind.INTEGER if -_INT64 <= value < _INT64 else Kind.DECIMAL
    if isinstance(value, Decimal):
        return Kind.DECIMAL
    if isinstance(value, float):
        return Kind.FLOAT
    if isinstance(value, datetime):
        return Kind.TIMESTAMP if value.tzinfo is None else Kind.TIMESTAMPTZ
    if isinstance(value, date):
        return Kind.DATE
    if isinstance(value, time):
        return Kind.TIME if value.tzinfo is None else Kind.TIMETZ
    if isinstance(value, timedelta):
        return Kind.INTERVAL
    if isinstance(value, UUID):
        return Kind.UUID
    if isinstance(value, dict | list):
        return Kind.JSON
    if isinstance(value, bytes | bytearray | memoryview):
        return Kind.BYTES
    return Kind.TEXT


def _scale(value: Any) -> int:
    if isinstance(value, Decimal) and value.is_finite():
        exponent = value.as_tuple().exponent
        return -exponent if isinstance(exponent, int) and exponent < 0 else 0
    return 0


def _widened(kind: Kind | None, other: Kind) -> Kind:
    if kind is None or kind == other:
        return other
    return _WIDER.get(frozenset({kind, other}), Kind.TEXT)


def needed_columns(
    records: Iterable[ChangeRecord], source_types: Mapping[str, str] | None = None
) -> dict[str, ColumnType]:
    """Every column the changes write (key columns first, then in the order seen), typed.

    Unchanged (TOAST) columns count: the row has them. The position columns
    are the destination's own and left out. A column only ever NULL is text.
    """
    kinds: dict[str, Kind | None] = {}
    scales: dict[str, int] = {}
    for record in records:
        rows = [record.key, record.after or {}, record.before or {}]
        for row in rows:
            for column, value in row.items():
                kind = value_kind(value)
                seen = kinds.get(column)
                if column not in kinds or kind is not None:
                    kinds[column] = seen if kind is None else _widened(seen, kind)
                if kind == Kind.DECIMAL:
                    scales[column] = max(scales.get(column, 0), _scale(value))
        for column in record.unchanged:
            kinds.setdefault(column, None)
    types = source_types or {}
    return {
        column: ColumnType(kind or Kind.TEXT, scales.get(column, 0), types.get(column))
        for column, kind in kinds.items()
        if column not in POSITION_COLUMNS
    }


def key_of(records: Iterable[ChangeRecord]) -> tuple[str, ...]:
    """The key columns the changes carry (the first keyed change's); () for none."""
    for record in records:
        if record.key:
            return tuple(record.key)
    return ()
