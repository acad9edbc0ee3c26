"""``rosetta run`` restarted on a disk filled to the last byte comes up and drains its queue."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from compute.dlq_manager import DLQManager
from compute.dlq_message import DLQMessage, FailureContext
from compute.errors import DLQFullError
from compute.queue_id import QueueId
from config.settings import DLQConfig
from tests.compute.helpers import change
from tests.compute.test_disk_full_drain import fill_disk

ROOT = Path(__file__).resolve().parents[2]
FAILURE = FailureContext("OperationalError", "down", code="08006")


@pytest.fixture
def small_disk(tmp_path: Path) -> Iterator[Path]:
    mount_point = tmp_path / "small"
    mount_point.mkdir()
    result = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", "size=16m", "tmpfs", str(mount_point)],
        capture_output=True,
        text=True,
    )
    assert result.returncode == 0, f"cannot mount a tmpfs: {result.stderr}"
    try:
        yield mount_point
    finally:
        subprocess.run(["umount", "-l", str(mount_point)], check=False)


def rows(conn: Any, table: str) -> dict[int, int]:
    with conn.cursor() as cur:
        cur.execute(f"SELECT id, v FROM {table}")
        return dict(cur.fetchall())


def test_engine_restarted_on_a_full_disk_drains(
    tmp_path: Path, small_disk: Path, postgres_dsn: str, pg_schema: str, pg_conn: Any
) -> None:
    alpha, beta = f"{pg_schema}.alpha", f"{pg_schema}.beta"
    with pg_conn.cursor() as cur:
        for table in (alpha, beta):
            cur.execute(f"CREATE TABLE {table} (id integer PRIMARY KEY, v integer, note text)")
    queue = QueueId("1", alpha, "1")
    base = small_disk / "dlq"
    accepted: list[int] = []
    with DLQManager(DLQConfig(base_path=base, min_free_disk_mb=0), background=False) as dlq:
        for start in range(0, 1_000_000, 200):
            batch = [
                DLQMessage.create(
                    queue, change(i, i, table=alpha, note=os.urandom(60).hex()), FAILURE
                )
                for i in range(start, start + 200)
            ]
            try:
                dlq.enqueue(queue, batch)
            except DLQFullError:
                break
            accepted.extend(range(start, start + 200))
    assert len(accepted) > 5_000
    fill_disk(small_disk)

    events = tmp_path / "events.jsonl"
    events.write_text(
        "".join(
            json.dumps(
                {
                    "op": "u",
                    "key": {"id": i},
                    "after": {"id": i, "v": i},
                    "source": {"schema": pg_schema, "table": "beta", "lsn": 10_000 + i},
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
        "DLQ_BATCH_SIZE": "1000",
        "DLQ_MIN_FREE_DISK_MB": "0",
        "TEST_DEST_DSN": postgres_dsn,
    }
    run = subprocess.run(
        [sys.executable, "-m", "compute.cli", "run"],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=240,
    )
    assert run.returncode == 0, run.stderr[-3000:]
    assert "Traceback" not in run.stderr
    assert rows(pg_conn, alpha) == {i: i for i in accepted}  # the whole queue, replayed
    assert rows(pg_conn, beta) == {i: i for i in range(20)}  # and the new events
    assert not [p for p in (base / queue.relative_path).iterdir() if p.name.startswith("seg_")]
