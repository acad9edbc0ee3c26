"""The DLQ's public face: typed messages over the queue store (enqueue, lease, ack, inspect)."""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from compute.codec.message import DLQMessage, encode_messages
from compute.dlq.attempts import Attempts
from compute.dlq.holds import Holds
from compute.dlq.lane_reader import LaneReader
from compute.dlq.lease import DLQLease, decode_lease
from compute.dlq.limits import default_store, when_full
from compute.dlq.maintenance import Maintenance
from compute.dlq.operator_edits import OperatorEdits
from compute.dlq.parking import Parking, ParkingBatch
from compute.dlq.quarantine import Quarantine, set_aside_directories
from compute.dlq.queue_info import QueueInfos
from compute.dlq.record_restore import restore_records
from compute.dlq.status_files import QueueStatus, StatusFiles
from compute.dlq.tombstones import Tombstones
from compute.dlq.truncates import AppliedTruncate, Truncates
from compute.errors import (
    DLQFullError,
    LeaseError,
    MessageEncodeError,
    MessageTooLargeError,
)
from compute.queue_id import QueueId
from compute.runtime.supervisor import Supervisor
from compute.storage.base import QueueStore
from config.dlq_config import DLQConfig
from destinations.records import ChangeRecord

logger = logging.getLogger(__name__)


@dataclass(frozen=True, slots=True)
class EnqueueResult:
    """How many messages the DLQ stored, dropped (``drop_newest`` only) and quarantined.

    Quarantined: holding a value no DLQ message can store (see ``DLQManager.enqueue``).
    """

    accepted: int
    dropped: int = 0
    quarantined: int = 0


_ONE_ACCEPTED = EnqueueResult(1)


