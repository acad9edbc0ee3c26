"""One slow destination never holds the others: lanes, the live-write deadline, settling."""

from __future__ import annotations

import contextlib
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from compute.delivery.event_handler import EventHandler
from compute.delivery.health import DestinationHealth, HealthState
from compute.dlq.manager import DLQManager
from compute.engine.pipeline import Pipeline
from compute.queue_id import QueueId
from compute.runtime.retry_policy import RetryPolicy
from destinations.records import ChangeRecord
from tests.builders import TABLE, change, dlq_config
from tests.compute.helpers import ListSource, apply_model
from tests.fakes import FakeDestination
from tests.waiting import wait_until

NO_RETRY = RetryPolicy(max_retries=0, base_delay=0.001, max_delay=0.001)
TABLES = ("public.a", "public.b")


def history(n: int, keys: int = 7) -> list[ChangeRecord]:
    return [change(i, i % keys, table=TABLES[i % 2]) for i in range(1, n + 1)]


def assert_applied_in_order(dest: FakeDestination) -> None:
    """No change was applied after a newer one to the same row (duplicates are fine)."""
    newest: dict[tuple[str, Any], int] = {}
    for record in dest.applied:
        key = (record.table, record.key_values)
        position = record.position.commit
        assert position >= newest.get(key, 0), f"{key}: change {position} applied after newer"
        newest[key] = position


def all_rows(dest: FakeDestination) -> dict[str, Any]:
    return {t: dest.rows(t) for t in TABLES if dest.rows(t)}


def make_pipeline(tmp_path: Path, source: ListSource, dests: list[FakeDestination], **cfg: Any):
    config = dlq_config(tmp_path, **{"live_write_deadline_ms": 200, **cfg})
    dlq = DLQManager(config)
    pipeline = Pipeline(
        "p", source, dests, dlq, config, batch_size=10, retry_policy=NO_RETRY, probe_timeout=0.5
    )
    return pipeline, dlq


def queued(dlq: DLQManager, destination_id: str) -> int:
    return sum(dlq.count(QueueId("1", t, destination_id)) for t in TABLES)


@dataclass
class Run:
    source: ListSource
    a: FakeDestination
    b: FakeDestination
    pipeline: Pipeline
    dlq: DLQManager


@contextlib.contextmanager
def running(
    tmp_path: Path, events: list[ChangeRecord], before_start: Any = None, **cfg: Any
) -> Iterator[Run]:
    """A started pipeline over ``events`` into fakes A (first) and B; stopped afterwards."""
    source = ListSource(events)
    a, b = FakeDestination("A", "A"), FakeDestination("B", "B")
    if before_start is not None:
        before_start(a)
    pipeline, dlq = make_pipeline(tmp_path, source, [a, b], **cfg)
    pipeline.start()
    try:
        yield Run(source, a, b, pipeline, dlq)
    finally:
        pipeline.stop()
        dlq.close()


def test_a_hung_destination_does_not_hold_the_other_and_settles_in_order(tmp_path: Path) -> None:
    events = history(300)
    with running(tmp_path, events, FakeDestination.hold_writes) as run:
        # B gets everything and the source is acknowledged to the end while A hangs.
        wait_until(
            lambda: all_rows(run.b) == apply_model(events),
            30,
            "all_rows(run.b) == apply_model(events)",
        )
        wait_until(
            lambda: run.source.acknowledged == len(events),
            30,
            "run.source.acknowledged == len(events)",
        )
        assert run.a.held_writes == 1  # one stuck write; the rest went straight to A's queues
        assert run.pipeline.health["A"].snapshot().state is HealthState.UNHEALTHY
        assert queued(run.dlq, "A") == len(events)
        assert run.pipeline.in_flight.is_held("A")
        # A comes back: the stuck write commits, its queued copies are acknowledged,
        # the rest replays after it.
        run.a.release_writes()
        wait_until(lambda: queued(run.dlq, "A") == 0, 30, 'queued(run.dlq, "A") == 0')
        assert all_rows(run.a) == apply_model(events)
        assert not run.pipeline.in_flight.is_held("A")
        assert_applied_in_order(run.a)
        assert_applied_in_order(run.b)
        # Settled, not replayed twice: each event reached A once.
        assert len(run.a.applied) == len(events)
        assert run.dlq.parked_count(QueueId("1", TABLES[0], "A")) == 0


def test_a_stuck_write_that_fails_is_replayed_in_order(tmp_path: Path) -> None:
    events = history(120)
    with running(tmp_path, events, FakeDestination.hold_writes) as run:
        wait_until(
            lambda: run.source.acknowledged == len(events),
            30,
            "run.source.acknowledged == len(events)",
        )
        run.a.release_writes(fail=True)  # the connection died under the stuck write
        wait_until(lambda: queued(run.dlq, "A") == 0, 30, 'queued(run.dlq, "A") == 0')
        assert all_rows(run.a) == apply_model(events)
        assert_applied_in_order(run.a)
        assert len(run.a.failed_calls()) == 1
        assert all_rows(run.b) == apply_model(events)


