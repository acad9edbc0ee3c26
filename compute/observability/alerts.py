"""The alert monitor: evaluates the ``DLQ_ALERT_*`` thresholds and reports changes once.

Every ``DLQ_ALERT_EVAL_INTERVAL`` seconds a worker thread checks:

* ``dlq_queue_size``: messages in one queue above ``DLQ_ALERT_QUEUE_SIZE``
  (warning) or ``DLQ_ALERT_QUEUE_SIZE_CRITICAL`` (critical);
* ``dlq_message_age``: the oldest message of a queue older than
  ``DLQ_ALERT_MAX_AGE`` (warning) or ``DLQ_ALERT_MAX_AGE_CRITICAL`` (critical);
* ``destination_unhealthy``: a destination unhealthy for longer than
  ``DLQ_ALERT_UNHEALTHY_SECONDS`` (critical);
* ``dlq_disk_usage``: the filesystem holding ``DLQ_BASE_PATH`` used above
  ``DLQ_ALERT_DISK_PCT`` percent (warning);
* ``source_replication_lag``: a replicating source's slot behind by more
  than ``DLQ_ALERT_SOURCE_LAG_BYTES`` of WAL or ``DLQ_ALERT_SOURCE_LAG_SECONDS``
  (warning; ``..._CRITICAL``: critical), or losing WAL it needs (critical);
* ``dlq_queue_held``: a queue is held because its target table fails every
  change the same way (missing table or column, no unique constraint for
  the upsert, no privilege): warning, naming the cause; it resolves by itself
  when a retry after the fix goes in;
* ``dlq_damaged_queue``: a queue directory was damaged and set aside in this
  run (critical; it stays until the engine restarts, since the set-aside
  files need an operator).

Each alert has a stable id (rule and subject). A firing, a change of
severity and a resolution are each logged exactly once (ERROR for critical,
WARNING for warning, INFO for resolved) and, with ``DLQ_ALERT_WEBHOOK_URL``,
POSTed as JSON by a ``WebhookNotifier``. When a check itself fails (a queue
cannot be read), the alerts it covers stay as they were rather than being
reported resolved.
"""

from __future__ import annotations

import logging
import shutil
import socket
import threading
import time
from collections import deque
from collections.abc import Callable, Iterable
from dataclasses import replace
from pathlib import Path
from typing import Any

from compute.delivery.health import HealthSnapshot, HealthState
from compute.dlq.manager import DLQManager
from compute.observability.alert_model import (
    Alert,
    AlertEvent,
    Finding,
    Severity,
    alert_level,
    duration,
    iso,
    number,
)
from compute.observability.source_lag_rule import SOURCE_LAG, SourceLags, source_lag_findings
from compute.observability.webhook import WebhookNotifier
from compute.runtime.supervisor import Supervisor
from config.alert_config import AlertConfig

logger = logging.getLogger(__name__)

RESOLVED_HISTORY = 50


QUEUE_SIZE = "dlq_queue_size"
MESSAGE_AGE = "dlq_message_age"
DESTINATION_UNHEALTHY = "destination_unhealthy"
DISK_USAGE = "dlq_disk_usage"
DAMAGED_QUEUE = "dlq_damaged_queue"
QUEUE_HELD = "dlq_queue_held"

# Every rule and the severities it can fire with (the firing metric shows each, 0 when quiet).
RULES: dict[str, tuple[Severity, ...]] = {
    QUEUE_SIZE: (Severity.WARNING, Severity.CRITICAL),
    MESSAGE_AGE: (Severity.WARNING, Severity.CRITICAL),
    DESTINATION_UNHEALTHY: (Severity.CRITICAL,),
    DISK_USAGE: (Severity.WARNING,),
    DAMAGED_QUEUE: (Severity.CRITICAL,),
    QUEUE_HELD: (Severity.WARNING,),
    SOURCE_LAG: (Severity.WARNING, Severity.CRITICAL),
}

HealthSource = Callable[[], Iterable[tuple[str, HealthSnapshot]]]
DiskUsage = Callable[[Path], tuple[int, int, int]]


