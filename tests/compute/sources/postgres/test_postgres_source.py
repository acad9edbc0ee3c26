"""The PostgreSQL source against real servers: changes replicate exactly through a Pipeline."""

from __future__ import annotations

import time
from pathlib import Path

from compute.dlq.manager import DLQManager
from compute.sources.postgres_source import PostgresSource
from tests.builders import dlq_config
from tests.compute.sources.postgres.pg_source_helpers import (
    execute,
    logical_server,
    query,
    running_pipeline,
)
from tests.waiting import wait_until

ITEMS = "CREATE TABLE public.items (id int PRIMARY KEY, name text, big text, n numeric)"


def test_inserts_updates_deletes_toast_and_key_changes_replicate_exactly(
    tmp_path: Path, postgres_server_factory
) -> None:
    source_server = logical_server(postgres_server_factory)
    target = postgres_server_factory()
    execute(source_server.dsn, ITEMS)
    execute(target.dsn, ITEMS)
    big = "x" * 5000 + "".join(chr(65 + i % 26) for i in range(20000))  # TOASTed, compressed
    source = PostgresSource("1", source_server.dsn, snapshot="never", status_interval=0.5)
    config = dlq_config(tmp_path)
    with DLQManager(config) as dlq, running_pipeline(source, target.dsn, dlq, config):
        execute(
            source_server.dsn,
            "INSERT INTO items SELECT g, 'n' || g, NULL, g * 1.5 FROM generate_series(1, 50) g",
            "UPDATE items SET name = 'changed' WHERE id <= 10",
            "DELETE FROM items WHERE id BETWEEN 41 AND 45",
            # The big value goes in; then an update of another column leaves it unsent ('u').
            "UPDATE items SET big = '" + big + "' WHERE id = 20",
            "UPDATE items SET name = 'toast kept' WHERE id = 20",
            # A key change: the old key goes away, the new one appears, in one transaction.
            "BEGIN; UPDATE items SET id = 1000 WHERE id = 30; "
            "UPDATE items SET id = 30 WHERE id = 31; COMMIT",
        )
        expected = query(source_server.dsn, "SELECT * FROM items ORDER BY id")
        wait_until(
            lambda: query(target.dsn, "SELECT * FROM items ORDER BY id") == expected,
            30,
            "the destination holds exactly the source's rows",
        )
    row = query(target.dsn, "SELECT name, big FROM items WHERE id = 20")
    assert row == [("toast kept", big)]
    assert query(target.dsn, "SELECT count(*) FROM items WHERE id IN (31, 1000)") == [(1,)]


def test_a_source_not_read_for_longer_than_wal_sender_timeout_keeps_its_connection(
    postgres_server_factory,
) -> None:
    """Backpressure: the pipeline stops reading; status updates still go out, so the server
    does not end the connection for wal_sender_timeout (2 s here), and nothing is lost."""
    server = logical_server(postgres_server_factory, wal_sender_timeout="2s")
    execute(server.dsn, ITEMS)
    source = PostgresSource(
        "1", server.dsn, snapshot="never", status_interval=0.5, max_buffered=100
    )
    try:
        wait_until(source.stream.connected.is_set, 10, "the stream is connected")
        walsender = query(server.dsn, "SELECT pid FROM pg_stat_replication")
        # 40 transactions of 100 rows: far more than the 100 records the source buffers.
        for start in range(0, 4000, 100):
            execute(
                server.dsn,
                f"INSERT INTO items SELECT g, 'n' FROM generate_series({start}, {start + 99}) g",
            )
        wait_until(lambda: source.stream.buffered >= 100, 10, "the source buffer is full")
        stop_reading_until = time.monotonic() + 6  # three wal_sender_timeouts, nothing read
        while time.monotonic() < stop_reading_until:
            time.sleep(0.2)
        assert source.stream.reconnects == 0
        assert query(server.dsn, "SELECT pid FROM pg_stat_replication") == walsender
        assert "replication timeout" not in server.log_text()
        seen: set[int] = set()
        deadline = time.monotonic() + 30
        while len(seen) < 4000 and time.monotonic() < deadline:
            batch = source.read(500)
            seen.update(r.key["id"] for r in batch.records)
            source.acknowledge(batch.resume_token)
        assert seen == set(range(4000))
        assert source.stream.reconnects == 0
    finally:
        source.close()
