"""The PostgreSQL source on real servers: truncates, key moves with unchanged TOAST, table keys."""

from __future__ import annotations

import random
import string
import subprocess
from collections import Counter
from pathlib import Path
from typing import Any

import pytest

from compute.dlq.manager import DLQManager
from compute.queue_id import QueueId
from compute.sources.base import SourceError
from compute.sources.postgres_source import PostgresSource
from destinations.records import Operation
from tests.builders import dlq_config
from tests.compute.sources.postgres.pg_source_helpers import (
    execute,
    logical_server,
    query,
    running_pipeline,
    source_and_target,
)
from tests.faults.test_pg_source_kill9 import pgbench
from tests.waiting import wait_until

ITEMS = "CREATE TABLE public.items (id int PRIMARY KEY, name text, big text)"
QUEUE = QueueId("1", "public.items", "1")


def test_a_truncate_waits_behind_the_queued_changes_and_applies_in_order(
    tmp_path: Path, postgres_server_factory: Any
) -> None:
    """Destination down: inserts queue, then the truncate, then more inserts; once the
    destination is back it holds only the inserts made after the truncate."""
    source_server, target = source_and_target(postgres_server_factory, ITEMS)
    execute(target.dsn, "INSERT INTO items VALUES (500, 'before the run')")
    source = PostgresSource("1", source_server.dsn, snapshot="never", status_interval=0.5)
    config = dlq_config(tmp_path, check_interval=0.2)
    target.stop("immediate")
    with DLQManager(config) as dlq, running_pipeline(source, target.dsn, dlq, config):
        execute(source_server.dsn, "INSERT INTO items SELECT g, 'a' FROM generate_series(1, 10) g")
        wait_until(lambda: dlq.count(QUEUE) >= 10, 30, "the inserts are queued")
        execute(
            source_server.dsn,
            "TRUNCATE items",
            "INSERT INTO items SELECT g, 'b' FROM generate_series(100, 105) g",
        )
        wait_until(lambda: dlq.count(QUEUE) >= 17, 30, "the truncate and the rest are queued")
        ops = [m.record.op for m in dlq.peek(QUEUE, 100)]
        assert ops == [Operation.INSERT] * 10 + [Operation.TRUNCATE] + [Operation.INSERT] * 6
        target.start()
        expected = [(g, "b", None) for g in range(100, 106)]
        assert query(source_server.dsn, "SELECT * FROM items ORDER BY id") == expected
        wait_until(
            lambda: query(target.dsn, "SELECT * FROM items ORDER BY id") == expected,
            60,
            "the destination holds only the rows inserted after the truncate",
        )
        wait_until(lambda: dlq.count(QUEUE) == 0, 30, "the queue drained")


def test_a_key_change_keeps_an_unchanged_toast_value(
    tmp_path: Path, postgres_server_factory: Any
) -> None:
    """PostgreSQL sends the unchanged TOAST value as 'u' in the new row of a key change:
    the destination moves the row in place, so the big value stays."""
    # Random text does not compress below the TOAST threshold: stored out of line.
    big = "".join(random.Random(7).choices(string.ascii_letters, k=30000))
    source_server, target = source_and_target(postgres_server_factory, ITEMS)
    source = PostgresSource("1", source_server.dsn, snapshot="never", status_interval=0.5)
    config = dlq_config(tmp_path)
    with DLQManager(config) as dlq, running_pipeline(source, target.dsn, dlq, config):
        insert = "INSERT INTO items VALUES (20, 'x', %s), (21, 'y', NULL)"
        execute(source_server.dsn, insert, params=[big])
        wait_until(
            lambda: query(target.dsn, "SELECT count(*) FROM items") == [(2,)], 30, "inserted"
        )
        execute(
            source_server.dsn,
            "UPDATE items SET id = 2000 WHERE id = 20",
            "UPDATE items SET id = 2001, name = 'z' WHERE id = 2000",
            "UPDATE items SET id = 22 WHERE id = 21",
        )
        expected = query(source_server.dsn, "SELECT id, name, md5(big) FROM items ORDER BY id")
        assert expected[1][2] is not None
        wait_until(
            lambda: (
                query(target.dsn, "SELECT id, name, md5(big) FROM items ORDER BY id") == expected
            ),
            30,
            "the destination holds the moved rows with their big values",
        )
        assert dlq.count(QUEUE) == 0 and dlq.parked_count(QUEUE) == 0


