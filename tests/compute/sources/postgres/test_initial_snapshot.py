"""The initial copy against real servers: the rows that existed, exactly, then the stream."""

from __future__ import annotations

import subprocess
import time
from pathlib import Path

from compute.dlq.manager import DLQManager
from compute.sources.offset_store import OffsetStore
from compute.sources.postgres.snapshot import copy_text_fields
from compute.sources.postgres_source import PostgresSource
from destinations.records import Operation
from tests.builders import dlq_config
from tests.compute.sources.postgres.pg_source_helpers import (
    execute,
    logical_server,
    query,
    running_pipeline,
)
from tests.faults.test_pg_source_kill9 import TABLES, pgbench
from tests.waiting import wait_until

TYPES = (
    "CREATE TABLE public.kinds (id int PRIMARY KEY, t text, c char(5), n numeric, b bytea, "
    "ts timestamptz, d date, u uuid, j jsonb, a int[], ta text[], f float8, i interval)"
)
ROWS = (
    "INSERT INTO kinds VALUES "
    "(1, E'tab\\there\\nnew line \\\\ back', 'ab', 1.50, '\\x00ff5c0a', "
    "'2024-02-29 12:34:56.789+05:30', '0001-01-01', 'a0eebc99-9c0b-4ef8-bb6d-6bb9bd380a11', "
    "'{\"k\": [1, \"x\\ty\"]}', '{1,NULL,3}', '{\"a b\",\"c,d\",NULL}', 0.1, '1 day 02:00:00'),"
    "(2, NULL, NULL, 'NaN', NULL, NULL, NULL, NULL, NULL, NULL, NULL, 'Infinity', '1 mon'),"
    "(3, 'ünïcødé €', 'xyz  ', -0.000001, '', '1999-12-31 23:59:59', '2038-01-19', "
    "'00000000-0000-0000-0000-000000000000', '[]', '{}', '{}', -1e300, '-00:00:01')"
)


def as_text(dsn: str, table: str, key: str) -> list[tuple[str | None, ...]]:
    """Every column as PostgreSQL's own text (so a value changed in any way shows)."""
    rows = query(dsn, f"SELECT to_jsonb(x)::text FROM {table} x ORDER BY {key}")
    return [row for row in rows]


def test_copy_text_fields_undo_every_escape_copy_writes() -> None:
    assert copy_text_fields("1\t\\N\ta\\tb\\nc\\\\d\\r\\b\\f\\v") == (
        "1",
        None,
        "a\tb\nc\\d\r\b\f\v",
    )
    assert copy_text_fields("\\101\\x42") == ("AB",)


def test_existing_rows_are_copied_exactly_then_changes_stream(
    tmp_path: Path, postgres_server_factory
) -> None:
    source_server = logical_server(postgres_server_factory)
    target = postgres_server_factory()
    for server in (source_server, target):
        execute(server.dsn, TYPES)
    execute(source_server.dsn, ROWS)
    execute(
        source_server.dsn,
        "INSERT INTO kinds (id, t) SELECT g, repeat('v', g % 50) FROM generate_series(10, 5009) g",
    )
    offsets = OffsetStore(tmp_path / "offsets.json")
    source = PostgresSource("1", source_server.dsn, status_interval=0.5, offsets=offsets)
    config = dlq_config(tmp_path)
    with DLQManager(config) as dlq, running_pipeline(source, target.dsn, dlq, config, 500):
        expected = as_text(source_server.dsn, "kinds", "id")
        wait_until(
            lambda: as_text(target.dsn, "kinds", "id") == expected,
            60,
            "the destination holds exactly the rows that existed",
        )
        status = source.status()["snapshot"]
        assert status["rows_copied"] == 5003 and status["tables_copied"] == 1
        assert status["state"] == "copied"
        # Then the slot's changes, from the copy's consistent point on.
        execute(
            source_server.dsn,
            "UPDATE kinds SET t = 'after' WHERE id <= 3",
            "DELETE FROM kinds WHERE id > 100",
        )
        expected = as_text(source_server.dsn, "kinds", "id")
        wait_until(
            lambda: as_text(target.dsn, "kinds", "id") == expected,
            30,
            "the changes after the copy are applied",
        )
        wait_until(
            lambda: '"state": "done"' in (offsets.get("1.snapshot") or ""),
            10,
            "the copy is recorded as done",
        )
    source.close()
    # A restart with the copy done: no copy again, only the slot's changes.
    again = PostgresSource("1", source_server.dsn, status_interval=0.5, offsets=offsets)
    try:
        assert again.snapshot is None
    finally:
        again.close()


def test_changes_during_the_copy_are_neither_lost_nor_applied_before_it(
    tmp_path: Path, postgres_server_factory
) -> None:
    """pgbench runs (4 clients) while the slot is created and the three keyed tables copied."""
    source_server = logical_server(postgres_server_factory)
    target = postgres_server_factory()
    for server in (source_server, target):
        subprocess.run(pgbench(server, "-i", "-s", "2", "-q"), check=True, capture_output=True)
    execute(target.dsn, "TRUNCATE pgbench_accounts, pgbench_branches, pgbench_tellers")
    bench = subprocess.Popen(
        pgbench(source_server, "-T", "12", "-c", "4", "-j", "2", "-n"),
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        time.sleep(1.0)
        source = PostgresSource(
            "1", source_server.dsn, tables=TABLES, status_interval=0.5, max_buffered=2000
        )
        assert source.snapshot is not None
        assert source.snapshot.status()["state"] == "copying"
        config = dlq_config(tmp_path)
        with DLQManager(config) as dlq, running_pipeline(source, target.dsn, dlq, config, 1000):
            # The copy was still going while pgbench committed changes the slot streams.
            assert bench.poll() is None
            bench.wait(60)
            for table in TABLES:
                key = table.split("_")[-1][0] + "id"
                expected = as_text(source_server.dsn, table, key)
                wait_until(
                    lambda t=table, k=key, e=expected: as_text(target.dsn, t, k) == e,
                    90,
                    f"{table} is exact",
                )
    finally:
        if bench.poll() is None:
            bench.kill()
    assert source.snapshot.status()["rows_copied"] >= 200_000


def test_copied_rows_sort_before_every_change_the_slot_streams(postgres_server_factory) -> None:
    server = logical_server(postgres_server_factory)
    execute(server.dsn, TYPES, ROWS)
    source = PostgresSource("1", server.dsn, status_interval=0.5)
    try:
        execute(server.dsn, "UPDATE kinds SET t = 'later' WHERE id = 2")
        records = []
        deadline = time.monotonic() + 30
        while len(records) < 4 and time.monotonic() < deadline:
            batch = source.read(2)
            records.extend(batch.records)
            source.acknowledge(batch.resume_token)
        assert [(r.op, r.key["id"]) for r in records] == [
            (Operation.SNAPSHOT_READ, 1),
            (Operation.SNAPSHOT_READ, 2),
            (Operation.SNAPSHOT_READ, 3),
            (Operation.UPDATE, 2),
        ]
        assert records[0].after is not None and records[0].after["c"] == "ab   "
        positions = [r.position for r in records]
        assert positions == sorted(positions) and len(set(positions)) == 4
        assert records[2].position.commit < records[3].position.commit
    finally:
        source.close()
