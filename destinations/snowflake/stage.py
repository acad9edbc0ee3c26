"""The stage table of one Snowflake batch: its rows, the INSERTs that fill it, the MERGE."""

from __future__ import annotations

import math
import uuid
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from datetime import timedelta
from decimal import Decimal
from typing import Any

from destinations.errors import TableLevelDestinationError
from destinations.json_text import json_text
from destinations.net_effect import BatchLayout, ColumnBatch
from destinations.snowflake.value_check import SEMI_STRUCTURED, base_type, check_column

STAGE_TABLE = "_ROSETTA_STAGE"  # a plain upper-case name: also its table stage, @%_ROSETTA_STAGE
_DELETE_FLAG = "_ROSETTA_DELETED"
_HAS_PREFIX = "_ROSETTA_HAS_"  # stage flag: the row carries this partial column
MAX_ROWS_PER_INSERT = 16_384  # Snowflake's limit on rows in one VALUES clause
MAX_INSERT_BYTES = 512 * 1024  # well under Snowflake's limit on statement text


def quote(name: str) -> str:
    """A Snowflake quoted identifier: exact, case-sensitive, any characters."""
    return '"' + name.replace('"', '""') + '"'


@dataclass(frozen=True)
class TableInfo:
    """What ``DESCRIBE TABLE`` says about a target table."""

    name: str  # qualified, quoted
    columns: dict[str, str]  # exact column name -> type, in table order

    def resolve(self, column: str) -> str | None:
        """The target column for ``column``: exact match, else a unique case-insensitive one."""
        if column in self.columns:
            return column
        folded = [c for c in self.columns if c.upper() == column.upper()]
        return folded[0] if len(folded) == 1 else None


@dataclass
class Stage:
    """The stage table for one batch and the statements that fill and merge it."""

    info: TableInfo
    keys: tuple[str, ...]  # target column names
    columns: tuple[str, ...]  # target column names written, in table order
    partial: tuple[str, ...]  # columns some rows lack
    rows: list[tuple[Any, ...]]  # stage rows: columns, delete flag, partial flags

    @classmethod
    def build(cls, info: TableInfo, plan: BatchLayout, owner: object) -> Stage:
        keys = _resolve(info, plan.keys, "key", owner)
        groups = [(_resolve(info, g.columns, "record", owner), g) for g in plan.upserts]
        for cols, group in [*groups, (keys, plan.deletes)]:
            for column, values in zip(cols, group.data, strict=True):
                check_column(column, info.columns[column], values)
        used = set(keys).union(*(set(cols) for cols, _ in groups))
        columns = tuple(c for c in info.columns if c in used)
        partial = tuple(c for c in columns if any(c not in cols for cols, _ in groups))
        rows: list[tuple[Any, ...]] = []
        for cols, group in groups:
            rows += _stage_rows(info, columns, partial, cols, group, deleted=False)
        if plan.deletes:
            rows += _stage_rows(info, columns, partial, keys, plan.deletes, deleted=True)
        return cls(info, keys, columns, partial, rows)

    @property
    def flags(self) -> list[str]:
        """The stage's partial-column flag names, one per partial column."""
        return [_HAS_PREFIX + str(i) for i in range(len(self.partial))]

    def stage_columns(self) -> list[tuple[str, str]]:
        """Every stage column and its type, in stage-row order."""
        columns = [(c, _stage_type(self.info.columns[c])) for c in self.columns]
        return columns + [(f, "BOOLEAN") for f in [_DELETE_FLAG, *self.flags]]

    def statements(self, max_rows: int, max_bytes: int) -> Iterator[tuple[str, Any]]:
        """Create, fill with multi-row INSERTs, merge: the whole batch as statements."""
        yield self.create(), None
        yield from self.inserts(max_rows, max_bytes)
        yield from self.merges()

    def create(self) -> str:
        definitions = [f"{quote(c)} {t}" for c, t in self.stage_columns()]
        return f"CREATE OR REPLACE TEMPORARY TABLE {quote(STAGE_TABLE)} ({', '.join(definitions)})"

    def inserts(self, max_rows: int, max_bytes: int) -> Iterator[tuple[str, Any]]:
        names = ", ".join(quote(c) for c, _ in self.stage_columns())
        names = names.replace("%", "%%")  # the INSERT is %-formatted with its parameters
        row_sql = "(" + ", ".join(["%s"] * len(self.stage_columns())) + ")"
        for chunk in _chunks(self.rows, max_rows, max_bytes):
            values = ", ".join([row_sql] * len(chunk))
            yield (
                f"INSERT INTO {quote(STAGE_TABLE)} ({names}) VALUES {values}",
                [v for row in chunk for v in row],
            )

    def merges(self) -> Iterator[tuple[str, Any]]:
        stage = quote(STAGE_TABLE)
        match = " AND ".join(f"t.{quote(k)} = s.{quote(k)}" for k in self.keys)
        for column, flag in zip(self.partial, self.flags, strict=True):
            # Rows without this column keep the target's value (a plain MERGE would null it).
            yield (
                f"UPDATE {stage} AS s SET {quote(column)} = t.{quote(column)} "
                f"FROM {self.info.name} AS t WHERE {match} AND NOT s.{quote(flag)}",
                None,
            )
        yield self._merge(stage, match), None

    def _merge(self, stage: str, match: str) -> str:
        deleted = f"s.{quote(_DELETE_FLAG)}"
        updates = [c for c in self.columns if c not in self.keys]
        clauses = [f"WHEN MATCHED AND {deleted} THEN DELETE"]
        if updates:
            assignments = ", ".join(f"{quote(c)} = s.{quote(c)}" for c in updates)
            clauses.append(f"WHEN MATCHED THEN UPDATE SET {assignments}")
        insert_columns = ", ".join(quote(c) for c in self.columns)
        insert_values = ", ".join(f"s.{quote(c)}" for c in self.columns)
        clauses.append(
            f"WHEN NOT MATCHED AND NOT {deleted} THEN INSERT ({insert_columns}) "
            f"VALUES ({insert_values})"
        )
        return f"MERGE INTO {self.info.name} AS t USING {stage} AS s ON {match} " + " ".join(
            clauses
        )


