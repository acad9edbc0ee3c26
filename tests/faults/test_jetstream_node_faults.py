"""NATS node faults under a real ``rosetta run`` on the JetStream backend: nothing lost, it goes on.

One 3-node cluster for the module (nodes killed by a test are started again
after it) and one PostgreSQL destination (a database per test); the source
is synthetic, so every test ends by comparing the tables with the source's
final state and counting, from the stream itself, what is left queued or
parked (nothing).

* a minority (one node, the queues stream's leader) killed while every event
  is queued (destination down): enqueues go on, the queue keeps growing;
* the leader killed while a queue of a few hundred events is replayed;
* quorum lost (two nodes stopped): the pipeline goes to backpressure
  (``store_unavailable``), its source position stops, nothing is dropped
  even with ``DLQ_WHEN_FULL=drop_newest``, and it resumes when they return;
* the engine cut off from every node by blackholing proxies for longer than
  ``DLQ_NATS_TIMEOUT``: the same backpressure, then it reconnects and resumes.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import re
import signal
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import psycopg2
import pytest

from compute.dlq.manager import DLQManager
from compute.errors import DLQStorageError
from compute.sources.synthetic_source import SyntheticSource
from compute.storage.jetstream.bridge import StoreUnavailable
from config.dlq_config import DLQConfig
from config.nats_config import Backend, NatsConfig
from tests.fault_proxy import FaultProxy
from tests.faults.helpers import (
    assert_exact_state,
    assert_nothing_left,
    create_tables,
    dlq_counts,
    engine_env,
    start_engine,
    write_pipelines,
)
from tests.nats_cluster import NatsCluster, nats_cluster
from tests.servers import PostgresCluster, PostgresServer
from tests.waiting import wait_for_log_line, wait_until

KEYS = 40
BACKPRESSURE = "limit=store_unavailable"


@pytest.fixture(scope="module")
def cluster() -> Iterator[NatsCluster]:
    with nats_cluster() as started:
        yield started


@pytest.fixture(autouse=True)
def every_node_back(cluster: NatsCluster) -> Iterator[None]:
    """A node a test stopped is started again for the next one."""
    yield
    if not all(node.running for node in cluster.nodes):
        for node in cluster.nodes:
            node.start()
        cluster.wait_ready()


@pytest.fixture(scope="module")
def destination(postgres_cluster: PostgresCluster) -> PostgresServer:
    return postgres_cluster.new_server()


class Run:
    """One ``rosetta run`` on the cluster, a database of its own and a stream prefix of its own."""

    def __init__(
        self,
        tmp_path: Path,
        server: PostgresServer,
        urls: list[str],
        *,
        events: int,
        rate: float,
        **settings: str,
    ) -> None:
        self.tmp_path = tmp_path
        self.server = server
        self.urls = urls
        self.prefix = "NODES" + re.sub(r"\W", "", tmp_path.name)[-20:].upper()
        database = self.prefix.lower()
        _sql(server.dsn, f"CREATE DATABASE {database}")
        self.dsn = server.dsn.replace("dbname=postgres", f"dbname={database}")
        seed = 7
        self.source = SyntheticSource(
            "1", None, total_events=events, seed=seed, keys_per_table=KEYS
        )
        self.events = events
        create_tables(self.dsn, self.source)
        write_pipelines(tmp_path / "pipelines.toml", events=events, rate=rate, seed=seed, keys=KEYS)
        self.env = engine_env(
            tmp_path,
            self.dsn,
            DLQ_BACKEND="jetstream",
            DLQ_NATS_URLS=",".join(urls),
            DLQ_NATS_STREAM_PREFIX=self.prefix,
            DLQ_ENGINE_ID="faults",
            DLQ_PROGRESS_INTERVAL="0.5",
            **({"DLQ_NATS_TIMEOUT": "2"} | settings),  # a lost request stalls 2 x this
        )
        self.log = tmp_path / "engine.log"
        self.engine: subprocess.Popen[bytes] | None = None
        self.last_queued = 0

    def start(self) -> None:
        self.engine = start_engine(self.env, self.log)
        wait_for_log_line(self.log, "pipeline taken: pipeline=faults", 30)

    def text(self) -> str:
        return self.log.read_text(errors="replace")

    def counts(self) -> tuple[dict[str, int], dict[str, int]]:
        """(queued, parked) per queue, read from the streams by an offline manager.

        Right after a node dies the stream may have no leader for a moment: a
        manager whose rescan was skipped then lists no queue, which would read
        as "nothing queued", so such a count is taken again.
        """
        config = DLQConfig(
            base_path=self.tmp_path / "offline",
            min_free_disk_mb=0,
            backend=Backend.JETSTREAM,
            nats=NatsConfig(urls=tuple(self.urls), stream_prefix=self.prefix, request_timeout=2),
        )
        deadline = time.monotonic() + 30
        while True:
            with _skipped_rescans() as skipped:
                try:
                    with DLQManager(config, background=False) as dlq:
                        counted = dlq_counts(dlq)
                except (DLQStorageError, StoreUnavailable) as error:  # no stream leader yet
                    skipped.append(repr(error))
            if not skipped:
                return counted
            assert time.monotonic() < deadline, f"JetStream did not answer a count: {skipped}"
            time.sleep(0.2)

    def queued(self) -> int:
        self.last_queued = sum(self.counts()[0].values())
        return self.last_queued

    def wait_all_queued(self) -> None:
        """Every event of the source in the queues (the destination is down): none lost.

        A batch whose publish lost its answer, landed, and was sent again by the
        lane (new message ids, so no deduplication) is queued twice: at-least-once,
        applied idempotently; the tables' exact state at the end is the proof.
        """
        try:
            wait_until(lambda: self.queued() >= self.events, 30, f"{self.events} events queued")
        except AssertionError as error:
            raise AssertionError(f"{error}; {self.last_queued} were") from None
        print(f"queued {self.last_queued} for {self.events} events")

    def finish(self) -> None:
        """Drained and exact: stop the engine (SIGTERM; it does not end by itself here)."""
        wait_until(lambda: self.queued() == 0, 60, "the queues to drain")
        assert_exact_state(self.dsn, self.source)
        self.stop()
        assert_nothing_left(*self.counts())
        text = self.text()
        assert "Traceback" not in text and "pipeline failed" not in text, text[-4000:]
        assert "dropped newest" not in text, "a fault made the DLQ drop events"

    def stop(self) -> None:
        if self.engine is not None and self.engine.poll() is None:
            self.engine.send_signal(signal.SIGTERM)
            try:
                assert self.engine.wait(30) == 0, self.text()[-4000:]
            finally:
                self.kill()

    def kill(self) -> None:
        if self.engine is not None and self.engine.poll() is None:
            self.engine.kill()
            self.engine.wait()


@pytest.fixture
def runs() -> Iterator[list[Run]]:
    started: list[Run] = []
    yield started
    for run in started:
        run.kill()


@contextlib.contextmanager
def _skipped_rescans() -> Iterator[list[str]]:
    """The store's "rescan skipped" warnings logged meanwhile (its queue list is then stale)."""
    skipped: list[str] = []

    class Catch(logging.Handler):
        def emit(self, record: logging.LogRecord) -> None:
            if "rescan skipped" in record.getMessage():
                skipped.append(record.getMessage())

    handler = Catch(logging.WARNING)
    store_logger = logging.getLogger("compute.storage.jetstream.store")
    store_logger.addHandler(handler)
    try:
        yield skipped
    finally:
        store_logger.removeHandler(handler)


