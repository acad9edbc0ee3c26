"""A queue directory deleted or moved away while the store runs: nothing accepted is lost.

RocksDB keeps writing into deleted files through the descriptors it holds,
so without a check the store accepts messages that reach no directory.
"""

from __future__ import annotations

import logging
import os
import shutil
from collections.abc import Callable
from pathlib import Path

import pytest

from compute.dlq.manager import DLQManager
from compute.dlq.tombstones import TOMBSTONES_FILE
from compute.queue_id import QueueId
from compute.storage.rocksq.cursor import CURSOR_FILE
from compute.storage.rocksq.discovery import QUEUE_FILE
from compute.storage.rocksq.store import RocksqStore
from tests.compute.dlq.test_manager import config, message
from tests.compute.helpers import STORE_QUEUE, drain, items

Q = STORE_QUEUE
OTHER = QueueId("1", "public.orders", "2")


class Clock:
    """The store's clock, moved by hand (its presence check runs at most once a ms)."""

    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now

    def tick(self) -> None:
        self.now += 1.0


def remove(path: Path) -> None:
    shutil.rmtree(path)


def move_away(path: Path) -> None:
    os.rename(path, path.parent / "moved-away")


def removal_errors(caplog: pytest.LogCaptureFixture) -> list[str]:
    return [
        r.getMessage()
        for r in caplog.records
        if r.levelno == logging.ERROR and "removed or moved away" in r.getMessage()
    ]


@pytest.mark.parametrize("how", [remove, move_away], ids=["rmtree", "rename"])
def test_messages_accepted_after_the_removal_are_kept(
    tmp_path: Path, caplog: pytest.LogCaptureFixture, how: Callable[[Path], None]
) -> None:
    clock = Clock()
    store = RocksqStore(tmp_path / "dlq", segment_max_messages=10, clock=clock)
    store.enqueue(Q, items(0, 25))  # three segments
    store.ack(store.read(Q, 4))
    how(store.queue_path(Q))
    clock.tick()
    with caplog.at_level(logging.ERROR):
        store.enqueue(Q, items(25, 30))
        store.enqueue(Q, items(30, 31))
    assert store.count(Q) == 27
    store.close()
    # On disk in the recreated directory, in order, acknowledged ones excluded.
    store = RocksqStore(tmp_path / "dlq", segment_max_messages=10, clock=clock)
    assert drain(store) == items(4, 31)
    assert (store.queue_path(Q) / QUEUE_FILE).is_file()
    store.close()
    (line,) = removal_errors(caplog)
    assert "source=1 table=public.users destination=2" in line
    assert f"path={store.queue_path(Q)}" in line
    assert "salvaged=21 lost=0" in line


def test_a_lease_held_across_the_removal_is_acked_in_place(tmp_path: Path) -> None:
    clock = Clock()
    store = RocksqStore(tmp_path / "dlq", segment_max_messages=100, clock=clock)
    store.enqueue(Q, items(0, 10))
    lease = store.read(Q, 4)
    remove(store.queue_path(Q))
    clock.tick()
    store.enqueue(Q, items(10, 12))
    store.ack(lease)
    assert drain(store) == items(4, 12)
    store.close()


def test_removal_is_noticed_by_the_reader_too(tmp_path: Path) -> None:
    store = RocksqStore(tmp_path / "dlq", segment_max_messages=10)
    store.enqueue(Q, items(0, 15))
    remove(store.queue_path(Q))
    assert drain(store) == items(0, 15)
    store.enqueue(Q, items(15, 16))
    assert drain(store) == items(15, 16)
    store.close()


def test_closing_the_store_copies_back_what_only_open_handles_hold(tmp_path: Path) -> None:
    store = RocksqStore(tmp_path / "dlq", segment_max_messages=10)
    store.enqueue(Q, items(0, 15))
    move_away(store.queue_path(Q))
    store.close()
    store = RocksqStore(tmp_path / "dlq", segment_max_messages=10)
    assert drain(store) == items(0, 15)
    store.close()


def test_a_removed_directory_keeps_its_handle_open_until_copied_back(tmp_path: Path) -> None:
    """Evicting the handle would lose what only it can still read."""
    clock = Clock()
    store = RocksqStore(tmp_path / "dlq", max_open_handles=1, clock=clock)
    store.enqueue(Q, items(0, 5))
    remove(store.queue_path(Q))
    store.enqueue(OTHER, items(100, 101))  # opens a second handle: over the cap
    clock.tick()
    # Both queues hold messages: their segments stay open, idle or not.
    assert store.close_idle(0) == 0
    clock.tick()
    store.enqueue(Q, items(5, 6))
    assert drain(store) == items(0, 6)
    store.close()


def test_lost_segments_are_counted_in_the_error(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """A segment removed with no open handle is gone: said, counted, and the queue goes on."""
    store = RocksqStore(tmp_path / "dlq", segment_max_messages=10)
    # Three segments: the reader's and the writer's stay open; the full one
    # between them was closed once written, nothing left to copy it from.
    store.enqueue(Q, items(0, 10))
    store.enqueue(Q, items(10, 20))
    store.enqueue(Q, items(20, 25))
    remove(store.queue_path(Q))
    with caplog.at_level(logging.ERROR):
        store.enqueue(Q, items(25, 27))
    (line,) = removal_errors(caplog)
    assert "salvaged=15 lost=10" in line
    assert drain(store) == items(0, 10) + items(20, 27)
    store.close()


def test_a_removed_cursor_file_is_written_again(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    store = RocksqStore(tmp_path / "dlq", segment_max_messages=100)
    store.enqueue(Q, items(0, 10))
    store.ack(store.read(Q, 3))
    (store.queue_path(Q) / CURSOR_FILE).unlink()
    with caplog.at_level(logging.ERROR):
        store.ack(store.read(Q, 3))
    assert any("cursor file removed" in r.getMessage() for r in caplog.records)
    store.close()
    store = RocksqStore(tmp_path / "dlq", segment_max_messages=100)
    assert drain(store) == items(6, 10)  # acknowledged ones do not come back
    store.close()


def test_tombstones_are_written_again_into_the_recreated_directory(tmp_path: Path) -> None:
    queue = QueueId("1", "public.accounts", "2")
    with DLQManager(config(tmp_path), background=False) as manager:
        manager.enqueue(queue, [message(i) for i in range(3)])
        manager.discard_message(queue, manager.peek(queue, 3)[1].message_id)
        remove(manager.store.queue_path(queue))
        lease = manager.read_batch(queue, 10)  # notices, recreates, restores the tombstone
        assert [m.record.key["id"] for m in lease.messages] == [0, 2]
        manager.release(lease)
        assert (manager.store.queue_path(queue) / TOMBSTONES_FILE).is_file()
    with DLQManager(config(tmp_path), background=False) as manager:
        lease = manager.read_batch(queue, 10)
        assert [m.record.key["id"] for m in lease.messages] == [0, 2]
