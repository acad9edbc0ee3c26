"""Failover on JetStream: an engine killed with its queues full and its disk gone loses nothing.

Engines A and B (two ``rosetta run`` processes, ``DLQ_BACKEND=jetstream``, one
3-node cluster, ``DLQ_LEASE_TTL=3``) run the same two rate-capped synthetic
pipelines into one PostgreSQL. A starts first and takes both; B joins and,
by the fair share (ceil(2 pipelines / 2 engines) = 1), A hands it one: A
still owns the other. The destination stops (``pg_ctl stop -m immediate``);
once A's pipeline has changes queued in the stream, A is killed with SIGKILL
and its DLQ and state directories are deleted (the machine is gone). B must
take A's pipeline within two TTLs (the lease expires one TTL after A's last
renewal, B's round runs every TTL/3), keep queueing behind what A queued
while the destination is down, and once it is back drain every queue: the
tables equal both sources' final states, nothing queued, nothing parked.
"""

from __future__ import annotations

import shutil
import subprocess
import time
from pathlib import Path

import pytest

from compute.storage.jetstream.bridge import NatsBridge
from compute.storage.jetstream.leases import Leases
from config.nats_config import NatsConfig
from tests.faults.helpers import start_engine
from tests.faults.jetstream_engines import (
    SyntheticPipeline,
    create_tables,
    jetstream_engine_env,
    kill_9,
    offline_dlq,
    queued_and_parked,
    seen_at,
    stop_gracefully,
    table_differences,
    write_pipelines,
)
from tests.jetstream_stores import unique_prefix
from tests.nats_cluster import NatsCluster
from tests.servers import PostgresServer
from tests.waiting import wait_until

TTL = 3.0
# Events keep coming through the whole outage and the takeover (about 9 s of each source).
PIPELINES = [
    SyntheticPipeline("p1", "1", "one", events=450, rate=50.0, seed=41),
    SyntheticPipeline("p2", "2", "two", events=450, rate=50.0, seed=42),
]
SOURCE_IDS = [p.source_id for p in PIPELINES]


@pytest.mark.timeout(240)
def test_engine_killed_with_queued_events_and_its_disk_gone_is_taken_over_and_nothing_lost(
    tmp_path: Path, nats_session_cluster: NatsCluster, postgres_server_factory
) -> None:
    cluster = nats_session_cluster
    server: PostgresServer = postgres_server_factory()
    create_tables(server.dsn, PIPELINES)
    pipelines_file = tmp_path / "pipelines.toml"
    write_pipelines(pipelines_file, PIPELINES)
    prefix = unique_prefix()

    def env(name: str) -> dict[str, str]:
        return jetstream_engine_env(
            tmp_path / name, server.dsn, cluster, prefix, name, TTL, pipelines_file
        )

    bridge = NatsBridge(NatsConfig(urls=tuple(cluster.urls), stream_prefix=prefix, lease_ttl=TTL))
    leases = Leases(bridge, engine_id="observer")
    dlq = offline_dlq(cluster, prefix, tmp_path / "observer")

    def owners() -> dict[str, str]:
        return {name: owner.engine_id for name, owner in leases.owners().items()}

    a_log, b_log = tmp_path / "a.log", tmp_path / "b.log"
    engines: list[subprocess.Popen[bytes]] = []
    try:
        a = start_engine(env("engine_a"), a_log)
        engines.append(a)
        seen_at(a_log, "pipeline taken: pipeline=", 60)
        wait_until(lambda: len(owners()) == 2, 30, "A to take both pipelines")
        assert set(owners().values()) == {"engine_a"}, owners()
        b = start_engine(env("engine_b"), b_log)
        engines.append(b)
        wait_until(
            lambda: sorted(owners().values()) == ["engine_a", "engine_b"],
            60,
            "A to hand B its fair share (one pipeline)",
        )
        [a_pipeline] = [name for name, engine in owners().items() if engine == "engine_a"]
        a_source = next(p.source_id for p in PIPELINES if p.name == a_pipeline)

        server.stop("immediate")

        def a_queued() -> int:
            queued, _ = queued_and_parked(dlq, SOURCE_IDS)
            return sum(n for queue, n in queued.items() if queue.startswith(f"source_{a_source}/"))

        wait_until(lambda: a_queued() >= 20, 30, f"{a_pipeline}'s changes queued by A")
        kill_9(a)
        killed = time.monotonic()
        shutil.rmtree(tmp_path / "engine_a" / "dlq")
        shutil.rmtree(tmp_path / "engine_a" / "state")

        taken = seen_at(b_log, f"pipeline taken: pipeline={a_pipeline} engine=engine_b", 4 * TTL)
        takeover = taken - killed
        print(f"takeover {takeover:.2f}s after the kill (TTL {TTL:g}s)")
        # The lease expires at most TTL after A's last renewal, which came before the kill;
        # B's round runs every TTL/3 and builds the pipeline (connections refused at once).
        assert takeover <= 2 * TTL, f"B took {a_pipeline} {takeover:.2f}s after the kill"
        assert owners() == dict.fromkeys(["p1", "p2"], "engine_b")
        # B keeps queueing A's pipeline behind what A queued while the destination is down.
        at_takeover = a_queued()
        wait_until(
            lambda: a_queued() >= at_takeover + 20,
            10,
            f"B to queue {a_pipeline}'s new changes behind A's {at_takeover}",
        )

        server.start()
        wait_until(
            lambda: not table_differences(server.dsn, PIPELINES), 90, "both sources' final state"
        )
        # Exact tables may still leave acknowledgements to come (changes applied twice).
        wait_until(lambda: not queued_and_parked(dlq, SOURCE_IDS)[0], 20, "empty queues")
        assert table_differences(server.dsn, PIPELINES) == []
        _, parked = queued_and_parked(dlq, SOURCE_IDS)
        assert not parked, f"the failover parked changes: {parked}"

        assert stop_gracefully(b, b_log) == 0, b_log.read_text()[-3000:]
        b_text = b_log.read_text(errors="replace")
        assert "Traceback" not in b_text, b_text[-3000:]
        assert "Successfully replayed" in b_text, "B drained nothing: the test missed its point"
        assert owners() == {}, "B's clean stop released its leases"
    finally:
        for engine in engines:
            if engine.poll() is None:
                kill_9(engine)
        dlq.close()
        bridge.close()
