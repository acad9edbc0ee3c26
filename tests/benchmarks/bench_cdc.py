"""CDC benchmark: the PostgreSQL source against PostgreSQL's own tools, side by side in one run.

    python tests/benchmarks/bench_cdc.py [--scale 5] [--changes 200000] [--clients 4]
        [--batch-size 5000] [--lag-rate 200] [--lag-seconds 20] [--profile]

Two embedded servers: a source (``wal_level = logical``) and a target with two
databases, each initialised by ``pgbench -i -s --scale`` like the source (the
data is deterministic, so only changes have to travel). A publication of the
three keyed pgbench tables and four slots (the engine's, a subscription's,
pg_recvlogical's, the source alone's) are made before the backlog, so each holds the same changes.
``pgbench_history`` has no key and is left out of every side.

* ``cdc_catchup_vs_native_subscription``: a backlog of ``--changes`` row
  changes (pgbench's default script: three updates of keyed tables per
  transaction) waits in the slots. Timed: ``CREATE SUBSCRIPTION`` (on its
  pre-made slot, ``copy_data = false``) enabled until the subscriber's
  tables equal the source's, divided by the engine (``Pipeline`` +
  ``PostgresSource`` + ``PostgreSQLDestination``, built inside the timing)
  until its database equals the source. Above 1.0: the engine caught up
  faster. Both databases are then compared with the source row by row (md5).
* ``cdc_vs_pg_recvlogical``: the engine's changes/s over the same drain,
  divided by ``pg_recvlogical`` reading its slot's copy of the backlog to
  /dev/null (``--endpos`` = the source's WAL position after the backlog).
* ``cdc_source_alone_changes_per_second`` (where the time goes): the
  PostgresSource alone reading its own slot's copy (decode, assemble,
  acknowledge; no destination, no pipeline), and
  ``cdc_source_alone_cpu_us_per_change`` the CPU it took this process per change.
* ``cdc_p99_lag_ms``: with the engine running and caught up, pgbench runs at
  ``--lag-rate`` transactions/s for ``--lag-seconds`` while a probe row is
  inserted every 100 ms into a published table; the p99 of (seen at the target
  by a 10 ms poll) - (before the probe insert), in ms.
"""

from __future__ import annotations

import argparse
import contextlib
import cProfile
import io
import logging
import math
import os
import pstats
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

import psycopg2

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

from compute.dlq.manager import DLQManager  # noqa: E402
from compute.engine.pipeline import Pipeline  # noqa: E402
from compute.runtime.gc_tuning import tune_for_streaming  # noqa: E402
from compute.sources.postgres_source import PostgresSource  # noqa: E402
from config.dlq_config import DLQConfig  # noqa: E402
from destinations.postgresql.destination import PostgreSQLDestination  # noqa: E402
from tests.pgbench_cdc import (  # noqa: E402
    BALANCES,
    KEYED,
    LOGICAL,
    balances,
    checksums,
    current_lsn,
    fetch,
    pgbench,
    pgbench_command,
    run_sql,
)
from tests.servers import POSTGRES_BIN_PATH, PostgresCluster, PostgresServer  # noqa: E402

PUBLICATION = "bench"
SLOTS = {
    "engine": "rosetta_bench",
    "native": "native_bench",
    "recv": "recv_bench",
    "decode": "decode_bench",
}
PROBE = "public.lag_probe"
# CPU seconds each side's catch-up took, in total and by kind of process.
CPU: dict[str, tuple[float, dict[str, float]]] = {}
END_MARKER = -1  # the probe row that ends the backlog (lag probes count up from 1)


def say(text: str) -> None:
    print(text, flush=True)


def dsn_of(server: PostgresServer, dbname: str) -> str:
    return server.dsn.replace("dbname=postgres", f"dbname={dbname}")


_TICKS = os.sysconf("SC_CLK_TCK")


def cpu_by_process() -> dict[int, tuple[str, float]]:
    """CPU seconds (user + system) of this process and every PostgreSQL process, by pid,
    with what the process is (``postgres: walsender ...``, ``python``)."""
    found: dict[int, tuple[str, float]] = {}
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text()
            title = (entry / "cmdline").read_bytes().replace(b"\0", b" ").decode().strip()
        except OSError:
            continue  # ended meanwhile
        pid = int(entry.name)
        if pid != os.getpid() and not title.startswith("postgres"):
            continue
        fields = stat.rpartition(")")[2].split()
        found[pid] = (
            "python (the engine)" if pid == os.getpid() else title,
            (int(fields[11]) + int(fields[12])) / _TICKS,
        )
    return found


