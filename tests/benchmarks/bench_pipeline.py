"""Pipeline benchmark against a real PostgreSQL it starts itself, side by side in one run.

    python tests/benchmarks/bench_pipeline.py [--replay-events 100000] [--replay-batch 5000]
        [--replay-rounds 3] [--overhead-events 30000] [--overhead-rounds 15] [--chunk 5]
        [--batch-size 500] [--recovery-rounds 5] [--recovery-default-rounds 3]
        [--default-outage 10] [--isolation-rounds 3] [--isolation-rate 3000]
        [--skip replay|overhead|recovery|recovery_default|isolation] [--profile]

Five groups of figures (medians over rounds), printed last as ``RESULT name=value``;
``--skip`` (repeatable) leaves a group out, e.g. only the default-settings recovery:
``--skip replay --skip overhead --skip recovery --skip isolation``.

* ``replay_vs_copy_upsert``: 100,000 changes to one table (45% inserts, 45%
  updates, 10% deletes, every change to a distinct key, so both sides apply
  exactly the same rows) are enqueued as ``DLQMessage``s in one queue (not
  timed); then ``DLQRecoveryWorker.run_once()`` with a real
  ``PostgreSQLDestination`` is timed until the queue is empty (DLQ read,
  decode, apply, ack; ``DLQ_BATCH_SIZE=--replay-batch``). Divided by a bare
  psycopg2 COPY into temp tables + ``DELETE ... USING`` + ``INSERT ... ON
  CONFLICT DO UPDATE`` of the same changes in one transaction (text
  formatting included), from the same starting table. Both sides are checked
  against the expected table content. The harness holds its workload as
  plain tuples (see ``Change``), out of the garbage collector's sight.
* ``dlq_overhead_ratio``: ``Pipeline.step()`` in a loop (DLQ enabled, destination
  healthy) over the synthetic source's batches, divided by the same batches
  written with ``destination.write_batch`` per table group directly (no DLQ).
  The batches are generated before the clock starts (the same list for both
  sides). Each side writes fresh tables of its own (schemas ``side_enabled``
  and ``side_disabled``, through the destination's ``table_map``), and the two
  sides take turns every ``--chunk`` batches (ABBA, the first side alternating
  per round), so that both see the same machine load; each side's tables are
  then compared with the source's expected state.
  Also shown: each side's time outside destination writes, in us per event
  (the pipeline's and the DLQ's own work, which the server's noise does not blur).
* ``recovery_start_seconds``: with ``DLQ_CHECK_INTERVAL=1``, a threaded pipeline
  runs, PostgreSQL is stopped (immediate) while events queue, then started
  again; the figure is the time from the first successful ``psycopg2.connect``
  to the first replayed batch committed (``write_batch`` returning in the
  recovery worker's thread). Each round then drains and checks the tables.
* ``recovery_start_default_seconds``: the same on DEFAULT settings
  (``DLQConfig()``: ``DLQ_CHECK_INTERVAL=30``, ``DLQ_CHECK_INTERVAL_MIN=1``;
  the pipeline's default batch size and probe timeout, the destination's
  default connect timeout) with a ``--default-outage`` (10 s) outage. The
  issue's target: <= 3 s (before the probe backoff: up to 30 s).
* ``isolation_other_destination_ratio`` and ``isolation_max_gap_seconds``:
  one pipeline writes a synthetic source (``--isolation-rate`` events/s,
  batches of 500) to destinations A (through the fault proxy, listed first)
  and B, with default settings; B's events/s over ``--isolation-seconds``
  with A black-holed mid-run (accepts, never answers), divided by the same
  with A healthy, and the longest pause in B's writes during the blackhole
  (medians over rounds; the worst round's pause is shown too).
"""

from __future__ import annotations

import argparse
import cProfile
import io
import logging
import pstats
import random
import shutil
import statistics
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Sequence
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from pathlib import Path
from typing import Any

import psycopg2

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

from compute.codec.failure_context import FailureContext  # noqa: E402
from compute.codec.message import DLQMessage  # noqa: E402
from compute.delivery.event_handler import group_by_table  # noqa: E402
from compute.delivery.health import DestinationHealth  # noqa: E402
from compute.dlq.manager import DLQManager  # noqa: E402
from compute.engine.pipeline import Pipeline  # noqa: E402
from compute.queue_id import QueueId  # noqa: E402
from compute.recovery.worker import DLQRecoveryWorker  # noqa: E402
from compute.sources.base import Source, SourceBatch  # noqa: E402
from compute.sources.synthetic_source import SyntheticSource, create_table_sql  # noqa: E402
from config.dlq_config import DLQConfig  # noqa: E402
from destinations.base import PreparedBatch  # noqa: E402
from destinations.postgresql.destination import PostgreSQLDestination  # noqa: E402
from destinations.records import ChangeRecord, Operation, SourcePosition  # noqa: E402
from tests.fault_proxy import FaultProxy  # noqa: E402
from tests.pg_state import differences, fetch_state  # noqa: E402
from tests.servers import PostgresServer, free_port  # noqa: E402

