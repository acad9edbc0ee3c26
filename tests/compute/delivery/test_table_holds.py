"""Table-level failures hold the queue in order (live and replay); row-level ones still park."""

from __future__ import annotations

import logging
import threading
from pathlib import Path

import pytest

from compute.delivery.event_handler import EventHandler
from compute.delivery.health import DestinationHealth
from compute.dlq.manager import DLQManager
from compute.queue_id import QueueId
from compute.recovery.backoff import hold_delay
from compute.recovery.worker import DLQRecoveryWorker
from compute.runtime.retry_policy import RetryPolicy
from tests.builders import TABLE, change, dlq_config
from tests.fakes import FakeDestination, Fault

FAST_RETRY = RetryPolicy(max_retries=2, base_delay=0.001, max_delay=0.002)
QUEUE = QueueId("1", TABLE, "2")


class Clock:
    def __init__(self, now: float = 1_000_000.0) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


@pytest.fixture
def setup(tmp_path: Path):
    clock = Clock()
    destination = FakeDestination("2", "PG")
    health = {"2": DestinationHealth(destination, clock)}
    config = dlq_config(
        tmp_path, batch_size=3, backoff_base_ms=1000, backoff_max_ms=5000, check_interval=10.0
    )
    dlq = DLQManager(config, background=False, clock=clock)
    handler = EventHandler(
        "1", [destination], health, dlq, FAST_RETRY, stop=threading.Event(), clock=clock
    )
    worker = DLQRecoveryWorker(
        "p", "1", [destination], health, dlq, config, probe_timeout=0.5, clock=clock
    )
    yield handler, worker, destination, dlq, clock
    worker.stop()
    dlq.close()


def ids(dlq: DLQManager, queue: QueueId) -> list[int]:
    """The changes (their numbers) waiting in ``queue``, in order."""
    return [m.record.position.commit for m in dlq.peek(queue, 1000)]


def test_live_table_failure_holds_in_order_and_the_fix_drains_it(
    setup, caplog: pytest.LogCaptureFixture
) -> None:
    handler, worker, destination, dlq, clock = setup
    destination.fail_keys([1, 2, 3, 4, 5, 6], Fault.TABLE, table=TABLE)
    with caplog.at_level(logging.INFO):
        handler.handle([change(1, 1), change(2, 2)], set())
        handler.handle([change(3, 1), change(4, 3)], set())  # behind, never written ahead
        handler.handle([change(5, 1, table="public.other")], set())  # another table flows
        assert ids(dlq, QUEUE) == [1, 2, 3, 4]
        assert dlq.parked_count(QUEUE) == 0
        hold = dlq.holds.of(QUEUE)
        assert hold is not None and hold.error_class == "TableLevelDestinationError"
        assert not handler.health["2"].circuit_open  # the destination is not down
        assert destination.row("public.other", 1) == {"id": 1, "v": 5}
        assert len(destination.calls) == 2  # no isolation, no retries in place
        status = dlq.status(QUEUE).to_json(clock.now)
        assert status["held"]["error_class"] == "TableLevelDestinationError"

        # retried on its own schedule: 1 s, 2 s, 4 s, ... up to DLQ_CHECK_INTERVAL
        results = worker.run_once(clock.now)
        assert results[0].failed == 3 and results[0].parked == 0
        assert dlq.holds.of(QUEUE).retries == 1
        calls = len(destination.calls)
        worker.run_once(clock.now + 0.5)  # not due yet
        assert len(destination.calls) == calls
        clock.now += hold_delay(dlq.config, 1)
        worker.run_once(clock.now)
        assert len(destination.calls) == calls + 1
        assert dlq.holds.of(QUEUE).retries == 2

        destination.clear_failures()  # the table was fixed
        clock.now += hold_delay(dlq.config, 2)
        [result] = worker.run_once(clock.now)
    assert result.replayed == 4 and dlq.holds.of(QUEUE) is None
    assert not dlq.has_messages(QUEUE) and dlq.parked_count(QUEUE) == 0
    assert destination.row(TABLE, 1) == {"id": 1, "v": 3}  # the later change won
    held = [r for r in caplog.records if "Queue held" in r.getMessage()]
    assert len(held) == 1 and held[0].levelno == logging.WARNING  # once per hold
    cleared = [r.getMessage() for r in caplog.records if "hold cleared" in r.getMessage()]
    assert len(cleared) == 1 and "held_for=" in cleared[0]


def test_hold_retry_delay_grows_to_the_check_interval(setup) -> None:
    _h, _w, _d, dlq, _c = setup
    delays = [hold_delay(dlq.config, n) for n in range(1, 8)]
    assert delays == [1.0, 2.0, 4.0, 8.0, 10.0, 10.0, 10.0]


def test_isolation_stops_at_the_first_table_level_single_change(setup) -> None:
    handler, _worker, destination, dlq, _clock = setup
    destination.fail_next(1, Fault.PERMANENT)  # the batch: narrowed down one by one...
    destination.fail_keys([1, 2, 3, 4, 5], Fault.TABLE, table=TABLE)  # ...the table is broken
    handler.handle([change(i, i) for i in range(1, 6)], set())
    assert len(destination.calls) == 2  # the batch, then one single change: stop
    assert ids(dlq, QUEUE) == [1, 2, 3, 4, 5]
    assert dlq.parked_count(QUEUE) == 0 and dlq.holds.of(QUEUE) is not None


def test_row_level_failure_in_the_same_run_is_still_parked_alone(setup) -> None:
    handler, _worker, destination, dlq, _clock = setup
    destination.fail_keys([2], Fault.PERMANENT)
    handler.handle([change(1, 1), change(2, 2), change(3, 3)], set())
    assert ids(dlq, QUEUE.parked) == [2]
    assert dlq.holds.of(QUEUE) is None and not dlq.has_messages(QUEUE)
    assert set(destination.rows(TABLE)) == {(1,), (3,)}


def test_replay_isolation_stops_at_a_table_level_change_and_holds(setup) -> None:
    handler, worker, destination, dlq, clock = setup
    destination.set_down(True)
    handler.handle([change(i, i) for i in range(1, 4)], set())  # queued: an outage
    destination.set_down(False)
    destination.fail_next(1, Fault.PERMANENT)  # the replayed batch: isolate...
    destination.fail_keys([1, 2, 3], Fault.TABLE, table=TABLE)
    calls = len(destination.calls)
    [result] = worker.run_once(clock.now + 60)
    assert len(destination.calls) == calls + 2  # the batch and one single change
    assert result.parked == 0 and ids(dlq, QUEUE) == [1, 2, 3]
    assert dlq.holds.of(QUEUE) is not None
