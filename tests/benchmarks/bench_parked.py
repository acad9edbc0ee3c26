"""Bytes on disk per parked and per queued DLQ message, written the way the engine writes them.

    python tests/benchmarks/bench_parked.py [--messages 31000] [--batch 500]

Starts a PostgreSQL server of its own and runs the engine's event handler
(``compute/delivery/event_handler.py``, the live write deadline and retry
policy of the default settings) against two destinations:

* *parked*: the real PostgreSQL destination writing to a table whose
  ``email`` column is ``NOT NULL``, fed rows without an email. Every batch
  fails with psycopg2's ``NotNullViolation`` (permanent), is narrowed down
  to single rows, and every row is parked with the error the server gave it
  (its text names the failing row) and the stack it was raised through;
* *queued*: the same destination at a port nobody listens on: every batch
  fails with ``OperationalError`` (transient) and is queued, one failure
  context per batch.

The typical row: ``public.users`` with an integer key and five columns
(name, email, a numeric balance, a 60-character note, a timestamp), about
190 bytes as msgpack. After the DLQ is closed, prints ``RESULT`` lines:
``parked_bytes_per_message`` and ``queued_bytes_per_message`` (``du`` of the
lane's directory, RocksDB's files and all, over the messages in it) and the
stored stack's length.
"""

from __future__ import annotations

import argparse
import logging
import os
import shutil
import signal
import sys
import tempfile
import time
from datetime import UTC, datetime
from decimal import Decimal
from pathlib import Path

import psycopg2

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

from compute.delivery.event_handler import EventHandler  # noqa: E402
from compute.delivery.health import DestinationHealth  # noqa: E402
from compute.dlq.manager import DLQManager  # noqa: E402
from compute.queue_id import QueueId  # noqa: E402
from compute.runtime.retry_policy import RetryPolicy  # noqa: E402
from config.dlq_config import DLQConfig  # noqa: E402
from destinations.postgresql.destination import PostgreSQLDestination  # noqa: E402
from destinations.records import ChangeRecord, Operation, SourcePosition  # noqa: E402
from tests.servers import PostgresServer, free_port  # noqa: E402

SOURCE_ID = "1"
TABLE = "public.users"


def typical_rows(count: int, start: int) -> list[ChangeRecord]:
    """Inserts of the typical row (see the module docstring), ``email`` missing."""
    when = datetime(2024, 5, 1, 12, 0, tzinfo=UTC)
    return [
        ChangeRecord(
            TABLE,
            Operation.INSERT,
            {"id": i},
            {
                "id": i,
                "name": f"customer {i:08d}",
                "email": None,
                "balance": Decimal("1234.56"),
                "note": "x" * 60,
                "updated_at": when,
            },
            SourcePosition(10_000 + i, 0),
        )
        for i in range(start, start + count)
    ]


def create_table(dsn: str) -> None:
    with psycopg2.connect(dsn) as conn, conn.cursor() as cur:
        cur.execute(
            "CREATE TABLE public.users (id integer PRIMARY KEY, name text, "
            "email text NOT NULL, balance numeric(12,2), note text, updated_at timestamptz)"
        )
    conn.close()


def du_bytes(path: Path, exclude: str | None = None) -> int:
    """Bytes of the files under ``path`` as ``du`` counts them (allocated blocks)."""
    total = 0
    for root, dirs, files in os.walk(path):
        if exclude is not None and exclude in dirs:
            dirs.remove(exclude)
        for name in files:
            total += os.stat(os.path.join(root, name)).st_blocks * 512
    return total


def feed(handler: EventHandler, count: int, batch: int, start: int) -> float:
    began = time.perf_counter()
    for first in range(start, start + count, batch):
        records = typical_rows(min(batch, start + count - first), first)
        handler.handle(records, set())
    return time.perf_counter() - began


def run(base: Path, dsn: str, count: int, batch: int) -> dict[str, float]:
    config = DLQConfig(base_path=base / "dlq", min_free_disk_mb=0, max_retries=0)
    dlq = DLQManager(config, background=False)
    figures: dict[str, float] = {}
    try:
        for name, destination_id, target in (
            ("parked", "1", dsn),
            ("queued", "2", f"host=127.0.0.1 port={free_port()} user=x dbname=x connect_timeout=5"),
        ):
            destination = PostgreSQLDestination(destination_id, f"PG-{name}", target)
            health = {destination_id: DestinationHealth(destination)}
            handler = EventHandler(
                SOURCE_ID,
                [destination],
                health,
                dlq,
                RetryPolicy.from_config(config),
                live_write_deadline=config.live_write_deadline_ms / 1000,
            )
            try:
                seconds = feed(handler, count, batch, 1)
            finally:
                handler.close()
                destination.close()
            figures[f"{name}_seconds"] = round(seconds, 1)
        queue = QueueId(SOURCE_ID, TABLE, "1")
        sample = dlq.peek(queue.parked, 1)[0]
        figures["stack_chars"] = len(sample.failure.stack or "")
        figures["parked_messages"] = dlq.count(queue.parked)
        figures["queued_messages"] = dlq.count(QueueId(SOURCE_ID, TABLE, "2"))
    finally:
        dlq.close()
    parked_dir = base / "dlq" / QueueId(SOURCE_ID, TABLE, "1").parked.relative_path
    queued_dir = base / "dlq" / QueueId(SOURCE_ID, TABLE, "2").relative_path
    figures["parked_bytes_per_message"] = round(
        du_bytes(parked_dir) / max(1, int(figures["parked_messages"]))
    )
    figures["queued_bytes_per_message"] = round(
        du_bytes(queued_dir, exclude="parked") / max(1, int(figures["queued_messages"]))
    )
    return figures


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--messages", type=int, default=31_000, help="changes per lane")
    parser.add_argument("--batch", type=int, default=500, help="changes per handled batch")
    args = parser.parse_args()
    logging.basicConfig(level=logging.CRITICAL)
    # A plain ``kill`` still stops the server and removes the directory.
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))
    base = Path(tempfile.mkdtemp(prefix="bench_parked_"))
    base.chmod(0o755)  # the server user must be able to traverse it when run as root
    server = PostgresServer(base / "pg", port=free_port())
    server.start()
    try:
        create_table(server.dsn)
        figures = run(base, server.dsn, args.messages, args.batch)
    finally:
        server.stop()
        shutil.rmtree(base, ignore_errors=True)
    for name, value in figures.items():
        print(f"RESULT {name}={value}")


if __name__ == "__main__":
    main()
