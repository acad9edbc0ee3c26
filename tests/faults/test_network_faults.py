"""Network faults between the engine and a real PostgreSQL, through the fault proxy.

An in-process pipeline (real synthetic source, real DLQ on disk, real
``PostgreSQLDestination``) writes through ``FaultProxy``; the tests switch
the proxy to latency, mid-statement resets and a blackhole during live
traffic and replay, then check the tables against the source's final state,
and that nothing was parked or left queued.
"""

from __future__ import annotations

import logging
import random
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import psycopg2
import pytest

from compute.dlq.manager import DLQManager
from compute.engine.pipeline import Pipeline
from compute.sources.synthetic_source import SyntheticSource
from destinations.errors import DestinationTimeoutError
from destinations.postgresql.destination import PostgreSQLDestination
from destinations.records import ChangeRecord, Operation, SourcePosition
from tests.builders import dlq_config
from tests.fault_proxy import FaultProxy, fault_proxy
from tests.faults.helpers import (
    assert_exact_state,
    assert_nothing_left,
    create_tables,
    dlq_counts,
)
from tests.servers import PostgresServer
from tests.waiting import wait_until

# Timeouts the destination and the worker are configured with; bounds in the
# assertions are built from these, never from how fast the machine is.
CONNECT_TIMEOUT = 2.0  # libpq's minimum
WRITE_TIMEOUT = 2.0
PROBE_TIMEOUT = 1.5
CHECK_INTERVAL = 0.5
BACKOFF_MAX_MS = 1000
SLACK = 5.0  # scheduling on a shared 2-core machine


@pytest.fixture
def server(postgres_server_factory) -> PostgresServer:
    return postgres_server_factory()


@pytest.fixture
def proxy(server: PostgresServer) -> Iterator[FaultProxy]:
    with fault_proxy(server.host, server.port) as p:
        yield p


def destination_via(proxy: FaultProxy, server: PostgresServer) -> PostgreSQLDestination:
    return PostgreSQLDestination(
        "1",
        "PG-behind-proxy",
        proxy.dsn_for(server.dsn),
        connect_timeout=CONNECT_TIMEOUT,
        write_timeout=WRITE_TIMEOUT,
    )


def start_pipeline(
    tmp_path: Path, source: SyntheticSource, destination: PostgreSQLDestination
) -> tuple[Pipeline, DLQManager]:
    config = dlq_config(
        tmp_path,
        check_interval=CHECK_INTERVAL,
        backoff_base_ms=50,
        backoff_max_ms=BACKOFF_MAX_MS,
        batch_size=20,
    )
    dlq = DLQManager(config)
    pipeline = Pipeline(
        "faults",
        source,
        [destination],
        dlq,
        config,
        batch_size=25,
        probe_timeout=PROBE_TIMEOUT,
    )
    pipeline.start()
    return pipeline, dlq


def finish(pipeline: Pipeline, dlq: DLQManager, timeout: float = 120.0) -> None:
    """Wait until the source is delivered and every queue drained, then stop."""
    try:
        wait_until(pipeline.finished.is_set, timeout, "the source to be delivered")
        wait_until(lambda: not dlq_counts(dlq)[0], timeout, "the DLQ to drain")
    finally:
        pipeline.stop()
        pipeline.close()


def make_t(dsn: str) -> Any:
    conn = psycopg2.connect(dsn)
    conn.autocommit = True
    with conn.cursor() as cur:
        cur.execute("CREATE TABLE public.t (id bigint PRIMARY KEY, v bigint)")
    return conn


def test_a_write_on_a_mute_connection_is_cut_and_nothing_is_lost(
    server: PostgresServer, proxy: FaultProxy, caplog: pytest.LogCaptureFixture
) -> None:
    """A blackhole under a kept connection: the write ends, transient, within its bounds."""
    caplog.set_level(logging.INFO, logger="destinations")
    setup = make_t(server.dsn)
    destination = destination_via(proxy, server)
    destination.write_batch("public.t", [_row(1, 1)])  # the connection is now kept
    proxy.blackhole()
    outcome: list[BaseException | int] = []
    writer = threading.Thread(
        target=lambda: outcome.append(_attempt(destination, [_row(2, 1)])), daemon=True
    )
    writer.start()
    # The cut on the kept connection, then one retry on a fresh connection
    # whose login the blackhole swallows (connect_timeout, twice at most with
    # libpq's SSL fallback).
    writer.join(WRITE_TIMEOUT + 2 * CONNECT_TIMEOUT + SLACK)
    assert not writer.is_alive(), "the write is still blocked on a mute connection"
    assert destination._watchdog.fired == 1
    assert "write_timeout=2s; connection dropped" in caplog.text
    error = outcome[0]
    assert isinstance(error, BaseException), outcome
    assert destination.classify_error(error).is_transient, error
    proxy.pass_through()
    assert destination.write_batch("public.t", [_row(2, 1)]) == 1
    with setup.cursor() as cur:
        cur.execute("SELECT id, v FROM public.t ORDER BY id")
        assert cur.fetchall() == [(1, 1), (2, 1)]
    setup.close()
    destination.close()


def test_a_write_stuck_on_a_lock_is_cut_at_write_timeout(server: PostgresServer) -> None:
    """Server-side waits count too: the error names the bound and is transient."""
    setup = make_t(server.dsn)
    with setup.cursor() as cur:
        cur.execute("INSERT INTO public.t VALUES (1, 0)")
    holder = psycopg2.connect(server.dsn)
    with holder.cursor() as cur:
        cur.execute("SELECT * FROM public.t WHERE id = 1 FOR UPDATE")  # open transaction
    destination = PostgreSQLDestination("1", "PG", server.dsn, write_timeout=WRITE_TIMEOUT)
    with pytest.raises(DestinationTimeoutError, match=r"write_timeout=2s; connection dropped"):
        destination.write_batch("public.t", [_row(1, 5)])
    holder.rollback()
    assert destination.write_batch("public.t", [_row(1, 5)]) == 1
    with setup.cursor() as cur:
        cur.execute("SELECT v FROM public.t WHERE id = 1")
        assert cur.fetchone() == (5,)
    holder.close()
    setup.close()
    destination.close()


