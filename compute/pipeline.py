"""A pipeline: one source, its destinations, the event handler and the recovery worker."""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from enum import StrEnum
from typing import Any

from compute.dlq_manager import DLQManager
from compute.dlq_recovery import DLQRecoveryWorker
from compute.errors import DLQFullError
from compute.event_handler import EventHandler
from compute.health import DestinationHealth
from compute.retry_policy import RetryPolicy
from compute.sources.base import Source, SourceBatch
from compute.supervisor import Supervisor
from config.settings import DLQConfig
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


@dataclass
class PipelineStats:
    batches: int = 0
    events: int = 0
    backpressure_since: float | None = None
    backpressure_reason: str | None = None
    last_error: str | None = None
    rejected_events: int = 0
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
    ) -> None:
        self.name = name
        self.source = source
        self.destinations = list(destinations)
        self.dlq = dlq
        self.config = config
        self.batch_size = batch_size
        self._clock = clock
        self._stop = threading.Event()
        self._resume = threading.Event()
        self.health = {d.destination_id: DestinationHealth(d, clock) for d in self.destinations}
        self.handler = EventHandler(
            source.source_id,
            self.destinations,
            self.health,
            dlq,
            retry_policy or RetryPolicy.preset("aggressive"),
            stop=self._stop,
            clock=clock,
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
            on_drained=self._resume.set,
        )
        self.state = PipelineState.CREATED
        self.stats = PipelineStats()
        self._pending: tuple[SourceBatch, set[tuple[str, str]]] | None = None
        # A failing step is handled by the loop itself (FAILED state); the
        # supervisor restarts it only if something unexpected escapes it.
        self.supervisor = Supervisor(f"pipeline-{name}", self._loop, self._stop)
        self.finished = threading.Event()

    # ------------------------------------------------------------ lifecycle

    def start(self) -> None:
        self.state = PipelineState.RUNNING
        self.worker.start()
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
        self.supervisor.join(timeout)
        self.worker.stop(timeout=max(1.0, timeout / 2))
        if self.state is not PipelineState.FINISHED:
            self.state = PipelineState.STOPPED
        logger.info("pipeline stopped: pipeline=%s events=%d", self.name, self.stats.events)

    def supervisors(self) -> list[Supervisor]:
        """This pipeline's threads: its loop and its recovery worker."""
        return [self.supervisor, self.worker.supervisor]

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
                progressed = self.step()
                if self.state is PipelineState.BACKPRESSURE:
                    self._resume.wait(BACKPRESSURE_WAIT)
                    self._resume.clear()
                elif not progressed:
                    if self.source.exhausted and self._pending is None:
                        self._finish()
                        return
                    self._stop.wait(IDLE_POLL)
        except Exception as error:
            self.state = PipelineState.FAILED
            self.stats.last_error = f"{type(error).__name__}: {error}"
            logger.exception("pipeline failed: pipeline=%s", self.name)

    def _finish(self) -> None:
        self.state = PipelineState.FINISHED
        self.finished.set()
        logger.info(
            "pipeline source exhausted: pipeline=%s events=%d", self.name, self.stats.events
        )

    def step(self) -> bool:
        """Deliver one batch (the pending one first); True if anything moved."""
        if self._pending is None:
            batch = self.source.read(self.batch_size)
            self.stats.rejected_events = len(self.source.rejected)
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
        self.source.acknowledge(batch.resume_token)
        self._pending = None
        self.stats.batches += 1
        self.stats.events += len(batch.records)
        self.worker.wake()
        return True

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
        return {
            "pipeline": self.name,
            "state": self.state.value,
            "source_id": self.source.source_id,
            "events": self.stats.events,
            "batches": self.stats.batches,
            "rejected_events": self.stats.rejected_events,
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
