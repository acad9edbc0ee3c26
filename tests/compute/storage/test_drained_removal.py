"""Drained, idle queues leave nothing on disk; removal is safe against a concurrent enqueue."""

from __future__ import annotations

import contextlib
import os
import shutil
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest

from compute.queue_id import QueueId
from compute.storage.rocksq.store import RocksqStore
from tests.compute.helpers import drain, held_elsewhere, items
from tests.compute.helpers import tree_listing as listing

IDLE = 60.0
QUEUES = [
    QueueId("1", "public.users", "2"),
    QueueId("1", "public.orders", "2"),
    QueueId("7", "x", "3"),
]


def empty_base_listing(tmp_path: Path) -> list[str]:
    """What a fresh store's base path holds."""
    fresh = RocksqStore(tmp_path / "fresh")
    fresh.close()
    return listing(tmp_path / "fresh")


def remove_all(store: RocksqStore, now: float) -> list[bool]:
    return [store.remove_drained(q, IDLE, now) for q in QUEUES]


@pytest.fixture
def store(tmp_path: Path) -> Iterator[RocksqStore]:
    with contextlib.closing(RocksqStore(tmp_path / "dlq", segment_max_messages=10)) as s:
        yield s


def fill_and_drain(store: RocksqStore) -> None:
    for q in QUEUES:
        store.enqueue(q, items(0, 25))
        assert drain(store, q, batch=7) == items(0, 25)


def test_drained_queues_leave_what_an_empty_base_path_holds(
    store: RocksqStore, tmp_path: Path
) -> None:
    fill_and_drain(store)
    base = tmp_path / "dlq"
    assert any(p.startswith("source_") for p in listing(base))
    assert remove_all(store, 0.0) == [False] * 3  # first seen drained
    assert remove_all(store, IDLE - 1) == [False] * 3  # not idle long enough
    assert any(p.startswith("source_") for p in listing(base))
    assert remove_all(store, IDLE) == [True] * 3
    assert listing(base) == empty_base_listing(tmp_path)
    assert store.list_queues() == []
    assert store.rescan() == []


def test_restart_after_removal_lists_nothing(store: RocksqStore, tmp_path: Path) -> None:
    fill_and_drain(store)
    remove_all(store, 0.0)
    remove_all(store, IDLE)
    store.close()
    again = RocksqStore(tmp_path / "dlq")
    try:
        assert again.list_queues() == []
        assert again.count(QUEUES[0]) == 0
        assert listing(tmp_path / "dlq") == empty_base_listing(tmp_path)
    finally:
        again.close()


def test_enqueue_after_removal_recreates_the_queue_end_to_end(
    store: RocksqStore, tmp_path: Path
) -> None:
    q = QUEUES[0]
    fill_and_drain(store)
    remove_all(store, 0.0)
    remove_all(store, IDLE)
    store.enqueue(q, items(100, 130))
    assert store.list_queues() == [q]
    assert (store.queue_path(q) / "queue.json").is_file()
    lease = store.read(q, 12)
    assert lease.payloads == items(100, 112)
    store.ack(lease)
    store.close()
    again = RocksqStore(tmp_path / "dlq", segment_max_messages=10)
    try:
        assert again.list_queues() == [q]
        assert drain(again, q) == items(112, 130)
    finally:
        again.close()


def test_no_descriptor_stays_open_on_a_removed_queue(store: RocksqStore) -> None:
    q = QUEUES[0]
    store.enqueue(q, items(0, 5))
    drain(store, q)
    store.count(q.parked)
    path = str(store.queue_path(q))
    assert store.remove_drained(q, IDLE, 0.0) is False
    assert store.remove_drained(q, IDLE, IDLE) is True
    fds = os.listdir("/proc/self/fd")
    targets = []
    for fd in fds:
        try:
            targets.append(os.readlink(f"/proc/self/fd/{fd}"))
        except OSError:
            continue
    assert not [t for t in targets if t.startswith(path)]


def test_kept_while_the_parked_lane_holds_messages(store: RocksqStore) -> None:
    q = QUEUES[0]
    store.enqueue(q, items(0, 5))
    store.enqueue(q.parked, items(50, 52))
    drain(store, q)
    for now in (0.0, IDLE, 10 * IDLE):
        assert store.remove_drained(q, IDLE, now) is False
    assert store.count(q.parked) == 2
    assert drain(store, q.parked) == items(50, 52)
    assert store.remove_drained(q, IDLE, 11 * IDLE) is False  # the drain just happened
    assert store.remove_drained(q, IDLE, 12 * IDLE) is True
    assert not store.queue_path(q).exists()


def test_kept_while_a_lease_is_out_or_messages_remain(store: RocksqStore) -> None:
    q = QUEUES[0]
    store.enqueue(q, items(0, 5))
    lease = store.read(q, 5)
    for now in (0.0, IDLE, 2 * IDLE):
        assert store.remove_drained(q, IDLE, now) is False
    store.release(lease)
    for now in (3 * IDLE, 4 * IDLE):
        assert store.remove_drained(q, IDLE, now) is False
    assert drain(store, q) == items(0, 5)


