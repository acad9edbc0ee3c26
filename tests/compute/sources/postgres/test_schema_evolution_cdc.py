"""schema_evolution = "basic" from a live PostgreSQL source: the target tables do not exist,
the engine creates them with the source's own types, and a column added at the source
mid-stream is added at the target; every value lands exactly."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from compute.dlq.manager import DLQManager
from compute.sources.offset_store import OffsetStore
from compute.sources.postgres.source_types import read_column_types
from compute.sources.postgres_source import PostgresSource
from tests.builders import dlq_config
from tests.compute.sources.postgres.pg_source_helpers import (
    execute,
    logical_server,
    query,
    running_pipeline,
)
from tests.compute.sources.postgres.test_initial_snapshot import ROWS, TYPES, as_text
from tests.waiting import wait_until

TYPED = (
    "CREATE TABLE public.typed (id int PRIMARY KEY, amount numeric(12,2), "
    "name varchar(20), code char(3), at timestamp(3), mood_text text)"
)


def column_types(dsn: str, table: str) -> list[tuple[str, str]]:
    return query(
        dsn,
        "SELECT attname, format_type(atttypid, atttypmod) FROM pg_attribute "
        "WHERE attrelid = %s::regclass AND attnum > 0 AND NOT attisdropped ORDER BY attnum",
        (table,),
    )


def test_targets_are_created_with_the_sources_types_and_follow_a_new_column(
    tmp_path: Path, postgres_server_factory: Any
) -> None:
    source_server = logical_server(postgres_server_factory)
    target = postgres_server_factory()  # no tables at all
    execute(source_server.dsn, TYPES, ROWS, TYPED)
    execute(source_server.dsn, "INSERT INTO typed VALUES (1, 12.30, 'ab', 'xy', now(), 'ok')")
    source = PostgresSource(
        "1", source_server.dsn, status_interval=0.5, offsets=OffsetStore(tmp_path / "o.json")
    )
    config = dlq_config(tmp_path)
    with (
        DLQManager(config) as dlq,
        running_pipeline(source, target.dsn, dlq, config, 500, schema_evolution="basic"),
    ):
        for table, key in (("kinds", "id"), ("typed", "id")):
            expected = as_text(source_server.dsn, table, key)
            wait_until(
                lambda table=table, key=key, expected=expected: (
                    _has(target.dsn, table) and as_text(target.dsn, table, key) == expected
                ),
                60,
                f"{table} created at the target with every row exact",
            )
            assert column_types(target.dsn, table) == column_types(source_server.dsn, table)
        # A column added at the source mid-stream: its changes bring it to the target.
        execute(
            source_server.dsn,
            "ALTER TABLE typed ADD COLUMN rate numeric(8,3), ADD COLUMN tags text[]",
            "INSERT INTO typed VALUES (2, 1.5, 'cd', 'zz', now(), 'x', 2.125, '{a,\"b c\"}')",
            "UPDATE typed SET rate = 0.001 WHERE id = 1",
        )
        expected = as_text(source_server.dsn, "typed", "id")
        wait_until(
            lambda: as_text(target.dsn, "typed", "id") == expected,
            60,
            "the new column's values at the target",
        )
        assert column_types(target.dsn, "typed") == column_types(source_server.dsn, "typed")
        # Nothing went through the DLQ on the way: no queue was ever made.
        assert dlq.list_queues(refresh=True) == []


def _has(dsn: str, table: str) -> bool:
    return query(dsn, "SELECT to_regclass(%s) IS NOT NULL", (table,))[0][0]


def test_source_types_name_builtin_types_and_make_user_types_text(
    postgres_server_factory: Any,
) -> None:
    server = postgres_server_factory()
    execute(
        server.dsn,
        "CREATE TYPE mood AS ENUM ('sad', 'ok')",
        'CREATE TABLE "Odd ""name""" (id bigint PRIMARY KEY, m mood, n numeric(5,1), '
        "v varchar(7), j json, a int[], ts timestamptz(2))",
    )
    assert read_column_types(server.dsn, 'public.Odd "name"') == {
        "id": "bigint",
        "m": "text",
        "n": "numeric(5,1)",
        "v": "character varying(7)",
        "j": "json",
        "a": "integer[]",
        "ts": "timestamp(2) with time zone",
    }
    assert read_column_types(server.dsn, "public.no_such_table") is None
    assert read_column_types("host=127.0.0.1 port=1 connect_timeout=2", "public.t") is None
