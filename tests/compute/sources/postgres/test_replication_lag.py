"""Replication lag of a PostgreSQL source, seen by an operator of ``rosetta run``: it grows
while the destination is down and the pipeline is in backpressure, and falls once the
destination is back, in ``GET /metrics``, ``GET /health``, ``rosetta dlq stats``,
``rosetta top`` and the ``source_replication_lag`` alert (firing, turning critical, then
resolved)."""

from __future__ import annotations

import json
import subprocess
import time
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any

import psycopg2

from compute.admin.discovery import DISCOVERY_FILE
from compute.sources.postgres.slot_lag import SlotLagProbe
from tests.builders import pipelines_toml, postgresql_destination
from tests.compute.observability.harness import parse, sample
from tests.compute.sources.postgres.pg_source_helpers import (
    execute,
    logical_server,
    query,
    source_and_target,
)
from tests.rosetta_cli import cli_env, run_rosetta, start_rosetta
from tests.waiting import wait_until

ITEMS = "CREATE TABLE public.items (id int PRIMARY KEY, pad text)"
LAG = {"pipeline": "p", "source": "7", "slot": "rosetta_7"}
WARNING_BYTES = 256 * 1024
CRITICAL_BYTES = 4 * 1024 * 1024


def _get(url: str) -> tuple[int, str]:
    try:
        with urllib.request.urlopen(url, timeout=10) as response:
            return response.status, response.read().decode()
    except urllib.error.HTTPError as error:  # GET /health answers 503 when critical
        return error.code, error.read().decode()


def _insert(dsn: str, start: int, count: int) -> None:
    # About 300 bytes of WAL per row.
    execute(
        dsn,
        f"INSERT INTO items SELECT g, repeat('x', 200) || g "
        f"FROM generate_series({start}, {start + count - 1}) g",
    )


class RunningEngine:
    """``rosetta run`` as a child process, read through its admin API and the CLI."""

    def __init__(self, env: dict[str, str], base: Path) -> None:
        self.env = env
        self.process = start_rosetta(env, "run")
        discovery = base / DISCOVERY_FILE
        wait_until(discovery.exists, 60, "the engine's admin API is up")
        self.url = json.loads(discovery.read_text())["url"].rstrip("/")

    def metrics(self) -> dict[tuple[str, frozenset[tuple[str, str]]], float]:
        status, text = _get(self.url + "/metrics")
        assert status == 200
        return parse(text)

    def lag(self, metric: str) -> float | None:
        return sample(self.metrics(), f"rosetta_source_replication_lag_{metric}", **LAG)

    def wait_caught_up(self) -> None:
        """Wait until a read of the slot made after this call finds it under the warning
        threshold in bytes with no transaction waiting (a read from before the last insert
        says nothing)."""
        asked = time.time()

        def check() -> bool:
            lag = self.health()[1]["pipelines"][0]["source_lag"]
            fresh = lag["checked_at"] is not None and lag["checked_at"] > asked
            behind = lag["lag_bytes"]
            return (
                fresh and behind is not None and behind < WARNING_BYTES and not lag["lag_seconds"]
            )

        wait_until(check, 60, "the slot is read caught up")

    def health(self) -> tuple[int, dict[str, Any]]:
        status, text = _get(self.url + "/health")
        return status, json.loads(text)

    def alert(self) -> dict[str, Any] | None:
        _, text = _get(self.url + "/alerts")
        active = [a for a in json.loads(text)["active"] if a["alert"] == "source_replication_lag"]
        return active[0] if active else None

    def resolved(self) -> list[dict[str, Any]]:
        _, text = _get(self.url + "/alerts")
        return [a for a in json.loads(text)["resolved"] if a["alert"] == "source_replication_lag"]

    def stats(self) -> dict[str, Any]:
        result = run_rosetta(self.env, "dlq", "stats", "--json", timeout=60)
        assert result.returncode == 0, result.stderr[-2000:]
        [source] = json.loads(result.stdout)["sources"]
        return dict(source)

    def top(self) -> dict[str, str]:
        """The pipeline's row in the sources table of ``rosetta top --once``, by column."""
        result = run_rosetta(self.env | {"COLUMNS": "160"}, "top", "--once", "--interval", "0.1")
        assert result.returncode == 0, result.stderr[-2000:]
        table = result.stdout[result.stdout.index("Sources (replication lag)") :]
        lines = [line.strip() for line in table.splitlines()]

        def cells(border: str) -> list[str]:  # the heading's border is bold, the rows' thin
            line = next(ln for ln in lines if ln[:1] == border)
            return [cell.strip() for cell in line.strip(border).split(border)]

        heading, row = cells("┃"), cells("│")
        assert row[0] == "p", table
        return dict(zip(heading, row, strict=True))

    def stop(self) -> str:
        self.process.terminate()
        try:
            out, _ = self.process.communicate(timeout=60)
        except subprocess.TimeoutExpired:
            self.process.kill()
            out, _ = self.process.communicate()
        return out