def cpu_used(before: dict[int, tuple[str, float]]) -> tuple[float, dict[str, float]]:
    """CPU seconds every process of ``cpu_by_process`` used since ``before`` (a process
    started since counts from 0), in total and by kind of process."""
    kinds: dict[str, float] = {}
    for pid, (title, seconds) in cpu_by_process().items():
        used = seconds - before.get(pid, (title, 0.0))[1]
        kind = _kind(title)
        kinds[kind] = kinds.get(kind, 0.0) + used
    return sum(kinds.values()), kinds


def _kind(title: str) -> str:
    if title.startswith("python"):
        return title
    if "walsender" in title or "START_REPLICATION" in title:
        return "walsender"
    if "logical replication apply worker" in title:
        return "apply worker"
    if title.startswith("postgres: ") and ("idle" in title or "127.0.0.1" in title):
        return "backends"
    return "server processes"


def wait_equal(dsn: str, expected: tuple[Any, ...], timeout: float, what: str) -> None:
    """Until the target's balances equal ``expected``.

    Polled every 50 ms on one kept connection, first for the backlog's end
    marker (one indexed row), and only once it landed for the balance sums (a
    scan of every account): the measurement's own load then stays off the two
    cores both sides share. (A poll of the sums, with a new connection each
    time, took about a third of a core for as long as either side ran.)
    """
    deadline = time.monotonic() + timeout
    conn = psycopg2.connect(dsn)
    conn.autocommit = True
    try:
        with conn.cursor() as cur:
            while True:
                cur.execute(f"SELECT 1 FROM {PROBE} WHERE id = %s", (END_MARKER,))
                if cur.fetchone() is not None:
                    cur.execute(BALANCES)
                    if cur.fetchone() == expected:
                        return
                if time.monotonic() > deadline:
                    raise RuntimeError(f"{what} did not catch up within {timeout:.0f} s")
                time.sleep(0.05)
    finally:
        conn.close()


def prepare(cluster: PostgresCluster, scale: int) -> tuple[PostgresServer, PostgresServer]:
    source = cluster.new_server(LOGICAL)
    target = cluster.new_server()
    pgbench(source, "-i", "-s", str(scale), "-q")
    run_sql(target.dsn, "CREATE DATABASE engine_db", "CREATE DATABASE native_db")
    for db in ("engine_db", "native_db"):
        pgbench(target, "-i", "-s", str(scale), "-q", dbname=db)
        run_sql(dsn_of(target, db), f"CREATE TABLE {PROBE} (id int PRIMARY KEY, note text)")
    run_sql(
        source.dsn,
        f"CREATE TABLE {PROBE} (id int PRIMARY KEY, note text)",
        f"CREATE PUBLICATION {PUBLICATION} FOR TABLE {', '.join([*KEYED, PROBE])}",
        *(f"SELECT pg_create_logical_replication_slot('{s}', 'pgoutput')" for s in SLOTS.values()),
    )
    return source, target


def build_backlog(source: PostgresServer, changes: int, clients: int) -> tuple[int, str]:
    """pgbench's default script until >= ``changes`` keyed row changes; (changes, end LSN)."""
    per_client = math.ceil(changes / 3 / clients)
    started = time.monotonic()
    pgbench(source, "-n", "-c", str(clients), "-j", str(min(clients, 2)), "-t", str(per_client))
    made = per_client * clients * 3
    # Committed after every change of the backlog: both sides apply it last.
    run_sql(source.dsn, f"INSERT INTO {PROBE} VALUES ({END_MARKER}, 'end of backlog')")
    say(f"backlog: {made} changes in {time.monotonic() - started:.1f} s")
    return made, current_lsn(source.dsn)


def time_recvlogical(source: PostgresServer, end_lsn: str) -> float:
    command = [
        str(POSTGRES_BIN_PATH / "pg_recvlogical"),
        *("-h", source.host, "-p", str(source.port), "-U", "postgres", "-d", "postgres"),
        *("--slot", SLOTS["recv"], "--start", "--no-loop", "-E", end_lsn, "-f", "/dev/null"),
        *("-o", "proto_version=1", "-o", f"publication_names={PUBLICATION}"),
    ]
    started = time.monotonic()
    subprocess.run(command, check=True, capture_output=True, timeout=600)
    return time.monotonic() - started


