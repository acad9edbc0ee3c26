"""The engine against a real PostgreSQL: outages, restarts, ordering, and kill -9.

These run ``rosetta run`` (the real console script) as a child process,
with pipelines defined in a TOML file, and compare the destination tables
with the synthetic source's final state.
"""

from __future__ import annotations

import functools
import random
import signal
import subprocess
import time
from pathlib import Path

import pytest

from compute.sources.synthetic_source import DEFAULT_TABLES, SyntheticSource
from tests.faults.helpers import (
    assert_exact_state,
    assert_nothing_left,
    create_tables,
    engine_env,
    queue_leftovers,
    start_engine,
    write_pipelines,
)
from tests.pg_state import fetch_state
from tests.servers import PostgresServer
from tests.waiting import wait_for_log_line, wait_until


def written_rows(dsn: str) -> int:
    return sum(len(rows) for rows in fetch_state(dsn, DEFAULT_TABLES).values())


def opened_dlq_or_ended(engine: subprocess.Popen[bytes], log: Path, opened_before: int) -> bool:
    """The engine opened its DLQ (one more "initialized" line in ``log``) or ended."""
    return (
        engine.poll() is not None
        or log.read_text().count("DLQ Manager initialized") > opened_before
    )


def assert_final_state(tmp_path: Path, dsn: str, source: SyntheticSource) -> None:
    assert_exact_state(dsn, source)
    assert_nothing_left(*queue_leftovers(tmp_path / "dlq"))


@pytest.mark.timeout(300)
def test_outage_and_recovery_with_many_updates_to_few_keys(
    tmp_path: Path, postgres_server_factory
) -> None:
    """Same keys updated and deleted many times while PostgreSQL is down: last value wins.

    Small replay batches keep the replay running while fresh traffic for the
    same keys arrives and then ends: an engine that wrote fresh events around
    the queue would let older replayed changes overwrite the newest rows.
    """
    server: PostgresServer = postgres_server_factory()
    events, rate = 4000, 800.0
    source = SyntheticSource("1", None, total_events=events, seed=11, keys_per_table=8)
    create_tables(server.dsn, source)
    write_pipelines(tmp_path / "pipelines.toml", events=events, rate=rate, seed=11, keys=8)
    log = tmp_path / "engine.log"
    env = engine_env(tmp_path, server.dsn, DLQ_BATCH_SIZE="3")
    engine = start_engine(env, log)
    try:
        wait_until(
            lambda: written_rows(server.dsn) > 0,
            60,
            "the engine to write to PostgreSQL",
            interval=0.1,
        )
        server.stop("immediate")
        outage_began = time.monotonic()
        wait_for_log_line(log, "Enqueued to DLQ", 60)
        # The outage lasts 3 s in all: the same keys keep changing in the queue.
        time.sleep(max(0.0, 3.0 - (time.monotonic() - outage_began)))
        server.start()
        assert engine.wait(timeout=120) == 0, log.read_text()[-3000:]
    finally:
        if engine.poll() is None:
            engine.kill()
            engine.wait()
    assert "is now HEALTHY" in log.read_text()
    assert_final_state(tmp_path, server.dsn, source)


@pytest.mark.timeout(600)
def test_kill9_engine_during_traffic_and_replay(tmp_path: Path, postgres_server_factory) -> None:
    """20 SIGKILLs at random instants, with outages, restarts and replays in between."""
    server: PostgresServer = postgres_server_factory()
    rng = random.Random(4242)
    events, rate = 20000, 1000.0
    source = SyntheticSource("1", None, total_events=events, seed=5, keys_per_table=40)
    create_tables(server.dsn, source)
    write_pipelines(tmp_path / "pipelines.toml", events=events, rate=rate, seed=5, keys=40)
    env = engine_env(tmp_path, server.dsn)
    log = tmp_path / "engine.log"
    kills = 0
    for round_number in range(20):
        # Every few rounds the destination goes down (traffic piles up in the
        # DLQ) and comes back a round later (the next engine replays it).
        if round_number % 4 == 1:
            server.stop("immediate")
        elif round_number % 4 == 3 and not server.is_running():
            server.start()
        started = log.read_text().count("DLQ Manager initialized") if log.exists() else 0
        engine = start_engine(env, log)
        # Kill somewhere after the imports (their time varies with the load on
        # the machine): from the moment this engine opened its DLQ.
        wait_until(
            functools.partial(opened_dlq_or_ended, engine, log, started),
            60,
            f"engine {round_number + 1} to open its DLQ",
        )
        # Up to 2.5 s: long enough, in outage rounds, for the in-place retries
        # (~1.3 s) to give up and queue, so that a later engine replays.
        time.sleep(rng.uniform(0.2, 2.5))
        if engine.poll() is None:
            engine.send_signal(signal.SIGKILL)
            kills += 1
        code = engine.wait()
        assert code in (0, -signal.SIGKILL), log.read_text()[-3000:]
    if not server.is_running():
        server.start()
    assert kills >= 18
    engine = start_engine(env, log)
    try:
        assert engine.wait(timeout=180) == 0, log.read_text()[-3000:]
    finally:
        if engine.poll() is None:
            engine.kill()
            engine.wait()
    text = log.read_text()
    assert "Successfully replayed" in text, "no replay ever ran"
    assert_final_state(tmp_path, server.dsn, source)
