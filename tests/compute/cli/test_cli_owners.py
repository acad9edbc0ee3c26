"""Engines sharing pipelines (jetstream): `rosetta dlq queues` and health name the owner engines."""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from dataclasses import replace
from pathlib import Path

import pytest

from compute.admin.operations import DLQOperations
from compute.dlq.manager import DLQManager
from compute.errors import DLQConflictError
from compute.queue_id import QueueId
from compute.storage.jetstream.bridge import NatsBridge
from compute.storage.jetstream.leases import Leases
from config.nats_config import Backend, NatsConfig
from tests.builders import dlq_config, engine_settings, messages
from tests.nats_cluster import NatsCluster, nats_cluster
from tests.rosetta_cli import cli_env, run_rosetta


@pytest.fixture(scope="module")
def cluster() -> Iterator[NatsCluster]:
    with nats_cluster() as started:
        yield started


def test_queues_and_health_show_the_engine_owning_each_pipeline(
    tmp_path: Path, cluster: NatsCluster
) -> None:
    prefix = f"OWN{int(time.time()) % 10**6}"
    nats = NatsConfig(urls=tuple(cluster.urls), stream_prefix=prefix, lease_ttl=30)
    owned, unowned = QueueId("1", "public.users", "1"), QueueId("2", "public.orders", "1")
    config = replace(dlq_config(tmp_path), backend=Backend.JETSTREAM, nats=nats)
    with DLQManager(config, background=False) as dlq:  # the queues are in the stream
        dlq.enqueue(owned, messages(owned, [1, 2]))
        dlq.enqueue(unowned, messages(unowned, [3]))
    bridge = NatsBridge(nats)
    try:
        lease = Leases(bridge, engine_id="engine-x").acquire("users", source_id="1")
        assert lease is not None
        settings = engine_settings(config)
        with DLQManager(settings.dlq, background=False) as dlq:
            ops = DLQOperations(dlq, settings, mode="offline")
            rows = {r["source_id"]: r for r in ops.queues()}
            assert rows["1"]["owner"] == "engine-x"
            assert rows["2"]["owner"] is None
            body, _ = ops.health()
            assert body["owners"]["users"]["engine"] == "engine-x"
            assert body["owners"]["users"]["source_id"] == "1"

        env = cli_env(
            DLQ_BASE_PATH=str(tmp_path / "dlq"),
            DLQ_BACKEND="jetstream",
            DLQ_NATS_URLS=cluster.url_list,
            DLQ_NATS_STREAM_PREFIX=prefix,
        )
        result = run_rosetta(env, "dlq", "queues", "--json")
        assert result.returncode == 0, result.stderr
        by_source = {r["source_id"]: r["owner"] for r in json.loads(result.stdout)}
        assert by_source == {"1": "engine-x", "2": None}
        result = run_rosetta(env | {"COLUMNS": "200"}, "dlq", "queues")
        assert result.returncode == 0, result.stderr
        assert "owner" in result.stdout and "engine-x" in result.stdout

        # rocksq: no engines share anything, no owner column
        local = dlq_config(tmp_path / "local")
        with DLQManager(local, background=False) as dlq:
            dlq.enqueue(owned, messages(owned, [1]))
        plain = run_rosetta(
            cli_env(DLQ_BASE_PATH=str(local.base_path), COLUMNS="200"), "dlq", "queues"
        )
        assert plain.returncode == 0, plain.stderr
        assert "public.users" in plain.stdout and "owner" not in plain.stdout
    finally:
        bridge.close()


def test_a_queue_another_engine_runs_is_not_changed_offline(
    tmp_path: Path, cluster: NatsCluster
) -> None:
    """Two replayers of one queue would deliver it twice and out of order: refused, named."""
    prefix = f"EDIT{int(time.time() * 1000) % 10**8}"
    nats = NatsConfig(urls=tuple(cluster.urls), stream_prefix=prefix, lease_ttl=30)
    owned, free = QueueId("1", "public.users", "1"), QueueId("2", "public.orders", "1")
    config = replace(dlq_config(tmp_path), backend=Backend.JETSTREAM, nats=nats)
    settings = engine_settings(config)
    bridge = NatsBridge(nats)
    leases = Leases(bridge, engine_id="engine-x")
    try:
        lease = leases.acquire("users", source_id="1")
        assert lease is not None
        with DLQManager(config, background=False) as dlq:
            dlq.enqueue(owned, messages(owned, [1, 2]))
            dlq.enqueue(free, messages(free, [3]))
            ops = DLQOperations(dlq, settings, mode="offline")
            first = dlq.peek(owned, 1)[0].message_id
            for refused in (
                lambda: ops.purge(owned),
                lambda: ops.discard(first, owned),
                lambda: ops.park(first, owned),
                lambda: ops.replay(owned),
                lambda: ops.replay(owned, parked=True),
            ):
                with pytest.raises(DLQConflictError) as raised:
                    refused()
                assert "pipeline users, which engine engine-x runs" in str(raised.value)
            assert dlq.count(owned) == 2 and dlq.count(owned.parked) == 0  # untouched
            exported = list(ops.export_lines(owned))  # reading is not changing
            assert len(exported) == 3
            listed = ops.replay(dry_run=True)["queues"]  # a dry run changes nothing: all listed
            assert {r["queue"] for r in listed} == {str(owned), str(free)}
            assert ops.purge(free)["removed"] == 1  # nobody runs it: changed here
            assert ops.replay()["queues"] == []  # all: the queue engine-x runs is left to it

            leases.release(lease)
            assert ops.purge(owned)["removed"] == 2  # nobody runs it now
    finally:
        bridge.close()
