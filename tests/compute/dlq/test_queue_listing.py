"""Listing queues answers from memory; the disk is walked at start-up and on rescans only."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

import compute.storage.rocksq.discovery as discovery
from compute.dlq.manager import DLQManager
from compute.queue_id import QueueId
from compute.storage.rocksq.store import RocksqStore
from tests.compute.dlq.test_manager import config
from tests.waiting import wait_until

Q = QueueId("1", "public.users", "2")
NEW = QueueId("1", "public.orders", "2")


def test_listing_touches_no_disk_and_moves_nothing(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    store = RocksqStore(tmp_path / "dlq")
    store.enqueue(Q, [b"one"])
    # A directory that names no queue but holds data, appearing after start-up.
    stray = tmp_path / "dlq" / "source_1" / "table_x" / "dest_%zz"
    (stray / "seg_000000000001").mkdir(parents=True)
    scans: list[object] = []
    real_scandir = os.scandir

    def counting_scandir(path: object) -> object:
        scans.append(path)
        return real_scandir(path)  # type: ignore[arg-type]

    monkeypatch.setattr(discovery.os, "scandir", counting_scandir)
    for _ in range(50):
        assert store.list_queues() == [Q]  # created by enqueue: known at once
    assert scans == []
    assert stray.is_dir() and not store.quarantined
    # The rescan walks the disk, and sets the stray directory aside there.
    store.rescan()
    assert scans
    assert not stray.exists()
    assert [where for _, where, _ in store.quarantined] != []
    store.close()


def test_a_queue_made_elsewhere_appears_after_a_rescan(tmp_path: Path) -> None:
    store = RocksqStore(tmp_path / "dlq")
    other = RocksqStore(tmp_path / "dlq", lock_base_path=False)
    other.enqueue(NEW, [b"made by another process"])
    other.close()
    assert store.list_queues() == []
    assert store.rescan() == [NEW]
    assert store.list_queues() == [NEW]
    assert store.count(NEW) == 1
    store.close()


def test_the_manager_rescans_every_rescan_interval(tmp_path: Path) -> None:
    with DLQManager(config(tmp_path, rescan_interval=1.0)) as manager:
        other = RocksqStore(tmp_path / "dlq", lock_base_path=False)
        other.enqueue(NEW, [b"made by another process"])
        other.close()
        assert manager.list_queues() == []
        assert manager.list_queues(refresh=True) == [NEW]
    with DLQManager(config(tmp_path / "second", rescan_interval=1.0)) as manager:
        other = RocksqStore(tmp_path / "second" / "dlq", lock_base_path=False)
        other.enqueue(NEW, [b"made by another process"])
        other.close()
        wait_until(lambda: manager.list_queues() == [NEW], 10, "the periodic rescan")
