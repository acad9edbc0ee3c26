"""Any queue name, however hostile, gets one directory under the base path and is found again."""

from __future__ import annotations

import shutil
import tempfile
from pathlib import Path

from hypothesis import example, given, settings

from compute.queue_id import QueueId
from compute.storage.rocksq_store import RocksqStore
from tests.compute.test_queue_id import any_name, names


@settings(max_examples=25, deadline=None)
@given(names, any_name, names)
@example("1", "../../etc/passwd", "1")
@example("1", "\x00/\udc80", ".")
@example("..", "\u202e\U0001f600" * 100, "..")
@example("1", "t" * 1000, "1")
def test_any_name_round_trips_through_the_store(source: str, table: str, dest: str) -> None:
    root = Path(tempfile.mkdtemp(prefix="names-"))
    try:
        base = root / "dlq"
        queue = QueueId(source, table, dest)
        with_store = RocksqStore(base)
        with_store.enqueue(queue, [b"payload"])
        with_store.close()
        # exactly one new directory per level, all inside the base path
        [made] = [p for p in base.rglob("*") if p.name.startswith("seg_")]
        assert made.resolve().is_relative_to(base.resolve())
        assert len(made.relative_to(base).parts) == 4
        again = RocksqStore(base)
        try:
            assert again.list_queues() == [queue]  # names cut for length come back via queue.json
            assert again.count(queue) == 1
        finally:
            again.close()
        assert sorted(p.name for p in root.iterdir()) == ["dlq"]
    finally:
        shutil.rmtree(root)
