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
flat array of 22 fields) is still read.

Version 3 is version 2 with one more field before the context: the columns
the source left out as unchanged (``ChangeRecord.unchanged``). It is written
only for a change that has such columns; every other change is still
written as version 2, byte for byte, so a queue stays readable by the build
before (except those changes, which it refuses by their version). Anything
else raises
``MessageDecodeError`` and nothing else, so the store can quarantine it.

A value that cannot be stored (an unknown type, nesting deeper than about
1,000 levels) raises ``MessageEncodeError`` naming the message, so the caller
can set that one change aside and keep the others.
"""

from __future__ import annotations

import threading
import time
import uuid
from collections.abc import Sequence
from typing import Any, NamedTuple

import msgpack

from compute.codec.ext_types import pack_default, packb, unpackb
from compute.codec.failure_context import FailureContext
from compute.codec.legacy import V1, decode_v1
from compute.codec.parts import NUMBER, OPERATIONS, failure_from_fields, queue_of
from compute.errors import MessageDecodeError, MessageEncodeError
from compute.queue_id import QueueId
from destinations.records import ChangeRecord, SourcePosition

FORMAT_VERSION = 2
_V2_FIELD_COUNT = 11
# The first byte of every version-2 message: a msgpack fixarray of 11 elements.
V2_FIRST_BYTE = 0x90 | _V2_FIELD_COUNT
# A change with unchanged columns: version 2 plus the list of them.
UNCHANGED_VERSION = 3
_V3_FIELD_COUNT = 12
V3_FIRST_BYTE = 0x90 | _V3_FIELD_COUNT


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


_local = threading.local()


def _packer() -> msgpack.Packer:
    """This thread's Packer: reusing one is much cheaper than ``packb``; sharing is unsafe."""
    try:
        return _local.packer
    except AttributeError:
        _local.packer = msgpack.Packer(default=pack_default, use_bin_type=True, strict_types=True)
        return _local.packer


def _pack(fields: list[Any]) -> bytes:
    try:
        return _packer().pack(fields)
    except UnicodeEncodeError:
        # Lone surrogates (a QueueId takes any str): rare, so kept off the fast path.
        return packb(fields)


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
_RECORD_FIELDS = ("table", "op", "key", "after", "position", "before", "commit_ts", "unchanged")
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


