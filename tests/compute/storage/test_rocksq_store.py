"""What only the rocksq store does: segments, cursor file, free-disk floor, handles, lock.

The contract both stores keep (order, leases, restart, limits) is test_store_contract.py.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

from compute.errors import DLQFullError, QueueLockedError
from compute.queue_id import QueueId
from compute.storage.base import QueueLimits
from compute.storage.rocksq.cursor import CURSOR_FILE
from compute.storage.rocksq.store import RocksqStore
from tests.compute.helpers import STORE_QUEUE, drain, items

Q = STORE_QUEUE


@pytest.fixture
def store(tmp_path: Path):
    s = RocksqStore(tmp_path / "dlq", segment_max_messages=10)
    yield s
    s.close()


def test_fifo_across_segments(store: RocksqStore) -> None:
    # The generic store contract (both backends): test_store_contract.py.
    for start in range(0, 95, 5):
        store.enqueue(Q, items(start, start + 5))
    assert store.stats(Q).segments >= 9
    assert drain(store) == items(0, 95)
    assert store.stats(Q).segments == 0


def test_read_ahead_stops_at_a_segment_end(store: RocksqStore) -> None:
    store.enqueue(Q, items(0, 10))  # one full segment (segment_max_messages=10)
    store.enqueue(Q, items(10, 15))  # the next one
    first = store.read(Q, 10)
    assert store.read(Q, 5, ahead=True).payloads == []  # a lease never spans segments
    store.ack(first)
    assert drain(store) == items(10, 15)
    assert store.stats(Q).segments == 0


def test_drained_queue_keeps_no_segment_on_disk(store: RocksqStore) -> None:
    store.enqueue(Q, items(0, 30))
    drain(store)
    queue_dir = store.queue_path(Q)
    assert sorted(os.listdir(queue_dir)) == ["cursor.json", "queue.json"]
    store.enqueue(Q, items(30, 33))
    assert drain(store) == items(30, 33)


def test_corrupt_cursor_redelivers_rather_than_skips(tmp_path: Path) -> None:
    s = RocksqStore(tmp_path, segment_max_messages=100)
    s.enqueue(Q, items(0, 10))
    s.ack(s.read(Q, 4))
    s.close()
    cursor = s.queue_path(Q) / CURSOR_FILE
    data = json.loads(cursor.read_text())
    assert data["acked"] == 4
    cursor.write_text(cursor.read_text().replace('"acked": 4', '"acked": 9'))  # crc now wrong
    s = RocksqStore(tmp_path, segment_max_messages=100)
    assert drain(s) == items(0, 10)
    s.close()


def test_free_disk_floor(tmp_path: Path) -> None:
    s = RocksqStore(tmp_path, QueueLimits(min_free_disk_bytes=2**62))
    with pytest.raises(DLQFullError) as caught:
        s.enqueue(Q, items(0, 1))
    assert caught.value.limit == "min_free_disk"
    assert "DLQ_MIN_FREE_DISK_MB" in str(caught.value)
    assert s.stats(Q).messages == 0
    s.close()


def test_second_store_on_same_base_path_is_refused(tmp_path: Path) -> None:
    s = RocksqStore(tmp_path)
    with pytest.raises(QueueLockedError, match="in use by another process"):
        RocksqStore(tmp_path)
    s.close()
    RocksqStore(tmp_path).close()


def test_open_handles_stay_capped_with_many_queues(tmp_path: Path) -> None:
    s = RocksqStore(tmp_path, max_open_handles=16)
    fd_dir = "/proc/self/fd"
    before = len(os.listdir(fd_dir))
    peak = before
    queues = [QueueId("1", f"t{i}", "1") for i in range(120)]
    for queue in queues:
        s.enqueue(queue, [b"x"])
        peak = max(peak, len(os.listdir(fd_dir)))
    # about 6-7 descriptors per open RocksDB, plus cursor files
    assert peak - before <= 16 * 9
    for queue in queues:
        assert drain(s, queue) == [b"x"]
    s.close()
