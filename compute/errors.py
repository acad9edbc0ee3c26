"""Errors raised by the DLQ store and the engine."""

from __future__ import annotations

from config.errors import RosettaError


class DLQError(RosettaError):
    """Root of DLQ errors."""


class DLQStorageError(DLQError):
    """The queue storage failed (unreadable directory, RocksDB error, lock held)."""


class QueueLockedError(DLQStorageError):
    """The queue directory is held by another process (usually the running engine)."""


class QueueCorruptError(DLQStorageError):
    """RocksDB says a queue directory is damaged (missing or corrupt files)."""


class QueueWrittenElsewhereError(DLQStorageError):
    """Another engine appended to a replicated queue this store was writing: nothing was stored.

    The store reads the queue's tail again; the caller may retry (backpressure),
    but two engines writing one queue means a pipeline runs twice.
    """


STORE_UNAVAILABLE = "store_unavailable"


class DLQFullError(DLQError):
    """A capacity limit refused an enqueue; nothing of the refused batch was stored.

    ``limit`` names the limit: ``max_queue_messages``, ``max_queue_bytes``,
    ``min_free_disk``, ``disk_full`` (the filesystem itself returned ENOSPC)
    or ``store_unavailable`` (a replicated store lost its quorum or cannot be
    reached: backpressure until it is back, never a drop).
    """

    def __init__(self, limit: str, detail: str, queue: object | None = None) -> None:
        self.limit = limit
        self.detail = detail
        self.queue = queue
        where = f" queue={queue}" if queue is not None else ""
        super().__init__(f"DLQ full ({limit}){where}: {detail}")


class MessageDecodeError(DLQError):
    """Stored bytes are not a DLQ message this version can read (truncated, garbage, future)."""


class MessageEncodeError(DLQError, ValueError):
    """A change holds a value the DLQ message format cannot store (nothing was stored)."""

    def __init__(self, message_id: str, reason: str) -> None:
        self.message_id = message_id
        self.reason = reason
        super().__init__(f"message {message_id} cannot be encoded: {reason}")


class LeaseError(DLQError):
    """A lease was acknowledged or released twice, out of order, or for the wrong queue."""


class MessageTooLargeError(DLQError):
    """A message is over ``DLQ_MAX_MESSAGE_BYTES``; nothing of its batch was stored."""

    def __init__(self, message_id: str, size: int, limit: int) -> None:
        self.message_id = message_id
        self.size = size
        self.limit = limit
        super().__init__(
            f"message {message_id} is {size} bytes, over DLQ_MAX_MESSAGE_BYTES ({limit} bytes)"
        )


class NotFoundError(DLQError):
    """An operator named a queue, message or file that does not exist."""


class QueueNotFoundError(NotFoundError):
    """No queue by that name exists under the DLQ base path."""


class MessageNotFoundError(NotFoundError):
    """No message with that id is in the queue (or in any queue)."""


class OperationError(DLQError):
    """An operator action could not be carried out (no pipeline for a queue, bad import file)."""


class DLQConflictError(DLQError):
    """The operation contradicts the queue's state (already parked, ids already present, ...)."""


class UsageError(RosettaError):
    """A command names something malformed or leaves out a required confirmation."""


class EngineUnreachableError(OperationError):
    """The engine holds the queues but its admin API cannot be used (off, down, token)."""


class DestinationUnavailableError(OperationError):
    """A replay stopped because its destination is unreachable: the messages stay queued."""


class WriterThreadError(RosettaError):
    """The recovery worker's writer thread failed outside the write it ran."""