# Threads whose number is bounded by their own design, not by the probes under test.
_BOUNDED_ELSEWHERE = ("dlq-fsync", "fault-proxy")


def test_blackhole_during_traffic_and_replay(
    tmp_path: Path, server: PostgresServer, proxy: FaultProxy
) -> None:
    source = SyntheticSource(
        "1", None, total_events=3000, seed=21, keys_per_table=30, events_per_second=400
    )
    create_tables(server.dsn, source)
    destination = destination_via(proxy, server)
    pipeline, dlq = start_pipeline(tmp_path, source, destination)
    try:
        wait_until(lambda: pipeline.handler.counters.written["1"] > 100, 60, "live writes")
        # Threads left by earlier tests in this process may end or start meanwhile:
        # count only the threads that appear during the blackhole, by identity, and
        # not those bounded elsewhere (the DLQ's fsync pool starts with the first
        # queued writes; the proxy is the test's own).
        baseline = set(threading.enumerate())
        baseline_threads = len(baseline)
        proxy.blackhole()
        # Traffic keeps coming: it must pile up in the DLQ, not in threads.
        wait_until(lambda: bool(dlq_counts(dlq)[0]), 60, "events queued during the blackhole")
        max_threads, max_connections = baseline_threads, 0
        newest: list[str] = []
        for _ in range(15):
            started = time.monotonic()
            assert destination.test_connection(1.0) is False
            took = time.monotonic() - started
            assert took < 1.0 + 1.0, f"test_connection(1.0) took {took:.2f}s"
            new = [
                t
                for t in threading.enumerate()
                if t not in baseline and not t.name.startswith(_BOUNDED_ELSEWHERE)
            ]
            if len(new) > max_threads - baseline_threads:
                newest = sorted(t.name for t in new)
            max_threads = max(max_threads, baseline_threads + len(new))
            max_connections = max(max_connections, proxy.live_connections)
        print(
            f"during the blackhole: threads {baseline_threads} -> max {max_threads}, "
            f"proxy connections max {max_connections}"
        )
        # At most one probe in flight per prober (the test's, the worker's),
        # plus the pipeline's own write or login and the watchdog thread.
        assert max_threads <= baseline_threads + 4, newest
        assert max_connections <= 4
        replayed_before = pipeline.worker.stats.replayed
        proxy.pass_through()
        cleared = time.monotonic()
        # Replay must resume within: the probe in flight when the fault
        # cleared (its login is lost in the blackhole, bounded by the probe
        # timeout), one check interval, the queue's backoff cap.
        bound = PROBE_TIMEOUT + CHECK_INTERVAL + BACKOFF_MAX_MS / 1000 + SLACK
        wait_until(lambda: pipeline.worker.stats.replayed > replayed_before, 60, "replay to resume")
        resumed_after = time.monotonic() - cleared
        print(f"replay resumed {resumed_after:.2f}s after the blackhole cleared (bound {bound}s)")
        assert resumed_after <= bound
        finish(pipeline, dlq)
        assert_exact_state(server.dsn, source)
        assert_nothing_left(*dlq_counts(dlq))
    finally:
        pipeline.stop()
        dlq.close()


def test_latency_and_mid_statement_resets_during_traffic_and_replay(
    tmp_path: Path, server: PostgresServer, proxy: FaultProxy
) -> None:
    """Random latency and RSTs (now, or after a few bytes of a statement): the tables end exact."""
    rng = random.Random(77)
    source = SyntheticSource(
        "1", None, total_events=4000, seed=22, keys_per_table=25, events_per_second=500
    )
    create_tables(server.dsn, source)
    destination = destination_via(proxy, server)
    pipeline, dlq = start_pipeline(tmp_path, source, destination)
    try:
        wait_until(lambda: pipeline.handler.counters.written["1"] > 50, 60, "live writes")
        deadline = time.monotonic() + 8
        faults = 0
        while time.monotonic() < deadline:
            choice = rng.random()
            if choice < 0.3:
                proxy.set_latency(rng.uniform(5, 80))
            elif choice < 0.6:
                proxy.reset(after_bytes=rng.randint(1, 4000))
            elif choice < 0.8:
                proxy.reset()
            else:
                proxy.pass_through()
            faults += 1
            time.sleep(rng.uniform(0.1, 0.6))
        proxy.pass_through()
        print(f"faults={faults} mid-stream resets={proxy.resets_mid_stream}")
        assert proxy.resets_mid_stream > 0
        finish(pipeline, dlq)
        assert pipeline.worker.stats.replayed > 0 or pipeline.handler.counters.retries["1"] > 0
        assert_exact_state(server.dsn, source)
        assert_nothing_left(*dlq_counts(dlq))
    finally:
        pipeline.stop()
        dlq.close()


def _row(key: int, v: int) -> ChangeRecord:
    return ChangeRecord(
        "public.t", Operation.INSERT, {"id": key}, {"id": key, "v": v}, SourcePosition(v, 0)
    )


def _attempt(
    destination: PostgreSQLDestination, records: list[ChangeRecord]
) -> BaseException | int:
    try:
        return destination.write_batch("public.t", records)
    except BaseException as error:
        return error
