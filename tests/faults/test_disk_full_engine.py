"""``rosetta run`` restarted on a disk filled to the last byte comes up and drains its queue."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from compute.codec.failure_context import FailureContext
from compute.dlq.manager import DLQManager
from compute.errors import DLQFullError
from compute.queue_id import QueueId
from config.dlq_config import DLQConfig
from tests.builders import messages
from tests.faults.helpers import create_row_tables, engine_env, rows, write_jsonl_pipeline
from tests.rosetta_cli import run_rosetta
from tests.tmpfs import fill_disk

FAILURE = FailureContext("OperationalError", "down", code="08006")


def test_engine_restarted_on_a_full_disk_drains(
    tmp_path: Path, small_disk: Path, postgres_dsn: str, pg_schema: str, pg_conn: Any
) -> None:
    alpha, beta = create_row_tables(pg_conn, pg_schema, ("alpha", "beta"), ", note text")
    queue = QueueId("1", alpha, "1")
    base = small_disk / "dlq"
    accepted: list[int] = []
    with DLQManager(DLQConfig(base_path=base, min_free_disk_mb=0), background=False) as dlq:
        for start in range(0, 1_000_000, 200):
            batch = messages(
                queue, range(start, start + 200), FAILURE, note=lambda: os.urandom(60).hex()
            )
            try:
                dlq.enqueue(queue, batch)
            except DLQFullError:
                break
            accepted.extend(range(start, start + 200))
    assert len(accepted) > 5_000
    fill_disk(small_disk)

    write_jsonl_pipeline(tmp_path, pg_schema, "beta", first_id=0)
    env = engine_env(tmp_path, postgres_dsn, DLQ_BASE_PATH=str(base), DLQ_BATCH_SIZE="1000")
    run = run_rosetta(env, "run", timeout=240)
    assert run.returncode == 0, run.stderr[-3000:]
    assert "Traceback" not in run.stderr
    assert rows(pg_conn, alpha) == {i: i for i in accepted}  # the whole queue, replayed
    assert rows(pg_conn, beta) == {i: i for i in range(20)}  # and the new events
    assert not [p for p in (base / queue.relative_path).iterdir() if p.name.startswith("seg_")]
