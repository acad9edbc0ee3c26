"""A readable, JSON-safe summary of a DLQ message, for the operator's show and find answers.

It leaves out the row images and writes key values as text: the lossless JSON
form of a message is the export's (``export_view``).
"""

from __future__ import annotations

import datetime as dt
import uuid
from collections.abc import Mapping
from decimal import Decimal
from typing import Any

from compute.codec.message import DLQMessage


def message_to_json(message: DLQMessage) -> dict[str, Any]:
    """A readable, JSON-safe view of a message (for status, CLI and export)."""
    record = message.record
    failure = message.failure
    return {
        "message_id": message.message_id,
        "queue": str(message.queue),
        "table": record.table,
        "op": record.op.name.lower(),
        "key": _jsonable(dict(record.key)),
        "position": str(record.position),
        "commit_ts": record.commit_ts,
        # Columns the source did not send as they did not change (kept at the target).
        "unchanged": list(record.unchanged),
        "error_class": failure.error_class,
        "error_message": failure.message,
        "error_kind": failure.kind.value,
        "error_code": failure.code,
        # Its innermost frames (compute/delivery/short_stack.py); older messages
        # keep the longer stack they were stored with.
        "error_stack": failure.stack,
        "attempts": failure.attempts,
        "first_failure_at": failure.first_failure_at,
        "last_failure_at": failure.last_failure_at,
        "enqueued_at": message.enqueued_at,
    }


def _jsonable(value: Any) -> Any:
    if isinstance(value, Mapping):
        return {str(k): _jsonable(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_jsonable(v) for v in value]
    if isinstance(value, Decimal | dt.date | dt.time | uuid.UUID):
        return str(value)
    if isinstance(value, bytes):
        return value.hex()
    return value
