"""Pipeline behaviours against a real PostgreSQL: poison rows, and backpressure in an outage."""

from __future__ import annotations

import json
import time
from pathlib import Path

import psycopg2

from compute.dlq.manager import DLQManager
from compute.engine.pipeline import Pipeline, PipelineState
from compute.queue_id import QueueId
from compute.runtime.retry_policy import RetryPolicy
from compute.sources.jsonl_source import JsonLinesSource
from compute.sources.offset_store import OffsetStore
from destinations.postgresql.destination import PostgreSQLDestination
from destinations.records import ChangeRecord, Operation, SourcePosition
from tests.builders import dlq_config
from tests.compute.helpers import ListSource
from tests.waiting import wait_until

TABLE = "public.accounts"
NO_RETRY = RetryPolicy(max_retries=0, base_delay=0.001, max_delay=0.001)


def account(i: int, key: int, balance: int, op: Operation = Operation.UPDATE) -> ChangeRecord:
    after = None if op is Operation.DELETE else {"id": key, "balance": balance, "v": i}
    return ChangeRecord(TABLE, op, {"id": key}, after, SourcePosition(i, 0))


def make_table(dsn: str) -> None:
    conn = psycopg2.connect(dsn)
    conn.autocommit = True
    with conn.cursor() as cur:
        cur.execute(
            "CREATE TABLE IF NOT EXISTS public.accounts (id bigint PRIMARY KEY, "
            "balance bigint NOT NULL CHECK (balance >= 0), v bigint NOT NULL)"
        )
    conn.close()


def rows(dsn: str) -> dict[int, tuple[int, int]]:
    conn = psycopg2.connect(dsn)
    with conn.cursor() as cur:
        cur.execute("SELECT id, balance, v FROM public.accounts")
        found = {r[0]: (r[1], r[2]) for r in cur.fetchall()}
    conn.close()
    return found


def test_poison_row_is_parked_and_its_key_held_while_the_table_flows(
    tmp_path: Path, postgres_server_factory
) -> None:
    server = postgres_server_factory()
    make_table(server.dsn)
    history = [
        account(1, 1, 100, Operation.INSERT),
        account(2, 2, 200, Operation.INSERT),
        account(3, 2, -50),  # violates the CHECK constraint (23514): poison
        account(4, 1, 110),
        account(5, 2, 250),  # a later change to the parked key: held behind it
        account(6, 3, 300, Operation.INSERT),
    ]
    destination = PostgreSQLDestination("1", "PG", server.dsn)
    config = dlq_config(tmp_path)
    with DLQManager(config, background=False) as dlq:
        pipeline = Pipeline("p", ListSource(history), [destination], dlq, config, batch_size=3)
        while pipeline.step():
            pass
        assert rows(server.dsn) == {1: (110, 4), 2: (200, 2), 3: (300, 6)}
        queue = QueueId("1", TABLE, "1")
        parked = dlq.peek(queue.parked, 10)
        assert [(m.record.key["id"], m.record.position.commit) for m in parked] == [(2, 3), (2, 5)]
        assert parked[0].failure.code == "23514"
        assert parked[0].failure.kind.value == "permanent"
        assert parked[1].failure.error_class == "HeldBehindParkedChange"
        assert not dlq.has_messages(queue)  # nothing else waits: the table flows
        pipeline.close()


def test_backpressure_in_an_outage_drops_nothing_and_resumes(
    tmp_path: Path, postgres_server_factory
) -> None:
    server = postgres_server_factory()
    make_table(server.dsn)
    history = [
        account(i, i % 13, i, Operation.UPDATE if i > 13 else Operation.INSERT)
        for i in range(1, 401)
    ]
    expected = {}
    for r in history:
        expected[r.key["id"]] = (r.after["balance"], r.after["v"])  # type: ignore[index]
    destination = PostgreSQLDestination("1", "PG", server.dsn, connect_timeout=1)
    config = dlq_config(tmp_path, max_queue_messages=40, check_interval=0.2)
    dlq = DLQManager(config)
    source = ListSource(history)
    pipeline = Pipeline(
        "p",
        source,
        [destination],
        dlq,
        config,
        batch_size=20,
        retry_policy=NO_RETRY,
        probe_timeout=1,
    )
    server.stop("immediate")
    pipeline.start()
    try:
        wait_until(
            lambda: pipeline.state is PipelineState.BACKPRESSURE,
            30,
            "pipeline.state is PipelineState.BACKPRESSURE",
        )
        reads = source.reads
        time.sleep(1.0)
        assert source.reads == reads, "the source must not be read while the DLQ is full"
        assert source.acknowledged <= 60
        assert dlq.status(QueueId("1", TABLE, "1")).dropped == 0
        server.start()
        wait_until(
            lambda: pipeline.finished.is_set() and not dlq.has_messages(QueueId("1", TABLE, "1")),
            60,
            'pipeline.finished.is_set() and not dlq.has_messages(QueueId("1", TABLE, "1"))',
        )
        assert source.acknowledged == 400
        assert rows(server.dsn) == expected
    finally:
        pipeline.stop()
        pipeline.close()
        dlq.close()


def _jsonl_event(key: int, balance: int, v: int, lsn: int) -> str:
    after = {"id": key, "balance": balance, "v": v}
    source = {"schema": "public", "table": "accounts", "lsn": lsn, "pk": ["id"]}
    return json.dumps(
        {"op": "c" if v == 1 else "u", "before": None, "after": after, "source": source}
    )


def test_a_value_over_64_bits_is_parked_exactly_and_the_events_behind_it_flow(
    tmp_path: Path, postgres_server_factory
) -> None:
    """10**25 for a bigint column: PostgreSQL refuses it, the DLQ keeps it exactly (its
    position is 2**63 - 3, near the largest the source takes), the good events behind it are
    written, a restart parks nothing again."""
    server = postgres_server_factory()
    make_table(server.dsn)
    events = tmp_path / "events.jsonl"
    events.write_text(
        "\n".join(
            [
                _jsonl_event(1, 100, 1, 1000),
                _jsonl_event(2, 10**25, 1, 2**63 - 3),  # numeric out of range (22003): parked
                _jsonl_event(3, 300, 1, 2**63 - 2),
                _jsonl_event(1, 110, 2, 2**63 - 1),
            ]
        )
        + "\n"
    )
    config = dlq_config(tmp_path)
    queue = QueueId("src", TABLE, "1")

    def run() -> None:
        source = JsonLinesSource("src", events, OffsetStore(tmp_path / "offsets.json"))
        destination = PostgreSQLDestination("1", "PG", server.dsn)
        with DLQManager(config, background=False) as dlq:
            pipeline = Pipeline("p", source, [destination], dlq, config, batch_size=10)
            while pipeline.step():
                pass
            assert source.exhausted
            pipeline.close()

    run()
    assert rows(server.dsn) == {1: (110, 2), 3: (300, 1)}
    run()  # a restart: nothing is read, parked or written again
    assert rows(server.dsn) == {1: (110, 2), 3: (300, 1)}
    with DLQManager(config, background=False) as dlq:
        parked = dlq.peek(queue.parked, 10)
        assert len(parked) == 1
        (message,) = parked
        assert message.record.after == {"id": 2, "balance": 10**25, "v": 1}
        assert type(message.record.after["balance"]) is int
        assert message.record.position == SourcePosition(2**63 - 3, 0)
        assert message.failure.code == "22003"
        assert not dlq.has_messages(queue)
