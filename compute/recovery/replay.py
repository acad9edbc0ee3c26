"""Replays one queue's batches in FIFO order into its destination, for the recovery worker.

Batch by batch, a batch is acknowledged only after the destination committed
it; how a write ended is decided in one place (``compute/recovery/outcome.py``).
A batch that fails again backs off per queue. Events that expired are dropped,
and changes to a key whose earlier change is parked are parked behind it.
"""

from __future__ import annotations

import contextlib
import logging
import random
import threading
import time
from collections.abc import Callable, Mapping
from concurrent.futures import Future
from concurrent.futures import TimeoutError as FutureTimeout
from dataclasses import dataclass
from functools import partial
from typing import Any

from compute.codec.message import DLQMessage
from compute.delivery.failures import (
    classify_or_transient,
    failed_again,
    held_behind_failure,
    with_failure,
)
from compute.delivery.health import DestinationHealth
from compute.delivery.in_flight import InFlightWrites
from compute.delivery.observer import NULL_OBSERVER, Observer
from compute.dlq.lease import DLQLease
from compute.dlq.manager import DLQManager
from compute.dlq.parking import record_key
from compute.errors import DLQError
from compute.queue_id import QueueId
from compute.recovery.backoff import QueueBackoff, hold_delay
from compute.recovery.gc_pause import collector_paused
from compute.recovery.outcome import (
    Outcome,
    ReplayCounts,
    ReplayResult,
    StuckWrite,
    decide,
)
from compute.runtime.fence import NO_FENCE, Fence
from compute.runtime.retry_policy import RetryPolicy
from compute.runtime.writer_thread import WriterThread
from config.dlq_config import DLQConfig
from destinations.base import Destination, PreparedBatch
from destinations.errors import ClassifiedError

logger = logging.getLogger(__name__)

# Replay batches at least this large (DLQ_BATCH_SIZE, or the destination's
# batch_size) are pipelined: batch N+1 is read, decoded and prepared while
# batch N is written on the writer thread, and the cyclic garbage collector
# is paused for the pass (compute/recovery/gc_pause.py). Both pay off when
# decoding a batch takes about as long as writing it. Smaller batches are
# written inline, as before: their round trips dominate, and the extra
# thread's memory is not worth it (the 10-minute soak, batches of 100, ended
# 8.5-10.3% above its warm-up RSS pipelined, against 2.2% inline, on the
# same machine).
LARGE_BATCH_SIZE = 1000
# Batches one pass replays from one queue before the other queues get their turn.
MAX_BATCHES_PER_PASS = 50


@dataclass
class _ReadyBatch:
    """A leased batch, sorted out, its write prepared by the destination."""

    lease: DLQLease
    live: list[DLQMessage]  # to write
    expired: list[DLQMessage]
    held: list[DLQMessage]  # behind a parked change of their key
    prepared: PreparedBatch | None = None
    # What prepare_batch raised: handled as the write's failure, in turn.
    error: Exception | None = None


