"""Prometheus metrics of one engine, rendered in the text format for ``GET /metrics``.

Two kinds of figures:

* **Counters of events** (enqueued, replayed, failed, parked, dropped,
  expired, retry attempts, replay batch durations) are pushed by the event
  handler and the recovery worker through the ``Observer`` hook, once per
  batch: one dictionary lookup and an add per batch, never per message.
* **State** (queue depth, bytes, oldest age, parked messages, destination
  health, free disk, damaged queues, firing alerts, each pipeline's events
  and events/s, its source's replication lag) is read at scrape time
  by a custom collector from what the engine already keeps
  (``DLQManager.status`` is cached by the store), so the hot paths carry no
  gauge updates at all.

Each engine has its own ``CollectorRegistry``: several engines may live in
one process (tests), and the global registry would mix their figures.
"""

from __future__ import annotations

import logging
import shutil
import threading
import time
from collections.abc import Callable, Iterable, Iterator, Mapping
from pathlib import Path
from typing import TYPE_CHECKING

from prometheus_client import CollectorRegistry, Counter, Histogram, disable_created_metrics
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.exposition import CONTENT_TYPE_LATEST, generate_latest
from prometheus_client.process_collector import ProcessCollector
from prometheus_client.registry import Collector

from compute.delivery.health import HealthSnapshot, HealthState
from compute.delivery.observer import Observer
from compute.dlq.manager import DLQManager
from compute.observability.source_metrics import FlowSource, flow_metrics
from compute.queue_id import QueueId

if TYPE_CHECKING:
    from compute.observability.alerts import AlertMonitor
    from compute.runtime.supervisor import Supervisor

logger = logging.getLogger(__name__)

# ``*_created`` series (a timestamp per counter child) double the output and no
# rule here uses them; the switch is process-wide in prometheus_client.
disable_created_metrics()

QUEUE_LABELS = ("source", "table", "destination")
DESTINATION_LABELS = ("pipeline", "destination", "name")
# Replay batches take from milliseconds (a few rows) to minutes (a slow warehouse).
REPLAY_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 120.0)
# How a destination's health maps onto its circuit: the event handler tries
# writes unless the destination is known to be unhealthy.
CIRCUIT_STATES = {
    HealthState.HEALTHY: "closed",
    HealthState.UNHEALTHY: "open",
    HealthState.UNKNOWN: "unknown",
}

# ``shutil.disk_usage``: (total, used, free) bytes of the filesystem holding a path.
DiskUsage = Callable[[Path], tuple[int, int, int]]
HealthSource = Callable[[], Iterable[tuple[str, HealthSnapshot]]]
PipelineSource = Callable[[], Mapping[str, bool]]
ThreadSource = Callable[[], Iterable["Supervisor"]]


def queue_labels(queue: QueueId) -> tuple[str, str, str]:
    return (queue.source_id, queue.table, queue.destination_id)


def disk_usage_ratio(total: int, used: int, free: int) -> float:
    """Used share of the space an unprivileged writer can use (as ``df`` shows Use%)."""
    usable = used + free
    return used / usable if usable > 0 else 0.0


