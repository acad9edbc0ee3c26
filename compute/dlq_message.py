"""A DLQ message: one CDC change that a destination did not take, with why.

Encoding (version 1): one version byte, then a msgpack array of the fields in
``_FIELDS`` order. Non-JSON values in row images (Decimal, datetime, date,
time, UUID) use msgpack extension types, so a bank balance comes back as the
exact ``Decimal`` it was. Anything that is not a version-1 message raises
``MessageDecodeError`` and nothing else, so the store can quarantine it.
"""

from __future__ import annotations

import datetime as dt
import threading
import time
import traceback
import uuid
from collections.abc import Mapping
from decimal import Decimal
from typing import Any, NamedTuple

import msgpack

from compute.errors import MessageDecodeError
from compute.queue_id import QueueId
from destinations.errors import ClassifiedError, FailureKind
from destinations.records import ChangeRecord, Operation, SourcePosition

FORMAT_VERSION = 1
_VERSION_BYTE = bytes([FORMAT_VERSION])

MAX_ERROR_MESSAGE_CHARS = 2000
MAX_STACK_CHARS = 4000

_EXT_DECIMAL = 1
_EXT_DATETIME = 2
_EXT_DATE = 3
_EXT_TIME = 4
_EXT_UUID = 5

_OPERATIONS = {op.value: op for op in Operation}
_KINDS = {kind.value: kind for kind in FailureKind}


class FailureContext(NamedTuple):
    """Why a change is in the DLQ, and how often it has failed (an immutable value)."""

    error_class: str
    message: str
    kind: FailureKind = FailureKind.TRANSIENT
    code: str | None = None  # SQLSTATE or connector errno, when known
    stack: str = ""
    attempts: int = 1
    first_failure_at: float = 0.0
    last_failure_at: float = 0.0

    @classmethod
    def from_exception(
        cls,
        error: BaseException,
        classified: ClassifiedError | None = None,
        *,
        attempts: int = 1,
        now: float | None = None,
    ) -> FailureContext:
        """Capture ``error`` (with its truncated stack) as a failure context."""
        when = time.time() if now is None else now
        stack = "".join(traceback.format_exception(type(error), error, error.__traceback__))
        return cls(
            error_class=classified.error_class if classified else type(error).__name__,
            message=_truncate(
                classified.message if classified else str(error), MAX_ERROR_MESSAGE_CHARS
            ),
            kind=classified.kind if classified else FailureKind.TRANSIENT,
            code=classified.code if classified else None,
            stack=_truncate_stack(stack),
            attempts=attempts,
            first_failure_at=when,
            last_failure_at=when,
        )

    def failed_again(self, error: ClassifiedError, now: float) -> FailureContext:
        """The context after one more failed attempt."""
        return self._replace(
            error_class=error.error_class,
            message=_truncate(error.message, MAX_ERROR_MESSAGE_CHARS),
            kind=error.kind,
            code=error.code,
            attempts=self.attempts + 1,
            last_failure_at=now,
        )


class DLQMessage(NamedTuple):
    """One queued change: the CDC record, the queue it belongs to, and its failure context.

    NamedTuples (not frozen dataclasses) for the message and its parts: a
    replay decodes one per queued change, and tuples are much cheaper to build.
    """

    message_id: str
    queue: QueueId
    record: ChangeRecord
    failure: FailureContext
    enqueued_at: float

    @classmethod
    def create(
        cls,
        queue: QueueId,
        record: ChangeRecord,
        failure: FailureContext,
        *,
        now: float | None = None,
    ) -> DLQMessage:
        return cls(
            message_id=uuid.uuid4().hex,
            queue=queue,
            record=record,
            failure=failure,
            enqueued_at=time.time() if now is None else now,
        )

    def encode(self) -> bytes:
        return encode_message(self)


def _truncate(text: str, limit: int) -> str:
    return text if len(text) <= limit else text[: limit - 15] + "... [truncated]"


def _truncate_stack(stack: str) -> str:
    # The innermost frames say most; keep the tail.
    return stack if len(stack) <= MAX_STACK_CHARS else "[truncated] ..." + stack[-MAX_STACK_CHARS:]


def _default(value: Any) -> msgpack.ExtType:
    if isinstance(value, Decimal):
        return msgpack.ExtType(_EXT_DECIMAL, str(value).encode())
    if isinstance(value, dt.datetime):
        return msgpack.ExtType(_EXT_DATETIME, value.isoformat().encode())
    if isinstance(value, dt.date):
        return msgpack.ExtType(_EXT_DATE, value.isoformat().encode())
    if isinstance(value, dt.time):
        return msgpack.ExtType(_EXT_TIME, value.isoformat().encode())
    if isinstance(value, uuid.UUID):
        return msgpack.ExtType(_EXT_UUID, value.bytes)
    if isinstance(value, tuple | set | frozenset):
        return list(value)
    raise TypeError(f"cannot store a value of type {type(value).__name__} in a DLQ message")


def _ext_hook(code: int, data: bytes) -> Any:
    if code == _EXT_DECIMAL:
        return Decimal(data.decode())
    if code == _EXT_DATETIME:
        return dt.datetime.fromisoformat(data.decode())
    if code == _EXT_DATE:
        return dt.date.fromisoformat(data.decode())
    if code == _EXT_TIME:
        return dt.time.fromisoformat(data.decode())
    if code == _EXT_UUID:
        return uuid.UUID(bytes=data)
    raise ValueError(f"unknown extension type {code}")


