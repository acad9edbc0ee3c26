"""The manager's maintenance pass removes drained, idle queues, and they come back on use."""

from __future__ import annotations

import json
from pathlib import Path

from compute.dlq.maintenance import REMOVE_DRAINED_SECONDS
from compute.dlq.manager import DLQManager
from compute.dlq.status_files import STATUS_FILE
from tests.compute.dlq.test_manager import config, drain_ids, message
from tests.compute.helpers import held_elsewhere
from tests.compute.helpers import tree_listing as listing
from tests.compute.storage.test_drained_removal import QUEUES

IDLE = REMOVE_DRAINED_SECONDS


def empty_base_listing(tmp_path: Path) -> list[str]:
    """What the base path of a manager that never queued anything holds."""
    with DLQManager(config(tmp_path / "fresh"), background=False):
        pass
    return listing(tmp_path / "fresh" / "dlq")


def test_drained_queues_are_removed_after_the_idle_time(tmp_path: Path) -> None:
    base = tmp_path / "dlq"
    with DLQManager(config(tmp_path), background=False) as dlq:
        for q in QUEUES:
            dlq.enqueue(q, [message(i, q) for i in range(5)])
            dlq.record_failed_attempt(q, [message(0, q)])
            assert drain_ids(dlq, q) == list(range(5))
        assert dlq.maintain(now=0.0) == 0  # status files written; drained from now on
        assert all((dlq.store.queue_path(q) / STATUS_FILE).is_file() for q in QUEUES)
        assert dlq.maintain(now=IDLE - 1) == 0
        assert dlq.maintain(now=IDLE) == 3
        assert listing(base) == empty_base_listing(tmp_path)
        assert dlq.list_queues() == []
        assert dlq.list_queues(refresh=True) == []
        dlq.maintain(now=2 * IDLE)  # the status writer does not bring a directory back
        assert listing(base) == empty_base_listing(tmp_path)
    # Closing wrote the final status files: still nothing; a restart lists nothing.
    assert listing(base) == empty_base_listing(tmp_path)
    with DLQManager(config(tmp_path), background=False) as dlq:
        assert dlq.list_queues() == []


def test_a_removed_queue_works_again_on_the_next_enqueue(tmp_path: Path) -> None:
    q = QUEUES[0]
    with DLQManager(config(tmp_path), background=False) as dlq:
        dlq.enqueue(q, [message(i, q) for i in range(3)])
        drain_ids(dlq, q)
        dlq.maintain(now=0.0)
        assert dlq.maintain(now=IDLE) == 1
        dlq.enqueue(q, [message(i, q) for i in range(10, 14)])
        assert dlq.list_queues() == [q]
        dlq.maintain(now=IDLE + 1)
        status = json.loads((dlq.store.queue_path(q) / STATUS_FILE).read_text())
        assert status["messages"] == 4
        assert dlq.status(q).messages == 4
        lease = dlq.read_batch(q, 2)
        assert [m.record.key["id"] for m in lease.messages] == [10, 11]
        dlq.ack(lease)
    with DLQManager(config(tmp_path), background=False) as dlq:
        assert dlq.list_queues() == [q]
        assert drain_ids(dlq, q) == [12, 13]


def test_parked_messages_keep_the_queue_until_unparked_and_replayed(tmp_path: Path) -> None:
    q = QUEUES[0]
    with DLQManager(config(tmp_path), background=False) as dlq:
        dlq.enqueue(q, [message(i, q) for i in range(3)])
        dlq.park(q, [message(7, q)])
        drain_ids(dlq, q)
        for now in (0.0, IDLE, 5 * IDLE):
            assert dlq.maintain(now=now) == 0
        assert dlq.parked_count(q) == 1
        dlq.unpark_message(q, next(iter(dlq.iter_messages(q.parked))).message_id)
        assert drain_ids(dlq, q) == [7]
        # The unparked message stays stored in the parked lane, skipped, until
        # the lane is read and acked: the maintenance does that once idle.
        assert dlq.store.count(q.parked) == 1
        assert dlq.maintain(now=6 * IDLE) == 0  # just used
        assert dlq.maintain(now=7 * IDLE) == 0
        assert dlq.store.count(q.parked) == 0
        assert dlq.maintain(now=8 * IDLE) == 1
        assert not dlq.store.queue_path(q).exists()


def test_a_queue_under_an_operator_edit_is_skipped(tmp_path: Path) -> None:
    q = QUEUES[0]
    with DLQManager(config(tmp_path), background=False) as dlq:
        dlq.enqueue(q, [message(1, q)])
        drain_ids(dlq, q)
        dlq.maintain(now=0.0)
        with held_elsewhere(dlq.editing(q)):
            assert dlq.maintain(now=IDLE) == 0
            assert dlq.store.queue_path(q).is_dir()
        assert dlq.maintain(now=IDLE) == 1
