"""examples/grafana/: the dashboard is valid Grafana JSON whose every panel takes its
Prometheus from the datasource variable, and whose every query names only metrics the
engine exports (as examples/prometheus/ is checked in test_prometheus_rules.py)."""

from __future__ import annotations

import json
import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.compute.observability.harness import exported_metric_names

DASHBOARD = (
    Path(__file__).resolve().parents[3] / "examples" / "grafana" / "rosetta_dlq_dashboard.json"
)
DATASOURCE = {"type": "prometheus", "uid": "${datasource}"}

# PromQL words that are not metric names: keywords, and what follows an aggregation.
KEYWORDS = {"by", "without", "on", "ignoring", "group_left", "group_right", "and", "or"}
KEYWORDS |= {"unless", "bool", "offset", "inf", "nan"}
LABEL_LISTS = re.compile(r"\b(?:by|without|on|ignoring|group_left|group_right)\s*\([^)]*\)")


def load() -> dict[str, Any]:
    return dict(json.loads(DASHBOARD.read_text()))


def panels(items: list[dict[str, Any]]) -> Iterator[dict[str, Any]]:
    """Every panel, those inside collapsed rows too."""
    for panel in items:
        yield panel
        yield from panels(panel.get("panels", []))


def queries(dashboard: dict[str, Any]) -> Iterator[tuple[str, str]]:
    """(where, PromQL) for every panel target and every query variable."""
    for panel in panels(dashboard["panels"]):
        for target in panel.get("targets", []):
            yield f"panel {panel['title']!r} {target['refId']}", target["expr"]
    for variable in dashboard["templating"]["list"]:
        if variable["type"] == "query":
            query = variable["query"]
            text = query["query"] if isinstance(query, dict) else query
            match = re.fullmatch(r"label_values\((.*),\s*\w+\)", text)
            assert match, f"variable {variable['name']}: expected label_values(...): {text}"
            yield f"variable {variable['name']}", match.group(1)


def metric_names(expr: str) -> set[str]:
    """The metric names a PromQL expression selects: identifiers that are not functions,
    keywords, labels (in ``{...}`` or ``by (...)``), ranges, strings or Grafana variables."""
    text = re.sub(r'"(?:[^"\\]|\\.)*"', '""', expr)  # strings (label values, regexes)
    text = re.sub(r"\{[^}]*\}", "", text)  # label matchers
    text = re.sub(r"\[[^\]]*\]", "", text)  # ranges: [5m], [$__rate_interval]
    text = LABEL_LISTS.sub("", text)
    text = re.sub(r"\$\{?\w+\}?", "", text)  # Grafana variables
    names = set()
    for match in re.finditer(r"(?<![\w.])([a-zA-Z_:][\w:]*)(\s*\()?", text):
        name, call = match.group(1), match.group(2)
        if call or name.lower() in KEYWORDS:
            continue
        names.add(name)
    return names


@pytest.fixture(scope="module")
def exported(tmp_path_factory: pytest.TempPathFactory) -> set[str]:
    return exported_metric_names(tmp_path_factory.mktemp("grafana"))


def test_every_query_uses_only_metrics_the_engine_exports(exported: set[str]) -> None:
    found = list(queries(load()))
    assert len(found) >= 20
    missing: dict[str, list[str]] = {}
    for where, expr in found:
        names = metric_names(expr)
        assert names, f"{where} selects no metric: {expr}"
        # the parser missed nothing a plain search for our prefix finds
        assert set(re.findall(r"\b(rosetta_[a-z0-9_]+)\b", expr)) <= names, where
        if names - exported:
            missing[where] = sorted(names - exported)
    assert missing == {}


def test_the_dashboard_shows_what_an_operator_watches() -> None:
    dashboard = load()
    used = {name for _, expr in queries(dashboard) for name in metric_names(expr)}
    for metric in (
        "rosetta_dlq_queue_messages",  # depth per queue
        "rosetta_dlq_oldest_message_age_seconds",  # age per queue
        "rosetta_dlq_messages_enqueued_total",  # rates
        "rosetta_dlq_messages_replayed_total",
        "rosetta_dlq_messages_parked_total",
        "rosetta_destination_up",  # health
        "rosetta_dlq_disk_usage_ratio",  # disk
        "rosetta_alerts_firing",  # alerts
    ):
        assert metric in used, metric
    timelines = [p for p in panels(dashboard["panels"]) if p["type"] == "state-timeline"]
    assert [t["targets"][0]["expr"].split("{")[0] for t in timelines] == ["rosetta_destination_up"]


def test_the_json_is_a_grafana_10_dashboard_with_a_datasource_variable() -> None:
    dashboard = load()
    assert dashboard["schemaVersion"] >= 38  # Grafana 10.0
    assert dashboard["uid"] and dashboard["title"]
    variables = {v["name"]: v for v in dashboard["templating"]["list"]}
    assert variables["datasource"]["type"] == "datasource"
    assert variables["datasource"]["query"] == "prometheus"
    for variable in variables.values():
        if variable["type"] == "query":
            assert variable["datasource"] == DATASOURCE, variable["name"]
    ids = [p["id"] for p in panels(dashboard["panels"])]
    assert len(ids) == len(set(ids)), "panel ids must be unique"
    for panel in panels(dashboard["panels"]):
        grid = panel["gridPos"]
        assert grid["x"] + grid["w"] <= 24 and grid["h"] > 0, panel["title"]
        if panel["type"] == "row":
            continue
        assert panel["datasource"] == DATASOURCE, f"panel {panel['title']!r} has no datasource"
        assert panel["targets"], panel["title"]
        for target in panel["targets"]:
            assert target["datasource"] == DATASOURCE, panel["title"]
            assert target["expr"].strip(), panel["title"]
    refs = [t["refId"] for p in panels(dashboard["panels"]) for t in p.get("targets", [])]
    assert all(re.fullmatch(r"[A-Z]", r) for r in refs)


def test_metric_names_reads_promql() -> None:
    expr = (
        'histogram_quantile(0.95, sum by (le, destination) (rate(a_bucket{x=~"b|c"}[5m]))) '
        "/ on (destination) group_left b_total or vector(0) > bool 1"
    )
    assert metric_names(expr) == {"a_bucket", "b_total"}
