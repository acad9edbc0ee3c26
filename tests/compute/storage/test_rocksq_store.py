"""The rocksq-backed queue store: order, acknowledgement, restart, limits, handles."""

from __future__ import annotations

import json
import os
import random
import threading
from pathlib import Path

import pytest

from compute.errors import DLQFullError, LeaseError, QueueLockedError
from compute.queue_id import QueueId
from compute.storage.base import QueueLimits
from compute.storage.rocksq.cursor import CURSOR_FILE
from compute.storage.rocksq.store import RocksqStore
from tests.compute.helpers import STORE_QUEUE, drain, items

Q = STORE_QUEUE


@pytest.fixture
def store(tmp_path: Path):
    s = RocksqStore(tmp_path / "dlq", segment_max_items=10)
    yield s
    s.close()


def test_fifo_across_segments(store: RocksqStore) -> None:
    for start in range(0, 95, 5):
        store.enqueue(Q, items(start, start + 5))
    assert store.stats(Q).messages == 95
    assert store.stats(Q).segments >= 9
    assert drain(store) == items(0, 95)
    assert store.stats(Q).messages == 0


def test_empty_queue_reads_nothing(store: RocksqStore) -> None:
    lease = store.read(Q, 10)
    assert lease.payloads == []
    store.ack(lease)  # acking an empty lease is harmless
    assert store.stats(Q).messages == 0


def test_release_keeps_messages_at_the_head_in_order(store: RocksqStore) -> None:
    store.enqueue(Q, items(0, 20))
    first = store.read(Q, 8)
    store.release(first)
    again = store.read(Q, 3)
    assert again.payloads == items(0, 3)
    store.release(again)
    assert drain(store, batch=4) == items(0, 20)


def test_one_outstanding_lease_per_queue(store: RocksqStore) -> None:
    store.enqueue(Q, items(0, 5))
    lease = store.read(Q, 2)
    with pytest.raises(LeaseError):
        store.read(Q, 2)
    store.ack(lease)
    with pytest.raises(LeaseError):
        store.ack(lease)
    assert store.read(Q, 10).payloads == items(2, 5)


def test_read_ahead_leases_follow_the_outstanding_one(store: RocksqStore) -> None:
    store.enqueue(Q, items(0, 10))
    first = store.read(Q, 3)
    ahead = store.read(Q, 4, ahead=True)
    assert (first.payloads, ahead.payloads) == (items(0, 3), items(3, 7))
    with pytest.raises(LeaseError):
        store.read(Q, 1)  # a plain read while leases are out
    with pytest.raises(LeaseError):
        store.read(Q, 1, ahead=True)  # one read-ahead at a time
    with pytest.raises(LeaseError):
        store.ack(ahead)  # oldest first
    assert store.peek(Q, 10) == items(0, 10)  # leased payloads are still the head
    store.ack(first)
    store.ack(ahead)
    assert store.stats(Q).messages == 3
    assert drain(store) == items(7, 10)


def test_releasing_a_lease_gives_back_the_read_ahead_too(store: RocksqStore) -> None:
    store.enqueue(Q, items(0, 10))
    first = store.read(Q, 3)
    ahead = store.read(Q, 3, ahead=True)
    store.release(first)
    with pytest.raises(LeaseError):
        store.release(ahead)  # already given back with the first
    assert drain(store, batch=4) == items(0, 10)


def test_releasing_only_the_read_ahead_keeps_the_first(store: RocksqStore) -> None:
    store.enqueue(Q, items(0, 10))
    first = store.read(Q, 3)
    ahead = store.read(Q, 3, ahead=True)
    store.release(ahead)
    again = store.read(Q, 5, ahead=True)
    assert again.payloads == items(3, 8)
    store.ack(first)
    store.release(again)
    assert drain(store) == items(3, 10)


def test_partial_ack_with_a_read_ahead_returns_both_rests_in_order(store: RocksqStore) -> None:
    store.enqueue(Q, items(0, 10))
    first = store.read(Q, 4)
    ahead = store.read(Q, 4, ahead=True)
    store.ack(first, 1)
    with pytest.raises(LeaseError):
        store.ack(ahead)  # it no longer follows acknowledged data
    assert store.stats(Q).messages == 9
    assert drain(store, batch=3) == items(1, 10)


def test_read_ahead_stops_at_a_segment_end(store: RocksqStore) -> None:
    store.enqueue(Q, items(0, 10))  # one full segment (segment_max_items=10)
    store.enqueue(Q, items(10, 15))  # the next one
    first = store.read(Q, 10)
    assert store.read(Q, 5, ahead=True).payloads == []  # a lease never spans segments
    store.ack(first)
    assert drain(store) == items(10, 15)
    assert store.stats(Q).segments == 0


def test_restart_with_a_read_ahead_outstanding_loses_nothing(tmp_path: Path) -> None:
    s = RocksqStore(tmp_path, segment_max_items=10)
    s.enqueue(Q, items(0, 8))
    first = s.read(Q, 3)
    s.read(Q, 3, ahead=True)  # read, never acknowledged
    s.ack(first)
    s.close()
    s = RocksqStore(tmp_path, segment_max_items=10)
    assert drain(s) == items(3, 8)
    s.close()


def test_restart_returns_unacknowledged_in_order(tmp_path: Path) -> None:
    s = RocksqStore(tmp_path, segment_max_items=10)
    for start in range(0, 40, 4):
        s.enqueue(Q, items(start, start + 4))
    lease = s.read(Q, 6)
    s.ack(lease)
    s.read(Q, 5)  # leased but never acknowledged: must come back
    s.close()
    s = RocksqStore(tmp_path, segment_max_items=10)
    assert s.list_queues() == [Q]
    assert s.stats(Q).messages == 34
    assert drain(s) == items(6, 40)
    s.close()
    s = RocksqStore(tmp_path, segment_max_items=10)
    assert s.stats(Q).messages == 0
    s.close()


