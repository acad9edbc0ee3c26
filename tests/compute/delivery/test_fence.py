"""The fence at the write choke points: live write, DLQ enqueue, replay write and ack."""

from __future__ import annotations

import threading
from collections.abc import Sequence
from pathlib import Path

import pytest

from compute.codec.failure_context import FailureContext
from compute.codec.message import DLQMessage
from compute.delivery.event_handler import EventHandler
from compute.delivery.health import DestinationHealth
from compute.dlq.manager import DLQManager
from compute.queue_id import QueueId
from compute.recovery.worker import DLQRecoveryWorker
from compute.runtime.fence import NO_FENCE, Fence, Fenced
from compute.runtime.retry_policy import RetryPolicy
from destinations.records import ChangeRecord
from tests.builders import TABLE, change, dlq_config
from tests.fakes import FakeDestination

NO_RETRY = RetryPolicy(max_retries=0, base_delay=0.001, max_delay=0.002)


class Clock:
    """The fence's monotonic clock, moved by hand: a pause is a jump past ``valid_until``."""

    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


class PausedDuringWrite(FakeDestination):
    """The process is "paused" while this destination writes: the fence expires meanwhile."""

    def __init__(self, clock: Clock) -> None:
        super().__init__("2", "PG")
        self.clock = clock

    def write_batch(self, table: str, records: Sequence[ChangeRecord]) -> int:
        try:
            return super().write_batch(table, records)
        finally:
            self.clock.now = 100.0


def fence(clock: Clock) -> Fence:
    opened = Fence("p", clock=clock)
    opened.extend(50.0)
    return opened


def handler_for(destination: FakeDestination, dlq: DLQManager, gate: Fence) -> EventHandler:
    health = {destination.destination_id: DestinationHealth(destination)}
    handler = EventHandler("1", [destination], health, dlq, NO_RETRY, stop=threading.Event())
    handler.fence = gate
    return handler


def test_the_no_fence_never_refuses() -> None:
    NO_FENCE.lose("anything")
    NO_FENCE.check("write")
    assert NO_FENCE.holds()


def test_a_lost_fence_refuses_the_live_write(tmp_path: Path) -> None:
    destination, gate = FakeDestination("2", "PG"), fence(Clock())
    gate.lose("lease taken by engine-b")
    with DLQManager(dlq_config(tmp_path), background=False) as dlq:
        with pytest.raises(Fenced, match="write to PG refused for pipeline p: lease taken"):
            handler_for(destination, dlq, gate).handle([change(1, 1)], set())
        assert destination.rows(TABLE) == {}
        assert dlq.list_queues() == []


def test_a_fence_expired_during_a_failed_write_refuses_the_enqueue(tmp_path: Path) -> None:
    clock = Clock()
    destination = PausedDuringWrite(clock)
    destination.set_down(True)
    with DLQManager(dlq_config(tmp_path), background=False) as dlq:
        with pytest.raises(Fenced, match="DLQ enqueue .* not renewed in time"):
            handler_for(destination, dlq, fence(clock)).handle([change(1, 1)], set())
        assert not dlq.has_messages(QueueId("1", TABLE, "2"))


def test_replay_is_refused_before_the_write_and_before_the_ack(tmp_path: Path) -> None:
    clock = Clock()
    destination = PausedDuringWrite(clock)
    config = dlq_config(tmp_path)
    queue = QueueId("1", TABLE, "2")
    with DLQManager(config, background=False) as dlq:
        failure = FailureContext("OperationalError", "connection refused")
        dlq.enqueue(queue, [DLQMessage.create(queue, change(1, 1), failure)])
        health = {"2": DestinationHealth(destination)}
        worker = DLQRecoveryWorker("p", "1", [destination], health, dlq, config)
        worker.replay.fence = gate = fence(clock)
        # the write goes (the fence held), the process "pauses" during it: no ack after
        with pytest.raises(Fenced, match="DLQ ack of .* not renewed in time"):
            worker.run_once()
        assert dlq.has_messages(queue)  # the next owner replays it (idempotent)
        # a closed fence: the worker does not even start a pass
        gate.lose("lease taken by engine-b")
        assert worker.run_once() == []
        assert dlq.has_messages(queue)
