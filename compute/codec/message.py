"""A DLQ message: one CDC change that a destination did not take, with why.

Encoding (version 2): a msgpack array whose first element is the version
(2), then the change's own fields (id, operation, key values, before and
after images, position, commit time, enqueue time) and, last, a *context*
blob: what a failed batch shares (queue, failure, table, key columns),
packed on its own. Every message of one failed batch carries the same
context bytes, so a reader compares bytes and reuses what it already built
instead of decoding it again, and the store's frame compression folds the
repeats away. Values msgpack has no type for use extension types, so every
value comes back exactly as it was: Decimal, datetime, date, time and UUID
(a bank balance stays the exact ``Decimal`` it was), integers outside 64
bits (a ``numeric`` key of 10**25, an LSN of 2**64), and tuples, sets and
frozensets (a tuple stays hashable, so it can be a map key). Builds before
the big-integer and collection extensions wrote the same version 2 without
them; their messages read the same. Version 1 (a version byte, then one
flat array of 22 fields) is still read. Anything else raises
``MessageDecodeError`` and nothing else, so the store can quarantine it.

A value that cannot be stored (an unknown type, nesting deeper than about
1,000 levels) raises ``MessageEncodeError`` naming the message, so the caller
can set that one change aside and keep the others.
"""

from __future__ import annotations

import datetime as dt
import functools
import threading
import time
import traceback
import uuid
from collections.abc import Mapping, Sequence
from decimal import Decimal
from enum import Enum
from typing import Any, NamedTuple

import msgpack

from compute.errors import MessageDecodeError, MessageEncodeError
from compute.queue_id import QueueId
from config.redact import redact
from destinations.errors import ClassifiedError, FailureKind
from destinations.records import ChangeRecord, Operation, SourcePosition

FORMAT_VERSION = 2
_V1 = 1
_V2_FIELD_COUNT = 11
# The first byte of every version-2 message: a msgpack fixarray of 11 elements.
V2_FIRST_BYTE = 0x90 | _V2_FIELD_COUNT

MAX_ERROR_MESSAGE_CHARS = 2000
MAX_STACK_CHARS = 4000

