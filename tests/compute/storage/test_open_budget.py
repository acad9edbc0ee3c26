"""Many active queues stay open within a file-descriptor budget; what closes, and when."""

from __future__ import annotations

import logging
import subprocess
import sys
from pathlib import Path

import pytest

from compute.queue_id import QueueId
from compute.storage.rocksq import opener
from compute.storage.rocksq.open_budget import (
    MAX_AUTO_SEGMENTS,
    MIN_SEGMENTS,
    open_segment_budget,
)
from compute.storage.rocksq.store import RocksqStore
from tests.compute.helpers import drain, items


def queues(count: int) -> list[QueueId]:
    return [QueueId("1", f"public.t{i:03d}", "2") for i in range(count)]


@pytest.fixture
def opened(monkeypatch: pytest.MonkeyPatch) -> list[Path]:
    """Every segment directory a RocksDB instance is opened on, in order."""
    paths: list[Path] = []
    real = opener.SegmentOpener._open_segment

    def spy(self: opener.SegmentOpener, path: Path):  # type: ignore[no-untyped-def]
        paths.append(path)
        return real(self, path)

    monkeypatch.setattr(opener.SegmentOpener, "_open_segment", spy)
    return paths


def test_the_budget_follows_the_open_file_limit() -> None:
    assert open_segment_budget(1024) == 76  # a quarter kept for the engine's other files
    assert open_segment_budget(20_000) == 1500
    assert open_segment_budget(1 << 20) == MAX_AUTO_SEGMENTS  # memory caps it
    assert open_segment_budget(64) == MIN_SEGMENTS


def test_the_soft_open_file_limit_is_raised_to_the_hard_one_and_said() -> None:
    """As databases do: a soft limit of 256 would hold a couple of dozen queues."""
    script = (
        "import logging, resource\n"
        "logging.basicConfig(level=logging.INFO, format='%(message)s')\n"
        "soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)\n"
        "resource.setrlimit(resource.RLIMIT_NOFILE, (256, hard))\n"
        "from compute.storage.rocksq.open_budget import raise_open_file_limit\n"
        "now = raise_open_file_limit()\n"
        "print(now == resource.getrlimit(resource.RLIMIT_NOFILE)[0], now > 256 or hard == 256)\n"
    )
    done = subprocess.run(
        [sys.executable, "-c", script], capture_output=True, text=True, timeout=60, check=True
    )
    assert done.stdout.split() == ["True", "True"]
    hard = int(subprocess.run(["sh", "-c", "ulimit -Hn"], capture_output=True, text=True).stdout)
    if hard > 256:
        assert f"raised the open-file limit for DLQ queues: soft=256 -> {hard}" in done.stderr


def test_active_queues_are_not_reopened_for_each_enqueue(tmp_path: Path, opened: list) -> None:
    """200 queues written in turn: each opened once, however many rounds follow."""
    store = RocksqStore(tmp_path)
    names = queues(200)
    for queue in names:
        store.enqueue(queue, items(0, 10))
    assert len(opened) == 200
    for round_ in range(1, 4):
        for queue in names:
            store.enqueue(queue, items(10 * round_, 10 * round_ + 10))
    assert len(opened) == 200
    for queue in names:  # and replay does not reopen them either
        assert drain(store, queue) == items(0, 40)
    assert len(opened) == 200
    store.close()


def test_over_the_cap_segments_serving_no_work_close_first(tmp_path: Path, opened: list) -> None:
    """Closing the segment a queue is read or written in means reopening it right after."""
    store = RocksqStore(tmp_path, segment_max_messages=10, max_open_handles=4)
    long_queue, busy, newcomer = queues(3)
    store.enqueue(busy, items(0, 5))
    for start in range(0, 30, 10):
        store.enqueue(long_queue, items(start, start + 10))
    # An export opens the long queue's middle segment too: 4 handles open.
    assert [m for chunk in store.scan(long_queue) for m in chunk] == items(0, 30)
    store.enqueue(busy, items(5, 6))
    opened.clear()
    store.enqueue(newcomer, items(0, 1))  # one over the cap: the export's segment goes
    lease = store.read(long_queue, 5)
    assert lease.payloads == items(0, 5)
    store.ack(lease)
    store.enqueue(busy, items(6, 7))
    # Neither the long queue's reader segment nor busy's was reopened.
    assert [p.parent.parent.name for p in opened] == ["table_public.t002"]
    assert drain(store, long_queue) == items(5, 30)  # the middle one reopens when reached
    assert [p.parent.parent.name for p in opened][1:] == ["table_public.t000"]
    store.close()


def test_idle_segments_close_unless_they_serve_pending_work(tmp_path: Path) -> None:
    now = [1000.0]
    store = RocksqStore(tmp_path, segment_max_messages=10, clock=lambda: now[0])
    queue = queues(1)[0]
    for start in range(0, 30, 10):
        store.enqueue(queue, items(start, start + 10))
    # An export opens the middle segment; then the queue waits for its destination.
    assert [m for chunk in store.scan(queue) for m in chunk] == items(0, 30)
    state = store._states[queue]
    assert len(state.handles) == 3
    now[0] += 3600
    assert store.close_idle(60) == 1  # the export's; the reader's and the writer's stay
    assert sorted(state.handles) == [state.segments[0], state.segments[-1]]
    assert drain(store, queue) == items(0, 30)
    store.close()


def test_a_full_segment_is_closed_once_written(tmp_path: Path, opened: list) -> None:
    """A long queue's memory stays flat: only the reader's and the writer's segments stay open."""
    store = RocksqStore(tmp_path, segment_max_messages=10)
    queue = queues(1)[0]
    for start in range(0, 60, 10):
        store.enqueue(queue, items(start, start + 10))
    state = store._states[queue]
    assert sorted(state.handles) == [state.segments[0], state.segments[-1]]
    assert drain(store, queue) == items(0, 60)  # each closed segment reopened once, in order
    assert len(opened) == 6 + 4
    store.close()


def test_an_explicit_cap_beyond_the_file_limit_is_warned_about(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    with caplog.at_level(logging.WARNING):
        RocksqStore(tmp_path, max_open_handles=100_000).close()
    assert "DLQ_MAX_OPEN_QUEUES=100000 may run out of file descriptors" in caplog.text
