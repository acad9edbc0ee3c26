"""What ``rosetta top`` shows, read from the admin API: one snapshot, with rates from two samples.

A sample is four read-only requests: ``GET /health`` (pipelines, destinations),
``GET /dlq/queues`` (depth, parked, age, bytes), ``GET /alerts`` (what is
firing) and ``GET /metrics`` (the enqueue, replay and park counters, disk
usage). Rates are the counters' growth between two successive samples over
the time between them; the first sample has none (``None``), and neither
has a counter that went down (the engine restarted).
"""

from __future__ import annotations

import time
from collections.abc import Callable, Mapping
from datetime import datetime
from typing import Any, Protocol

from prometheus_client.parser import text_string_to_metric_families

from compute.queue_id import QueueId

# metric (without ``_total``) -> the snapshot's rate field for each queue
QUEUE_RATES = {
    "rosetta_dlq_messages_enqueued": "enqueue_per_second",
    "rosetta_dlq_messages_replayed": "replay_per_second",
    "rosetta_dlq_messages_parked": "park_per_second",
}
DISK = ("rosetta_dlq_disk_usage_ratio", "rosetta_dlq_disk_free_bytes")


class AdminReader(Protocol):
    """What the sampler needs of ``compute.cli.client.HttpClient``."""

    pid: int
    url: str

    def health(self) -> dict[str, Any]: ...

    def read_json(self, path: str) -> Any: ...

    def read_text(self, path: str) -> str: ...


# ``<metric>|<queue>`` for the queue counters, ``events|<pipeline>`` for events read.
Counters = dict[str, float]


class Sampler:
    """Takes snapshots of one engine; remembers the last counters to compute rates."""

    def __init__(self, client: AdminReader, clock: Callable[[], float] = time.monotonic) -> None:
        self.client = client
        self._clock = clock
        self._last: tuple[float, Counters] | None = None

    def sample(self) -> dict[str, Any]:
        """The engine as ``top_view.render`` takes it (see ``snapshot``)."""
        health = self.client.health()
        queues = list(self.client.read_json("/dlq/queues")["queues"])
        alerts = self.client.read_json("/alerts")
        counters, disk = read_metrics(self.client.read_text("/metrics"))
        for p in health.get("pipelines", []):
            counters[f"events|{p['pipeline']}"] = float(p.get("events") or 0)
        now = self._clock()
        previous, self._last = self._last, (now, counters)
        return snapshot(
            health,
            queues,
            alerts,
            counters,
            previous[1] if previous else None,
            now - previous[0] if previous else None,
            disk,
            engine={"pid": self.client.pid, "url": self.client.url},
        )


def read_metrics(text: str) -> tuple[Counters, dict[str, float]]:
    """The queue counters (``metric|queue`` -> value) and the disk gauges of a scrape."""
    counters: Counters = {}
    disk: dict[str, float] = {}
    for family in text_string_to_metric_families(text):
        for s in family.samples:
            name = s.name.removesuffix("_total")
            if name in QUEUE_RATES and s.name.endswith("_total"):
                labels = s.labels
                queue = QueueId(labels["source"], labels["table"], labels["destination"])
                counters[f"{name}|{queue}"] = s.value
            elif s.name in DISK:
                disk[s.name] = s.value
    return counters, disk


def rate(key: str, now: Counters, before: Counters | None, seconds: float | None) -> float | None:
    """Growth per second of one counter between two samples (a new series started at 0)."""
    if before is None or not seconds or seconds <= 0:
        return None
    growth = now.get(key, 0.0) - before.get(key, 0.0)
    return None if growth < 0 else growth / seconds


def snapshot(
    health: Mapping[str, Any],
    queues: list[dict[str, Any]],
    alerts: Mapping[str, Any],
    counters: Counters,
    before: Counters | None,
    seconds: float | None,
    disk: Mapping[str, float],
    *,
    engine: Mapping[str, Any],
) -> dict[str, Any]:
    """The plain dictionary ``top_view.render`` draws (and ``--json`` prints).

    Durations (``for_seconds``) are measured on the engine's clock, against
    its ``checked_at``; rates are per second, ``None`` when not yet known.
    """
    now = _epoch(health.get("checked_at"))
    pipelines = [
        {
            "name": p["pipeline"],
            "state": p["state"],
            "source_id": p.get("source_id"),
            "events": p.get("events"),
            "events_per_second": rate(f"events|{p['pipeline']}", counters, before, seconds),
            "rejected_events": p.get("rejected_events"),
            "skipped_events": p.get("skipped_events"),
            "source_lag": p.get("source_lag"),
            "detail": p.get("last_error") or p.get("backpressure_reason"),
        }
        for p in health.get("pipelines", [])
    ]
    destinations = [
        {
            "pipeline": d["pipeline"],
            "id": d["id"],
            "name": d["name"],
            "health": destination_health(d),
            "for_seconds": _since(now, d.get("since")),
            "since": d.get("since"),
            "last_error": d.get("last_error"),
            "messages": d.get("messages") or 0,
            "parked": d.get("parked") or 0,
        }
        for d in health.get("destinations", [])
    ]
    rows = []
    for q in queues:
        row = {
            "queue": q["queue"],
            "messages": q.get("messages"),
            "parked": q.get("parked"),
            "oldest_age_seconds": q.get("oldest_age_seconds"),
            "bytes_on_disk": q.get("bytes_on_disk"),
            "damaged": bool(q.get("damaged")),
        }
        for metric, field in QUEUE_RATES.items():
            row[field] = rate(f"{metric}|{q['queue']}", counters, before, seconds)
        rows.append(row)
    firing = [
        {
            "alert": a["alert"],
            "severity": a["severity"],
            "subject": a["subject"],
            "summary": a["summary"],
            "for_seconds": _since(now, a.get("since")),
        }
        for a in alerts.get("active", [])
    ]
    ratio = disk.get("rosetta_dlq_disk_usage_ratio")
    free = disk.get("rosetta_dlq_disk_free_bytes")
    return {
        "engine": {
            **engine,
            "status": health.get("status"),
            "checked_at": health.get("checked_at"),
        },
        "rate_interval_seconds": None if seconds is None else round(seconds, 3),
        "pipelines": pipelines,
        "destinations": destinations,
        "queues": rows,
        "alerts": firing,
        "disk": {
            "usage_percent": None if ratio is None else round(100 * ratio, 1),
            "free_bytes": None if free is None else int(free),
        },
    }


def destination_health(d: Mapping[str, Any]) -> str:
    """``down`` (circuit open), ``degraded`` (up, but its queues hold or park messages),
    ``unknown`` (not written to yet) or ``healthy``."""
    if d.get("health") == "unhealthy":
        return "down"
    if d.get("messages") or d.get("parked"):
        return "degraded"
    return "unknown" if d.get("health") == "unknown" else "healthy"


def _epoch(text: object) -> float | None:
    if not isinstance(text, str):
        return None
    try:
        return datetime.fromisoformat(text).timestamp()
    except ValueError:
        return None


def _since(now: float | None, text: object) -> float | None:
    when = _epoch(text)
    if now is None or when is None:
        return None
    return round(max(0.0, now - when), 3)
