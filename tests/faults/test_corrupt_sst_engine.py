"""``rosetta run`` with a bit flipped in a data block of a large queue's SST file.

RocksDB opens such a file fine; the damage shows when the block is read
(the store counts every queue when it loads it). The engine must start, set
the queue aside, write every other table, and the CLI must list the queues.
"""

from __future__ import annotations

import json
import os
import random
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
BIG_COUNT = 30_000


def fill(base: Path, good: list[QueueId], bad: QueueId) -> None:
    config = DLQConfig(base_path=base, min_free_disk_mb=0)
    with DLQManager(config, background=False) as dlq:
        for queue in good:
            dlq.enqueue(
                queue,
                [
                    DLQMessage.create(queue, change(i, i, table=queue.table), FAILURE)
                    for i in range(200)
                ],
            )
        for start in range(0, BIG_COUNT, 500):
            dlq.enqueue(
                bad,
                [
                    DLQMessage.create(
                        bad,
                        change(i, i, table=bad.table, note=random.randbytes(100).hex()),
                        FAILURE,
                    )
                    for i in range(start, start + 500)
                ],
            )
    with DLQManager(config, background=False) as dlq:  # reopening flushes the WAL to an SST
        assert dlq.store.count(bad) == BIG_COUNT


def flip_data_block(queue_dir: Path) -> None:
    [segment] = [p for p in queue_dir.iterdir() if p.name.startswith("seg_")]
    sst = max(segment.glob("*.sst"), key=lambda p: p.stat().st_size)
    data = bytearray(sst.read_bytes())
    assert len(data) > BIG_COUNT * 100, len(data)
    data[len(data) // 2] ^= 0xFF
    sst.write_bytes(bytes(data))


def rows(conn: Any, table: str) -> dict[int, int]:
    with conn.cursor() as cur:
        cur.execute(f"SELECT id, v FROM {table}")
        return dict(cur.fetchall())


def cli(env: dict[str, str], *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "compute.cli", *args],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=180,
    )


def test_engine_starts_on_a_large_queue_with_a_damaged_data_block(
    tmp_path: Path, postgres_dsn: str, pg_schema: str, pg_conn: Any
) -> None:
    tables = [f"{pg_schema}.{name}" for name in ("alpha", "big", "gamma")]
    with pg_conn.cursor() as cur:
        for table in tables:
            cur.execute(f"CREATE TABLE {table} (id integer PRIMARY KEY, v integer, note text)")
    queues = [QueueId("1", table, "1") for table in tables]
    bad = queues[1]
    base = tmp_path / "dlq"
    fill(base, [queues[0], queues[2]], bad)
    flip_data_block(base / bad.relative_path)

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
batch_size = 50
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
        "PYTHONPATH": os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")])),
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
    runs = [cli(env, "run") for _ in range(2)]
    for run in runs:
        assert run.returncode == 0, run.stderr[-3000:]
        assert "Traceback" not in run.stderr
    assert runs[0].stderr.count("damaged DLQ queue set aside") == 1
    assert "set aside" not in runs[1].stderr

    [moved] = list((base / "quarantine").iterdir())
    reason = json.loads((moved / "reason.json").read_text())
    assert reason["queue"] == str(bad) and "corrupt" in reason["reason"].lower()
    # The other tables were written: their queues and the new events.
    assert rows(pg_conn, tables[0]) == {i: i for i in range(200)}
    assert rows(pg_conn, tables[2]) == {i: i for i in range(200)} | {1000 + i: i for i in range(20)}
    assert not rows(pg_conn, tables[1])  # nothing of the damaged queue, none out of order

    listed = cli(env, "dlq", "queues", "--json")
    assert listed.returncode == 0, listed.stderr[-3000:]
    damaged = [r for r in json.loads(listed.stdout) if r["damaged"]]
    assert [(r["queue"], r["moved_to"]) for r in damaged] == [(str(bad), str(moved))]
    stats = cli(env, "dlq", "stats", "--json")
    assert stats.returncode == 0, stats.stderr[-3000:]