def _encode_one(message: DLQMessage) -> bytes:
    """One message's bytes: its fields and its context blob, packed by one Packer.

    A single-message enqueue pays for every Python call and attribute lookup
    on its way (about a third of its encoding time went there): the tuples
    are unpacked once and one Packer packs both arrays. Its field list is
    written out again in ``encode_messages`` on purpose: sharing that loop
    made this 15 to 25 % slower (measured); a property test keeps the two
    to the same bytes.
    """
    message_id, queue, record, failure, enqueued_at = message
    table, op, key, after, position, before, commit_ts, unchanged = record
    # The context blob, inlined (a call is a tenth of this function's own time).
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
    if unchanged:
        fields[0] = UNCHANGED_VERSION
        fields.insert(-1, list(unchanged))
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

    Same bytes as ``encode_message`` of each (tested). Every failed batch of a
    pipeline passes through here, so it is written like ``_encode_one``: the
    tuples unpacked once, one Packer, and a context compared by identity
    before equality (the messages of one failed batch hold the same failure,
    queue and table objects).

    Raises ``MessageEncodeError`` for the first message that cannot be stored.
    """
    if len(messages) == 1:
        # Nothing to share: skip building and comparing the context key.
        return [encode_message(messages[0])]
    encoded: list[bytes] = []
    append = encoded.append
    pack = _packer().pack
    shared_failure: Any = _UNSET
    shared_queue: Any = _UNSET
    shared_table: Any = _UNSET
    shared_columns: list[Any] = []
    context = b""
    for message in messages:
        message_id, queue, record, failure, enqueued_at = message
        table, op, key, after, position, before, commit_ts, unchanged = record
        try:
            columns = list(key)
            if (
                (failure is not shared_failure and failure != shared_failure)
                or (queue is not shared_queue and queue != shared_queue)
                or (table is not shared_table and table != shared_table)
                or columns != shared_columns
            ):
                context = _pack(
                    [
                        queue.source_id,
                        queue.table,
                        queue.destination_id,
                        *failure,
                        table,
                        columns,
                    ]
                )
                shared_failure, shared_queue, shared_table = failure, queue, table
                shared_columns = columns
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
                context,
            ]
            if unchanged:
                fields[0] = UNCHANGED_VERSION
                fields.insert(-1, list(unchanged))
            try:
                append(pack(fields))
            except UnicodeEncodeError:
                append(packb(fields))  # lone surrogates: _pack's slow path
        except (TypeError, ValueError, OverflowError) as error:
            raise MessageEncodeError(message_id, _reason(error)) from error
    return encoded


def _reason(error: BaseException) -> str:
    text = str(error).rstrip(".")
    if text == "recursion limit exceeded":
        return "a value is nested too deeply (msgpack's limit is about 1,000 levels)"
    return text or type(error).__name__


_CONTEXT_FIELD_COUNT = 13


_new = tuple.__new__
_UNSET = object()


def _unpack(data: bytes | bytearray | memoryview) -> Any:
    try:
        return unpackb(data)
    except Exception as error:  # msgpack raises many types for garbage; all mean one thing
        raise MessageDecodeError(f"undecodable message: {type(error).__name__}: {error}") from None


def _unpack_v3(data: bytes) -> list[Any]:
    """A version-3 message's fields, its unchanged columns (index 10) as a tuple of names."""
    f = _unpack(data)
    if type(f) is not list or len(f) != _V3_FIELD_COUNT or f[0] != UNCHANGED_VERSION:
        raise MessageDecodeError("undecodable message: not a version-3 field array")
    unchanged = f[10]
    if (
        type(unchanged) is not list
        or not unchanged
        or not all(type(column) is str for column in unchanged)
    ):
        raise MessageDecodeError(
            "undecodable message: bad field: the unchanged columns are not a list of names"
        )
    f[10] = tuple(unchanged)
    return f


def _check_type(data: Any) -> None:
    if not isinstance(data, bytes | bytearray | memoryview):
        raise MessageDecodeError(f"not a message: {type(data).__name__}")
    if len(data) < 2:
        raise MessageDecodeError(f"message too short ({len(data)} bytes)")


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
        unpack, new, operations, number = unpackb, _new, OPERATIONS, NUMBER
        context_bytes = self._context
        columns, table, queue, failure = self._columns, self._table, self._queue, self._failure
        for data in payloads:
            if type(data) is not bytes or len(data) < 2 or data[0] != V2_FIRST_BYTE:
                if type(data) is bytes and len(data) >= 2 and data[0] == V3_FIRST_BYTE:
                    f = _unpack_v3(data)
                    unchanged = f.pop(10)
                else:
                    append(self._decode_other(data))
                    continue
            else:
                unchanged = ()
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
                        unchanged,
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
        if first in (V2_FIRST_BYTE, V3_FIRST_BYTE):
            return self.decode(bytes(data))
        if first != V1:
            raise MessageDecodeError(
                f"unknown message format (first byte {first:#04x}): this build reads "
                f"version {V1} (first byte 0x01), version {FORMAT_VERSION} "
                f"(first byte {V2_FIRST_BYTE:#04x}) and version {UNCHANGED_VERSION} "
                f"(first byte {V3_FIRST_BYTE:#04x})"
            )
        return DLQMessage(*decode_v1(_unpack(memoryview(data)[1:]), self.queue))

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
        queue = queue_of(c[0], c[1], c[2], self.queue)
        failure = failure_from_fields(c, 3)
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