class AlertMonitor:
    """Evaluates the alert rules in its own thread; ``snapshot()`` serves ``GET /alerts``."""

    def __init__(
        self,
        config: AlertConfig,
        dlq: DLQManager,
        *,
        base_path: Path,
        destinations: HealthSource = lambda: (),
        sources: SourceLags = lambda: (),
        clock: Callable[[], float] = time.time,
        disk_usage: DiskUsage = shutil.disk_usage,
        notifier: WebhookNotifier | None = None,
    ) -> None:
        self.config = config
        self.dlq = dlq
        self.base_path = Path(base_path)
        self._destinations = destinations
        self._sources = sources
        self._clock = clock
        self._disk_usage = disk_usage
        if notifier is None and config.webhook_url:
            notifier = WebhookNotifier(config.webhook_url)
        self.notifier = notifier
        self._host = socket.gethostname()
        self._active: dict[str, Alert] = {}
        self._resolved: deque[Alert] = deque(maxlen=RESOLVED_HISTORY)
        self._evaluated_at: float | None = None
        self._last_error: str | None = None
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self.supervisor = Supervisor("alert-monitor", self._loop, self._stop)

    # ------------------------------------------------------------ lifecycle

    def start(self) -> None:
        if self.supervisor.is_alive():
            return
        if self.notifier is not None:
            self.notifier.start()
        self.supervisor.start()
        logger.info(
            "alert monitor started: interval=%.1fs webhook=%s",
            self.config.eval_interval,
            self.notifier.target if self.notifier is not None else "off",
        )

    def stop(self, timeout: float = 5.0) -> bool:
        """Stop evaluating, then the webhook sender; True if both ended within ``timeout``."""
        self._stop.set()
        stopped = self.supervisor.join(timeout)
        if self.notifier is not None:
            # Notifications are best effort: a POST in flight (up to its own
            # timeout) must not hold up a shutdown for long.
            stopped = self.notifier.stop(min(timeout, 2.0)) and stopped
        return stopped

    def supervisors(self) -> list[Supervisor]:
        """The monitor's thread, and the webhook sender's when there is one."""
        found = [self.supervisor]
        if self.notifier is not None:
            found.append(self.notifier.supervisor)
        return found

    def _loop(self) -> None:
        while not self._stop.is_set():
            try:
                self.run_once()
            except Exception:  # the monitor must outlive any single failure
                logger.exception("alert evaluation failed")
            self._stop.wait(self.config.eval_interval)

    # ------------------------------------------------------------ evaluation

    def run_once(self, now: float | None = None) -> list[AlertEvent]:
        """Evaluate every rule at ``now``; log and notify what changed; return the changes."""
        now = self._clock() if now is None else now
        with self._lock:
            findings, unknown = self._evaluate(now)
            events: list[AlertEvent] = []
            for alert_id, found in findings.items():
                old = self._active.get(alert_id)
                if old is None:
                    alert = Alert(
                        found.rule,
                        found.subject,
                        found.severity,
                        found.summary,
                        found.value,
                        found.threshold,
                        found.labels,
                        since=now,
                    )
                    events.append(AlertEvent("firing", alert))
                else:
                    alert = replace(
                        old,
                        severity=found.severity,
                        summary=found.summary,
                        value=found.value,
                        threshold=found.threshold,
                    )
                    if old.severity is not found.severity:
                        events.append(AlertEvent("firing", alert, old.severity))
                self._active[alert_id] = alert
            for alert_id, old in list(self._active.items()):
                if alert_id in findings or old.rule in unknown or old.id in unknown:
                    continue
                del self._active[alert_id]
                resolved = replace(old, resolved_at=now)
                self._resolved.appendleft(resolved)
                events.append(AlertEvent("resolved", resolved))
            self._evaluated_at = now
        for event in events:
            self._report(event, now)
        return events

    def _evaluate(self, now: float) -> tuple[dict[str, Finding], set[str]]:
        """What fires now, and which rules or alert ids could not be checked."""
        findings: dict[str, Finding] = {}
        unknown: set[str] = set()
        errors: list[str] = []
        checks: list[tuple[tuple[str, ...], Callable[[float], Iterable[Finding]]]] = [
            ((QUEUE_SIZE, MESSAGE_AGE), lambda t: self._queue_findings(t, unknown, errors)),
            ((DESTINATION_UNHEALTHY,), self._destination_findings),
            ((DISK_USAGE,), self._disk_findings),
            ((DAMAGED_QUEUE,), self._damaged_findings),
            ((QUEUE_HELD,), self._held_findings),
            (
                (SOURCE_LAG,),
                lambda t: source_lag_findings(self.config, self._sources(), unknown, errors),
            ),
        ]
        for rules, check in checks:
            try:
                for found in check(now):
                    findings[found.id] = found
            except Exception as error:
                unknown.update(rules)
                errors.append(f"{','.join(rules)}: {type(error).__name__}: {error}")
        text = "; ".join(errors) or None
        if text != self._last_error and text is not None:
            logger.warning("alert check failed, its alerts stay as they were: error=%s", text)
        self._last_error = text
        return findings, unknown

    def _queue_findings(self, now: float, unknown: set[str], errors: list[str]) -> list[Finding]:
        c = self.config
        found: list[Finding] = []
        for queue in self.dlq.list_queues():
            subject = str(queue)
            try:
                status = self.dlq.status(queue)
            except Exception as error:
                unknown.update({f"{QUEUE_SIZE}:{subject}", f"{MESSAGE_AGE}:{subject}"})
                errors.append(f"queue={subject}: {type(error).__name__}: {error}")
                continue
            labels = {
                "source": queue.source_id,
                "table": queue.table,
                "destination": queue.destination_id,
            }
            size = status.messages
            level = alert_level(size, c.queue_size, c.queue_size_critical, "DLQ_ALERT_QUEUE_SIZE")
            if level is not None:
                severity, threshold, variable = level
                found.append(
                    Finding(
                        QUEUE_SIZE,
                        subject,
                        severity,
                        f"DLQ queue {subject} holds {size} messages, above the {severity} "
                        f"threshold of {threshold:g} ({variable})",
                        size,
                        threshold,
                        labels,
                    )
                )
            age = status.oldest_age(now) or 0.0
            level = alert_level(age, c.max_age, c.max_age_critical, "DLQ_ALERT_MAX_AGE")
            if level is not None:
                severity, threshold, variable = level
                found.append(
                    Finding(
                        MESSAGE_AGE,
                        subject,
                        severity,
                        f"oldest message in DLQ queue {subject} is {duration(age)} old, above "
                        f"the {severity} threshold of {duration(threshold)} ({variable})",
                        age,
                        threshold,
                        labels,
                    )
                )
        return found

    def _destination_findings(self, now: float) -> list[Finding]:
        limit = self.config.unhealthy_seconds
        found: list[Finding] = []
        for pipeline, snap in self._destinations():
            if snap.state is not HealthState.UNHEALTHY:
                continue
            down_for = max(0.0, now - snap.since)
            if down_for <= limit:
                continue
            reason = f": {snap.last_error}" if snap.last_error else ""
            found.append(
                Finding(
                    DESTINATION_UNHEALTHY,
                    f"{pipeline}/{snap.destination_id}",
                    Severity.CRITICAL,
                    f"destination {snap.name} (ID={snap.destination_id}, pipeline {pipeline}) "
                    f"has been unhealthy for {duration(down_for)}, above the threshold of "
                    f"{duration(limit)} (DLQ_ALERT_UNHEALTHY_SECONDS){reason}",
                    down_for,
                    limit,
                    {"pipeline": pipeline, "destination": snap.destination_id, "name": snap.name},
                )
            )
        return found

    def _disk_findings(self, now: float) -> list[Finding]:
        total, used, free = self._disk_usage(self.base_path)
        usable = used + free
        percent = 100.0 * used / usable if usable > 0 else 0.0
        if percent <= self.config.disk_pct:
            return []
        subject = str(self.base_path)
        return [
            Finding(
                DISK_USAGE,
                subject,
                Severity.WARNING,
                f"filesystem of the DLQ base path {subject} is {percent:.1f}% used "
                f"({free} bytes free), above the threshold of {self.config.disk_pct:g}% "
                "(DLQ_ALERT_DISK_PCT)",
                round(percent, 2),
                self.config.disk_pct,
                {"path": subject},
            )
        ]

    def _damaged_findings(self, now: float) -> list[Finding]:
        return [
            Finding(
                DAMAGED_QUEUE,
                item["queue"],
                Severity.CRITICAL,
                f"DLQ queue {item['queue']} was damaged and set aside to {item['moved_to']} "
                f"(its messages are not replayed until an operator acts): {item['reason']}",
                1,
                0,
                {"queue": item["queue"], "moved_to": item["moved_to"]},
            )
            for item in self.dlq.damaged_queues()
        ]

    def _held_findings(self, now: float) -> list[Finding]:
        found = []
        for queue, hold in sorted(self.dlq.holds.all().items(), key=lambda item: str(item[0])):
            held_for = max(0.0, now - hold.since)
            found.append(
                Finding(
                    QUEUE_HELD,
                    str(queue),
                    Severity.WARNING,
                    f"DLQ queue {queue} is held for {duration(held_for)}: its target table "
                    f"refuses every change ({hold.cause}); its changes wait in order and are "
                    "retried until the table is fixed",
                    round(held_for, 3),
                    0,
                    {
                        "source": queue.source_id,
                        "table": queue.table,
                        "destination": queue.destination_id,
                        "error_class": hold.error_class,
                        "code": hold.code or "",
                    },
                )
            )
        return found

    # ------------------------------------------------------------ reporting

    def _report(self, event: AlertEvent, now: float) -> None:
        alert = event.alert
        value, threshold = number(alert.value), number(alert.threshold)
        if event.status == "resolved":
            logger.info(
                "alert resolved: alert=%s severity=%s subject=%s firing_for=%s",
                alert.rule,
                alert.severity,
                alert.subject,
                duration(max(0.0, now - alert.since)),
            )
        elif event.previous_severity is not None:
            logger.log(
                _log_level(alert.severity),
                "alert severity changed: alert=%s severity=%s previous=%s subject=%s value=%s "
                "threshold=%s summary=%s",
                alert.rule,
                alert.severity,
                event.previous_severity,
                alert.subject,
                value,
                threshold,
                alert.summary,
            )
        else:
            logger.log(
                _log_level(alert.severity),
                "alert firing: alert=%s severity=%s subject=%s value=%s threshold=%s summary=%s",
                alert.rule,
                alert.severity,
                alert.subject,
                value,
                threshold,
                alert.summary,
            )
        if self.notifier is not None:
            self.notifier.send(event.payload(self._host))

    # ------------------------------------------------------------ inspection

    def active(self) -> list[Alert]:
        """Firing alerts, critical first."""
        with self._lock:
            alerts = list(self._active.values())
        return sorted(alerts, key=lambda a: (a.severity is not Severity.CRITICAL, a.id))

    def firing_counts(self) -> dict[tuple[str, str], int]:
        """Firing alerts per (rule, severity), zero included for every possible pair."""
        counts = {(rule, s.value): 0 for rule, levels in RULES.items() for s in levels}
        for alert in self.active():
            key = (alert.rule, alert.severity.value)
            counts[key] = counts.get(key, 0) + 1
        return counts

    def snapshot(self) -> dict[str, Any]:
        """Active and recently resolved alerts, thresholds and webhook state (``GET /alerts``)."""
        c = self.config
        with self._lock:
            resolved = [a.to_json() for a in self._resolved]
            evaluated_at = self._evaluated_at
            last_error = self._last_error
        return {
            "evaluated_at": iso(evaluated_at),
            "active": [a.to_json() for a in self.active()],
            "resolved": resolved,
            "thresholds": {
                "queue_size": c.queue_size,
                "queue_size_critical": c.queue_size_critical,
                "max_age_seconds": c.max_age,
                "max_age_critical_seconds": c.max_age_critical,
                "unhealthy_seconds": c.unhealthy_seconds,
                "disk_pct": c.disk_pct,
                "source_lag_bytes": c.source_lag_bytes,
                "source_lag_bytes_critical": c.source_lag_bytes_critical,
                "source_lag_seconds": c.source_lag_seconds,
                "source_lag_seconds_critical": c.source_lag_seconds_critical,
                "eval_interval_seconds": c.eval_interval,
            },
            "check_error": last_error,
            "webhook": self.notifier.status() if self.notifier is not None else None,
        }


def _log_level(severity: Severity) -> int:
    return logging.ERROR if severity is Severity.CRITICAL else logging.WARNING
