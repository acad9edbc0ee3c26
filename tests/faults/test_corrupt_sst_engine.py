"""``rosetta run`` with a bit flipped in a data block of a large queue's SST file.

RocksDB opens such a file fine; the damage shows when the block is read
(the store counts every queue when it loads it). The engine must start, set
the queue aside, write every other table, and the CLI must list the queues.
"""

from __future__ import annotations

import json
import random
from pathlib import Path
from typing import Any

from compute.codec.failure_context import FailureContext
from compute.dlq.manager import DLQManager
from compute.queue_id import QueueId
from config.dlq_config import DLQConfig
from tests.builders import messages
from tests.faults.helpers import (
    create_row_tables,
    engine_env,
    flip_sst_byte,
    rows,
    write_jsonl_pipeline,
)
from tests.rosetta_cli import run_rosetta

FAILURE = FailureContext("OperationalError", "down", code="08006")
BIG_COUNT = 30_000


def fill(base: Path, good: list[QueueId], bad: QueueId) -> None:
    config = DLQConfig(base_path=base, min_free_disk_mb=0)
    with DLQManager(config, background=False) as dlq:
        for queue in good:
            dlq.enqueue(queue, messages(queue, range(200), FAILURE))
        for start in range(0, BIG_COUNT, 500):
            dlq.enqueue(
                bad,
                messages(
                    bad,
                    range(start, start + 500),
                    FAILURE,
                    note=lambda: random.randbytes(100).hex(),
                ),
            )
    with DLQManager(config, background=False) as dlq:  # reopening flushes the WAL to an SST
        assert dlq.store.count(bad) == BIG_COUNT


def test_engine_starts_on_a_large_queue_with_a_damaged_data_block(
    tmp_path: Path, postgres_dsn: str, pg_schema: str, pg_conn: Any
) -> None:
    tables = create_row_tables(pg_conn, pg_schema, ("alpha", "big", "gamma"), ", note text")
    queues = [QueueId("1", table, "1") for table in tables]
    bad = queues[1]
    base = tmp_path / "dlq"
    fill(base, [queues[0], queues[2]], bad)
    size = flip_sst_byte(base / bad.relative_path, tenths=5)  # the middle of the file
    assert size > BIG_COUNT * 100, size

    write_jsonl_pipeline(tmp_path, pg_schema, "gamma", first_id=1000)
    env = engine_env(tmp_path, postgres_dsn)
    runs = [run_rosetta(env, "run", timeout=180) for _ in range(2)]
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

    listed = run_rosetta(env, "dlq", "queues", "--json", timeout=180)
    assert listed.returncode == 0, listed.stderr[-3000:]
    damaged = [r for r in json.loads(listed.stdout) if r["damaged"]]
    assert [(r["queue"], r["moved_to"]) for r in damaged] == [(str(bad), str(moved))]
    stats = run_rosetta(env, "dlq", "stats", "--json", timeout=180)
    assert stats.returncode == 0, stats.stderr[-3000:]
