"""A real engine whose queue directory is deleted while events pile up in it (PostgreSQL down).

Nothing may be lost: the events queued before the removal (still readable
through the engine's open handles) and those appended after it must all
reach PostgreSQL once it is back, and the removal must be logged.
"""

from __future__ import annotations

import shutil
import time
from pathlib import Path

import psycopg2
import pytest

from compute.sources.synthetic_source import SyntheticSource
from tests.faults.helpers import (
    assert_exact_state,
    assert_nothing_left,
    create_tables,
    engine_env,
    queue_leftovers,
    start_engine,
    write_pipelines,
)
from tests.servers import PostgresServer
from tests.waiting import wait_for_log_line, wait_until

# Enough keys that nearly every event inserts its own row: a lost event is a missing row.
KEYS = 50_000


def users_rows(dsn: str) -> int:
    conn = psycopg2.connect(dsn)
    try:
        with conn.cursor() as cur:
            cur.execute("SELECT count(*) FROM public.users")
            (count,) = cur.fetchone()
            return int(count)
    finally:
        conn.close()


@pytest.mark.timeout(300)
def test_queue_directory_deleted_mid_run_loses_no_event(
    tmp_path: Path, postgres_server_factory
) -> None:
    server: PostgresServer = postgres_server_factory()
    events, rate = 2500, 250.0
    source = SyntheticSource("1", None, total_events=events, seed=23, keys_per_table=KEYS)
    create_tables(server.dsn, source)
    write_pipelines(tmp_path / "pipelines.toml", events=events, rate=rate, seed=23, keys=KEYS)
    log = tmp_path / "engine.log"
    engine = start_engine(engine_env(tmp_path, server.dsn), log)
    queue_dir = tmp_path / "dlq" / "source_1" / "table_public.users" / "dest_1"
    try:
        wait_until(
            lambda: log.exists() and "DLQ Manager initialized" in log.read_text(),
            60,
            "the engine to start",
        )
        server.stop("immediate")
        wait_until(lambda: any(queue_dir.glob("seg_*")), 60, "events queued for public.users")
        time.sleep(1.0)  # more of them
        shutil.rmtree(queue_dir)
        # Events for public.users keep coming: the next batch finds its queue removed.
        wait_for_log_line(log, "DLQ queue directory removed or moved away", 60)
        assert engine.poll() is None, log.read_text()[-3000:]
        server.start()
        assert engine.wait(timeout=180) == 0, log.read_text()[-3000:]
    finally:
        if engine.poll() is None:
            engine.kill()
            engine.wait()
    # Every event reached PostgreSQL: as many users rows as the source made,
    # the same values, and nothing left behind in a queue.
    expected_users = len(source.expected_state()["public.users"])
    assert users_rows(server.dsn) == expected_users
    assert_exact_state(server.dsn, source)
    assert_nothing_left(*queue_leftovers(tmp_path / "dlq"))
    text = log.read_text()
    removal = [
        line
        for line in text.splitlines()
        if "ERROR" in line and "removed or moved away" in line and "table=public.users" in line
    ]
    assert removal, text[-3000:]
    assert "lost=0" in removal[0], removal[0]
