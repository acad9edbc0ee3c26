"""GET /metrics of a running engine: counters move with what the engine does, gauges match
the queues on disk. Every check scrapes the rendered text and parses it with
prometheus_client's own parser."""

from __future__ import annotations

import time
from pathlib import Path

import pytest

from compute.dlq.manager import DLQManager
from compute.observability.metrics import DLQMetrics
from compute.queue_id import QueueId
from config.dlq_config import WhenFull
from destinations.records import Operation
from tests.builders import TABLE, change, dlq_config
from tests.compute.helpers import apply_model
from tests.compute.observability.harness import (
    LABELS,
    QUEUE,
    Harness,
    parse,
    sample,
    start_engine,
    wait_sample,
)
from tests.waiting import wait_until


@pytest.fixture
def harness(tmp_path: Path):
    h = start_engine(tmp_path)
    yield h
    h.engine.stop()


def queued(h: Harness, queue: QueueId = QUEUE) -> int:
    assert h.engine.dlq is not None
    return h.engine.dlq.status(queue).messages


def test_enqueue_and_replay_move_the_counters_and_gauges(harness: Harness) -> None:
    h = harness
    before = h.scrape()
    assert sample(before, "rosetta_dlq_messages_enqueued_total", **LABELS) is None
    assert sample(before, "rosetta_dlq_queue_messages", **LABELS) is None

    h.dest.set_down(True)
    history = [change(i, i % 7) for i in range(1, 31)]
    h.source.feed(history)
    wait_until(lambda: queued(h) == 30, 30, "queued(h) == 30")

    assert h.engine.dlq is not None
    status = h.engine.dlq.status(QUEUE)
    low = time.time() - status.oldest_enqueued_at  # type: ignore[operator]
    down = h.scrape()
    high = time.time() - status.oldest_enqueued_at  # type: ignore[operator]
    assert sample(down, "rosetta_dlq_messages_enqueued_total", **LABELS) == 30
    assert sample(down, "rosetta_dlq_queue_messages", **LABELS) == status.messages == 30
    assert (sample(down, "rosetta_dlq_queue_bytes", **LABELS) or 0) > 0
    assert sample(down, "rosetta_dlq_parked_messages", **LABELS) == 0
    age = sample(down, "rosetta_dlq_oldest_message_age_seconds", **LABELS)
    assert age is not None and low <= age <= high
    assert sample(down, "rosetta_dlq_queues") == 1
    # The first live write was retried once in place before the batch was queued.
    assert sample(down, "rosetta_dlq_retry_attempts_total", **LABELS) == 1
    dest_labels = {"pipeline": "p", "destination": "2", "name": "PG"}
    assert sample(down, "rosetta_destination_up", **dest_labels) == 0
    assert sample(down, "rosetta_destination_circuit_state", state="open", **dest_labels) == 1
    assert sample(down, "rosetta_destination_circuit_state", state="closed", **dest_labels) == 0
    assert (sample(down, "rosetta_destination_unhealthy_seconds", **dest_labels) or 0) > 0
    assert sample(down, "rosetta_pipeline_backpressure", pipeline="p") == 0

    h.dest.set_down(False)
    wait_until(lambda: queued(h) == 0, 30, "queued(h) == 0")
    assert h.dest.rows(TABLE) == apply_model(history)[TABLE]
    wait_sample(h, "rosetta_dlq_messages_replayed_total", 30, **LABELS)
    up = h.scrape()
    assert sample(up, "rosetta_dlq_messages_replayed_total", **LABELS) == 30
    assert sample(up, "rosetta_dlq_messages_enqueued_total", **LABELS) == 30
    assert sample(up, "rosetta_dlq_messages_failed_total", **LABELS) is None
    assert sample(up, "rosetta_dlq_queue_messages", **LABELS) == 0
    assert sample(up, "rosetta_dlq_oldest_message_age_seconds", **LABELS) == 0
    batches = sample(up, "rosetta_dlq_replay_batch_duration_seconds_count", destination="2")
    assert batches == 3  # 30 messages in batches of DLQ_BATCH_SIZE=10
    assert (sample(up, "rosetta_dlq_replay_batch_duration_seconds_sum", destination="2") or 0) > 0
    assert sample(up, "rosetta_destination_up", **dest_labels) == 1
    assert sample(up, "rosetta_destination_circuit_state", state="closed", **dest_labels) == 1
    assert sample(up, "rosetta_destination_unhealthy_seconds", **dest_labels) == 0


