"""Pipelines read from the config database (CONFIG_DATABASE_URL), against a real PostgreSQL."""

from __future__ import annotations

import itertools
import json
import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import psycopg2
import pytest
from psycopg2 import sql

from compute.sources.synthetic_source import DEFAULT_TABLES, SyntheticSource
from config.config_database import CONFIG_DATABASE_SCHEMA, read_pipeline_config
from config.errors import ConfigError
from tests.pg_state import differences, fetch_state
from tests.rosetta_cli import ROOT, cli_env, run_rosetta


def dsn_with_db(dsn: str, dbname: str) -> str:
    return " ".join(p for p in dsn.split() if not p.startswith("dbname=")) + f" dbname={dbname}"


_databases = itertools.count(1)


@pytest.fixture
def config_db(postgres_dsn: str) -> Iterator[tuple[str, str, Any]]:
    """(warehouse DSN, config database DSN, an autocommit connection to the config
    database): two fresh databases on the session server, dropped after the test."""
    n = f"{os.getpid()}_{next(_databases)}"
    names = (f"rosetta_config_{n}", f"warehouse_{n}")
    admin = psycopg2.connect(postgres_dsn)
    admin.autocommit = True
    with admin.cursor() as cur:
        for name in names:
            cur.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(name)))
    config_dsn = dsn_with_db(postgres_dsn, names[0])
    conn = psycopg2.connect(config_dsn)
    conn.autocommit = True
    with conn.cursor() as cur:
        cur.execute(CONFIG_DATABASE_SCHEMA)
    try:
        yield dsn_with_db(postgres_dsn, names[1]), config_dsn, conn
    finally:
        conn.close()
        with admin.cursor() as cur:
            for name in names:
                cur.execute(
                    sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(sql.Identifier(name))
                )
        admin.close()


def test_readme_documents_the_schema_the_code_reads() -> None:
    readme = " ".join((ROOT / "README.md").read_text().split())
    assert " ".join(CONFIG_DATABASE_SCHEMA.split()) in readme


def test_engine_runs_pipelines_from_the_config_database(tmp_path: Path, config_db) -> None:
    warehouse, config_dsn, conn = config_db
    source = SyntheticSource("7", None, total_events=300, seed=2)
    target = psycopg2.connect(warehouse)
    target.autocommit = True
    with target.cursor() as cur:
        for statement in source.create_tables_sql():
            cur.execute(statement)
    target.close()
    with conn.cursor() as cur:
        cur.execute(
            "INSERT INTO rosetta_pipelines"
            " (name, source_id, source_type, source_options, batch_size)"
            " VALUES ('from-db', '7', 'synthetic', %s, 50)",
            (json.dumps({"total_events": 300, "seed": 2}),),
        )
        cur.execute(
            "INSERT INTO rosetta_pipelines (name, source_id, source_type, enabled)"
            " VALUES ('disabled', '8', 'synthetic', false)"
        )
        cur.execute(
            "INSERT INTO rosetta_destinations (pipeline, id, name, type, options)"
            " VALUES ('from-db', '1', 'Warehouse', 'postgresql', %s)",
            (json.dumps({"dsn_env": "WAREHOUSE_DSN"}),),
        )
    specs = read_pipeline_config(config_dsn, {"WAREHOUSE_DSN": warehouse})
    assert [s.name for s in specs] == ["from-db"]
    env = cli_env(
        CONFIG_DATABASE_URL=config_dsn,
        WAREHOUSE_DSN=warehouse,
        DLQ_BASE_PATH=str(tmp_path / "dlq"),
        ROSETTA_STATE_PATH=str(tmp_path / "state"),
        DLQ_MIN_FREE_DISK_MB="0",
        ROSETTA_ADMIN_ADDR="off",  # the admin API is irrelevant here
    )
    result = run_rosetta(env, "run")
    assert result.returncode == 0, result.stderr[-2000:]
    assert not differences(source.expected_state(), fetch_state(warehouse, DEFAULT_TABLES))


def test_unreachable_or_empty_config_database_is_a_clear_error(config_db) -> None:
    _, config_dsn, conn = config_db
    with pytest.raises(ConfigError) as caught:
        read_pipeline_config("host=127.0.0.1 port=1 password=s3cret connect_timeout=2", {})
    assert "cannot connect to the config database" in str(caught.value)
    assert "s3cret" not in str(caught.value)
    with conn.cursor() as cur:
        cur.execute("DROP TABLE rosetta_destinations")
    with pytest.raises(ConfigError, match="lacks the expected tables"):
        read_pipeline_config(config_dsn, {})
    with conn.cursor() as cur:
        cur.execute("DROP TABLE rosetta_pipelines")
    with pytest.raises(ConfigError, match="lacks the expected tables"):
        read_pipeline_config(config_dsn, {})


def _pipeline_row(conn: Any, **columns: Any) -> None:
    names = ["name", "source_id", "source_type", *columns]
    values = ["p", "1", "synthetic", *columns.values()]
    with conn.cursor() as cur:
        cur.execute(
            f"INSERT INTO rosetta_pipelines ({', '.join(names)}) "
            f"VALUES ({', '.join(['%s'] * len(names))})",
            values,
        )
        cur.execute(
            "INSERT INTO rosetta_destinations (pipeline, id, name, type, options) "
            "VALUES ('p', '1', 'd', 'postgresql', '{\"dsn\": \"host=x\"}')"
        )


def test_tables_and_append_only_columns(config_db: Any) -> None:
    _, config_dsn, conn = config_db
    _pipeline_row(conn, tables=["public.orders"], append_only=["public.audit_log"])
    [spec] = read_pipeline_config(config_dsn, {})
    assert (spec.tables, spec.append_only) == (("public.orders",), ("public.audit_log",))


def test_a_database_made_before_those_columns_still_reads(config_db: Any) -> None:
    _, config_dsn, conn = config_db
    with conn.cursor() as cur:
        cur.execute(
            "ALTER TABLE rosetta_pipelines DROP COLUMN tables, DROP COLUMN append_only, "
            "DROP COLUMN priority"
        )
    _pipeline_row(conn, batch_size=7)
    [spec] = read_pipeline_config(config_dsn, {})
    assert (spec.name, spec.batch_size, spec.tables, spec.append_only) == ("p", 7, (), ())
    assert spec.priority == {}


def test_priority_column(config_db: Any) -> None:
    server, config_dsn, conn = config_db
    _pipeline_row(conn, priority=json.dumps({"public.orders": 10, "public.audit_log": -5}))
    [spec] = read_pipeline_config(config_dsn, {})
    assert spec.priority == {"public.orders": 10, "public.audit_log": -5}
    with conn.cursor() as cur:
        cur.execute("""UPDATE rosetta_pipelines SET priority = '{"public.orders": 500}'""")
    with pytest.raises(ConfigError) as caught:
        read_pipeline_config(config_dsn, {})
    assert str(caught.value) == (
        "config database: pipelines[0]: 'priority' of table 'public.orders' must be an "
        "integer from -100 to 100 (higher replays first, default 0), got 500"
    )
