"""The QueueStore contract, proved on both backends (rocksq and JetStream) by the same tests.

FIFO per queue, one lease plus one read-ahead acked oldest first, released
payloads back at the head in order, acknowledged payloads deleted for good
(also across a restart, also when a frame is acknowledged in part), limits
refusing a whole batch, queues found by another store instance, records.
"""

from __future__ import annotations

import os
import random
import threading
from pathlib import Path

import pytest

from compute.errors import DLQFullError, LeaseError
from compute.queue_id import QueueId
from compute.storage.base import QueueLimits, QueueStore
from tests.compute.helpers import STORE_QUEUE, drain, items
from tests.store_backends import BACKENDS, StoreBackend, backend_fixture

Q = STORE_QUEUE


@pytest.fixture(params=BACKENDS)
def backend(request: pytest.FixtureRequest, tmp_path: Path) -> StoreBackend:
    return backend_fixture(request, tmp_path)


@pytest.fixture
def store(backend: StoreBackend) -> QueueStore:
    return backend.open()


def test_fifo_across_many_enqueues(store: QueueStore) -> None:
    for start in range(0, 95, 5):
        store.enqueue(Q, items(start, start + 5))
    assert store.stats(Q).messages == 95
    assert store.count(Q) == 95
    assert drain(store) == items(0, 95)
    assert store.stats(Q).messages == 0


def test_empty_queue_reads_nothing(store: QueueStore) -> None:
    lease = store.read(Q, 10)
    assert lease.payloads == []
    store.ack(lease)  # acking an empty lease is harmless
    assert store.stats(Q).messages == 0


def test_release_keeps_messages_at_the_head_in_order(store: QueueStore) -> None:
    store.enqueue(Q, items(0, 20))
    first = store.read(Q, 8)
    store.release(first)
    again = store.read(Q, 3)
    assert again.payloads == items(0, 3)
    store.release(again)
    assert drain(store, batch=4) == items(0, 20)


def test_one_outstanding_lease_per_queue(store: QueueStore) -> None:
    store.enqueue(Q, items(0, 5))
    lease = store.read(Q, 2)
    with pytest.raises(LeaseError):
        store.read(Q, 2)
    store.ack(lease)
    with pytest.raises(LeaseError):
        store.ack(lease)
    assert store.read(Q, 10).payloads == items(2, 5)


def test_read_ahead_leases_follow_the_outstanding_one(store: QueueStore) -> None:
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


def test_releasing_a_lease_gives_back_the_read_ahead_too(store: QueueStore) -> None:
    store.enqueue(Q, items(0, 10))
    first = store.read(Q, 3)
    ahead = store.read(Q, 3, ahead=True)
    store.release(first)
    with pytest.raises(LeaseError):
        store.release(ahead)  # already given back with the first
    assert drain(store, batch=4) == items(0, 10)


def test_releasing_only_the_read_ahead_keeps_the_first(store: QueueStore) -> None:
    store.enqueue(Q, items(0, 10))
    first = store.read(Q, 3)
    ahead = store.read(Q, 3, ahead=True)
    store.release(ahead)
    again = store.read(Q, 5, ahead=True)
    assert again.payloads == items(3, 8)
    store.ack(first)
    store.release(again)
    assert drain(store) == items(3, 10)


def test_partial_ack_with_a_read_ahead_returns_both_rests_in_order(store: QueueStore) -> None:
    store.enqueue(Q, items(0, 10))
    first = store.read(Q, 4)
    ahead = store.read(Q, 4, ahead=True)
    store.ack(first, 1)
    with pytest.raises(LeaseError):
        store.ack(ahead)  # it no longer follows acknowledged data
    assert store.stats(Q).messages == 9
    assert drain(store, batch=3) == items(1, 10)


def test_peek_does_not_consume_or_disturb_the_reader(store: QueueStore) -> None:
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


def test_scan_streams_the_unacknowledged_in_order_without_leasing(store: QueueStore) -> None:
    for start in range(0, 40, 8):
        store.enqueue(Q, items(start, start + 8))
    store.ack(store.read(Q, 5))  # acknowledged in part of the first batch
    assert all(0 < len(chunk) <= 10 for chunk in store.scan(Q, chunk=10))
    assert [p for chunk in store.scan(Q, chunk=10) for p in chunk] == items(5, 40)
    assert drain(store) == items(5, 40)


def test_restart_with_a_read_ahead_outstanding_loses_nothing(backend: StoreBackend) -> None:
    s = backend.open()
    s.enqueue(Q, items(0, 8))
    first = s.read(Q, 3)
    s.read(Q, 3, ahead=True)  # read, never acknowledged
    s.ack(first)
    s.close()
    assert drain(backend.open()) == items(3, 8)