def _stage_type(target_type: str) -> str:
    """The stage column type for a target column type.

    Strings and binaries lose their length: the stage only carries values,
    and the MERGE into the target still enforces the target's lengths.
    """
    base = target_type.split("(", 1)[0].strip().upper()
    if base in {"VARCHAR", "TEXT", "STRING", "CHAR", "CHARACTER", "NCHAR", "NVARCHAR"}:
        return "VARCHAR"
    if base in {"BINARY", "VARBINARY"}:
        return "BINARY"
    return target_type


def _resolve(info: TableInfo, columns: Sequence[str], what: str, owner: object) -> tuple[str, ...]:
    resolved = [info.resolve(c) for c in columns]
    missing = [c for c, r in zip(columns, resolved, strict=True) if r is None]
    if missing:
        raise TableLevelDestinationError(
            f"{owner}: {what} columns missing from target table {info.name}: "
            f"{', '.join(sorted(missing))} (target has: {', '.join(info.columns)})"
        )
    return tuple(r for r in resolved if r is not None)


def _stage_rows(
    info: TableInfo,
    columns: tuple[str, ...],
    partial: tuple[str, ...],
    present: tuple[str, ...],
    group: ColumnBatch,
    *,
    deleted: bool,
) -> list[tuple[Any, ...]]:
    """Stage rows of ``group`` (``present``: its columns): values, delete flag, partial flags."""
    by_column = dict(zip(present, group.data, strict=True))
    missing = [None] * len(group)
    data = [
        list(map(_param_for(info.columns[c]), by_column[c])) if c in by_column else missing
        for c in columns
    ]
    data.append([deleted] * len(group))
    # A delete has nothing to fill in: its partial flags say "present".
    data += [[deleted or c in by_column] * len(group) for c in partial]
    return list(zip(*data, strict=True))


def _chunks(
    rows: list[tuple[Any, ...]], max_rows: int, max_bytes: int
) -> Iterator[list[tuple[Any, ...]]]:
    """Consecutive runs of rows whose estimated statement text stays under ``max_bytes``."""
    chunk: list[tuple[Any, ...]] = []
    size = 0
    for row in rows:
        row_size = len(repr(row)) + 8  # ~ the row's literal text in the statement
        if chunk and (len(chunk) >= max_rows or size + row_size > max_bytes):
            yield chunk
            chunk, size = [], 0
        chunk.append(row)
        size += row_size
    if chunk:
        yield chunk


def _param_for(target_type: str) -> Callable[[Any], Any]:
    return _json_param if base_type(target_type) in SEMI_STRUCTURED else _param


def _json_param(value: Any) -> Any:
    """A value for a VARIANT column as JSON text; text is taken as JSON text already."""
    if value is None or isinstance(value, str):
        return value
    if isinstance(value, Decimal):
        return str(value)  # a JSON number with every digit
    return json_text(value)


def _param(value: Any) -> Any:
    """A value the connector can bind; the rest as text Snowflake casts on insert."""
    if value is None or isinstance(value, str | int | bool | bytes):
        return value
    if isinstance(value, float):
        if math.isfinite(value):
            return value
        return "NaN" if math.isnan(value) else ("inf" if value > 0 else "-inf")
    if isinstance(value, uuid.UUID):
        return str(value)
    if isinstance(value, dict | list):
        return json_text(value)
    if isinstance(value, bytearray | memoryview):
        return bytes(value)
    if isinstance(value, timedelta):  # exact seconds; a float would round long spans
        return Decimal(value.days * 86_400 + value.seconds) + Decimal(value.microseconds).scaleb(-6)
    return value  # Decimal, datetime, date, time: the connector converts them