def test_a_slow_destination_keeps_the_source_moving_up_to_the_read_ahead(tmp_path: Path) -> None:
    events = history(200)
    with running(tmp_path, events, lambda a: a.set_write_delay(0.05), read_ahead_events=60) as run:
        wait_until(
            lambda: all_rows(run.a) == apply_model(events),
            60,
            "all_rows(run.a) == apply_model(events)",
        )
        wait_until(
            lambda: run.source.acknowledged == len(events),
            20,
            "run.source.acknowledged == len(events)",
        )
        assert queued(run.dlq, "A") == 0  # never past the deadline: nothing queued
        assert_applied_in_order(run.a)
        assert all_rows(run.b) == apply_model(events)


def test_source_waits_when_the_read_ahead_is_full(tmp_path: Path) -> None:
    events = history(200)
    slow = lambda a: a.set_write_delay(0.15)  # noqa: E731  under the 5 s deadline: slow, not stuck
    with running(tmp_path, events, slow, read_ahead_events=30, live_write_deadline_ms=5000) as run:
        wait_until(lambda: len(run.b.applied) >= 30, 20, "len(run.b.applied) >= 30")
        for _ in range(20):  # while A's lane is behind, sampled as it moves
            # The reader stays at most the read-ahead (plus the batch it holds) ahead of
            # what every lane delivered, so B is never far ahead of A either.
            assert run.source.reads * 10 - run.source.acknowledged <= 30 + 10
            assert len(run.b.applied) - len(run.a.applied) <= 30 + 10
            time.sleep(0.02)


@contextlib.contextmanager
def handler_to_a_down_destination(
    tmp_path: Path, retry_delay: float, deadline: float
) -> Iterator[tuple[EventHandler, FakeDestination, DestinationHealth, DLQManager]]:
    """An event handler whose one destination refuses every write, retrying patiently."""
    dest = FakeDestination("A", "A")
    dest.set_down(True)
    health = DestinationHealth(dest)
    patient = RetryPolicy(
        max_retries=1000, base_delay=retry_delay, max_delay=retry_delay, jitter=0.0
    )
    with DLQManager(dlq_config(tmp_path), background=False) as dlq:
        handler = EventHandler(
            "1", [dest], {"A": health}, dlq, patient, live_write_deadline=deadline
        )
        try:
            yield handler, dest, health, dlq
        finally:
            handler.close()


def test_in_place_retries_share_one_deadline(tmp_path: Path) -> None:
    """1000 retries 0.05 s apart would take 50 s: the retries stop at the 0.5 s deadline.

    On a loaded machine a thread may wait its turn, so fewer retries fit (never more)
    and the enqueue after them may take longer: the attempts are counted (at most one
    per retry delay within the deadline), and the time taken is only checked against
    the 50 s that retries without the shared deadline would take.
    """
    with handler_to_a_down_destination(tmp_path, 0.05, 0.5) as (handler, dest, _, dlq):
        started = time.monotonic()
        handler.handle([change(1, 1), change(2, 2)], set())
        elapsed = time.monotonic() - started
        assert elapsed < 5.0, f"retries took {elapsed:.2f}s against a 0.5s deadline"
        assert dlq.count(QueueId("1", TABLE, "A")) == 2
        # retried in place (the first attempt fails at once), and within the deadline
        assert 2 <= dest.write_count <= 1 + 0.5 / 0.05


def test_outage_is_dated_from_the_first_failed_write(tmp_path: Path) -> None:
    with handler_to_a_down_destination(tmp_path, 0.1, 0.5) as (handler, _, health, _dlq):
        first_write = time.time()
        handler.handle([change(1, 1)], set())
        snapshot = health.snapshot()
        assert snapshot.state is HealthState.UNHEALTHY
        # Dated from the first failure, not from the give-up half a second later.
        assert abs(snapshot.since - first_write) < 0.1


def test_stuck_write_holds_the_destination_against_replay(tmp_path: Path) -> None:
    """While the stuck write may commit, the worker writes nothing else to its destination."""
    events = history(40)
    source = ListSource(events)
    a = FakeDestination("A", "A")
    pipeline, dlq = make_pipeline(tmp_path, source, [a])
    try:
        a.hold_writes()
        pipeline.step()  # the first batch's write sticks past the deadline: queued
        while pipeline.step():
            pass
        assert queued(dlq, "A") == len(events)
        for _ in range(3):  # the worker probes A (healthy) but must not replay to it
            pipeline.worker.run_once(time.time() + 100)
        assert queued(dlq, "A") == len(events)
        assert a.held_writes == 1
        a.release_writes()
        wait_until(
            lambda: not pipeline.in_flight.take_ended() == [],
            5,
            "not pipeline.in_flight.take_ended() == []",
        )
        pipeline.worker.run_once(time.time() + 200)
        pipeline.worker.run_once(time.time() + 300)
        assert queued(dlq, "A") == 0
        assert all_rows(a) == apply_model(events)
        assert_applied_in_order(a)
    finally:
        pipeline.stop()
        dlq.close()


