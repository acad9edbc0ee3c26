"""Alert rules driven across their thresholds and back with injected time: one log line per
firing, severity change and resolution; snapshot() for GET /alerts; the firing metric."""

from __future__ import annotations

import logging
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest

from compute.delivery.health import DestinationHealth, HealthSnapshot
from compute.dlq.manager import DLQManager
from compute.errors import DLQStorageError
from compute.observability.alerts import AlertEvent, AlertMonitor
from compute.observability.metrics import DLQMetrics
from compute.queue_id import QueueId
from config.alert_config import AlertConfig
from config.dlq_config import DLQConfig
from tests.builders import dlq_config
from tests.compute.observability.harness import QUEUE, T0, Disk, drain, enqueue, parse, sample
from tests.fakes import FakeDestination

ALERTS_LOGGER = "compute.observability.alerts"


@pytest.fixture
def dlq(tmp_path: Path) -> Iterator[DLQManager]:
    with DLQManager(dlq_config(tmp_path), background=False) as manager:
        yield manager


def monitor_for(
    dlq: DLQManager,
    tmp_path: Path,
    config: AlertConfig,
    *,
    health: list[tuple[str, DestinationHealth]] | None = None,
    disk: Disk | None = None,
) -> AlertMonitor:
    def destinations() -> list[tuple[str, HealthSnapshot]]:
        return [(name, h.snapshot()) for name, h in health or []]

    return AlertMonitor(
        config,
        dlq,
        base_path=tmp_path / "dlq",
        destinations=destinations,
        disk_usage=disk or Disk(10),
    )


def alert_lines(caplog: pytest.LogCaptureFixture, kind: str, alert_id: str) -> list[str]:
    """Log lines of ``kind`` ("firing", "severity changed", "resolved") for ``alert_id``."""
    rule, subject = alert_id.split(":", 1)
    return [
        r.getMessage()
        for r in caplog.records
        if r.name == ALERTS_LOGGER
        and r.getMessage().startswith(f"alert {kind}:")
        and f"alert={rule} " in r.getMessage()
        and f"subject={subject} " in r.getMessage() + " "
    ]


def firing_metric(metrics: DLQMetrics, rule: str, severity: str) -> float | None:
    return sample(
        parse(metrics.render()[0].decode()), "rosetta_alerts_firing", alert=rule, severity=severity
    )


def test_queue_size_warning_critical_and_resolution(
    dlq: DLQManager, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger=ALERTS_LOGGER)
    monitor = monitor_for(dlq, tmp_path, AlertConfig(queue_size=5, queue_size_critical=10))
    metrics = DLQMetrics(dlq, base_path=tmp_path, process_metrics=False)
    metrics.alerts = monitor
    alert_id = f"dlq_queue_size:{QUEUE}"

    enqueue(dlq, 5, T0)
    assert monitor.run_once(T0) == []  # at the threshold: not above it
    assert firing_metric(metrics, "dlq_queue_size", "warning") == 0

    enqueue(dlq, 1, T0)
    [event] = monitor.run_once(T0 + 10)
    assert (event.status, event.alert.id, event.alert.severity) == ("firing", alert_id, "warning")
    assert monitor.run_once(T0 + 20) == []  # still firing: nothing new to say
    [line] = alert_lines(caplog, "firing", alert_id)
    assert "value=6 threshold=5" in line and "DLQ_ALERT_QUEUE_SIZE" in line
    assert [r.levelno for r in caplog.records if r.getMessage() == line] == [logging.WARNING]
    assert firing_metric(metrics, "dlq_queue_size", "warning") == 1

    [active] = monitor.snapshot()["active"]
    assert active["id"] == alert_id
    assert active["severity"] == "warning"
    assert active["value"] == 6 and active["threshold"] == 5
    assert active["labels"] == {"source": "1", "table": QUEUE.table, "destination": "2"}
    assert str(QUEUE) in active["summary"] and "6 messages" in active["summary"]
    assert active["since"].startswith("2027-01-15T08:00:10")

    enqueue(dlq, 5, T0)  # 11 > 10
    [event] = monitor.run_once(T0 + 30)
    assert (event.status, event.alert.severity, event.previous_severity) == (
        "firing",
        "critical",
        "warning",
    )
    monitor.run_once(T0 + 40)
    [line] = alert_lines(caplog, "severity changed", alert_id)
    assert "severity=critical previous=warning" in line and "value=11 threshold=10" in line
    assert [r.levelno for r in caplog.records if r.getMessage() == line] == [logging.ERROR]
    assert firing_metric(metrics, "dlq_queue_size", "critical") == 1
    assert firing_metric(metrics, "dlq_queue_size", "warning") == 0
    assert monitor.snapshot()["active"][0]["since"] == active["since"]  # firing since then

    drain(dlq, 8)  # 3 left
    [event] = monitor.run_once(T0 + 50)
    assert (event.status, event.alert.id) == ("resolved", alert_id)
    assert monitor.run_once(T0 + 60) == []
    assert len(alert_lines(caplog, "resolved", alert_id)) == 1
    assert len(alert_lines(caplog, "firing", alert_id)) == 1
    snapshot = monitor.snapshot()
    assert snapshot["active"] == []
    [resolved] = snapshot["resolved"]
    assert resolved["id"] == alert_id and resolved["resolved_at"].startswith("2027-01-15T08:00:50")
    assert firing_metric(metrics, "dlq_queue_size", "critical") == 0


