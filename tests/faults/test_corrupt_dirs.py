"""Fault matrix: damaged or foreign queue directories, found by an engine that was stopped.

One queue of several is damaged (each RocksDB file kind flipped, truncated or
deleted; its ``cursor.json`` too; stray files and empty directories at every
level of ``<base>/source_x/table_y/dest_z/``), then an engine starts on the
base path. Whatever the damage:

* every other queue drains fully, in order, into the destination;
* the damaged queue is set aside under ``<base>/quarantine/`` with its files
  and a ``reason.json``, and reported by ``damaged_queues()`` and
  ``Engine.status()``; or, where RocksDB recovers the data by itself, every
  unacknowledged message is delivered, in order (acknowledged ones at most
  again, never skipped).
"""

from __future__ import annotations

import json
import os
import shutil
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from compute.codec.failure_context import FailureContext
from compute.dlq.manager import DLQManager
from compute.engine.engine import Engine
from compute.engine.pipeline import Pipeline
from compute.queue_id import QueueId
from config.dlq_config import DLQConfig
from config.pipelines import DestinationSpec, PipelineSpec, SourceSpec
from tests.builders import change, engine_settings, messages
from tests.compute.helpers import ListSource
from tests.fakes import FakeDestination
from tests.waiting import wait_until

DEST = "fake"
GOOD_A = QueueId("1", "public.alpha", DEST)
BAD = QueueId("1", "public.bad", DEST)
GOOD_C = QueueId("1", "public.gamma", DEST)
QUEUES = (GOOD_A, BAD, GOOD_C)
FAILURE = FailureContext("OperationalError", "down", code="08006")
FIRST, SECOND = 300, 100  # messages per session: the first ends up in SSTs, the second in the WAL
ACKED = 40  # acknowledged from the damaged queue before the engine stopped
ALL_IDS = list(range(FIRST + SECOND))


def config(base: Path) -> DLQConfig:
    return DLQConfig(
        base_path=base,
        min_free_disk_mb=0,
        check_interval=0.1,
        backoff_base_ms=10,
        backoff_max_ms=50,
        batch_size=50,
    )