class QueueReplay:
    """Replays a pipeline's queues, one at a time, into their destinations."""

    def __init__(
        self,
        pipeline_name: str,
        destinations: Mapping[str, Destination],
        health: Mapping[str, DestinationHealth],
        dlq: DLQManager,
        config: DLQConfig,
        *,
        in_flight: InFlightWrites,
        destination_up: Callable[[str], bool],
        stop: threading.Event,
        wake: Callable[[], None],
        clock: Callable[[], float],
        large_batch_size: int = LARGE_BATCH_SIZE,
    ) -> None:
        self.pipeline_name = pipeline_name
        self.destinations = destinations
        self.health = health
        self.dlq = dlq
        self.config = config
        self.retry_policy = RetryPolicy.from_config(config)
        self.in_flight = in_flight
        # Probes a destination and records the result in its health.
        self._destination_up = destination_up
        self._stop = stop
        self._wake = wake
        self._clock = clock
        self._rng = random.Random()
        # Per queue, after a failed batch; read by the worker's scheduler.
        self.backoff: dict[QueueId, QueueBackoff] = {}
        # Messages per lease, by destination: its own batch_size, else DLQ_BATCH_SIZE;
        # pipelined replay and the collector pause from large_batch_size on.
        self.lease_size = {
            destination_id: destination.max_batch_size or config.batch_size
            for destination_id, destination in destinations.items()
        }
        self.pipelined = {d: size >= large_batch_size for d, size in self.lease_size.items()}
        # Replay writes run on a writer thread per destination: batch N is
        # written while this thread reads and decodes batch N+1, and a write
        # still running at the deadline is left there (held, settled when it
        # ends) while this thread goes on with the other destinations.
        self._writers = {
            destination_id: WriterThread(
                f"dlq-recovery-{pipeline_name}-writer"
                + ("" if len(destinations) == 1 else f"-{destination_id}")
            )
            for destination_id in destinations
        }
        self.write_deadline = config.live_write_deadline_ms / 1000
        # Metrics hook, set by the engine; called once per replayed batch.
        self.observer: Observer = NULL_OBSERVER
        self.fence: Fence = NO_FENCE  # the pipeline's lease, asked before each write (fence.py)

    def close(self) -> None:
        """Let the writer threads end (a write still running finishes on its own)."""
        for writer in self._writers.values():
            writer.close()

    def run(self, queue: QueueId, now: float, batches: int = MAX_BATCHES_PER_PASS) -> ReplayResult:
        """Replay up to ``batches`` FIFO batches of ``queue``; fewer when it is empty, a batch
        fails, or stop. (The worker logs the pass: ``compute/recovery/pass_log.py``.)"""
        state = self.backoff.setdefault(queue, QueueBackoff())
        if now < state.retry_at:
            return ReplayResult(queue)
        if self.pipelined[queue.destination_id]:
            with collector_paused():  # why: compute/recovery/gc_pause.py
                counts = self._replay_batches(queue, state, batches)
        else:
            counts = self._replay_batches(queue, state, batches)
        return ReplayResult.of(queue, counts)

    def _replay_batches(self, queue: QueueId, state: QueueBackoff, batches: int) -> ReplayCounts:
        """Up to ``batches`` batches of ``queue``; returns the counts."""
        destination = self.destinations[queue.destination_id]
        pipelined = self.pipelined[queue.destination_id]
        totals = ReplayCounts()
        # The next batch, read and prepared while the previous one was written.
        ahead: _ReadyBatch | None = None
        # Every lease of this pass is given back unless acknowledged, on every
        # path (a failure while handling a failure included): a read-ahead one
        # left when the pass ends (stop) here, the others by their own ``with``.
        with contextlib.ExitStack() as leases:
            for number in range(batches):
                if self._stop.is_set():
                    break
                lease = (
                    ahead.lease
                    if ahead is not None
                    else self.dlq.read_batch(queue, self.lease_size[queue.destination_id])
                )
                with lease:  # releasing it also gives back a read-ahead lease
                    if lease.is_empty:
                        break
                    batch = ahead or self._ready(destination, queue, lease, self._clock())
                    totals.quarantined += lease.quarantined
                    started = time.monotonic()
                    read_ahead = pipelined and number + 1 < batches
                    outcome, counts, ahead = self._replay_batch(
                        destination, queue, batch, read_ahead
                    )
                    if ahead is not None:
                        leases.enter_context(ahead.lease)
                self.observer.replay_batch(queue, time.monotonic() - started, counts.observed())
                totals.add(counts)
                if self.in_flight.is_held(destination.destination_id):
                    break  # this batch's write passed its deadline: settled when it ends
                if outcome is Outcome.TABLE_HELD and counts.held_by is not None:
                    self._held_again(queue, state, counts.held_by)
                    break
                if outcome is not Outcome.RETRY_LATER:
                    state.held_retries = 0
                    self.dlq.holds.clear(queue)  # it went in: the queue drains by itself
                if outcome is Outcome.RETRY_LATER:
                    state.failures += 1
                    delay = self.retry_policy.next_delay(min(state.failures, 64), self._rng)
                    state.retry_at = self._clock() + delay
                    logger.warning(
                        "DLQ replay failed, backing off: queue=%s failures=%d retry_in=%.2fs",
                        queue,
                        state.failures,
                        delay,
                    )
                    break
                state.failures, state.retry_at = 0, 0.0
            else:
                # Batch budget used up with events left: come back at once, after
                # the other queues had their turn (a busy queue cannot starve them).
                self._wake()
        return totals

    def _held_again(self, queue: QueueId, state: QueueBackoff, cause: ClassifiedError) -> None:
        """The queue's table refused the batch: hold it (logged once), retry on its schedule."""
        state.held_retries += 1
        state.retry_at = self._clock() + hold_delay(self.config, state.held_retries)
        self.dlq.holds.hold(
            queue, cause.error_class, cause.code, cause.message, next_retry_at=state.retry_at
        )

    def _ready(
        self, destination: Destination, queue: QueueId, lease: DLQLease, now: float
    ) -> _ReadyBatch:
        """Sort a leased batch out and let the destination prepare its write (CPU only)."""
        if not lease.messages:  # only quarantined payloads
            return _ReadyBatch(lease, [], [], [])
        live, expired, held = self._sort_out(queue, lease.messages, now)
        batch = _ReadyBatch(lease, live, expired, held)
        if live:
            try:
                batch.prepared = destination.prepare_batch(queue.table, [m.record for m in live])
            except Exception as error:  # what the write would have raised: handled as its failure
                batch.error = error
        return batch

    def _replay_batch(
        self,
        destination: Destination,
        queue: QueueId,
        batch: _ReadyBatch,
        read_ahead: bool = False,
    ) -> tuple[Outcome, ReplayCounts, _ReadyBatch | None]:
        """Apply one leased batch; returns (its outcome, counts, the next batch if read ahead).

        Acks what is done; the caller's ``with lease`` gives back the rest.
        The next batch is read ahead only while this one is being written, and
        only returned when this one committed (after a failure it goes back
        first, then this one).
        """
        counts = ReplayCounts()
        lease, messages = batch.lease, batch.lease.messages
        if not messages:  # only quarantined payloads
            self.dlq.ack(lease)
            return Outcome.ACKNOWLEDGED, counts, None
        logger.debug("Processing %d DLQ messages for %s", len(messages), queue)
        if batch.expired:
            counts.expired = len(batch.expired)
            logger.warning(
                "DLQ messages expired, not replayed: ttl=%ds queue=%s count=%d ids=%s",
                self.config.message_ttl,
                queue,
                len(batch.expired),
                ",".join(m.message_id for m in batch.expired),
            )
        ahead: _ReadyBatch | None = None
        error: Exception | None = None
        self.fence.check(f"replay to {destination.name}")  # outside the try: never classified
        try:
            if batch.error is not None:
                raise batch.error
            if batch.prepared is not None:
                if read_ahead:
                    ahead = self._write_reading_ahead(destination, queue, batch.prepared)
                else:
                    write = self._writers[destination.destination_id].submit(
                        destination.write_prepared, batch.prepared
                    )
                    self._wait_for_write(destination, write)
        except Exception as failed:
            error = failed
        decision = decide(
            error,
            classify=partial(self._classify, destination, queue),
            destination_up=partial(self._destination_up, queue.destination_id),
            attempts=lambda: max(self.dlq.record_failed_attempt(queue, messages).values()),
            max_retries=self.config.max_retries,
        )
        if decision.outcome is Outcome.ACKNOWLEDGED:
            # Committed downstream; if parking or the ack fails (a storage error),
            # the caller gives the lease back, the read-ahead one with it: the next
            # pass re-applies the batch (idempotent), nothing is lost.
            if batch.held:
                counts.parked += self._park_held(queue, batch.held, self._clock())
            self.fence.check(f"DLQ ack of {queue}")
            self.dlq.truncates_applied(queue, (m.record for m in batch.live))
            self.dlq.ack(lease)
            counts.replayed = len(batch.live)
            logger.debug(
                "DLQ batch replayed: queue=%s replayed=%d/%d", queue, len(batch.live), len(messages)
            )
            return decision.outcome, counts, ahead
        if isinstance(error, StuckWrite):
            # The lease goes back (the caller's ``with``); the destination stays
            # held until the write ends, then the batch is settled against the head.
            self._hold_stuck(destination, queue, batch, error.future)
            return decision.outcome, counts, None
        if decision.outcome is Outcome.RETRY_LATER:
            # The lease goes back when the caller's ``with lease`` ends.
            counts.failed = len(messages)
            if decision.attempts is not None:
                classified = decision.classified
                assert classified is not None
                logger.warning(
                    "✗ DLQ replay failed: queue=%s error=%s: %s attempts=%d/%d",
                    queue,
                    classified.error_class,
                    classified.message,
                    decision.attempts,
                    self.config.max_retries,
                )
            return decision.outcome, counts, None
        if decision.outcome is Outcome.TABLE_HELD:  # the lease goes back, nothing charged
            counts.failed, counts.held_by = len(messages), decision.classified
            return decision.outcome, counts, None
        # Permanent, or over the retry budget while the destination is up:
        # find the offending messages one by one.
        return self._isolate(destination, queue, lease, counts), counts, None

    def _classify(
        self, destination: Destination, queue: QueueId, error: BaseException
    ) -> ClassifiedError:
        """The failure's kind, recorded in the queue's status."""
        classified = classify_or_transient(destination, error)
        self.dlq.record_error(
            queue, f"replay failed: {classified.error_class}: {classified.message}"
        )
        return classified

    def _write_reading_ahead(
        self, destination: Destination, queue: QueueId, prepared: PreparedBatch
    ) -> _ReadyBatch | None:
        """Write on the writer thread while reading and preparing the next batch here.

        Returns the next batch once the write committed. If the write fails,
        the next batch is released (it comes back at the head, before the
        failed one is handled) and the write's error is raised. A failed
        read-ahead is only logged: the next plain read meets it again.
        """
        write = self._writers[destination.destination_id].submit(
            destination.write_prepared, prepared
        )
        started = time.monotonic()
        ahead: _ReadyBatch | None = None
        try:
            lease = self.dlq.read_batch(queue, self.lease_size[queue.destination_id], ahead=True)
            if not lease.is_empty:
                with contextlib.ExitStack() as unless_ready:
                    unless_ready.enter_context(lease)  # given back if preparing it fails
                    ahead = self._ready(destination, queue, lease, self._clock())
                    unless_ready.pop_all()
        except DLQError as error:
            logger.warning(
                "DLQ read-ahead failed, reading after the batch: queue=%s error=%s", queue, error
            )
        finally:
            # Never leave a write running behind the lease: wait for it, even
            # when the read-ahead raised something else. If the write failed,
            # the read-ahead goes back first (before this batch's failure is
            # handled, which may acknowledge all of this batch).
            with contextlib.ExitStack() as unless_written:
                if ahead is not None:
                    unless_written.enter_context(ahead.lease)
                self._wait_for_write(destination, write, started)
                unless_written.pop_all()
        return ahead

    def _deadline_of(self, destination: Destination) -> float:
        own = destination.live_write_deadline
        return own if own is not None else self.write_deadline

    def _wait_for_write(
        self, destination: Destination, write: Future[Any], started: float | None = None
    ) -> None:
        """The write's outcome; ``StuckWrite`` if it is still running at the deadline."""
        deadline = self._deadline_of(destination)
        left = deadline - (0.0 if started is None else time.monotonic() - started)
        try:
            write.result(timeout=max(0.0, left))
        except FutureTimeout:
            raise StuckWrite(write) from None

    def _hold_stuck(
        self, destination: Destination, queue: QueueId, batch: _ReadyBatch, write: Future[Any]
    ) -> None:
        """A replay write passed its deadline: hold its destination until it ends.

        Nothing more is replayed to that destination meanwhile (the write may
        still commit, and a later batch must not be overtaken by it); the other
        destinations go on. When it ends, the worker (``_settle_in_flight``) acknowledges
        the batch (committed) or leaves it at the head (failed).
        """
        stuck = self.in_flight.hold(destination.destination_id, queue, write)
        self.in_flight.queued(stuck, [m.message_id for m in batch.live])
        deadline = self._deadline_of(destination)
        reason = (
            f"replay write did not finish within {deadline * 1000:.0f} ms "
            "(live_write_deadline_ms); waiting for it before replaying more"
        )
        health = self.health[destination.destination_id]
        health.note_failure(reason, self._clock() - deadline)
        health.mark_unhealthy(reason)
        logger.warning(
            "DLQ replay write passed its deadline, the other destinations go on: pipeline=%s "
            "queue=%s messages=%d",
            self.pipeline_name,
            queue,
            len(batch.live),
        )

    def _sort_out(
        self, queue: QueueId, messages: list[DLQMessage], now: float
    ) -> tuple[list[DLQMessage], list[DLQMessage], list[DLQMessage]]:
        """Split into (to write, expired, held behind a parked change)."""
        ttl = self.config.message_ttl
        parked = self.dlq.parked_keys(queue)
        if not ttl and not parked:  # the usual case: everything goes
            return messages, [], []
        live: list[DLQMessage] = []
        expired: list[DLQMessage] = []
        held: list[DLQMessage] = []
        for m in messages:
            if ttl and m.enqueued_at + ttl < now:
                expired.append(m)
            elif parked and record_key(m.record) in parked:
                held.append(m)
            else:
                live.append(m)
        return live, expired, held

    def _park_held(self, queue: QueueId, held: list[DLQMessage], now: float) -> int:
        """Park ``held`` behind their keys' parked changes; returns how many were parked
        (a change no message can store is quarantined instead, and counted there)."""
        return self.dlq.park(
            queue, [with_failure(m, held_behind_failure(now, m.failure)) for m in held]
        )

    def _isolate(
        self, destination: Destination, queue: QueueId, lease: DLQLease, counts: ReplayCounts
    ) -> Outcome:
        """Write the batch one message at a time: park those that are poison.

        Stops at a message to be tried again later (``RETRY_LATER``, or
        ``TABLE_HELD``: it and the rest go back), else the poison was sorted
        out (``POISON``).
        """
        done = 0
        outcome = Outcome.POISON
        parking = self.dlq.parking_batch(queue)  # parked in one write, before the ack
        for message in lease.messages:
            if self._stop.is_set():
                break
            now = self._clock()
            if parking.holds(message.record):
                parking.add(with_failure(message, held_behind_failure(now, message.failure)))
                done += 1
                continue
            try:
                destination.write_batch(queue.table, [message.record])
                self.dlq.truncates_applied(queue, [message.record])
            except Exception as error:
                attempts = partial(self.dlq.attempts_of, queue, message)
                decision = decide(
                    error,
                    classify=partial(classify_or_transient, destination),
                    destination_up=lambda: True,  # not probed again: it is being written to
                    attempts=attempts,  # as counted so far: isolating charges nothing
                    max_retries=self.config.max_retries,
                )
                if decision.outcome is Outcome.POISON:
                    assert decision.classified is not None
                    failed = failed_again(message.failure, decision.classified, now)
                    parking.add(with_failure(message, failed, attempts()))
                    done += 1
                    continue
                # RETRY_LATER, or TABLE_HELD (the table broke, not this change:
                # isolating the rest would fail each the same way): stop here.
                counts.failed += len(lease.messages) - done
                outcome = decision.outcome
                if outcome is Outcome.TABLE_HELD:
                    counts.held_by = decision.classified
                break
            counts.replayed += 1
            done += 1
        counts.parked += self.dlq.park(queue, parking.messages)
        if done:  # the rest goes back when the caller's ``with lease`` ends
            self.dlq.ack(lease, done)
        return outcome
