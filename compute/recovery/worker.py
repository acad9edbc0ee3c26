"""The recovery worker: one thread per pipeline that replays DLQ queues once destinations heal.

Every ``DLQ_CHECK_INTERVAL`` seconds it probes each destination that has
queued events (bounded by the probe's timeout, so a hung destination stalls
neither the others nor ``stop()``). When a destination is healthy it replays
each of its queues in FIFO order, batch by batch, acknowledging a batch only
after the destination committed it. A batch that fails again backs off per
queue; attempts are counted only while the destination passes its health
check and the failure is not a lost session (``ClassifiedError.connection_lost``:
a reset, a killed backend, a server restarting under the write), so an
outage never turns events into poison. A message over its
retry budget, or refused for good, is parked, and later changes to its key
are parked behind it.
"""

from __future__ import annotations

import contextlib
import logging
import random
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from concurrent.futures import Future
from concurrent.futures import TimeoutError as FutureTimeout
from dataclasses import dataclass, field
from typing import Any, TypeVar

from compute.dlq.manager import DLQLease, DLQManager, record_key
from compute.codec.failure_context import FailureContext
from compute.codec.message import DLQMessage
from compute.errors import DLQError
from compute.delivery.event_handler import classify_or_transient, held_behind_failure
from compute.recovery.gc_pause import collector_paused
from compute.delivery.health import DestinationHealth, HealthProbe
from compute.delivery.in_flight import InFlightWrites
from compute.observability.observer import NULL_OBSERVER, Observer
from compute.queue_id import QueueId
from compute.runtime.retry_policy import RetryPolicy
from compute.runtime.supervisor import Supervisor
from compute.runtime.writer_thread import WriterThread
from config.dlq_config import DLQConfig
from destinations.base import Destination, PreparedBatch
from destinations.errors import FailureKind

logger = logging.getLogger(__name__)

_T = TypeVar("_T")

# Replay batches at least this large (DLQ_BATCH_SIZE) are pipelined: batch
# N+1 is read, decoded and prepared while batch N is written on the writer
# thread, and the cyclic garbage collector is paused for the pass
# (compute/recovery/gc_pause.py). Both pay off when decoding a batch takes about as
# long as writing it. Smaller batches are written inline, as before: their
# round trips dominate, and the extra thread's memory is not worth it (the
# 10-minute soak, batches of 100, ended 8.5-10.3% above its warm-up RSS
# pipelined, against 2.2% inline, on the same machine).
LARGE_BATCH_SIZE = 1000


@dataclass(frozen=True, slots=True)
class ReplayResult:
    """What one replay pass did to one queue."""

    queue: QueueId
    replayed: int = 0
    failed: int = 0
    parked: int = 0
    expired: int = 0
    quarantined: int = 0


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


@dataclass
class _QueueReplayState:
    failures: int = 0  # consecutive failed batches, for the backoff
    retry_at: float = 0.0


@dataclass
class WorkerStats:
    replayed: int = 0
    failed: int = 0
    parked: int = 0
    expired: int = 0
    last_run_at: float | None = None
    last_replay_at: float | None = None
    last_results: list[ReplayResult] = field(default_factory=list)