def _sql(dsn: str, statement: str) -> None:
    conn = psycopg2.connect(dsn)
    conn.autocommit = True
    try:
        with conn.cursor() as cur:
            cur.execute(statement)
    finally:
        conn.close()


def stream_leader(cluster: NatsCluster, prefix: str) -> int:
    """The index of the node leading the queues stream (the one whose loss matters most)."""
    import nats

    async def ask() -> str:
        nc = await nats.connect(servers=cluster.live_urls(), max_reconnect_attempts=0)
        try:
            info = await nc.jetstream(timeout=5).stream_info(f"{prefix}_QUEUES")
            return info.cluster.leader
        finally:
            await nc.close()

    name = asyncio.run(ask())
    return next(i for i, node in enumerate(cluster.nodes) if node.name == name)


def test_a_minority_killed_while_every_event_is_queued_loses_nothing(
    tmp_path: Path, cluster: NatsCluster, destination: PostgresServer, runs: list[Run]
) -> None:
    run = Run(tmp_path, destination, cluster.urls, events=600, rate=150)
    runs.append(run)
    destination.stop("immediate")
    try:
        run.start()
        wait_until(lambda: run.queued() >= 100, 30, "100 events queued")
        leader = stream_leader(cluster, run.prefix)
        cluster.nodes[leader].kill()
        assert run.last_queued < run.events - 150, "the source was read before the kill"
        run.wait_all_queued()  # the rest queued with the node dead
        cluster.nodes[leader].start()
    finally:
        destination.start()
    run.finish()


