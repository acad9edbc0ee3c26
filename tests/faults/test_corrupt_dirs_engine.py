"""``rosetta run`` on a base path with a damaged queue: no crash-loop, the others reach PostgreSQL.

The engine is started several times in a row, as a supervisor would after
each exit: every run exits 0, the damaged queue is set aside once (by the
first run) and every other queue, plus the new events, arrive in PostgreSQL.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

from compute.dlq_manager import DLQManager
from compute.dlq_message import DLQMessage, FailureContext
from compute.queue_id import QueueId
from config.settings import DLQConfig
from tests.compute.helpers import change

ROOT = Path(__file__).resolve().parents[2]
FAILURE = FailureContext("OperationalError", "down", code="08006")


def fill(base: Path, queues: list[QueueId], bad: QueueId) -> None:
    """Two sessions, so the damaged queue has data in SST files; 10 of it acknowledged."""
    config = DLQConfig(base_path=base, min_free_disk_mb=0)
    for ids in (range(0, 200), range(200, 300)):
        with DLQManager(config, background=False) as dlq:
            for queue in queues:
                dlq.store.count(queue)
                dlq.enqueue(
                    queue,
                    [
                        DLQMessage.create(queue, change(i, i, table=queue.table), FAILURE)
                        for i in ids
                    ],
                )
            if ids.start == 0:
                dlq.ack(dlq.read_batch(bad, 10))


def damage_late_data_block(queue_dir: Path) -> None:
    [segment] = [p for p in queue_dir.iterdir() if p.name.startswith("seg_")]
    sst = max(segment.glob("*.sst"), key=lambda p: p.stat().st_size)
    data = bytearray(sst.read_bytes())
    data[len(data) * 9 // 10] ^= 0xFF
    sst.write_bytes(bytes(data))


def rows(conn: Any, table: str) -> dict[int, int]:
    with conn.cursor() as cur:
        cur.execute(f"SELECT id, v FROM {table}")
        return dict(cur.fetchall())


def test_engine_restarted_on_a_damaged_queue_never_crash_loops(
    tmp_path: Path, postgres_dsn: str, pg_schema: str, pg_conn: Any
) -> None:
    tables = [f"{pg_schema}.{name}" for name in ("alpha", "bad", "gamma")]
    with pg_conn.cursor() as cur:
        for table in tables:
            cur.execute(f"CREATE TABLE {table} (id integer PRIMARY KEY, v integer)")
    queues = [QueueId("1", table, "1") for table in tables]
    bad = queues[1]
    base = tmp_path / "dlq"
    fill(base, queues, bad)
    damage_late_data_block(base / bad.relative_path)

    events = tmp_path / "events.jsonl"
    events.write_text(
        "".join(
            json.dumps(
                {
                    "op": "u",
                    "key": {"id": 1000 + i},
                    "after": {"id": 1000 + i, "v": i},
                    "source": {"schema": pg_schema, "table": "gamma", "lsn": 10_000 + i},
                }
            )
            + "\n"
            for i in range(20)
        )
    )
    (tmp_path / "pipelines.toml").write_text(
        f"""
[[pipelines]]
name = "p"
batch_size = 5
[pipelines.source]
id = "1"
type = "jsonl"
path = "{events}"
[[pipelines.destinations]]
id = "1"
name = "Postgres-Test"
type = "postgresql"
dsn_env = "TEST_DEST_DSN"
"""
    )
    env = {
        **os.environ,
        "DLQ_BASE_PATH": str(base),
        "ROSETTA_STATE_PATH": str(tmp_path / "state"),
        "ROSETTA_PIPELINES_FILE": str(tmp_path / "pipelines.toml"),
        "ROSETTA_ADMIN_ADDR": "off",
        "DLQ_CHECK_INTERVAL": "0.2",
        "DLQ_BACKOFF_BASE_MS": "20",
        "DLQ_BACKOFF_MAX_MS": "100",
        "DLQ_MIN_FREE_DISK_MB": "0",
        "TEST_DEST_DSN": postgres_dsn,
    }
    runs = []
    for _ in range(3):
        result = subprocess.run(
            [sys.executable, "-m", "compute.cli", "run"],
            cwd=ROOT,
            env=env,
            capture_output=True,
            text=True,
            timeout=120,
        )
        runs.append(result)
        assert result.returncode == 0, result.stderr[-3000:]
        assert "Traceback" not in result.stderr
    assert "damaged DLQ queue set aside" in runs[0].stderr
    assert all("set aside" not in run.stderr for run in runs[1:])

    [moved] = list((base / "quarantine").iterdir())
    assert json.loads((moved / "reason.json").read_text())["queue"] == str(bad)
    assert any(p.name.startswith("seg_") for p in moved.iterdir())
    expected = {i: i for i in range(300)}
    assert rows(pg_conn, tables[0]) == expected
    assert rows(pg_conn, tables[2]) == expected | {1000 + i: i for i in range(20)}
    # Of the damaged queue, only an in-order run from its acknowledgement point arrived.
    arrived = sorted(rows(pg_conn, tables[1]))
    assert arrived == list(range(10, 10 + len(arrived)))
