"""The soak's JetStream backend (``--backend jetstream``): its cluster, node kills, the drain.

A 3-node NATS cluster of its own (``tests/nats_cluster.py``) under the work
directory; the engine runs with ``DLQ_BACKEND=jetstream`` against it. What
changes from the rocksq soak:

* the faults add ``nats_kill9``: one node killed (``SIGKILL``), started
  again 1-5 s later, the cluster whole again (every node placing a stream)
  before the next fault, so never two nodes down at once;
  ``queue_dir_removed`` is left out (no queue directory on this backend);
* the source position is read from the ``<prefix>_POSITIONS`` bucket, what is
  left queued or parked from the streams (an offline ``DLQManager``);
* the engine does not end when its source is exhausted (another engine could
  hand it a pipeline): once the source is read, the tables exact and the
  queues empty, it is stopped with SIGTERM and must exit 0.
"""

from __future__ import annotations

import asyncio
import random
import signal
import subprocess
import time
from pathlib import Path

from compute.dlq.manager import DLQManager
from compute.sources.synthetic_source import DEFAULT_TABLES, SyntheticSource
from compute.storage.jetstream.leases import kv_key
from config.dlq_config import DLQConfig
from config.nats_config import Backend, NatsConfig
from tests.faults.helpers import dlq_counts
from tests.nats_cluster import NatsCluster
from tests.pg_state import differences, fetch_state

PREFIX = "SOAK"
# A killed engine's lease holds its pipeline this long: the restarted one waits
# it out. Short for the soak, yet well over a node kill's pause in renewals
# (an election and a timed-out request), so a node kill does not fence it.
LEASE_TTL = 8.0
NATS_TIMEOUT = 2.0
ONLY_ROCKSQ = ("queue_dir_removed",)  # a fault on queue directories, which this backend has none of
NODE_FAULT = "nats_kill9"


class JetStreamSoak:
    """The cluster the soak's engine keeps its queues, positions and leases in."""

    def __init__(self, work: Path) -> None:
        self.work = work
        self.cluster = NatsCluster(root=work / "nats")
        self.cluster.start()
        self.node_kills = 0

    def engine_settings(self) -> dict[str, str]:
        return {
            "DLQ_BACKEND": "jetstream",
            "DLQ_NATS_URLS": self.cluster.url_list,
            "DLQ_NATS_STREAM_PREFIX": PREFIX,
            "DLQ_NATS_TIMEOUT": str(NATS_TIMEOUT),
            "DLQ_LEASE_TTL": str(LEASE_TTL),
            "DLQ_ENGINE_ID": "soak",
        }

    def faults(self, rocksq_faults: list[str]) -> list[str]:
        return [f for f in rocksq_faults if f not in ONLY_ROCKSQ] + [NODE_FAULT]

    def kill_node(self, rng: random.Random, hold: float) -> str:
        """``kill -9`` of one node, started again ``hold`` s later; back whole before returning."""
        node = rng.choice(self.cluster.nodes)
        node.kill()
        self.node_kills += 1
        time.sleep(hold)
        node.start()
        started = time.monotonic()
        self.cluster.wait_ready(60)
        return (
            f"{node.name} killed, back and placing streams {time.monotonic() - started:.1f}s after"
        )

    def source_position(self) -> int:
        """The engine's acknowledged position of source 1, from the positions bucket (0: none)."""
        import nats

        async def read() -> int:
            nc = await nats.connect(servers=self.cluster.live_urls(), max_reconnect_attempts=0)
            try:
                kv = await nc.jetstream(timeout=NATS_TIMEOUT).key_value(f"{PREFIX}_POSITIONS")
                return int((await kv.get(kv_key("1"))).value)
            finally:
                await nc.close()

        try:
            return asyncio.run(read())
        except Exception:  # noqa: BLE001 - no key yet, a node down: not read this time
            return 0

    def leftovers(self) -> tuple[dict[str, int], dict[str, int]]:
        """(queued, parked) per queue, read from the streams."""
        config = DLQConfig(
            base_path=self.work / "offline",
            min_free_disk_mb=0,
            backend=Backend.JETSTREAM,
            nats=NatsConfig(urls=tuple(self.cluster.urls), stream_prefix=PREFIX),
        )
        with DLQManager(config, background=False) as dlq:
            return dlq_counts(dlq)

    def drained(self, events: int, dsn: str, source: SyntheticSource) -> bool:
        """The source read to its end, the tables exact and nothing queued or parked."""
        if self.source_position() < events:
            return False
        try:
            if differences(source.expected_state(), fetch_state(dsn, DEFAULT_TABLES)):
                return False
            queued, parked = self.leftovers()
        except Exception:  # noqa: BLE001 - a server restarting: not drained yet
            return False
        return not queued and not parked

    @staticmethod
    def stop_engine(proc: subprocess.Popen[bytes]) -> int:
        """SIGTERM, as an operator stops it; its exit code (killed after 60 s: -9)."""
        proc.send_signal(signal.SIGTERM)
        try:
            return proc.wait(60)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
            return -9

    def close(self) -> None:
        self.cluster.close()
