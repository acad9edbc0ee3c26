"""The event handler: direct writes, retries, store-and-forward, parking, full DLQ."""

from __future__ import annotations

import json
import threading
from pathlib import Path

import pytest

from compute.delivery.event_handler import EventHandler
from compute.delivery.health import DestinationHealth
from compute.dlq.manager import DLQManager
from compute.errors import DLQFullError
from compute.queue_id import QueueId
from compute.runtime.retry_policy import RetryPolicy
from config.dlq_config import WhenFull
from destinations.records import Operation
from tests.builders import TABLE, change, dlq_config
from tests.fakes import FakeDestination

FAST_RETRY = RetryPolicy(max_retries=2, base_delay=0.001, max_delay=0.002)


@pytest.fixture
def setup(tmp_path: Path):
    destination = FakeDestination("2", "Postgres-Test")
    other = FakeDestination("3", "Other")
    health = {d.destination_id: DestinationHealth(d) for d in (destination, other)}
    dlq = DLQManager(dlq_config(tmp_path), background=False)
    handler = EventHandler(
        "1", [destination, other], health, dlq, FAST_RETRY, stop=threading.Event()
    )
    yield handler, destination, other, dlq
    dlq.close()


def queued_ids(dlq: DLQManager, queue: QueueId) -> list[int]:
    return [m.record.key["id"] for m in dlq.peek(queue, 1000)]


def test_healthy_destinations_get_the_batch(setup) -> None:
    handler, destination, other, dlq = setup
    done: set[tuple[str, str]] = set()
    handler.handle([change(1, 1), change(2, 2)], done)
    assert done == {("2", TABLE), ("3", TABLE)}
    assert set(destination.rows(TABLE)) == {(1,), (2,)}
    assert set(other.rows(TABLE)) == {(1,), (2,)}
    assert not dlq.list_queues()


def test_transient_failure_retries_then_queues_with_context(setup) -> None:
    handler, destination, other, dlq = setup
    destination.set_down(True)
    done: set[tuple[str, str]] = set()
    handler.handle([change(1, 1), change(2, 2)], done)
    assert ("2", TABLE) in done
    assert len(destination.failed_calls()) == 3  # first try + 2 retries
    queue = QueueId("1", TABLE, "2")
    queued = dlq.peek(queue, 10)
    assert [m.record.key["id"] for m in queued] == [1, 2]
    assert queued[0].failure.error_class == "SessionLostError"  # refused, as a real outage is
    assert queued[0].failure.attempts == 3
    assert "is down" in queued[0].failure.message
    assert set(other.rows(TABLE)) == {(1,), (2,)}  # one destination down never blocks another
    assert handler.health["2"].circuit_open


def test_new_events_queue_behind_old_ones_even_when_destination_is_back(setup) -> None:
    handler, destination, _other, dlq = setup
    destination.set_down(True)
    handler.handle([change(1, 1)], set())
    destination.set_down(False)
    handler.health["2"].mark_healthy()
    handler.handle([change(2, 1), change(3, 2)], set())
    assert destination.rows(TABLE) == {}  # nothing written around the queue
    assert queued_ids(dlq, QueueId("1", TABLE, "2")) == [1, 1, 2]


def test_open_circuit_queues_without_retrying(setup) -> None:
    handler, destination, _other, dlq = setup
    handler.health["2"].mark_unhealthy("test says so")
    handler.handle([change(1, 1, table="public.other")], set())
    assert destination.write_count == 0
    message = dlq.peek(QueueId("1", "public.other", "2"), 1)[0]
    assert message.failure.error_class == "Deferred"
    assert "test says so" in message.failure.message


def test_permanent_failure_parks_only_the_poison_and_holds_its_key(setup) -> None:
    handler, destination, _other, dlq = setup
    destination.fail_keys([2])
    handler.handle([change(1, 1), change(2, 2), change(3, 3)], set())
    queue = QueueId("1", TABLE, "2")
    assert set(destination.rows(TABLE)) == {(1,), (3,)}
    parked = dlq.peek(queue.parked, 10)
    assert [m.record.key["id"] for m in parked] == [2]
    assert parked[0].failure.kind.value == "permanent"
    destination.clear_failures()
    # a later change to the parked key must not skip ahead of it
    handler.handle([change(4, 2), change(5, 1)], set())
    assert [m.record.key["id"] for m in dlq.peek(queue.parked, 10)] == [2, 2]
    assert destination.row(TABLE, 1)["v"] == 5
    assert destination.row(TABLE, 2) is None
    assert not dlq.has_messages(queue)


