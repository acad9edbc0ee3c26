"""A disk filled to the last byte (``DLQ_MIN_FREE_DISK_MB=0``): replay still drains it.

Opening a RocksDB queue flushes its write-ahead log first and needs about
its size of free room; a handle that hit ENOSPC is dead and must be
reopened. The store keeps that room in ``<base>/.rosetta.reserve`` and gives
it up for such an open, so the queue can be replayed (which is what frees the
disk), after a restart too, and a failed open leaves no file behind.
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from compute.delivery.health import DestinationHealth
from compute.dlq.manager import DLQManager
from compute.errors import DLQFullError
from compute.queue_id import QueueId
from compute.recovery.worker import DLQRecoveryWorker
from config.dlq_config import DLQConfig
from tests.builders import messages
from tests.fakes import FakeDestination
from tests.tmpfs import fill_disk

DEST = "2"
Q = QueueId("1", "public.accounts", DEST)


def config(disk: Path) -> DLQConfig:
    return DLQConfig(
        base_path=disk / "dlq",
        min_free_disk_mb=0,  # the floor off: the disk really fills up
        check_interval=0.1,
        backoff_base_ms=1,
        backoff_max_ms=5,
        batch_size=500,
    )


def fill_queue(dlq: DLQManager) -> list[int]:
    """Enqueue until the disk refuses; the ids accepted, in order."""
    accepted: list[int] = []
    for start in range(0, 1_000_000, 200):
        try:
            # Random notes: zlib cannot shrink them, so the log grows as the queue does.
            dlq.enqueue(
                Q, messages(Q, range(start, start + 200), note=lambda: os.urandom(60).hex())
            )
        except DLQFullError as error:
            assert error.limit == "disk_full" and "No space left" in str(error)
            break
        accepted.extend(range(start, start + 200))
    assert len(accepted) > 5_000
    return accepted


def worker_for(dlq: DLQManager, dest: FakeDestination, cfg: DLQConfig) -> DLQRecoveryWorker:
    health = {DEST: DestinationHealth(dest)}
    return DLQRecoveryWorker("p", "1", [dest], health, dlq, cfg, probe_timeout=1.0)


def drain(worker: DLQRecoveryWorker, dlq: DLQManager) -> None:
    now = 1_000.0
    for _ in range(200):
        worker.run_once(now)
        now += 10
        if not dlq.has_messages(Q):
            return
    raise AssertionError(f"not drained: {dlq.store.count(Q)} messages left")


def files_under(path: Path) -> set[str]:
    return {str(p.relative_to(path)) for p in path.rglob("*")}


def test_replay_drains_a_full_disk_without_a_restart(small_disk: Path) -> None:
    cfg = config(small_disk)
    dest = FakeDestination(DEST, "PG")
    with DLQManager(cfg, background=False) as dlq:
        accepted = fill_queue(dlq)
        fill_disk(small_disk)  # every write of RocksDB now fails: handles die, reopen needs room
        drain(worker_for(dlq, dest, cfg), dlq)
    assert [r.key["id"] for r in dest.applied if r.table == Q.table] == accepted


def test_restart_on_a_full_disk_comes_up_and_drains(small_disk: Path) -> None:
    cfg = config(small_disk)
    with DLQManager(cfg, background=False) as dlq:
        accepted = fill_queue(dlq)
    fill_disk(small_disk)
    dest = FakeDestination(DEST, "PG")
    with DLQManager(cfg, background=False) as dlq:  # opening the queue flushes its whole log
        assert dlq.store.count(Q) == len(accepted)
        drain(worker_for(dlq, dest, cfg), dlq)
        assert dlq.store.count(Q) == 0
    assert [r.key["id"] for r in dest.applied if r.table == Q.table] == accepted
    queue_dir = cfg.base_path / Q.relative_path
    assert not [p for p in queue_dir.iterdir() if p.name.startswith("seg_")]  # all retired


def test_failed_opens_leave_no_files_and_the_queue_drains_once_room_is_back(
    small_disk: Path,
) -> None:
    cfg = config(small_disk)
    with DLQManager(cfg, background=False) as dlq:
        accepted = fill_queue(dlq)
    # No reserve: as left by an older version (or taken by another process).
    (cfg.base_path / ".rosetta.reserve").unlink(missing_ok=True)
    fill_disk(small_disk)
    queue_dir = cfg.base_path / Q.relative_path
    before = files_under(queue_dir)
    with DLQManager(cfg, background=False) as dlq:
        for _ in range(3):
            with pytest.raises(DLQFullError) as caught:  # typed, and says what to do
                dlq.store.count(Q)
        # Each failed open used to leave a half-written table file and an info log.
        assert files_under(queue_dir) == before
        assert "free disk space" in str(caught.value)
        (small_disk / "filler").unlink()
        dest = FakeDestination(DEST, "PG")
        assert dlq.store.count(Q) == len(accepted)
        drain(worker_for(dlq, dest, cfg), dlq)
    assert [r.key["id"] for r in dest.applied if r.table == Q.table] == accepted
