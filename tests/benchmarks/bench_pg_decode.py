"""Micro benchmark: the PostgreSQL source's Python CPU per change, on real pgoutput bytes.

    python tests/benchmarks/bench_pg_decode.py [--changes 200000] [--scale 5] [--repeat 5]
        [--capture /tmp/pg_decode.pickle] [--profile assemble|stream]

The slot's bytes are captured once from a real server (an embedded
PostgreSQL with ``wal_level = logical``, pgbench's default script, read with
``pg_logical_slot_peek_binary_changes`` and ``proto_version 1``) and kept in
``--capture`` for later runs, so that before and after compare the same input.
Then, in this process only, with no server in the timing:

* ``pg_decode_assemble``: ``TransactionAssembler.feed_bytes``
  over every message (the decode and the records).
* ``pg_decode_stream``: the ``ReplicationStream`` thread's loop over the same
  messages (a cursor that hands them out as ``read_message`` does, status
  updates to nowhere), with the caller taking batches of 5000 and confirming
  them as ``PostgresSource`` does: the whole source path but the socket.

Each prints ``RESULT name_changes_per_second=...`` and the process CPU seconds
(the median of ``--repeat`` runs).
"""

from __future__ import annotations

import argparse
import cProfile
import math
import pickle
import pstats
import statistics
import sys
import threading
import time
from pathlib import Path
from types import SimpleNamespace
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

from compute.sources.postgres import stream as stream_module  # noqa: E402
from compute.sources.postgres.stream import ReplicationStream  # noqa: E402
from compute.sources.postgres.transactions import TransactionAssembler  # noqa: E402
from tests.pgbench_cdc import KEYED, LOGICAL, fetch, pgbench, run_sql  # noqa: E402
from tests.servers import PostgresCluster  # noqa: E402

TABLES = tuple(KEYED)


def capture(changes: int, scale: int) -> list[bytes]:
    """pgbench's changes as the pgoutput messages a slot sends for them."""
    cluster = PostgresCluster()
    try:
        source = cluster.new_server(LOGICAL)
        pgbench(source, "-i", "-s", str(scale), "-q")
        run_sql(
            source.dsn,
            f"CREATE PUBLICATION bench FOR TABLE {', '.join(TABLES)}",
            "SELECT pg_create_logical_replication_slot('bench', 'pgoutput')",
        )
        clients = 4
        per_client = math.ceil(changes / 3 / clients)
        pgbench(source, "-n", "-c", str(clients), "-j", "2", "-t", str(per_client))
        rows = fetch(
            source.dsn,
            "SELECT data FROM pg_logical_slot_peek_binary_changes('bench', NULL, NULL, "
            "'proto_version', '1', 'publication_names', 'bench')",
        )
        return [bytes(row[0]) for row in rows]
    finally:
        cluster.close()


def assemble(messages: list[bytes]) -> int:
    assembler = TransactionAssembler(tables=TABLES)
    feed = assembler.feed_bytes
    records = 0
    for payload in messages:
        transaction = feed(payload)
        if transaction is not None:
            records += len(transaction.records)
    return records


class _Message:
    __slots__ = ("payload",)

    def __init__(self, payload: bytes) -> None:
        self.payload = payload


class _Cursor:
    """Hands out the captured messages as psycopg2's ``read_message`` does, then None."""

    def __init__(self, messages: list[_Message], done: threading.Event) -> None:
        self._messages = iter(messages)
        self._done = done
        self.wal_end = 0

    def read_message(self) -> _Message | None:
        message = next(self._messages, None)
        if message is None:
            self._done.set()
        return message


class _Status:
    def __init__(self, connection: Any) -> None:
        self.sent = 0

    def send(self, write: int, flush: int, apply: int | None = None) -> None:
        self.sent += 1


def stream(messages: list[_Message], expected: int, profile: cProfile.Profile | None = None) -> int:
    done = threading.Event()
    cursor = _Cursor(messages, done)
    replication = ReplicationStream("", "bench", "bench", tables=TABLES, status_interval=1.0)
    run: Any = replication._stream
    if profile is not None:
        run = lambda *args: profile.runcall(replication._stream, *args)  # noqa: E731
    stream_module.StandbyStatus = _Status  # type: ignore[misc,assignment]
    stream_module.select = SimpleNamespace(select=lambda *a: done.wait(0.2))  # type: ignore[assignment]
    replication._thread = threading.Thread(target=run, args=(None, cursor), daemon=True)
    replication._thread.start()
    seen = 0
    try:
        while seen < expected:
            records, end_lsn = replication.take(5000)
            seen += len(records)
            if end_lsn is not None:
                replication.confirm(end_lsn)
            if not records:
                time.sleep(0.001)
    finally:
        replication.stop()
    return seen


def timed(name: str, runs: int, work: Any, changes: int) -> None:
    walls, cpus = [], []
    for _ in range(runs):
        cpu, wall = time.process_time(), time.perf_counter()
        work()
        cpus.append(time.process_time() - cpu)
        walls.append(time.perf_counter() - wall)
    wall_s, cpu_s = statistics.median(walls), statistics.median(cpus)
    print(f"{name}: {changes} changes, wall {wall_s:.3f} s, cpu {cpu_s:.3f} s", flush=True)
    print(f"RESULT {name}_changes_per_second={changes / wall_s:.0f}")
    print(f"RESULT {name}_cpu_us_per_change={cpu_s / changes * 1e6:.2f}")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--changes", type=int, default=200_000)
    parser.add_argument("--scale", type=int, default=5)
    parser.add_argument("--repeat", type=int, default=5)
    parser.add_argument("--capture", type=Path, default=Path("/tmp/pg_decode.pickle"))
    parser.add_argument("--profile", choices=("assemble", "stream"))
    args = parser.parse_args()
    if args.capture.exists():
        messages = pickle.loads(args.capture.read_bytes())
    else:
        messages = capture(args.changes, args.scale)
        args.capture.write_bytes(pickle.dumps(messages))
    changes = assemble(messages)
    print(f"{len(messages)} messages, {changes} changes", flush=True)
    wrapped = [_Message(m) for m in messages]
    if args.profile:
        profile = cProfile.Profile()
        if args.profile == "assemble":
            profile.runcall(assemble, messages)
        else:
            stream(wrapped, changes, profile)
        pstats.Stats(profile).sort_stats("tottime").print_stats(20)
        return 0
    timed("pg_decode_assemble", args.repeat, lambda: assemble(messages), changes)
    timed("pg_decode_stream", args.repeat, lambda: stream(wrapped, changes), changes)
    return 0


if __name__ == "__main__":
    sys.exit(main())
