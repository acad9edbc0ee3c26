"""The PostgreSQL source against real servers: changes replicate exactly through a Pipeline."""

from __future__ import annotations

import time
from pathlib import Path

import pytest

from compute.dlq.manager import DLQManager
from compute.engine.pipeline import PipelineState
from compute.sources.base import SourceError
from compute.sources.factory import build_source
from compute.sources.postgres_source import PostgresSource
from config.errors import ConfigError
from config.pipelines import SourceSpec
from destinations.records import ChangeRecord
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


def read_all(source: PostgresSource, count: int, timeout: float = 30) -> list[ChangeRecord]:
    """Read and acknowledge until ``count`` records came (or the time is up)."""
    records: list[ChangeRecord] = []
    deadline = time.monotonic() + timeout
    while len(records) < count and time.monotonic() < deadline:
        batch = source.read(500)
        records.extend(batch.records)
        source.acknowledge(batch.resume_token)
        if not batch.records:
            time.sleep(0.05)
    return records


def test_without_create_a_missing_publication_or_slot_stops_start_up_named(
    postgres_server_factory,
) -> None:
    server = logical_server(postgres_server_factory)
    execute(server.dsn, ITEMS)
    with pytest.raises(SourceError, match="publication 'rosetta_9' does not exist"):
        PostgresSource("9", server.dsn, create=False, snapshot="never")
    execute(server.dsn, "CREATE PUBLICATION rosetta_9 FOR ALL TABLES")
    with pytest.raises(SourceError, match="replication slot 'rosetta_9' does not exist"):
        PostgresSource("9", server.dsn, create=False, snapshot="never")
    assert query(server.dsn, "SELECT count(*) FROM pg_replication_slots") == [(0,)]


def test_a_source_server_restart_is_retried_and_loses_nothing(postgres_server_factory) -> None:
    server = logical_server(postgres_server_factory)
    execute(server.dsn, ITEMS)
    source = PostgresSource("1", server.dsn, snapshot="never", status_interval=0.5)
    try:
        execute(server.dsn, "INSERT INTO items SELECT g, 'a' FROM generate_series(1, 100) g")
        first = read_all(source, 50)  # some read and acknowledged, maybe not all
        server.restart("immediate")
        execute(server.dsn, "INSERT INTO items SELECT g, 'b' FROM generate_series(101, 200) g")
        rest = read_all(source, 200 - len(first))
        wait_until(lambda: source.stream.connected.is_set(), 30, "reconnected")
        keys = {r.key["id"] for r in first + rest}
        assert keys == set(range(1, 201))
        assert source.stream.reconnects >= 1
    finally:
        source.close()


def test_the_factory_builds_the_source_and_names_a_bad_option(
    tmp_path: Path, postgres_server_factory
) -> None:
    server = logical_server(postgres_server_factory)
    execute(server.dsn, ITEMS, "CREATE TABLE public.skipped (id int PRIMARY KEY)")
    options = {"dsn": server.dsn, "tables": ["public.items"], "snapshot": "never"}
    source = build_source(SourceSpec("3", "postgresql", options), tmp_path)
    try:
        assert isinstance(source, PostgresSource)
        assert source.slot.name == "rosetta_3" and source.slot.publication == "rosetta_3"
        assert source.slot.published_tables() == ["public.items"]
        execute(server.dsn, "INSERT INTO skipped VALUES (1)", "INSERT INTO items VALUES (7)")
        assert [(r.table, r.key) for r in read_all(source, 1)] == [("public.items", {"id": 7})]
    finally:
        source.close()
    with pytest.raises(ConfigError, match="snapshot must be one of initial, never"):
        build_source(SourceSpec("3", "postgresql", {**options, "snapshot": "later"}), tmp_path)
    with pytest.raises(ConfigError, match="unexpected keyword argument 'slots'"):
        build_source(SourceSpec("3", "postgresql", {**options, "slots": "x"}), tmp_path)


def test_pipeline_backpressure_longer_than_wal_sender_timeout_keeps_the_stream(
    tmp_path: Path, postgres_server_factory
) -> None:
    """The destination is down and the DLQ full: the pipeline stops reading the source for
    three wal_sender_timeouts; the walsender stays the same and, once the destination is
    back, the destination holds exactly the source's rows."""
    source_server = logical_server(postgres_server_factory, wal_sender_timeout="2s")
    target = postgres_server_factory()
    execute(source_server.dsn, ITEMS)
    execute(target.dsn, ITEMS)
    source = PostgresSource(
        "1", source_server.dsn, snapshot="never", status_interval=0.5, max_buffered=200
    )
    config = dlq_config(tmp_path, max_queue_messages=50, check_interval=0.2)
    target.stop("immediate")
    with DLQManager(config) as dlq, running_pipeline(source, target.dsn, dlq, config) as pipeline:
        wait_until(source.stream.connected.is_set, 10, "the stream is connected")
        walsender = query(source_server.dsn, "SELECT pid FROM pg_stat_replication")
        for start in range(0, 3000, 100):
            execute(
                source_server.dsn,
                f"INSERT INTO items SELECT g, 'n' FROM generate_series({start}, {start + 99}) g",
            )
        wait_until(
            lambda: pipeline.state is PipelineState.BACKPRESSURE, 30, "the pipeline backs off"
        )
        time.sleep(6)
        assert pipeline.state is PipelineState.BACKPRESSURE
        assert query(source_server.dsn, "SELECT pid FROM pg_stat_replication") == walsender
        assert source.stream.reconnects == 0
        target.start()
        expected = query(source_server.dsn, "SELECT * FROM items ORDER BY id")
        wait_until(
            lambda: query(target.dsn, "SELECT * FROM items ORDER BY id") == expected,
            60,
            "the destination holds exactly the source's rows",
        )
    assert "replication timeout" not in source_server.log_text()
