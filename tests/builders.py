"""Builders for what tests make: change records, DLQ messages, settings, pipelines files."""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping
from pathlib import Path
from typing import Any

from compute.codec.failure_context import FailureContext
from compute.codec.message import DLQMessage
from compute.queue_id import QueueId
from config.admin_config import AdminConfig
from config.dlq_config import DLQConfig
from config.settings import Settings
from destinations.records import ChangeRecord, Operation, SourcePosition

TABLE = "public.accounts"
# The table of the destination tests' records.
SOURCE_TABLE = "public.items"
# Why the messages of ``messages`` are queued: a transient outage.
FAILURE = FailureContext("OperationalError", "destination down", code="08006")


# ------------------------------------------------------------------ change records


def change(
    i: int, key: int, op: Operation = Operation.UPDATE, table: str = TABLE, **row: Any
) -> ChangeRecord:
    """Change number ``i`` (its position) to row ``key``: ``{"id": key, "v": i, **row}``."""
    after = None if op is Operation.DELETE else {"id": key, "v": i, **row}
    return ChangeRecord(table, op, {"id": key}, after, SourcePosition(i, 0))


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


# ------------------------------------------------------------------ DLQ messages


def messages(
    queue: QueueId,
    ids: Iterable[int],
    failure: FailureContext = FAILURE,
    *,
    note: str | Callable[[], str] | None = None,
) -> list[DLQMessage]:
    """One new message per id in ``queue``: ``change(i, i)`` of its table, with a ``note``
    column when given (a callable makes a new note for each message)."""

    def record(i: int) -> ChangeRecord:
        if note is None:
            return change(i, i, table=queue.table)
        return change(i, i, table=queue.table, note=note if isinstance(note, str) else note())

    return [DLQMessage.create(queue, record(i), failure) for i in ids]


# ------------------------------------------------------------------ settings


def dlq_config(tmp_path: Path, **overrides: Any) -> DLQConfig:
    """DLQ settings under ``tmp_path / "dlq"``: no disk floor, quick passes and backoff."""
    values: dict[str, Any] = {
        "base_path": tmp_path / "dlq",
        "min_free_disk_mb": 0,
        "check_interval": 0.2,
        "backoff_base_ms": 10,
        "backoff_max_ms": 50,
        "batch_size": 10,
    }
    values.update(overrides)
    return DLQConfig(**values)


def engine_settings(dlq: DLQConfig, **overrides: Any) -> Settings:
    """Settings for an in-process Engine: the admin API on a free port (tests run side by side)."""
    values: dict[str, Any] = {"dlq": dlq, "admin": AdminConfig(port=0)}
    values.update(overrides)
    return Settings(**values)


# ------------------------------------------------------------------ pipelines files


def pipelines_toml(
    source: Mapping[str, Any],
    destinations: Iterable[Mapping[str, Any]],
    *,
    name: str = "p",
    **pipeline: Any,
) -> str:
    """A one-pipeline ``pipelines.toml``: ``[[pipelines]]`` with ``pipeline``'s options,
    its ``source`` table and one ``[[pipelines.destinations]]`` table per destination."""
    lines = ["[[pipelines]]", f"name = {_toml(name)}"]
    lines += [f"{k} = {_toml(v)}" for k, v in pipeline.items()]
    lines += ["[pipelines.source]", *(f"{k} = {_toml(v)}" for k, v in source.items())]
    for destination in destinations:
        lines += ["[[pipelines.destinations]]"]
        lines += [f"{k} = {_toml(v)}" for k, v in destination.items()]
    return "\n".join(lines) + "\n"


def _toml(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int | float):
        return repr(value)
    if isinstance(value, list | tuple):
        return "[" + ", ".join(map(_toml, value)) + "]"
    if isinstance(value, Mapping):
        return "{ " + ", ".join(f"{_toml(k)} = {_toml(v)}" for k, v in value.items()) + " }"
    text = str(value).replace("\\", "\\\\").replace('"', '\\"')
    return f'"{text}"'


def postgresql_destination(dsn_env: str, name: str = "PG", id: str = "1") -> dict[str, Any]:
    """A PostgreSQL destination whose DSN is in the environment variable ``dsn_env``."""
    return {"id": id, "name": name, "type": "postgresql", "dsn_env": dsn_env}
