"""The embedding API: what a caller may acknowledge, outages, backpressure and a clean close."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import pytest

from compute.dlq.manager import DLQManager
from compute.engine.embedded import (
    DeliveryStoppedError,
    DestinationSpec,
    SourcePosition,
    open_delivery,
)
from compute.queue_id import QueueId
from config.errors import ConfigError
from config.settings import Settings
from tests.builders import TABLE, change, dlq_config, engine_settings
from tests.compute.helpers import apply_model
from tests.fakes import FakeDestination
from tests.waiting import wait_until


def settings(tmp_path: Path, **dlq: Any) -> Settings:
    return engine_settings(dlq_config(tmp_path, **dlq))


def history(start: int, stop: int, table: str = TABLE) -> list[Any]:
    """Changes ``start``..``stop - 1`` (their positions) to keys ``i % 7``."""
    return [change(i, i % 7, table=table) for i in range(start, stop)]


def test_safe_position_waits_for_every_destination(tmp_path: Path) -> None:
    fast, held = FakeDestination("1", "Fast"), FakeDestination("2", "Held")
    held.hold_writes()
    cfg = settings(tmp_path, live_write_deadline_ms=60_000)
    with open_delivery(cfg, [fast, held], source_id="src") as delivery:
        try:
            ticket = delivery.submit(history(1, 11))
            wait_until(lambda: len(fast.applied) == 10, 10, "the fast destination's write")
            wait_until(lambda: held.held_writes > 0, 10, "the held destination's write")
            # written by one destination, in flight at the other: not safe
            assert delivery.safe_position() is None
            assert not ticket.done()
            assert delivery.status().safe_events == 0
        finally:
            held.release_writes()
        assert ticket.wait(10)
        assert delivery.safe_position() == SourcePosition(10)
        status = delivery.status()
        assert (status.submitted_events, status.safe_events) == (10, 10)
        assert status.drained
    assert held.rows(TABLE) == fast.rows(TABLE) == apply_model(history(1, 11))[TABLE]


def test_outage_is_safe_once_queued_and_replays_in_order(tmp_path: Path) -> None:
    dest = FakeDestination("2", "PG")
    dest.set_down(True)
    changes = history(1, 201) + history(201, 301, table="public.orders")
    with open_delivery(settings(tmp_path), [dest], source_id="src", batch_size=40) as delivery:
        tickets = [delivery.submit(changes[i : i + 30]) for i in range(0, len(changes), 30)]
        assert delivery.flush(20)
        # queued in the DLQ counts as safe: the caller may acknowledge everything
        assert all(t.done() for t in tickets)
        assert delivery.safe_position() == SourcePosition(300)
        status = delivery.status()
        assert status.queued_events > 0 and not status.drained
        assert status.destinations == {"2": "unhealthy"}
        assert dest.rows(TABLE) == {}
        dest.set_down(False)
        wait_until(lambda: delivery.status().drained, 30, "the DLQ to drain")
    expected = apply_model(changes)
    assert dest.rows(TABLE) == expected[TABLE]
    assert dest.rows("public.orders") == expected["public.orders"]
    for table in (TABLE, "public.orders"):
        positions = [r.position for r in dest.applied if r.table == table]
        assert positions == sorted(positions), f"{table} written out of order"


def test_close_keeps_the_queue_and_the_next_delivery_replays_it(tmp_path: Path) -> None:
    down = FakeDestination("2", "PG")
    down.set_down(True)
    changes = history(1, 51)
    with open_delivery(settings(tmp_path), [down], source_id="src") as delivery:
        delivery.submit(changes)
        assert delivery.flush(20)
        assert delivery.status().queued_events == 50
    assert delivery.status().state == "closed"
    assert down.closed
    with DLQManager(dlq_config(tmp_path), background=False) as dlq:
        assert dlq.count(QueueId("src", TABLE, "2")) == 50  # on disk, after the close
    with pytest.raises(DeliveryStoppedError, match="closed"):
        delivery.submit(history(51, 52))

    up = FakeDestination("2", "PG")
    with open_delivery(settings(tmp_path), [up], source_id="src") as again:
        wait_until(lambda: again.status().queued_events == 0, 30, "the replay of the old queue")
        assert again.safe_position() is None  # nothing submitted in this run
    assert up.rows(TABLE) == apply_model(changes)[TABLE]


def test_full_dlq_blocks_submit_until_there_is_room(tmp_path: Path) -> None:
    dest = FakeDestination("2", "PG")
    dest.set_down(True)
    cfg = settings(tmp_path, max_queue_messages=20, read_ahead_events=20)
    with open_delivery(cfg, [dest], source_id="src", batch_size=10) as delivery:
        wait_for = None
        with pytest.raises(TimeoutError, match="nothing of this batch was taken"):
            for i in range(1, 200, 10):
                wait_for = delivery.submit(history(i, i + 10), timeout=2)
        assert delivery.status().state == "backpressure"
        assert "max_queue_messages" in (delivery.status().error or "")
        submitted = delivery.status().submitted_events
        assert submitted < 200
        dest.set_down(False)
        assert wait_for is not None and wait_for.wait(30)
        last = delivery.submit(history(500, 510), timeout=30)
        assert last.wait(30)
        wait_until(lambda: delivery.status().drained, 30, "the DLQ to drain")
    assert delivery.status().submitted_events == submitted + 10


def test_an_idle_delivery_takes_a_batch_at_once(tmp_path: Path) -> None:
    """A caller that waits for each batch is not slowed by the reader's idle poll (0.2 s)."""
    with open_delivery(settings(tmp_path), [FakeDestination("2")], source_id="src") as delivery:
        started = time.monotonic()
        for i in range(1, 21):
            assert delivery.submit([change(i, i)]).wait(10)
        elapsed = time.monotonic() - started
    assert elapsed < 2.0, f"20 batches, one at a time, took {elapsed:.2f}s"


def test_bad_arguments_are_refused_before_anything_starts(tmp_path: Path) -> None:
    cfg = settings(tmp_path)
    bad_dsn = DestinationSpec("1", "PG", "postgresql", {"dsn": "host=x port=notaport"})
    with pytest.raises(ConfigError) as raised:
        open_delivery(cfg, [FakeDestination("1"), FakeDestination("1")], source_id="a/b")
    text = str(raised.value)
    assert "source_id must be a non-empty name without '/'" in text
    assert "destination ids must be unique" in text
    with pytest.raises(ConfigError, match="invalid DSN"):
        open_delivery(cfg, [bad_dsn], source_id="src")
    assert not (tmp_path / "dlq" / "src").exists()
