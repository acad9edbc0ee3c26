"""The stage table of one Snowflake batch: its rows, the INSERTs that fill it, the MERGE.

A VARIANT, OBJECT or ARRAY column's values travel as JSON text in a VARCHAR
column of their own (``_ROSETTA_JSON_<n>``) and become documents in one
``UPDATE ... SET c = PARSE_JSON(text)`` of the stage, whatever filled it
(``INSERT`` or ``COPY``): text bound straight into a VARIANT column would
land as a JSON string holding the text, not as the document.
"""

from __future__ import annotations

import math
import uuid
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from datetime import time, timedelta
from decimal import Decimal
from typing import Any

from destinations.errors import TableLevelDestinationError
from destinations.json_text import json_text
from destinations.net_effect import BatchLayout, ColumnBatch
from destinations.snowflake.value_check import SEMI_STRUCTURED, base_type, check_column

STAGE_TABLE = "_ROSETTA_STAGE"  # a plain upper-case name: also its table stage, @%_ROSETTA_STAGE
_DELETE_FLAG = "_ROSETTA_DELETED"
_HAS_PREFIX = "_ROSETTA_HAS_"  # stage flag: the row carries this partial column
_JSON_PREFIX = "_ROSETTA_JSON_"  # stage text column: a semi-structured column's JSON text
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

    @classmethod
    def read(cls, cur: Any, name: str) -> TableInfo:
        """``DESCRIBE TABLE name``; raises 002003 (does not exist, table-level) for none."""
        cur.execute(f"DESCRIBE TABLE {name}")
        return cls(name, {row[0]: row[1] for row in cur.fetchall() if row[2] == "COLUMN"})

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
    # stage rows, as loaded_columns(): columns but JSON ones, delete flag,
    # partial flags, JSON texts
    rows: list[tuple[Any, ...]]
    json: tuple[str, ...] = ()  # semi-structured columns (their values as JSON text)

    @classmethod
    def build(cls, info: TableInfo, plan: BatchLayout, owner: object) -> Stage:
        keys = _resolve(info, plan.keys, "key", owner)
        # Deletes carry their key, and their position when the guard is on.
        removed = _resolve(info, plan.deletes.columns, "key", owner)
        groups = [(_resolve(info, g.columns, "record", owner), g) for g in plan.upserts]
        for cols, group in [*groups, (removed, plan.deletes)]:
            for column, values in zip(cols, group.data, strict=True):
                check_column(column, info.columns[column], values)
        used = set(removed).union(*(set(cols) for cols, _ in groups))
        columns = tuple(c for c in info.columns if c in used)
        partial = tuple(c for c in columns if any(c not in cols for cols, _ in groups))
        json = tuple(c for c in columns if base_type(info.columns[c]) in SEMI_STRUCTURED)
        rows: list[tuple[Any, ...]] = []
        for cols, group in groups:
            rows += _stage_rows(columns, partial, json, cols, group, deleted=False)
        if plan.deletes:
            rows += _stage_rows(columns, partial, json, removed, plan.deletes, deleted=True)
        return cls(info, keys, columns, partial, rows, json)

    @property
    def flags(self) -> list[str]:
        """The stage's partial-column flag names, one per partial column."""
        return [_HAS_PREFIX + str(i) for i in range(len(self.partial))]

    @property
    def json_texts(self) -> list[str]:
        """The stage's JSON text column names, one per semi-structured column."""
        return [_JSON_PREFIX + str(i) for i in range(len(self.json))]

    def stage_columns(self) -> list[tuple[str, str]]:
        """Every stage column and its type."""
        columns = [(c, _stage_type(self.info.columns[c])) for c in self.columns]
        return columns + self._flags_and_texts()

    def loaded_columns(self) -> list[tuple[str, str]]:
        """The stage columns an INSERT or COPY fills, and their types, in stage-row order."""
        columns = [(c, _stage_type(self.info.columns[c])) for c in self.columns]
        return [(c, t) for c, t in columns if c not in self.json] + self._flags_and_texts()

    def _flags_and_texts(self) -> list[tuple[str, str]]:
        flags = [(f, "BOOLEAN") for f in [_DELETE_FLAG, *self.flags]]
        return flags + [(t, "VARCHAR") for t in self.json_texts]

    def create(self) -> str:
        definitions = [f"{quote(c)} {t}" for c, t in self.stage_columns()]
        return f"CREATE OR REPLACE TEMPORARY TABLE {quote(STAGE_TABLE)} ({', '.join(definitions)})"

    def inserts(self, max_rows: int, max_bytes: int) -> Iterator[tuple[str, Any]]:
        loaded = self.loaded_columns()
        names = ", ".join(quote(c) for c, _ in loaded)
        names = names.replace("%", "%%")  # the INSERT is %-formatted with its parameters
        row_sql = "(" + ", ".join(["%s"] * len(loaded)) + ")"
        for chunk in _chunks(self.rows, max_rows, max_bytes):
            values = ", ".join([row_sql] * len(chunk))
            yield (
                f"INSERT INTO {quote(STAGE_TABLE)} ({names}) VALUES {values}",
                [v for row in chunk for v in row],
            )

    def match(self, target: str = "t", stage: str = "s") -> str:
        """The key match of a target (or tombstone) row and a stage row."""
        return " AND ".join(f"{target}.{quote(k)} = {stage}.{quote(k)}" for k in self.keys)

    @property
    def deleted(self) -> str:
        """True for a stage row (alias ``s``) that is a delete."""
        return f"s.{quote(_DELETE_FLAG)}"

    def merges(self) -> Iterator[str]:
        """The statements after the stage is loaded: ``prepares()``, then the MERGE."""
        yield from self.prepares()
        yield self.merge()

    def prepares(self) -> Iterator[str]:
        """Stage rows made whole: JSON documents from their text, partial columns filled in."""
        stage = quote(STAGE_TABLE)
        if self.json:
            parsed = ", ".join(
                f"{quote(c)} = PARSE_JSON({quote(t)})"
                for c, t in zip(self.json, self.json_texts, strict=True)
            )
            yield f"UPDATE {stage} SET {parsed}"
        for column, flag in zip(self.partial, self.flags, strict=True):
            # Rows without this column keep the target's value (a plain MERGE would null it).
            yield (
                f"UPDATE {stage} AS s SET {quote(column)} = t.{quote(column)} "
                f"FROM {self.info.name} AS t WHERE {self.match()} AND NOT s.{quote(flag)}"
            )

    def merge(self, newer: str | None = None) -> str:
        """The MERGE of the stage into the target; ``newer``: SQL a matched row must meet."""
        deleted = self.deleted
        when = "WHEN MATCHED" if newer is None else f"WHEN MATCHED AND {newer}"
        updates = [c for c in self.columns if c not in self.keys]
        clauses = [f"{when} AND {deleted} THEN DELETE"]
        if updates:
            assignments = ", ".join(f"{quote(c)} = s.{quote(c)}" for c in updates)
            clauses.append(f"{when} THEN UPDATE SET {assignments}")
        insert_columns = ", ".join(quote(c) for c in self.columns)
        insert_values = ", ".join(f"s.{quote(c)}" for c in self.columns)
        clauses.append(
            f"WHEN NOT MATCHED AND NOT {deleted} THEN INSERT ({insert_columns}) "
            f"VALUES ({insert_values})"
        )
        return (
            f"MERGE INTO {self.info.name} AS t USING {quote(STAGE_TABLE)} AS s ON {self.match()} "
            + " ".join(clauses)
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
    columns: tuple[str, ...],
    partial: tuple[str, ...],
    json: tuple[str, ...],
    present: tuple[str, ...],
    group: ColumnBatch,
    *,
    deleted: bool,
) -> list[tuple[Any, ...]]:
    """Stage rows of ``group`` (``present``: its columns): values but JSON ones, delete flag,
    partial flags, JSON texts."""
    by_column = dict(zip(present, group.data, strict=True))
    missing = [None] * len(group)
    data = [
        list(map(_param, by_column[c])) if c in by_column else missing
        for c in columns
        if c not in json
    ]
    data.append([deleted] * len(group))
    # A delete has nothing to fill in: its partial flags say "present".
    data += [[deleted or c in by_column] * len(group) for c in partial]
    data += [list(map(_json_param, by_column[c])) if c in by_column else missing for c in json]
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


def _json_param(value: Any) -> Any:
    """A value for a VARIANT, OBJECT or ARRAY column as JSON text; text is JSON text already."""
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
    if isinstance(value, time) and value.tzinfo is not None:
        # The connector binds a time without its offset; as text it keeps it (a
        # TIME column refuses such a value before this: value_check.py).
        return value.isoformat()
    return value  # Decimal, datetime, date, time: the connector converts them
