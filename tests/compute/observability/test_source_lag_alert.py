"""The ``source_replication_lag`` rule driven across its thresholds and back (injected lag and
time), the events/s meter, and ``/health`` warning (not critical) on lag alone."""

from __future__ import annotations

import logging
from collections.abc import Iterator
from pathlib import Path

import pytest

from compute.dlq.manager import DLQManager
from compute.engine.event_rate import EventRate
from compute.observability.alerts import AlertMonitor
from compute.sources.base import ReplicationLag
from config.admin_config import AdminConfig
from config.alert_config import AlertConfig
from tests.builders import dlq_config
from tests.compute.observability.harness import T0, start_engine
from tests.compute.observability.test_alerts import ALERTS_LOGGER, alert_lines

CONFIG = AlertConfig(
    source_lag_bytes=1000,
    source_lag_bytes_critical=5000,
    source_lag_seconds=10,
    source_lag_seconds_critical=60,
)
ALERT_ID = "source_replication_lag:p/rosetta_7"


@pytest.fixture
def dlq(tmp_path: Path) -> Iterator[DLQManager]:
    with DLQManager(dlq_config(tmp_path), background=False) as manager:
        yield manager


def lag(
    lag_bytes: int | None, seconds: float = 0.0, status: str | None = "reserved"
) -> ReplicationLag:
    error = None if lag_bytes is not None else "connection refused"
    return ReplicationLag("rosetta_7", lag_bytes, seconds, status, T0, error)


def test_warning_critical_by_bytes_or_seconds_then_resolved(
    dlq: DLQManager, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger=ALERTS_LOGGER)
    now = [lag(10)]
    monitor = AlertMonitor(CONFIG, dlq, base_path=tmp_path, sources=lambda: [("p", "7", now[0])])
    assert monitor.run_once(T0) == []
    now[0] = lag(2000)
    [event] = monitor.run_once(T0 + 1)
    assert (event.status, event.alert.severity) == ("firing", "warning")
    assert event.alert.labels == {"pipeline": "p", "source": "7", "slot": "rosetta_7"}
    assert "2000 bytes of WAL behind, above the warning threshold of 1000" in event.alert.summary
    assert "(DLQ_ALERT_SOURCE_LAG_BYTES)" in event.alert.summary
    # Seconds alone reach critical: the alert changes severity once, says both.
    now[0] = lag(2000, seconds=90)
    [event] = monitor.run_once(T0 + 2)
    assert (event.alert.severity, event.previous_severity) == ("critical", "warning")
    assert (
        "1m30s ago, above the critical threshold of 1m (DLQ_ALERT_SOURCE_LAG_SECONDS_CRITICAL)"
        in (event.alert.summary)
    )
    assert (event.alert.value, event.alert.threshold) == (90, 60)
    assert monitor.run_once(T0 + 3) == []  # unchanged: nothing reported again
    now[0] = lag(0)
    [event] = monitor.run_once(T0 + 4)
    assert event.status == "resolved"
    assert len(alert_lines(caplog, "firing", ALERT_ID)) == 1
    assert len(alert_lines(caplog, "severity changed", ALERT_ID)) == 1
    assert len(alert_lines(caplog, "resolved", ALERT_ID)) == 1
    assert monitor.firing_counts()[("source_replication_lag", "critical")] == 0


def test_a_slot_losing_wal_is_critical_whatever_the_lag(dlq: DLQManager, tmp_path: Path) -> None:
    for status in ("unreserved", "lost"):
        monitor = AlertMonitor(
            CONFIG, dlq, base_path=tmp_path, sources=lambda s=status: [("p", "7", lag(5, 0, s))]
        )
        [event] = monitor.run_once(T0)
        assert event.alert.severity == "critical"
        assert f"its wal_status is {status}" in event.alert.summary


def test_an_unreadable_lag_keeps_the_alert_as_it_was(dlq: DLQManager, tmp_path: Path) -> None:
    now = [lag(9000)]
    monitor = AlertMonitor(CONFIG, dlq, base_path=tmp_path, sources=lambda: [("p", "7", now[0])])
    [event] = monitor.run_once(T0)
    assert event.alert.severity == "critical"
    now[0] = lag(None)  # the source is unreachable: not known to be caught up
    assert monitor.run_once(T0 + 1) == []
    assert [a.id for a in monitor.active()] == [ALERT_ID]
    assert "connection refused" in str(monitor.snapshot()["check_error"])
    now[0] = lag(0)
    [event] = monitor.run_once(T0 + 2)
    assert event.status == "resolved"


def test_event_rate_over_the_last_window() -> None:
    clock = [100.0]
    rate = EventRate(window=10, clock=lambda: clock[0])
    clock[0] = 102.0
    assert rate.rate(200) == pytest.approx(100.0)  # from the start at 0
    clock[0] = 104.0
    assert rate.rate(600) == pytest.approx(150.0)
    clock[0] = 116.0  # a quiet spell: the base moves to the last sample before the window
    assert rate.rate(600) == pytest.approx(0.0)
    clock[0] = 117.0
    assert rate.rate(700) == pytest.approx(100 / 13)  # base (104, 600)
    clock[0] = 117.5  # within the resolution: no new sample, the same base
    assert rate.rate(750) == pytest.approx(150 / 13.5)


def test_health_warns_on_lag_alone_and_names_the_threshold(tmp_path: Path) -> None:
    from compute.admin.operations import DLQOperations

    h = start_engine(tmp_path, alerts=CONFIG, admin=AdminConfig(enabled=False))
    try:
        current: list[ReplicationLag | None] = [lag(0)]
        # The feed source as a replicating source would report itself.
        h.source.replication_lag = lambda: current[0]  # type: ignore[method-assign]
        ops = DLQOperations(
            h.engine.dlq,  # type: ignore[arg-type]
            h.engine.settings,
            pipelines=lambda: list(h.engine.pipelines),
            mode="online",
        )
        body, status = ops.health()
        assert (status, body["status"]) == (200, "healthy"), body["reasons"]
        current[0] = lag(3000)
        body, status = ops.health()
        assert (status, body["status"]) == (200, "warning")
        [reason] = body["reasons"]
        assert "source 1 (pipeline p, slot rosetta_7) is behind: it is 3000 bytes" in reason
        assert body["pipelines"][0]["source_lag"]["lag_bytes"] == 3000
        current[0] = lag(None)
        body, status = ops.health()
        assert (status, body["status"]) == (200, "warning")
        assert body["reasons"] == ["replication lag of pipeline p unknown: connection refused"]
        flows = ops.stats()["sources"]
        assert [(f["pipeline"], f["source_id"]) for f in flows] == [("p", "1")]
        assert flows[0]["replication_lag"]["error"] == "connection refused"
        # Not read yet (the engine just started): no reason to warn.
        current[0] = ReplicationLag("rosetta_7", None, 0.0, None, None, None)
        assert ops.health()[0]["status"] == "healthy"
    finally:
        h.engine.stop()
