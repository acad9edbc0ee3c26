"""The pipeline: acknowledgement after delivery, backpressure when the DLQ is full."""

from __future__ import annotations

import time
from pathlib import Path

from compute.dlq.manager import DLQManager
from compute.engine.pipeline import Pipeline, PipelineState
from compute.queue_id import QueueId
from compute.runtime.retry_policy import RetryPolicy
from tests.builders import TABLE, change, dlq_config
from tests.compute.helpers import ListSource, apply_model
from tests.fakes import FakeDestination
from tests.waiting import wait_until

NO_RETRY = RetryPolicy(max_retries=0, base_delay=0.001, max_delay=0.001)


def test_source_acknowledged_only_after_delivery(tmp_path: Path) -> None:
    history = [change(i, i % 5) for i in range(1, 41)]
    source = ListSource(history)
    dest = FakeDestination("2", "PG")
    with DLQManager(dlq_config(tmp_path), background=False) as dlq:
        pipeline = Pipeline(
            "p", source, [dest], dlq, dlq_config(tmp_path), batch_size=10, retry_policy=NO_RETRY
        )
        dest.set_down(True)
        assert pipeline.step()  # queued in the DLQ counts as delivered
        assert source.acknowledged == 10
        dest.set_down(False)
        while pipeline.step():
            pass
        assert source.acknowledged == 40
        assert dest.rows(TABLE) == {}  # everything waits behind the first queued batch
        pipeline.worker.run_once(time.time() + 100)
        assert dest.rows(TABLE) == apply_model(history)[TABLE]


def test_backpressure_stops_reading_and_resumes_after_recovery(tmp_path: Path) -> None:
    history = [change(i, i % 9) for i in range(1, 201)]
    source = ListSource(history)
    dest = FakeDestination("2", "PG")
    dest.set_down(True)
    cfg = dlq_config(tmp_path, max_queue_messages=25, check_interval=0.1)
    dlq = DLQManager(cfg)
    pipeline = Pipeline(
        "p", source, [dest], dlq, cfg, batch_size=10, retry_policy=NO_RETRY, probe_timeout=0.5
    )
    pipeline.start()
    try:
        wait_until(
            lambda: pipeline.state is PipelineState.BACKPRESSURE,
            20,
            "pipeline.state is PipelineState.BACKPRESSURE",
        )
        reads = source.reads
        time.sleep(0.5)
        # at most the refused batch is pending: the source is not read further
        assert source.reads == reads
        assert source.acknowledged <= 30
        assert "max_queue_messages" in (pipeline.status()["backpressure_reason"] or "")
        assert dlq.status(QueueId("1", TABLE, "2")).dropped == 0
        dest.set_down(False)
        wait_until(
            lambda: pipeline.finished.is_set() and not dlq.has_messages(QueueId("1", TABLE, "2")),
            20,
            'pipeline.finished.is_set() and not dlq.has_messages(QueueId("1", TABLE, "2"))',
        )
        assert source.acknowledged == 200
        assert dest.rows(TABLE) == apply_model(history)[TABLE]
    finally:
        pipeline.stop()
        dlq.close()
