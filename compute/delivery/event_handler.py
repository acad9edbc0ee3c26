"""The event handler: writes change batches to destinations, or to the DLQ when it must.

For each (destination, table) group of a batch:

* the queue for (source, table, destination) holds events: the new events go
  behind them (store-and-forward), never around them;
* the destination's circuit is open (known unhealthy): straight to the DLQ;
* otherwise write, retrying transient failures in place with the retry
  policy, then queue the batch with its error context; a permanent failure
  is narrowed down to the offending events, which are parked, while the
  rest of the batch goes on. Changes to a key that is parked are parked
  behind it.

A live write and its in-place retries share one deadline (the destination's
``live_write_deadline_ms`` option, else ``DLQ_LIVE_WRITE_DEADLINE_MS``). The
write runs on the destination's own writer thread; if it has not ended by the
deadline, its events are queued at once and the destination turns to
store-and-forward, while the write, left to finish, is settled against the
queue later (``compute/delivery/in_flight.py``). A destination that hangs
thus costs its pipeline one deadline, not its driver's timeouts.
"""

from __future__ import annotations

import logging
import threading
import time
from collections import Counter
from collections.abc import Callable, Mapping, Sequence
from concurrent.futures import Future
from concurrent.futures import TimeoutError as FutureTimeout
from dataclasses import dataclass, field
from typing import Any

from compute.codec.failure_context import FailureContext
from compute.codec.message import DLQMessage, encode_message
from compute.delivery.failures import (
    append_only_failure,
    capture_failure,
    classify_or_transient,
    deadline_failure,
    deferred_failure,
    held_behind_failure,
    too_large_failure,
)
from compute.delivery.health import DestinationHealth
from compute.delivery.in_flight import InFlightWrites
from compute.delivery.observer import NULL_OBSERVER, Observer
from compute.dlq.manager import DLQManager, EnqueueResult
from compute.dlq.parking import record_key
from compute.errors import DLQFullError, MessageEncodeError, MessageTooLargeError
from compute.queue_id import QueueId
from compute.runtime.fence import NO_FENCE, Fence
from compute.runtime.retry_policy import RetryPolicy
from compute.runtime.writer_thread import WriterThread
from destinations.base import Destination
from destinations.errors import FailureKind
from destinations.records import ChangeRecord, Operation

logger = logging.getLogger(__name__)


@dataclass
class HandlerCounters:
    """What the handler did (running totals), for status, metrics and the progress line."""

    written: Counter[str] = field(default_factory=Counter)  # by destination id
    queued: Counter[str] = field(default_factory=Counter)
    parked: Counter[str] = field(default_factory=Counter)
    dropped: Counter[str] = field(default_factory=Counter)
    # Changes holding a value no DLQ message can store: in the queue's quarantine/.
    quarantined: Counter[str] = field(default_factory=Counter)
    retries: Counter[str] = field(default_factory=Counter)
    queued_by_queue: Counter[QueueId] = field(default_factory=Counter)  # deferred summaries


def group_by_table(records: Sequence[ChangeRecord]) -> dict[str, list[ChangeRecord]]:
    """Records per table, each list in source order."""
    groups: dict[str, list[ChangeRecord]] = {}
    for record in records:
        groups.setdefault(record.table, []).append(record)
    return groups


