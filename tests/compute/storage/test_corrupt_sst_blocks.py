"""A flipped bit in a data block of a large queue's SST file: set aside, never a crash.

The queue is large enough that RocksDB writes its data to a multi-megabyte
SST file, so the flips land in data blocks (not in the small files, and not
in the footer). RocksDB opens such a file fine and only fails when the
damaged block is read: when the store counts the queue at load, or when a
read, peek or scan reaches it later. Whichever comes first, the queue is
moved to ``<base>/quarantine/`` with a reason, and every other queue goes on.
"""

from __future__ import annotations

import json
import random
import shutil
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from compute.codec.failure_context import FailureContext
from compute.dlq.manager import DLQManager
from compute.queue_id import QueueId
from config.dlq_config import DLQConfig
from tests.builders import messages

BIG = QueueId("1", "public.big", "1")
GOOD = QueueId("1", "public.good", "1")
FAILURE = FailureContext("OperationalError", "down", code="08006")
BIG_COUNT = 30_000  # ~300-byte messages: about 9 MB, flushed to one large SST


def config(base: Path) -> DLQConfig:
    return DLQConfig(base_path=base, min_free_disk_mb=0)


def random_note() -> str:
    return random.randbytes(100).hex()


@pytest.fixture(scope="module")
def pristine(tmp_path_factory: pytest.TempPathFactory) -> Path:
    base = tmp_path_factory.mktemp("big") / "dlq"
    with DLQManager(config(base), background=False) as dlq:
        for start in range(0, BIG_COUNT, 500):
            dlq.enqueue(BIG, messages(BIG, range(start, start + 500), FAILURE, note=random_note))
        dlq.enqueue(GOOD, messages(GOOD, range(5), FAILURE, note=random_note))
    # Reopening flushes the write-ahead log into an SST file.
    with DLQManager(config(base), background=False) as dlq:
        assert dlq.store.count(BIG) == BIG_COUNT
    sst = biggest_sst(base)
    # Frames are zlib-compressed: the ~300-byte messages take about half on disk.
    assert sst.stat().st_size > BIG_COUNT * 100, sst.stat().st_size
    return base


def biggest_sst(base: Path) -> Path:
    [segment] = [p for p in (base / BIG.relative_path).iterdir() if p.name.startswith("seg_")]
    return max(segment.glob("*.sst"), key=lambda p: p.stat().st_size)


def flip_bits(base: Path, where: float) -> None:
    sst = biggest_sst(base)
    data = bytearray(sst.read_bytes())
    offset = int(len(data) * where)
    assert offset < len(data) - 64 * 1024  # data blocks, well before the index and footer
    data[offset] ^= 0xFF
    data[offset + 1] ^= 0x55
    sst.write_bytes(bytes(data))


def do_count(dlq: DLQManager) -> Any:
    return dlq.store.count(BIG)


def do_read(dlq: DLQManager) -> Any:
    """Replay the whole queue as the recovery worker does."""
    got = 0
    while not (lease := dlq.read_batch(BIG, 1000)).is_empty:
        got += len(lease.messages)
        dlq.ack(lease)
    return got


def do_peek(dlq: DLQManager) -> Any:
    return dlq.peek(BIG, BIG_COUNT)


def do_status(dlq: DLQManager) -> Any:
    return dlq.status(BIG)


def do_scan(dlq: DLQManager) -> Any:
    return sum(1 for _ in dlq.iter_messages(BIG))


OPERATIONS: dict[str, Callable[[DLQManager], Any]] = {
    "count": do_count,
    "read": do_read,
    "peek": do_peek,
    "status": do_status,
    "scan": do_scan,
}


def assert_set_aside_and_others_work(base: Path, dlq: DLQManager) -> None:
    [(queue, moved_to, reason)] = dlq.store.quarantined
    assert queue == BIG
    assert moved_to.parent == base / "quarantine"
    assert "damaged" in reason and "corrupt" in reason.lower()
    assert json.loads((moved_to / "reason.json").read_text())["reason"] == reason
    assert any(p.name.endswith(".sst") for p in next(moved_to.glob("seg_*")).iterdir())
    assert dlq.store.count(BIG) == 0  # starts empty
    assert [d["queue"] for d in dlq.damaged_queues()] == [str(BIG)]
    # Every other queue accepts and replays, in order; the damaged one takes new events.
    dlq.enqueue(GOOD, messages(GOOD, range(5, 8), FAILURE, note=random_note))
    dlq.enqueue(BIG, messages(BIG, range(10**6, 10**6 + 2), FAILURE, note=random_note))
    for queue, expected in ((GOOD, list(range(8))), (BIG, [10**6, 10**6 + 1])):
        lease = dlq.read_batch(queue, 100)
        assert [m.record.key["id"] for m in lease.messages] == expected
        dlq.ack(lease)


@pytest.mark.parametrize("operation", sorted(OPERATIONS))
@pytest.mark.parametrize("where", [0.1, 0.5, 0.9])
def test_damaged_data_block_found_at_load(
    pristine: Path, tmp_path: Path, where: float, operation: str
) -> None:
    base = tmp_path / "dlq"
    shutil.copytree(pristine, base)
    flip_bits(base, where)
    with DLQManager(config(base), background=False) as dlq:
        assert sorted(dlq.list_queues()) == [BIG, GOOD]
        OPERATIONS[operation](dlq)  # does not raise
        assert_set_aside_and_others_work(base, dlq)


@pytest.mark.parametrize("operation", ["read", "peek", "scan"])
@pytest.mark.parametrize("where", [0.1, 0.5, 0.9])
def test_damaged_data_block_found_by_a_later_read(
    pristine: Path, tmp_path: Path, where: float, operation: str
) -> None:
    """Damage that appears after the queue was counted is found by the read that reaches it."""
    base = tmp_path / "dlq"
    shutil.copytree(pristine, base)
    with DLQManager(config(base), background=False) as dlq:
        assert dlq.store.count(BIG) == BIG_COUNT  # loaded; its handles are closed again
        flip_bits(base, where)
        OPERATIONS[operation](dlq)  # does not raise
        assert_set_aside_and_others_work(base, dlq)
