"""kill -9 of ``rosetta run`` streaming a pgbench run through the PostgreSQL source: nothing lost.

A source server (``wal_level = logical``) and a destination start with the
same ``pgbench -i`` tables (its data is deterministic). ``rosetta run``
replicates pgbench_accounts, pgbench_branches and pgbench_tellers (not
pgbench_history: it has no key) while ``pgbench -T`` runs with four clients,
and is killed with SIGKILL at random moments and started again. At each kill,
with pgbench paused, the slot's ``confirmed_flush_lsn`` is checked against
what the destination holds: the destination's rows (plus anything the DLQ
holds), with every change the slot still has after that position applied on
top, must equal the source. A confirmation that ran ahead of the destination
leaves a change neither written nor in the slot, and fails. At the end every
replicated table matches the source exactly.
"""

from __future__ import annotations

import os
import random
import signal
import subprocess
import time
from pathlib import Path
from typing import Any

import psycopg2
import pytest

from compute.dlq.manager import DLQManager
from compute.sources.postgres.pgoutput import parse_message
from compute.sources.postgres.transactions import TransactionAssembler
from config.dlq_config import DLQConfig
from destinations.records import ChangeRecord, Operation
from tests.compute.sources.postgres.pg_source_helpers import LOGICAL, query
from tests.faults.helpers import engine_env, start_engine
from tests.servers import POSTGRES_BIN_PATH, PostgresServer
from tests.waiting import wait_until

TABLES = ("public.pgbench_accounts", "public.pgbench_branches", "public.pgbench_tellers")
KEYS = {
    "public.pgbench_accounts": "aid",
    "public.pgbench_branches": "bid",
    "public.pgbench_tellers": "tid",
}
SLOT = "rosetta_1"
KILLS = 5

PIPELINES = """
[[pipelines]]
name = "pgbench"
batch_size = 500
[pipelines.source]
id = "1"
type = "postgresql"
dsn_env = "TEST_SOURCE_DSN"
tables = ["public.pgbench_accounts", "public.pgbench_branches", "public.pgbench_tellers"]
snapshot = "never"
status_interval = 1
[[pipelines.destinations]]
id = "1"
name = "PG"
type = "postgresql"
dsn_env = "TEST_DEST_DSN"
"""


def pgbench(server: PostgresServer, *args: str) -> list[str]:
    return [
        str(POSTGRES_BIN_PATH / "pgbench"),
        "-h",
        server.host,
        "-p",
        str(server.port),
        "-U",
        "postgres",
        *args,
        "postgres",
    ]


def stop_bench_and_engine(bench: subprocess.Popen[bytes], engine: subprocess.Popen[bytes]) -> None:
    """End the pgbench run if it still runs, and stop the engine (SIGTERM, SIGKILL after 30 s)."""
    if bench.poll() is None:
        bench.kill()
    stop_engine(engine)


def end_pgbench_under_traffic(bench: subprocess.Popen[bytes], settle: float = 3.0) -> None:
    """The traffic ran through every kill; let the last engine stream under it for ``settle``
    seconds, then end pgbench (SIGINT: an open transaction aborts, nothing half-committed)
    rather than wait out its ``-T``: the source's committed state is what is compared."""
    assert bench.poll() is None, "pgbench ended before the last kill: the kills missed traffic"
    time.sleep(settle)
    bench.send_signal(signal.SIGINT)
    bench.wait(timeout=60)


def table_state(dsn: str) -> dict[str, dict[int, tuple[Any, ...]]]:
    state = {}
    for table in TABLES:
        key = KEYS[table]
        rows = query(dsn, f"SELECT * FROM {table} ORDER BY {key}")
        columns = [
            c[0]
            for c in query(
                dsn,
                "SELECT column_name FROM information_schema.columns WHERE table_schema = 'public' "
                "AND table_name = %s ORDER BY ordinal_position",
                (table.split(".")[1],),
            )
        ]
        state[table] = {
            row[columns.index(key)]: tuple(zip(columns, row, strict=True)) for row in rows
        }
    return state


def apply(state: dict[str, dict[int, tuple[Any, ...]]], record: ChangeRecord) -> None:
    rows = state.get(record.table)
    if rows is None:  # a table compared otherwise (an append-only one), not by key
        return
    key = next(iter(record.key.values()))
    if record.op is Operation.DELETE:
        rows.pop(key, None)
        return
    assert record.after is not None
    old = dict(rows.get(key, ()))
    old.update(record.after)
    rows[key] = tuple(old.items())