def test_use_between_passes_restarts_the_idle_time(store: RocksqStore) -> None:
    q = QUEUES[0]
    store.enqueue(q, items(0, 3))
    drain(store, q)
    assert store.remove_drained(q, IDLE, 0.0) is False
    store.enqueue(q, items(3, 4))  # used and drained again: empty at each pass
    drain(store, q)
    assert store.remove_drained(q, IDLE, IDLE) is False
    assert store.queue_path(q).is_dir()
    assert store.remove_drained(q, IDLE, 2 * IDLE) is True


def test_a_busy_queue_is_skipped_without_waiting(store: RocksqStore) -> None:
    q = QUEUES[0]
    store.enqueue(q, items(0, 3))
    drain(store, q)
    store.remove_drained(q, IDLE, 0.0)
    with held_elsewhere(store._state(q).lock):
        assert store.remove_drained(q, IDLE, IDLE) is False
    assert store.remove_drained(q, IDLE, IDLE) is True


def test_other_content_keeps_the_directory_and_siblings_keep_parents(
    store: RocksqStore,
) -> None:
    users, orders = QUEUES[0], QUEUES[1]
    fill_and_drain(store)
    kept = store.queue_path(users) / "quarantine" / "m1.json"
    kept.parent.mkdir()
    kept.write_text("{}")
    remove_all(store, 0.0)
    assert remove_all(store, IDLE) == [False, True, True]
    assert kept.read_text() == "{}"
    assert (store.queue_path(users) / "queue.json").is_file()
    assert not store.queue_path(orders).exists()
    assert store.queue_path(orders).parent.parent.is_dir()  # source_1 holds users


def test_concurrent_enqueues_lose_nothing_while_removal_runs(store: RocksqStore) -> None:
    """Writers in bursts, a reader draining, and removal every moment (idle 0)."""
    q, sibling = QUEUES[0], QUEUES[1]
    writers, per_writer = 3, 150
    stop = threading.Event()
    removed = [0]
    got: list[bytes] = []

    def write(n: int) -> None:
        for i in range(per_writer):
            store.enqueue(q if i % 5 else sibling, [f"{n}:{i}".encode()])
            if i % 20 == 0:
                stop.wait(0.002)  # let the queue drain and be removed in between

    def remove() -> None:
        while not stop.is_set():
            for queue in (q, sibling):
                removed[0] += store.remove_drained(queue, 0.0)

    def read() -> None:
        while not stop.is_set() or store.count(q) or store.count(sibling):
            for queue in (q, sibling):
                lease = store.read(queue, 50)
                got.extend(lease.payloads)
                store.ack(lease)

    threads = [threading.Thread(target=write, args=(n,)) for n in range(writers)]
    helpers = [threading.Thread(target=remove), threading.Thread(target=read)]
    for t in threads + helpers:
        t.start()
    for t in threads:
        t.join()
    stop.set()
    for t in helpers:
        t.join()
    assert removed[0] > 0
    expected = {f"{n}:{i}".encode() for n in range(writers) for i in range(per_writer)}
    assert sorted(got) == sorted(expected)  # each exactly once
    for n in range(writers):
        mine = [int(p.split(b":")[1]) for p in got if p.startswith(f"{n}:".encode())]
        for queue_part in (
            [i for i in mine if i % 5],
            [i for i in mine if not i % 5],
        ):
            assert queue_part == sorted(queue_part)  # FIFO per queue and writer


def disk_bytes(path: Path) -> int:
    if path.is_file():
        return path.stat().st_blocks * 512
    return sum(
        os.lstat(os.path.join(root, name)).st_blocks * 512
        for root, dirs, files in os.walk(path)
        for name in dirs + files
    )


# Incompressible (frames are compressed): 8 MB of log.
BIG = [os.urandom(4000) for _ in range(2000)]


def test_the_room_kept_to_reopen_queues_shrinks_back_once_none_is_left(tmp_path: Path) -> None:
    """The reserve grows with the largest log written; with every queue gone it is not needed."""
    store = RocksqStore(tmp_path / "dlq")
    store.enqueue(QUEUES[0], BIG)  # an 8 MB log: the reserve grows
    assert disk_bytes(tmp_path / "dlq" / ".rosetta.reserve") > 8_000_000
    store.enqueue(QUEUES[1], items(0, 1))
    assert drain(store, QUEUES[0], batch=500) == BIG
    assert drain(store, QUEUES[1]) == items(0, 1)
    assert remove_all(store, 0.0) == [False] * 3
    assert remove_all(store, IDLE)[:2] == [True, True]
    fresh = RocksqStore(tmp_path / "fresh")
    fresh.close()
    assert disk_bytes(tmp_path / "dlq") == disk_bytes(tmp_path / "fresh")
    store.close()


def test_a_restart_on_an_empty_base_path_gives_the_room_back(tmp_path: Path) -> None:
    store = RocksqStore(tmp_path / "dlq")
    store.enqueue(QUEUES[0], BIG)
    assert drain(store, QUEUES[0], batch=500) == BIG
    store.close()
    # No removal pass ran: the drained queue's directory is still there...
    store = RocksqStore(tmp_path / "dlq")
    assert store.list_queues() == [QUEUES[0]]
    assert disk_bytes(tmp_path / "dlq" / ".rosetta.reserve") > 8_000_000
    store.close()
    # ...and once it is gone, a restart shrinks the reserve.
    shutil.rmtree(tmp_path / "dlq" / "source_1")
    store = RocksqStore(tmp_path / "dlq")
    assert disk_bytes(tmp_path / "dlq" / ".rosetta.reserve") <= 1 << 20
    store.close()