def test_full_dlq_raises_and_leaves_group_undone(tmp_path: Path) -> None:
    destination = FakeDestination("2", "Down")
    destination.set_down(True)
    healthy = FakeDestination("3", "Up")
    health = {d.destination_id: DestinationHealth(d) for d in (destination, healthy)}
    with DLQManager(dlq_config(tmp_path, max_queue_messages=2), background=False) as dlq:
        handler = EventHandler("1", [destination, healthy], health, dlq, FAST_RETRY)
        done: set[tuple[str, str]] = set()
        with pytest.raises(DLQFullError):
            handler.handle([change(1, 1), change(2, 2), change(3, 3)], done)
        assert done == {("3", TABLE)}  # the healthy destination still got its events
        assert not dlq.has_messages(QueueId("1", TABLE, "2"))


def test_drop_newest_marks_group_done_and_counts(tmp_path: Path) -> None:
    destination = FakeDestination("2", "Down")
    destination.set_down(True)
    health = {"2": DestinationHealth(destination)}
    cfg = dlq_config(tmp_path, max_queue_messages=1, when_full=WhenFull.DROP_NEWEST)
    with DLQManager(cfg, background=False) as dlq:
        handler = EventHandler("1", [destination], health, dlq, FAST_RETRY)
        done: set[tuple[str, str]] = set()
        handler.handle([change(1, 1), change(2, 2)], done)
        assert done == {("2", TABLE)}
        assert handler.counters.dropped["2"] == 2
        assert dlq.status(QueueId("1", TABLE, "2")).dropped == 2


def _unstorable() -> list[object]:
    deep: list[object] = []
    for _ in range(3000):  # deeper than msgpack packs
        deep = [deep]
    return deep


def test_a_change_no_message_can_store_is_quarantined_and_the_rest_go_on(setup) -> None:
    """Parked or queued, an unstorable change ends in quarantine/ with why; nothing raises."""
    handler, destination, _other, dlq = setup
    queue = QueueId("1", TABLE, "2")
    destination.fail_keys([2])  # refused for good: parked
    handler.handle([change(1, 1), change(2, 2, doc=_unstorable()), change(3, 3)], set())
    assert set(destination.rows(TABLE)) == {(1,), (3,)}
    assert handler.counters.quarantined["2"] == 1
    assert handler.counters.parked["2"] == 0
    quarantine = dlq.store.queue_path(queue.parked) / "quarantine"
    [meta] = [p for p in quarantine.iterdir() if p.suffix == ".json"]
    info = json.loads(meta.read_text())
    assert "nested too deeply" in info["reason"]
    assert info["position"] == "0/2#0"
    assert (quarantine / meta.name.replace(".json", ".txt")).read_text().startswith("DLQMessage(")
    assert dlq.status(queue).quarantined == 1

    destination.clear_failures()
    destination.set_down(True)  # queued (store-and-forward): the same, the others queue
    handler.handle([change(4, 4), change(5, 5, doc=_unstorable()), change(6, 6)], set())
    assert queued_ids(dlq, queue) == [4, 6]
    assert handler.counters.quarantined["2"] == 2
    assert dlq.status(queue).quarantined == 2


def test_updates_and_deletes_of_an_append_only_table_are_parked_before_any_write(setup) -> None:
    """The inserts go on in one write; the rest is parked at once with the reason, and holds
    nothing back (a parked keyless change is a row of its own)."""
    handler, destination, _other, dlq = setup
    destination.append_only = frozenset({TABLE})
    batch = [change(1, 1, Operation.INSERT), change(2, 2), change(3, 3, Operation.DELETE)]
    batch.append(change(4, 4, Operation.INSERT))
    handler.handle(batch, set())
    queue = QueueId("1", TABLE, "2")
    assert [[r.position.commit for r in c.records] for c in destination.calls] == [[1, 4]]
    parked = dlq.peek(queue.parked, 10)
    assert [(m.record.op, m.failure.error_class) for m in parked] == [
        (Operation.UPDATE, "AppendOnlyTable"),
        (Operation.DELETE, "AppendOnlyTable"),
    ]
    assert parked[0].failure.message.startswith(
        f"update of append-only table {TABLE} at 0/2#0: an append-only table takes inserts only"
    )
    assert handler.counters.parked["2"] == 2 and handler.counters.written["2"] == 2
    # Keyless changes (a table without a key) are append-only without being declared.
    keyless = [c._replace(key={}, table="public.log") for c in batch]
    handler.handle(keyless, set())
    log = QueueId("1", "public.log", "2")
    parked = dlq.peek(log.parked, 10)[:2]
    assert [(m.record.op, m.failure.error_class) for m in parked] == [
        (Operation.UPDATE, "AppendOnlyTable"),
        (Operation.DELETE, "AppendOnlyTable"),
    ]
    # Not held behind the parked ones: written (this fake refuses keyless rows, that is all).
    later = change(5, 5, Operation.INSERT)._replace(key={}, table="public.log")
    handler.handle([later], set())
    assert destination.calls[-1].records == (later,)
