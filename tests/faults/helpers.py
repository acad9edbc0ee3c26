"""Shared pieces of the fault tests: a real engine (in process or as ``rosetta run``) and checks."""

from __future__ import annotations

import json
import subprocess
from pathlib import Path
from typing import Any

import psycopg2

from compute.dlq.manager import DLQManager
from compute.sources.synthetic_source import DEFAULT_TABLES, SyntheticSource
from config.dlq_config import DLQConfig
from tests.builders import pipelines_toml, postgresql_destination
from tests.pg_state import differences, fetch_state
from tests.rosetta_cli import ROOT, cli_env, rosetta_command


def create_tables(dsn: str, source: SyntheticSource) -> None:
    conn = psycopg2.connect(dsn)
    conn.autocommit = True
    with conn.cursor() as cur:
        for statement in source.create_tables_sql():
            cur.execute(statement)
    conn.close()


def write_pipelines(
    path: Path,
    *,
    events: int,
    rate: float,
    seed: int,
    keys: int,
    batch_size: int = 50,
    destination_options: str = "",
) -> None:
    source = {
        "id": "1",
        "type": "synthetic",
        "total_events": events,
        "seed": seed,
        "keys_per_table": keys,
        "events_per_second": rate,
    }
    destination = postgresql_destination("TEST_DEST_DSN", "Postgres-Faults")
    text = pipelines_toml(
        source, [destination], name="faults", batch_size=batch_size, retry="aggressive"
    )
    # ``destination_options``: raw TOML lines, in the destination's table (the last one).
    path.write_text(text + destination_options + "\n")


def engine_env(tmp_path: Path, dsn: str, **extra: str) -> dict[str, str]:
    """Settings for ``rosetta run`` under ``tmp_path``, writing to PostgreSQL at ``dsn``."""
    settings = {
        "DLQ_BASE_PATH": str(tmp_path / "dlq"),
        "ROSETTA_STATE_PATH": str(tmp_path / "state"),
        "ROSETTA_PIPELINES_FILE": str(tmp_path / "pipelines.toml"),
        "DLQ_CHECK_INTERVAL": "0.3",
        "DLQ_BACKOFF_BASE_MS": "50",
        "DLQ_BACKOFF_MAX_MS": "300",
        "DLQ_MIN_FREE_DISK_MB": "0",
        "TEST_DEST_DSN": dsn,
        "PYTHONUNBUFFERED": "1",
        "ROSETTA_ADMIN_ADDR": "127.0.0.1:0",  # never the shared default port
    }
    return cli_env(**(settings | extra))  # ``extra`` may override any of them


def start_engine(env: dict[str, str], log: Path) -> subprocess.Popen[bytes]:
    """``rosetta run`` as a child process, logging to ``log`` (appended)."""
    return subprocess.Popen(
        rosetta_command("--log-level", "INFO", "run"),
        cwd=ROOT,
        env=env,
        stdin=subprocess.DEVNULL,
        stdout=log.open("ab"),
        stderr=subprocess.STDOUT,
    )


def write_jsonl_pipeline(
    tmp_path: Path, schema: str, table: str, first_id: int, batch_size: int = 50
) -> None:
    """``pipelines.toml``: 20 updates of ``schema.table`` (ids from ``first_id``, v 0 to 19),
    read from ``events.jsonl``, to PostgreSQL at ``TEST_DEST_DSN``."""
    events = tmp_path / "events.jsonl"
    events.write_text(
        "".join(
            json.dumps(
                {
                    "op": "u",
                    "key": {"id": first_id + i},
                    "after": {"id": first_id + i, "v": i},
                    "source": {"schema": schema, "table": table, "lsn": 10_000 + i},
                }
            )
            + "\n"
            for i in range(20)
        )
    )
    (tmp_path / "pipelines.toml").write_text(
        pipelines_toml(
            {"id": "1", "type": "jsonl", "path": events},
            [postgresql_destination("TEST_DEST_DSN", "Postgres-Test")],
            batch_size=batch_size,
        )
    )


def create_row_tables(
    conn: Any, schema: str, names: tuple[str, ...], extra_columns: str = ""
) -> list[str]:
    """Tables ``schema.<name>`` of ``(id, v)`` rows (plus ``extra_columns``); their names."""
    tables = [f"{schema}.{name}" for name in names]
    with conn.cursor() as cur:
        for table in tables:
            cur.execute(f"CREATE TABLE {table} (id integer PRIMARY KEY, v integer{extra_columns})")
    return tables


def rows(conn: Any, table: str) -> dict[int, int]:
    """``id -> v`` of every row of ``table``."""
    with conn.cursor() as cur:
        cur.execute(f"SELECT id, v FROM {table}")
        return dict(cur.fetchall())


def flip_sst_byte(queue_dir: Path, tenths: int) -> int:
    """Flip the byte ``tenths``/10 into the largest SST file of the queue's one segment
    (inside a data block: RocksDB opens the file, reading that block fails); the file's size."""
    [segment] = [p for p in queue_dir.iterdir() if p.name.startswith("seg_")]
    sst = max(segment.glob("*.sst"), key=lambda p: p.stat().st_size)
    data = bytearray(sst.read_bytes())
    data[len(data) * tenths // 10] ^= 0xFF
    sst.write_bytes(bytes(data))
    return len(data)


def queue_leftovers(dlq_path: Path) -> tuple[dict[str, int], dict[str, int]]:
    """(messages still queued, messages parked) per queue, read from disk."""
    config = DLQConfig(base_path=dlq_path, min_free_disk_mb=0)
    with DLQManager(config, background=False) as dlq:
        return dlq_counts(dlq)


def dlq_counts(dlq: DLQManager) -> tuple[dict[str, int], dict[str, int]]:
    queued = {str(q): dlq.store.count(q) for q in dlq.list_queues() if dlq.has_messages(q)}
    parked = {str(q): dlq.parked_count(q) for q in dlq.list_queues() if dlq.parked_count(q)}
    return queued, parked


def assert_exact_state(dsn: str, source: SyntheticSource, upto: int | None = None) -> None:
    """The destination tables hold exactly the source's state after its events."""
    problems = differences(source.expected_state(upto), fetch_state(dsn, DEFAULT_TABLES))
    assert not problems, problems


def assert_nothing_left(queued: dict[str, Any], parked: dict[str, Any]) -> None:
    assert not parked, f"a fault parked events as poison: {parked}"
    assert not queued, f"queues still hold messages: {queued}"
