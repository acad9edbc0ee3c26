"""Shared pieces of the JetStream fault tests: synthetic pipelines, engine settings, queue counts.

Each pipeline reads its own synthetic source (its own id and tables) into one
PostgreSQL destination; every engine gets its own DLQ and state directories
and engine id, and all of them one NATS cluster under the test's own stream
prefix. The queues are counted from outside the engines, by an offline
``DLQManager`` on the same stream (it reads the leader, as any engine does).
"""

from __future__ import annotations

import subprocess
import time
from dataclasses import dataclass, replace
from pathlib import Path

import psycopg2

from compute.dlq.manager import DLQManager
from compute.sources.synthetic_source import SyntheticSource
from config.dlq_config import DLQConfig
from config.nats_config import Backend, NatsConfig
from tests.builders import pipelines_toml, postgresql_destination
from tests.faults.helpers import dlq_counts, engine_env
from tests.nats_cluster import NatsCluster
from tests.pg_state import differences, fetch_state


@dataclass(frozen=True)
class SyntheticPipeline:
    """One pipeline: a synthetic source of ``events`` at ``rate`` per second into ``schema``."""

    name: str
    source_id: str
    schema: str
    events: int
    rate: float | None
    seed: int
    keys: int = 30

    @property
    def tables(self) -> tuple[str, ...]:
        # The part after the last dot picks the generated columns (users, orders, accounts).
        return tuple(f"{self.schema}.{t}" for t in ("users", "orders", "accounts"))

    def unthrottled(self) -> SyntheticPipeline:
        """The same history without a rate: the rest of the source at full speed."""
        return replace(self, rate=None)

    def source(self) -> SyntheticSource:
        return SyntheticSource(
            self.source_id,
            None,
            tables=self.tables,
            total_events=self.events,
            seed=self.seed,
            keys_per_table=self.keys,
        )

    def toml(self, batch_size: int) -> str:
        source: dict[str, object] = {
            "id": self.source_id,
            "type": "synthetic",
            "tables": list(self.tables),
            "total_events": self.events,
            "seed": self.seed,
            "keys_per_table": self.keys,
        }
        if self.rate is not None:  # the rate does not change the history, only its pace
            source["events_per_second"] = self.rate
        destination = postgresql_destination("TEST_DEST_DSN", "Postgres-Faults")
        return pipelines_toml(
            source, [destination], name=self.name, batch_size=batch_size, retry="aggressive"
        )


def write_pipelines(path: Path, pipelines: list[SyntheticPipeline], batch_size: int = 20) -> None:
    path.write_text("".join(p.toml(batch_size) for p in pipelines))


def create_tables(dsn: str, pipelines: list[SyntheticPipeline]) -> None:
    conn = psycopg2.connect(dsn)
    conn.autocommit = True
    with conn.cursor() as cur:
        for pipeline in pipelines:
            cur.execute(f"CREATE SCHEMA IF NOT EXISTS {pipeline.schema}")
            for statement in pipeline.source().create_tables_sql():
                cur.execute(statement)
    conn.close()


def table_differences(dsn: str, pipelines: list[SyntheticPipeline]) -> list[str]:
    """What the destination holds that differs from every source's final state."""
    problems: list[str] = []
    for pipeline in pipelines:
        source = pipeline.source()
        problems += differences(source.expected_state(), fetch_state(dsn, source.tables))
    return problems


def jetstream_engine_env(
    directory: Path,
    dsn: str,
    cluster: NatsCluster,
    prefix: str,
    engine_id: str,
    lease_ttl: float,
    pipelines_file: Path,
    **extra: str,
) -> dict[str, str]:
    """``rosetta run``'s settings: its own directories under ``directory``, the shared cluster."""
    return engine_env(
        directory,
        dsn,
        ROSETTA_PIPELINES_FILE=str(pipelines_file),
        DLQ_BACKEND="jetstream",
        DLQ_NATS_URLS=cluster.url_list,
        DLQ_NATS_STREAM_PREFIX=prefix,
        DLQ_LEASE_TTL=str(lease_ttl),
        DLQ_ENGINE_ID=engine_id,
        **extra,
    )


def offline_dlq(cluster: NatsCluster, prefix: str, base_path: Path) -> DLQManager:
    """A manager on the engines' stream, run by nobody: for counting what is queued and parked."""
    config = DLQConfig(
        base_path=base_path,
        min_free_disk_mb=0,
        backend=Backend.JETSTREAM,
        nats=NatsConfig(urls=tuple(cluster.urls), stream_prefix=prefix, engine_id="observer"),
    )
    return DLQManager(config, background=False)


def queued_and_parked(
    dlq: DLQManager, source_ids: list[str]
) -> tuple[dict[str, int], dict[str, int]]:
    """(messages queued, messages parked) per queue, read afresh from the stream."""
    for source_id in source_ids:  # the engines wrote since the last look: no cached counts
        dlq.refresh_source(source_id)
    dlq.list_queues(refresh=True)
    return dlq_counts(dlq)


def kill_9(engine: subprocess.Popen[bytes]) -> None:
    engine.kill()
    engine.wait(10)


def stop_gracefully(engine: subprocess.Popen[bytes], log: Path, timeout: float = 30) -> int:
    """SIGTERM and its exit code; SIGKILL (and a failure naming the log) if it hangs."""
    engine.terminate()
    try:
        return engine.wait(timeout)
    except subprocess.TimeoutExpired:
        kill_9(engine)
        raise AssertionError(
            f"the engine did not stop within {timeout}s of SIGTERM: {log.read_text()[-3000:]}"
        ) from None


def seen_at(log: Path, text: str, timeout: float, poll: float = 0.02) -> float:
    """The monotonic time ``log`` was first seen holding ``text`` (polled every ``poll`` s)."""
    deadline = time.monotonic() + timeout
    while True:
        if log.exists() and text in log.read_text(errors="replace"):
            return time.monotonic()
        if time.monotonic() > deadline:
            tail = log.read_text(errors="replace")[-3000:] if log.exists() else ""
            raise AssertionError(f"{text!r} not in {log.name} within {timeout}s:\n{tail}")
        time.sleep(poll)
