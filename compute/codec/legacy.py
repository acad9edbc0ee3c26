"""Decoding DLQ messages of older format versions (version 1: one flat array of 22 fields)."""

from __future__ import annotations

from typing import Any

from compute.codec.failure_context import FailureContext
from compute.codec.parts import NUMBER, OPERATIONS, failure_from_fields, queue_of
from compute.errors import MessageDecodeError
from compute.queue_id import QueueId
from destinations.records import ChangeRecord, SourcePosition

# The first byte of a version-1 message: the version itself, then the packed fields.
V1 = 1
_V1_FIELD_COUNT = 22


def _record(
    table: Any,
    op: Any,
    key_columns: Any,
    key_values: Any,
    before: Any,
    after: Any,
    commit: Any,
    index: Any,
    commit_ts: Any,
) -> ChangeRecord:
    """A ChangeRecord from decoded fields, checking exactly what would fail later."""
    if (
        type(table) is not str
        or type(key_columns) is not list
        or type(key_values) is not list
        or len(key_columns) != len(key_values)
        or not all(type(c) is str for c in key_columns)
        or (before is not None and type(before) is not dict)
        or (after is not None and type(after) is not dict)
        or type(commit) is not int
        or type(index) is not int
        or (commit_ts is not None and type(commit_ts) not in NUMBER)
    ):
        raise ValueError("a field has the wrong type")
    return ChangeRecord(
        table,
        OPERATIONS[op],
        dict(zip(key_columns, key_values, strict=False)),
        after,
        SourcePosition(commit, index),
        before,
        commit_ts,
    )


V1Parts = tuple[str, QueueId, ChangeRecord, FailureContext, float]


def decode_v1(f: Any, queue: QueueId | None) -> V1Parts:
    """A version-1 message's unpacked fields, as a DLQMessage's five fields, in order.

    ``MessageDecodeError`` if they are not those of a version-1 message.
    """
    if type(f) is not list or len(f) != _V1_FIELD_COUNT:
        raise MessageDecodeError("undecodable message: not a version-1 field array")
    try:
        if (
            type(f[0]) is not str
            or type(f[21]) not in NUMBER
            or not all(type(part) is str for part in f[1:4])
        ):
            raise ValueError("a field has the wrong type")
        record = _record(f[4], f[5], f[6], f[7], f[8], f[9], f[10], f[11], f[12])
        failure = failure_from_fields(f, 13)
        return f[0], queue_of(f[1], f[2], f[3], queue), record, failure, f[21]
    except (KeyError, TypeError, ValueError) as error:
        raise MessageDecodeError(f"undecodable message: bad field: {error}") from None
