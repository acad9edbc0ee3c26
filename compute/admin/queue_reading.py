"""The operator's view of the DLQ: the queue list, peeking at messages, totals and health."""

from __future__ import annotations

from typing import Any

from compute.admin.operations_base import OperationsBase
from compute.codec.message_view import message_to_json
from compute.dlq.timestamps import iso
from compute.errors import DLQStorageError
from compute.observability.source_lag_rule import source_lag_findings
from compute.queue_id import QueueId
from compute.runtime.supervisor import CRASH_WINDOW
from compute.sources.base import ReplicationLag

# The DLQ warning rule of the reference stats (seed 000): queued messages
# older than 24 hours make a destination, and the engine, "warning".
DLQ_WARNING_AGE = 24 * 3600.0


class QueueReading(OperationsBase):
    """Reads only: ``queues``, ``show``, ``stats`` and ``health``."""

    def queues(self) -> list[dict[str, Any]]:
        """One row per queue: counts, bytes, oldest age and destination health."""
        now = self._clock()
        health = self.destination_health()
        owners = self.pipeline_owners()
        if owners is not None:
            from compute.admin.owners import owners_by_source

            owner_of = owners_by_source(owners)
        rows = []
        # An operator asking sees queues made since the last scan too.
        for queue in self.dlq.list_queues(refresh=True):
            row = self.dlq.status(queue).to_json(now)
            dest = health.get((queue.source_id, queue.destination_id))
            row["destination_health"] = (
                dest["health"] if dest else ("unknown" if self.running else "engine stopped")
            )
            # A client replaying every queue (``replay --all``) orders them by it.
            row["priority"] = self.running_priority(queue)
            row["damaged"] = False
            if owners is not None:  # engines share the pipelines: which one runs this queue's
                owner = owner_of.get(queue.source_id)
                row["owner"] = owner.engine_id if owner is not None else None
            rows.append(row)
        # Damaged queue directories set aside (this run or earlier): their
        # messages are not replayed until an operator deals with the files.
        for entry in self.dlq.set_aside_directories():
            try:
                queue = QueueId.parse(entry["queue"])
                names = {
                    "source_id": queue.source_id,
                    "table": queue.table,
                    "destination_id": queue.destination_id,
                }
            except ValueError:
                names = {"source_id": "?", "table": entry["queue"], "destination_id": "?"}
            rows.append(
                {
                    "queue": entry["queue"],
                    **names,
                    "messages": None,
                    "parked": None,
                    "bytes_on_disk": None,
                    "oldest_age_seconds": None,
                    "destination_health": "-",
                    "damaged": True,
                    "moved_to": entry["moved_to"],
                    "reason": entry["reason"],
                }
            )
        return rows

    def show(self, queue: QueueId, *, limit: int = 20, parked: bool = False) -> dict[str, Any]:
        """Peek at up to ``limit`` messages from the head of a lane, removing nothing."""
        if limit < 1:
            raise ValueError("limit must be at least 1")
        queue = self.known(queue)
        lane = queue.parked if parked else queue
        now = self._clock()
        messages = []
        truncate = self.dlq.applied_truncate(queue) if parked else None
        for m in self.dlq.peek(lane, limit):
            row = message_to_json(m)
            if truncate is not None and truncate.supersedes(m.record):
                # Older than a truncate applied since: replaying it would undo the truncate.
                row["superseded_by_truncate"] = {
                    **truncate.to_json(),
                    "applied_at": iso(truncate.applied_at),
                }
            row["attempts"] = self.dlq.attempts_of(lane, m)
            row["age_seconds"] = round(max(0.0, now - m.enqueued_at), 3)
            row["first_failure_at"] = iso(m.failure.first_failure_at)
            row["last_failure_at"] = iso(m.failure.last_failure_at)
            row["enqueued_at"] = iso(m.enqueued_at)
            messages.append(row)
        return {
            "queue": str(queue),
            "lane": "parked" if parked else "main",
            "total": self.dlq.count(lane),
            "superseded": self.dlq.superseded_count(queue) if parked else 0,
            "messages": messages,
        }

    def stats(self) -> dict[str, Any]:
        """Totals per destination and overall, as the reference ``get_dlq_stats``."""
        now = self._clock()
        workers = self.workers() if self.running else []
        last_runs = [w.stats.last_run_at for w in workers if w.stats.last_run_at is not None]
        per_dest: dict[str, dict[str, Any]] = {}
        total = parked = 0
        oldest: float | None = None
        queues = self.dlq.list_queues(refresh=True)
        for queue in queues:
            status = self.dlq.status(queue)
            entry = per_dest.setdefault(
                queue.destination_id,
                {"total_messages": 0, "parked_messages": 0, "queues": 0, "_oldest": None},
            )
            entry["total_messages"] += status.messages
            entry["parked_messages"] += status.parked
            entry["queues"] += 1
            if status.oldest_enqueued_at is not None:
                if entry["_oldest"] is None or status.oldest_enqueued_at < entry["_oldest"]:
                    entry["_oldest"] = status.oldest_enqueued_at
                if oldest is None or status.oldest_enqueued_at < oldest:
                    oldest = status.oldest_enqueued_at
            total += status.messages
            parked += status.parked
        last = iso(max(last_runs)) if last_runs else None
        for destination_id, entry in per_dest.items():
            first = entry.pop("_oldest")
            entry["oldest_message_age_seconds"] = _age(now, first)
            entry["recovery_enabled"] = self.running and any(
                destination_id in w.destinations for w in workers
            )
            entry["last_recovery_attempt"] = iso(
                max(
                    (
                        w.stats.last_run_at
                        for w in workers
                        if destination_id in w.destinations and w.stats.last_run_at
                    ),
                    default=None,
                )
            )
        return {
            "total_messages": total,
            "parked_messages": parked,
            "oldest_message_age_seconds": _age(now, oldest),
            "recovery_enabled": self.running and bool(workers),
            "last_recovery_attempt": last,
            "queues": len(queues),
            "destinations": dict(sorted(per_dest.items())),
            "sources": self.source_flows(),
            "mode": self.mode,
        }

    def source_flows(self) -> list[dict[str, Any]]:
        """Per running pipeline: events delivered, events/s and its source's replication lag."""
        rows = []
        for pipeline in self._pipelines() if self._pipelines is not None else []:
            status = pipeline.status()
            rows.append(
                {
                    "pipeline": status["pipeline"],
                    "source_id": status.get("source_id"),
                    "events": status["events"],
                    "events_per_second": status.get("events_per_second"),
                    "replication_lag": status.get("source_lag"),
                }
            )
        return rows

    def health(self) -> tuple[dict[str, Any], int]:
        """Overall and per-destination health, and the HTTP status to answer with.

        ``critical`` (503): a pipeline FAILED, or is in backpressure because the
        DLQ is full: events are not flowing and nothing absorbs them; or an
        engine thread keeps crashing (``compute/runtime/supervisor.py``: 3 crashes
        within 5 minutes, or it ended for good).
        ``warning`` (200): a destination is unhealthy (the DLQ absorbs the
        outage; a 503 would make an orchestrator restart a healthy engine),
        a source's replication lag passed ``DLQ_ALERT_SOURCE_LAG_BYTES`` or
        ``DLQ_ALERT_SOURCE_LAG_SECONDS`` (or its slot is losing WAL, or the lag
        cannot be read),
        queued messages are older than 24 h, messages are parked, a queue is
        held (its table refuses every change: the queue and the cause are named), a
        damaged queue was set aside, or a thread crashed and was restarted
        within the last 5 minutes. ``healthy`` (200) otherwise.
        """
        now = self._clock()
        reasons: list[str] = []
        pipelines = []
        threads: list[dict[str, Any]] = list(self._threads()) if self._threads else []
        critical = False
        lagging = False
        for pipeline in self._pipelines() if self._pipelines is not None else []:
            status = pipeline.status()
            threads.extend(status.get("threads", []))
            pipelines.append(
                {
                    "pipeline": status["pipeline"],
                    "state": status["state"],
                    "source_id": status.get("source_id"),
                    "events": status["events"],
                    "events_per_second": status.get("events_per_second"),
                    "source_lag": status.get("source_lag"),
                    "rejected_events": status["rejected_events"],
                    "skipped_events": status.get("skipped_events", 0),
                    "backpressure_reason": status["backpressure_reason"],
                    "last_error": status["last_error"],
                }
            )
            if status["state"] in ("failed", "backpressure"):
                critical = True
                detail = status["last_error"] or status["backpressure_reason"] or ""
                reasons.append(f"pipeline {status['pipeline']} is {status['state']}: {detail}")
            lag_reasons = self._lag_reasons(status)
            reasons.extend(lag_reasons)
            lagging = lagging or bool(lag_reasons)
        # A store without quorum cannot count its queues: /health still answers,
        # naming them, when an orchestrator or an operator needs it most.
        queues, unreadable = {}, []
        for queue in self.dlq.list_queues():
            try:
                queues[queue] = self.dlq.status(queue)
            except DLQStorageError as error:
                unreadable.append(f"queue {queue} cannot be read: {error}")
        destinations = []
        warning = lagging or bool(unreadable)
        reasons.extend(unreadable)
        for (source_id, destination_id), dest in sorted(self.destination_health().items()):
            mine = [
                s
                for q, s in queues.items()
                if (q.source_id, q.destination_id) == (source_id, destination_id)
            ]
            messages = sum(s.messages for s in mine)
            parked = sum(s.parked for s in mine)
            oldest = min(
                (s.oldest_enqueued_at for s in mine if s.oldest_enqueued_at is not None),
                default=None,
            )
            age = _age(now, oldest)
            why = []
            if dest["health"] == "unhealthy":
                why.append(f"destination unhealthy: {dest['last_error']}")
            if age is not None and age > DLQ_WARNING_AGE:
                why.append(f"DLQ messages older than 24h (oldest {age:.0f}s)")
            if parked:
                why.append(f"{parked} parked message(s) wait for an operator")
            # A held queue waits for its table to be fixed; the others flow on.
            why.extend(
                f"queue {s.queue} held since {iso(s.held.since)}: {s.held.cause}"
                for s in mine
                if s.held is not None
            )
            warning = warning or bool(why)
            reasons.extend(f"destination {dest['name']} ({destination_id}): {w}" for w in why)
            destinations.append(
                {
                    "id": destination_id,
                    "name": dest["name"],
                    "pipeline": dest["pipeline"],
                    "source_id": source_id,
                    "status": "warning" if why else "healthy",
                    "health": dest["health"],
                    "since": iso(dest["since"]),
                    "last_error": dest["last_error"],
                    "messages": messages,
                    "parked": parked,
                    "oldest_message_age_seconds": age,
                    "reasons": why,
                }
            )
        damaged = self.dlq.damaged_queues()
        if damaged:
            warning = True
            reasons.append(f"{len(damaged)} damaged queue directory(ies) set aside")
        for thread in threads:
            if thread["crashing"]:
                critical = True
                reasons.append(
                    f"thread {thread['thread']} keeps crashing ({thread['state']}, "
                    f"{thread['recent_crashes']} crash(es) in {CRASH_WINDOW:.0f}s): "
                    f"{thread['last_error']}"
                )
            elif thread["recent_crashes"]:
                warning = True
                reasons.append(
                    f"thread {thread['thread']} crashed and was restarted "
                    f"({thread['restarts']} restart(s)): {thread['last_error']}"
                )
        overall = "critical" if critical else "warning" if warning else "healthy"
        body = {
            "status": overall,
            "checked_at": iso(now),
            "reasons": reasons,
            "pipelines": pipelines,
            "destinations": destinations,
            "threads": threads,
            "dlq": self._stats_or_error(),
            "damaged_queues": damaged,
        }
        owners = self.pipeline_owners()
        if owners is not None:  # engines share the pipelines: who runs each, since when
            body["owners"] = {name: owner.to_json() for name, owner in sorted(owners.items())}
        return body, 503 if critical else 200

    def _stats_or_error(self) -> dict[str, Any]:
        try:
            return self.stats()
        except DLQStorageError as error:
            return {"error": str(error)}

    def _lag_reasons(self, status: dict[str, Any]) -> list[str]:
        """Why the pipeline's source is too far behind (the alert's thresholds), if it is."""
        lag = status.get("source_lag")
        if lag is None:
            return []
        unknown: set[str] = set()
        errors: list[str] = []
        found = source_lag_findings(
            self.settings.alerts,
            [(status["pipeline"], str(status["source_id"]), ReplicationLag(**lag))],
            unknown,
            errors,
        )
        reasons = [f.summary for f in found]
        if not found and errors:
            reasons.append(
                f"replication lag of pipeline {status['pipeline']} unknown: {lag['error']}"
            )
        return reasons


def _age(now: float, when: float | None) -> float | None:
    return None if when is None else round(max(0.0, now - when), 3)