def test_failed_replay_counts_failed_messages_and_a_retry_attempt(harness: Harness) -> None:
    h = harness
    h.dest.set_down(True)
    h.source.feed([change(i, i) for i in range(1, 11)])
    wait_until(lambda: queued(h) == 10, 30, "queued(h) == 10")
    # Health checks pass, but the first replay write fails (transiently).
    h.dest.fail_next(1)
    h.dest.set_down(False)
    wait_until(lambda: queued(h) == 0, 30, "queued(h) == 0")
    wait_sample(h, "rosetta_dlq_messages_replayed_total", 10, **LABELS)
    samples = h.scrape()
    assert sample(samples, "rosetta_dlq_messages_failed_total", **LABELS) == 10
    assert sample(samples, "rosetta_dlq_messages_replayed_total", **LABELS) == 10
    in_place = h.pipeline.handler.counters.retries["2"]
    assert in_place == 1
    assert sample(samples, "rosetta_dlq_retry_attempts_total", **LABELS) == in_place + 1
    assert sample(samples, "rosetta_dlq_replay_batch_duration_seconds_count", destination="2") == 2


def test_parked_messages_move_the_parked_counter_and_gauge(harness: Harness) -> None:
    h = harness
    # Live path: the handler parks the poison event and the later change to its key.
    h.dest.fail_keys([3])
    h.source.feed([change(i, i) for i in range(1, 6)] + [change(6, 3)])
    wait_until(lambda: h.source.acknowledged == 6, 30, "h.source.acknowledged == 6")
    samples = h.scrape()
    assert sample(samples, "rosetta_dlq_messages_parked_total", **LABELS) == 2
    assert h.engine.dlq is not None
    assert h.engine.dlq.status(QUEUE).parked == 2
    assert sample(samples, "rosetta_dlq_parked_messages", **LABELS) == 2
    assert h.dest.row(TABLE, 3) is None and h.dest.row(TABLE, 5) is not None

    # Replay path: a queued poison event is parked by the recovery worker.
    h.dest.set_down(True)
    h.source.feed([change(7, 8), change(8, 9)])
    wait_until(lambda: queued(h) == 2, 30, "queued(h) == 2")
    h.dest.fail_keys([9])
    h.dest.set_down(False)
    wait_until(lambda: queued(h) == 0, 30, "queued(h) == 0")
    wait_sample(h, "rosetta_dlq_messages_parked_total", 3, **LABELS)
    samples = h.scrape()
    assert sample(samples, "rosetta_dlq_messages_parked_total", **LABELS) == 3
    assert sample(samples, "rosetta_dlq_parked_messages", **LABELS) == 3
    assert sample(samples, "rosetta_dlq_messages_replayed_total", **LABELS) == 1
    assert h.dest.row(TABLE, 8) is not None and h.dest.row(TABLE, 9) is None


def test_dropped_messages_are_counted(tmp_path: Path) -> None:
    h = start_engine(tmp_path, when_full=WhenFull.DROP_NEWEST, max_queue_messages=15)
    try:
        h.dest.set_down(True)
        h.source.feed([change(i, i) for i in range(1, 31)])
        wait_until(lambda: h.source.acknowledged == 30, 30, "h.source.acknowledged == 30")
        samples = h.scrape()
        assert h.engine.dlq is not None
        status = h.engine.dlq.status(QUEUE)
        assert status.messages == 10 and status.dropped == 20
        assert sample(samples, "rosetta_dlq_messages_enqueued_total", **LABELS) == 10
        assert sample(samples, "rosetta_dlq_messages_dropped_total", **LABELS) == 20
        assert sample(samples, "rosetta_dlq_queue_messages", **LABELS) == 10
    finally:
        h.engine.stop()


def test_expired_messages_are_counted(tmp_path: Path) -> None:
    h = start_engine(tmp_path, message_ttl=60)
    try:
        h.dest.set_down(True)
        h.source.feed([change(i, i) for i in range(1, 13)])
        wait_until(lambda: queued(h) == 12, 30, "queued(h) == 12")
        h.skew[0] = 3600.0  # the pipeline's clock moves an hour on: every message is stale
        h.dest.set_down(False)
        wait_until(lambda: queued(h) == 0, 30, "queued(h) == 0")
        wait_sample(h, "rosetta_dlq_messages_expired_total", 12, **LABELS)
        samples = h.scrape()
        assert sample(samples, "rosetta_dlq_messages_replayed_total", **LABELS) is None
        assert h.dest.rows(TABLE) == {}
    finally:
        h.engine.stop()


