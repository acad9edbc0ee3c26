"""Replay priority against a real PostgreSQL: higher-priority queues first, equals by turns of
one batch, and a queue that fills during a pass gets in within one batch."""

from __future__ import annotations

import itertools
import time
from pathlib import Path
from typing import Any

from compute.delivery.health import DestinationHealth
from compute.dlq.manager import DLQManager
from compute.queue_id import QueueId
from compute.recovery.worker import DLQRecoveryWorker
from destinations.base import PreparedBatch
from destinations.postgresql.destination import PostgreSQLDestination
from tests.builders import dlq_config, messages

BATCH = 10
# Bare names: a table's priority is found by its qualified name, else its bare name.
PRIORITY = {"urgent": 10, "orders": 0, "customers": 0, "history": -5}


def make_tables(pg_conn: Any, schema: str) -> None:
    """One table per queue; ``arrived`` numbers the rows in the order they were written."""
    with pg_conn.cursor() as cur:
        cur.execute(f"CREATE SEQUENCE {schema}.arrival")
        for table in PRIORITY:
            cur.execute(
                f"CREATE TABLE {schema}.{table} (id bigint PRIMARY KEY, v bigint NOT NULL, "
                f"arrived bigint NOT NULL DEFAULT nextval('{schema}.arrival'))"
            )


def arrivals(pg_conn: Any, schema: str) -> list[tuple[str, int]]:
    """The rows written to the destination, in arrival order, as runs of (table, rows)."""
    with pg_conn.cursor() as cur:
        cur.execute(
            " UNION ALL ".join(
                f"SELECT '{table}' AS t, arrived FROM {schema}.{table}" for table in PRIORITY
            )
            + " ORDER BY arrived"
        )
        tables = [t for t, _ in cur.fetchall()]
    return [(table, len(list(run))) for table, run in itertools.groupby(tables)]


def make_worker(
    tmp_path: Path, destination: PostgreSQLDestination
) -> tuple[DLQRecoveryWorker, DLQManager]:
    config = dlq_config(tmp_path, batch_size=BATCH)
    dlq = DLQManager(config, background=False)
    health = {destination.destination_id: DestinationHealth(destination)}
    worker = DLQRecoveryWorker(
        "p", "1", [destination], health, dlq, config, probe_timeout=5, priority=PRIORITY
    )
    return worker, dlq


def test_higher_priority_first_equals_by_turns_of_one_batch(
    tmp_path: Path, postgres_dsn: str, pg_conn: Any, pg_schema: str
) -> None:
    make_tables(pg_conn, pg_schema)
    destination = PostgreSQLDestination("1", "PG", postgres_dsn)
    worker, dlq = make_worker(tmp_path, destination)
    queue = {table: QueueId("1", f"{pg_schema}.{table}", "1") for table in PRIORITY}
    # Queued largest first: size and queue age must not decide the order.
    dlq.enqueue(queue["history"], messages(queue["history"], range(1, 101)))
    dlq.enqueue(queue["orders"], messages(queue["orders"], range(1, 41)))
    dlq.enqueue(queue["customers"], messages(queue["customers"], range(1, 21)))
    dlq.enqueue(queue["urgent"], messages(queue["urgent"], range(1, 6)))
    results = worker.run_once(time.time())
    # urgent (10) first, in the pass's first batch; customers and orders (both 0)
    # one batch each in turn, by name; history (-5) last, whatever its size.
    assert arrivals(pg_conn, pg_schema) == [
        ("urgent", 5),
        ("customers", 10),
        ("orders", 10),
        ("customers", 10),
        ("orders", 30),
        ("history", 100),
    ]
    assert {r.queue.table: r.replayed for r in results} == {
        queue[t].table: n for t, n in [("urgent", 5), ("orders", 40), ("customers", 20)]
    } | {queue["history"].table: 100}
    assert not any(dlq.has_messages(q) for q in queue.values())
    dlq.close()
    destination.close()


class _QueuesDuringReplay(PostgreSQLDestination):
    """A real PostgreSQL destination that, once its ``after``-th replay batch committed,
    queues ``arriving`` messages: a queue that fills while a pass runs."""

    def __init__(self, *args: Any, after: int, arriving: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.after = after
        self.arriving = arriving
        self.written = 0

    def write_prepared(self, batch: PreparedBatch) -> int:
        done = super().write_prepared(batch)
        self.written += 1
        if self.written == self.after:
            self.arriving()
        return done


def test_a_queue_that_fills_during_a_pass_waits_for_one_batch_at_most(
    tmp_path: Path, postgres_dsn: str, pg_conn: Any, pg_schema: str
) -> None:
    make_tables(pg_conn, pg_schema)
    history = QueueId("1", f"{pg_schema}.history", "1")
    urgent = QueueId("1", f"{pg_schema}.urgent", "1")
    dlq_box: list[DLQManager] = []
    destination = _QueuesDuringReplay(
        "1",
        "PG",
        postgres_dsn,
        after=2,  # while history's third batch is due
        arriving=lambda: dlq_box[0].enqueue(urgent, messages(urgent, range(1, 6))),
    )
    worker, dlq = make_worker(tmp_path, destination)
    dlq_box.append(dlq)
    dlq.enqueue(history, messages(history, range(1, 101)))
    results = worker.run_once(time.time())
    # The urgent queue, filled after history's second batch, is replayed next:
    # the large low-priority queue delayed it by no batch of its own.
    assert arrivals(pg_conn, pg_schema) == [("history", 20), ("urgent", 5), ("history", 80)]
    assert sorted((r.queue.table, r.replayed) for r in results) == sorted(
        [(history.table, 100), (urgent.table, 5)]
    )
    dlq.close()
    destination.close()