class EventHandler:
    """Delivers one pipeline's change batches to its destinations, through the DLQ when needed."""

    def __init__(
        self,
        source_id: str,
        destinations: Sequence[Destination],
        health: Mapping[str, DestinationHealth],
        dlq: DLQManager,
        retry_policy: RetryPolicy,
        *,
        stop: threading.Event | None = None,
        clock: Callable[[], float] = time.time,
        live_write_deadline: float | None = None,
        in_flight: InFlightWrites | None = None,
    ) -> None:
        self.source_id = str(source_id)
        self.destinations = list(destinations)
        self.health = health
        self.dlq = dlq
        self.retry_policy = retry_policy
        self._stop = stop or threading.Event()
        self._clock = clock
        # Seconds a live write and its in-place retries may take in all; None: no bound
        # beyond the destination's own timeouts (the write then runs in the caller's thread).
        self.live_write_deadline = live_write_deadline
        self.in_flight = in_flight or InFlightWrites(clock)
        self._writers = {
            d.destination_id: WriterThread(f"live-writer-{source_id}-{d.destination_id}")
            for d in self.destinations
        }
        self.counters = HandlerCounters()
        # Metrics hook, set by the engine; called once per batch, never per message.
        self.observer: Observer = NULL_OBSERVER
        self.fence: Fence = NO_FENCE  # the pipeline's lease, asked before each write (fence.py)

    def handle(self, records: Sequence[ChangeRecord], done: set[tuple[str, str]]) -> None:
        """Deliver every (destination id, table) group of ``records`` not yet in ``done``.

        Each group that is written, queued, parked or (``drop_newest``) dropped
        is added to ``done``. If the DLQ refuses a group (full), the other
        groups still go on and ``DLQFullError`` is raised at the end: the
        caller keeps the batch and retries the groups left, after a pause.
        """
        groups = group_by_table(records)
        refused: DLQFullError | None = None
        for destination in self.destinations:
            try:
                self.deliver_groups(destination, groups, done)
            except DLQFullError as error:
                refused = refused or error
        if refused is not None:
            try:
                raise refused
            finally:
                # A raised exception held by a local of its own frame is a
                # cycle: the frames (and the batch) would wait for the collector.
                del refused

    def deliver_groups(
        self,
        destination: Destination,
        groups: Mapping[str, list[ChangeRecord]],
        done: set[tuple[str, str]],
    ) -> None:
        """``handle`` for one destination: its (table) groups not yet in ``done``."""
        refused: DLQFullError | None = None
        for table, group in groups.items():
            key = (destination.destination_id, table)
            if key in done:
                continue
            try:
                self._deliver(destination, table, group)
            except DLQFullError as error:
                refused = refused or error
                continue
            done.add(key)
        if refused is not None:
            try:
                raise refused
            finally:
                del refused  # no cycle: see handle()

    def deadline_of(self, destination: Destination) -> float | None:
        """Seconds a live write to ``destination`` may take: its own option, else the engine's."""
        own = destination.live_write_deadline
        return own if own is not None else self.live_write_deadline

    def close(self) -> None:
        """Let the live writer threads end (a write still running finishes on its own)."""
        for destination_id in self._writers:
            self.close_writer(destination_id)

    def close_writer(self, destination_id: str) -> None:
        self._writers[destination_id].close()

    def queue_of(self, destination: Destination, table: str) -> QueueId:
        return QueueId(self.source_id, table, destination.destination_id)

    def _deliver(self, destination: Destination, table: str, records: list[ChangeRecord]) -> None:
        queue = self.queue_of(destination, table)
        now = self._clock()
        if self.dlq.has_messages(queue):
            # Older events for this queue wait in the DLQ: writing these now
            # would let a replayed old change overwrite a newer row.
            self._enqueue_to_dlq(
                queue,
                records,
                deferred_failure("queued behind earlier events (store-and-forward)", now),
            )
            return
        health = self.health[destination.destination_id]
        if self.in_flight.is_held(destination.destination_id):
            # A write that passed its deadline may still commit: nothing goes
            # to this destination until it has ended and been settled.
            self._enqueue_to_dlq(
                queue,
                records,
                deferred_failure(
                    "an earlier write to this destination passed its deadline and is still "
                    "in flight (store-and-forward)",
                    now,
                ),
            )
            return
        if health.circuit_open:
            reason = health.snapshot().last_error or "destination unhealthy"
            self._enqueue_to_dlq(
                queue, records, deferred_failure(f"destination unhealthy: {reason}", now)
            )
            return
        refused = destination.refused_as_append_only(records)
        if refused:  # rare: parked at once rather than narrowed down by failed writes
            self._park(
                queue, [DLQMessage.create(queue, r, append_only_failure(r, now)) for r in refused]
            )
            records = [r for r in records if r.op not in (Operation.UPDATE, Operation.DELETE)]
        to_write = records
        parked = self.dlq.parked_keys(queue)
        if parked:  # rare: only after a poison event in this queue
            held = [r for r in records if record_key(r) in parked]
            if held:
                to_write = [r for r in records if record_key(r) not in parked]
                failure = held_behind_failure(now)
                self._park(queue, [DLQMessage.create(queue, r, failure, now=now) for r in held])
        if to_write:
            self._write_with_retries(destination, queue, to_write)

    def _write_with_retries(
        self, destination: Destination, queue: QueueId, records: list[ChangeRecord]
    ) -> None:
        attempt = 0
        health = self.health[destination.destination_id]
        deadline = self.deadline_of(destination)
        give_up_at = None if deadline is None else time.monotonic() + deadline
        while True:
            attempt += 1
            self.fence.check(f"write to {destination.name}")  # outside the try: never queued
            try:
                self._write_live(destination, queue, records, give_up_at)
            except _PastDeadline as stuck:
                self._store_and_forward(destination, queue, records, len(records), stuck.future)
                return
            except Exception as error:
                classified = classify_or_transient(destination, error)
                if classified.kind is FailureKind.TABLE:
                    self._hold(queue, records, capture_failure(error, classified))
                    return
                if classified.kind is FailureKind.PERMANENT:
                    logger.warning(
                        "✗ Permanent write failure, isolating the offending events: destination=%s "
                        "queue=%s error=%s: %s",
                        destination.name,
                        queue,
                        classified.error_class,
                        classified.message,
                    )
                    self._isolate_poison(destination, queue, records)
                    return
                health.note_failure(f"{classified.error_class}: {classified.message}")
                delay = self.retry_policy.next_delay(attempt)
                in_time = give_up_at is None or time.monotonic() + delay < give_up_at
                # A refused login does not heal in place: unhealthy at once, probed until it does.
                retry = self.retry_policy.should_retry(attempt) and not classified.authentication
                if retry and in_time and not self._stop.is_set():
                    self.counters.retries[destination.destination_id] += 1
                    self.observer.retried(queue)
                    logger.warning(
                        "✗ Failed to write to destination %s, retrying in %.2fs "
                        "(attempt %d of %d): queue=%s error=%s: %s",
                        destination.name,
                        delay,
                        attempt,
                        self.retry_policy.max_retries + 1,
                        queue,
                        classified.error_class,
                        classified.message,
                    )
                    if not self._stop.wait(delay):
                        continue
                logger.warning(
                    "✗ Failed to write to destination %s: queue=%s attempts=%d error=%s: %s",
                    destination.name,
                    queue,
                    attempt,
                    classified.error_class,
                    classified.message,
                )
                health.mark_unhealthy(f"{classified.error_class}: {classified.message}")
                failure = capture_failure(error, classified, attempts=attempt)
                self._enqueue_to_dlq(queue, records, failure)
                return
            health.mark_healthy()
            self.dlq.holds.clear(queue)  # held, then emptied by hand (purge): it flows again
            self.counters.written[destination.destination_id] += len(records)
            return

    def _write_live(
        self,
        destination: Destination,
        queue: QueueId,
        records: list[ChangeRecord],
        give_up_at: float | None,
    ) -> None:
        """One write attempt; raises ``_PastDeadline`` if it is still running at ``give_up_at``."""
        if give_up_at is None:
            destination.write_batch(queue.table, records)
        else:
            future = self._writers[destination.destination_id].submit(
                destination.write_batch, queue.table, records
            )
            try:
                future.result(timeout=max(0.0, give_up_at - time.monotonic()))
            except FutureTimeout:
                raise _PastDeadline(future) from None
        self.dlq.truncates_applied(queue, records)  # parked older changes are superseded

    def _store_and_forward(
        self,
        destination: Destination,
        queue: QueueId,
        records: list[ChangeRecord],
        in_flight: int,
        future: Future[Any],
    ) -> None:
        """The write passed the deadline: queue ``records`` now, settle the write when it ends.

        The write in flight carries the first ``in_flight`` of ``records``.
        The destination is held first, so the recovery worker replays nothing
        to it while the write may still commit; the queue was empty (live
        writes only go to empty queues), so these messages are its head.
        """
        deadline = self.deadline_of(destination) or 0.0
        now = self._clock()
        health = self.health[destination.destination_id]
        stuck = self.in_flight.hold(destination.destination_id, queue, future)
        reason = (
            f"write did not finish within {deadline * 1000:.0f} ms "
            "(live_write_deadline_ms); store-and-forward until it recovers"
        )
        health.note_failure(reason, now - deadline)
        health.mark_unhealthy(reason, now)
        failure = deadline_failure(destination, deadline, now)
        messages = [DLQMessage.create(queue, r, failure, now=now) for r in records]
        queued: list[str] = []
        try:
            self._enqueue_messages(queue, records, messages, failure)
            queued = [m.message_id for m in messages[:in_flight]]
        finally:
            # Not queued (DLQ full, ...): the caller keeps the events and tries again;
            # the settle then has nothing to acknowledge.
            self.in_flight.queued(stuck, queued)

    def _isolate_poison(
        self, destination: Destination, queue: QueueId, records: list[ChangeRecord]
    ) -> None:
        """Write one event at a time: park those the destination refuses for good.

        Permanent failures are rare, so the slow path is fine; it keeps every
        good event flowing and parks exactly the bad ones (and, behind them,
        later changes to their keys), in one write before the rest is queued.
        """
        health = self.health[destination.destination_id]
        parking = self.dlq.parking_batch(queue)
        for index, record in enumerate(records):
            now = self._clock()
            if parking.holds(record):
                parking.add(DLQMessage.create(queue, record, held_behind_failure(now), now=now))
                continue
            deadline = self.deadline_of(destination)
            try:
                self._write_live(
                    destination,
                    queue,
                    [record],
                    None if deadline is None else time.monotonic() + deadline,
                )
            except _PastDeadline as stuck:
                self._park(queue, parking.messages)
                self._store_and_forward(destination, queue, records[index:], 1, stuck.future)
                return
            except Exception as error:
                classified = classify_or_transient(destination, error)
                failure = capture_failure(error, classified, now=now)
                if classified.kind is FailureKind.PERMANENT:
                    parking.add(DLQMessage.create(queue, record, failure, now=now))
                    continue
                if classified.kind is FailureKind.TABLE:
                    # The table, not this change: isolating the rest would only
                    # fail the same way once per change. Stop and hold.
                    self._park(queue, parking.messages)
                    self._hold(queue, records[index:], failure)
                    return
                health.mark_unhealthy(f"{classified.error_class}: {classified.message}")
                self._park(queue, parking.messages)
                self._enqueue_to_dlq(queue, records[index:], failure)
                return
            self.counters.written[destination.destination_id] += 1
        self._park(queue, parking.messages)

    def _hold(self, queue: QueueId, records: list[ChangeRecord], failure: FailureContext) -> None:
        """The table fails every change the same way: queue ``records`` in order and hold
        the queue (logged once per hold); the recovery worker retries it until it goes in.

        The destination stays healthy: its other tables flow on.
        """
        self._enqueue_to_dlq(queue, records, failure)
        self.dlq.holds.hold(queue, failure.error_class, failure.code, failure.message)

    def _park(self, queue: QueueId, messages: list[DLQMessage]) -> None:
        if not messages:
            return
        parked = self.dlq.park(queue, messages)
        self.counters.parked[queue.destination_id] += parked
        self.counters.quarantined[queue.destination_id] += len(messages) - parked
        self.observer.parked(queue, parked)

    def _park_oversized(self, queue: QueueId, messages: list[DLQMessage]) -> EnqueueResult:
        """Park messages over ``DLQ_MAX_MESSAGE_BYTES`` (and later changes to their keys),
        queue the rest; the parked ones keep their whole row on disk, for an operator."""
        limit = self.dlq.config.max_message_bytes
        now = self._clock()
        keep: list[DLQMessage] = []
        park: list[DLQMessage] = []
        keys: set[tuple[object, ...]] = set()
        for message in messages:
            try:
                size = len(encode_message(message))  # again: this path is rare
            except MessageEncodeError:
                keep.append(message)  # enqueue quarantines it, with its reason
                continue
            key = record_key(message.record)
            if size > limit:
                failure = too_large_failure(size, limit, message.failure, now)
                park.append(message._replace(failure=failure))
                keys.add(key)
            elif key in keys:
                park.append(message._replace(failure=held_behind_failure(now, message.failure)))
            else:
                keep.append(message)
        parked = self.dlq.park(queue, park)
        self.counters.parked[queue.destination_id] += parked
        self.counters.quarantined[queue.destination_id] += len(park) - parked
        return self.dlq.enqueue(queue, keep) if keep else EnqueueResult(0)

    def _enqueue_to_dlq(
        self, queue: QueueId, records: list[ChangeRecord], failure: FailureContext
    ) -> None:
        """Queue ``records`` behind everything already in ``queue``, with ``failure``."""
        now = self._clock()
        messages = [DLQMessage.create(queue, r, failure, now=now) for r in records]
        self._enqueue_messages(queue, records, messages, failure)

    def _enqueue_messages(
        self,
        queue: QueueId,
        records: list[ChangeRecord],
        messages: list[DLQMessage],
        failure: FailureContext,
    ) -> None:
        self.fence.check(f"DLQ enqueue to {queue}")
        try:
            result = self.dlq.enqueue(queue, messages)
        except MessageTooLargeError:
            result = self._park_oversized(queue, messages)
        self.counters.queued[queue.destination_id] += result.accepted
        self.counters.queued_by_queue[queue] += result.accepted
        self.counters.dropped[queue.destination_id] += result.dropped
        self.counters.quarantined[queue.destination_id] += result.quarantined
        self.observer.enqueued(queue, result.accepted, result.dropped)
        if result.accepted:
            ops = Counter(r.op.name.lower() for r in records)
            # Deferrals behind a non-empty queue are routine while it drains;
            # a hold says so itself, once.
            routine = failure.attempts == 0 or failure.kind is FailureKind.TABLE
            level = logging.DEBUG if routine else logging.WARNING
            logger.log(
                level,
                "Enqueued to DLQ: %s - %d messages (%s) reason=%s: %s",
                queue,
                result.accepted,
                ", ".join(f"{op}={n}" for op, n in sorted(ops.items())),
                failure.error_class,
                failure.message,
            )


class _PastDeadline(Exception):
    """A live write still running at its deadline (``future`` is its outcome)."""

    def __init__(self, future: Future[Any]) -> None:
        super().__init__("live write past its deadline")
        self.future = future