class DLQManager:
    """Persistent per-(source, table, destination) queues of failed CDC changes.

    Guarantees: a message is on disk when ``enqueue`` returns; it leaves the
    disk only through ``ack`` (after the destination committed), ``purge``,
    or quarantine of its raw bytes. Many threads may enqueue; each queue has
    one reader. Every queue directory holds a ``status.json`` refreshed at
    most once a second while the manager runs, and on close.
    """

    def __init__(
        self,
        config: DLQConfig,
        *,
        store: QueueStore | None = None,
        clock: Callable[[], float] = time.time,
        background: bool = True,
    ) -> None:
        self.config = config
        self._clock = clock
        if store is None:
            store = default_store(config)
        self.store = store
        self._infos = QueueInfos()
        self._tombstones = Tombstones(store, self._infos)
        self._attempts = Attempts(store, self._infos)
        self._quarantine = Quarantine(store, self._infos, clock)
        self._lanes = LaneReader(store, self._tombstones)
        self._truncates = Truncates(store, self._infos)
        self._parking = Parking(store, self._infos, self._lanes, self._quarantine, self._truncates)
        # Queues whose table fails every change the same way: kept in order, retried.
        self.holds = Holds(clock)
        self._status_files = StatusFiles(
            store,
            self._infos,
            self._lanes,
            self._restore_side_files,
            clock,
            self._superseded,
            self.holds,
        )
        self._edits = OperatorEdits(
            store,
            self._infos,
            self._lanes,
            self._tombstones,
            self._parking,
            self.enqueue,
            self._truncates,
        )
        if hasattr(store, "on_recreated"):
            store.on_recreated = self._queue_recreated
        self._stop = threading.Event()
        self.maintenance: Supervisor | None = None
        self._maintenance = Maintenance(
            self, store, self._status_files, self._infos, config.rescan_interval, self._stop
        )
        if background:
            self.maintenance = Supervisor("dlq-maintenance", self._maintenance.run, self._stop)
            self.maintenance.start()
        logger.info("DLQ Manager initialized with base path: %s", config.base_path)

    def __enter__(self) -> DLQManager:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # ---------------------------------------------------------------- writing

    def enqueue(self, queue: QueueId, messages: Sequence[DLQMessage]) -> EnqueueResult:
        """Store ``messages`` (all for ``queue``) at the tail, all or none.

        A message over ``DLQ_MAX_MESSAGE_BYTES`` raises ``MessageTooLargeError``
        and stores nothing. When a capacity limit is reached: with ``DLQ_WHEN_FULL=block`` raises
        ``DLQFullError`` and stores nothing; with ``drop_newest`` drops the
        batch, counts it and logs it. A message holding a value no DLQ message
        can store is quarantined (``quarantined`` in the result) and the others
        are stored.
        """
        count = len(messages)
        if not count:
            return EnqueueResult(0)
        for message in messages:
            if message.queue is not queue and message.queue != queue:
                raise ValueError(
                    f"message {message.message_id} belongs to {message.queue}, not {queue}"
                )
        try:
            payloads = encode_messages(messages)
        except MessageEncodeError:  # rare: set the unstorable ones aside, store the rest
            stored, payloads = self._quarantine.encode_storable(queue, messages)
            quarantined = count - len(stored)
            if stored:
                result = self.enqueue(queue, stored)
                return EnqueueResult(result.accepted, result.dropped, quarantined)
            return EnqueueResult(0, quarantined=quarantined)
        limit = self.config.max_message_bytes
        # One max() instead of a Python loop; the loop only finds who is too large.
        if max(map(len, payloads)) > limit:
            for message, payload in zip(messages, payloads, strict=True):
                if len(payload) > limit:
                    raise MessageTooLargeError(message.message_id, len(payload), limit)
        info = self._infos.of(queue)
        try:
            # One uncontended lock per batch: an operator edit of this queue
            # (unpark, park, discard, purge, import) is not interleaved with it.
            with (self._infos.of(queue.main) if queue.lane else info).edit_lock:
                self.store.enqueue(queue, payloads)
        except DLQFullError as error:
            if not when_full(self.config, queue, info, messages, error, self._clock()):
                raise
            return EnqueueResult(0, dropped=count)
        last = messages[-1]
        # A generator over one message costs more than the rest of this block.
        newest = last.enqueued_at if count == 1 else max(m.enqueued_at for m in messages)
        with info.lock:
            if info.oldest_known and info.oldest is None:
                info.oldest = min(m.enqueued_at for m in messages)  # was empty
            if info.newest is None or newest > info.newest:
                info.newest = newest
            info.newest_known = True
            # A deferral (attempts == 0) does not hide the real failure behind it.
            failure = last.failure
            if failure.attempts or info.last_failure is None:
                info.last_failure = failure
                info.last_error = None
                info.last_error_at = failure.last_failure_at or newest
            info.dirty = True
        # Frozen, so one shared result serves every single-message enqueue.
        return _ONE_ACCEPTED if count == 1 else EnqueueResult(count)

    def editing(self, queue: QueueId) -> threading.RLock:
        """Hold this (a context manager) to edit ``queue`` (both lanes) as one step.

        Appends to the queue (``enqueue``, ``park``) wait meanwhile: a live
        change to a key can then not land between an operator's snapshot of
        the queue and the copies it appends (which would put it ahead of
        older changes to the same key). Reentrant; the operator edits of this
        class (purge, discard, park, unpark) take it themselves.
        """
        return self._infos.edit_lock(queue)

    def record_error(self, queue: QueueId, text: str) -> None:
        """Remember the latest failure seen for ``queue`` (shown in its status)."""
        info = self._infos.of(queue)
        with info.lock:
            info.last_error = text
            info.last_error_at = self._clock()
            info.dirty = True

    # ---------------------------------------------------------------- reading

    def read_batch(
        self, queue: QueueId, max_messages: int | None = None, *, ahead: bool = False
    ) -> DLQLease:
        """Lease the oldest unacknowledged messages of ``queue``, in order.

        Undecodable payloads are moved to the queue's ``quarantine/`` directory
        with their raw bytes and are not returned; acking the lease removes
        them from the queue.

        With ``ahead``, one lease may be outstanding already: this reads (and
        decodes) the messages that follow it, while its batch is still being
        written. Leases are acked oldest first; releasing one releases every
        later one.
        """
        limit = max_messages or self.config.batch_size
        store_lease = self.store.read(queue, limit, ahead=ahead)
        try:
            skip = dict(self._tombstones.of(queue))
            lease = decode_lease(queue, store_lease, ahead, skip, self._quarantine.undecodable)
        except BaseException:
            # Whatever went wrong, the payloads stay at the head: a lease the
            # reader never saw would block every later read of the queue.
            self.store.release(store_lease)
            raise
        lease._owner = self
        if store_lease.payloads:
            info = self._infos.of(queue)
            with info.lock:
                info.leases.append(lease)
        return lease

    def ack(self, lease: DLQLease, messages_done: int | None = None) -> None:
        """The lease's messages are committed downstream: delete them for good.

        With ``messages_done``, only the first that many messages are; the
        rest go back to the head of the queue, in order.
        """
        if lease._done:
            raise LeaseError(f"lease on {lease.queue} was already acknowledged or released")
        count: int | None = None
        if messages_done is not None and messages_done < len(lease.messages):
            index = lease._payload_index
            count = messages_done if index is None else index[messages_done]
            if count == 0:
                self.release(lease)
                return
        if lease._discarded:
            # Tombstones go first: a crash before the ack then re-delivers a
            # discarded message (a duplicate), never skips a later one.
            gone = [i for index, i in lease._discarded if count is None or index < count]
            self._tombstones.forget(lease.queue, gone)
        self.store.ack(lease._store_lease, count)
        # A partial ack gives the rest back, and a read-ahead lease with it.
        self._settle(lease, later=count is not None)
        if lease.queue.lane:
            self._parking.forget_keys(lease.queue)  # keys may be released
        done_ids = lease.messages if count is None else lease.messages[: messages_done or 0]
        self._attempts.forget(lease.queue, [m.message_id for m in done_ids])
        info = self._infos.of(lease.queue)
        with info.lock:
            info.oldest_known = False
            info.dirty = True

    def release(self, lease: DLQLease) -> None:
        """Give the lease back unacknowledged: its messages stay at the head, in order."""
        if lease._done:
            raise LeaseError(f"lease on {lease.queue} was already acknowledged or released")
        self.store.release(lease._store_lease)
        self._settle(lease, later=True)

    def _settle(self, lease: DLQLease, *, later: bool) -> None:
        """``lease`` is acked or given back; with ``later``, so are the leases after it."""
        lease._done = True
        info = self._infos.of(lease.queue)
        with info.lock:
            held = info.leases
            position = next((i for i, x in enumerate(held) if x is lease), None)
            if position is None:
                return
            if later:
                for after in held[position + 1 :]:
                    after._done = True
                del held[position:]
            else:
                del held[position]

    def peek(self, queue: QueueId, limit: int = 10) -> list[DLQMessage]:
        """Up to ``limit`` messages from the head, without leasing or removing them."""
        return self._lanes.peek(queue, limit)

    def iter_messages(self, lane: QueueId, chunk: int = 1000) -> Iterator[DLQMessage]:
        """Every message of ``lane`` in FIFO order, streamed; discarded ones skipped."""
        return self._lanes.iter_messages(lane, chunk)

    def count(self, lane: QueueId) -> int:
        """Messages in ``lane`` (a queue or its parked lane), discarded ones not counted."""
        return self._lanes.count(lane)

    def has_messages(self, queue: QueueId) -> bool:
        return self.store.count(queue) > 0

    def locate(self, message_id: str) -> tuple[QueueId, DLQMessage]:
        """Find ``message_id`` in any queue; raises ``MessageNotFoundError``."""
        return self._lanes.locate(message_id)

    def existing_ids(self, queue: QueueId, ids: set[str]) -> set[str]:
        """Which of ``ids`` are already in ``queue`` (either lane)."""
        return self._lanes.existing_ids(queue, ids)

    def list_queues(self, *, refresh: bool = False) -> list[QueueId]:
        """Every known queue (from memory); ``refresh`` first scans the disk for new ones.

        Queues made by this process are known at once; others (a restore, a
        second process) appear at the next scan, every ``DLQ_RESCAN_INTERVAL``.
        """
        if refresh:
            return self.store.rescan()
        return self.store.list_queues()

    def refresh_source(self, source_id: str) -> None:
        """This engine takes ``source_id``'s pipeline over: read its queues' state afresh.

        The engine that ran it may have queued, replayed, parked or discarded
        meanwhile: counts, tombstones, attempts and the truncate mark cached
        here are read again from the store at their next use.
        """
        self._infos.forget_source(source_id)
        self.store.refresh_source(source_id)

    # ---------------------------------------------------------------- parking

    def park(self, queue: QueueId, messages: Sequence[DLQMessage]) -> int:
        """Set ``messages`` aside in ``queue``'s parked lane, keeping their context.

        Parked messages stay on disk, visible and replayable by hand; they are
        never replayed automatically. Their keys count as parked from now on,
        so later changes to the same keys are parked behind them. A message
        holding a value no DLQ message can store is quarantined instead.
        Returns how many were parked.
        """
        return self._parking.park(queue, messages)

    def is_parked(self, queue: QueueId, record: ChangeRecord) -> bool:
        """True when an earlier change to ``record``'s key is parked in ``queue``."""
        return self._parking.is_parked(queue, record)

    def parking_batch(self, queue: QueueId) -> ParkingBatch:
        """Gathers the poison of one failed batch (and what it holds) for one ``park`` call."""
        return ParkingBatch(self._parking, queue)

    def parked_keys(self, queue: QueueId) -> frozenset[tuple[Any, ...]]:
        """Keys (``record_key``) with a parked change in ``queue``; usually empty.

        Callers checking a whole batch fetch this once instead of calling
        ``is_parked`` per record.
        """
        return self._parking.parked_keys(queue)

    def parked_count(self, queue: QueueId) -> int:
        return self._lanes.count(queue.parked)

    # ------------------------------------------------------------- truncates

    def truncates_applied(self, queue: QueueId, records: Iterable[ChangeRecord]) -> None:
        """``queue``'s destination committed ``records``: remember the newest truncate among them.

        Called before the messages holding them are acknowledged. Parked
        changes of ``queue`` older than it are superseded from then on.
        """
        self._truncates.applied(queue, records, self._clock())

    def applied_truncate(self, queue: QueueId) -> AppliedTruncate | None:
        """The newest truncate of ``queue``'s table its destination applied, if known."""
        return self._truncates.of(queue)

    def superseded_count(self, queue: QueueId) -> int:
        """Parked changes of ``queue`` older than its table's last applied truncate."""
        return self._parking.superseded(queue) if self.store.count(queue.parked) else 0

    def _superseded(self, queue: QueueId) -> tuple[int, dict[str, Any] | None]:
        count = self.superseded_count(queue)
        truncate = self._truncates.of(queue) if count else None
        return count, None if truncate is None else truncate.to_json()

    # --------------------------------------------------------------- attempts

    def record_failed_attempt(
        self, queue: QueueId, messages: Sequence[DLQMessage]
    ) -> dict[str, int]:
        """Count one more failed replay of ``messages``; returns their attempt counts.

        Counts are kept in the queue's ``attempts.json`` (messages in a queue
        are immutable), so a restart does not reset a poison message's budget.
        """
        return self._attempts.record_failed(queue, messages)

    def attempts_of(self, queue: QueueId, message: DLQMessage) -> int:
        return self._attempts.of(queue, message)

    # ------------------------------------------------------- operator edits

    def purge(self, queue: QueueId) -> int:
        """Delete every message of ``queue`` (or of its parked lane); returns how many."""
        return self._edits.purge(queue)

    def discard_message(self, queue: QueueId, message_id: str) -> list[QueueId]:
        """Remove ``message_id`` from ``queue`` for good (every lane holding it).

        Returns the lanes it was removed from; raises ``MessageNotFoundError``.
        """
        return self._edits.discard_message(queue, message_id)

    def park_message(self, queue: QueueId, message_id: str) -> DLQMessage:
        """Move one message of ``queue``'s main lane to its parked lane, by hand.

        Copy first, tombstone second (a crash in between leaves the message in
        both lanes: a duplicate, not a loss). Its key counts as parked from now
        on, so later changes to the key are parked behind it.
        """
        return self._edits.park_message(queue, message_id)

    def unpark_message(self, queue: QueueId, message_id: str) -> list[DLQMessage]:
        """Send a parked message back for replay, keeping the order of its key.

        Moves the message, every later parked change to the same key and every
        change to that key still waiting in the main lane, in that order, to
        the tail of the main lane, then releases the key. Refuses
        (``DLQConflictError``) when an earlier change to the key is still
        parked: unpark that one first. Returns the moved messages.
        """
        return self._edits.unpark_message(queue, message_id)

    # ---------------------------------------------------------------- status

    def status(self, queue: QueueId) -> QueueStatus:
        return self._status_files.status(queue)

    def refresh_all_status(self) -> int:
        """Mark every queue on disk for a status-file refresh (after a restart
        their files may predate a crash); returns how many queues there are."""
        return self._status_files.mark_all()

    def write_status_files(self, *, force: bool = False) -> int:
        """Refresh ``status.json`` of every changed queue (all of them with ``force``)."""
        return self._status_files.write(force=force)

    def maintain(self, now: float | None = None) -> int:
        """One pass of the background thread's work (status files, idle handles, drained
        queues' directories); ``now`` on the store's clock. Returns queues removed."""
        return self._maintenance.run_once(now)

    def damaged_queues(self) -> list[dict[str, str]]:
        """Queues whose directories were damaged and set aside (files kept) in this run."""
        found = getattr(self.store, "quarantined", [])
        return [{"queue": str(q), "moved_to": str(path), "reason": why} for q, path, why in found]

    def set_aside_directories(self) -> list[dict[str, Any]]:
        """Every damaged queue directory waiting under ``<base>/quarantine/``, this run or earlier.

        Unlike ``damaged_queues`` (what this run found), these stay listed
        until an operator has dealt with the files and removed them.
        """
        return set_aside_directories(Path(self.config.base_path))

    def _restore_side_files(self, queue: QueueId) -> None:
        restore_records(self.store, self._infos, self._tombstones, self._attempts, queue)

    def _queue_recreated(self, queue: QueueId) -> None:
        self._restore_side_files(queue)
        self._infos.of(queue).dirty = True  # its status.json went with the directory

    def close(self) -> None:
        """Write final status files and close every queue."""
        if self._stop.is_set():
            return
        self._stop.set()
        if self.maintenance is not None:
            self.maintenance.join(timeout=5)
        try:
            self.write_status_files(force=True)
        finally:
            self.store.close()
        logger.info("DLQ Manager closed")
