"""An initial copy cut off (a lost connection, a stop) and taken again: exact, no row twice."""

from __future__ import annotations

import json
import logging
from collections import Counter
from pathlib import Path
from typing import Any

import pytest

from compute.dlq.manager import DLQManager
from compute.sources.base import SourceError
from compute.sources.offset_store import OffsetStore
from compute.sources.postgres_source import PostgresSource
from tests.builders import dlq_config
from tests.compute.sources.postgres.pg_source_helpers import (
    execute,
    logical_server,
    query,
    running_pipeline,
    source_and_target,
)
from tests.servers import PostgresServer
from tests.waiting import wait_until

ITEMS = "CREATE TABLE public.items (id int PRIMARY KEY, v text)"
LOG = "CREATE TABLE public.log (n int, v text)"  # no key: append-only
POSITIONS = (
    "ALTER TABLE public.log ADD COLUMN _rosetta_commit bigint, ADD COLUMN _rosetta_seq bigint, "
    "ADD UNIQUE (_rosetta_commit, _rosetta_seq)"
)


def servers(factory: Any, items: int, log: int) -> tuple[PostgresServer, PostgresServer]:
    """Rows wide enough (12 MB a table at 60,000) that the server is still sending a table
    while the engine writes its first rows: more than the socket buffers hold."""
    source, target = source_and_target(factory, ITEMS, LOG)
    execute(target.dsn, POSITIONS)
    execute(
        source.dsn,
        f"INSERT INTO items SELECT g, g || repeat('v', 200) FROM generate_series(1, {items}) g",
        f"INSERT INTO log SELECT g, g || repeat('l', 200) FROM generate_series(1, {log}) g",
    )
    return source, target


def copying_source(server: PostgresServer, offsets: OffsetStore) -> PostgresSource:
    """The source over items and log (append-only), its buffer small: the copy keeps pace."""
    return PostgresSource(
        "1",
        server.dsn,
        append_only=["log"],
        status_interval=0.5,
        max_buffered=1000,
        offsets=offsets,
    )


def count(dsn: str, table: str) -> int:
    return int(query(dsn, f"SELECT count(*) FROM {table}")[0][0])


def exact(source: PostgresServer, target: PostgresServer) -> bool:
    """items equal row by row; log the same multiset of rows (none twice)."""
    items = "SELECT * FROM items ORDER BY id"
    log = "SELECT n, v FROM log"
    return query(source.dsn, items) == query(target.dsn, items) and Counter(
        query(source.dsn, log)
    ) == Counter(query(target.dsn, log))


def terminate_copy(server: PostgresServer, target: PostgresServer, table: str) -> None:
    """End the session copying ``table`` (as pg_terminate_backend by an administrator would),
    once the destination holds some of its rows."""
    copying = (
        "SELECT pid FROM pg_stat_activity WHERE state = 'active' "
        f'AND query LIKE \'COPY "public"."{table}"%\''
    )
    wait_until(
        lambda: query(server.dsn, copying) and count(target.dsn, table) >= 1000,
        60,
        f"a COPY of {table} under way, 1,000 rows of it written",
        interval=0.05,
    )
    ended = query(server.dsn, f"SELECT pg_terminate_backend(pid) FROM ({copying}) c")
    assert ended == [(True,)], f"the copy of {table} was under way: {ended}"


def test_a_refused_start_creates_neither_publication_nor_slot(postgres_server_factory) -> None:
    server = logical_server(postgres_server_factory)
    execute(server.dsn, ITEMS, "ALTER TABLE public.items REPLICA IDENTITY FULL")
    with pytest.raises(SourceError, match=r"public\.items has REPLICA IDENTITY FULL"):
        PostgresSource("1", server.dsn)
    assert query(server.dsn, "SELECT slot_name FROM pg_replication_slots") == []
    assert query(server.dsn, "SELECT pubname FROM pg_publication") == []
    # Declared append-only, the same start goes on and creates both.
    source = PostgresSource("1", server.dsn, append_only=["items"])
    source.close()
    assert query(server.dsn, "SELECT slot_name FROM pg_replication_slots") == [("rosetta_1",)]
    assert query(server.dsn, "SELECT pubname FROM pg_publication") == [("rosetta_1",)]


