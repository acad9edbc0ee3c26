"""kill -9 of ``rosetta run`` while it replays its JetStream queues, cycle after cycle: no loss.

One engine (``DLQ_BACKEND=jetstream``, a 3-node cluster, ``DLQ_LEASE_TTL=2``)
runs a rate-capped synthetic pipeline into PostgreSQL. Each cycle stops the
destination until the pipeline's changes pile up in the stream, starts it
again, waits until the queues start to shrink (replay is under way: small
replay batches keep it going a while), waits a random moment more and kills
the engine with SIGKILL, then starts it again (it takes its pipeline back
once the dead engine's lease expired). A kill between a destination commit
and its ack makes the next engine apply that batch twice (idempotent
writes); a kill that skipped or reordered a change, or lost a queued one,
leaves a table different from the source's final state. At the end: the
tables are exact, nothing queued or parked.
"""

from __future__ import annotations

import random
import subprocess
import time
from pathlib import Path

import pytest

from tests.faults.helpers import start_engine
from tests.faults.jetstream_engines import (
    SyntheticPipeline,
    create_tables,
    jetstream_engine_env,
    kill_9,
    offline_dlq,
    queued_and_parked,
    stop_gracefully,
    table_differences,
    write_pipelines,
)
from tests.jetstream_stores import unique_prefix
from tests.nats_cluster import NatsCluster
from tests.servers import PostgresServer
from tests.waiting import wait_for_log_line, wait_until

TTL = 2.0
CYCLES = 10
QUEUED_PER_OUTAGE = 80  # changes piled up in the stream before the destination comes back
PIPELINE = SyntheticPipeline("p1", "1", "one", events=6000, rate=100.0, seed=51, keys=40)
TAKEN = "pipeline taken: pipeline=p1 engine=engine"


@pytest.mark.timeout(300)
def test_kill_9_during_replay_from_jetstream_loses_nothing(
    tmp_path: Path, nats_session_cluster: NatsCluster, postgres_server_factory
) -> None:
    cluster = nats_session_cluster
    server: PostgresServer = postgres_server_factory()
    rng = random.Random(2026)
    create_tables(server.dsn, [PIPELINE])
    pipelines_file = tmp_path / "pipelines.toml"
    write_pipelines(pipelines_file, [PIPELINE])
    prefix = unique_prefix()
    # Replay batches of 5 changes: a drain of QUEUED_PER_OUTAGE takes a while to kill into.
    env = jetstream_engine_env(
        tmp_path / "engine",
        server.dsn,
        cluster,
        prefix,
        "engine",
        TTL,
        pipelines_file,
        DLQ_BATCH_SIZE="5",
    )
    dlq = offline_dlq(cluster, prefix, tmp_path / "observer")
    log = tmp_path / "engine.log"

    def queued() -> int:
        return sum(queued_and_parked(dlq, [PIPELINE.source_id])[0].values())

    engine: subprocess.Popen[bytes] | None = None
    left_at_kill: list[int] = []
    try:
        for cycle in range(CYCLES):
            engine = start_engine(env, log)
            # A killed engine's lease expires after the TTL: then the new one takes it.
            wait_for_log_line(log, TAKEN, 4 * TTL + 30, count=cycle + 1)
            server.stop("immediate")
            wait_until(lambda: queued() >= QUEUED_PER_OUTAGE, 30, "changes queued in JetStream")
            server.start()
            peak = queued()
            wait_until(
                lambda peak=peak: queued() < peak, 30, "replay to start (the queue to shrink)"
            )
            time.sleep(rng.uniform(0, 0.3))
            kill_9(engine)
            left_at_kill.append(queued())
        print(f"changes still queued at each kill: {left_at_kill}")
        # The kills must have landed while replay had work left, not after it.
        assert sum(1 for left in left_at_kill if left > 0) >= CYCLES // 2, left_at_kill

        # The last engine: the source's rest at full speed (the same history, unthrottled).
        write_pipelines(pipelines_file, [PIPELINE.unthrottled()])
        engine = start_engine(env, log)
        wait_until(
            lambda: not table_differences(server.dsn, [PIPELINE]), 120, "the source's final state"
        )
        # Exact tables may still leave acknowledgements to come (changes applied twice).
        wait_until(lambda: queued() == 0, 20, "empty queues")
        assert table_differences(server.dsn, [PIPELINE]) == []
        _, parked = queued_and_parked(dlq, [PIPELINE.source_id])
        assert not parked, f"kill -9 during replay parked changes: {parked}"
        assert stop_gracefully(engine, log) == 0, log.read_text()[-3000:]
        text = log.read_text(errors="replace")
        assert "Traceback" not in text, text[-3000:]
    finally:
        if engine is not None and engine.poll() is None:
            kill_9(engine)
        dlq.close()
