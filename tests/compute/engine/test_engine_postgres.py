"""The engine against a real PostgreSQL: outages, restarts, ordering, and kill -9.

These run ``rosetta run`` (the real console script) as a child process,
with pipelines defined in a TOML file, and compare the destination tables
with the synthetic source's final state.
"""

from __future__ import annotations

import random
import signal
import time
from pathlib import Path

import pytest

from compute.dlq.manager import DLQManager
from compute.sources.synthetic_source import DEFAULT_TABLES, SyntheticSource
from config.dlq_config import DLQConfig
from tests.faults.helpers import create_tables, engine_env, start_engine, write_pipelines
from tests.pg_state import differences, fetch_state
from tests.servers import PostgresServer


def assert_final_state(tmp_path: Path, dsn: str, source: SyntheticSource) -> None:
    problems = differences(source.expected_state(), fetch_state(dsn, DEFAULT_TABLES))
    assert not problems, problems
    config = DLQConfig(base_path=tmp_path / "dlq", min_free_disk_mb=0)
    with DLQManager(config, background=False) as dlq:
        leftovers = {str(q): dlq.store.count(q) for q in dlq.list_queues() if dlq.has_messages(q)}
        parked = {str(q): dlq.parked_count(q) for q in dlq.list_queues() if dlq.parked_count(q)}
    assert not leftovers, f"queues still hold messages: {leftovers}"
    assert not parked, f"an outage parked events as poison: {parked}"


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
        time.sleep(2.0)
        server.stop("immediate")
        time.sleep(3.0)
        server.start()
        assert engine.wait(timeout=120) == 0, log.read_text()[-3000:]
    finally:
        if engine.poll() is None:
            engine.kill()
            engine.wait()
    text = log.read_text()
    assert "Enqueued to DLQ" in text, "the outage never reached the DLQ"
    assert "is now HEALTHY" in text
    assert_final_state(tmp_path, server.dsn, source)


@pytest.mark.timeout(600)
def test_kill9_engine_during_traffic_and_replay(tmp_path: Path, postgres_server_factory) -> None:
    """30+ SIGKILLs at random instants, with outages, restarts and replays in between."""
    server: PostgresServer = postgres_server_factory()
    rng = random.Random(4242)
    events, rate = 30000, 1000.0
    source = SyntheticSource("1", None, total_events=events, seed=5, keys_per_table=40)
    create_tables(server.dsn, source)
    write_pipelines(tmp_path / "pipelines.toml", events=events, rate=rate, seed=5, keys=40)
    env = engine_env(tmp_path, server.dsn)
    log = tmp_path / "engine.log"
    kills = 0
    for round_number in range(32):
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
        deadline = time.monotonic() + 60
        while engine.poll() is None and time.monotonic() < deadline:
            if log.read_text().count("DLQ Manager initialized") > started:
                break
            time.sleep(0.02)
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
    assert kills >= 30
    engine = start_engine(env, log)
    try:
        assert engine.wait(timeout=180) == 0, log.read_text()[-3000:]
    finally:
        if engine.poll() is None:
            engine.kill()
            engine.wait()
    text = log.read_text()
    assert "Processing" in text and "Successfully replayed" in text, "no replay ever ran"
    assert_final_state(tmp_path, server.dsn, source)