class DLQMetrics(Observer):
    """The engine's metrics: counters fed through ``Observer``, state read at scrape time."""

    def __init__(
        self,
        dlq: DLQManager,
        *,
        base_path: Path,
        destinations: HealthSource = lambda: (),
        pipelines: PipelineSource = lambda: {},
        threads: ThreadSource = lambda: (),
        flows: FlowSource = lambda: (),
        clock: Callable[[], float] = time.time,
        disk_usage: DiskUsage = shutil.disk_usage,
        process_metrics: bool = True,
    ) -> None:
        self.dlq = dlq
        self.base_path = Path(base_path)
        self.alerts: AlertMonitor | None = None  # set by the engine once the monitor exists
        self._destinations = destinations
        self._pipelines = pipelines
        self._threads = threads
        self.flows = flows
        self._clock = clock
        self._disk_usage = disk_usage
        self._closed = threading.Event()
        self.registry = CollectorRegistry(auto_describe=False)
        r = self.registry
        self.enqueued_total = Counter(
            "rosetta_dlq_messages_enqueued",
            "Messages the DLQ accepted (failed or deferred writes)",
            QUEUE_LABELS,
            registry=r,
        )
        self.replayed_total = Counter(
            "rosetta_dlq_messages_replayed",
            "Queued messages the destination committed on replay",
            QUEUE_LABELS,
            registry=r,
        )
        self.failed_total = Counter(
            "rosetta_dlq_messages_failed",
            "Queued messages in replay batches that failed (they stay queued)",
            QUEUE_LABELS,
            registry=r,
        )
        self.parked_total = Counter(
            "rosetta_dlq_messages_parked",
            "Messages parked as poison, or held behind a parked change to the same key",
            QUEUE_LABELS,
            registry=r,
        )
        self.dropped_total = Counter(
            "rosetta_dlq_messages_dropped",
            "Messages dropped because the DLQ was full (DLQ_WHEN_FULL=drop_newest only)",
            QUEUE_LABELS,
            registry=r,
        )
        self.expired_total = Counter(
            "rosetta_dlq_messages_expired",
            "Queued messages older than DLQ_MESSAGE_TTL, removed without replay",
            QUEUE_LABELS,
            registry=r,
        )
        self.retry_attempts_total = Counter(
            "rosetta_dlq_retry_attempts",
            "Failed writes that will be tried again: in-place retries of live writes "
            "and failed replay batches",
            QUEUE_LABELS,
            registry=r,
        )
        self.replay_batch_seconds = Histogram(
            "rosetta_dlq_replay_batch_duration_seconds",
            "Time to replay one DLQ batch (read, write to the destination, acknowledge)",
            ("destination",),
            buckets=REPLAY_BUCKETS,
            registry=r,
        )
        r.register(_StateCollector(self))
        if process_metrics:
            ProcessCollector(registry=r)

    # ------------------------------------------------------------ Observer

    # Counting must never break delivery: a failure here is logged, not raised.

    def enqueued(self, queue: QueueId, accepted: int, dropped: int) -> None:
        try:
            labels = queue_labels(queue)
            if accepted:
                self.enqueued_total.labels(*labels).inc(accepted)
            if dropped:
                self.dropped_total.labels(*labels).inc(dropped)
        except Exception:
            logger.exception("metrics not updated: queue=%s", queue)

    def parked(self, queue: QueueId, count: int) -> None:
        try:
            if count:
                self.parked_total.labels(*queue_labels(queue)).inc(count)
        except Exception:
            logger.exception("metrics not updated: queue=%s", queue)

    def retried(self, queue: QueueId, attempts: int = 1) -> None:
        try:
            self.retry_attempts_total.labels(*queue_labels(queue)).inc(attempts)
        except Exception:
            logger.exception("metrics not updated: queue=%s", queue)

    def replay_batch(self, queue: QueueId, seconds: float, counts: Mapping[str, int]) -> None:
        try:
            labels = queue_labels(queue)
            self.replay_batch_seconds.labels(queue.destination_id).observe(seconds)
            for name, counter in (
                ("replayed", self.replayed_total),
                ("failed", self.failed_total),
                ("parked", self.parked_total),
                ("expired", self.expired_total),
            ):
                if counts.get(name):
                    counter.labels(*labels).inc(counts[name])
            if counts.get("failed"):
                self.retry_attempts_total.labels(*labels).inc()
        except Exception:
            logger.exception("metrics not updated: queue=%s", queue)

    # ------------------------------------------------------------ exposition

    def render(self) -> tuple[bytes, str]:
        """The Prometheus text exposition and its content type, for ``GET /metrics``."""
        return generate_latest(self.registry), CONTENT_TYPE_LATEST

    def close(self) -> None:
        """The DLQ is about to close: from now on scrapes leave out queue state."""
        self._closed.set()

    @property
    def closed(self) -> bool:
        return self._closed.is_set()

    def destination_snapshots(self) -> list[tuple[str, HealthSnapshot]]:
        return list(self._destinations())

    def pipeline_backpressure(self) -> Mapping[str, bool]:
        return self._pipelines()

    def supervised_threads(self) -> list[Supervisor]:
        return list(self._threads())

    def disk(self) -> tuple[int, int, int]:
        """(total, used, free) bytes of the filesystem holding the DLQ base path."""
        total, used, free = self._disk_usage(self.base_path)
        return int(total), int(used), int(free)

    def now(self) -> float:
        return self._clock()