_EXT_DECIMAL = 1
_EXT_DATETIME = 2
_EXT_DATE = 3
_EXT_TIME = 4
_EXT_UUID = 5
# Added later in version 2 (older builds never wrote them; this one reads both).
_EXT_BIGINT = 6  # an int outside 64 bits: two's-complement big-endian bytes
_EXT_TUPLE = 7  # the packed items, as a list
_EXT_SET = 8
_EXT_FROZENSET = 9

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
        """Capture ``error`` (with its truncated stack) as a failure context.

        Credentials in the message or the stack are masked: both are stored
        with every message and shown by the admin API and exports.
        """
        when = time.time() if now is None else now
        stack = "".join(traceback.format_exception(type(error), error, error.__traceback__))
        return cls(
            error_class=classified.error_class if classified else type(error).__name__,
            message=_truncate(
                redact(classified.message if classified else str(error)), MAX_ERROR_MESSAGE_CHARS
            ),
            kind=classified.kind if classified else FailureKind.TRANSIENT,
            code=classified.code if classified else None,
            stack=_truncate_stack(redact(stack)),
            attempts=attempts,
            first_failure_at=when,
            last_failure_at=when,
        )

    def failed_again(self, error: ClassifiedError, now: float) -> FailureContext:
        """The context after one more failed attempt."""
        return self._replace(
            error_class=error.error_class,
            message=_truncate(redact(error.message), MAX_ERROR_MESSAGE_CHARS),
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


def _default(value: Any) -> Any:
    """What msgpack cannot pack itself (the packer is strict: subclasses come here too).

    Called only for such values, so rows of plain JSON-like values never pay for it.
    """
    if isinstance(value, Enum):  # Operation, FailureKind: their stored value
        return value._value_
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
    if isinstance(value, int):
        if type(value) is not int:  # an IntEnum or other subclass: as the number
            return int(value)
        # Out of msgpack's 64 bits: the packer calls this only then.
        size = (value.bit_length() + 8) // 8  # + 1 bit for the sign, rounded up
        return msgpack.ExtType(_EXT_BIGINT, value.to_bytes(size, "big", signed=True))
    if isinstance(value, float):
        return float(value)
    if isinstance(value, str):
        return str(value)
    if isinstance(value, bytes | bytearray | memoryview):
        return bytes(value)
    if isinstance(value, tuple):
        return msgpack.ExtType(_EXT_TUPLE, _pack_nested(list(value)))
    if isinstance(value, frozenset):
        return msgpack.ExtType(_EXT_FROZENSET, _pack_nested(list(value)))
    if isinstance(value, set):
        return msgpack.ExtType(_EXT_SET, _pack_nested(list(value)))
    if isinstance(value, Mapping):
        return dict(value)
    if isinstance(value, list):
        return list(value)
    raise TypeError(f"cannot store a value of type {type(value).__name__} in a DLQ message")


def _pack_nested(items: list[Any]) -> bytes:
    # A Packer of its own: this thread's Packer is in the middle of a message.
    return msgpack.packb(
        items,
        default=_default,
        use_bin_type=True,
        strict_types=True,
        unicode_errors="surrogatepass",
    )


_datetime_from = dt.datetime.fromisoformat
_date_from = dt.date.fromisoformat
_time_from = dt.time.fromisoformat


def _ext_hook(code: int, data: bytes) -> Any:
    # Called once per Decimal or time value of every replayed row: names bound
    # at module level, the most common types first.
    if code == _EXT_DECIMAL:
        return Decimal(data.decode())
    if code == _EXT_DATETIME:
        return _datetime_from(data.decode())
    if code == _EXT_DATE:
        return _date_from(data.decode())
    if code == _EXT_TIME:
        return _time_from(data.decode())
    if code == _EXT_UUID:
        return uuid.UUID(bytes=data)
    if code == _EXT_BIGINT:
        if not data:
            raise ValueError("empty integer")
        return int.from_bytes(data, "big", signed=True)
    if code == _EXT_TUPLE:
        return tuple(_unpack_items(data))
    if code == _EXT_SET:
        return set(_unpack_items(data))
    if code == _EXT_FROZENSET:
        return frozenset(_unpack_items(data))
    raise ValueError(f"unknown extension type {code}")


def _unpack_items(data: bytes) -> list[Any]:
    items = _unpackb(data)
    if type(items) is not list:
        raise ValueError("a collection extension does not hold an array")
    return items


_local = threading.local()


def _packer() -> msgpack.Packer:
    """This thread's Packer: reusing one is much cheaper than ``packb``; sharing is unsafe."""
    try:
        return _local.packer
    except AttributeError:
        _local.packer = msgpack.Packer(default=_default, use_bin_type=True, strict_types=True)
        return _local.packer


def _pack(fields: list[Any]) -> bytes:
    try:
        return _packer().pack(fields)
    except UnicodeEncodeError:
        # Lone surrogates (a QueueId takes any str): rare, so kept off the fast path.
        return msgpack.packb(
            fields,
            default=_default,
            use_bin_type=True,
            strict_types=True,
            unicode_errors="surrogatepass",
        )


def encode_context(
    queue: QueueId,
    failure: FailureContext,
    table: str,
    key_columns: list[str],
) -> bytes:
    """The context blob: what the messages of one failed batch share."""
    return _pack(_context_fields(queue, failure, table, key_columns))


# The context packs a failure's fields in FailureContext's declaration order
# (``*failure`` below): the order is part of the format.
_FAILURE_FIELDS = (
    "error_class",
    "message",
    "kind",  # a str Enum: packed as its value
    "code",
    "stack",
    "attempts",
    "first_failure_at",
    "last_failure_at",
)
if FailureContext._fields != _FAILURE_FIELDS:  # pragma: no cover - a guard for later edits
    raise ImportError("FailureContext's fields changed: the DLQ message format depends on them")

# The encoder unpacks a ChangeRecord and a SourcePosition by position, and the
# decoder builds them by position (tuple.__new__, for speed): a reordered field
# would swap, say, the before and after images of every stored change.
_RECORD_FIELDS = ("table", "op", "key", "after", "position", "before", "commit_ts")
_POSITION_FIELDS = ("commit", "seq")
if ChangeRecord._fields != _RECORD_FIELDS:
    raise ImportError(
        f"ChangeRecord's fields changed to {ChangeRecord._fields}: the DLQ message format "
        f"reads and writes them by position as {_RECORD_FIELDS}; update compute/codec/message.py"
    )
if SourcePosition._fields != _POSITION_FIELDS:
    raise ImportError(
        f"SourcePosition's fields changed to {SourcePosition._fields}: the DLQ message format "
        f"reads and writes them by position as {_POSITION_FIELDS}; update compute/codec/message.py"
    )


def _context_fields(
    queue: QueueId, failure: FailureContext, table: str, key_columns: list[str]
) -> list[Any]:
    return [queue.source_id, queue.table, queue.destination_id, *failure, table, key_columns]


def _context_of(message: DLQMessage) -> bytes:
    record = message.record
    return encode_context(message.queue, message.failure, record.table, list(record.key))


def _encode(message: DLQMessage, context: bytes) -> bytes:
    record = message.record
    return _pack(
        [
            FORMAT_VERSION,
            message.message_id,
            record.op._value_,  # its one-letter code
            list(record.key.values()),
            record.before,
            record.after,
            record.position[0],
            record.position[1],
            record.commit_ts,
            message.enqueued_at,
            context,
        ]
    )


def _encode_one(message: DLQMessage) -> bytes:
    """``_encode(message, _context_of(message))`` in one function, same bytes.

    A single-message enqueue pays for every Python call and attribute lookup
    on its way (about a third of its encoding time went there): the tuples
    are unpacked once and one Packer packs both arrays.
    """
    message_id, queue, record, failure, enqueued_at = message
    table, op, key, after, position, before, commit_ts = record
    # _context_fields, inlined (a call is a tenth of this function's own time).
    context = [queue.source_id, queue.table, queue.destination_id, *failure, table, list(key)]
    fields = [
        FORMAT_VERSION,
        message_id,
        op._value_,  # its one-letter code
        list(key.values()),
        before,
        after,
        position[0],
        position[1],
        commit_ts,
        enqueued_at,
        b"",  # the context, below
    ]
    packer = _packer()
    try:
        fields[-1] = packer.pack(context)
        return packer.pack(fields)
    except UnicodeEncodeError:
        # Lone surrogates: the slow path of _pack (the Packer reset itself).
        fields[-1] = _pack(context)
        return _pack(fields)


def encode_message(message: DLQMessage) -> bytes:
    """Encode ``message`` as one msgpack array (see the module docstring).

    Raises ``MessageEncodeError`` (a ValueError) naming the message if a value cannot be stored.
    """
    try:
        return _encode_one(message)
    except (TypeError, ValueError, OverflowError) as error:
        raise MessageEncodeError(message.message_id, _reason(error)) from error


def encode_messages(messages: Sequence[DLQMessage]) -> list[bytes]:
    """Encode a batch; messages that share a context share one packed blob.

    Raises ``MessageEncodeError`` for the first message that cannot be stored.
    """
    if len(messages) == 1:
        # Nothing to share: skip building and comparing the context key.
        return [encode_message(messages[0])]
    encoded = []
    shared: tuple[Any, ...] | None = None
    context = b""
    for message in messages:
        record = message.record
        try:
            key = (message.failure, message.queue, record.table, list(record.key))
            if key != shared:
                context = _context_of(message)
                shared = key
            encoded.append(_encode(message, context))
        except (TypeError, ValueError, OverflowError) as error:
            raise MessageEncodeError(message.message_id, _reason(error)) from error
    return encoded


def _reason(error: BaseException) -> str:
    text = str(error).rstrip(".")
    if text == "recursion limit exceeded":
        return "a value is nested too deeply (msgpack's limit is about 1,000 levels)"
    return text or type(error).__name__


_V1_FIELD_COUNT = 22
_CONTEXT_FIELD_COUNT = 13
_NUMBER = (int, float)


# unpackb with this module's options bound once (a C partial, not a Python wrapper).
_unpackb = functools.partial(
    msgpack.unpackb,
    ext_hook=_ext_hook,
    raw=False,
    # Non-str map keys and lone surrogates: whatever encode_message accepts.
    strict_map_key=False,
    unicode_errors="surrogatepass",
)
_new = tuple.__new__
_UNSET = object()


def _unpack(data: bytes | bytearray | memoryview) -> Any:
    try:
        return _unpackb(data)
    except Exception as error:  # msgpack raises many types for garbage; all mean one thing
        raise MessageDecodeError(f"undecodable message: {type(error).__name__}: {error}") from None


def _check_type(data: Any) -> None:
    if not isinstance(data, bytes | bytearray | memoryview):
        raise MessageDecodeError(f"not a message: {type(data).__name__}")
    if len(data) < 2:
        raise MessageDecodeError(f"message too short ({len(data)} bytes)")


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
        or (commit_ts is not None and type(commit_ts) not in _NUMBER)
    ):
        raise ValueError("a field has the wrong type")
    return ChangeRecord(
        table,
        _OPERATIONS[op],
        dict(zip(key_columns, key_values, strict=False)),
        after,
        SourcePosition(commit, index),
        before,
        commit_ts,
    )


