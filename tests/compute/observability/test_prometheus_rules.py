"""examples/prometheus/: the alerting rules use only metrics the engine exports, with the
thresholds the engine itself alerts on, and the scrape config points at the admin API."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import pytest
import yaml

from compute.observability.alerts import RULES
from config.admin_config import AdminConfig
from config.alert_config import AlertConfig
from tests.compute.observability.harness import exported_metric_names

EXAMPLES = Path(__file__).resolve().parents[3] / "examples" / "prometheus"
RULES_FILE = EXAMPLES / "rosetta_dlq_rules.yml"

# engine rule -> Prometheus alert per severity
MATCHING = {
    ("dlq_queue_size", "warning"): "RosettaDLQQueueSizeWarning",
    ("dlq_queue_size", "critical"): "RosettaDLQQueueSizeCritical",
    ("dlq_message_age", "warning"): "RosettaDLQMessageAgeWarning",
    ("dlq_message_age", "critical"): "RosettaDLQMessageAgeCritical",
    ("destination_unhealthy", "critical"): "RosettaDestinationUnhealthy",
    ("dlq_disk_usage", "warning"): "RosettaDLQDiskUsage",
    ("dlq_damaged_queue", "critical"): "RosettaDLQDamagedQueue",
    ("dlq_queue_held", "warning"): "RosettaDLQQueueHeld",
    ("source_replication_lag", "warning"): "RosettaSourceReplicationLagWarning",
    ("source_replication_lag", "critical"): "RosettaSourceReplicationLagCritical",
}


def load_rules() -> dict[str, dict[str, Any]]:
    data = yaml.safe_load(RULES_FILE.read_text())
    rules = [rule for group in data["groups"] for rule in group["rules"]]
    by_name = {rule["alert"]: rule for rule in rules}
    assert len(by_name) == len(rules), "alert names must be unique"
    return by_name


@pytest.fixture(scope="module")
def exported_names(tmp_path_factory: pytest.TempPathFactory) -> set[str]:
    return exported_metric_names(tmp_path_factory.mktemp("rules"))


def test_every_metric_in_an_expr_is_exported(exported_names: set[str]) -> None:
    used: dict[str, set[str]] = {}
    for name, rule in load_rules().items():
        used[name] = set(re.findall(r"\b(rosetta_[a-z0-9_]+)\b", rule["expr"]))
        assert used[name], f"{name} uses no rosetta metric"
    missing = {name: sorted(m - exported_names) for name, m in used.items() if m - exported_names}
    assert missing == {}


def test_every_engine_alert_has_a_prometheus_rule_with_its_severity() -> None:
    rules = load_rules()
    engine_pairs = {(rule, s.value) for rule, levels in RULES.items() for s in levels}
    assert engine_pairs == set(MATCHING)
    for (_, severity), alert in MATCHING.items():
        assert rules[alert]["labels"]["severity"] == severity
    for rule in rules.values():
        assert rule["labels"]["severity"] in ("warning", "critical")
        assert rule["annotations"]["summary"]


def test_thresholds_are_the_engine_defaults() -> None:
    c = AlertConfig()
    rules = load_rules()

    def expr(alert: str) -> str:
        return " ".join(rules[alert]["expr"].split())

    assert expr("RosettaDLQQueueSizeWarning") == (
        f"rosetta_dlq_queue_messages > {c.queue_size} and "
        f"rosetta_dlq_queue_messages <= {c.queue_size_critical}"
    )
    assert expr("RosettaDLQQueueSizeCritical") == (
        f"rosetta_dlq_queue_messages > {c.queue_size_critical}"
    )
    assert expr("RosettaDLQMessageAgeWarning") == (
        f"rosetta_dlq_oldest_message_age_seconds > {c.max_age:g} and "
        f"rosetta_dlq_oldest_message_age_seconds <= {c.max_age_critical:g}"
    )
    assert expr("RosettaDLQMessageAgeCritical") == (
        f"rosetta_dlq_oldest_message_age_seconds > {c.max_age_critical:g}"
    )
    assert expr("RosettaDestinationUnhealthy") == (
        f"rosetta_destination_unhealthy_seconds > {c.unhealthy_seconds:g}"
    )
    assert expr("RosettaDLQDiskUsage") == f"rosetta_dlq_disk_usage_ratio > {c.disk_pct / 100:.2f}"
    critical = (
        f"rosetta_source_replication_lag_bytes > {c.source_lag_bytes_critical} or "
        f"rosetta_source_replication_lag_seconds > {c.source_lag_seconds_critical:g} or "
        'rosetta_source_replication_slot_wal_status{status=~"unreserved|lost"} == 1'
    )
    assert expr("RosettaSourceReplicationLagCritical") == critical
    assert expr("RosettaSourceReplicationLagWarning") == (
        f"(rosetta_source_replication_lag_bytes > {c.source_lag_bytes} or "
        f"rosetta_source_replication_lag_seconds > {c.source_lag_seconds:g}) "
        f"unless on (pipeline, source, slot) ({critical})"
    )


def test_scrape_config_targets_the_default_admin_address_and_loads_the_rules() -> None:
    config = yaml.safe_load((EXAMPLES / "prometheus.yml").read_text())
    for rule_file in config["rule_files"]:
        assert (EXAMPLES / rule_file).is_file()
    [job] = config["scrape_configs"]
    assert job["metrics_path"] == "/metrics"
    admin = AdminConfig()
    assert job["static_configs"][0]["targets"] == [f"{admin.host}:{admin.port}"]