SLOW_STATEMENTS = """
CREATE FUNCTION slow_{table}() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN PERFORM pg_sleep(0.1); RETURN NULL; END $$;
CREATE TRIGGER slow_write AFTER INSERT OR UPDATE OR DELETE ON {table}
FOR EACH STATEMENT EXECUTE FUNCTION slow_{table}();
"""


def test_the_leader_killed_during_replay_replay_goes_on(
    tmp_path: Path, cluster: NatsCluster, destination: PostgresServer, runs: list[Run]
) -> None:
    run = Run(tmp_path, destination, cluster.urls, events=300, rate=1000, DLQ_BATCH_SIZE="10")
    runs.append(run)
    for table in ("users", "orders", "accounts"):  # replay takes a few seconds: time to kill
        _sql(run.dsn, SLOW_STATEMENTS.format(table=table))
    destination.stop("immediate")
    try:
        run.start()
        run.wait_all_queued()
    finally:
        destination.start()
    wait_until(lambda: run.queued() < run.events, 30, "replay to start")
    leader = stream_leader(cluster, run.prefix)
    cluster.nodes[leader].kill()
    assert run.last_queued > 50, f"replay nearly done before the kill ({run.last_queued} left)"
    run.finish()
    assert "Successfully replayed" in run.text()


def test_quorum_lost_is_backpressure_never_a_drop_and_it_resumes(
    tmp_path: Path, cluster: NatsCluster, destination: PostgresServer, runs: list[Run]
) -> None:
    run = Run(
        tmp_path,
        destination,
        cluster.urls,
        events=600,
        rate=150,
        DLQ_WHEN_FULL="drop_newest",
        DLQ_NATS_TIMEOUT="1",
        DLQ_LEASE_TTL="30",  # the outage is shorter: the pipeline stays ours throughout
    )
    runs.append(run)
    destination.stop("immediate")
    try:
        run.start()
        wait_until(lambda: run.queued() >= 100, 30, "100 events queued")
        cluster.nodes[1].stop()
        cluster.nodes[2].stop()
        assert_paused(run)
        cluster.nodes[1].start()
        cluster.nodes[2].start()
        wait_for_log_line(run.log, "backpressure over", 30)
        run.wait_all_queued()
    finally:
        destination.start()
    run.finish()


def assert_paused(run: Run) -> None:
    """In backpressure on store_unavailable: the source position stands still, and once the
    read-ahead is full (a few batches read as it began) nothing more is read or dropped."""
    wait_for_log_line(run.log, BACKPRESSURE, 15)
    mark = len(run.text())

    def progress() -> list[str]:
        return [line for line in run.text()[mark:].splitlines() if "progress pipeline=" in line]

    def settled() -> list[str]:
        lines = progress()
        first_idle = next((i for i, line in enumerate(lines) if " read=0 " in line), len(lines))
        return lines[first_idle:]

    wait_until(lambda: len(settled()) >= 4, 30, "4 progress lines reading nothing")
    lines = progress()
    positions = {re.search(r" position=(\S+)", line).group(1) for line in lines}  # type: ignore[union-attr]
    assert len(positions) == 1, f"the source position moved in backpressure: {lines}"
    assert all(" read=0 " in line for line in settled()), lines
    assert all(" dropped=0 " in line for line in lines), lines
    assert "backpressure over" not in run.text()[mark:]


def test_a_partition_from_every_node_is_backpressure_and_it_resumes(
    tmp_path: Path, cluster: NatsCluster, destination: PostgresServer, runs: list[Run]
) -> None:
    proxies = [FaultProxy("127.0.0.1", node.port).start() for node in cluster.nodes]
    try:
        urls = [f"nats://127.0.0.1:{proxy.port}" for proxy in proxies]
        run = Run(
            tmp_path,
            destination,
            urls,
            events=600,
            rate=150,
            DLQ_WHEN_FULL="drop_newest",
            DLQ_NATS_TIMEOUT="1",
            DLQ_LEASE_TTL="30",
        )
        runs.append(run)
        run.urls = cluster.urls  # the test counts past the proxies
        destination.stop("immediate")
        try:
            run.start()
            wait_until(lambda: run.queued() >= 100, 30, "100 events queued")
            for proxy in proxies:
                proxy.blackhole()
            assert_paused(run)
            for proxy in proxies:
                proxy.pass_through()
            wait_for_log_line(run.log, "backpressure over", 30)
            run.wait_all_queued()
        finally:
            destination.start()
        run.finish()
    finally:
        for proxy in proxies:
            proxy.stop()