def test_restart_returns_unacknowledged_in_order_and_nothing_acked(backend: StoreBackend) -> None:
    s = backend.open()
    for start in range(0, 40, 4):
        s.enqueue(Q, items(start, start + 4))
    s.ack(s.read(Q, 6))  # one batch and a half
    s.read(Q, 5)  # leased but never acknowledged: must come back
    s.close()
    s = backend.open()
    assert s.list_queues() == [Q]
    assert s.stats(Q).messages == 34
    assert drain(s) == items(6, 40)
    s.close()
    s = backend.open()
    assert s.stats(Q).messages == 0
    assert s.read(Q, 10).payloads == []


def test_a_partial_ack_inside_one_batch_survives_a_restart(backend: StoreBackend) -> None:
    s = backend.open()
    s.enqueue(Q, items(0, 10))  # one stored frame
    s.ack(s.read(Q, 3))
    lease = s.read(Q, 4)
    s.ack(lease, 2)
    s.close()
    s = backend.open()
    assert s.count(Q) == 5
    assert s.peek(Q, 10) == items(5, 10)
    s.enqueue(Q, items(10, 12))
    assert drain(s) == items(5, 12)


def test_message_limit_refuses_whole_batch(backend: StoreBackend) -> None:
    s = backend.open(QueueLimits(max_messages=10))
    s.enqueue(Q, items(0, 8))
    with pytest.raises(DLQFullError) as caught:
        s.enqueue(Q, items(8, 12))
    assert caught.value.limit == "max_queue_messages"
    assert "DLQ_MAX_QUEUE_MESSAGES" in str(caught.value)
    assert s.count(Q) == 8  # nothing of the refused batch
    s.enqueue(Q, items(8, 10))
    assert drain(s) == items(0, 10)


def test_byte_limit_refuses_whole_batches(backend: StoreBackend) -> None:
    s = backend.open(QueueLimits(max_bytes=200_000))
    rng = random.Random(7)
    with pytest.raises(DLQFullError) as caught:
        for _ in range(100):
            s.enqueue(Q, [rng.randbytes(1000) for _ in range(50)])  # incompressible
    assert caught.value.limit == "max_queue_bytes"
    stored = s.stats(Q).messages
    assert 0 < stored < 5000 and stored % 50 == 0
    assert len(drain(s, batch=100)) == stored


def test_awkward_names_come_back_after_a_restart(backend: StoreBackend) -> None:
    names = ['weird "name"; drop table x', "a/b/c", "schéma.täble", "x" * 400, "..", "%41", "a.b"]
    queues = [QueueId("src 1", name, "dest/2") for name in names]
    s = backend.open()
    for i, queue in enumerate(queues):
        s.enqueue(queue, [b"%d" % i])
    s.enqueue(queues[0].parked, [b"parked"])
    s.close()
    backend.base_path.mkdir(parents=True, exist_ok=True)
    (backend.base_path / "source_stray").mkdir(exist_ok=True)
    (backend.base_path / "not_a_queue.txt").write_text("hello")
    s = backend.open()
    assert s.list_queues() == sorted(queues)
    for i, queue in enumerate(queues):
        assert drain(s, queue) == [b"%d" % i]
    assert drain(s, queues[0].parked) == [b"parked"]


def test_rescan_finds_queues_another_store_wrote(backend: StoreBackend) -> None:
    watcher = backend.open(lock_base_path=False) if not backend.jetstream else backend.open()
    writer = backend.open(lock_base_path=False) if not backend.jetstream else backend.open()
    other = QueueId("9", "public.other", "3")
    writer.enqueue(other, items(0, 3))
    assert watcher.list_queues() == []  # listing is from memory
    assert watcher.rescan() == [other]
    assert watcher.list_queues() == [other]


def test_records_round_trip(store: QueueStore) -> None:
    store.enqueue(Q, items(0, 1))
    assert store.load_record(Q, "attempts.json") is None
    assert store.save_record(Q, "attempts.json", b'{"m1": 2}')
    assert store.load_record(Q, "attempts.json") == b'{"m1": 2}'
    assert store.save_record(Q, "attempts.json", b"{}", durable=False)
    assert store.load_record(Q, "attempts.json") == b"{}"
    assert store.save_record(Q.parked, "discarded.json", b"[1]") in (True, False)
    assert store.save_record(Q, "attempts.json", None)
    assert store.load_record(Q, "attempts.json") is None
    assert store.save_record(Q, "attempts.json", None)  # removing nothing is fine


def test_concurrent_producers_and_one_reader(backend: StoreBackend) -> None:
    s = backend.open()
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


def test_purge(store: QueueStore) -> None:
    store.enqueue(Q, items(0, 25))
    lease = store.read(Q, 5)
    assert store.purge(Q) == 25
    with pytest.raises(LeaseError):
        store.ack(lease)
    assert store.stats(Q).messages == 0
    store.enqueue(Q, items(25, 27))
    assert drain(store) == items(25, 27)


def test_queue_path_is_a_local_directory(store: QueueStore) -> None:
    store.enqueue(Q, items(0, 1))
    path = store.queue_path(Q)
    assert path.is_dir() and os.access(path, os.W_OK)