def start_engine(tmp_path: Path, source_dsn: str, target_dsn: str, **env: str) -> RunningEngine:
    """``rosetta run`` replicating source "7" (slot rosetta_7) into the target, its lag read
    every 0.3 s and its alerts evaluated every 0.2 s; ``env`` adds or overrides settings."""
    source = {
        "id": "7",
        "type": "postgresql",
        "dsn_env": "SOURCE_DSN",
        "snapshot": "never",
        "status_interval": 0.5,
        "lag_interval": 0.3,
    }
    (tmp_path / "p.toml").write_text(pipelines_toml(source, [postgresql_destination("DSN")]))
    base = tmp_path / "dlq"
    settings = {
        "DLQ_BASE_PATH": str(base),
        "ROSETTA_STATE_PATH": str(tmp_path / "state"),
        "ROSETTA_ADMIN_ADDR": "127.0.0.1:0",
        "ROSETTA_PIPELINES_FILE": str(tmp_path / "p.toml"),
        "DLQ_MIN_FREE_DISK_MB": "0",
        "DLQ_CHECK_INTERVAL": "0.5",
        "DLQ_CHECK_INTERVAL_MIN": "0.2",
        "DLQ_ALERT_EVAL_INTERVAL": "0.2",
        "SOURCE_DSN": source_dsn,
        "DSN": target_dsn,
    }
    return RunningEngine(cli_env(**(settings | env)), base)


def _replicate_first_rows(engine: RunningEngine, source: str, target: str, rows: int) -> None:
    """Insert ``rows`` rows at the source, see them at the target, the slot confirmed."""
    _insert(source, 0, rows)
    wait_until(
        lambda: query(target, "SELECT count(*) FROM items") == [(rows,)],
        30,
        "the first rows replicate",
    )
    engine.wait_caught_up()