def time_native(source: PostgresServer, target: PostgresServer, expected: tuple[Any, ...]) -> float:
    native = dsn_of(target, "native_db")
    run_sql(
        native,
        f"CREATE SUBSCRIPTION native CONNECTION '{source.dsn}' PUBLICATION {PUBLICATION} "
        f"WITH (create_slot = false, slot_name = '{SLOTS['native']}', copy_data = false, "
        "enabled = false)",
    )
    cpu = cpu_by_process()
    started = time.monotonic()
    run_sql(native, "ALTER SUBSCRIPTION native ENABLE")
    wait_equal(native, expected, 600, "the native subscription")
    elapsed = time.monotonic() - started
    CPU["native"] = cpu_used(cpu)
    run_sql(native, "ALTER SUBSCRIPTION native DISABLE")
    return elapsed


def time_decode_only(source: PostgresServer, changes: int) -> tuple[float, float]:
    """The source alone (decode, assemble, acknowledge; no destination) over its slot's copy:
    seconds, and CPU seconds of this process (only the source's threads run meanwhile)."""
    started, cpu = time.monotonic(), time.process_time()
    reader = PostgresSource(
        "decode", source.dsn, slot=SLOTS["decode"], publication=PUBLICATION,
        tables=[*KEYED, PROBE], snapshot="never", status_interval=1.0,
    )  # fmt: skip
    try:
        seen = 0
        while seen < changes:
            batch = reader.read(5000)
            seen += len(batch.records)
            reader.acknowledge(batch.resume_token)
            if not batch.records:
                time.sleep(0.005)
        return time.monotonic() - started, time.process_time() - cpu
    finally:
        reader.close()


class EngineRun:
    """The engine in process: the PostgreSQL source into the target's engine_db."""

    def __init__(self, source: PostgresServer, target: PostgresServer, args: Any) -> None:
        self.dlq = DLQManager(
            DLQConfig(base_path=Path(tempfile.mkdtemp(prefix="bench-cdc-dlq-")), min_free_disk_mb=0)
        )
        self.source = PostgresSource(
            "bench",
            source.dsn,
            slot=SLOTS["engine"],
            publication=PUBLICATION,
            tables=[*KEYED, PROBE],
            snapshot="never",
            status_interval=1.0,
        )
        destination = PostgreSQLDestination("1", "PG", dsn_of(target, "engine_db"))
        self.pipeline = Pipeline(
            "bench", self.source, [destination], self.dlq, self.dlq.config,
            batch_size=args.batch_size,
        )  # fmt: skip
        self.pipeline.start()

    def close(self) -> None:
        self.pipeline.stop()
        self.pipeline.close()
        self.dlq.close()


def measure_lag(source: PostgresServer, target: PostgresServer, args: Any) -> list[float]:
    sent: dict[int, float] = {}
    lags: list[float] = []
    done = threading.Event()

    def poll() -> None:
        seen = 0
        conn_dsn = dsn_of(target, "engine_db")
        while not done.is_set() or seen < len(sent):
            rows = fetch(conn_dsn, f"SELECT id FROM {PROBE} WHERE id > %s ORDER BY id", (seen,))
            now = time.monotonic()
            for (probe_id,) in rows:
                lags.append((now - sent[probe_id]) * 1000)
                seen = probe_id
            if done.is_set() and time.monotonic() > stop_polling:
                return
            time.sleep(0.01)

    stop_polling = math.inf
    poller = threading.Thread(target=poll, daemon=True)
    poller.start()
    load = subprocess.Popen(
        pgbench_command(
            source, "-n", "-c", str(args.clients), "-j", "2", "--rate", str(args.lag_rate),
            "-T", str(args.lag_seconds),
        ),
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )  # fmt: skip
    probe = 0
    while load.poll() is None:
        probe += 1
        sent[probe] = time.monotonic()
        run_sql(source.dsn, f"INSERT INTO {PROBE} VALUES (%s, 'probe')", params=(probe,))
        time.sleep(0.1)
    stop_polling = time.monotonic() + 30
    done.set()
    poller.join()
    if len(lags) < len(sent):
        raise RuntimeError(f"only {len(lags)} of {len(sent)} lag probes arrived")
    return lags


