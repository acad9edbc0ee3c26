"""A damaged queue directory is set aside, reported, and never stops the other queues."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

from compute.codec.failure_context import FailureContext
from compute.codec.message import DLQMessage
from compute.dlq.manager import DLQManager
from compute.queue_id import QueueId
from config.dlq_config import DLQConfig
from tests.builders import change, messages

GOOD = QueueId("1", "public.good", "1")
BAD = QueueId("1", "public.bad", "1")
FAILURE = FailureContext("OperationalError", "down", code="08006")


def fill(base: Path) -> None:
    with DLQManager(DLQConfig(base_path=base, min_free_disk_mb=0), background=False) as dlq:
        for queue in (GOOD, BAD):
            dlq.enqueue(queue, messages(queue, range(5), FAILURE))


def damage_missing_manifest(segment: Path) -> None:
    for name in os.listdir(segment):
        if name.startswith("MANIFEST"):
            os.remove(segment / name)


def damage_current(segment: Path) -> None:
    (segment / "CURRENT").write_text("MANIFEST-999999\n")


def damage_deleted_current(segment: Path) -> None:
    os.remove(segment / "CURRENT")


@pytest.mark.parametrize(
    "damage", [damage_missing_manifest, damage_current, damage_deleted_current]
)
def test_damaged_queue_is_set_aside_and_others_work(tmp_path: Path, damage) -> None:
    base = tmp_path / "dlq"
    fill(base)
    bad_dir = base / BAD.relative_path
    [segment] = [p for p in bad_dir.iterdir() if p.name.startswith("seg_")]
    damage(segment)
    with DLQManager(DLQConfig(base_path=base, min_free_disk_mb=0), background=False) as dlq:
        assert sorted(dlq.list_queues()) == [BAD, GOOD]
        assert dlq.store.count(GOOD) == 5
        assert dlq.store.count(BAD) == 0  # set aside, starts empty: no crash
        lease = dlq.read_batch(GOOD, 10)
        assert [m.record.key["id"] for m in lease.messages] == [0, 1, 2, 3, 4]
        dlq.ack(lease)
        [(queue, moved_to, reason)] = dlq.store.quarantined
        assert queue == BAD
        assert moved_to.parent == base / "quarantine"
        assert (moved_to / segment.name).is_dir()  # every file kept for the operator
        assert json.loads((moved_to / "reason.json").read_text())["queue"] == str(BAD)
        assert "damaged" in reason
        assert dlq.damaged_queues()[0]["queue"] == str(BAD)
        # the queue keeps working for new events
        dlq.enqueue(BAD, [DLQMessage.create(BAD, change(9, 9, table=BAD.table), FAILURE)])
        assert [m.record.key["id"] for m in dlq.read_batch(BAD, 10).messages] == [9]