def test_lag_grows_in_backpressure_and_falls_after_in_metrics_health_stats_and_alerts(
    tmp_path: Path, postgres_server_factory
) -> None:
    source_server, target = source_and_target(postgres_server_factory, ITEMS)
    engine = start_engine(
        tmp_path,
        source_server.dsn,
        target.dsn,
        DLQ_MAX_QUEUE_MESSAGES="50",  # the DLQ fills at once: backpressure
        DLQ_ALERT_SOURCE_LAG_BYTES=str(WARNING_BYTES),
        DLQ_ALERT_SOURCE_LAG_BYTES_CRITICAL=str(CRITICAL_BYTES),
        DLQ_ALERT_SOURCE_LAG_SECONDS="3600",
    )
    env = engine.env
    log = ""
    try:
        # Flowing: everything replicates, the slot is confirmed, nothing is behind.
        _replicate_first_rows(engine, source_server.dsn, target.dsn, 1000)
        samples = engine.metrics()
        slot_status = {
            status: sample(
                samples, "rosetta_source_replication_slot_wal_status", **LAG, status=status
            )
            for status in ("reserved", "extended", "unreserved", "lost")
        }
        assert slot_status == {"reserved": 1, "extended": 0, "unreserved": 0, "lost": 0}
        assert sample(samples, "rosetta_source_replication_lag_known", **LAG) == 1
        assert sample(samples, "rosetta_pipeline_events_total", pipeline="p") == 1000
        assert sample(samples, "rosetta_pipeline_events_per_second", pipeline="p") is not None
        status, health = engine.health()
        assert (status, health["status"]) == (200, "healthy"), health["reasons"]
        assert health["pipelines"][0]["source_lag"]["wal_status"] == "reserved"
        # The first insert's WAL may have passed the warning level for a moment.
        wait_until(lambda: engine.alert() is None, 10, "no lag alert while flowing")

        # The destination goes down; the DLQ fills; the pipeline stops reading; the
        # source keeps writing: the slot falls behind, in bytes and in seconds.
        target.stop("immediate")
        for start in range(1000, 21_000, 1000):
            _insert(source_server.dsn, start, 1000)
        wait_until(
            lambda: engine.health()[1]["pipelines"][0]["state"] == "backpressure",
            60,
            "the pipeline is in backpressure",
        )
        wait_until(
            lambda: (engine.lag("bytes") or 0) > CRITICAL_BYTES, 30, "the lag passes critical"
        )
        first_seconds = engine.lag("seconds")
        assert first_seconds is not None and first_seconds > 0
        wait_until(
            lambda: (engine.lag("seconds") or 0) > first_seconds + 1, 10, "the lag in seconds grows"
        )
        alert = engine.alert()
        assert alert is not None and alert["severity"] == "critical", alert
        assert alert["labels"] == LAG
        assert alert["threshold"] == CRITICAL_BYTES and alert["value"] > CRITICAL_BYTES
        assert "bytes of WAL behind" in alert["summary"]
        assert "DLQ_ALERT_SOURCE_LAG_BYTES_CRITICAL" in alert["summary"]
        status, health = engine.health()
        assert status == 503 and health["status"] == "critical"  # backpressure is critical
        assert any("bytes of WAL behind" in r for r in health["reasons"]), health["reasons"]
        assert health["pipelines"][0]["source_lag"]["lag_bytes"] > CRITICAL_BYTES
        stats = engine.stats()
        assert stats["pipeline"] == "p" and stats["source_id"] == "7"
        assert stats["replication_lag"]["slot"] == "rosetta_7"
        assert stats["replication_lag"]["lag_bytes"] > CRITICAL_BYTES
        assert stats["replication_lag"]["lag_seconds"] > 0
        assert stats["replication_lag"]["wal_status"] in ("reserved", "extended")
        human = run_rosetta(env, "dlq", "stats", timeout=60)
        assert human.returncode == 0 and "Sources" in human.stdout and "rosetta_7" in human.stdout
        shown = engine.top()
        assert shown["slot"] == "rosetta_7" and shown["source"] == "7"
        assert shown["lag bytes"].endswith("MiB") and shown["lag"] != "0.0s"
        assert shown["wal status"] in ("reserved", "extended")

        # The destination is back: the DLQ drains, the pipeline reads again, the slot
        # catches up, and the alert resolves.
        target.start()
        wait_until(
            lambda: (
                (sample(engine.metrics(), "rosetta_pipeline_events_per_second", pipeline="p") or 0)
                > 0
            ),
            60,
            "events flow again (events/s above 0)",
        )
        wait_until(
            lambda: query(target.dsn, "SELECT count(*) FROM items") == [(21_000,)],
            120,
            "every row reaches the destination",
        )
        engine.wait_caught_up()  # under the warning threshold
        wait_until(lambda: engine.alert() is None, 30, "the alert resolves")
        # Critical while far behind; on the way down it may pass through warning.
        assert engine.resolved()[0]["severity"] in ("warning", "critical")
        status, health = engine.health()
        assert (status, health["status"]) == (200, "healthy"), health["reasons"]
        stats = engine.stats()
        assert stats["events"] >= 21_000
        assert stats["replication_lag"]["lag_bytes"] < WARNING_BYTES
        assert stats["replication_lag"]["lag_seconds"] == 0
        assert engine.top()["lag"] == "0.0s"
    finally:
        log = engine.stop()
    assert "alert firing: alert=source_replication_lag" in log
    assert "alert resolved: alert=source_replication_lag" in log
    assert "Traceback" not in log
    assert query(source_server.dsn, "SELECT count(*) FROM items") == [(21_000,)]