def test_a_replay_write_past_its_deadline_does_not_hold_the_other_destinations(
    tmp_path: Path,
) -> None:
    events = history(60)
    source = ListSource(events)
    a, b = FakeDestination("A", "A"), FakeDestination("B", "B")
    pipeline, dlq = make_pipeline(tmp_path, source, [a, b])
    try:
        a.set_down(True)
        b.set_down(True)
        while pipeline.step():  # both down: everything is queued for both
            pass
        assert queued(dlq, "A") == queued(dlq, "B") == len(events)
        a.set_down(False)
        b.set_down(False)
        a.hold_writes()  # A answers its health check, but its writes hang
        started = time.monotonic()
        pipeline.worker.run_once(time.time() + 100)
        took = time.monotonic() - started
        assert took < 3.0, f"the pass waited {took:.1f}s on A's stuck replay write"
        assert queued(dlq, "B") == 0 and all_rows(b) == apply_model(events)
        assert queued(dlq, "A") == len(events)  # the stuck batch went back to the head
        assert pipeline.in_flight.is_held("A")
        assert pipeline.health["A"].snapshot().state is HealthState.UNHEALTHY
        pipeline.worker.run_once(time.time() + 200)
        assert a.held_writes == 1  # nothing more was written to A while it was held
        a.release_writes()
        wait_until(
            lambda: pipeline.in_flight.take_ended() != [],
            5,
            "pipeline.in_flight.take_ended() != []",
        )
        for step in range(3):
            pipeline.worker.run_once(time.time() + 300 + step * 100)
        assert queued(dlq, "A") == 0
        assert all_rows(a) == apply_model(events)
        assert len(a.applied) == len(events)  # the settled batch was not written again
        assert_applied_in_order(a)
    finally:
        pipeline.stop()
        dlq.close()


class TrickleSource(ListSource):
    """Returns at most two events per read, like a rate-capped source read in a loop."""

    def read(self, max_events: int):  # type: ignore[no-untyped-def]
        return super().read(min(max_events, 2))


def test_a_lane_that_fell_behind_catches_up_in_larger_writes(tmp_path: Path) -> None:
    events = [change(i, i % 7) for i in range(1, 121)]  # one table: one write per delivery
    source = TrickleSource(events)
    a, b = FakeDestination("A", "A"), FakeDestination("B", "B")
    a.set_write_delay(0.05)  # A falls behind the reader; B keeps up
    pipeline, dlq = make_pipeline(tmp_path, source, [a, b])
    pipeline.start()
    try:
        wait_until(
            lambda: source.acknowledged == len(events), 30, "source.acknowledged == len(events)"
        )
        assert a.rows(TABLE) == b.rows(TABLE) == apply_model(events)[TABLE]
        # 60 reads of two events; A took what waited in its inbox together (up to
        # the pipeline's batch size of 10), in source order.
        assert len(a.successful_calls()) <= 60 // 3
        assert max(len(c.records) for c in a.successful_calls()) > 2
        assert_applied_in_order(a)
        assert dlq.count(QueueId("1", TABLE, "A")) == 0  # never past the deadline
    finally:
        pipeline.stop()
        dlq.close()


def test_a_destination_s_own_deadline_wins_over_the_engine_s(tmp_path: Path) -> None:
    """A slow-when-healthy destination (large Snowflake batches) gets a longer deadline,
    a fast one a shorter: each write is bounded by its own destination's."""
    events = history(20)
    fast, patient = FakeDestination("A", "A"), FakeDestination("B", "B")
    fast.live_write_deadline = 0.2
    patient.live_write_deadline = 30.0
    with DLQManager(dlq_config(tmp_path), background=False) as dlq:
        health = {"A": DestinationHealth(fast), "B": DestinationHealth(patient)}
        handler = EventHandler("1", [fast, patient], health, dlq, NO_RETRY, live_write_deadline=5)
        fast.hold_writes()
        patient.set_write_delay(0.5)  # past A's deadline, well within B's own
        started = time.monotonic()
        handler.handle(events, set())
        assert time.monotonic() - started < 4.0  # A cost 0.2 s, not the engine's 5 s
        assert queued(dlq, "A") == len(events)
        assert queued(dlq, "B") == 0 and all_rows(patient) == apply_model(events)
        fast.release_writes()
        handler.close()
