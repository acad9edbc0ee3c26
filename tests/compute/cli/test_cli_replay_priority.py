"""``rosetta dlq replay --all`` replays the queues by their tables' ``priority``, higher first,
queue after queue, whatever their names and sizes: with the engine stopped (the queue
directories opened directly) and through a running engine's admin API, into a real PostgreSQL."""

from __future__ import annotations

import itertools
import json
import signal
import subprocess
from pathlib import Path
from typing import Any

import psycopg2
import pytest

from compute.dlq.manager import DLQManager
from compute.queue_id import QueueId
from config.dlq_config import DLQConfig
from tests.builders import messages, pipelines_toml, postgresql_destination
from tests.rosetta_cli import ROOT, cli_env, rosetta_command, run_rosetta
from tests.servers import PostgresServer
from tests.waiting import wait_until

# Name order (a, b, c) is the reverse of priority order, and the largest queue
# has the lowest priority: neither the names nor the sizes may decide.
PRIORITY = {"a_low": -5, "b_mid": 0, "c_high": 10}
SIZES = {"a_low": 60, "b_mid": 25, "c_high": 5}
ORDER = ["c_high", "b_mid", "a_low"]


def _tables(dsn: str) -> None:
    """One table per queue; ``arrived`` numbers the rows in the order they were written."""
    conn = psycopg2.connect(dsn)
    conn.autocommit = True
    with conn.cursor() as cur:
        cur.execute("CREATE SEQUENCE public.arrival")
        for table in PRIORITY:
            cur.execute(
                f"CREATE TABLE public.{table} (id bigint PRIMARY KEY, v bigint NOT NULL, "
                "arrived bigint NOT NULL DEFAULT nextval('public.arrival'))"
            )
    conn.close()


def _arrivals(dsn: str) -> list[tuple[str, int]]:
    """The rows written, in arrival order, as runs of (table, rows)."""
    conn = psycopg2.connect(dsn)
    with conn.cursor() as cur:
        cur.execute(
            " UNION ALL ".join(f"SELECT '{t}' AS t, arrived FROM public.{t}" for t in PRIORITY)
            + " ORDER BY arrived"
        )
        tables = [t for t, _ in cur.fetchall()]
    conn.close()
    return [(table, len(list(run))) for table, run in itertools.groupby(tables)]


def _queue_the_changes(dlq_path: Path) -> None:
    """The queues of an outage, on disk: ``SIZES[t]`` changes (keys 1..n) per table."""
    config = DLQConfig(base_path=dlq_path, min_free_disk_mb=0)
    with DLQManager(config, background=False) as dlq:
        for table, size in SIZES.items():
            queue = QueueId("1", f"public.{table}", "1")
            dlq.enqueue(queue, messages(queue, range(1, size + 1)))


def _env(tmp_path: Path, dsn: str) -> dict[str, str]:
    events = tmp_path / "events.jsonl"
    events.write_text("")
    (tmp_path / "p.toml").write_text(
        pipelines_toml(
            {"id": "1", "type": "jsonl", "path": str(events), "follow": True},
            [postgresql_destination("TEST_DEST_DSN")],
            priority=PRIORITY,
        )
    )
    return cli_env(
        DLQ_BASE_PATH=str(tmp_path / "dlq"),
        ROSETTA_STATE_PATH=str(tmp_path / "state"),
        ROSETTA_PIPELINES_FILE=str(tmp_path / "p.toml"),
        ROSETTA_ADMIN_ADDR="127.0.0.1:0",
        DLQ_MIN_FREE_DISK_MB="0",
        DLQ_BATCH_SIZE="10",
        TEST_DEST_DSN=dsn + " connect_timeout=2",
        # no automatic replay (nor the quick probes after a failure): the operator drives it
        DLQ_CHECK_INTERVAL="3600",
        DLQ_CHECK_INTERVAL_MIN="3600",
        PYTHONUNBUFFERED="1",
    )


def _replay_all(env: dict[str, str], mode: str) -> dict[str, Any]:
    result = run_rosetta(env, "dlq", "replay", "--all", "--json")
    assert result.returncode == 0, result.stderr
    assert f"rosetta: {mode}" in result.stderr, result.stderr
    return dict(json.loads(result.stdout))


def _check(replayed: dict[str, Any], dsn: str) -> None:
    # Higher priority first, each queue to its end before the next one starts.
    assert [QueueId.parse(r["queue"]).table for r in replayed["queues"]] == [
        f"public.{t}" for t in ORDER
    ]
    assert _arrivals(dsn) == [(t, SIZES[t]) for t in ORDER]
    assert replayed["replayed"] == sum(SIZES.values()) and replayed["failed"] == 0


def test_replay_all_offline_in_priority_order(tmp_path: Path, postgres_server_factory: Any) -> None:
    server: PostgresServer = postgres_server_factory()
    _tables(server.dsn)
    _queue_the_changes(tmp_path / "dlq")
    env = _env(tmp_path, server.dsn)
    _check(_replay_all(env, "offline"), server.dsn)


@pytest.mark.timeout(300)
def test_replay_all_through_the_running_engine_in_priority_order(
    tmp_path: Path, postgres_server_factory: Any
) -> None:
    server: PostgresServer = postgres_server_factory()
    _tables(server.dsn)
    _queue_the_changes(tmp_path / "dlq")
    # The destination is down while the engine starts, so its recovery worker
    # does not replay the queues by itself before the operator asks.
    server.stop("fast")
    env = _env(tmp_path, server.dsn)
    log = tmp_path / "engine.log"
    engine = subprocess.Popen(
        rosetta_command("run"),
        cwd=ROOT,
        env=env,
        stdin=subprocess.DEVNULL,
        stdout=log.open("wb"),
        stderr=subprocess.STDOUT,
    )
    try:
        wait_until(lambda: (tmp_path / "dlq" / "admin.json").exists(), 60, "the engine's admin API")
        assert engine.poll() is None, log.read_text()[-3000:]
        server.start()
        _check(_replay_all(env, "online"), server.dsn)
    finally:
        if engine.poll() is None:
            engine.send_signal(signal.SIGTERM)
            engine.wait(60)
