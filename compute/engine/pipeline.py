"""A pipeline: one source, its destinations, the event handler and the recovery worker.

Running, a pipeline has a reader thread (the source) and one delivery lane
per destination (``compute/delivery/lane.py``), so a slow or hung
destination never holds the others: each lane takes the batches in source
order, and a batch's source position is acknowledged once every lane has
delivered it (written, queued or parked), in source order. The reader stays
at most ``DLQ_READ_AHEAD_EVENTS`` events ahead of the slowest lane.
"""

from __future__ import annotations

import logging
import threading
import time
from collections import deque
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from enum import StrEnum
from typing import Any

from compute.delivery.event_handler import EventHandler
from compute.delivery.health import DestinationHealth
from compute.delivery.in_flight import InFlightWrites
from compute.delivery.lane import DeliveryLane, LaneBatch, lane_batch
from compute.dlq.manager import DLQManager
from compute.engine.event_rate import EventRate
from compute.engine.progress import ProgressReporter
from compute.errors import DLQFullError
from compute.recovery.worker import DLQRecoveryWorker
from compute.runtime.fence import NO_FENCE, Fence, Fenced
from compute.runtime.retry_policy import RetryPolicy
from compute.runtime.supervisor import Supervisor
from compute.sources.base import Source, SourceBatch
from config.dlq_config import DLQConfig
from destinations.base import Destination

logger = logging.getLogger(__name__)

# How long the pipeline waits before retrying a batch the DLQ refused; the
# recovery worker wakes it sooner when it frees room.
BACKPRESSURE_WAIT = 1.0
IDLE_POLL = 0.2


class PipelineState(StrEnum):
    CREATED = "created"
    RUNNING = "running"
    BACKPRESSURE = "backpressure"
    FINISHED = "finished"  # a finite source was fully delivered
    STOPPED = "stopped"
    FAILED = "failed"
    # Its lease was lost (pipelines shared between engines): it stopped writing;
    # the engine stops it and another engine carries on.
    FENCED = "fenced"


@dataclass
class PipelineStats:
    batches: int = 0
    events: int = 0
    backpressure_since: float | None = None
    backpressure_reason: str | None = None
    last_error: str | None = None
    rejected_events: int = 0
    skipped_events: int = 0
    extra: dict[str, Any] = field(default_factory=dict)