def test_queue_gauges_match_dlq_status_for_every_queue(harness: Harness) -> None:
    h = harness
    h.dest.set_down(True)
    other = "public.orders"
    h.source.feed(
        [change(i, i) for i in range(1, 8)]
        + [change(i, i, table=other) for i in range(8, 12)]
        + [change(12, 1, op=Operation.DELETE)]
    )
    orders = QueueId("1", other, "2")
    wait_until(
        lambda: queued(h) == 8 and queued(h, orders) == 4,
        30,
        "queued(h) == 8 and queued(h, orders) == 4",
    )
    samples = h.scrape()
    assert h.engine.dlq is not None
    for queue in h.engine.dlq.list_queues():
        status = h.engine.dlq.status(queue)
        labels = {"source": "1", "table": queue.table, "destination": "2"}
        assert sample(samples, "rosetta_dlq_queue_messages", **labels) == status.messages
        assert sample(samples, "rosetta_dlq_parked_messages", **labels) == status.parked
        assert sample(samples, "rosetta_dlq_messages_enqueued_total", **labels) == status.messages
    assert sample(samples, "rosetta_dlq_queues") == 2
    assert sample(samples, "rosetta_dlq_damaged_queues") == 0


def test_disk_gauges_describe_the_base_path_filesystem(harness: Harness) -> None:
    import shutil

    samples = harness.scrape()
    total, used, free = shutil.disk_usage(harness.engine.settings.dlq.base_path)
    assert sample(samples, "rosetta_dlq_disk_total_bytes") == total
    scraped_free = sample(samples, "rosetta_dlq_disk_free_bytes")
    assert scraped_free is not None and 0 < scraped_free <= total
    ratio = sample(samples, "rosetta_dlq_disk_usage_ratio")
    assert ratio is not None and 0 < ratio < 1
    assert ratio == pytest.approx(used / (used + free), abs=0.01)


def test_every_alert_rule_has_a_firing_series(harness: Harness) -> None:
    samples = harness.scrape()
    firing = {
        dict(labels)["alert"]: v
        for (name, labels), v in samples.items()
        if name == "rosetta_alerts_firing"
    }
    assert set(firing) == {
        "dlq_queue_size",
        "dlq_message_age",
        "destination_unhealthy",
        "dlq_disk_usage",
        "dlq_damaged_queue",
        "dlq_queue_held",
        "source_replication_lag",
    }


def test_scrape_after_stop_leaves_queues_out_and_does_not_fail(tmp_path: Path) -> None:
    h = start_engine(tmp_path)
    h.dest.set_down(True)
    h.source.feed([change(1, 1)])
    wait_until(lambda: queued(h) == 1, 30, "queued(h) == 1")
    h.engine.stop()
    samples = h.scrape()
    assert sample(samples, "rosetta_dlq_messages_enqueued_total", **LABELS) == 1
    assert sample(samples, "rosetta_dlq_queue_messages", **LABELS) is None


def test_each_metrics_object_has_its_own_registry(tmp_path: Path) -> None:
    with DLQManager(dlq_config(tmp_path), background=False) as dlq:
        first = DLQMetrics(dlq, base_path=tmp_path)
        second = DLQMetrics(dlq, base_path=tmp_path)  # no "duplicated timeseries" error
        first.enqueued(QUEUE, 5, 0)
        assert (
            sample(
                parse(first.render()[0].decode()), "rosetta_dlq_messages_enqueued_total", **LABELS
            )
            == 5
        )
        assert (
            sample(
                parse(second.render()[0].decode()), "rosetta_dlq_messages_enqueued_total", **LABELS
            )
            is None
        )


def test_a_failing_counter_is_logged_not_raised_into_delivery(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    with DLQManager(dlq_config(tmp_path), background=False) as dlq:
        metrics = DLQMetrics(dlq, base_path=tmp_path, process_metrics=False)

        def broken(*labels: str) -> None:
            raise ValueError("label trouble")

        monkeypatch.setattr(metrics.replayed_total, "labels", broken)
        metrics.replay_batch(QUEUE, 0.01, {"replayed": 3})  # must not raise
        assert "metrics not updated: queue=" in caplog.text and "label trouble" in caplog.text
