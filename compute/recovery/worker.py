"""The recovery worker: one thread per pipeline that replays DLQ queues once destinations heal.

It probes each destination that has queued events (all due probes side by
side, each bounded by the probe's timeout, so a hung destination stalls
neither the others nor ``stop()``). A destination that just failed is probed
soon, then less and less often (``probe_delay``): each destination keeps its
own schedule, reset when it recovers. The queues of the healthy destinations
are replayed in the order of ``compute/recovery/schedule.py`` (higher
priority first, equals round-robin by batch), each in FIFO order
(``compute/recovery/replay.py``), acknowledging a batch only after the
destination committed it; how a failed batch ends (retried later, backed
off, parked as poison, held) is decided in ``compute/recovery/outcome.py``.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import TypeVar

from compute.delivery.health import DestinationHealth, HealthProbe
from compute.delivery.in_flight import InFlightWrites
from compute.delivery.observer import Observer
from compute.dlq.manager import DLQManager
from compute.errors import DLQError
from compute.queue_id import QueueId
from compute.recovery.outcome import ReplayCounts, ReplayResult
from compute.recovery.pass_log import log_pass
from compute.recovery.replay import LARGE_BATCH_SIZE, MAX_BATCHES_PER_PASS, QueueReplay
from compute.recovery.schedule import ReplaySchedule
from compute.runtime.fence import Fenced
from compute.runtime.supervisor import Supervisor
from config.dlq_config import DLQConfig
from config.pipelines import table_priority
from destinations.base import Destination

logger = logging.getLogger(__name__)

_T = TypeVar("_T")

# The wait between probes of a failed destination is this share of how long it
# has been down: replay starts within a fifth of the outage after its end.
PROBE_DELAY_SHARE = 0.2


def probe_delay(config: DLQConfig, down_for: float) -> float:
    """Seconds until the next probe of a destination down for ``down_for`` seconds.

    A fifth of the outage so far, at least ``DLQ_CHECK_INTERVAL_MIN`` and at
    most ``DLQ_CHECK_INTERVAL``: with the defaults (1 s, 30 s) probes come
    every second for the first 5 s, then 1.2x further apart each time, every
    30 s after 150 s down. A destination back after an outage of T seconds is
    found within max(1, T/5) seconds, at most 30.
    """
    longest = config.check_interval
    first = min(config.check_interval_min, longest)
    return min(longest, max(first, PROBE_DELAY_SHARE * max(0.0, down_for)))


@dataclass
class WorkerStats:
    replayed: int = 0
    failed: int = 0
    parked: int = 0
    expired: int = 0
    last_run_at: float | None = None
    last_replay_at: float | None = None


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
        probe_timeout: float = 5.0,
        clock: Callable[[], float] = time.time,
        on_drained: Callable[[], None] | None = None,
        large_batch_size: int = LARGE_BATCH_SIZE,
        in_flight: InFlightWrites | None = None,
        priority: Mapping[str, int] | None = None,
    ) -> None:
        self.pipeline_name = pipeline_name
        # Replay priority per source table (the pipeline's ``priority``): higher first.
        self.priority: Mapping[str, int] = dict(priority or {})
        self.source_id = str(source_id)
        self.destinations = {d.destination_id: d for d in destinations}
        self.health = health
        self.dlq = dlq
        self.config = config
        self.probes = {d.destination_id: HealthProbe(d, probe_timeout) for d in destinations}
        self._clock = clock
        self._on_drained = on_drained
        # Live writes that passed their deadline: their destination is not
        # replayed to until they end; then they are settled here.
        self.in_flight = in_flight or InFlightWrites(clock)
        self._next_check: dict[str, float] = {}
        self._stop = threading.Event()
        self._wake = threading.Event()
        # Held by passes and operator actions; also guards the per-queue and
        # per-destination schedules (replay.backoff, _next_check), which
        # replay_now changes from the admin thread.
        self._run_lock = threading.Lock()
        # Restarts the loop if anything unexpected escapes it.
        self.supervisor = Supervisor(f"dlq-recovery-{pipeline_name}", self._loop, self._stop)
        self.stats = WorkerStats()
        self.replay = QueueReplay(
            pipeline_name,
            self.destinations,
            health,
            dlq,
            config,
            in_flight=self.in_flight,
            destination_up=self._check,
            stop=self._stop,
            wake=self._wake.set,
            clock=clock,
            large_batch_size=large_batch_size,
        )

    @property
    def observer(self) -> Observer:
        """Metrics hook, set by the engine; called once per replayed batch."""
        return self.replay.observer

    @observer.setter
    def observer(self, observer: Observer) -> None:
        self.replay.observer = observer

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
        self.replay.close()
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
            except Fenced as error:  # the engine stops this pipeline: nothing to log twice
                logger.info("DLQ recovery pass refused: %s", error)
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
                s.retry_at for s in self.replay.backoff.values() if s.retry_at > now
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
        if not self.replay.fence.holds():
            return []  # the lease is gone: the engine stops this pipeline
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
            due = {
                destination_id: queues
                for destination_id, queues in by_destination.items()
                if now >= self._next_check.get(destination_id, 0.0)
                # a live write past its deadline may still commit: not yet
                and not self.in_flight.is_held(destination_id)
            }
            up = self._check_all(due, now)
            ready: list[QueueId] = []
            for destination_id, queues in due.items():
                if not up[destination_id]:
                    since = self.health[destination_id].snapshot().since
                    delay = probe_delay(self.config, now - since)
                    self._next_check[destination_id] = now + delay
                    continue
                self._next_check.pop(destination_id, None)  # recovered: the schedule resets
                ready.extend(queues)
            results = self._replay_pass(ready, {d for d, ok in up.items() if ok}, now)
            if any(r.replayed for r in results) and self._on_drained is not None:
                self._on_drained()
            return results

    def priority_of(self, queue: QueueId) -> int:
        """The replay priority of ``queue``'s table (the pipeline's ``priority``, default 0)."""
        return table_priority(self.priority, queue.table)

    def _replay_pass(self, ready: list[QueueId], up: set[str], now: float) -> list[ReplayResult]:
        """Replay the ``ready`` queues in the schedule's order (``compute/recovery/schedule.py``);
        a queue of an ``up`` destination that fills meanwhile is let in at the next turn.

        Logs one line per queue for the whole pass; returns what each queue's turns did.
        """
        schedule = ReplaySchedule(
            ready,
            self.priority_of,
            MAX_BATCHES_PER_PASS,
            pipelined=lambda queue: self.replay.pipelined[queue.destination_id],
        )
        totals: dict[QueueId, ReplayCounts] = {}
        elapsed: dict[QueueId, float] = {}
        while not self._stop.is_set():
            self._let_in(schedule, up)
            turn = schedule.next_turn()
            if turn is None:
                break
            queue, batches = turn
            if self.in_flight.is_held(queue.destination_id):
                schedule.leave(queue)  # a replay write passed its deadline: not until it ends
                continue
            started = time.monotonic()
            result = self._guarded(queue, "replay", self.replay_queue, queue, now, batches)
            elapsed[queue] = elapsed.get(queue, 0.0) + time.monotonic() - started
            step = _counts(result or ReplayResult(queue))
            totals.setdefault(queue, ReplayCounts()).add(step)
            moved = step.replayed + step.parked + step.expired + step.quarantined
            more = bool(
                result is not None
                and moved
                and not step.failed
                and self._guarded(queue, "count", self.dlq.has_messages, queue)
            )
            schedule.turn_ended(queue, batches, more=more)
            if more and schedule.used_budget(queue):
                self._wake.set()  # events left after its budget: the next pass starts at once
        for queue, counts in totals.items():
            log_pass(self.pipeline_name, queue, counts, elapsed[queue], self.dlq)
        return [ReplayResult.of(queue, counts) for queue, counts in totals.items()]

    def _let_in(self, schedule: ReplaySchedule, up: set[str]) -> None:
        """Add to the pass the queues of healthy destinations that filled since it began."""
        for queue in self.queues():
            if (
                queue.destination_id in up
                and not schedule.seen(queue)
                and self._guarded(queue, "count", self.dlq.has_messages, queue)
            ):
                schedule.add(queue)

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
        except Fenced:
            raise  # not a failure of the queue: this engine may no longer write it
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
            # All of them: higher priority first, as a pass would.
            targets = [queue] if queue is not None else self._by_priority(self.queues())
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
                self.replay.backoff.pop(target, None)
                results.append(self._replay_until_done(target))
            return results

    def _by_priority(self, queues: list[QueueId]) -> list[QueueId]:
        return sorted(queues, key=self.priority_of, reverse=True)

    def _replay_until_done(self, queue: QueueId) -> ReplayResult:
        """Replay ``queue`` until it is empty or a batch fails (operator replay); logs once."""
        total = ReplayCounts()
        started = time.monotonic()
        try:
            while not self._stop.is_set():
                step = _counts(self.replay_queue(queue, self._clock()))
                total.add(step)
                moved = step.replayed + step.parked + step.expired + step.quarantined
                if step.failed or not moved or not self.dlq.has_messages(queue):
                    break
        finally:
            log_pass(self.pipeline_name, queue, total, time.monotonic() - started, self.dlq)
        return ReplayResult.of(queue, total)

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
            self.dlq.truncates_applied(queue, (m.record for m in lease.messages[:done]))
            self.dlq.ack(lease, done)
        else:
            self.dlq.release(lease)
        return done

    def _check_all(self, due: Mapping[str, Sequence[QueueId]], now: float) -> dict[str, bool]:
        """Probe the ``due`` destinations side by side; record each result at ``now``."""
        pending = {destination_id: self.probes[destination_id].start() for destination_id in due}
        up = {}
        for destination_id, check in pending.items():
            ok, reason = check.result(self._stop)
            self.health[destination_id].record_check(
                ok, now, reason, pipeline=self.pipeline_name, queues=len(due[destination_id])
            )
            up[destination_id] = ok
        return up

    def _check(self, destination_id: str, now: float | None = None) -> bool:
        """Probe the destination; its health records the result at ``now`` (else when
        the probe ended)."""
        ok, reason = self.probes[destination_id].check(self._stop)
        when = self._clock() if now is None else now
        self.health[destination_id].record_check(ok, when, reason, pipeline=self.pipeline_name)
        if ok:
            self._next_check.pop(destination_id, None)  # recovered: the schedule resets
        return ok

    # ----------------------------------------------------------------- replay

    def replay_queue(
        self, queue: QueueId, now: float, batches: int = MAX_BATCHES_PER_PASS
    ) -> ReplayResult:
        """Replay up to ``batches`` FIFO batches of ``queue``: fewer when it is empty, a batch
        fails, or stop."""
        result = self.replay.run(queue, now, batches)
        self.stats.replayed += result.replayed
        self.stats.failed += result.failed
        self.stats.parked += result.parked
        self.stats.expired += result.expired
        if result.replayed:
            self.stats.last_replay_at = self._clock()
        return result


def _counts(result: ReplayResult) -> ReplayCounts:
    return ReplayCounts(
        result.replayed, result.failed, result.parked, result.expired, result.quarantined
    )