def test_a_lost_copy_connection_is_retried_in_the_run_and_the_tables_end_exact(
    tmp_path: Path, postgres_server_factory, caplog: pytest.LogCaptureFixture
) -> None:
    """The copy's session is ended twice (once in the keyed table, once in the append-only
    one) while rows change: each time the unfinished tables are copied again in a new
    snapshot, emptied first, and the slot's changes they already hold are left out."""
    caplog.set_level(logging.INFO, logger="compute.sources.postgres")
    source_server, target = servers(postgres_server_factory, 60_000, 60_000)
    offsets = OffsetStore(tmp_path / "offsets.json")
    source = copying_source(source_server, offsets)
    config = dlq_config(tmp_path, read_ahead_events=2000)
    with DLQManager(config) as dlq, running_pipeline(source, target.dsn, dlq, config, 500) as run:
        run.destinations[0].append_only = frozenset({"log"})
        # Committed between the first copy's snapshot and the next one: rows the first
        # copy wrote and are gone now, rows it had not reached, new log rows.
        execute(
            source_server.dsn,
            "DELETE FROM items WHERE id <= 100",
            "UPDATE items SET v = 'one' WHERE id % 1000 = 0",
            "INSERT INTO log SELECT g, 'a' || g FROM generate_series(1, 500) g",
        )
        terminate_copy(source_server, target, "items")
        execute(
            source_server.dsn,
            "DELETE FROM items WHERE id BETWEEN 200 AND 300",
            "INSERT INTO log SELECT g, 'b' || g FROM generate_series(1, 500) g",
        )
        terminate_copy(source_server, target, "log")
        wait_until(lambda: source.status()["snapshot"]["state"] == "copied", 90, "copy done")
        execute(
            source_server.dsn,
            "UPDATE items SET v = 'two' WHERE id % 999 = 0",
            "INSERT INTO log SELECT g, 'c' || g FROM generate_series(1, 500) g",
        )
        wait_until(lambda: exact(source_server, target), 90, "both tables exact")
        assert count(target.dsn, "log") == 61_500
        assert source.status()["snapshot"]["retries"] == 2
        assert source.status()["skipped_in_copy"] >= 1000
    progress = json.loads(offsets.get("1.snapshot") or "{}")
    assert sorted(progress["recopied"]) == ["public.items", "public.log"]
    assert progress["recopied"]["public.log"] > progress["recopied"]["public.items"]
    lost = [r for r in caplog.records if "initial copy connection lost" in r.getMessage()]
    assert len(lost) == 2 and "table=public.items" in lost[0].getMessage()


def test_a_copy_stopped_midway_is_taken_again_at_the_next_start_with_no_row_twice(
    tmp_path: Path, postgres_server_factory
) -> None:
    """Stopped in the append-only table, with rows of it written: the next start copies it
    again in a temporary slot's snapshot, after a truncate, and skips the slot's inserts
    the new copy holds; the kept slot then streams on."""
    source_server, target = servers(postgres_server_factory, 2000, 60_000)
    offsets = OffsetStore(tmp_path / "offsets.json")
    config = dlq_config(tmp_path, read_ahead_events=2000)

    def run(until: Any, what: str) -> None:
        source = copying_source(source_server, offsets)
        with DLQManager(config) as dlq, running_pipeline(source, target.dsn, dlq, config, 500) as p:
            p.destinations[0].append_only = frozenset({"log"})
            wait_until(until, 90, what)

    run(lambda: count(target.dsn, "log") >= 5000, "5,000 log rows copied")
    assert json.loads(offsets.get("1.snapshot") or "{}")["state"] == "copying"
    execute(
        source_server.dsn,
        "INSERT INTO log SELECT g, 'a' || g FROM generate_series(1, 700) g",
        "DELETE FROM items WHERE id <= 50",
    )
    run(lambda: exact(source_server, target), "both tables exact after the copy is taken again")
    progress = json.loads(offsets.get("1.snapshot") or "{}")
    assert progress["state"] == "done" and "public.log" in progress["recopied"]
    assert count(target.dsn, "log") == 60_700
    execute(source_server.dsn, "INSERT INTO log SELECT g, 'b' || g FROM generate_series(1, 9) g")
    run(lambda: exact(source_server, target), "the stream goes on after the copy")
    assert count(target.dsn, "log") == 60_709


def test_a_source_server_restart_mid_copy_is_retried_in_the_run(
    tmp_path: Path, postgres_server_factory
) -> None:
    """The source server itself stops (immediate: no clean shutdown) during the copy of the
    keyed table and starts again: the run reconnects with backoff, copies the unfinished
    tables again in a new snapshot, and both tables end exact with no row twice."""
    source_server, target = servers(postgres_server_factory, 60_000, 20_000)
    offsets = OffsetStore(tmp_path / "offsets.json")
    source = copying_source(source_server, offsets)
    config = dlq_config(tmp_path, read_ahead_events=2000)
    with DLQManager(config) as dlq, running_pipeline(source, target.dsn, dlq, config, 500) as run:
        run.destinations[0].append_only = frozenset({"log"})
        wait_until(lambda: count(target.dsn, "items") >= 1000, 60, "1,000 items copied")
        assert source.status()["snapshot"]["state"] == "copying"
        source_server.restart("immediate")
        execute(
            source_server.dsn,
            "DELETE FROM items WHERE id <= 100",
            "INSERT INTO log SELECT g, 'r' || g FROM generate_series(1, 300) g",
        )
        wait_until(lambda: source.status()["snapshot"]["state"] == "copied", 120, "copy done")
        wait_until(lambda: exact(source_server, target), 90, "both tables exact")
        assert count(target.dsn, "log") == 20_300
        assert source.status()["snapshot"]["retries"] >= 1
