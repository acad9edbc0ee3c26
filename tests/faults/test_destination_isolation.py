"""One slow destination never holds the others, with real PostgreSQL servers.

Pipeline 1 writes the synthetic source to destination A (behind the fault
proxy, listed first) and destination B; pipeline 2 writes another source to
B only. While A is refused, black-holed (from the start or mid-run) or slowed
by latency, B's writes and the source must keep their pace; afterwards every
table is exact on A and B, nothing is parked, A's queue drains, and no change
was applied to A out of order (a trigger records any update that goes back
to an older version of a row; the position guard is off).
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

import psycopg2
import pytest

from compute.dlq.manager import DLQManager
from compute.engine.pipeline import Pipeline
from compute.sources.synthetic_source import DEFAULT_TABLES, SyntheticSource
from destinations.postgresql.destination import PostgreSQLDestination
from tests.builders import dlq_config, pipelines_toml, postgresql_destination
from tests.fault_proxy import FaultProxy, fault_proxy
from tests.faults.helpers import (
    assert_exact_state,
    assert_nothing_left,
    create_tables,
    dlq_counts,
    engine_env,
    queue_leftovers,
    start_engine,
)
from tests.pg_state import differences, fetch_state
from tests.servers import PostgresServer
from tests.waiting import wait_until

RATE = 800  # events per second, each source
BATCH = 40
DEADLINE_MS = 1000
WRITE_TIMEOUT = 8.0  # A's driver bound: far above the deadline, as in production
OTHER_TABLES = ("public.ledger",)
# Longest pause allowed in B's writes while A fails: a few batch intervals
# plus scheduling on a loaded 2-core machine; the benchmark measures it.
MAX_GAP = 2.5


@pytest.fixture
def servers(postgres_server_factory) -> tuple[PostgresServer, PostgresServer]:
    return postgres_server_factory(), postgres_server_factory()


@pytest.fixture
def proxy(servers: tuple[PostgresServer, PostgresServer]) -> Iterator[FaultProxy]:
    a, _ = servers
    with fault_proxy(a.host, a.port) as p:
        yield p


def add_order_trigger(dsn: str, tables: tuple[str, ...]) -> None:
    """Record every update that takes a row back to an older change.

    ``updated_at`` is the change's commit time in the synthetic source: it
    grows with every transaction (``version`` restarts after a delete).
    """
    conn = psycopg2.connect(dsn)
    conn.autocommit = True
    with conn.cursor() as cur:
        cur.execute("CREATE TABLE public.out_of_order (tbl text, old timestamptz, new timestamptz)")
        cur.execute(
            """CREATE FUNCTION public.check_order() RETURNS trigger AS $$
            BEGIN
              IF NEW.updated_at < OLD.updated_at THEN
                INSERT INTO public.out_of_order
                VALUES (TG_TABLE_NAME, OLD.updated_at, NEW.updated_at);
              END IF;
              RETURN NEW;
            END $$ LANGUAGE plpgsql"""
        )
        for table in tables:
            cur.execute(
                f"CREATE TRIGGER check_order BEFORE UPDATE ON {table} "
                "FOR EACH ROW EXECUTE FUNCTION public.check_order()"
            )
    conn.close()


def out_of_order(dsn: str) -> list[tuple[object, ...]]:
    conn = psycopg2.connect(dsn)
    with conn.cursor() as cur:
        cur.execute("SELECT tbl, old, new FROM public.out_of_order")
        rows = cur.fetchall()
    conn.close()
    return rows


@dataclass
class Progress:
    """Samples a counter; the longest time it stood still within a window."""

    read: Callable[[], int]
    samples: list[tuple[float, int]] = field(default_factory=list)
    _stop: threading.Event = field(default_factory=threading.Event)

    def start(self) -> Progress:
        threading.Thread(target=self._run, daemon=True).start()
        return self

    def _run(self) -> None:
        while not self._stop.wait(0.02):
            self.samples.append((time.monotonic(), self.read()))

    def stop(self) -> None:
        self._stop.set()

    def longest_gap(self, start: float, end: float) -> float:
        last_change, last_value, gap = start, None, 0.0
        for at, value in self.samples:
            if at < start or at > end:
                continue
            if last_value is not None and value != last_value:
                gap = max(gap, at - last_change)
                last_change = at
            last_value = value
        return max(gap, end - last_change)

    def moved(self, start: float, end: float) -> int:
        inside = [v for at, v in self.samples if start <= at <= end]
        return inside[-1] - inside[0] if inside else 0


def run_with_fault(
    tmp_path: Path,
    servers: tuple[PostgresServer, PostgresServer],
    proxy: FaultProxy,
    begin_fault: Callable[[], None],
    end_fault: Callable[[], None],
    *,
    fault_from_start: bool = False,
    fault_seconds: float = 6.0,
) -> None:
    a_server, b_server = servers
    total = int(RATE * (fault_seconds + 6))
    main = SyntheticSource(
        "1", None, total_events=total, seed=5, keys_per_table=60, events_per_second=RATE
    )
    other = SyntheticSource(
        "2",
        None,
        tables=OTHER_TABLES,
        total_events=total,
        seed=6,
        keys_per_table=60,
        events_per_second=RATE,
    )
    create_tables(a_server.dsn, main)
    create_tables(b_server.dsn, main)
    create_tables(b_server.dsn, other)
    add_order_trigger(a_server.dsn, DEFAULT_TABLES)
    a = PostgreSQLDestination(
        "A", "PG-A", proxy.dsn_for(a_server.dsn), connect_timeout=2, write_timeout=WRITE_TIMEOUT
    )
    b = PostgreSQLDestination("B", "PG-B", b_server.dsn, write_timeout=WRITE_TIMEOUT)
    b_other = PostgreSQLDestination("B2", "PG-B", b_server.dsn, write_timeout=WRITE_TIMEOUT)
    config = dlq_config(
        tmp_path,
        live_write_deadline_ms=DEADLINE_MS,
        check_interval=0.5,
        backoff_base_ms=50,
        backoff_max_ms=500,
        batch_size=200,
    )
    dlq = DLQManager(config)
    first = Pipeline("p1", main, [a, b], dlq, config, batch_size=BATCH, probe_timeout=1.5)
    second = Pipeline("p2", other, [b_other], dlq, config, batch_size=BATCH, probe_timeout=1.5)
    b_progress = Progress(lambda: first.handler.counters.written["B"]).start()
    source_progress = Progress(lambda: first.stats.events).start()
    other_progress = Progress(lambda: second.handler.counters.written["B2"]).start()
    try:
        if fault_from_start:
            begin_fault()
        first.start()
        second.start()
        if not fault_from_start:
            wait_until(lambda: first.handler.counters.written["A"] > 2 * BATCH, 30, "A live")
            begin_fault()
        fault_began = time.monotonic()
        time.sleep(fault_seconds)
        fault_ended = time.monotonic()
        # During the fault, A turned to store-and-forward: it is unhealthy and queued.
        assert first.health["A"].snapshot().state.value == "unhealthy"
        assert first.handler.counters.queued["A"] > 0
        end_fault()
        window = (fault_began + 0.5, fault_ended)
        gap = b_progress.longest_gap(*window)
        expected = RATE * (window[1] - window[0])
        b_ratio = b_progress.moved(*window) / expected
        source_ratio = source_progress.moved(*window) / expected
        other_ratio = other_progress.moved(*window) / expected
        print(
            f"B: gap {gap:.2f}s ratio {b_ratio:.2f}; source ratio {source_ratio:.2f}; "
            f"second pipeline ratio {other_ratio:.2f}"
        )
        assert gap <= MAX_GAP, f"B's writes stood still for {gap:.2f}s while A failed"
        assert b_ratio >= 0.8, f"B wrote {b_ratio:.2f} of the source's pace"
        assert source_ratio >= 0.8, f"the source read {source_ratio:.2f} of its pace"
        assert other_ratio >= 0.8
        wait_until(
            lambda: first.finished.is_set() and second.finished.is_set(), 120, "both sources"
        )
        wait_until(lambda: not dlq_counts(dlq)[0], 120, "A's queues to drain")
    finally:
        for progress in (b_progress, source_progress, other_progress):
            progress.stop()
        end_fault()
        first.stop()
        second.stop()
        first.close()
        second.close()
        dlq_state = dlq_counts(dlq)
        dlq.close()
    assert_nothing_left(*dlq_state)
    assert_exact_state(a_server.dsn, main)
    assert_exact_state(b_server.dsn, main)
    assert not differences(other.expected_state(), fetch_state(b_server.dsn, OTHER_TABLES))
    assert out_of_order(a_server.dsn) == []


def test_a_refused(tmp_path: Path, servers, proxy: FaultProxy) -> None:
    run_with_fault(tmp_path, servers, proxy, proxy.reset, proxy.pass_through)


def test_a_black_holed_from_the_start(tmp_path: Path, servers, proxy: FaultProxy) -> None:
    run_with_fault(
        tmp_path, servers, proxy, proxy.blackhole, proxy.pass_through, fault_from_start=True
    )


def test_a_black_holed_mid_run(tmp_path: Path, servers, proxy: FaultProxy) -> None:
    run_with_fault(tmp_path, servers, proxy, proxy.blackhole, proxy.pass_through)


def test_a_slowed_by_latency(tmp_path: Path, servers, proxy: FaultProxy) -> None:
    """Each write to A takes seconds but succeeds: A is behind, never out of order."""
    run_with_fault(tmp_path, servers, proxy, lambda: proxy.set_latency(400), proxy.pass_through)


def two_destinations(events: int, rate: int) -> str:
    """``pipelines.toml``: one synthetic source to PostgreSQL A and B."""
    source = {
        "id": "1",
        "type": "synthetic",
        "total_events": events,
        "seed": 9,
        "keys_per_table": 50,
        "events_per_second": rate,
    }
    a = postgresql_destination("TEST_A_DSN", "PG-A", "A") | {
        "connect_timeout": 2,
        "write_timeout": 30,
    }
    b = postgresql_destination("TEST_B_DSN", "PG-B", "B")
    return pipelines_toml(source, [a, b], name="isolation", batch_size=40, retry="aggressive")


@pytest.mark.timeout(300)
def test_kill_9_while_a_write_is_in_flight_past_the_deadline(
    tmp_path: Path, servers, proxy: FaultProxy
) -> None:
    """The stuck write's events were queued at the deadline: a crash then loses nothing."""
    a_server, b_server = servers
    events, rate = 6000, 600
    source = SyntheticSource("1", None, total_events=events, seed=9, keys_per_table=50)
    create_tables(a_server.dsn, source)
    create_tables(b_server.dsn, source)
    add_order_trigger(a_server.dsn, DEFAULT_TABLES)
    (tmp_path / "pipelines.toml").write_text(two_destinations(events, rate))
    env = engine_env(
        tmp_path,
        b_server.dsn,
        TEST_A_DSN=proxy.dsn_for(a_server.dsn),
        TEST_B_DSN=b_server.dsn,
        DLQ_LIVE_WRITE_DEADLINE_MS=str(DEADLINE_MS),
    )
    log = tmp_path / "engine.log"
    engine = start_engine(env, log)
    try:
        wait_until(lambda: row_count(a_server.dsn) > 40, 60, "live writes to A")
        proxy.blackhole()
        # Past the deadline: A turned to store-and-forward with its write still in flight.
        wait_until(
            lambda: "did not finish within" in log.read_text(errors="replace"),
            30,
            "A's write to pass its deadline",
        )
        time.sleep(1.0)  # later batches for A go to its queue meanwhile
        engine.kill()
        engine.wait()
        # The engine's host is gone: once the network is back, the server sees
        # its connection reset (and rolls back whatever the write had sent).
        proxy.pass_through()
        proxy.reset_all()
        engine = start_engine(env, log)
        assert engine.wait(timeout=180) == 0, log.read_text(errors="replace")[-4000:]
    finally:
        proxy.pass_through()
        if engine.poll() is None:
            engine.kill()
            engine.wait()
    assert_exact_state(a_server.dsn, source)
    assert_exact_state(b_server.dsn, source)
    assert_nothing_left(*queue_leftovers(tmp_path / "dlq"))
    # No order check here: after a crash the source re-sends what it had not
    # acknowledged, and A's queue may already hold some of it, so A sees those
    # changes twice (at-least-once); a row can step back to one of them before
    # the later changes are applied again. The position guard closes that gap.


def row_count(dsn: str) -> int:
    conn = psycopg2.connect(dsn)
    with conn.cursor() as cur:
        cur.execute(
            "SELECT (SELECT count(*) FROM public.users) + (SELECT count(*) FROM public.orders)"
        )
        (count,) = cur.fetchone()
    conn.close()
    return int(count)
