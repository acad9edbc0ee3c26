"""A pipeline's progress line and its deferred-event summaries, every ``DLQ_PROGRESS_INTERVAL`` s.

Healthy writes log nothing per batch, so without this line a running pipeline
is silent. Every interval, on a thread of its own (under a supervisor), it
logs one INFO line per pipeline::

    progress pipeline=orders in=1520/s read=15200 written=15200 queued=0 replayed=0
    parked=0 dropped=0 rejected=0 skipped=0 backlog=0 position=0/16B3A48#3 lag=0.4s

(``skipped``: input the source skipped on purpose as carrying no change, such
as Kafka tombstones and empty lines of a JSON-lines file)

and, per queue that had events queued for later delivery since the last line
(behind an outage, behind older queued events, or after a failed write), one::

    deferred pipeline=orders queue=1/public.orders/2 events=5400 since_last=10.0s
    destination_health=unhealthy

The counts are read from counters the pipeline keeps anyway (the event
handler's, the recovery worker's, the source's): nothing is added per event;
the pipeline notes each batch's first and last event (per batch) for the
position and the lag.
"""

from __future__ import annotations

import logging
import threading
from collections import Counter, deque
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field

from compute.delivery.event_handler import HandlerCounters
from compute.delivery.health import DestinationHealth
from compute.dlq.manager import DLQManager
from compute.errors import DLQError
from compute.queue_id import QueueId
from compute.recovery.worker import DLQRecoveryWorker
from compute.runtime.supervisor import Supervisor
from compute.sources.base import Source
from destinations.records import ChangeRecord, SourcePosition

logger = logging.getLogger(__name__)


def _total(counter: Counter[str]) -> int:
    # dict.copy is one step under the GIL: the lanes may add keys meanwhile.
    return sum(dict.copy(counter).values())


@dataclass(frozen=True)
class ProgressSample:
    """The pipeline's running totals at one moment."""

    at: float
    read: int = 0
    written: int = 0
    queued: int = 0
    replayed: int = 0
    parked: int = 0
    dropped: int = 0
    rejected: int = 0
    skipped: int = 0
    queued_by_queue: Mapping[QueueId, int] = field(default_factory=dict)


@dataclass(frozen=True)
class _Acknowledged:
    position: SourcePosition
    lag: float | None  # seconds from the event's commit to its acknowledgement


class ProgressReporter:
    """Logs one pipeline's progress line and deferred summaries every ``interval`` seconds."""

    def __init__(
        self,
        pipeline_name: str,
        source: Source,
        counters: HandlerCounters,
        worker: DLQRecoveryWorker,
        health: Mapping[str, DestinationHealth],
        dlq: DLQManager,
        interval: float,
        *,
        stop: threading.Event,
        clock: Callable[[], float],
    ) -> None:
        self.pipeline_name = pipeline_name
        self.source = source
        self.counters = counters
        self.worker = worker
        self.health = health
        self.dlq = dlq
        self.interval = interval
        self._stop = stop
        self._clock = clock
        # Written by the pipeline's reader thread only, read by the reporter.
        self.events_read = 0
        # Batches read, not yet acknowledged: (seq, first event's commit time, last event).
        self._unacknowledged: deque[tuple[int, float | None, ChangeRecord]] = deque()
        self._acknowledged: _Acknowledged | None = None
        self._last: ProgressSample | None = None
        self.supervisor = Supervisor(f"pipeline-{pipeline_name}-progress", self._loop, stop)

    # ---------------------------------------------------- noted by the pipeline, per batch

    def read(self, seq: int, records: Sequence[ChangeRecord]) -> None:
        """The pipeline read ``records`` (a non-empty batch) as its batch ``seq``."""
        self.events_read += len(records)
        self._unacknowledged.append((seq, records[0].commit_ts, records[-1]))

    def acknowledged(self, seq: int | None = None) -> None:
        """The source position after batch ``seq`` (None: every batch read) is acknowledged."""
        last: ChangeRecord | None = None
        while self._unacknowledged and (seq is None or self._unacknowledged[0][0] <= seq):
            last = self._unacknowledged.popleft()[2]
        if last is not None:
            lag = None if last.commit_ts is None else max(0.0, self._clock() - last.commit_ts)
            self._acknowledged = _Acknowledged(last.position, lag)

    # ------------------------------------------------------------------ the thread

    @property
    def enabled(self) -> bool:
        return self.interval > 0

    def start(self) -> None:
        """Start the thread (unless the interval is 0); the first line counts from now."""
        if self.enabled:
            self._last = self.sample()
            self.supervisor.start()

    def join(self, timeout: float) -> bool:
        return self.supervisor.join(timeout)

    def _loop(self) -> None:
        while not self._stop.wait(self.interval):
            self.report()

    def report(self) -> None:
        """Log the lines for the time since the last report (or since the reporter began)."""
        now = self.sample()
        if self._last is not None:
            self._log(self._last, now)
        self._last = now

    def sample(self) -> ProgressSample:
        counters = self.counters
        return ProgressSample(
            at=self._clock(),
            read=self.events_read,
            written=_total(counters.written),
            queued=_total(counters.queued),
            replayed=self.worker.stats.replayed,
            parked=_total(counters.parked) + self.worker.stats.parked,
            dropped=_total(counters.dropped),
            rejected=self.source.rejected_count,
            skipped=self.source.skipped_count,
            queued_by_queue=dict.copy(counters.queued_by_queue),
        )

    def _log(self, before: ProgressSample, now: ProgressSample) -> None:
        elapsed = max(now.at - before.at, 1e-9)
        logger.info(
            "progress pipeline=%s in=%.0f/s read=%d written=%d queued=%d replayed=%d parked=%d "
            "dropped=%d rejected=%d skipped=%d backlog=%s position=%s lag=%s",
            self.pipeline_name,
            (now.read - before.read) / elapsed,
            now.read - before.read,
            now.written - before.written,
            now.queued - before.queued,
            now.replayed - before.replayed,
            now.parked - before.parked,
            now.dropped - before.dropped,
            now.rejected - before.rejected,
            now.skipped - before.skipped,
            self._backlog(),
            "-" if self._acknowledged is None else self._acknowledged.position,
            self._lag(now.at),
        )
        for queue, total in sorted(now.queued_by_queue.items(), key=lambda q: str(q[0])):
            deferred = total - before.queued_by_queue.get(queue, 0)
            if deferred:
                logger.info(
                    "deferred pipeline=%s queue=%s events=%d since_last=%.1fs "
                    "destination_health=%s",
                    self.pipeline_name,
                    queue,
                    deferred,
                    elapsed,
                    self.health[queue.destination_id].snapshot().state.value,
                )

    def _backlog(self) -> str:
        """Events waiting in this pipeline's queues now ("-" if a queue cannot be counted)."""
        try:
            return str(sum(self.dlq.count(queue) for queue in self.worker.queues()))
        except DLQError:
            return "-"

    def _lag(self, now: float) -> str:
        """Seconds behind the source: from the commit of the oldest event read and not yet
        acknowledged, else the last acknowledged event's at its acknowledgement."""
        try:
            pending = self._unacknowledged[0][1]
        except IndexError:  # nothing waiting (the reader thread may have just emptied it)
            pending = None
        if pending is not None:
            return f"{max(0.0, now - pending):.1f}s"
        if self._acknowledged is None or self._acknowledged.lag is None:
            return "-"
        return f"{self._acknowledged.lag:.1f}s"
