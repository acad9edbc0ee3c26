"""Rebuilding a DLQ message's parts (queue, failure) from decoded fields, type-checked."""

from __future__ import annotations

from typing import Any

from compute.codec.failure_context import FailureContext
from compute.queue_id import QueueId
from destinations.errors import FailureKind
from destinations.records import Operation

OPERATIONS = {op.value: op for op in Operation}
KINDS = {kind.value: kind for kind in FailureKind}
# What msgpack gives back for a number field.
NUMBER = (int, float)


def failure_from_fields(f: list[Any], at: int) -> FailureContext:
    """The FailureContext in ``f[at:at + 8]``, type-checked."""
    error_class, message, kind, code, stack, attempts, first, last = f[at : at + 8]
    if (
        type(error_class) is not str
        or type(message) is not str
        or (code is not None and type(code) is not str)
        or type(stack) is not str
        or type(attempts) is not int
        or type(first) not in NUMBER
        or type(last) not in NUMBER
    ):
        raise ValueError("a failure field has the wrong type")
    return FailureContext(error_class, message, KINDS[kind], code, stack, attempts, first, last)


def queue_of(source_id: Any, table: Any, destination_id: Any, known: QueueId | None) -> QueueId:
    if (
        known is not None
        and known.source_id == source_id
        and known.table == table
        and known.destination_id == destination_id
    ):
        return known
    return QueueId(source_id, table, destination_id)