_local = threading.local()


def _packer() -> msgpack.Packer:
    """This thread's Packer: reusing one is much cheaper than ``packb``; sharing is unsafe."""
    try:
        return _local.packer
    except AttributeError:
        _local.packer = msgpack.Packer(default=_default, use_bin_type=True)
        return _local.packer


def _pack_surrogates(fields: list[Any]) -> bytes:
    return msgpack.packb(
        fields, default=_default, use_bin_type=True, unicode_errors="surrogatepass"
    )


def encode_message(message: DLQMessage) -> bytes:
    """Encode ``message`` (version byte + msgpack array)."""
    record = message.record
    failure = message.failure
    queue = message.queue
    fields = [
        message.message_id,
        queue.source_id,
        queue.table,
        queue.destination_id,
        record.table,
        record.op,  # a str Enum: packed as its one-letter value
        list(record.key),
        list(record.key.values()),
        record.before,
        record.after,
        record.position[0],
        record.position[1],
        record.commit_ts,
        failure.error_class,
        failure.message,
        failure.kind,  # a str Enum: packed as its value
        failure.code,
        failure.stack,
        failure.attempts,
        failure.first_failure_at,
        failure.last_failure_at,
        message.enqueued_at,
    ]
    try:
        try:
            return _VERSION_BYTE + _packer().pack(fields)
        except UnicodeEncodeError:
            # Lone surrogates (a QueueId takes any str): rare, so kept off the fast path.
            return _VERSION_BYTE + _pack_surrogates(fields)
    except (TypeError, ValueError, OverflowError) as error:
        raise ValueError(f"message {message.message_id} cannot be encoded: {error}") from error


_FIELD_COUNT = 22
_NUMBER = (int, float)


def decode_message(
    data: bytes, queue: QueueId | None = None, previous: DLQMessage | None = None
) -> DLQMessage:
    """Decode bytes from ``encode_message``; raises ``MessageDecodeError`` for anything else.

    ``queue``, when given, is reused for messages that belong to it (the usual
    case when reading a queue), which saves building a new ``QueueId`` each.
    ``previous`` (the message decoded just before, from the same queue) lends
    its ``FailureContext`` when the failure fields are equal, as they are for
    every message of one failed batch.
    """
    if not isinstance(data, bytes | bytearray | memoryview):
        raise MessageDecodeError(f"not a message: {type(data).__name__}")
    if len(data) < 2:
        raise MessageDecodeError(f"message too short ({len(data)} bytes)")
    version = data[0]
    if version != FORMAT_VERSION:
        raise MessageDecodeError(
            f"unknown message format version {version} (this build reads version {FORMAT_VERSION})"
        )
    try:
        # Non-str map keys and lone surrogates: whatever encode_message accepts.
        f = msgpack.unpackb(
            data[1:],
            ext_hook=_ext_hook,
            raw=False,
            strict_map_key=False,
            unicode_errors="surrogatepass",
        )
    except Exception as error:  # msgpack raises many types for garbage; all mean one thing
        raise MessageDecodeError(f"undecodable message: {type(error).__name__}: {error}") from None
    if type(f) is not list or len(f) != _FIELD_COUNT:
        raise MessageDecodeError("undecodable message: not a version-1 field array")
    try:
        # Check exactly what would otherwise fail later, far from here.
        key_columns, key_values, before, after = f[6], f[7], f[8], f[9]
        if (
            type(f[0]) is not str
            or type(f[4]) is not str
            or type(key_columns) is not list
            or type(key_values) is not list
            or len(key_columns) != len(key_values)
            or not all(type(c) is str for c in key_columns)
            or (before is not None and type(before) is not dict)
            or (after is not None and type(after) is not dict)
            or type(f[10]) is not int
            or type(f[11]) is not int
            or (f[12] is not None and type(f[12]) not in _NUMBER)
            or type(f[13]) is not str
            or type(f[14]) is not str
            or (f[16] is not None and type(f[16]) is not str)
            or type(f[17]) is not str
            or type(f[18]) is not int
            or type(f[19]) not in _NUMBER
            or type(f[20]) not in _NUMBER
            or type(f[21]) not in _NUMBER
        ):
            raise ValueError("a field has the wrong type")
        if (
            queue is None
            or queue.source_id != f[1]
            or queue.table != f[2]
            or queue.destination_id != f[3]
        ):
            queue = QueueId(f[1], f[2], f[3])
        record = ChangeRecord(
            f[4],
            _OPERATIONS[f[5]],
            dict(zip(key_columns, key_values, strict=False)),
            after,
            SourcePosition(f[10], f[11]),
            before,
            f[12],
        )
        failure = previous.failure if previous is not None else None
        if (
            failure is None
            or failure.message != f[14]
            or failure.last_failure_at != f[20]
            or failure.attempts != f[18]
            or failure.first_failure_at != f[19]
            or failure.error_class != f[13]
            or failure.kind != f[15]
            or failure.code != f[16]
            or failure.stack != f[17]
        ):
            failure = FailureContext(f[13], f[14], _KINDS[f[15]], f[16], f[17], f[18], f[19], f[20])
        return DLQMessage(f[0], queue, record, failure, f[21])
    except (KeyError, TypeError, ValueError) as error:
        raise MessageDecodeError(f"undecodable message: bad field: {error}") from None


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
        "error_class": failure.error_class,
        "error_message": failure.message,
        "error_kind": failure.kind.value,
        "error_code": failure.code,
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