SOURCE_ID = "1"
DEST_ID = "1"

# ----------------------------------------------------------------- replay figure

REPLAY_TABLE = "bench_replay"
REPLAY_DDL = (
    f"CREATE TABLE {REPLAY_TABLE} (id bigint PRIMARY KEY, name text NOT NULL, "
    "balance numeric(14,2), updated_at timestamptz, version bigint)"
)
REPLAY_COLUMNS = ("id", "name", "balance", "updated_at", "version")
Row = tuple[int, str, Decimal, datetime, int]
# One change of the workload: (operation value, key, row after or None, commit, seq).
# Plain tuples, not ChangeRecords: tuples of plain values drop out of the
# garbage collector's sight, so the harness's 100k changes do not make every
# full collection during the timed replay scan them (an engine never holds
# its queued events in memory like this).
Change = tuple[str, int, Row | None, int, int]


def replay_workload(events: int, seed: int = 11) -> tuple[list[Row], list[Change]]:
    """(initial rows, changes in source order): distinct keys, 45/45/10 insert/update/delete."""
    rng = random.Random(seed)
    base = datetime(2024, 1, 1, tzinfo=UTC)

    def row(key: int, version: int) -> Row:
        balance = Decimal(rng.randrange(-(10**6), 10**9)).scaleb(-2)
        return (key, f"customer-{key}-v{version}", balance, base + timedelta(seconds=key), version)

    deletes = events // 10
    updates = (events - deletes) // 2
    inserts = events - deletes - updates
    existing = updates + deletes
    initial = [row(k, 1) for k in range(existing)]
    ops = (
        [(Operation.DELETE, k) for k in range(deletes)]
        + [(Operation.UPDATE, k) for k in range(deletes, existing)]
        + [(Operation.INSERT, k) for k in range(existing, existing + inserts)]
    )
    rng.shuffle(ops)
    changes: list[Change] = []
    for index, (op, key) in enumerate(ops):
        after = None if op is Operation.DELETE else row(key, 2)
        changes.append((op.value, key, after, 0x0100_0000 + (index // 4) * 0x100, index % 4))
    return initial, changes


def change_records(changes: Sequence[Change]) -> list[ChangeRecord]:
    """The changes as the ChangeRecords a source would have produced."""
    return [
        ChangeRecord(
            REPLAY_TABLE,
            Operation(op),
            {"id": key},
            None if row is None else dict(zip(REPLAY_COLUMNS, row, strict=True)),
            SourcePosition(commit, seq),
        )
        for op, key, row, commit, seq in changes
    ]


def expected_replay_rows(initial: list[Row], changes: list[Change]) -> list[tuple[Any, ...]]:
    rows: dict[int, tuple[Any, ...]] = {r[0]: r for r in initial}
    for _op, key, row, _commit, _seq in changes:
        if row is None:
            rows.pop(key, None)
        else:
            rows[key] = row
    return [rows[k] for k in sorted(rows)]


def copy_text(rows: Sequence[Sequence[Any]]) -> io.StringIO:
    # The benchmark's values need no escaping; this is the cheapest correct text.
    return io.StringIO(
        "".join(f"{r[0]}\t{r[1]}\t{r[2]}\t{r[3].isoformat()}\t{r[4]}\n" for r in rows)
    )


def reset_replay_table(dsn: str, initial: list[Row]) -> None:
    conn = psycopg2.connect(dsn)
    with conn, conn.cursor() as cur:
        cur.execute(f"DROP TABLE IF EXISTS {REPLAY_TABLE}")
        cur.execute(REPLAY_DDL)
        cur.copy_expert(f"COPY {REPLAY_TABLE} FROM STDIN", copy_text(initial))
    conn.autocommit = True
    with conn.cursor() as cur:
        cur.execute(f"VACUUM ANALYZE {REPLAY_TABLE}")
    conn.close()


def check_replay_table(dsn: str, expected: list[tuple[Any, ...]], side: str) -> None:
    conn = psycopg2.connect(dsn)
    with conn.cursor() as cur:
        cur.execute(f"SELECT {', '.join(REPLAY_COLUMNS)} FROM {REPLAY_TABLE} ORDER BY id")
        got = cur.fetchall()
    conn.close()
    if got != expected:
        pairs = zip(got, expected, strict=False)
        wrong = next(((g, e) for g, e in pairs if g != e), "in the row count")
        raise SystemExit(
            f"{side}: table content is wrong: {len(got)} rows, expected {len(expected)}; "
            f"first difference {wrong}"
        )


def run_copy_upsert(dsn: str, changes: list[Change]) -> float:
    """Bare COPY into temp tables + DELETE USING + INSERT ON CONFLICT, one transaction."""
    conn = psycopg2.connect(dsn)
    start = time.perf_counter()
    upserts = [row for _op, _key, row, _commit, _seq in changes if row is not None]
    deleted = [key for _op, key, row, _commit, _seq in changes if row is None]
    with conn, conn.cursor() as cur:
        cur.execute(
            f"CREATE TEMP TABLE stage ON COMMIT DROP AS SELECT * FROM {REPLAY_TABLE} WITH NO DATA;"
            "CREATE TEMP TABLE gone (id bigint) ON COMMIT DROP"
        )
        cur.copy_expert("COPY stage FROM STDIN", copy_text(upserts))
        cur.copy_expert("COPY gone FROM STDIN", io.StringIO("".join(f"{k}\n" for k in deleted)))
        cur.execute(
            f"DELETE FROM {REPLAY_TABLE} t USING gone g WHERE t.id = g.id;"
            f"INSERT INTO {REPLAY_TABLE} SELECT * FROM stage ON CONFLICT (id) DO UPDATE SET "
            "name = EXCLUDED.name, balance = EXCLUDED.balance, "
            "updated_at = EXCLUDED.updated_at, version = EXCLUDED.version"
        )
    elapsed = time.perf_counter() - start
    conn.close()
    return elapsed


def run_replay(
    dsn: str, workdir: Path, changes: list[Change], batch_size: int, profile: bool = False
) -> tuple[float, float]:
    """(enqueue seconds, replay seconds) through DLQManager + DLQRecoveryWorker.run_once.

    With ``profile``, the replay runs under cProfile (slower) and the top
    functions are printed.
    """
    config = DLQConfig(base_path=workdir / "dlq-replay", min_free_disk_mb=0, batch_size=batch_size)
    dlq = DLQManager(config)
    queue = QueueId(SOURCE_ID, REPLAY_TABLE, DEST_ID)
    failure = FailureContext(
        "OperationalError",
        "connection refused",
        code="08006",
        first_failure_at=1.0,
        last_failure_at=1.0,
    )
    start = time.perf_counter()
    for i in range(0, len(changes), 1000):
        records = change_records(changes[i : i + 1000])
        dlq.enqueue(queue, [DLQMessage.create(queue, r, failure) for r in records])
    del records
    enqueue_seconds = time.perf_counter() - start

    destination = PostgreSQLDestination(DEST_ID, "PG-Bench", dsn)
    # Connect and read the catalog first, as the baseline's connection is made
    # before its clock starts: a delete of a key that does not exist.
    destination.write_batch(
        REPLAY_TABLE,
        [ChangeRecord(REPLAY_TABLE, Operation.DELETE, {"id": -1}, None, SourcePosition(1))],
    )
    health = {destination.destination_id: DestinationHealth(destination)}
    worker = DLQRecoveryWorker(
        "bench", SOURCE_ID, [destination], health, dlq, config, probe_timeout=5.0
    )
    profiler = cProfile.Profile() if profile else None
    start = time.perf_counter()
    if profiler is not None:
        profiler.enable()
    passes = 0
    while dlq.has_messages(queue):
        passes += 1
        results = worker.run_once()
        if not any(r.replayed for r in results):
            raise SystemExit(f"replay pass {passes} made no progress: {results}")
    if profiler is not None:
        profiler.disable()
    replay_seconds = time.perf_counter() - start
    if profiler is not None:
        print(f"replay of {len(changes)} messages under cProfile: {replay_seconds:.2f}s")
        pstats.Stats(profiler, stream=sys.stdout).sort_stats("tottime").print_stats(15)
    stats = worker.stats
    if (stats.replayed, stats.failed, stats.parked, stats.expired) != (len(changes), 0, 0, 0):
        raise SystemExit(f"replay did not replay every message exactly once: {stats}")
    destination.close()
    dlq.close()
    return enqueue_seconds, replay_seconds


def bench_replay(
    dsn: str,
    workdir: Path,
    events: int,
    batch_size: int,
    rounds: int,
    profile: bool = False,
) -> dict[str, float]:
    initial, changes = replay_workload(events)
    expected = expected_replay_rows(initial, changes)
    results: dict[str, list[float]] = {"replay": [], "copy_upsert": [], "ratio": [], "enqueue": []}
    for r in range(rounds):
        sides = ["replay", "copy_upsert"] if r % 2 == 0 else ["copy_upsert", "replay"]
        rates: dict[str, float] = {}
        for side in sides:
            reset_replay_table(dsn, initial)
            if side == "replay":
                enqueue_s, seconds = run_replay(dsn, workdir / f"r{r}", changes, batch_size)
                results["enqueue"].append(events / enqueue_s)
            else:
                seconds = run_copy_upsert(dsn, changes)
            check_replay_table(dsn, expected, side)
            rates[side] = events / seconds
            results[side].append(rates[side])
        results["ratio"].append(rates["replay"] / rates["copy_upsert"])
        print(
            f"replay round {r + 1}: replay={rates['replay']:,.0f} rows/s "
            f"copy_upsert={rates['copy_upsert']:,.0f} rows/s "
            f"ratio={results['ratio'][-1]:.3f} (enqueue, untimed: {results['enqueue'][-1]:,.0f}/s)",
            flush=True,
        )
    if profile:  # an extra, uncounted replay: cProfile slows it down
        reset_replay_table(dsn, initial)
        run_replay(dsn, workdir / "profiled", changes, batch_size, profile=True)
        check_replay_table(dsn, expected, "profiled replay")
    return {name: statistics.median(values) for name, values in results.items()}


# -------------------------------------------------------------- overhead figure


class TimedDestination(PostgreSQLDestination):
    """A real PostgreSQLDestination that notes each commit: when, in which thread, how long.

    Used on every side, so that the time spent outside destination writes (the
    pipeline's and the DLQ's own work, free of the server's noise) can be shown.
    """

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.commits: list[tuple[float, str]] = []
        self.write_seconds = 0.0

    def write_batch(self, table: str, records: Sequence[ChangeRecord]) -> int:
        return self._timed(super().write_batch, table, records)

    def write_prepared(self, batch: PreparedBatch) -> int:
        # The recovery worker's path (on its writer thread, "dlq-recovery-...-writer").
        return self._timed(super().write_prepared, batch)

    def _timed(self, write: Callable[..., int], *args: Any) -> int:
        start = time.perf_counter()
        applied = write(*args)
        self.write_seconds += time.perf_counter() - start
        self.commits.append((time.time(), threading.current_thread().name))
        return applied


class BatchListSource(Source):
    """Serves batches generated beforehand, so both sides read exactly the same batches."""

    def __init__(self, source_id: str, batches: list[list[ChangeRecord]]) -> None:
        super().__init__(source_id)
        self._batches = batches
        self._next = 0

    def read(self, max_events: int) -> SourceBatch:
        if self._next >= len(self._batches):
            return SourceBatch([], "")
        batch = self._batches[self._next]
        assert len(batch) <= max_events
        self._next += 1
        return SourceBatch(batch, str(self._next))

    def acknowledge(self, resume_token: str) -> None:
        if int(resume_token) > self._next:
            raise AssertionError("acknowledged a batch never read")

    @property
    def exhausted(self) -> bool:
        return self._next >= len(self._batches)


def reset_tables(dsn: str, source: SyntheticSource) -> None:
    conn = psycopg2.connect(dsn)
    conn.autocommit = True
    with conn.cursor() as cur:
        for table in source.tables:
            cur.execute(f"DROP TABLE IF EXISTS {table}")
        for statement in source.create_tables_sql():
            cur.execute(statement)
    conn.close()


def check_tables(
    dsn: str, source: SyntheticSource, side: str, expected: dict[str, Any] | None = None
) -> None:
    """Compare the tables with the source's expected state after all its events."""
    expected = expected if expected is not None else source.expected_state()
    problems = differences(expected, fetch_state(dsn, source.tables))
    if problems:
        raise SystemExit(f"{side}: tables differ from the source's expected state: {problems}")


def side_tables(source: SyntheticSource, schema: str) -> dict[str, str]:
    """Source table -> this side's target table (same name, in ``schema``)."""
    return {t: f"{schema}.{t.rpartition('.')[2]}" for t in source.tables}


def reset_side(dsn: str, source: SyntheticSource, schema: str) -> None:
    conn = psycopg2.connect(dsn)
    conn.autocommit = True
    with conn.cursor() as cur:
        cur.execute(f"DROP SCHEMA IF EXISTS {schema} CASCADE")
        cur.execute(f"CREATE SCHEMA {schema}")
        for table, target in side_tables(source, schema).items():
            cur.execute(create_table_sql(table, target=target))
    conn.close()


def check_side(
    dsn: str, source: SyntheticSource, schema: str, expected: dict[str, Any], side: str
) -> None:
    mapping = side_tables(source, schema)
    actual = fetch_state(dsn, mapping.values())
    problems = differences(expected, {t: actual[mapping[t]] for t in source.tables})
    if problems:
        raise SystemExit(f"{side}: tables differ from the source's expected state: {problems}")


class EnabledSide:
    """The pipeline with the DLQ: ``Pipeline.step()``, one source batch per step."""

    def __init__(
        self,
        dsn: str,
        workdir: Path,
        batches: list[list[ChangeRecord]],
        batch_size: int,
        table_map: dict[str, str],
    ) -> None:
        self.config = DLQConfig(base_path=workdir, min_free_disk_mb=0)
        self.dlq = DLQManager(self.config)
        self.destination = TimedDestination(DEST_ID, "PG-Bench", dsn, table_map=table_map)
        self.source = BatchListSource(SOURCE_ID, batches)
        self.pipeline = Pipeline(
            "bench", self.source, [self.destination], self.dlq, self.config, batch_size=batch_size
        )

    def run(self, batches: int) -> None:
        for _ in range(batches):
            if not self.pipeline.step() and self.source.exhausted:
                return

    def finish(self, events: int) -> None:
        counters = self.pipeline.handler.counters
        stats = self.pipeline.stats
        if stats.events != events or counters.written[DEST_ID] != events or counters.queued:
            raise SystemExit(
                f"enabled side: events={stats.events} written={dict(counters.written)} "
                f"queued={dict(counters.queued)}, expected {events} written and none queued"
            )
        self.pipeline.close()
        self.dlq.close()


class DisabledSide:
    """What the engine would do without a DLQ: ``write_batch`` per table group."""

    def __init__(
        self,
        dsn: str,
        batches: list[list[ChangeRecord]],
        batch_size: int,
        table_map: dict[str, str],
    ) -> None:
        self.destination = TimedDestination(DEST_ID, "PG-Bench", dsn, table_map=table_map)
        self.source = BatchListSource(SOURCE_ID, batches)
        self.batch_size = batch_size

    def run(self, batches: int) -> None:
        for _ in range(batches):
            batch = self.source.read(self.batch_size)
            if not batch.records:
                return
            for table, group in group_by_table(batch.records).items():
                self.destination.write_batch(table, group)
            self.source.acknowledge(batch.resume_token)

    def finish(self, events: int) -> None:
        if not self.source.exhausted:
            raise SystemExit("disabled side: source not exhausted")
        self.destination.close()


def overhead_round(
    dsn: str,
    workdir: Path,
    synthetic: SyntheticSource,
    batches: list[list[ChangeRecord]],
    batch_size: int,
    chunk: int,
    expected: dict[str, Any],
    first: str,
) -> dict[str, float]:
    """Both sides in one round, alternating every ``chunk`` batches (ABBA), each timed."""
    events = sum(map(len, batches))
    for schema in ("side_enabled", "side_disabled"):
        reset_side(dsn, synthetic, schema)
    sides: dict[str, EnabledSide | DisabledSide] = {
        "enabled": EnabledSide(
            dsn, workdir, batches, batch_size, side_tables(synthetic, "side_enabled")
        ),
        "disabled": DisabledSide(dsn, batches, batch_size, side_tables(synthetic, "side_disabled")),
    }
    seconds = dict.fromkeys(sides, 0.0)
    order = [first, "disabled" if first == "enabled" else "enabled"]
    for index in range(-(-len(batches) // chunk)):
        for name in order if index % 2 == 0 else order[::-1]:
            start = time.perf_counter()
            sides[name].run(chunk)
            seconds[name] += time.perf_counter() - start
    for name, side in sides.items():
        side.finish(events)
        check_side(dsn, synthetic, f"side_{name}", expected, name)
    result = {name: events / seconds[name] for name in sides}
    for name, side in sides.items():
        writing = side.destination.write_seconds
        result[f"{name}_write_us"] = writing / events * 1e6
        result[f"{name}_outside_us"] = (seconds[name] - writing) / events * 1e6
    result["ratio"] = result["enabled"] / result["disabled"]
    return result


def bench_overhead(
    dsn: str, workdir: Path, events: int, batch_size: int, keys: int, rounds: int, chunk: int
) -> dict[str, float]:
    synthetic = SyntheticSource(SOURCE_ID, None, total_events=events, seed=5, keys_per_table=keys)
    batches = []
    while not synthetic.exhausted:
        batches.append(list(synthetic.read(batch_size).records))
    expected = synthetic.expected_state()
    results: dict[str, list[float]] = {}
    for r in range(rounds):
        first = "enabled" if r % 2 == 0 else "disabled"
        result = overhead_round(
            dsn, workdir / f"o{r}", synthetic, batches, batch_size, chunk, expected, first
        )
        for name, value in result.items():
            results.setdefault(name, []).append(value)
        print(
            f"overhead round {r + 1} ({first} first, sides alternate every {chunk} batches): "
            f"enabled={result['enabled']:,.0f} disabled={result['disabled']:,.0f} events/s "
            f"ratio={result['ratio']:.3f}; us/event in destination writes: enabled "
            f"{result['enabled_write_us']:.2f} disabled {result['disabled_write_us']:.2f}, "
            f"outside them: enabled {result['enabled_outside_us']:.2f} "
            f"disabled {result['disabled_outside_us']:.2f}",
            flush=True,
        )
    return {name: statistics.median(values) for name, values in results.items()}


# -------------------------------------------------------------- recovery figure


def first_connect_after(dsn: str, started: threading.Event, box: dict[str, float]) -> None:
    """Poll psycopg2.connect until it succeeds; note the time in ``box['up']``."""
    started.set()
    while True:
        try:
            conn = psycopg2.connect(dsn, connect_timeout=2)
        except psycopg2.OperationalError:
            time.sleep(0.005)
            continue
        box["up"] = time.time()
        conn.close()
        return


def wait_for(condition: Any, timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise SystemExit(f"timed out after {timeout:.0f}s waiting for {what}")
        time.sleep(0.005)


def recovery_round(
    server: PostgresServer,
    workdir: Path,
    rate: float,
    outage: float,
    keys: int,
    seed: int,
    *,
    defaults: bool = False,
) -> dict[str, float]:
    """One outage; ``defaults``: every setting at its default (else a 1 s check interval)."""
    dsn = server.dsn
    total = int(rate * (1.0 + outage + 4.0))
    source = SyntheticSource(
        SOURCE_ID, None, total_events=total, seed=seed, keys_per_table=keys, events_per_second=rate
    )
    reset_tables(dsn, source)
    if defaults:
        config = DLQConfig(base_path=workdir, min_free_disk_mb=0)
        destination = TimedDestination(DEST_ID, "PG-Bench", dsn)
        pipeline = Pipeline("bench", source, [destination], DLQManager(config), config)
    else:
        config = DLQConfig(base_path=workdir, min_free_disk_mb=0, check_interval=1.0)
        destination = TimedDestination(DEST_ID, "PG-Bench", dsn, connect_timeout=2.0)
        pipeline = Pipeline(
            "bench",
            source,
            [destination],
            DLQManager(config),
            config,
            batch_size=100,
            probe_timeout=2.0,
        )
    dlq = pipeline.dlq
    queues = [QueueId(SOURCE_ID, t, DEST_ID) for t in source.tables]
    pipeline.start()
    try:
        wait_for(
            lambda: pipeline.handler.counters.written[DEST_ID] > 0, 10, "a first healthy write"
        )
        time.sleep(0.5)
        server.stop("immediate")
        stopped_at = time.time()
        wait_for(lambda: pipeline.handler.counters.queued[DEST_ID] > 0, 30, "events to queue")
        time.sleep(max(0.0, outage - (time.time() - stopped_at)))
        queued_before = sum(dlq.store.count(q) for q in queues)

        box: dict[str, float] = {}
        started = threading.Event()
        poller = threading.Thread(target=first_connect_after, args=(dsn, started, box), daemon=True)
        poller.start()
        started.wait()
        server.start()
        poller.join(30)
        up = box["up"]

        def first_replay() -> float | None:
            for when, thread in list(destination.commits):
                if when >= up and thread.startswith("dlq-recovery"):
                    return when
            return None

        wait_for(lambda: first_replay() is not None, 30, "the first replayed batch")
        committed = first_replay()
        assert committed is not None
        # Let everything drain, then check the tables.
        wait_for(
            lambda: pipeline.finished.is_set() and not any(dlq.has_messages(q) for q in queues),
            60,
            "the source to finish and the DLQ to drain",
        )
    finally:
        pipeline.stop()
        pipeline.close()
        dlq.close()
    check_tables(dsn, source, "recovery")
    if pipeline.worker.stats.replayed < queued_before:
        raise SystemExit(f"replayed {pipeline.worker.stats.replayed} < queued {queued_before}")
    return {
        "recovery": committed - up,
        "outage": up - stopped_at,
        "queued": float(queued_before),
        "replayed": float(pipeline.worker.stats.replayed),
    }


def bench_recovery(
    server: PostgresServer,
    workdir: Path,
    rounds: int,
    rate: float,
    outage: float,
    keys: int,
    *,
    defaults: bool = False,
) -> float:
    figures = []
    name = "recovery (default settings)" if defaults else "recovery"
    for r in range(rounds):
        result = recovery_round(
            server,
            workdir / f"rec{'d' if defaults else ''}{r}",
            rate,
            outage,
            keys,
            seed=100 + r,
            defaults=defaults,
        )
        figures.append(result["recovery"])
        print(
            f"{name} round {r + 1}: {result['recovery']:.3f}s from accepting connections to "
            f"first replayed commit (down {result['outage']:.1f}s, "
            f"{result['queued']:.0f} events queued, {result['replayed']:.0f} replayed)",
            flush=True,
        )
    return statistics.median(figures)


# -------------------------------------------------------------------- isolation


class LatencyDestination(PostgreSQLDestination):
    """Records how long each live write takes (the figure behind the default deadline)."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.durations: list[float] = []

    def write_batch(self, table: str, records: Sequence[ChangeRecord]) -> int:
        started = time.perf_counter()
        try:
            return super().write_batch(table, records)
        finally:
            self.durations.append(time.perf_counter() - started)


def isolation_round(
    dsn: str,
    workdir: Path,
    rate: float,
    seconds: float,
    keys: int,
    seed: int,
    fault: bool,
    latencies: list[float] | None = None,
) -> tuple[float, float]:
    """B's events/s and longest pause over ``seconds``, with A black-holed mid-run or not.

    One pipeline, two destinations on the same server (schemas ``iso_a`` and
    ``iso_b``): A through the fault proxy and listed first, B direct. Default
    settings (deadline, read-ahead, A's 60 s ``write_timeout``).
    """
    source = SyntheticSource(
        SOURCE_ID, None, total_events=None, seed=seed, keys_per_table=keys, events_per_second=rate
    )
    reset_side(dsn, source, "iso_a")
    reset_side(dsn, source, "iso_b")
    config = DLQConfig(base_path=workdir, min_free_disk_mb=0)
    dlq = DLQManager(config)
    with FaultProxy(*_host_port(dsn)) as proxy:
        a = LatencyDestination(
            "A", "PG-A", proxy.dsn_for(dsn), table_map=side_tables(source, "iso_a")
        )
        b = PostgreSQLDestination("B", "PG-B", dsn, table_map=side_tables(source, "iso_b"))
        pipeline = Pipeline("isolation", source, [a, b], dlq, config, batch_size=500)
        samples: list[tuple[float, int]] = []
        pipeline.start()
        try:
            wait_for(lambda: pipeline.handler.counters.written["A"] > 0, 30, "A's first write")
            time.sleep(1.0)
            if fault:
                proxy.blackhole()
            end = time.monotonic() + seconds
            while time.monotonic() < end:
                samples.append((time.monotonic(), pipeline.handler.counters.written["B"]))
                time.sleep(0.01)
            if fault and pipeline.handler.counters.queued["A"] == 0:
                raise SystemExit("isolation: A never turned to store-and-forward")
        finally:
            proxy.pass_through()
            proxy.reset_all()  # the write stuck on A ends at once
            pipeline.stop()
            pipeline.close()
            dlq.close()
    if latencies is not None and not fault:
        latencies.extend(a.durations)
    moved = samples[-1][1] - samples[0][1]
    gap, last_change, last = 0.0, samples[0][0], samples[0][1]
    for at, value in samples:
        if value != last:
            gap = max(gap, at - last_change)
            last_change, last = at, value
    gap = max(gap, samples[-1][0] - last_change)
    return moved / (samples[-1][0] - samples[0][0]), gap


def _host_port(dsn: str) -> tuple[str, int]:
    parts = dict(p.split("=", 1) for p in dsn.split())
    return parts.get("host", "127.0.0.1"), int(parts["port"])


def bench_isolation(
    dsn: str, workdir: Path, rounds: int, rate: float, seconds: float, keys: int
) -> dict[str, float]:
    ratios, gaps = [], []
    latencies: list[float] = []
    for r in range(rounds):
        healthy, _ = isolation_round(
            dsn, workdir / f"iso{r}h", rate, seconds, keys, 200 + r, False, latencies
        )
        faulty, gap = isolation_round(dsn, workdir / f"iso{r}f", rate, seconds, keys, 200 + r, True)
        ratios.append(faulty / healthy)
        gaps.append(gap)
        print(
            f"isolation round {r + 1}: B {healthy:.0f} events/s with A healthy, {faulty:.0f} "
            f"with A black-holed mid-run ({faulty / healthy:.3f}); longest pause {gap:.2f}s",
            flush=True,
        )
    latencies.sort()
    print(
        f"healthy live writes to A: {len(latencies)}, median "
        f"{statistics.median(latencies) * 1000:.1f} ms, 99.9th percentile "
        f"{latencies[int(0.999 * (len(latencies) - 1))] * 1000:.1f} ms, worst "
        f"{latencies[-1] * 1000:.1f} ms (DLQ_LIVE_WRITE_DEADLINE_MS defaults to 2000)"
    )
    return {
        "ratio": statistics.median(ratios),
        "gap": statistics.median(gaps),
        "max_gap": max(gaps),
    }


# ------------------------------------------------------------------------- main


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--replay-events", type=int, default=100_000)
    parser.add_argument(
        "--replay-batch", type=int, default=5000, help="DLQ_BATCH_SIZE for the replay"
    )
    parser.add_argument("--replay-rounds", type=int, default=3)
    parser.add_argument("--overhead-events", type=int, default=30_000)
    parser.add_argument("--overhead-rounds", type=int, default=15)
    parser.add_argument("--batch-size", type=int, default=500, help="pipeline batch size")
    parser.add_argument(
        "--chunk", type=int, default=5, help="overhead: sides alternate every CHUNK batches"
    )
    parser.add_argument("--keys", type=int, default=20_000, help="synthetic keys per table")
    parser.add_argument("--recovery-rounds", type=int, default=5)
    parser.add_argument("--recovery-rate", type=float, default=500.0, help="events/s")
    parser.add_argument("--outage", type=float, default=2.0, help="seconds PostgreSQL is down")
    parser.add_argument("--recovery-default-rounds", type=int, default=3)
    parser.add_argument(
        "--default-outage",
        type=float,
        default=10.0,
        help="seconds PostgreSQL is down for recovery_start_default_seconds",
    )
    parser.add_argument("--isolation-rounds", type=int, default=3)
    parser.add_argument("--isolation-rate", type=float, default=3000.0, help="events/s")
    parser.add_argument(
        "--isolation-seconds", type=float, default=10.0, help="seconds measured per run"
    )
    parser.add_argument(
        "--skip",
        action="append",
        default=[],
        choices=["replay", "overhead", "recovery", "recovery_default", "isolation"],
        help="leave a group of figures out (repeatable)",
    )
    parser.add_argument("--verbose", action="store_true", help="show warnings from the engine")
    parser.add_argument(
        "--profile", action="store_true", help="also run one replay under cProfile (not counted)"
    )
    args = parser.parse_args()
    logging.basicConfig(level=logging.WARNING if args.verbose else logging.ERROR)

    began = time.perf_counter()
    base = Path(tempfile.mkdtemp(prefix="bench_pipeline_"))
    base.chmod(0o755)  # the server user must be able to traverse it when run as root
    server = PostgresServer(base / "pg", port=free_port())
    server.start()
    try:
        replay = overhead = isolation = None
        recovery = recovery_default = float("nan")
        if "replay" not in args.skip:
            replay = bench_replay(
                server.dsn,
                base,
                args.replay_events,
                args.replay_batch,
                args.replay_rounds,
                profile=args.profile,
            )
        if "overhead" not in args.skip:
            overhead = bench_overhead(
                server.dsn,
                base,
                args.overhead_events,
                args.batch_size,
                args.keys,
                args.overhead_rounds,
                args.chunk,
            )
        if "recovery" not in args.skip:
            recovery = bench_recovery(
                server, base, args.recovery_rounds, args.recovery_rate, args.outage, args.keys
            )
        if "recovery_default" not in args.skip:
            recovery_default = bench_recovery(
                server,
                base,
                args.recovery_default_rounds,
                args.recovery_rate,
                args.default_outage,
                args.keys,
                defaults=True,
            )
        if "isolation" not in args.skip:
            isolation = bench_isolation(
                server.dsn,
                base,
                args.isolation_rounds,
                args.isolation_rate,
                args.isolation_seconds,
                args.keys,
            )
    finally:
        server.stop("immediate")
        shutil.rmtree(base, ignore_errors=True)

    print(
        f"replay_events={args.replay_events} replay_batch={args.replay_batch} "
        f"replay_rounds={args.replay_rounds} overhead_events={args.overhead_events} "
        f"batch_size={args.batch_size} overhead_rounds={args.overhead_rounds} "
        f"recovery_rounds={args.recovery_rounds} "
        f"recovery_default_rounds={args.recovery_default_rounds} "
        f"total_seconds={time.perf_counter() - began:.0f}"
    )
    if replay is not None:
        print(f"RESULT replay_rows_per_s={replay['replay']:.0f}")
        print(f"RESULT copy_upsert_rows_per_s={replay['copy_upsert']:.0f}")
        print(f"RESULT replay_vs_copy_upsert={replay['ratio']:.3f}")
    if overhead is not None:
        print(f"RESULT pipeline_dlq_enabled_events_per_s={overhead['enabled']:.0f}")
        print(f"RESULT pipeline_dlq_disabled_events_per_s={overhead['disabled']:.0f}")
        print(
            "RESULT pipeline_us_per_event_outside_writes_enabled="
            f"{overhead['enabled_outside_us']:.2f}"
        )
        print(
            "RESULT pipeline_us_per_event_outside_writes_disabled="
            f"{overhead['disabled_outside_us']:.2f}"
        )
        print(f"RESULT dlq_overhead_ratio={overhead['ratio']:.3f}")
    if "recovery" not in args.skip:
        print(f"RESULT recovery_start_seconds={recovery:.2f}")
    if "recovery_default" not in args.skip:
        print(f"RESULT recovery_start_default_seconds={recovery_default:.2f}")
    if isolation is not None:
        print(f"RESULT isolation_max_gap_seconds_worst_round={isolation['max_gap']:.2f}")
        print(f"RESULT isolation_other_destination_ratio={isolation['ratio']:.3f}")
        print(f"RESULT isolation_max_gap_seconds={isolation['gap']:.2f}")


if __name__ == "__main__":
    main()