class Pipeline:
    """Moves change events from a source to destinations, through the DLQ when needed.

    A batch's resume token is acknowledged to the source only after every
    (destination, table) group of it was committed by the destination or
    accepted by the DLQ (or parked). When the DLQ is full, the pipeline
    stops reading the source (backpressure) and retries the groups left.
    """

    def __init__(
        self,
        name: str,
        source: Source,
        destinations: Sequence[Destination],
        dlq: DLQManager,
        config: DLQConfig,
        *,
        retry_policy: RetryPolicy | None = None,
        batch_size: int = 500,
        probe_timeout: float = 5.0,
        clock: Callable[[], float] = time.time,
        priority: Mapping[str, int] | None = None,
        fence: Fence = NO_FENCE,
    ) -> None:
        self.name = name
        # Asked before every write for this pipeline: destination, DLQ, source position.
        self.fence = fence
        self.source = source
        self.destinations = list(destinations)
        for destination in self.destinations:
            # Schema evolution types a new column as the source does, when it knows.
            destination.source_types = source.column_types
        self.dlq = dlq
        self.config = config
        self.batch_size = batch_size
        self._clock = clock
        self._stop = threading.Event()
        self._resume = threading.Event()
        self.health = {d.destination_id: DestinationHealth(d, clock) for d in self.destinations}
        self.in_flight = InFlightWrites(clock)
        self.handler = EventHandler(
            source.source_id,
            self.destinations,
            self.health,
            dlq,
            retry_policy or RetryPolicy.preset("aggressive"),
            stop=self._stop,
            clock=clock,
            live_write_deadline=config.live_write_deadline_ms / 1000,
            in_flight=self.in_flight,
        )
        self.worker = DLQRecoveryWorker(
            name,
            source.source_id,
            self.destinations,
            self.health,
            dlq,
            config,
            probe_timeout=probe_timeout,
            clock=clock,
            on_drained=self._on_drained,
            in_flight=self.in_flight,
            priority=priority,
        )
        self.in_flight.on_settle = self.worker.wake
        self.handler.fence = self.worker.replay.fence = fence
        self.lanes = {
            d.destination_id: DeliveryLane(
                name,
                d,
                self.handler,
                self._stop,
                self._lane_delivered,
                self._lane_failed,
                max_events=d.max_batch_size or max(batch_size, 1),
            )
            for d in self.destinations
        }
        # Batches handed to the lanes and not yet acknowledged, in source order:
        # (batch, resume token, events). Guarded by _progress.
        self._in_lanes: deque[tuple[LaneBatch, str | None, int]] = deque()
        self._in_lanes_events = 0
        self._next_seq = 0
        self._progress = threading.Condition()
        self._lane_error: BaseException | None = None
        self.state = PipelineState.CREATED
        self.stats = PipelineStats()
        self.event_rate = EventRate()  # delivered events per second, read by status
        self._pending: tuple[SourceBatch, set[tuple[str, str]]] | None = None
        # A failing step is handled by the loop itself (FAILED state); the
        # supervisor restarts it only if something unexpected escapes it.
        self.supervisor = Supervisor(f"pipeline-{name}", self._loop, self._stop)
        self.finished = threading.Event()
        self.progress = self._progress_reporter()

    # ------------------------------------------------------------ lifecycle

    def start(self) -> None:
        self.state = PipelineState.RUNNING
        self.progress.start()  # first: its first line counts from here
        self.worker.start()
        self.dlq.store.add_sync_listener(self.wake)
        for lane in self.lanes.values():
            lane.start()
        self.supervisor.start()
        logger.info(
            "pipeline started: pipeline=%s source=%s destinations=%s",
            self.name,
            self.source.source_id,
            ",".join(str(d) for d in self.destinations),
        )

    def stop(self, timeout: float = 10.0) -> None:
        """Stop reading, finish or abandon the current batch unacknowledged, stop the worker."""
        self._stop.set()
        self._resume.set()
        for lane in self.lanes.values():
            lane.wake()
        with self._progress:
            self._progress.notify_all()
        self.supervisor.join(timeout)
        self.dlq.store.remove_sync_listener(self.wake)
        for lane in self.lanes.values():
            lane.join(max(1.0, timeout / 2))
        self.progress.join(1.0)
        self.handler.close()
        self.worker.stop(timeout=max(1.0, timeout / 2))
        if self.state not in (PipelineState.FINISHED, PipelineState.FENCED):
            self.state = PipelineState.STOPPED
        logger.info("pipeline stopped: pipeline=%s events=%d", self.name, self.stats.events)

    def wake(self) -> None:
        """Let the reader loop read the source now (a caller-fed source just got a batch)."""
        with self._progress:
            self._progress.notify_all()

    def supervisors(self) -> list[Supervisor]:
        """This pipeline's threads: its reader loop, its delivery lanes and its recovery worker."""
        lanes = [lane.supervisor for lane in self.lanes.values()]
        progress = [self.progress.supervisor] if self.progress.enabled else []
        return [self.supervisor, *lanes, self.worker.supervisor, *progress]

    def close(self) -> None:
        self.source.close()
        for destination in self.destinations:
            try:
                destination.close()
            except Exception:
                logger.exception("closing destination failed: destination=%s", destination)

    # ----------------------------------------------------------------- loop

    def _loop(self) -> None:
        try:
            while not self._stop.is_set():
                self._acknowledge_delivered()
                if self._lane_error is not None:
                    raise self._lane_error
                refused = self._refused()
                if refused is not None:
                    # A full DLQ: stop reading the source until it has room again.
                    self._enter_backpressure(refused)
                    self._wait_for_progress(BACKPRESSURE_WAIT)
                    continue
                self._leave_backpressure()
                if self._in_lanes_events >= self.config.read_ahead_events:
                    self._wait_for_progress(IDLE_POLL)
                    continue
                if not self._read_into_lanes():
                    if self.source.exhausted and not self._in_lanes:
                        self._finish()
                        return
                    self._wait_for_progress(IDLE_POLL)
        except Fenced as error:
            self.state = PipelineState.FENCED
            self.stats.last_error = str(error)
            logger.warning(
                "pipeline fenced, writing nothing more: pipeline=%s %s", self.name, error
            )
        except Exception as error:
            self.state = PipelineState.FAILED
            self.stats.last_error = f"{type(error).__name__}: {error}"
            logger.error(
                "pipeline failed: pipeline=%s error=%s",
                self.name,
                self.stats.last_error,
                exc_info=error,
            )

    def _read_into_lanes(self) -> bool:
        """Read one source batch and hand it to every lane; False if the source had none."""
        batch = self.source.read(self.batch_size)
        self.stats.rejected_events = self.source.rejected_count  # all, not the last kept
        self.stats.skipped_events = self.source.skipped_count
        if not batch.records:
            if batch.resume_token:
                with self._progress:
                    if self._in_lanes:  # acknowledged in order, after what is in the lanes
                        entry = LaneBatch(self._next_seq, {})
                        self._next_seq += 1
                        self._in_lanes.append((entry, batch.resume_token, 0))
                        return False
                self.source.acknowledge(batch.resume_token)
            return False
        entry = lane_batch(self._next_seq, batch.records)
        self.progress.read(entry.seq, batch.records)
        self._next_seq += 1
        entry.pending = set(self.lanes)
        with self._progress:
            self._in_lanes.append((entry, batch.resume_token, len(batch.records)))
            self._in_lanes_events += len(batch.records)
        for lane in self.lanes.values():
            lane.put(entry)
        return True

    def _lane_delivered(self, destination_id: str, batch: LaneBatch) -> None:
        with self._progress:
            batch.pending.discard(destination_id)
            # A lane enqueues on its own thread: the generation of that thread's
            # latest enqueue covers every DLQ write of its delivery of this batch,
            # and no other pipeline's, so a pipeline that queues nothing never
            # waits for the syncs of one that does.
            written = self.dlq.store.written_generation_of_this_thread()
            batch.generation = max(batch.generation or 0, written)
            if not batch.pending:
                self._progress.notify_all()

    def _lane_failed(self, destination_id: str, error: BaseException) -> None:
        with self._progress:
            self._lane_error = error
            self._progress.notify_all()

    def _acknowledge_delivered(self) -> None:
        """Acknowledge, in source order, the batches every lane has delivered."""
        while True:
            with self._progress:
                if not self._head_ready():
                    return
                entry, token, events = self._in_lanes.popleft()
                self._in_lanes_events -= events
            self.progress.acknowledged(entry.seq)
            if token:
                self.source.acknowledge(token)
            if events:
                self.stats.batches += 1
                self.stats.events += events
                self.worker.wake()

    def _head_ready(self) -> bool:
        """The oldest batch is delivered by every lane and its DLQ writes are synced.

        Holds ``_progress``. Each batch keeps the generation of its lanes' own
        latest DLQ writes (``_lane_delivered``), so one sync round lets every
        batch delivered before it go, and a batch that queued nothing waits
        for no sync at all.
        """
        if not self._in_lanes or self._in_lanes[0][0].pending:
            return False
        generation = self._in_lanes[0][0].generation  # None: no lane had it (no events)
        return not generation or self.dlq.store.is_synced(generation)

    def _wait_synced(self) -> None:
        """Return once every DLQ write so far is synced (``step``, DLQ_FSYNC=interval)."""
        generation = self.dlq.store.written_generation()
        while generation and not self.dlq.store.is_synced(generation):
            if self._stop.wait(0.005):
                return

    def _refused(self) -> DLQFullError | None:
        return next((lane.refused for lane in self.lanes.values() if lane.refused), None)

    def _wait_for_progress(self, timeout: float) -> None:
        with self._progress:
            if self._stop.is_set() or self._head_ready():
                return
            self._progress.wait(timeout)

    def _on_drained(self) -> None:
        """The recovery worker freed room in the DLQ: let refused batches go again."""
        self._resume.set()
        for lane in self.lanes.values():
            lane.resume()

    def _finish(self) -> None:
        self.state = PipelineState.FINISHED
        self.finished.set()
        logger.info(
            "pipeline source exhausted: pipeline=%s events=%d", self.name, self.stats.events
        )

    def step(self) -> bool:
        """Deliver one batch to every destination in this thread (the pending one first).

        True if anything moved. For driving a pipeline by hand (tests, tools):
        a started pipeline delivers through its lanes instead.
        """
        if self._pending is None:
            batch = self.source.read(self.batch_size)
            self.stats.rejected_events = self.source.rejected_count  # all, not the last kept
            self.stats.skipped_events = self.source.skipped_count
            if not batch.records:
                if batch.resume_token:
                    self.source.acknowledge(batch.resume_token)
                return False
            self._pending = (batch, set())
        batch, done = self._pending
        try:
            self.handler.handle(batch.records, done)
        except DLQFullError as error:
            self._enter_backpressure(error)
            return False
        self._leave_backpressure()
        self._wait_synced()
        if self._stop.is_set():
            return False  # not acknowledged: read again
        self.source.acknowledge(batch.resume_token)
        self.progress.read(-1, batch.records)
        self.progress.acknowledged()
        self._pending = None
        self.stats.batches += 1
        self.stats.events += len(batch.records)
        self.worker.wake()
        return True

    def _progress_reporter(self) -> ProgressReporter:
        """The progress line's reporter (a thread of its own unless DLQ_PROGRESS_INTERVAL=0)."""
        return ProgressReporter(
            self.name,
            self.source,
            self.handler.counters,
            self.worker,
            self.health,
            self.dlq,
            self.config.progress_interval,
            stop=self._stop,
            clock=self._clock,
        )

    def _enter_backpressure(self, error: DLQFullError) -> None:
        if self.state is not PipelineState.BACKPRESSURE:
            self.state = PipelineState.BACKPRESSURE
            self.stats.backpressure_since = self._clock()
            logger.warning(
                "backpressure: not reading the source until the DLQ has room: pipeline=%s "
                "limit=%s reason=%s",
                self.name,
                error.limit,
                error.detail,
            )
        self.stats.backpressure_reason = str(error)

    def _leave_backpressure(self) -> None:
        if self.state is PipelineState.BACKPRESSURE:
            since = self.stats.backpressure_since or self._clock()
            logger.info(
                "backpressure over, reading the source again: pipeline=%s paused_for=%.1fs",
                self.name,
                self._clock() - since,
            )
            self.state = PipelineState.RUNNING
            self.stats.backpressure_since = None
            self.stats.backpressure_reason = None

    # --------------------------------------------------------------- status

    def status(self) -> dict[str, Any]:
        lag = self.source.replication_lag()
        return {
            "pipeline": self.name,
            "state": self.state.value,
            "source_id": self.source.source_id,
            "source": self.source.status(),
            "events": self.stats.events,
            "events_per_second": round(self.event_rate.rate(self.stats.events), 1),
            "source_lag": None if lag is None else lag.to_json(),
            "batches": self.stats.batches,
            "rejected_events": self.stats.rejected_events,
            "skipped_events": self.stats.skipped_events,
            "backpressure_reason": self.stats.backpressure_reason,
            "last_error": self.stats.last_error,
            "destinations": [
                {
                    "id": s.destination_id,
                    "name": s.name,
                    "health": s.state.value,
                    "since": s.since,
                    "last_error": s.last_error,
                }
                for s in (h.snapshot() for h in self.health.values())
            ],
            "threads": [s.status() for s in self.supervisors()],
            "recovery": {
                "replayed": self.worker.stats.replayed,
                "failed": self.worker.stats.failed,
                "parked": self.worker.stats.parked,
                "expired": self.worker.stats.expired,
                "last_run_at": self.worker.stats.last_run_at,
                "last_replay_at": self.worker.stats.last_replay_at,
            },
        }
