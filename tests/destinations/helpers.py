"""Builders for change records used across destination tests."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from destinations.records import ChangeRecord, Operation, SourcePosition

SOURCE_TABLE = "public.items"


def upsert(
    key: int | Mapping[str, Any],
    row: Mapping[str, Any],
    commit: int,
    seq: int = 0,
    *,
    table: str = SOURCE_TABLE,
    op: Operation = Operation.UPDATE,
) -> ChangeRecord:
    """An insert/update of ``row``; an int ``key`` means ``{"id": key}``."""
    key_map = {"id": key} if isinstance(key, int) else dict(key)
    return ChangeRecord(table, op, key_map, {**key_map, **row}, SourcePosition(commit, seq))


def delete(
    key: int | Mapping[str, Any], commit: int, seq: int = 0, *, table: str = SOURCE_TABLE
) -> ChangeRecord:
    key_map = {"id": key} if isinstance(key, int) else dict(key)
    return ChangeRecord(table, Operation.DELETE, key_map, None, SourcePosition(commit, seq))
