"""A destination's own batch_size: the events per live write and the messages per replay lease."""

from __future__ import annotations

import time
from pathlib import Path

import pytest

from compute.admin.operations import DLQOperations
from compute.delivery.health import DestinationHealth
from compute.dlq.manager import DLQManager
from compute.engine.engine import Engine
from compute.engine.pipeline import Pipeline
from compute.queue_id import QueueId
from compute.recovery.worker import DLQRecoveryWorker
from config.errors import ConfigError
from config.pipelines import PipelineSpec, load_pipelines_file
from destinations.records import ChangeRecord
from tests.builders import (
    change,
    dlq_config,
    engine_settings,
    messages,
    pipelines_toml,
    postgresql_destination,
)
from tests.compute.helpers import ListSource, apply_model
from tests.fakes import FakeDestination
from tests.waiting import wait_until

TABLES = ("public.a", "public.b")
DSN = "host=127.0.0.1 port=5432 dbname=x user=u password=s3cret"


def history(n: int) -> list[ChangeRecord]:
    """Two thirds of the changes to one table, a third to the other, over few keys."""
    return [change(i, i % 41, table=TABLES[i % 3 == 0]) for i in range(1, n + 1)]


def write_sizes(dest: FakeDestination) -> list[int]:
    return [len(call.records) for call in dest.successful_calls()]


def run_pipeline(
    tmp_path: Path, events: list[ChangeRecord], a: FakeDestination, b: FakeDestination, **kw
) -> None:
    """Run a pipeline of ``events`` into ``a`` and ``b`` until both have every row."""
    config = dlq_config(tmp_path, live_write_deadline_ms=5000)
    with DLQManager(config) as dlq:
        pipeline = Pipeline("p", ListSource(events), [a, b], dlq, config, **kw)
        pipeline.start()
        try:
            expected = apply_model(events)
            for dest in (a, b):
                wait_until(
                    lambda d=dest: {t: d.rows(t) for t in TABLES} == expected,
                    30,
                    f"{dest.name} has every row",
                )
        finally:
            pipeline.stop()
        # Live, never through the DLQ: the sizes below are the live writes'.
        assert pipeline.handler.counters.queued.total() == 0


def test_live_writes_to_a_destination_stay_within_its_batch_size(tmp_path: Path) -> None:
    a, b = FakeDestination("A", "Snowflake"), FakeDestination("B", "PG")
    a.max_batch_size = 50
    run_pipeline(tmp_path, history(1000), a, b, batch_size=500)
    assert max(write_sizes(a)) == 50
    # The other destination of the pipeline keeps its batches of 500 events (2/3 in one table).
    assert max(write_sizes(b)) == 334
    # A got every change, in source order per table, in writes of at most 50.
    for table in TABLES:
        positions = [r.position.commit for r in a.applied if r.table == table]
        assert positions == sorted(positions)
    assert len(a.applied) == 1000


def test_a_lane_behind_catches_up_in_writes_of_its_destinations_batch_size(
    tmp_path: Path,
) -> None:
    a, b = FakeDestination("A", "Snowflake"), FakeDestination("B", "PG")
    a.max_batch_size = 200
    a.set_write_delay(0.05)  # behind the source: its lane takes waiting batches together
    run_pipeline(tmp_path, history(600), a, b, batch_size=10)
    assert 10 < max(write_sizes(a)) <= 200
    assert max(write_sizes(b)) <= 10  # the pipeline's batch_size


def test_replay_leases_of_a_destination_follow_its_batch_size(tmp_path: Path) -> None:
    small, large, default = (FakeDestination(i, i) for i in ("S", "L", "D"))
    small.max_batch_size, large.max_batch_size = 50, 250
    cfg = dlq_config(tmp_path, batch_size=100)  # DLQ_BATCH_SIZE
    with DLQManager(cfg, background=False) as dlq:
        for dest in (small, large, default):
            dlq.enqueue(
                QueueId("1", TABLES[0], dest.destination_id),
                messages(QueueId("1", TABLES[0], dest.destination_id), range(1, 501)),
            )
        dests = [small, large, default]
        health = {d.destination_id: DestinationHealth(d) for d in dests}
        worker = DLQRecoveryWorker("p", "1", dests, health, dlq, cfg, probe_timeout=0.5)
        try:
            worker.run_once(time.time() + 60)
        finally:
            worker.stop()
        for dest in dests:
            assert not dlq.has_messages(QueueId("1", TABLES[0], dest.destination_id))
    assert write_sizes(small) == [50] * 10
    assert write_sizes(large) == [250] * 2
    assert write_sizes(default) == [100] * 5


class _Running:
    """A running pipeline as the operator's actions see it: a name and its worker."""

    def __init__(self, worker: DLQRecoveryWorker) -> None:
        self.name, self.worker = "p", worker

    def status(self) -> dict[str, object]:
        return {"pipeline": "p", "source_id": "1", "destinations": []}


def test_an_operators_parked_replay_follows_the_destinations_batch_size(
    tmp_path: Path,
) -> None:
    small = FakeDestination("S", "S")
    small.max_batch_size = 50
    cfg = dlq_config(tmp_path, batch_size=100)
    queue = QueueId("1", TABLES[0], "S")
    with DLQManager(cfg, background=False) as dlq:
        dlq.park(queue, messages(queue, range(1, 121)))
        health = {"S": DestinationHealth(small)}
        worker = DLQRecoveryWorker("p", "1", [small], health, dlq, cfg, probe_timeout=0.5)
        ops = DLQOperations(dlq, engine_settings(cfg), pipelines=lambda: [_Running(worker)])
        try:
            assert ops.replay(queue, parked=True)["replayed"] == 120
        finally:
            worker.stop()
    assert write_sizes(small) == [50, 50, 20]


def pipelines(tmp_path: Path, **options: object) -> list[PipelineSpec]:
    """A pipelines file with two PostgreSQL destinations, ``options`` on the first."""
    first = {**postgresql_destination("DSN", "Snowflake-ish", "1"), **options}
    second = postgresql_destination("DSN", "PG", "2")
    toml = pipelines_toml(
        {"id": "1", "type": "synthetic", "total_events": 10}, [first, second], batch_size=500
    )
    (tmp_path / "pipelines.toml").write_text(toml)
    return load_pipelines_file(tmp_path / "pipelines.toml", {"DSN": DSN})


def test_the_engine_reads_a_destinations_batch_size_from_the_pipelines_file(
    tmp_path: Path,
) -> None:
    config = dlq_config(tmp_path, batch_size=100)
    engine = Engine(engine_settings(config), pipelines(tmp_path, batch_size=50))
    with DLQManager(config, background=False) as dlq:
        pipeline = engine._build_pipeline(engine.specs[0], dlq)
        try:
            # Live writes of at most 50 events and replay leases of 50 to the first;
            # the pipeline's batch_size and DLQ_BATCH_SIZE to the second.
            assert {i: lane.max_events for i, lane in pipeline.lanes.items()} == {"1": 50, "2": 500}
            assert pipeline.worker.replay.lease_size == {"1": 50, "2": 100}
        finally:
            pipeline.close()


def test_the_engine_refuses_a_bad_batch_size_in_the_pipelines_file(tmp_path: Path) -> None:
    with pytest.raises(ConfigError) as refused:
        Engine(engine_settings(dlq_config(tmp_path)), pipelines(tmp_path, batch_size=0))
    assert str(refused.value) == (
        "destination Snowflake-ish (ID=1): batch_size must be an integer number of events "
        "from 1 to 100000, got 0"
    )