class _StateCollector(Collector):
    """Reads the engine's state when Prometheus scrapes; each part fails on its own."""

    def __init__(self, metrics: DLQMetrics) -> None:
        self.metrics = metrics

    def describe(self) -> Iterable[Metric]:
        return ()  # names are not known up front; nothing to check for collisions

    def collect(self) -> Iterator[Metric]:
        parts = (
            self._queues,
            self._destinations,
            self._pipelines,
            self._flows,
            self._threads,
            self._disk,
            self._alerts,
        )
        for part in parts:
            try:
                yield from part()
            except Exception as error:  # a scrape must never fail as a whole
                logger.warning("metrics part not collected: part=%s error=%s", part.__name__, error)

    def _queues(self) -> Iterator[Metric]:
        m = self.metrics
        if m.closed:
            return
        messages = GaugeMetricFamily(
            "rosetta_dlq_queue_messages", "Messages waiting in the queue", labels=QUEUE_LABELS
        )
        size = GaugeMetricFamily(
            "rosetta_dlq_queue_bytes", "Bytes the queue holds on disk", labels=QUEUE_LABELS
        )
        parked = GaugeMetricFamily(
            "rosetta_dlq_parked_messages",
            "Parked (poison) messages kept on disk, never replayed automatically",
            labels=QUEUE_LABELS,
        )
        age = GaugeMetricFamily(
            "rosetta_dlq_oldest_message_age_seconds",
            "Age of the oldest message waiting in the queue (0 when empty)",
            labels=QUEUE_LABELS,
        )
        quarantined = CounterMetricFamily(
            "rosetta_dlq_messages_quarantined",
            "Undecodable messages and unstorable changes moved to a queue's quarantine/",
            labels=QUEUE_LABELS,
        )
        held = GaugeMetricFamily(
            "rosetta_dlq_queue_held",
            "1 while the queue is held: its target table refuses every change the same way "
            "(missing table or column, no unique constraint, no privilege); retried until fixed",
            labels=QUEUE_LABELS,
        )
        now = m.now()
        queues = m.dlq.list_queues()
        for queue in queues:
            try:
                status = m.dlq.status(queue)
            except Exception as error:  # a damaged or closing queue: leave it out this time
                logger.warning("queue left out of metrics: queue=%s error=%s", queue, error)
                continue
            labels = list(queue_labels(queue))
            messages.add_metric(labels, status.messages)
            size.add_metric(labels, status.bytes_on_disk)
            parked.add_metric(labels, status.parked)
            age.add_metric(labels, status.oldest_age(now) or 0.0)
            quarantined.add_metric(labels, status.quarantined)
            if not queue.lane:
                held.add_metric(labels, 0 if status.held is None else 1)
        yield messages
        yield size
        yield parked
        yield age
        yield quarantined
        yield held
        yield GaugeMetricFamily(
            "rosetta_dlq_queues", "Queues on disk (drained ones included)", value=len(queues)
        )
        yield GaugeMetricFamily(
            "rosetta_dlq_damaged_queues",
            "Damaged queue directories set aside to <base>/quarantine/ in this run",
            value=len(m.dlq.damaged_queues()),
        )

    def _destinations(self) -> Iterator[Metric]:
        m = self.metrics
        up = GaugeMetricFamily(
            "rosetta_destination_up",
            "1 unless the destination is known to be unhealthy (circuit open)",
            labels=DESTINATION_LABELS,
        )
        circuit = GaugeMetricFamily(
            "rosetta_destination_circuit_state",
            "1 for the destination's current circuit state: closed (healthy), open "
            "(unhealthy: new events go straight to the DLQ) or unknown (not yet written to)",
            labels=(*DESTINATION_LABELS, "state"),
        )
        unhealthy = GaugeMetricFamily(
            "rosetta_destination_unhealthy_seconds",
            "How long the destination has been unhealthy (0 when it is not)",
            labels=DESTINATION_LABELS,
        )
        now = m.now()
        for pipeline, snap in m.destination_snapshots():
            labels = [pipeline, snap.destination_id, snap.name]
            down = snap.state is HealthState.UNHEALTHY
            up.add_metric(labels, 0.0 if down else 1.0)
            for state, name in CIRCUIT_STATES.items():
                circuit.add_metric([*labels, name], 1.0 if snap.state is state else 0.0)
            unhealthy.add_metric(labels, max(0.0, now - snap.since) if down else 0.0)
        yield up
        yield circuit
        yield unhealthy

    def _pipelines(self) -> Iterator[Metric]:
        backpressure = GaugeMetricFamily(
            "rosetta_pipeline_backpressure",
            "1 while the pipeline stopped reading its source because the DLQ is full",
            labels=("pipeline",),
        )
        for name, paused in self.metrics.pipeline_backpressure().items():
            backpressure.add_metric([name], 1.0 if paused else 0.0)
        yield backpressure

    def _flows(self) -> Iterator[Metric]:
        yield from flow_metrics(self.metrics.flows())

    def _threads(self) -> Iterator[Metric]:
        restarts = CounterMetricFamily(
            "rosetta_thread_restarts",
            "Times an engine thread crashed on an unexpected error and was restarted",
            labels=("thread",),
        )
        crashing = GaugeMetricFamily(
            "rosetta_thread_crashing",
            "1 while the thread keeps crashing (3 crashes within 5 minutes, or it ended for good)",
            labels=("thread",),
        )
        for thread in self.metrics.supervised_threads():
            restarts.add_metric([thread.name], thread.restarts)
            crashing.add_metric([thread.name], 1.0 if thread.crashing else 0.0)
        yield restarts
        yield crashing

    def _disk(self) -> Iterator[Metric]:
        total, used, free = self.metrics.disk()
        yield GaugeMetricFamily(
            "rosetta_dlq_disk_free_bytes",
            "Free bytes on the filesystem holding DLQ_BASE_PATH (for unprivileged writers)",
            value=free,
        )
        yield GaugeMetricFamily(
            "rosetta_dlq_disk_total_bytes",
            "Size of the filesystem holding DLQ_BASE_PATH",
            value=total,
        )
        yield GaugeMetricFamily(
            "rosetta_dlq_disk_usage_ratio",
            "Used share (0-1) of the filesystem holding DLQ_BASE_PATH, as df shows it",
            value=disk_usage_ratio(total, used, free),
        )

    def _alerts(self) -> Iterator[Metric]:
        monitor = self.metrics.alerts
        if monitor is None:
            return
        firing = GaugeMetricFamily(
            "rosetta_alerts_firing",
            "Alerts the engine evaluates that are firing now, by rule and severity",
            labels=("alert", "severity"),
        )
        for (rule, severity), count in sorted(monitor.firing_counts().items()):
            firing.add_metric([rule, severity], count)
        yield firing
