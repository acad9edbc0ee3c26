"""A restart trusts the segment counts recorded at rollover and clean close, and checks them lazily.

A long queue restarts without reading every frame: only the head segment
(and a write segment left unrecorded by a kill -9) is opened before the
first read. Counts stay exact after a clean close and after kill -9, and a
segment that lost messages since it was recorded is still reported when
reached.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from compute.queue_id import QueueId
from compute.storage.rocksq.opener import SegmentOpener
from compute.storage.rocksq.store import RocksqStore
from tests.compute.helpers import STORE_QUEUE, drain, items

Q = STORE_QUEUE
ROOT = Path(__file__).resolve().parents[3]
PER_SEGMENT = 100
TOTAL = 550  # 6 segments: 5 full, the write segment half full


def fill(base: Path, total: int = TOTAL) -> list[int]:
    """Write ``total`` messages in batches of 10, close cleanly; the segment numbers."""
    store = RocksqStore(base, segment_max_messages=PER_SEGMENT)
    for start in range(0, total, 10):
        store.enqueue(Q, items(start, start + 10, 40))
    store.close()
    return segment_numbers(base)


def segment_numbers(base: Path, queue: QueueId = Q) -> list[int]:
    queue_dir = base / queue.relative_path
    return sorted(int(p.name[4:]) for p in queue_dir.iterdir() if p.name.startswith("seg_"))


def records(base: Path) -> dict[str, dict[str, object]]:
    data: dict[str, dict[str, object]] = json.loads(
        (base / Q.relative_path / "segments.json").read_text()
    )
    return data


@pytest.fixture
def opened(monkeypatch: pytest.MonkeyPatch) -> Iterator[list[int]]:
    """Segment numbers opened from now on, in order."""
    seen: list[int] = []
    real = SegmentOpener.open

    def spy(self: SegmentOpener, path: Path, queue: QueueId):  # type: ignore[no-untyped-def]
        seen.append(int(path.name[4:]))
        return real(self, path, queue)

    monkeypatch.setattr(SegmentOpener, "open", spy)
    yield seen


def test_clean_restart_opens_only_the_head(tmp_path: Path, opened: list[int]) -> None:
    base = tmp_path / "dlq"
    numbers = fill(base)
    assert len(numbers) == 6
    exact = records(base)["exact"]
    assert sorted(exact) == [str(n) for n in numbers]  # every segment final at a clean close
    opened.clear()
    store = RocksqStore(base, segment_max_messages=PER_SEGMENT)
    assert store.count(Q) == TOTAL
    lease = store.read(Q, 25)
    assert lease.payloads == items(0, 25, 40)
    # The head counted at load (checking its record), then opened to read; not
    # one frame of the other five was read.
    assert opened == [numbers[0], numbers[0]]
    store.ack(lease)
    assert drain(store, batch=30) == items(25, TOTAL, 40)
    assert opened == [numbers[0], *numbers]  # the others once, when the reader reached them
    store.close()


def test_first_write_after_a_restart_drops_the_tail_record_before_writing(
    tmp_path: Path, opened: list[int]
) -> None:
    base = tmp_path / "dlq"
    numbers = fill(base)
    store = RocksqStore(base, segment_max_messages=PER_SEGMENT)
    assert store.count(Q) == TOTAL
    assert str(numbers[-1]) in records(base)["exact"]
    store.enqueue(Q, items(TOTAL, TOTAL + 5, 40))
    data = records(base)
    assert str(numbers[-1]) not in data["exact"]  # a crash now counts it
    assert data["written"][str(numbers[-1])] == 50  # still a lower bound for loss checks
    assert sorted(data["exact"]) == [str(n) for n in numbers[:-1]]
    store.enqueue(Q, items(TOTAL + 5, TOTAL + 10, 40))
    assert records(base) == data  # once per load, not per enqueue
    store.close()
    assert records(base)["exact"][str(numbers[-1])] == [7, 60]  # final again after the close


_WRITER = """
import sys
from pathlib import Path
from compute.storage.rocksq.store import RocksqStore
from tests.compute.helpers import STORE_QUEUE, items
base, start, stop = Path(sys.argv[1]), int(sys.argv[2]), int(sys.argv[3])
store = RocksqStore(base, segment_max_messages=int(sys.argv[4]))
assert store.count(STORE_QUEUE) == start
for first in range(start, stop, 10):
    store.enqueue(STORE_QUEUE, items(first, first + 10, 40))