def test_table_keys_come_from_the_replica_identity(postgres_server_factory: Any) -> None:
    server = logical_server(postgres_server_factory)
    execute(
        server.dsn,
        ITEMS,
        "CREATE TABLE public.pair (a int, b int, c text, PRIMARY KEY (b, a))",
        "CREATE TABLE public.log (n int)",
        "CREATE TABLE public.uniq (id int NOT NULL, v text)",
        "CREATE UNIQUE INDEX uniq_id ON public.uniq (id)",
        "ALTER TABLE public.uniq REPLICA IDENTITY USING INDEX uniq_id",
        "CREATE TABLE public.whole (id int PRIMARY KEY, v text)",
        "ALTER TABLE public.whole REPLICA IDENTITY FULL",
    )
    with pytest.raises(SourceError, match=r"public\.whole has REPLICA IDENTITY FULL.*append_only"):
        PostgresSource("1", server.dsn, snapshot="never")
    source = PostgresSource("1", server.dsn, snapshot="never", append_only=["whole", "log"])
    try:
        assert list(source.declared_tables()) == [
            "public.items",
            "public.log",
            "public.pair",
            "public.uniq",
            "public.whole",
        ]
        assert source.key_columns("public.items") == ("id",)
        assert source.key_columns("public.pair") == ("b", "a")
        assert source.key_columns("public.uniq") == ("id",)
        assert source.key_columns("public.log") == ()
        assert source.key_columns("public.whole") == ()
        assert source.key_columns("public.later") is None
    finally:
        source.close()
    only = PostgresSource("2", server.dsn, snapshot="never", tables=["public.items"])
    try:
        assert list(only.declared_tables()) == ["public.items"]
    finally:
        only.close()


HISTORY = "tid, bid, aid, delta, mtime, filler"
KEYED = {"pgbench_accounts": "aid", "pgbench_branches": "bid", "pgbench_tellers": "tid"}


def test_pgbench_replicates_exactly_with_history_append_only(
    tmp_path: Path, postgres_server_factory: Any
) -> None:
    """pgbench -i (a truncate, then the data) and a -T run: the three keyed tables exact,
    pgbench_history (no key) the same multiset of rows, none twice."""
    source_server = logical_server(postgres_server_factory)
    target = postgres_server_factory()
    for server in (source_server, target):
        subprocess.run(pgbench(server, "-i", "-I", "dtp", "-q"), check=True, capture_output=True)
    execute(
        target.dsn,
        "ALTER TABLE pgbench_history ADD COLUMN _rosetta_commit bigint, "
        "ADD COLUMN _rosetta_seq bigint, ADD UNIQUE (_rosetta_commit, _rosetta_seq)",
    )
    source = PostgresSource(
        "1",
        source_server.dsn,
        snapshot="never",
        status_interval=0.5,
        append_only=["pgbench_history"],
    )
    assert source.key_columns("public.pgbench_history") == ()
    config = dlq_config(tmp_path)
    with DLQManager(config) as dlq, running_pipeline(source, target.dsn, dlq, config) as pipeline:
        pipeline.destinations[0].append_only = frozenset({"pgbench_history"})
        subprocess.run(
            pgbench(source_server, "-i", "-I", "g", "-q"), check=True, capture_output=True
        )
        subprocess.run(
            pgbench(source_server, "-T", "8", "-c", "2", "-j", "2", "-n"),
            check=True,
            capture_output=True,
        )

        def same(table: str, columns: str = "*") -> bool:
            sql = f"SELECT {columns} FROM {table}"
            return Counter(query(source_server.dsn, sql)) == Counter(query(target.dsn, sql))

        wait_until(
            lambda: all(same(t) for t in KEYED) and same("pgbench_history", HISTORY),
            120,
            "every pgbench table matches the source",
        )
    history = query(target.dsn, f"SELECT {HISTORY} FROM pgbench_history")
    assert len(history) == query(source_server.dsn, "SELECT count(*) FROM pgbench_history")[0][0]
    assert len(history) > 100
    for table, key in KEYED.items():
        rows = query(target.dsn, f"SELECT * FROM {table} ORDER BY {key}")
        assert rows == query(source_server.dsn, f"SELECT * FROM {table} ORDER BY {key}")
