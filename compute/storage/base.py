"""The queue-store interface the DLQ manager is written against.

A store keeps opaque payloads in FIFO queues with leased reads: ``read``
hands out the oldest unacknowledged payloads, ``ack`` deletes them for good,
``release`` puts them back at the head. rocksq is the embedded default; a
replicated backend (NATS JetStream) can implement the same interface.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Callable, Collection, Iterator
from dataclasses import dataclass
from pathlib import Path

from compute.errors import LeaseError
from compute.queue_id import QueueId
from compute.storage.atomic_file import write_atomic


@dataclass(frozen=True, slots=True)
class QueueLimits:
    """Capacity limits checked on every enqueue (0 disables a limit)."""

    max_messages: int = 0
    max_bytes: int = 0
    min_free_disk_bytes: int = 0


@dataclass(frozen=True, slots=True)
class StoredStats:
    """What a store knows about one queue without decoding any payload."""

    messages: int
    bytes_on_disk: int
    segments: int


@dataclass(frozen=True, slots=True)
class StoreLease:
    """Payloads handed to the queue's reader; valid until acked or released.

    ``start`` is the queue-relative position of the first payload; stores use
    it (and the opaque ``token``) to check that leases are acked in order.
    """

    queue: QueueId
    payloads: list[bytes]
    token: tuple[int, int]

    def __len__(self) -> int:
        return len(self.payloads)


def check_read(queue: QueueId, max_items: int, leases: list[StoreLease], ahead: bool) -> None:
    """The lease rules of ``QueueStore.read``: one reader, and at most one read ahead."""
    if max_items < 1:
        raise ValueError("max_items must be at least 1")
    if len(leases) > (1 if ahead else 0):
        raise LeaseError(
            f"queue {queue} already has an outstanding lease"
            + (" and a read-ahead lease" if ahead else "")
        )


def acked_count(lease: StoreLease, count: int | None) -> int:
    """How many of ``lease``'s payloads an ``ack(lease, count)`` acknowledges (checked)."""
    done = len(lease.payloads) if count is None else count
    if not 0 < done <= len(lease.payloads):
        raise ValueError(f"can acknowledge 1 to {len(lease.payloads)} items, not {count}")
    return done


def check_oldest(lease: StoreLease, leases: list[StoreLease]) -> None:
    """Acks go in order: only the oldest outstanding lease may be acknowledged."""
    if not leases or leases[0] is not lease:
        raise LeaseError(f"lease on {lease.queue} is not the oldest outstanding lease")


def lease_position(lease: StoreLease, leases: list[StoreLease]) -> int:
    """Where ``lease`` is among the outstanding ones (for a release)."""
    for position, held in enumerate(leases):
        if held is lease:
            return position
    raise LeaseError(f"lease on {lease.queue} is not an outstanding lease")


class StoreUnreachable(OSError):
    """A record could not be read because the store did not answer (a replicated store
    without quorum or out of reach): nothing is known to be damaged; try again later."""