@pytest.fixture(scope="module")
def pristine(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Three queues written in two sessions (SST files and a WAL with data), some acked."""
    base = tmp_path_factory.mktemp("pristine") / "dlq"
    with DLQManager(config(base), background=False) as dlq:
        for queue in QUEUES:
            dlq.enqueue(queue, messages(queue, range(FIRST), FAILURE))
        dlq.ack(dlq.read_batch(BAD, 30))
    with DLQManager(config(base), background=False) as dlq:
        for queue in QUEUES:  # opening flushed the first session's WAL into SST files
            assert dlq.store.count(queue) == FIRST - (30 if queue == BAD else 0)
            dlq.enqueue(queue, messages(queue, range(FIRST, FIRST + SECOND), FAILURE))
        dlq.ack(dlq.read_batch(BAD, ACKED - 30))
    segment = segment_of(base)
    names = os.listdir(segment)
    assert any(n.endswith(".sst") for n in names) and any(n.endswith(".log") for n in names)
    return base


def segment_of(base: Path) -> Path:
    [segment] = [p for p in (base / BAD.relative_path).iterdir() if p.name.startswith("seg_")]
    return segment


# --------------------------------------------------------------------------- damage


def biggest(segment: Path, match: Callable[[str], bool]) -> Path:
    files = [segment / n for n in os.listdir(segment) if match(n)]
    assert files, f"no such file in {segment}: {os.listdir(segment)}"
    return max(files, key=lambda p: p.stat().st_size)


FILES: dict[str, Callable[[Path], Path]] = {
    "sst": lambda seg: biggest(seg, lambda n: n.endswith(".sst")),
    "wal": lambda seg: biggest(seg, lambda n: n.endswith(".log") and not n.startswith("LOG")),
    "manifest": lambda seg: biggest(seg, lambda n: n.startswith("MANIFEST-")),
    "current": lambda seg: seg / "CURRENT",
    "options": lambda seg: biggest(seg, lambda n: n.startswith("OPTIONS-")),
    "cursor": lambda seg: seg.parent / "cursor.json",
}


def flip(path: Path) -> None:
    data = bytearray(path.read_bytes())
    data[len(data) // 2] ^= 0xFF
    path.write_bytes(bytes(data))


def truncate(path: Path) -> None:
    os.truncate(path, path.stat().st_size // 2)


def delete(path: Path) -> None:
    path.unlink()


ACTIONS: dict[str, Callable[[Path], None]] = {"flip": flip, "truncate": truncate, "delete": delete}

# Where RocksDB (or the store) recovers the data by itself: nothing is set aside.
RECOVERED = {"options"}  # RocksDB does not need its OPTIONS files to open
REDELIVERED = {"cursor"}  # without a readable cursor the queue replays from its oldest message


# --------------------------------------------------------------------------- running


def run_engine(base: Path, new_events: int = 5) -> tuple[dict[str, Any], FakeDestination]:
    """Start an engine on ``base`` (a few new events too), wait until it drained, stop it."""
    fake = FakeDestination(DEST, "Fake")
    settings = engine_settings(config(base))
    new = [change(10_000 + i, 10_000 + i, table=GOOD_C.table) for i in range(new_events)]

    def factory(spec: PipelineSpec, dlq: DLQManager) -> Pipeline:
        return Pipeline(spec.name, ListSource(new), [fake], dlq, settings.dlq, batch_size=7)

    spec = PipelineSpec(
        "p", SourceSpec("1", "list", {}), (DestinationSpec(DEST, "Fake", "fake", {}),)
    )
    engine = Engine(settings, [spec], pipeline_factory=factory)
    engine.start()
    assert engine.dlq is not None
    dlq = engine.dlq
    try:
        wait_until(
            lambda: (
                engine.pipelines[0].finished.is_set()
                and not any(dlq.has_messages(q) for q in QUEUES)
            ),
            60,
            "the source to be delivered and every queue drained",
        )
        return engine.status(), fake
    finally:
        engine.stop()


def applied_ids(fake: FakeDestination, queue: QueueId) -> list[int]:
    return [r.key["id"] for r in fake.applied if r.table == queue.table]


def assert_others_drained(fake: FakeDestination) -> None:
    assert applied_ids(fake, GOOD_A) == ALL_IDS
    assert applied_ids(fake, GOOD_C) == ALL_IDS + [10_000 + i for i in range(5)]


def assert_set_aside(
    base: Path, status: dict[str, Any], fake: FakeDestination, *, segments_kept: bool = True
) -> dict[str, str]:
    """The damaged queue was moved whole under quarantine/ and reported everywhere."""
    quarantine = base / "quarantine"
    [moved] = list(quarantine.iterdir())
    reason = json.loads((moved / "reason.json").read_text())
    assert reason["queue"] == str(BAD)
    assert "damaged" in reason["reason"]
    # every file is kept for the operator: the segment, the cursor, the identity
    assert any(p.name.startswith("seg_") for p in moved.iterdir()) is segments_kept
    assert (moved / "queue.json").is_file()
    assert not (base / BAD.relative_path / "cursor.json").exists()
    [reported] = status["damaged_queues"]
    assert reported["queue"] == str(BAD)
    assert reported["moved_to"] == str(moved)
    assert reported["reason"] == reason["reason"]
    # Whatever was delivered before the damage surfaced came in order, from the
    # acknowledgement point on, with no gap.
    delivered = applied_ids(fake, BAD)
    assert delivered == ALL_IDS[ACKED : ACKED + len(delivered)]
    return reported


@pytest.mark.parametrize("action", sorted(ACTIONS))
@pytest.mark.parametrize("kind", sorted(FILES))
def test_damaged_file_is_set_aside_or_recovered(
    pristine: Path, tmp_path: Path, kind: str, action: str
) -> None:
    base = tmp_path / "dlq"
    shutil.copytree(pristine, base)
    ACTIONS[action](FILES[kind](segment_of(base)))

    status, fake = run_engine(base)

    assert_others_drained(fake)
    if kind in RECOVERED:
        assert applied_ids(fake, BAD) == ALL_IDS[ACKED:]
        assert status["damaged_queues"] == []
    elif kind in REDELIVERED:
        # Acknowledged messages may come again (destinations are idempotent);
        # none is skipped and the order holds.
        delivered = applied_ids(fake, BAD)
        assert delivered[-len(ALL_IDS[ACKED:]) :] == ALL_IDS[ACKED:]
        assert delivered == ALL_IDS[len(ALL_IDS) - len(delivered) :]
    else:
        assert_set_aside(base, status, fake)
    # A second start finds nothing new to complain about: no crash-loop, no re-quarantine.
    again, fake_again = run_engine(base, new_events=0)
    assert again["damaged_queues"] == []
    assert applied_ids(fake_again, GOOD_A) == []


def test_wal_truncation_is_reported_with_the_count_lost(pristine: Path, tmp_path: Path) -> None:
    """RocksDB replays a cut WAL silently; the recorded segment count makes it loud."""
    base = tmp_path / "dlq"
    shutil.copytree(pristine, base)
    truncate(FILES["wal"](segment_of(base)))
    status, fake = run_engine(base)
    reported = assert_set_aside(base, status, fake)
    assert applied_ids(fake, BAD) == []  # nothing of a queue with a hole is replayed
    assert f"holds {FIRST} of {FIRST + SECOND} items written" in reported["reason"]
    assert f"({SECOND} unacknowledged lost)" in reported["reason"]


def test_deleted_segment_directory_is_reported(pristine: Path, tmp_path: Path) -> None:
    base = tmp_path / "dlq"
    shutil.copytree(pristine, base)
    shutil.rmtree(segment_of(base))
    status, fake = run_engine(base)
    reported = assert_set_aside(base, status, fake, segments_kept=False)
    assert "is missing" in reported["reason"]
    assert f"({FIRST + SECOND - ACKED} unacknowledged lost)" in reported["reason"]


def test_damage_found_at_read_time_does_not_stop_the_worker(pristine: Path, tmp_path: Path) -> None:
    """A flipped data block opens fine and fails only when read: set aside then."""
    base = tmp_path / "dlq"
    shutil.copytree(pristine, base)
    sst = FILES["sst"](segment_of(base))
    data = bytearray(sst.read_bytes())
    data[len(data) * 9 // 10] ^= 0xFF  # late in the file: the first batches read fine
    sst.write_bytes(bytes(data))
    status, fake = run_engine(base)
    assert_others_drained(fake)
    reported = assert_set_aside(base, status, fake)
    assert "read failed" in reported["reason"] or "checksum" in reported["reason"]


# --------------------------------------------------------------------------- strays


def levels(base: Path) -> dict[str, Path]:
    queue_dir = base / BAD.relative_path
    return {
        "base": base,
        "source": queue_dir.parent.parent,
        "table": queue_dir.parent,
        "dest": queue_dir,
        "segment": segment_of(base),
    }


STRAY_NAMES = ["stray", "source_9", "table_x", "dest_9", "seg_000000000009", "parked", "~%%"]


@pytest.mark.parametrize("what", ["file", "empty_dir"])
@pytest.mark.parametrize("level", ["base", "source", "table", "dest", "segment"])
def test_stray_file_or_empty_directory_changes_nothing(
    pristine: Path, tmp_path: Path, level: str, what: str
) -> None:
    base = tmp_path / "dlq"
    shutil.copytree(pristine, base)
    where = levels(base)[level]
    for name in STRAY_NAMES:
        target = where / name
        if target.exists():
            continue
        if what == "file":
            target.write_bytes(b"\x00\xffnot a queue\n")
        else:
            target.mkdir()
    status, fake = run_engine(base)
    assert_others_drained(fake)
    assert applied_ids(fake, BAD) == ALL_IDS[ACKED:]
    assert status["damaged_queues"] == []
    assert not (base / "quarantine").exists()


def test_directory_naming_no_queue_is_set_aside_with_its_data(
    pristine: Path, tmp_path: Path
) -> None:
    """Messages in a directory no queue maps to would never be replayed: set aside, reported."""
    base = tmp_path / "dlq"
    shutil.copytree(pristine, base)
    queue_dir = base / BAD.relative_path
    (queue_dir / "queue.json").unlink()
    foreign = queue_dir.parent / "dest_%ZZ"  # not an encoded name
    os.replace(queue_dir, foreign)
    status, fake = run_engine(base)
    assert_others_drained(fake)
    [reported] = status["damaged_queues"]
    assert reported["queue"] == "source_1/table_public.bad/dest_%ZZ"
    assert "cannot tell which queue" in reported["reason"]
    moved = Path(reported["moved_to"])
    assert moved.parent == base / "quarantine"
    assert any(p.name.startswith("seg_") for p in moved.iterdir())
    assert not foreign.exists()


def test_queue_json_copied_from_another_queue_is_not_trusted(
    pristine: Path, tmp_path: Path
) -> None:
    """A queue.json naming another queue would leave this directory's messages unread."""
    base = tmp_path / "dlq"
    shutil.copytree(pristine, base)
    shutil.copy(base / GOOD_A.relative_path / "queue.json", base / BAD.relative_path)
    status, fake = run_engine(base)
    assert_others_drained(fake)
    assert applied_ids(fake, BAD) == ALL_IDS[ACKED:]
    assert status["damaged_queues"] == []
