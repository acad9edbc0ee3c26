"""The metrics of what flows from each pipeline's source: events, events/s, replication lag."""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator
from typing import NamedTuple

from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric

from compute.sources.base import ReplicationLag

LAG_LABELS = ("pipeline", "source", "slot")
# pg_replication_slots.wal_status values (PostgreSQL 13 and later).
WAL_STATUSES = ("reserved", "extended", "unreserved", "lost")


class PipelineFlow(NamedTuple):
    """One pipeline's delivered events, their rate now, and its source's lag (if it has one)."""

    pipeline: str
    source_id: str
    events: int
    events_per_second: float
    lag: ReplicationLag | None


FlowSource = Callable[[], Iterable[PipelineFlow]]


def flow_metrics(flows: Iterable[PipelineFlow]) -> Iterator[Metric]:
    """The families for ``GET /metrics``; every family is present even with no series."""
    events = CounterMetricFamily(
        "rosetta_pipeline_events",
        "Change events the pipeline delivered (committed by every destination or accepted "
        "by the DLQ) and acknowledged to its source",
        labels=("pipeline",),
    )
    rate = GaugeMetricFamily(
        "rosetta_pipeline_events_per_second",
        "Change events delivered per second over about the last 10 seconds",
        labels=("pipeline",),
    )
    lag_bytes = GaugeMetricFamily(
        "rosetta_source_replication_lag_bytes",
        "Source WAL not yet confirmed by the slot: pg_current_wal_lsn() - confirmed_flush_lsn "
        "(absent while it cannot be read)",
        labels=LAG_LABELS,
    )
    lag_seconds = GaugeMetricFamily(
        "rosetta_source_replication_lag_seconds",
        "Seconds since the commit of the oldest transaction received and not yet confirmed "
        "(0 when every one received is confirmed)",
        labels=LAG_LABELS,
    )
    known = GaugeMetricFamily(
        "rosetta_source_replication_lag_known",
        "1 when the last read of the slot's lag and wal_status on the source succeeded",
        labels=LAG_LABELS,
    )
    wal_status = GaugeMetricFamily(
        "rosetta_source_replication_slot_wal_status",
        "1 for the slot's current wal_status: reserved, extended, unreserved (WAL about to "
        "be removed) or lost",
        labels=(*LAG_LABELS, "status"),
    )
    for flow in flows:
        events.add_metric([flow.pipeline], flow.events)
        rate.add_metric([flow.pipeline], flow.events_per_second)
        lag = flow.lag
        if lag is None:
            continue
        labels = [flow.pipeline, flow.source_id, lag.slot]
        lag_seconds.add_metric(labels, lag.lag_seconds)
        known.add_metric(labels, 0.0 if lag.lag_bytes is None else 1.0)
        if lag.lag_bytes is not None:
            lag_bytes.add_metric(labels, lag.lag_bytes)
        if lag.wal_status is not None:
            for status in WAL_STATUSES:
                wal_status.add_metric([*labels, status], 1.0 if lag.wal_status == status else 0.0)
    yield from (events, rate, lag_bytes, lag_seconds, known, wal_status)