class QueueStore(ABC):
    """FIFO queues of opaque payloads with at-least-once leased reads.

    Thread-safety: any number of threads may enqueue; each queue has one
    reader. The reader holds one lease at a time, plus at most one read-ahead
    lease (``read(..., ahead=True)``): the next payloads, fetched while the
    first lease's batch is still being written downstream. Leases are acked
    oldest first; releasing a lease gives back every later one too.
    """

    @abstractmethod
    def enqueue(self, queue: QueueId, payloads: list[bytes]) -> None:
        """Append ``payloads`` atomically; raise ``DLQFullError`` if a limit refuses them."""

    @abstractmethod
    def read(self, queue: QueueId, max_items: int, *, ahead: bool = False) -> StoreLease:
        """Lease up to ``max_items`` of the oldest unacknowledged payloads (maybe none).

        With ``ahead``, a lease may already be outstanding: the new lease holds
        the payloads that follow it (maybe none, e.g. at a segment's end).
        Without it, an outstanding lease raises ``LeaseError``.
        """

    @abstractmethod
    def ack(self, lease: StoreLease, count: int | None = None) -> None:
        """The lease's first ``count`` payloads (all by default) are committed downstream.

        It must be the oldest outstanding lease. They are deleted for good; any
        remaining payloads (and a read-ahead lease) go back to the head.
        """

    @abstractmethod
    def release(self, lease: StoreLease) -> None:
        """Give the lease back, with any later one: its payloads stay at the head, in order."""

    @abstractmethod
    def peek(self, queue: QueueId, limit: int, *, newest: bool = False) -> list[bytes]:
        """Up to ``limit`` unacknowledged payloads from the head (or the newest one), unleased."""

    def scan(self, queue: QueueId, chunk: int = 1000) -> Iterator[list[bytes]]:
        """Every unacknowledged payload of ``queue`` in FIFO order, ``chunk`` at a time.

        Never leases nor removes anything. Payloads added while scanning may or
        may not be seen. This default peeks the whole queue at once; stores
        override it to stream.
        """
        payloads = self.peek(queue, self.count(queue))
        for start in range(0, len(payloads), chunk):
            yield payloads[start : start + chunk]

    @abstractmethod
    def count(self, queue: QueueId) -> int:
        """Unacknowledged messages in ``queue`` (cheap: no disk measurement)."""

    @abstractmethod
    def stats(self, queue: QueueId) -> StoredStats:
        """Message count and bytes on disk of ``queue`` (zeros if it does not exist)."""

    @abstractmethod
    def list_queues(self) -> list[QueueId]:
        """Every known queue: found at start-up or the last ``rescan``, or created since.

        Called on every recovery pass, metrics scrape and status call, so it
        must be cheap: no disk access, no side effects.
        """

    def rescan(self) -> list[QueueId]:
        """Look for queues created outside this store (another process, a restore).

        ``list_queues`` answers from memory; this is the call that may read the
        disk. Stores that always know every queue need not override it.
        """
        return self.list_queues()

    def refresh_source(self, source_id: str) -> None:
        """Forget what is cached of ``source_id``'s queues and look for new ones.

        Called when this engine takes a pipeline over from another one, which
        may have written, acked or edited its queues meanwhile. A store only
        this process writes has nothing cached that can be stale: it rescans.
        """
        self.rescan()

    @abstractmethod
    def queue_path(self, queue: QueueId) -> Path:
        """The directory of ``queue`` (where its status file lives)."""

    @abstractmethod
    def purge(self, queue: QueueId) -> int:
        """Delete every message of ``queue``; return how many there were."""

    @abstractmethod
    def close_idle(self, idle_seconds: float) -> int:
        """Close handles unused for ``idle_seconds``; return how many were closed."""

    def remove_drained(
        self, queue: QueueId, idle: float, now: float | None = None, files: Collection[str] = ()
    ) -> bool:
        """Remove what ``queue`` keeps on disk once it (both lanes) stayed empty and unused
        for ``idle`` seconds; True if removed. Its next enqueue makes it again.

        ``files``: names of the caller's files in the queue's directory,
        removed with it. Stores that keep nothing per drained queue need not
        override this.
        """
        return False

    def load_record(self, queue: QueueId, name: str) -> bytes | None:
        """A small record the DLQ keeps beside ``queue``'s messages, or None if there is none.

        Records are the manager's own state of a queue (delivery attempts,
        tombstones of discarded messages, the last applied truncate). This
        default keeps each as the file ``name`` in ``queue_path(queue)``; a
        replicated store keeps them where its messages are, so that they
        survive the machine. Raises ``OSError`` when it cannot be read.
        """
        try:
            return (self.queue_path(queue) / name).read_bytes()
        except FileNotFoundError:
            return None

    def save_record(
        self, queue: QueueId, name: str, data: bytes | None, *, durable: bool = True
    ) -> bool:
        """Replace the record ``name`` of ``queue`` (None removes it); False if not kept.

        A queue that holds nothing any more may have no place left for records
        (its directory was removed once drained): the record is then not kept
        and False is returned; the caller keeps the value in memory.
        ``durable``: on stable storage before this returns.
        """
        directory = self.queue_path(queue)
        path = directory / name
        if data is None:
            path.unlink(missing_ok=True)
            return True
        if not directory.is_dir():
            return False
        write_atomic(path, data, durable=durable)
        return True

    def written_generation(self) -> int:
        """A number for every write so far that is not yet known synced (0: none to wait for).

        With a background syncer (``DLQ_FSYNC=interval``) an enqueue returns
        before its writes reach stable storage: whoever must not get ahead
        of the disk (a source position) waits until ``is_synced`` of it.
        """
        return 0

    def written_generation_of_this_thread(self) -> int:
        """``written_generation`` as of this thread's latest enqueue (0: none to wait for)."""
        return 0

    def is_synced(self, generation: int) -> bool:
        """True once every write up to ``generation`` is on stable storage."""
        return True

    def add_sync_listener(self, listener: Callable[[], None]) -> None:
        """Call ``listener`` after each background sync (stores without one never call it)."""
        return None

    def remove_sync_listener(self, listener: Callable[[], None]) -> None:
        """Stop calling ``listener``."""
        return None

    @abstractmethod
    def close(self) -> None:
        """Close every queue; the store may not be used afterwards."""
