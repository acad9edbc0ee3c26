"""PostgreSQL crashes and killed sessions under a real ``rosetta run`` process.

* The server is stopped with ``pg_ctl stop -m immediate`` (a crash: no
  checkpoint, every session cut) and started again at random 1-5 s
  intervals, during live traffic and during replay.
* The engine's sessions are killed with ``pg_terminate_backend`` while their
  transactions run (a statement trigger keeps each write open a little, so
  the kills land inside transactions), and the fault proxy swallows the
  server's reply to COMMITs: committed, but the engine never learns it.

Pass: the engine exits 0 by itself once the source is delivered and the
queues are drained, the tables equal the source's final state, and nothing
is parked or left queued.
"""

from __future__ import annotations

import random
import subprocess
import time
from pathlib import Path

import psycopg2
import pytest

from compute.sources.synthetic_source import SyntheticSource
from tests.fault_proxy import fault_proxy
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


def stop_engine(engine: subprocess.Popen[bytes], log: Path, timeout: float) -> None:
    try:
        code = engine.wait(timeout=timeout)
    finally:
        if engine.poll() is None:
            engine.kill()
            engine.wait()
    assert code == 0, log.read_text()[-4000:]


@pytest.mark.timeout(400)
def test_immediate_stops_at_random_during_traffic_and_replay(
    tmp_path: Path, postgres_server_factory
) -> None:
    server: PostgresServer = postgres_server_factory()
    rng = random.Random(1234)
    events, rate = 10000, 400.0
    source = SyntheticSource("1", None, total_events=events, seed=31, keys_per_table=40)
    create_tables(server.dsn, source)
    write_pipelines(tmp_path / "pipelines.toml", events=events, rate=rate, seed=31, keys=40)
    log = tmp_path / "engine.log"
    # Small replay batches keep the replay running long enough to crash under it.
    engine = start_engine(engine_env(tmp_path, server.dsn, DLQ_BATCH_SIZE="10"), log)
    stops = stops_during_replay = 0
    try:
        while engine.poll() is None and stops < 12:
            if not _wait(engine, rng.uniform(1, 5)):
                break
            # a recovery (the line that starts a replay) happened before this stop
            replaying = "is now HEALTHY" in log.read_text(errors="replace")
            server.stop("immediate")
            stops += 1
            stops_during_replay += replaying
            time.sleep(rng.uniform(1, 5))
            server.start()
        if not server.is_running():
            server.start()
        stop_engine(engine, log, timeout=180)
    finally:
        if engine.poll() is None:
            engine.kill()
            engine.wait()
    text = log.read_text(errors="replace")
    print(f"immediate stops={stops} during replay={stops_during_replay}")
    assert stops >= 3 and stops_during_replay >= 1, "the faults did not hit traffic and replay"
    assert "Enqueued to DLQ" in text and "Successfully replayed" in text
    assert_exact_state(server.dsn, source)
    assert_nothing_left(*queue_leftovers(tmp_path / "dlq"))


SLOW_WRITES = """
CREATE FUNCTION public.slow_{table}() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN PERFORM pg_sleep(0.02); RETURN NULL; END $$;
CREATE TRIGGER slow_write AFTER INSERT OR UPDATE OR DELETE ON public.{table}
FOR EACH STATEMENT EXECUTE FUNCTION public.slow_{table}();
"""


@pytest.mark.timeout(400)
def test_sessions_killed_mid_transaction_and_commit_replies_lost(
    tmp_path: Path, postgres_server_factory
) -> None:
    server: PostgresServer = postgres_server_factory()
    rng = random.Random(99)
    events, rate = 3500, 400.0
    source = SyntheticSource("1", None, total_events=events, seed=32, keys_per_table=30)
    create_tables(server.dsn, source)
    admin = psycopg2.connect(server.dsn)
    admin.autocommit = True
    with admin.cursor() as cur:
        for table in ("users", "orders", "accounts"):
            cur.execute(SLOW_WRITES.format(table=table))
    write_pipelines(tmp_path / "pipelines.toml", events=events, rate=rate, seed=32, keys=30)
    log = tmp_path / "engine.log"
    kills_in_transaction = 0
    with fault_proxy(server.host, server.port) as proxy:
        engine = start_engine(
            engine_env(tmp_path, proxy.dsn_for(server.dsn), DLQ_BATCH_SIZE="10"), log
        )
        try:
            deadline = time.monotonic() + 10
            while time.monotonic() < deadline and engine.poll() is None:
                if rng.random() < 0.5:
                    proxy.drop_after_commit()
                with admin.cursor() as cur:
                    cur.execute(
                        "SELECT pg_terminate_backend(pid), state FROM pg_stat_activity "
                        "WHERE application_name = 'rosetta' AND pid <> pg_backend_pid() "
                        "AND state IN ('active', 'idle in transaction')"
                    )
                    kills_in_transaction += sum(1 for ok, _ in cur.fetchall() if ok)
                time.sleep(rng.uniform(0.05, 0.4))
            stop_engine(engine, log, timeout=180)
        finally:
            if engine.poll() is None:
                engine.kill()
                engine.wait()
        commits_dropped = proxy.commits_dropped
    admin.close()
    print(
        f"sessions killed mid-transaction={kills_in_transaction} commits dropped={commits_dropped}"
    )
    assert kills_in_transaction >= 5 and commits_dropped >= 5, "the faults did not happen"
    assert_exact_state(server.dsn, source)
    assert_nothing_left(*queue_leftovers(tmp_path / "dlq"))


def _wait(engine: subprocess.Popen[bytes], seconds: float) -> bool:
    """Sleep ``seconds`` unless the engine exits first; True if it still runs."""
    try:
        engine.wait(timeout=seconds)
    except subprocess.TimeoutExpired:
        return True
    return False