class ThreadProfiles:
    """cProfile in every thread started while active (the engine works in its own threads)."""

    def __init__(self) -> None:
        self.profiles: list[cProfile.Profile] = []
        self._run = threading.Thread.run

    def __enter__(self) -> ThreadProfiles:
        original = self._run
        profiles = self.profiles

        def run(thread: threading.Thread) -> None:
            profile = cProfile.Profile()
            profiles.append(profile)
            profile.runcall(original, thread)

        threading.Thread.run = run  # type: ignore[method-assign,assignment]
        return self

    def __exit__(self, *exc: object) -> None:
        threading.Thread.run = self._run  # type: ignore[method-assign]

    def report(self) -> str:
        out = io.StringIO()
        stats = pstats.Stats(self.profiles[0], stream=out)
        for profile in self.profiles[1:]:
            stats.add(profile)
        stats.sort_stats("tottime").print_stats(30)
        stats.sort_stats("cumulative").print_stats("delivery|destinations|pipeline|psycopg", 30)
        return out.getvalue()


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--scale", type=int, default=5)
    parser.add_argument("--changes", type=int, default=200_000)
    parser.add_argument("--clients", type=int, default=4)
    parser.add_argument("--batch-size", type=int, default=5000)
    parser.add_argument("--lag-rate", type=int, default=200)
    parser.add_argument("--lag-seconds", type=int, default=20)
    parser.add_argument("--profile", action="store_true", help="profile the engine threads")
    args = parser.parse_args()
    logging.basicConfig(level=logging.WARNING)
    tune_for_streaming()  # as `rosetta run` does
    cluster = PostgresCluster()
    try:
        source, target = prepare(cluster, args.scale)
        changes, end_lsn = build_backlog(source, args.changes, args.clients)
        expected = balances(source.dsn)
        expected_rows = checksums(source.dsn)
        recv_seconds = time_recvlogical(source, end_lsn)
        say(f"pg_recvlogical: {recv_seconds:.2f} s ({changes / recv_seconds:,.0f} changes/s)")
        decode_seconds, decode_cpu = time_decode_only(source, changes)
        say(
            f"source alone: {decode_seconds:.2f} s ({changes / decode_seconds:,.0f} changes/s), "
            f"{decode_cpu:.2f} CPU-s"
        )
        native_seconds = time_native(source, target, expected)
        say(f"native subscription: {native_seconds:.2f} s ({changes / native_seconds:,.0f}/s)")
        profiles = ThreadProfiles()
        profiling = contextlib.ExitStack()
        if args.profile:  # every engine thread, also those started on the first write
            profiling.enter_context(profiles)
        cpu = cpu_by_process()
        started = time.monotonic()
        engine = EngineRun(source, target, args)
        try:
            wait_equal(dsn_of(target, "engine_db"), expected, 600, "the engine")
            engine_seconds = time.monotonic() - started
            CPU["engine"] = cpu_used(cpu)
            profiling.close()
            say(f"engine: {engine_seconds:.2f} s ({changes / engine_seconds:,.0f} changes/s)")
            for db in ("engine_db", "native_db"):
                if checksums(dsn_of(target, db)) != expected_rows:
                    raise RuntimeError(f"{db} differs from the source after catching up")
            lags = measure_lag(source, target, args)
        finally:
            engine.close()
        if args.profile:
            say(profiles.report())
        p99 = statistics.quantiles(lags, n=100)[98] if len(lags) >= 2 else lags[0]
        median = statistics.median(lags)
        say(f"lag: {len(lags)} probes, median {median:.0f} ms, max {max(lags):.0f} ms")
        for side, (total, kinds) in CPU.items():
            shown = ", ".join(f"{k} {v:.2f}" for k, v in sorted(kinds.items()) if v >= 0.005)
            say(f"{side}: {total:.2f} CPU-s over both cores ({shown})")
        say(f"RESULT cdc_catchup_vs_native_subscription={native_seconds / engine_seconds:.2f}")
        say(f"RESULT cdc_vs_pg_recvlogical={recv_seconds / engine_seconds:.3f}")
        say(f"RESULT cdc_p99_lag_ms={p99:.0f}")
        say(f"RESULT cdc_engine_changes_per_second={changes / engine_seconds:.0f}")
        say(f"RESULT cdc_source_alone_changes_per_second={changes / decode_seconds:.0f}")
        say(f"RESULT cdc_engine_cpu_seconds={CPU['engine'][0]:.2f}")
        say(f"RESULT cdc_native_cpu_seconds={CPU['native'][0]:.2f}")
        say(f"RESULT cdc_source_alone_cpu_us_per_change={decode_cpu / changes * 1e6:.2f}")
    finally:
        cluster.close()
    return 0


if __name__ == "__main__":
    sys.exit(main())