def slot_changes(dsn: str) -> list[ChangeRecord]:
    """Every change the slot still holds after its confirmed_flush_lsn, decoded (a peek)."""
    conn = psycopg2.connect(dsn)
    conn.autocommit = True
    deadline = time.monotonic() + 30
    while True:
        try:
            with conn.cursor() as cur:
                cur.execute(
                    "SELECT data FROM pg_logical_slot_peek_binary_changes(%s, NULL, NULL, "
                    "'proto_version', '1', 'publication_names', %s)",
                    (SLOT, SLOT),
                )
                messages = [bytes(row[0]) for row in cur.fetchall()]
            break
        except psycopg2.errors.ObjectInUse:  # the killed engine's walsender is still exiting
            if time.monotonic() > deadline:
                raise
            time.sleep(0.2)
    conn.close()
    assembler = TransactionAssembler(tables=TABLES)
    records: list[ChangeRecord] = []
    for data in messages:
        transaction = assembler.feed(parse_message(data))
        if transaction is not None:
            records.extend(transaction.records)
    return records


def dlq_records(dlq_path: Path) -> list[ChangeRecord]:
    if not dlq_path.exists():
        return []
    with DLQManager(DLQConfig(base_path=dlq_path, min_free_disk_mb=0), background=False) as dlq:
        return [m.record for q in dlq.list_queues() for m in dlq.peek(q, 1_000_000)]


def normalised(state: dict[str, dict[int, tuple[Any, ...]]]) -> dict[str, Any]:
    return {
        t: {k: {c: str(v) for c, v in row} for k, row in rows.items()} for t, rows in state.items()
    }


def check_confirmed_not_ahead(source: PostgresServer, target: PostgresServer, dlq: Path) -> int:
    """Destination + DLQ + the slot's remaining changes == the source; the changes replayed."""
    held = table_state(target.dsn)
    for record in dlq_records(dlq):
        apply(held, record)
    remaining = slot_changes(source.dsn)
    for record in remaining:
        apply(held, record)
    expected = table_state(source.dsn)
    assert normalised(held) == normalised(expected), "confirmed_flush_lsn ran ahead"
    return len(remaining)


def wait_replicated(source: PostgresServer, target: PostgresServer) -> None:
    expected = normalised(table_state(source.dsn))
    wait_until(
        lambda: normalised(table_state(target.dsn)) == expected,
        120,
        "every replicated pgbench table matches the source",
    )


def stop_engine(engine: subprocess.Popen[bytes]) -> int:
    """SIGTERM, then its exit code (SIGKILL after 30 s: -9)."""
    engine.send_signal(signal.SIGTERM)
    try:
        return engine.wait(timeout=30)
    except subprocess.TimeoutExpired:
        engine.kill()
        return engine.wait()


@pytest.mark.timeout(400)
def test_kill9_during_pgbench_loses_nothing_and_never_confirms_ahead(
    tmp_path: Path, postgres_server_factory
) -> None:
    rng = random.Random(14)
    source = postgres_server_factory(LOGICAL)
    target = postgres_server_factory()
    for server in (source, target):
        subprocess.run(pgbench(server, "-i", "-s", "1", "-q"), check=True, capture_output=True)
    (tmp_path / "pipelines.toml").write_text(PIPELINES)
    env = engine_env(tmp_path, target.dsn, TEST_SOURCE_DSN=source.dsn)
    log = tmp_path / "engine.log"
    engine = start_engine(env, log)
    wait_until(
        lambda: bool(query(source.dsn, "SELECT 1 FROM pg_replication_slots")),
        30,
        "the engine created its slot",
    )
    # -T is only a bound: the traffic is ended after the last kill (end_pgbench_under_traffic),
    # and five kills and checks may take more than 40 s on a busy machine.
    bench = subprocess.Popen(
        pgbench(source, "-T", "300", "-c", "4", "-j", "2", "-n"),
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    replayed_after_kill = 0
    try:
        for _ in range(KILLS):
            time.sleep(rng.uniform(1.0, 4.0))
            engine.send_signal(signal.SIGKILL)
            engine.wait()
            os.kill(bench.pid, signal.SIGSTOP)
            try:
                time.sleep(0.5)  # commits already sent finish
                replayed_after_kill += check_confirmed_not_ahead(source, target, tmp_path / "dlq")
            finally:
                os.kill(bench.pid, signal.SIGCONT)
            engine = start_engine(env, log)
        end_pgbench_under_traffic(bench)
        wait_replicated(source, target)
    finally:
        stop_bench_and_engine(bench, engine)
    print(f"kills={KILLS} changes the slot still held at the kills={replayed_after_kill}")
    assert replayed_after_kill > 0, "no kill landed while changes were in flight"
    assert "replication started" in log.read_text()