def test_message_age_warning_critical_and_resolution(
    dlq: DLQManager, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger=ALERTS_LOGGER)
    monitor = monitor_for(dlq, tmp_path, AlertConfig())  # 1 h warning, 24 h critical
    alert_id = f"dlq_message_age:{QUEUE}"
    enqueue(dlq, 3, T0)
    assert monitor.run_once(T0 + 3600) == []
    [event] = monitor.run_once(T0 + 3601)
    assert event.alert.severity == "warning" and event.alert.id == alert_id
    assert (
        "is 1h1s old, above the warning threshold of 1h" in event.alert.summary
        and "DLQ_ALERT_MAX_AGE)" in event.alert.summary
    )
    [event] = monitor.run_once(T0 + 86401)
    assert event.alert.severity == "critical" and event.previous_severity == "warning"
    assert "DLQ_ALERT_MAX_AGE_CRITICAL" in event.alert.summary
    drain(dlq, 3)
    [event] = monitor.run_once(T0 + 86402)
    assert event.status == "resolved"
    assert [
        len(alert_lines(caplog, k, alert_id)) for k in ("firing", "severity changed", "resolved")
    ] == [1, 1, 1]


def test_destination_unhealthy_longer_than_the_threshold(
    dlq: DLQManager, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger=ALERTS_LOGGER)
    health = DestinationHealth(FakeDestination("2", "PG"))
    monitor = monitor_for(dlq, tmp_path, AlertConfig(), health=[("orders", health)])
    health.mark_unhealthy("OperationalError: connection refused", now=T0)
    assert monitor.run_once(T0 + 300) == []  # 5 min exactly: not longer
    [event] = monitor.run_once(T0 + 301)
    alert = event.alert
    assert alert.id == "destination_unhealthy:orders/2"
    assert alert.severity == "critical"
    assert "PG (ID=2, pipeline orders)" in alert.summary
    assert "5m1s" in alert.summary and "connection refused" in alert.summary
    assert alert.labels == {"pipeline": "orders", "destination": "2", "name": "PG"}
    assert monitor.run_once(T0 + 900) == []
    health.mark_healthy(now=T0 + 901)
    [event] = monitor.run_once(T0 + 902)
    assert event.status == "resolved"
    [line] = alert_lines(caplog, "resolved", alert.id)
    assert "firing_for=10m1s" in line
    assert len(alert_lines(caplog, "firing", alert.id)) == 1
    health.mark_unhealthy("down again", now=T0 + 1000)
    assert monitor.run_once(T0 + 1200) == []  # a new outage starts its own clock


def test_disk_usage_above_the_threshold(
    dlq: DLQManager, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger=ALERTS_LOGGER)
    disk = Disk(79.5)
    monitor = monitor_for(dlq, tmp_path, AlertConfig(disk_pct=80), disk=disk)
    assert monitor.run_once(T0) == []
    disk.percent = 85
    [event] = monitor.run_once(T0 + 1)
    assert event.alert.rule == "dlq_disk_usage" and event.alert.severity == "warning"
    assert event.alert.subject == str(tmp_path / "dlq")
    assert "85.0% used" in event.alert.summary and "80%" in event.alert.summary
    disk.percent = 90
    assert monitor.run_once(T0 + 2) == []  # same severity: no new line
    assert monitor.snapshot()["active"][0]["value"] == 90
    disk.percent = 70
    [event] = monitor.run_once(T0 + 3)
    assert event.status == "resolved"
    assert len(alert_lines(caplog, "firing", event.alert.id)) == 1
    assert len(alert_lines(caplog, "resolved", event.alert.id)) == 1