def test_a_stuck_destination_write_makes_health_warn_on_lag_in_seconds_then_clear(
    tmp_path: Path, postgres_server_factory
) -> None:
    """No backpressure: a write waits on a lock at the destination (the live-write deadline
    is long), nothing is confirmed, the lag in seconds passes its warning level: /health
    answers 200 "warning" naming it, the alert is a warning; the lock goes, both clear."""
    source_server, target = source_and_target(postgres_server_factory, ITEMS)
    engine = start_engine(
        tmp_path,
        source_server.dsn,
        target.dsn,
        DLQ_LIVE_WRITE_DEADLINE_MS="60000",
        DLQ_ALERT_SOURCE_LAG_SECONDS="2",
    )
    lock = psycopg2.connect(target.dsn)
    log = ""
    try:
        _replicate_first_rows(engine, source_server.dsn, target.dsn, 10)
        with lock.cursor() as cur:
            cur.execute("LOCK TABLE items IN ACCESS EXCLUSIVE MODE")
        _insert(source_server.dsn, 10, 10)
        wait_until(lambda: (engine.lag("seconds") or 0) > 2.5, 30, "the lag passes 2 s")
        status, health = engine.health()
        assert (status, health["status"]) == (200, "warning"), health
        assert health["pipelines"][0]["state"] == "running"
        [reason] = [r for r in health["reasons"] if "is behind" in r]
        assert "source 7 (pipeline p, slot rosetta_7) is behind: its oldest unconfirmed " in reason
        assert "above the warning threshold of 2.0s (DLQ_ALERT_SOURCE_LAG_SECONDS)" in reason
        wait_until(lambda: engine.alert() is not None, 10, "the alert fires")
        alert = engine.alert()
        assert alert is not None and alert["severity"] == "warning"
        lock.rollback()
        wait_until(
            lambda: query(target.dsn, "SELECT count(*) FROM items") == [(20,)],
            30,
            "the held rows arrive",
        )
        engine.wait_caught_up()
        wait_until(lambda: engine.alert() is None, 10, "the alert resolves")
        status, health = engine.health()
        assert (status, health["status"]) == (200, "healthy"), health["reasons"]
    finally:
        lock.close()
        log = engine.stop()
    assert "alert resolved: alert=source_replication_lag" in log


def test_the_probe_reports_a_missing_slot_and_a_down_server_then_recovers(
    postgres_server_factory,
) -> None:
    server = logical_server(postgres_server_factory)
    missing = SlotLagProbe(server.dsn, "nowhere").run_once()
    assert missing.lag_bytes is None
    assert missing.error == "replication slot 'nowhere' does not exist on the source"
    execute(server.dsn, "SELECT pg_create_logical_replication_slot('lagging', 'pgoutput')")
    execute(server.dsn, ITEMS)
    probe = SlotLagProbe(server.dsn, "lagging")
    try:
        before = probe.run_once()
        assert before.error is None and before.wal_status == "reserved"
        _insert(server.dsn, 0, 1000)  # nobody reads the slot: all of it is behind
        after = probe.run_once()
        assert after.lag_bytes is not None and before.lag_bytes is not None
        assert after.lag_bytes - before.lag_bytes > 200 * 1000
        server.stop("immediate")
        down = probe.run_once()
        assert (down.lag_bytes, down.wal_status) == (None, None)
        assert down.error
        server.start()
        again = probe.run_once()
        assert again.error is None and again.lag_bytes is not None
        assert again.lag_bytes >= after.lag_bytes
    finally:
        probe.stop()