def _failure(f: list[Any], at: int) -> FailureContext:
    """The FailureContext in ``f[at:at + 8]``, type-checked."""
    error_class, message, kind, code, stack, attempts, first, last = f[at : at + 8]
    if (
        type(error_class) is not str
        or type(message) is not str
        or (code is not None and type(code) is not str)
        or type(stack) is not str
        or type(attempts) is not int
        or type(first) not in _NUMBER
        or type(last) not in _NUMBER
    ):
        raise ValueError("a failure field has the wrong type")
    return FailureContext(error_class, message, _KINDS[kind], code, stack, attempts, first, last)


def _queue_of(source_id: Any, table: Any, destination_id: Any, known: QueueId | None) -> QueueId:
    if (
        known is not None
        and known.source_id == source_id
        and known.table == table
        and known.destination_id == destination_id
    ):
        return known
    return QueueId(source_id, table, destination_id)


class MessageDecoder:
    """Decodes the messages of one queue in order, reusing what they share.

    Messages of one failed batch carry the same context bytes: the queue and
    failure built for the first are reused for the others (a bytes compare
    instead of a decode). Not thread-safe; one per reader.
    """

    __slots__ = (
        "_columns",
        "_context",
        "_failure",
        "_queue",
        "_table",
        "queue",
    )

    def __init__(self, queue: QueueId | None = None) -> None:
        self.queue = queue
        # Compared with each message's context: starts as something no
        # decoded value equals, so the first message always decodes its own.
        self._context: object = _UNSET
        # Set from the first context decoded (see _decode_context).
        self._columns: list[str] = []
        self._table = ""
        self._queue: QueueId | None = None
        self._failure: FailureContext | None = None

    def decode(self, data: bytes | bytearray | memoryview) -> DLQMessage:
        """Decode one message; raises ``MessageDecodeError`` for anything that is not one."""
        return self.decode_many((data,))[0]

    def decode_many(self, payloads: Sequence[Any]) -> list[DLQMessage]:
        """Decode messages in order; ``MessageDecodeError`` at the first that is not one.

        The hot path of every replay: one loop over a leased batch, with the
        shared context and every name it needs held in locals; one unpack per
        message, then checks of exactly what would otherwise fail later, far
        from here.
        """
        decoded: list[DLQMessage] = []
        append = decoded.append
        unpack, new, operations, number = _unpackb, _new, _OPERATIONS, _NUMBER
        context_bytes = self._context
        columns, table, queue, failure = self._columns, self._table, self._queue, self._failure
        for data in payloads:
            if type(data) is not bytes or len(data) < 2 or data[0] != V2_FIRST_BYTE:
                append(self._decode_other(data))
                continue
            try:
                f = unpack(data)
            except Exception as error:  # msgpack raises many types for garbage; all mean one
                raise MessageDecodeError(
                    f"undecodable message: {type(error).__name__}: {error}"
                ) from None
            if type(f) is not list or len(f) != _V2_FIELD_COUNT or f[0] != FORMAT_VERSION:
                raise MessageDecodeError("undecodable message: not a version-2 field array")
            try:
                (
                    _,
                    message_id,
                    op,
                    values,
                    before,
                    after,
                    commit,
                    index,
                    commit_ts,
                    enqueued_at,
                    context,
                ) = f
                if context != context_bytes:
                    self._decode_context(context)
                    context_bytes = context
                    columns, table = self._columns, self._table
                    queue, failure = self._queue, self._failure
                if (
                    type(message_id) is not str
                    or type(values) is not list
                    or len(values) != len(columns)
                    or (before is not None and type(before) is not dict)
                    or (after is not None and type(after) is not dict)
                    or type(commit) is not int
                    or type(index) is not int
                    or (commit_ts is not None and type(commit_ts) not in number)
                    or type(enqueued_at) not in number
                ):
                    raise ValueError("a field has the wrong type")
                if len(columns) == 1:
                    key = {columns[0]: values[0]}
                else:
                    key = dict(zip(columns, values, strict=True))
                # tuple.__new__ skips each NamedTuple's Python-level __new__: a
                # third of the cost of building them.
                record = new(
                    ChangeRecord,
                    (
                        table,
                        operations[op],
                        key,
                        after,
                        new(SourcePosition, (commit, index)),
                        before,
                        commit_ts,
                    ),
                )
                append(new(DLQMessage, (message_id, queue, record, failure, enqueued_at)))
            except (KeyError, TypeError, ValueError) as error:
                raise MessageDecodeError(f"undecodable message: bad field: {error}") from None
        return decoded

    def _decode_other(self, data: Any) -> DLQMessage:
        """Anything off the fast path: other buffer types, version 1, or not a message."""
        _check_type(data)
        first = data[0]
        if first == V2_FIRST_BYTE:
            return self.decode(bytes(data))
        if first != _V1:
            raise MessageDecodeError(
                f"unknown message format (first byte {first:#04x}): this build reads "
                f"version {_V1} (first byte 0x01) and version {FORMAT_VERSION} "
                f"(first byte {V2_FIRST_BYTE:#04x})"
            )
        return _decode_v1(_unpack(memoryview(data)[1:]), self.queue)

    def _decode_context(self, context: Any) -> None:
        if type(context) is not bytes:
            raise ValueError("the context is not bytes")
        try:
            c = msgpack.unpackb(context, raw=False, unicode_errors="surrogatepass")
        except Exception as error:
            raise ValueError(f"undecodable context: {type(error).__name__}") from None
        if type(c) is not list or len(c) != _CONTEXT_FIELD_COUNT:
            raise ValueError(f"context is not an array of {_CONTEXT_FIELD_COUNT} fields")
        if not all(type(part) is str for part in c[:3]):
            raise ValueError("a queue field has the wrong type")
        queue = _queue_of(c[0], c[1], c[2], self.queue)
        failure = _failure(c, 3)
        table, columns = c[11], c[12]
        if (
            type(table) is not str
            or type(columns) is not list
            or not all(type(column) is str for column in columns)
            or len(set(columns)) != len(columns)
        ):
            raise ValueError("a context field has the wrong type")
        self._queue, self._failure = queue, failure
        self._table, self._columns = table, columns
        self._context = context


def decode_message(
    data: bytes | bytearray | memoryview, queue: QueueId | None = None
) -> DLQMessage:
    """Decode bytes from ``encode_message``; raises ``MessageDecodeError`` for anything else.

    ``queue``, when given, is reused for messages that belong to it (the usual
    case when reading a queue). To decode many messages of one queue, use a
    ``MessageDecoder``.
    """
    return MessageDecoder(queue).decode(data)


def _decode_v1(f: Any, queue: QueueId | None) -> DLQMessage:
    """A version-1 message: one flat array of 22 fields (written by earlier builds)."""
    if type(f) is not list or len(f) != _V1_FIELD_COUNT:
        raise MessageDecodeError("undecodable message: not a version-1 field array")
    try:
        if (
            type(f[0]) is not str
            or type(f[21]) not in _NUMBER
            or not all(type(part) is str for part in f[1:4])
        ):
            raise ValueError("a field has the wrong type")
        record = _record(f[4], f[5], f[6], f[7], f[8], f[9], f[10], f[11], f[12])
        failure = _failure(f, 13)
        return DLQMessage(f[0], _queue_of(f[1], f[2], f[3], queue), record, failure, f[21])
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