def test_disk_usage_of_the_real_filesystem(dlq: DLQManager, tmp_path: Path) -> None:
    config = AlertConfig(disk_pct=0.0001)  # any real filesystem is fuller than that
    monitor = AlertMonitor(config, dlq, base_path=tmp_path / "dlq")
    [event] = monitor.run_once(T0)
    assert event.alert.rule == "dlq_disk_usage"
    assert 0 < event.alert.value <= 100


def test_damaged_queue_fires_critical(tmp_path: Path) -> None:
    base = tmp_path / "dlq"
    bad = QueueId("1", "public.bad", "1")
    config = DLQConfig(base_path=base, min_free_disk_mb=0)
    with DLQManager(config, background=False) as dlq:
        enqueue(dlq, 2, T0, bad)
    [segment] = [p for p in (base / bad.relative_path).iterdir() if p.name.startswith("seg_")]
    (segment / "CURRENT").write_text("MANIFEST-999999\n")
    with DLQManager(config, background=False) as dlq:
        monitor = AlertMonitor(AlertConfig(), dlq, base_path=base, disk_usage=Disk(10))
        assert dlq.status(bad).messages == 0  # opening it finds the damage and sets it aside
        [event] = monitor.run_once(T0)
        assert event.alert.id == f"dlq_damaged_queue:{bad}"
        assert event.alert.severity == "critical"
        assert "quarantine" in event.alert.summary
        assert monitor.run_once(T0 + 10) == []


def test_a_failed_check_keeps_its_alerts(
    dlq: DLQManager,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    caplog: pytest.LogCaptureFixture,
) -> None:
    monitor = monitor_for(dlq, tmp_path, AlertConfig(queue_size=1, queue_size_critical=5))
    enqueue(dlq, 3, T0)
    [event] = monitor.run_once(T0)

    def broken(queue: QueueId) -> None:
        raise DLQStorageError("the DLQ store is closed")

    monkeypatch.setattr(dlq, "status", broken)
    assert monitor.run_once(T0 + 10) == []  # unknown is not resolved
    assert [a.id for a in monitor.active()] == [event.alert.id]
    assert "the DLQ store is closed" in (monitor.snapshot()["check_error"] or "")
    monkeypatch.undo()
    drain(dlq, 3)
    [event] = monitor.run_once(T0 + 20)
    assert event.status == "resolved"
    assert monitor.snapshot()["check_error"] is None


def test_worker_thread_evaluates_on_its_own_and_stops_at_once(
    dlq: DLQManager, tmp_path: Path
) -> None:
    monitor = monitor_for(dlq, tmp_path, AlertConfig(queue_size=1, eval_interval=0.05))
    enqueue(dlq, 2, T0)
    seen = threading.Event()
    original = monitor._report

    def report(event: AlertEvent, now: float) -> None:
        original(event, now)
        seen.set()

    monitor._report = report  # type: ignore[method-assign]
    monitor.start()
    try:
        assert seen.wait(30)
        assert [a.rule for a in monitor.active()] == ["dlq_queue_size"]
    finally:
        assert monitor.stop(timeout=30)


def test_thresholds_come_from_the_environment(tmp_path: Path) -> None:
    from config.settings import load_settings

    env = {
        "DLQ_ALERT_QUEUE_SIZE": "2",
        "DLQ_ALERT_QUEUE_SIZE_CRITICAL": "4",
        "DLQ_BASE_PATH": str(tmp_path / "dlq"),
        "DLQ_MIN_FREE_DISK_MB": "0",
    }
    settings = load_settings(env, dotenv_path=tmp_path / "absent.env")
    with DLQManager(settings.dlq, background=False) as dlq:
        monitor = AlertMonitor(
            settings.alerts, dlq, base_path=settings.dlq.base_path, disk_usage=Disk(10)
        )
        enqueue(dlq, 3, T0)
        [event] = monitor.run_once(T0)
        assert event.alert.threshold == 2 and "DLQ_ALERT_QUEUE_SIZE)" in event.alert.summary
        assert monitor.snapshot()["thresholds"]["queue_size_critical"] == 4