def test_drained_queue_keeps_no_segment_on_disk(store: RocksqStore) -> None:
    store.enqueue(Q, items(0, 30))
    drain(store)
    queue_dir = store.queue_path(Q)
    assert sorted(os.listdir(queue_dir)) == ["cursor.json", "queue.json"]
    store.enqueue(Q, items(30, 33))
    assert drain(store) == items(30, 33)


def test_peek_does_not_consume_or_disturb_the_reader(store: RocksqStore) -> None:
    for start in range(0, 30, 6):
        store.enqueue(Q, items(start, start + 6))
    assert store.peek(Q, 4) == items(0, 4)
    lease = store.read(Q, 3)
    assert lease.payloads == items(0, 3)
    assert store.peek(Q, 5) == items(0, 5)  # the leased ones are still unacknowledged
    store.ack(lease)
    assert store.peek(Q, 20) == items(3, 23)
    assert store.peek(Q, 1, newest=True) == items(29, 30)
    assert drain(store) == items(3, 30)


def test_corrupt_cursor_redelivers_rather_than_skips(tmp_path: Path) -> None:
    s = RocksqStore(tmp_path, segment_max_items=100)
    s.enqueue(Q, items(0, 10))
    s.ack(s.read(Q, 4))
    s.close()
    cursor = s.queue_path(Q) / CURSOR_FILE
    data = json.loads(cursor.read_text())
    assert data["acked"] == 4
    cursor.write_text(cursor.read_text().replace('"acked": 4', '"acked": 9'))  # crc now wrong
    s = RocksqStore(tmp_path, segment_max_items=100)
    assert drain(s) == items(0, 10)
    s.close()


def test_message_limit_refuses_whole_batch(tmp_path: Path) -> None:
    s = RocksqStore(tmp_path, QueueLimits(max_messages=10))
    s.enqueue(Q, items(0, 8))
    with pytest.raises(DLQFullError) as caught:
        s.enqueue(Q, items(8, 12))
    assert caught.value.limit == "max_queue_messages"
    assert "DLQ_MAX_QUEUE_MESSAGES" in str(caught.value)
    s.enqueue(Q, items(8, 10))
    assert drain(s) == items(0, 10)
    s.close()


def test_byte_limit(tmp_path: Path) -> None:
    s = RocksqStore(tmp_path, QueueLimits(max_bytes=200_000))
    payload = [b"x" * 1000] * 50
    with pytest.raises(DLQFullError) as caught:
        for _ in range(100):
            s.enqueue(Q, payload)
    assert caught.value.limit == "max_queue_bytes"
    stored = s.stats(Q).messages
    assert 0 < stored < 5000
    assert len(drain(s, batch=100)) == stored
    s.close()


def test_free_disk_floor(tmp_path: Path) -> None:
    s = RocksqStore(tmp_path, QueueLimits(min_free_disk_bytes=2**62))
    with pytest.raises(DLQFullError) as caught:
        s.enqueue(Q, items(0, 1))
    assert caught.value.limit == "min_free_disk"
    assert "DLQ_MIN_FREE_DISK_MB" in str(caught.value)
    assert s.stats(Q).messages == 0
    s.close()


def test_list_queues_finds_awkward_names_on_disk(tmp_path: Path) -> None:
    names = ['weird "name"; drop table x', "a/b/c", "schéma.täble", "x" * 400, "..", "%41"]
    queues = [QueueId("src 1", name, "dest/2") for name in names]
    s = RocksqStore(tmp_path)
    for i, queue in enumerate(queues):
        s.enqueue(queue, [b"%d" % i])
    s.close()
    (tmp_path / "source_stray").mkdir()
    (tmp_path / "not_a_queue.txt").write_text("hello")
    s = RocksqStore(tmp_path)
    assert s.list_queues() == sorted(queues)
    for i, queue in enumerate(queues):
        assert drain(s, queue) == [b"%d" % i]
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


def test_concurrent_producers_and_one_reader(tmp_path: Path) -> None:
    s = RocksqStore(tmp_path, segment_max_items=50)
    producers, per_producer = 4, 300
    done = threading.Event()
    received: list[bytes] = []

    def produce(p: int) -> None:
        rng = random.Random(p)
        i = 0
        while i < per_producer:
            n = rng.randint(1, 7)
            s.enqueue(Q, [b"%d:%d" % (p, j) for j in range(i, min(i + n, per_producer))])
            i += n

    def consume() -> None:
        while True:
            lease = s.read(Q, 13)
            if lease.payloads:
                received.extend(lease.payloads)
                if random.random() < 0.2:
                    s.release(lease)
                    del received[-len(lease.payloads) :]
                else:
                    s.ack(lease)
            elif done.is_set() and s.stats(Q).messages == 0:
                return

    threads = [threading.Thread(target=produce, args=(p,)) for p in range(producers)]
    reader = threading.Thread(target=consume)
    reader.start()
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    done.set()
    reader.join(timeout=60)
    assert not reader.is_alive()
    assert len(received) == producers * per_producer
    for p in range(producers):
        mine = [int(x.split(b":")[1]) for x in received if x.startswith(b"%d:" % p)]
        assert mine == list(range(per_producer))
    s.close()


def test_purge(store: RocksqStore) -> None:
    store.enqueue(Q, items(0, 25))
    lease = store.read(Q, 5)
    assert store.purge(Q) == 25
    with pytest.raises(LeaseError):
        store.ack(lease)
    assert store.stats(Q).messages == 0
    store.enqueue(Q, items(25, 27))
    assert drain(store) == items(25, 27)
