"""``rosetta run`` on a base path with a damaged queue: no crash-loop, the others reach PostgreSQL.

The engine is started several times in a row, as a supervisor would after
each exit: every run exits 0, the damaged queue is set aside once (by the
first run) and every other queue, plus the new events, arrive in PostgreSQL.
"""

from __future__ import annotations

import json
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


def fill(base: Path, queues: list[QueueId], bad: QueueId) -> None:
    """Two sessions, so the damaged queue has data in SST files; 10 of it acknowledged."""
    config = DLQConfig(base_path=base, min_free_disk_mb=0)
    for ids in (range(0, 200), range(200, 300)):
        with DLQManager(config, background=False) as dlq:
            for queue in queues:
                dlq.store.count(queue)
                dlq.enqueue(queue, messages(queue, ids, FAILURE))
            if ids.start == 0:
                dlq.ack(dlq.read_batch(bad, 10))


def test_engine_restarted_on_a_damaged_queue_never_crash_loops(
    tmp_path: Path, postgres_dsn: str, pg_schema: str, pg_conn: Any
) -> None:
    tables = create_row_tables(pg_conn, pg_schema, ("alpha", "bad", "gamma"))
    queues = [QueueId("1", table, "1") for table in tables]
    bad = queues[1]
    base = tmp_path / "dlq"
    fill(base, queues, bad)
    flip_sst_byte(base / bad.relative_path, tenths=9)  # a late data block

    write_jsonl_pipeline(tmp_path, pg_schema, "gamma", first_id=1000, batch_size=5)
    env = engine_env(tmp_path, postgres_dsn)
    runs = []
    for _ in range(3):
        result = run_rosetta(env, "run")
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
    # The operator sees it: `rosetta dlq queues` lists the directory set aside, with why.
    listed = run_rosetta(env, "dlq", "queues", "--json")
    assert listed.returncode == 0, listed.stderr[-3000:]
    damaged = [r for r in json.loads(listed.stdout) if r["damaged"]]
    assert [(r["queue"], r["moved_to"]) for r in damaged] == [(str(bad), str(moved))]
    assert damaged[0]["reason"] == json.loads((moved / "reason.json").read_text())["reason"]
    human = run_rosetta(env, "dlq", "queues")
    assert "DAMAGED queue directories set aside (1)" in human.stdout
