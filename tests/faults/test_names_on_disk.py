"""Any queue name, however hostile, gets one directory under the base path and is found again."""

from __future__ import annotations

import json
import shutil
import tempfile
from pathlib import Path

from hypothesis import example, given, settings

from compute.codec.failure_context import FailureContext
from compute.codec.message import DLQMessage
from compute.dlq.manager import DLQManager
from compute.queue_id import QueueId
from compute.storage.rocksq.store import RocksqStore
from config.dlq_config import DLQConfig
from tests.builders import change
from tests.compute.test_queue_id import any_name, names

FAILURE = FailureContext("OperationalError", "down")


@settings(max_examples=25, deadline=None)
@given(names, any_name, names)
@example("1", "../../etc/passwd", "1")
@example("1", "\x00/\udc80", ".")
@example("..", "\u202e\U0001f600" * 100, "..")
@example("1", "t" * 1000, "1")
# A surrogate pair written as two code points: JSON reads it back as the one
# character it encodes, so the exact names travel as code points too.
@example("0", "\ud83d\ude00", "0")
@example("1", "\ud83d\ude00" * 200, "\udc80")
def test_any_name_round_trips_through_the_store(source: str, table: str, dest: str) -> None:
    root = Path(tempfile.mkdtemp(prefix="names-"))
    try:
        base = root / "dlq"
        queue = QueueId(source, table, dest)
        # through the manager: queue.json and status.json must hold the name too
        with DLQManager(DLQConfig(base_path=base, min_free_disk_mb=0), background=False) as dlq:
            dlq.enqueue(queue, [DLQMessage.create(queue, change(1, 1, table=table), FAILURE)])
        status = json.loads((base / queue.relative_path / "status.json").read_text())
        assert QueueId.from_json_fields(status) == queue
        if not any("\ud800" <= c <= "\udfff" for c in source + table + dest):
            assert (status["source_id"], status["table"], status["destination_id"]) == (
                source,
                table,
                dest,
            )
        # exactly one new directory per level, all inside the base path
        [made] = [p for p in base.rglob("*") if p.name.startswith("seg_")]
        assert made.resolve().is_relative_to(base.resolve())
        assert len(made.relative_to(base).parts) == 4
        again = RocksqStore(base)
        try:
            assert again.list_queues() == [queue]  # names cut for length come back via queue.json
            assert again.count(queue) == 1
            assert again.peek(queue, 1)
        finally:
            again.close()
        assert sorted(p.name for p in root.iterdir()) == ["dlq"]
    finally:
        shutil.rmtree(root)
