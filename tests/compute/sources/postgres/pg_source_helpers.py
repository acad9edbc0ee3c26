"""Helpers for the replication source tests: a logical-replication source server and table reads."""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from typing import Any

import psycopg2

from compute.dlq.manager import DLQManager
from compute.engine.pipeline import Pipeline
from compute.sources.postgres_source import PostgresSource
from destinations.postgresql.destination import PostgreSQLDestination
from tests.servers import PostgresServer

LOGICAL = {"wal_level": "logical", "max_wal_senders": "10", "max_replication_slots": "10"}


def execute(dsn: str, *statements: str, params: Sequence[Any] | None = None) -> None:
    conn = psycopg2.connect(dsn)
    conn.autocommit = True
    with conn.cursor() as cur:
        for statement in statements:
            cur.execute(statement, params)
    conn.close()


def query(dsn: str, statement: str, params: Sequence[Any] | None = None) -> list[tuple[Any, ...]]:
    conn = psycopg2.connect(dsn)
    try:
        with conn.cursor() as cur:
            cur.execute(statement, params)
            return list(cur.fetchall())
    finally:
        conn.close()


def confirmed_flush(dsn: str, slot: str) -> str | None:
    rows = query(
        dsn,
        "SELECT confirmed_flush_lsn::text FROM pg_replication_slots WHERE slot_name = %s",
        (slot,),
    )
    return rows[0][0] if rows else None


@contextmanager
def running_pipeline(
    source: PostgresSource,
    destination_dsn: str,
    dlq: DLQManager,
    config: Any,
    batch_size: int = 200,
    **options: Any,
) -> Iterator[Pipeline]:
    destination = PostgreSQLDestination("1", "PG", destination_dsn, connect_timeout=2, **options)
    pipeline = Pipeline("p", source, [destination], dlq, config, batch_size=batch_size)
    pipeline.start()
    try:
        yield pipeline
    finally:
        pipeline.stop()
        pipeline.close()


def logical_server(factory: Callable[..., PostgresServer], **settings: str) -> PostgresServer:
    return factory({**LOGICAL, **settings})


def source_and_target(
    factory: Callable[..., PostgresServer], *ddl: str
) -> tuple[PostgresServer, PostgresServer]:
    """A logical-replication source server and a target server, both with ``ddl`` run."""
    source, target = logical_server(factory), factory()
    for server in (source, target):
        execute(server.dsn, *ddl)
    return source, target
