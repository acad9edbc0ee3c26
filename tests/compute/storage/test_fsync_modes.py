"""DLQ_FSYNC: what the kernel's page cache holds unsynced after an enqueue, in each mode.

Proved with ``cachestat`` (dirty and writeback pages per file), not by
trusting the code: ``always`` leaves no unsynced page in any file of the
queue once an enqueue returns, ``interval`` none for longer than the
interval, and ``off`` leaves some (so the check can fail).
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from pathlib import Path

import pytest

from compute.queue_id import QueueId
from compute.storage.rocksq.store import RocksqStore
from compute.storage.rocksq.syncer import GroupCommit, SyncTarget
from config.dlq_config import FsyncMode
from tests.compute.helpers import drain, items
from tests.page_cache import require_cachestat, unsynced_files

QUEUE = QueueId("1", "public.orders", "2")


@pytest.fixture(autouse=True)
def _cachestat(tmp_path: Path) -> None:
    require_cachestat(tmp_path)


def _store(tmp_path: Path, mode: FsyncMode, interval: float = 0.1, **kw: object) -> RocksqStore:
    return RocksqStore(tmp_path / "dlq", fsync=mode, fsync_interval=interval, **kw)  # type: ignore[arg-type]


def test_always_leaves_no_unsynced_page_once_each_enqueue_returns(tmp_path: Path) -> None:
    store = _store(tmp_path, FsyncMode.ALWAYS, segment_max_messages=1000)
    try:
        queue_dir = store.queue_path(QUEUE)
        for n in range(25):  # 2,500 messages: two rollovers to new segments
            store.enqueue(QUEUE, items(n * 100, n * 100 + 100, size=300))
            assert unsynced_files(queue_dir) == {}, f"after enqueue {n}"
        assert drain(store, QUEUE) == items(0, 2500, size=300)
    finally:
        store.close()


def test_always_with_four_writers_shares_syncs(tmp_path: Path) -> None:
    """Four threads enqueue batches of 100 into their own queues: each sees its queue synced
    when its enqueue returns, and the writers share sync rounds (fewer than enqueues)."""
    store = _store(tmp_path, FsyncMode.ALWAYS)
    queues = [QueueId("1", f"t{i}", "2") for i in range(4)]
    problems: list[str] = []
    rounds_before = _group(store).rounds

    def writer(queue: QueueId) -> None:
        for n in range(40):
            store.enqueue(queue, items(n * 100, n * 100 + 100, size=300))
            if left := unsynced_files(store.queue_path(queue)):
                problems.append(f"{queue} after enqueue {n}: {left}")

    try:
        threads = [threading.Thread(target=writer, args=(q,)) for q in queues]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join(60)
        assert problems == []
        rounds = _group(store).rounds - rounds_before
        assert rounds < 4 * 40, f"{rounds} sync rounds for 160 enqueues: no group commit"
        for queue in queues:
            assert drain(store, queue) == items(0, 4000, size=300)
    finally:
        store.close()


def test_interval_leaves_no_page_unsynced_longer_than_the_interval(tmp_path: Path) -> None:
    interval = 0.1
    store = _store(tmp_path, FsyncMode.INTERVAL, interval)
    try:
        queue_dir = store.queue_path(QUEUE)
        saw_dirty = 0
        for n in range(10):
            written = time.monotonic()
            store.enqueue(QUEUE, items(n * 100, n * 100 + 100, size=300))
            saw_dirty += bool(unsynced_files(queue_dir))
            generation = store.written_generation()
            while unsynced_files(queue_dir):
                # A sync round under load may take a while: the bound is the interval
                # plus the round, measured generously on a shared 2-core machine.
                assert time.monotonic() - written < interval + 0.4, unsynced_files(queue_dir)
                time.sleep(0.005)
            assert _wait(lambda g=generation: store.is_synced(g), interval + 0.4)
        # The writes were really left to the syncer (interval is not always).
        assert saw_dirty >= 5
    finally:
        store.close()


def test_off_leaves_unsynced_pages_so_the_check_can_fail(tmp_path: Path) -> None:
    store = _store(tmp_path, FsyncMode.OFF)
    try:
        store.enqueue(QUEUE, items(0, 100, size=300))
        left = unsynced_files(store.queue_path(QUEUE))
        assert any(name.endswith(".log") for name in left), left
        assert store.written_generation() == 0  # nothing to wait for
    finally:
        store.close()


def test_a_fully_acknowledged_segment_is_deleted_only_after_the_cursor_is_synced(
    tmp_path: Path,
) -> None:
    store = _store(tmp_path, FsyncMode.INTERVAL, interval=30.0, segment_max_messages=100)
    try:
        for n in range(3):
            store.enqueue(QUEUE, items(n * 100, n * 100 + 100))
        lease = store.read(QUEUE, 100)
        store.ack(lease)  # retires segment 1 while segment 3's writes are unsynced
        queue_dir = store.queue_path(QUEUE)
        assert not (queue_dir / "seg_000000000001").exists()
        # The interval is 30 s: only the deletion could have synced these.
        assert unsynced_files(queue_dir) == {}
    finally:
        store.close()


def test_a_failed_sync_fails_the_enqueues_waiting_for_it(tmp_path: Path) -> None:
    class Failing(SyncTarget):
        def sync(self) -> None:
            raise OSError(5, "Input/output error")

    group = GroupCommit(FsyncMode.ALWAYS, 0.1)
    generation = group.note(Failing(tmp_path))
    with pytest.raises(Exception, match="syncing the DLQ's writes to disk failed: .*Input/output"):
        group.wait(generation)
    group.close()


def _group(store: RocksqStore) -> GroupCommit:
    return store._durability.group


def _wait(condition: Callable[[], bool], timeout: float) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if condition():
            return True
        time.sleep(0.005)
    return False