class DLQRecoveryWorker:
    """Replays one pipeline's DLQ queues into its destinations when they are healthy."""

    def __init__(
        self,
        pipeline_name: str,
        source_id: str,
        destinations: Sequence[Destination],
        health: Mapping[str, DestinationHealth],
        dlq: DLQManager,
        config: DLQConfig,
        *,
        retry_policy: RetryPolicy | None = None,
        probe_timeout: float = 5.0,
        clock: Callable[[], float] = time.time,
        on_drained: Callable[[], None] | None = None,
        max_batches_per_pass: int = 50,
        large_batch_size: int = LARGE_BATCH_SIZE,
        in_flight: InFlightWrites | None = None,
    ) -> None:
        self.pipeline_name = pipeline_name
        self.source_id = str(source_id)
        self.destinations = {d.destination_id: d for d in destinations}
        self.health = health
        self.dlq = dlq
        self.config = config
        self.retry_policy = retry_policy or RetryPolicy.from_config(config)
        self.probes = {d.destination_id: HealthProbe(d, probe_timeout) for d in destinations}
        self._clock = clock
        self._on_drained = on_drained
        # Live writes that passed their deadline: their destination is not
        # replayed to until they end; then they are settled here.
        self.in_flight = in_flight or InFlightWrites(clock)
        self._next_check: dict[str, float] = {}
        self._queues: dict[QueueId, _QueueReplayState] = {}
        self._stop = threading.Event()
        self._wake = threading.Event()
        # Held by passes and operator actions; also guards the per-queue and
        # per-destination schedules (_queues, _next_check), which replay_now
        # changes from the admin thread.
        self._run_lock = threading.Lock()
        # Restarts the loop if anything unexpected escapes it.
        self.supervisor = Supervisor(f"dlq-recovery-{pipeline_name}", self._loop, self._stop)
        self._rng = random.Random()
        self.stats = WorkerStats()
        self.max_batches_per_pass = max_batches_per_pass
        # Pipelined replay and the collector pause from this batch size on.
        self.pipelined = config.batch_size >= large_batch_size
        # Replay writes run on a writer thread per destination: batch N is
        # written while this thread reads and decodes batch N+1, and a write
        # still running at the deadline is left there (held, settled when it
        # ends) while this thread goes on with the other destinations.
        self._writers = {
            d.destination_id: WriterThread(
                f"dlq-recovery-{pipeline_name}-writer"
                + ("" if len(self.destinations) == 1 else f"-{d.destination_id}")
            )
            for d in destinations
        }
        self.write_deadline = config.live_write_deadline_ms / 1000
        # Metrics hook, set by the engine; called once per replayed batch.
        self.observer: Observer = NULL_OBSERVER

    # ------------------------------------------------------------ lifecycle

    def start(self) -> None:
        if self.supervisor.is_alive():
            return
        self.supervisor.start()
        logger.info("DLQ recovery worker started: pipeline=%s", self.pipeline_name)

    def stop(self, timeout: float = 1.0) -> bool:
        """Stop the thread; returns True if it ended within ``timeout`` seconds.

        A batch being replayed is either committed and acknowledged or left
        unacknowledged (it comes back at the head): nothing is lost.
        """
        self._stop.set()
        self._wake.set()
        for writer in self._writers.values():
            writer.close()
        stopped = self.supervisor.join(timeout)
        if stopped:
            logger.info("DLQ recovery worker stopped: pipeline=%s", self.pipeline_name)
        return stopped

    def exclusive(self) -> threading.Lock:
        """Hold this (as a context manager) to keep passes off the queues: while an
        operator action edits a queue, no replay batch is leased from it."""
        return self._run_lock

    def wake(self) -> None:
        """Run a pass now instead of at the next interval (new events were queued)."""
        self._wake.set()

    def _loop(self) -> None:
        while not self._stop.is_set():
            try:
                self.run_once(self._clock())
            except Exception:  # the worker must outlive any single failure
                logger.exception("DLQ recovery pass failed: pipeline=%s", self.pipeline_name)
            self._wake.wait(self._seconds_to_next_due())
            self._wake.clear()

    def _seconds_to_next_due(self) -> float:
        now = self._clock()
        # Under the run lock: an operator's replay_now (another thread) adds
        # and removes entries, and iterating a dict while it changes size raises.
        with self._run_lock:
            due = list(self._next_check.values()) + [
                s.retry_at for s in self._queues.values() if s.retry_at > now
            ]
        upcoming = min((t for t in due if t > now), default=now + self.config.check_interval)
        return max(0.05, min(self.config.check_interval, upcoming - now))

    # ----------------------------------------------------------------- passes

    def queues(self) -> list[QueueId]:
        """This pipeline's queues (main lanes) that are on disk or known."""
        return [
            q
            for q in self.dlq.list_queues()
            if q.source_id == self.source_id and q.destination_id in self.destinations
        ]

    def run_once(self, now: float | None = None) -> list[ReplayResult]:
        """One pass: probe destinations with queued events, replay the healthy ones."""
        now = self._clock() if now is None else now
        with self._run_lock:
            self.stats.last_run_at = now
            self._settle_in_flight()
            by_destination: dict[str, list[QueueId]] = {}
            for queue in self.queues():
                if self._guarded(queue, "count", self.dlq.has_messages, queue):
                    by_destination.setdefault(queue.destination_id, []).append(queue)
            for destination_id, health in self.health.items():
                if health.circuit_open and destination_id not in by_destination:
                    by_destination[
                        destination_id
                    ] = []  # nothing queued, but the circuit must close
            results: list[ReplayResult] = []
            for destination_id, queues in by_destination.items():
                if self._stop.is_set():
                    break
                if now < self._next_check.get(destination_id, 0.0):
                    continue
                if self.in_flight.is_held(destination_id):
                    continue  # a live write past its deadline may still commit
                if not self._check(destination_id, now):
                    self._next_check[destination_id] = now + self.config.check_interval
                    continue
                self._next_check.pop(destination_id, None)
                for queue in queues:
                    if self._stop.is_set() or self.in_flight.is_held(destination_id):
                        break  # a replay write passed its deadline: the next destination
                    result = self._guarded(queue, "replay", self.replay_queue, queue, now)
                    results.append(result or ReplayResult(queue))
            self.stats.last_results = results
            if any(r.replayed for r in results) and self._on_drained is not None:
                self._on_drained()
            return results

    def _guarded(
        self, queue: QueueId, action: str, call: Callable[..., _T], *args: object
    ) -> _T | None:
        """``call(*args)``; a failure of one queue is logged and must not stop the others.

        (A damaged queue is set aside by the store; any other storage error,
        e.g. a full disk while a failed replay is being recorded, is retried
        on the next pass.) The queue's status shows the real cause: its
        leases were given back, so the next pass does not fail on them.
        """
        try:
            return call(*args)
        except Exception as error:
            known = isinstance(error, DLQError)
            cause = str(error) if known else f"{type(error).__name__}: {error}"
            logger.error(
                "DLQ %s failed for one queue, the others go on: pipeline=%s queue=%s error=%s",
                action,
                self.pipeline_name,
                queue,
                cause,
                exc_info=not known,  # an unexpected error: its traceback goes to the log
            )
            self.dlq.record_error(queue, f"{action} failed: {cause}")
            return None

    def replay_now(self, queue: QueueId | None = None) -> list[ReplayResult]:
        """Operator trigger: probe and replay now (one queue, or all), ignoring backoff."""
        now = self._clock()
        with self._run_lock:
            self._settle_in_flight()
            targets = [queue] if queue is not None else self.queues()
            results = []
            for target in targets:
                if target.destination_id not in self.destinations:
                    raise ValueError(
                        f"queue {target} does not belong to pipeline {self.pipeline_name}"
                    )
                if self.in_flight.is_held(target.destination_id):
                    results.append(ReplayResult(target))
                    continue
                if not self._check(target.destination_id, now):
                    results.append(ReplayResult(target))
                    continue
                self._queues.pop(target, None)
                results.append(self._replay_until_done(target))
            return results

    def _replay_until_done(self, queue: QueueId) -> ReplayResult:
        """Replay ``queue`` until it is empty or a batch fails (operator replay)."""
        total = ReplayResult(queue)
        while not self._stop.is_set():
            step = self.replay_queue(queue, self._clock())
            total = ReplayResult(
                queue,
                total.replayed + step.replayed,
                total.failed + step.failed,
                total.parked + step.parked,
                total.expired + step.expired,
                total.quarantined + step.quarantined,
            )
            moved = step.replayed + step.parked + step.expired + step.quarantined
            if step.failed or not moved or not self.dlq.has_messages(queue):
                break
        return total

    def _settle_in_flight(self) -> None:
        """Settle the live writes that passed their deadline and have ended since.

        Committed: the queued copies of its events (the head of the queue)
        are acknowledged, so they are not applied twice. Failed: they stay and
        are replayed in order like any queued event. Either way the
        destination is released for replay.
        """
        for stuck in self.in_flight.take_ended():
            try:
                if stuck.committed and stuck.message_ids:
                    settled = self._acknowledge_head(stuck.queue, set(stuck.message_ids))
                    logger.info(
                        "live write that passed its deadline committed: its %d queued messages "
                        "acknowledged: pipeline=%s queue=%s",
                        settled,
                        self.pipeline_name,
                        stuck.queue,
                    )
                elif stuck.message_ids:
                    logger.info(
                        "live write that passed its deadline failed, its %d queued messages "
                        "will be replayed: pipeline=%s queue=%s error=%s",
                        len(stuck.message_ids),
                        self.pipeline_name,
                        stuck.queue,
                        stuck.error,
                    )
            except DLQError as error:
                # Not acknowledged: the events are replayed (applied twice, harmless).
                logger.error(
                    "settling a live write past its deadline failed, its events will be "
                    "replayed: pipeline=%s queue=%s error=%s",
                    self.pipeline_name,
                    stuck.queue,
                    error,
                )
            finally:
                self.in_flight.release(stuck)

    def _acknowledge_head(self, queue: QueueId, ids: set[str]) -> int:
        """Acknowledge the leading messages of ``queue`` whose ids are in ``ids``."""
        lease = self.dlq.read_batch(queue, len(ids))
        done = 0
        for message in lease.messages:
            if message.message_id not in ids:
                break
            done += 1
        if done:
            self.dlq.ack(lease, done)
        else:
            self.dlq.release(lease)
        return done

    def _check(self, destination_id: str, now: float) -> bool:
        ok, reason = self.probes[destination_id].check(self._stop)
        self.health[destination_id].record_check(ok, now, reason)
        return ok

    # ----------------------------------------------------------------- replay

    def replay_queue(self, queue: QueueId, now: float) -> ReplayResult:
        """Replay ``queue`` in FIFO batches until it is empty, a batch fails, or stop."""
        state = self._queues.setdefault(queue, _QueueReplayState())
        if now < state.retry_at:
            return ReplayResult(queue)
        if self.pipelined:
            with collector_paused():  # why: compute/recovery/gc_pause.py
                totals = self._replay_batches(queue, state)
        else:
            totals = self._replay_batches(queue, state)
        result = ReplayResult(queue, **totals)
        self.stats.replayed += result.replayed
        self.stats.failed += result.failed
        self.stats.parked += result.parked
        self.stats.expired += result.expired
        if result.replayed:
            self.stats.last_replay_at = self._clock()
        return result

    def _replay_batches(self, queue: QueueId, state: _QueueReplayState) -> dict[str, int]:
        """The batches of one pass over ``queue``; returns the counts."""
        destination = self.destinations[queue.destination_id]
        totals = {"replayed": 0, "failed": 0, "parked": 0, "expired": 0, "quarantined": 0}
        # The next batch, read and prepared while the previous one was written.
        ahead: _ReadyBatch | None = None
        # Every lease of this pass is given back unless acknowledged, on every
        # path (a failure while handling a failure included): a read-ahead one
        # left when the pass ends (stop) here, the others by their own ``with``.
        with contextlib.ExitStack() as leases:
            for number in range(self.max_batches_per_pass):
                if self._stop.is_set():
                    break
                lease = (
                    ahead.lease
                    if ahead is not None
                    else self.dlq.read_batch(queue, self.config.batch_size)
                )
                with lease:  # releasing it also gives back a read-ahead lease
                    if lease.is_empty:
                        break
                    batch = ahead or self._ready(destination, queue, lease, self._clock())
                    totals["quarantined"] += lease.quarantined
                    started = time.monotonic()
                    read_ahead = self.pipelined and number + 1 < self.max_batches_per_pass
                    outcome, ahead = self._replay_batch(destination, queue, batch, read_ahead)
                    if ahead is not None:
                        leases.enter_context(ahead.lease)
                self.observer.replay_batch(queue, time.monotonic() - started, outcome)
                for name, value in outcome.items():
                    totals[name] += value
                if self.in_flight.is_held(destination.destination_id):
                    break  # this batch's write passed its deadline: settled when it ends
                if outcome["failed"]:
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
                self._wake.set()
        return totals

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
    ) -> tuple[dict[str, int], _ReadyBatch | None]:
        """Apply one leased batch; returns (counts, the next batch if read ahead).

        Acks what is done; the caller's ``with lease`` gives back the rest.
        The next batch is read ahead only while this one is being written, and
        only returned when this one committed (after a failure it goes back
        first, then this one).
        """
        counts = {"replayed": 0, "failed": 0, "parked": 0, "expired": 0}
        lease, messages = batch.lease, batch.lease.messages
        if not messages:  # only quarantined payloads
            self.dlq.ack(lease)
            return counts, None
        logger.info("Processing %d DLQ messages for %s", len(messages), queue)
        if batch.expired:
            counts["expired"] = len(batch.expired)
            logger.warning(
                "DLQ messages expired, not replayed: ttl=%ds queue=%s count=%d ids=%s",
                self.config.message_ttl,
                queue,
                len(batch.expired),
                ",".join(m.message_id for m in batch.expired),
            )
        ahead: _ReadyBatch | None = None
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
        except _StuckWrite as stuck:
            # The lease goes back (the caller's ``with``); the destination stays
            # held until the write ends, then the batch is settled against the head.
            self._hold_stuck(destination, queue, batch, stuck.future)
            return counts, None
        except Exception as error:
            return self._after_failure(destination, queue, lease, error, counts), None
        # Committed downstream; if parking or the ack fails (a storage error),
        # the caller gives the lease back, the read-ahead one with it: the next
        # pass re-applies the batch (idempotent), nothing is lost.
        if batch.held:
            counts["parked"] += self._park_held(queue, batch.held, self._clock())
        self.dlq.ack(lease)
        counts["replayed"] = len(batch.live)
        logger.info("✓ Successfully replayed %d/%d DLQ messages", len(batch.live), len(messages))
        return counts, ahead

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
            lease = self.dlq.read_batch(queue, self.config.batch_size, ahead=True)
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
        """The write's outcome; ``_StuckWrite`` if it is still running at the deadline."""
        deadline = self._deadline_of(destination)
        left = deadline - (0.0 if started is None else time.monotonic() - started)
        try:
            write.result(timeout=max(0.0, left))
        except FutureTimeout:
            raise _StuckWrite(write) from None

    def _hold_stuck(
        self, destination: Destination, queue: QueueId, batch: _ReadyBatch, write: Future[Any]
    ) -> None:
        """A replay write passed its deadline: hold its destination until it ends.

        Nothing more is replayed to that destination meanwhile (the write may
        still commit, and a later batch must not be overtaken by it); the other
        destinations go on. When it ends, ``_settle_in_flight`` acknowledges
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
        context = held_behind_failure(now)
        return self.dlq.park(queue, [_with_failure(m, context) for m in held])

    def _after_failure(
        self,
        destination: Destination,
        queue: QueueId,
        lease: DLQLease,
        error: Exception,
        counts: dict[str, int],
    ) -> dict[str, int]:
        classified = classify_or_transient(destination, error)
        self.dlq.record_error(
            queue, f"replay failed: {classified.error_class}: {classified.message}"
        )
        if classified.kind is FailureKind.TRANSIENT:
            healthy, reason = self.probes[queue.destination_id].check(self._stop)
            self.health[queue.destination_id].record_check(healthy, self._clock(), reason)
            if not healthy or classified.connection_lost:
                # An outage or a lost session (killed, reset, server restarted
                # under the write), not poison: nothing is charged to the messages.
                # The lease goes back when the caller's ``with lease`` ends.
                counts["failed"] = len(lease.messages)
                return counts
            attempts = self.dlq.record_failed_attempt(queue, lease.messages)
            if max(attempts.values()) <= self.config.max_retries:
                counts["failed"] = len(lease.messages)
                logger.warning(
                    "✗ DLQ replay failed: queue=%s error=%s: %s attempts=%d/%d",
                    queue,
                    classified.error_class,
                    classified.message,
                    max(attempts.values()),
                    self.config.max_retries,
                )
                return counts
        # Permanent, or over the retry budget while the destination is up:
        # find the offending messages one by one.
        return self._isolate(destination, queue, lease, counts)

    def _isolate(
        self, destination: Destination, queue: QueueId, lease: DLQLease, counts: dict[str, int]
    ) -> dict[str, int]:
        done = 0
        for message in lease.messages:
            if self._stop.is_set():
                break
            now = self._clock()
            if self.dlq.is_parked(queue, message.record):
                counts["parked"] += self._park_held(queue, [message], now)
                done += 1
                continue
            try:
                destination.write_batch(queue.table, [message.record])
            except Exception as error:
                classified = classify_or_transient(destination, error)
                attempts = self.dlq.attempts_of(queue, message)
                over_budget = attempts > self.config.max_retries and not classified.connection_lost
                if classified.kind is FailureKind.PERMANENT or over_budget:
                    failed = message.failure.failed_again(classified, now)
                    counts["parked"] += self.dlq.park(
                        queue, [_with_failure(message, failed, attempts)]
                    )
                    done += 1
                    continue
                counts["failed"] += len(lease.messages) - done
                break
            counts["replayed"] += 1
            done += 1
        if done:  # the rest goes back when the caller's ``with lease`` ends
            self.dlq.ack(lease, done)
        return counts


class _StuckWrite(Exception):
    """A replay write still running at its deadline (``future`` is its outcome)."""

    def __init__(self, future: Future[Any]) -> None:
        super().__init__("replay write past its deadline")
        self.future = future


def _with_failure(
    message: DLQMessage, failure: FailureContext, attempts: int | None = None
) -> DLQMessage:
    if attempts is not None:
        failure = failure._replace(attempts=max(attempts, failure.attempts))
    return message._replace(failure=failure)