print("written", flush=True)
sys.stdin.read()
"""


def write_and_kill(base: Path, start: int, stop: int) -> None:
    """Enqueue ``start``..``stop`` in a subprocess and kill -9 it once they were accepted."""
    proc = subprocess.Popen(
        [sys.executable, "-c", _WRITER, str(base), str(start), str(stop), str(PER_SEGMENT)],
        cwd=ROOT,
        env={**os.environ, "PYTHONPATH": str(ROOT)},
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
    )
    assert proc.stdout is not None
    assert proc.stdout.readline().strip() == "written"
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait(timeout=30)
    assert proc.returncode == -signal.SIGKILL


@pytest.mark.parametrize("closed_before", [False, True], ids=["fresh", "after_clean_close"])
def test_counts_are_exact_after_kill_9(
    tmp_path: Path, opened: list[int], closed_before: bool
) -> None:
    """Full segments trust their rollover record; the unrecorded write segment is counted."""
    base = tmp_path / "dlq"
    start = 0
    if closed_before:
        fill(base)  # the write segment recorded as final, then written to by the killed writer
        start = TOTAL
    write_and_kill(base, start, start + 530)
    numbers = segment_numbers(base)
    assert str(numbers[-1]) not in records(base)["exact"]
    opened.clear()
    store = RocksqStore(base, segment_max_messages=PER_SEGMENT)
    assert store.count(Q) == start + 530
    assert opened == [numbers[-1], numbers[0]]  # the unrecorded tail counted, the head opened
    assert drain(store, batch=40) == items(0, start + 530, 40)
    store.close()


def wal_files(segment: Path) -> list[Path]:
    return [p for p in segment.iterdir() if p.suffix == ".log" and not p.name.startswith("LOG")]


@pytest.mark.parametrize("damage", ["delete", "truncate"])
def test_segment_that_lost_its_log_after_a_clean_close_is_reported_when_reached(
    tmp_path: Path, damage: str
) -> None:
    base = tmp_path / "dlq"
    store = RocksqStore(base, segment_max_messages=PER_SEGMENT)
    for start in range(0, 300, 10):  # distinct, random-ish payloads: the log is not tiny
        store.enqueue(Q, items(start, start + 10, 300))
    store.close()
    numbers = segment_numbers(base)
    middle = base / Q.relative_path / f"seg_{numbers[1]:012d}"
    [wal] = wal_files(middle)  # a clean close leaves the data in the log
    if damage == "delete":
        wal.unlink()
    else:
        os.truncate(wal, wal.stat().st_size // 2)
    store = RocksqStore(base, segment_max_messages=PER_SEGMENT)
    assert store.count(Q) == 300  # the recorded counts: nothing read yet
    assert drain(store, batch=50) == items(0, 100, 300)  # the head is intact
    [(queue, moved_to, reason)] = store.quarantined  # set aside when the reader got there
    assert queue == Q and moved_to.parent == base / "quarantine"
    assert f"segment {numbers[1]} holds " in reason and "of 100 items written" in reason
    assert "unacknowledged lost" in reason and "write-ahead log" in reason
    assert store.count(Q) == 0
    store.close()


def test_old_segments_json_without_exact_counts_is_counted(
    tmp_path: Path, opened: list[int]
) -> None:
    base = tmp_path / "dlq"
    numbers = fill(base)
    path = base / Q.relative_path / "segments.json"
    written = records(base)["written"]
    path.write_text(json.dumps({"written": written}))  # as written by the previous version
    opened.clear()
    store = RocksqStore(base, segment_max_messages=PER_SEGMENT)
    assert store.count(Q) == TOTAL
    assert opened == numbers  # counted, as before
    assert drain(store, batch=60) == items(0, TOTAL, 40)
    store.close()


def test_wrong_recorded_count_is_recounted_when_opened(tmp_path: Path) -> None:
    """A record that says less than the segment holds loses nothing: it is recounted."""
    base = tmp_path / "dlq"
    numbers = fill(base)
    data = records(base)
    data["exact"][str(numbers[2])] = [5, 50]  # type: ignore[index]
    data["written"][str(numbers[2])] = 50  # type: ignore[index]
    (base / Q.relative_path / "segments.json").write_text(json.dumps(data))
    store = RocksqStore(base, segment_max_messages=PER_SEGMENT)
    assert store.count(Q) == TOTAL - 50
    assert drain(store, batch=30) == items(0, TOTAL, 40)
    assert store.count(Q) == 0
    store.close()


def test_repeated_restarts_keep_the_segment_files_bounded(tmp_path: Path) -> None:
    """Each open flushes the log into a new table file; RocksDB merges them, none pile up."""
    base = tmp_path / "dlq"
    store = RocksqStore(base)
    store.enqueue(Q, items(0, 3000, 100))
    store.close()
    [number] = segment_numbers(base)
    segment = base / Q.relative_path / f"seg_{number:012d}"
    sizes = []
    for cycle in range(30):
        store = RocksqStore(base)
        lease = store.read(Q, 10)
        assert lease.payloads == items(cycle * 10, cycle * 10 + 10, 100)
        store.ack(lease)
        store.close()
        names = os.listdir(segment)
        # RocksDB rotates its info log at each open; the next open removes the old one.
        assert len([n for n in names if n.startswith("LOG.old")]) <= 1
        sizes.append(len(names))
    # Measured: 11 to 18 files, a cycle of 4 after the first merge (RocksDB merges
    # its small table files once it holds about 4 to 8 of them).
    assert max(sizes) <= 20, sizes
    assert max(sizes[10:]) <= max(sizes[:10]), sizes  # no growth over the cycles
