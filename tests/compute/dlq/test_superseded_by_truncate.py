"""Parked changes older than an applied truncate: shown superseded, never replayed over it.

A real PostgreSQL destination without the position guard (nothing at the
destination would stop an old insert), the event handler parking a poison
change, a truncate applied after it, then the operator's view and actions.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from compute.admin.operations import DLQOperations
from compute.delivery.event_handler import EventHandler
from compute.delivery.health import DestinationHealth
from compute.dlq.manager import DLQManager
from compute.errors import DLQConflictError
from compute.queue_id import QueueId
from compute.recovery.worker import DLQRecoveryWorker
from compute.runtime.retry_policy import RetryPolicy
from destinations.postgresql.destination import PostgreSQLDestination
from tests.builders import dlq_config, engine_settings
from tests.destinations.postgresql.test_destination import create_table, rows
from tests.destinations.postgresql.test_ordered_changes import truncate, upsert

QUEUE = QueueId("1", "public.docs", "D")


class _Running:
    """A running pipeline as the operator's actions see it: a name and its worker."""

    def __init__(self, worker: DLQRecoveryWorker) -> None:
        self.name, self.worker = "p", worker

    def status(self) -> dict[str, object]:
        return {"pipeline": "p", "source_id": "1", "destinations": []}


@pytest.fixture
def destination(postgres_dsn: str, pg_conn: Any, pg_schema: str) -> Iterator[PostgreSQLDestination]:
    # 'bad' titles are refused for good (a check constraint): the change is parked.
    create_table(
        pg_conn, pg_schema, "docs", "id int PRIMARY KEY, title text CHECK (title <> 'bad')"
    )
    made = PostgreSQLDestination(
        "D", "PG", postgres_dsn, table_map={"public.docs": f"{pg_schema}.docs"}
    )
    yield made
    made.close()


def _handler(dlq: DLQManager, destination: PostgreSQLDestination) -> EventHandler:
    health = {"D": DestinationHealth(destination)}
    return EventHandler("1", [destination], health, dlq, RetryPolicy(0, 0.01, 0.01))


def _operations(dlq: DLQManager, destination: PostgreSQLDestination, tmp_path: Path) -> Any:
    health = {"D": DestinationHealth(destination)}
    cfg = dlq_config(tmp_path)
    worker = DLQRecoveryWorker("p", "1", [destination], health, dlq, cfg, probe_timeout=2)
    ops = DLQOperations(dlq, engine_settings(cfg), pipelines=lambda: [_Running(worker)])
    return ops, worker


def test_a_parked_change_older_than_a_truncate_is_superseded_and_not_replayed(
    destination: PostgreSQLDestination, pg_conn: Any, pg_schema: str, tmp_path: Path
) -> None:
    with DLQManager(dlq_config(tmp_path), background=False) as dlq:
        handler = _handler(dlq, destination)
        try:
            # 1 at 10 is poison (parked); 2 at 11 lands.
            handler.handle([upsert(1, 10, title="bad"), upsert(2, 11, title="b")], set())
            assert dlq.parked_count(QUEUE) == 1
            assert rows(pg_conn, pg_schema, "docs", "id") == [(2,)]
            # The source truncates at 20; a change to key 1 at 30 waits behind the parked one.
            handler.handle([truncate(20)], set())
            handler.handle([upsert(1, 30, title="new")], set())
        finally:
            handler.close()
        assert rows(pg_conn, pg_schema, "docs", "id") == []
        assert dlq.parked_count(QUEUE) == 2
        assert dlq.superseded_count(QUEUE) == 1

    # After a restart the DLQ still knows the truncate (truncated.json).
    with DLQManager(dlq_config(tmp_path), background=False) as dlq:
        ops, worker = _operations(dlq, destination, tmp_path)
        try:
            shown = ops.show(QUEUE, parked=True)
            assert shown["superseded"] == 1
            old, new = shown["messages"]
            assert old["superseded_by_truncate"]["position"] == "0/14#0"
            assert "superseded_by_truncate" not in new
            status = dlq.status(QUEUE).to_json(time.time())
            assert status["superseded"] == 1
            assert status["superseded_by_truncate"]["position"] == "0/14#0"

            # Replaying the parked lane is refused, naming the truncate and the fix.
            result = ops.replay(QUEUE, parked=True)
            entry = result["queues"][0]
            assert entry["replayed"] == 0 and entry["failed"] == 2
            assert "older than the truncate of public.docs at 0/14#0" in entry["error"]
            assert len(entry["error"]) <= 300
            assert "rosetta dlq discard" in entry["error"]
            assert rows(pg_conn, pg_schema, "docs", "id") == []
            assert dlq.parked_count(QUEUE) == 2  # nothing dropped

            with pytest.raises(DLQConflictError, match="older than the truncate"):
                dlq.unpark_message(QUEUE, old["message_id"])

            # The operator drops the superseded change: the rest replays.
            dlq.discard_message(QUEUE, old["message_id"])
            assert dlq.superseded_count(QUEUE) == 0
            result = ops.replay(QUEUE, parked=True)
            assert result["replayed"] == 1 and result["failed"] == 0
        finally:
            worker.stop()
    assert rows(pg_conn, pg_schema, "docs", "id, title") == [(1, "new")]


def test_a_truncate_with_nothing_parked_marks_nothing(
    destination: PostgreSQLDestination, tmp_path: Path
) -> None:
    with DLQManager(dlq_config(tmp_path), background=False) as dlq:
        handler = _handler(dlq, destination)
        try:
            handler.handle([upsert(1, 10, title="a"), truncate(20)], set())
            handler.handle([upsert(1, 30, title="bad")], set())  # newer than the truncate
        finally:
            handler.close()
        assert dlq.parked_count(QUEUE) == 1
        assert dlq.superseded_count(QUEUE) == 0
