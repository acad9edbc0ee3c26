"""Destination write throughput against real servers, side by side in one run.

    python tests/benchmarks/bench_destinations.py [--rows 100000] [--repeat 3]

PostgreSQL: 100,000 changes (90% upserts, half of them to existing rows, and
10% deletes), all to distinct keys so that every method applies the same rows.
Each method starts from the same table state; the best of ``--repeat`` runs
counts. Methods:

* destination: ``PostgreSQLDestination.write_batch`` of all the records;
* destination_guarded: the same with ``position_guard=True`` (the table has the
  two position columns; deletes leave tombstones);
* destination_b500, destination_guarded_b500: the same two, in batches of 500
  changes (a live pipeline's size);
* copy_upsert: bare COPY into a temp table + ``INSERT ... ON CONFLICT`` (and
  ``DELETE ... USING`` a temp table of deleted keys), rows pre-formatted;
* execute_values: psycopg2 ``execute_values`` upsert and delete, page 1000.

Snowflake: the same 10,000 changes (``--snowflake-rows``) written as one batch
through the real connector to a local fakesnow server, once with ``INSERT ...
VALUES`` and once staged (Parquet file, PUT, COPY INTO), then 100,000
(``--snowflake-staged-rows``) staged. The connector talks to fakesnow through a
counting proxy: statements are its query requests, bytes are what it sends
(request bodies are gzip-compressed by the connector), plus the staged files,
which go to cloud storage rather than through the Snowflake endpoint.

Prints, last, ``RESULT pg_apply_vs_copy_upsert=``, ``RESULT
pg_apply_vs_execute_values=``, ``RESULT pg_guarded_vs_unguarded=`` (guarded
rows/s over unguarded, one batch), ``RESULT pg_guarded_vs_unguarded_b500=``
(the same in batches of 500), ``RESULT snowflake_rows_per_statement=`` (the
VALUES path), ``RESULT snowflake_statements_per_100k_rows=`` (staged),
``RESULT snowflake_bytes_sent_per_row=`` (staged) and ``RESULT
snowflake_bytes_sent_per_row_values=`` (the same rows through VALUES).
"""

from __future__ import annotations

import argparse
import io
import logging
import math
import os
import random
import sys
import time
from collections.abc import Callable
from contextlib import closing
from datetime import datetime, timedelta
from decimal import Decimal
from functools import partial
from pathlib import Path
from typing import Any

import psycopg2
import psycopg2.extras

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

from destinations.postgresql.destination import PostgreSQLDestination  # noqa: E402
from destinations.postgresql.position_guard import tombstone_table_name  # noqa: E402
from destinations.records import (  # noqa: E402
    POSITION_COLUMNS,
    ChangeRecord,
    Operation,
    SourcePosition,
)
from tests.benchmarks.counting_proxy import CountingProxy  # noqa: E402
from tests.servers import PostgresCluster  # noqa: E402

TABLE = "bench_upsert"
DDL = (
    f"CREATE TABLE {TABLE} (id bigint PRIMARY KEY, name text NOT NULL, "
    "amount numeric(12,2), updated_at timestamp, active boolean)"
)
COLUMNS = ("id", "name", "amount", "updated_at", "active")
Row = tuple[int, str, Decimal, datetime, bool]


def make_workload(rows: int, seed: int = 7) -> tuple[list[Row], list[Row], list[int]]:
    """(initial rows, upsert rows, deleted ids): distinct keys, 10% deletes."""
    rng = random.Random(seed)
    base = datetime(2024, 1, 1)

    def row(key: int, version: int) -> Row:
        return (
            key,
            f"customer-{key}-v{version}",
            Decimal(rng.randrange(0, 10**8)) / 100,
            base + timedelta(seconds=key * 7 + version),
            rng.random() < 0.5,
        )

    deletes = rows // 10
    updates = (rows - deletes) // 2
    inserts = rows - deletes - updates
    existing = updates + deletes  # every delete and update hits a row
    initial = [row(k, 0) for k in range(existing)]
    old_keys = list(range(existing))
    rng.shuffle(old_keys)
    deleted = old_keys[:deletes]
    new_keys = range(existing, existing + inserts)
    changed = [row(k, 1) for k in old_keys[deletes:]] + [row(k, 1) for k in new_keys]
    return initial, changed, deleted


def to_records(changed: list[Row], deleted: list[int]) -> list[ChangeRecord]:
    records: list[ChangeRecord] = []
    seq = 0
    for values in changed:
        seq += 1
        records.append(
            ChangeRecord(
                TABLE,
                Operation.UPDATE,
                {"id": values[0]},
                dict(zip(COLUMNS, values, strict=True)),
                SourcePosition(1_000_000 + seq, 0),
            )
        )
    for key in deleted:
        seq += 1
        records.append(
            ChangeRecord(
                TABLE, Operation.DELETE, {"id": key}, None, SourcePosition(1_000_000 + seq)
            )
        )
    random.Random(3).shuffle(records)  # interleaved, as a real stream would be
    records.sort(key=lambda r: r.position)
    return records


def bare_copy_text(rows: list[Row]) -> io.StringIO:
    # The benchmark's rows need no escaping; this is the cheapest correct text.
    return io.StringIO(
        "".join(
            f"{r[0]}\t{r[1]}\t{r[2]}\t{r[3].isoformat()}\t{'t' if r[4] else 'f'}\n" for r in rows
        )
    )


def reset_table(dsn: str, initial: list[Row], guarded: bool = False) -> None:
    conn = psycopg2.connect(dsn)
    with conn, conn.cursor() as cur:
        cur.execute(f"DROP TABLE IF EXISTS {TABLE}, {tombstone_table_name(TABLE)}")
        cur.execute(DDL)
        if guarded:
            cur.execute(
                f"ALTER TABLE {TABLE} "
                + ", ".join(f"ADD COLUMN {column} bigint" for column in POSITION_COLUMNS)
            )
        cur.copy_expert(f"COPY {TABLE} ({', '.join(COLUMNS)}) FROM STDIN", bare_copy_text(initial))
    with conn.cursor() as cur:
        conn.autocommit = True
        cur.execute(f"VACUUM ANALYZE {TABLE}")
    conn.close()


def run_destination(
    dsn: str,
    changed: list[Row],
    deleted: list[int],
    *,
    guard: bool = False,
    batch: int | None = None,
) -> float:
    records = to_records(changed, deleted)
    destination = PostgreSQLDestination("bench", "PG-Bench", dsn, position_guard=guard)
    destination.test_connection(5.0)
    destination.write_batch(TABLE, records[:1])  # connect and read the catalog first
    size = batch or len(records)
    start = time.perf_counter()
    for begin in range(0, len(records), size):
        destination.write_batch(TABLE, records[begin : begin + size])
    elapsed = time.perf_counter() - start
    destination.close()
    return elapsed


def run_copy_upsert(dsn: str, changed: list[Row], deleted: list[int]) -> float:
    conn = psycopg2.connect(dsn)
    start = time.perf_counter()
    with conn, conn.cursor() as cur:
        cur.execute(
            f"CREATE TEMP TABLE stage ON COMMIT DROP AS SELECT * FROM {TABLE} WITH NO DATA;"
            "CREATE TEMP TABLE gone (id bigint) ON COMMIT DROP"
        )
        cur.copy_expert("COPY stage FROM STDIN", bare_copy_text(changed))
        cur.copy_expert("COPY gone FROM STDIN", io.StringIO("".join(f"{k}\n" for k in deleted)))
        cur.execute(
            f"DELETE FROM {TABLE} t USING gone g WHERE t.id = g.id;"
            f"INSERT INTO {TABLE} SELECT * FROM stage ON CONFLICT (id) DO UPDATE SET "
            "name = EXCLUDED.name, amount = EXCLUDED.amount, "
            "updated_at = EXCLUDED.updated_at, active = EXCLUDED.active"
        )
    elapsed = time.perf_counter() - start
    conn.close()
    return elapsed


def run_execute_values(dsn: str, changed: list[Row], deleted: list[int]) -> float:
    conn = psycopg2.connect(dsn)
    start = time.perf_counter()
    with conn, conn.cursor() as cur:
        psycopg2.extras.execute_values(
            cur,
            f"INSERT INTO {TABLE} (id, name, amount, updated_at, active) VALUES %s "
            "ON CONFLICT (id) DO UPDATE SET name = EXCLUDED.name, amount = EXCLUDED.amount, "
            "updated_at = EXCLUDED.updated_at, active = EXCLUDED.active",
            changed,
            page_size=1000,
        )
        psycopg2.extras.execute_values(
            cur,
            f"DELETE FROM {TABLE} t USING (VALUES %s) AS d (id) WHERE t.id = d.id",
            [(k,) for k in deleted],
            page_size=1000,
        )
    elapsed = time.perf_counter() - start
    conn.close()
    return elapsed


def expected_state(dsn: str) -> list[tuple[Any, ...]]:
    conn = psycopg2.connect(dsn)
    with conn.cursor() as cur:
        cur.execute(f"SELECT {', '.join(COLUMNS)} FROM {TABLE} ORDER BY id")
        rows = cur.fetchall()
    conn.close()
    return rows


def bench_postgres(dsn: str, rows: int, repeat: int) -> dict[str, float]:
    initial, changed, deleted = make_workload(rows)
    methods: dict[str, Callable[[str, list[Row], list[int]], float]] = {
        "destination": run_destination,
        "destination_guarded": partial(run_destination, guard=True),
        "destination_b500": partial(run_destination, batch=500),
        "destination_guarded_b500": partial(run_destination, guard=True, batch=500),
        "copy_upsert": run_copy_upsert,
        "execute_values": run_execute_values,
    }
    best: dict[str, float] = {}
    states: dict[str, int] = {}
    for _ in range(repeat):
        for name, method in methods.items():
            reset_table(dsn, initial, guarded="guarded" in name)
            elapsed = method(dsn, changed, deleted)
            best[name] = min(best.get(name, float("inf")), elapsed)
            states[name] = hash(tuple(expected_state(dsn)))
    if len(set(states.values())) != 1:
        raise SystemExit(f"methods disagree on the final table: {states}")
    applied = len(changed) + len(deleted)
    for name, seconds in best.items():
        print(f"postgres {name:24s} {applied / seconds:10.0f} rows/s  ({seconds:.3f} s)")
    return {name: applied / seconds for name, seconds in best.items()}


class _StagedFiles(logging.Handler):
    """Adds up the staged files' sizes from the destination's ``batch staged`` debug lines."""

    def __init__(self) -> None:
        super().__init__(logging.DEBUG)
        self.bytes = 0

    def emit(self, record: logging.LogRecord) -> None:
        if record.getMessage().startswith("batch staged "):
            self.bytes += int(record.getMessage().rsplit("file_bytes=", 1)[1])


def _snowflake_write(
    kwargs: dict[str, Any], records: list[ChangeRecord], threshold: int
) -> tuple[int, int, int, float]:
    """Write ``records`` as one batch into a fresh table through a counting proxy.

    Returns (statements the connector sent, bytes it sent, bytes of staged
    files, seconds). fakesnow takes a staged file by HTTP PUT as a presigned
    URL (cloud storage, for Snowflake), so the file's bytes are among those
    sent; the PUT statement costs two query requests there (the connector asks
    again for the URL), one on Snowflake's S3 stages.
    """
    import snowflake.connector

    from destinations.snowflake.destination import SnowflakeDestination

    setup = snowflake.connector.connect(**kwargs)
    cur = setup.cursor()
    cur.execute("CREATE DATABASE IF NOT EXISTS BENCH")
    cur.execute("CREATE SCHEMA IF NOT EXISTS BENCH.S")
    cur.execute(f"CREATE OR REPLACE TABLE BENCH.S.{TABLE.upper()} ({SNOWFLAKE_COLUMNS})")
    setup.close()
    files = _StagedFiles()
    logger = logging.getLogger("destinations.snowflake.destination")
    logger.addHandler(files)
    logger.setLevel(logging.DEBUG)
    logger.propagate = False  # the figures, not the debug lines, go to the console
    with closing(CountingProxy((kwargs["host"], kwargs["port"]))) as proxy:
        # fakesnow takes tens of seconds to parse a 10,000-row INSERT; the
        # connector cancels statements that outlast network_timeout.
        options = {**kwargs, "port": proxy.port, "network_timeout": 3600, "write_timeout": 7200}
        destination = SnowflakeDestination(
            "bench", "Snowflake-Bench", database="BENCH", schema="S",
            stage_threshold_rows=threshold, **options,
        )  # fmt: skip
        destination.write_batch(TABLE, records[:1])  # log in and read the table first
        sent_before, requests_before = proxy.snapshot()
        files.bytes = 0
        start = time.perf_counter()
        destination.write_batch(TABLE, records)
        elapsed = time.perf_counter() - start
        sent, requests = proxy.snapshot()
        destination.close()
    logger.removeHandler(files)
    logger.propagate = True
    return requests - requests_before, sent - sent_before, files.bytes, elapsed


SNOWFLAKE_COLUMNS = (
    "ID NUMBER(19,0), NAME VARCHAR, AMOUNT NUMBER(12,2), UPDATED_AT TIMESTAMP_NTZ, ACTIVE BOOLEAN"
)


def bench_snowflake(rows: int, staged_rows: int) -> dict[str, float]:
    """One batch of ``rows`` changes each way (VALUES, staged), and ``staged_rows`` staged."""
    from destinations.snowflake.stage import MAX_INSERT_BYTES, MAX_ROWS_PER_INSERT
    from tests.servers import fakesnow_server

    figures: dict[str, float] = {}
    with fakesnow_server() as kwargs:
        records = to_records(*make_workload(rows)[1:])
        for name, threshold in (("values", 10**9), ("staged", 1)):
            statements, sent, staged, seconds = _snowflake_write(kwargs, records, threshold)
            figures[f"{name}_statements"] = statements
            figures[f"{name}_bytes_per_row"] = sent / len(records)
            print(
                f"snowflake {name:6s} {len(records):7d} rows: {statements} statements, "
                f"{sent} bytes sent ({staged} of them the file) = "
                f"{sent / len(records):.1f} bytes/row ({seconds:.2f} s on fakesnow)"
            )
        # 100,000 rows in batches of ``staged_rows`` (one batch by default: the
        # largest batch_size).
        big = to_records(*make_workload(staged_rows)[1:])
        statements, sent, staged, seconds = _snowflake_write(kwargs, big, 1)
        figures["staged_statements_per_100k"] = statements * math.ceil(100_000 / len(big))
        print(
            f"snowflake staged {len(big):7d} rows: {statements} statements, "
            f"{sent / len(big):.1f} bytes/row ({seconds:.2f} s on fakesnow)"
        )
    print(
        f"snowflake values path: one INSERT per {MAX_ROWS_PER_INSERT} rows or "
        f"{MAX_INSERT_BYTES // 1024} KiB of statement text"
    )
    figures["rows_per_statement"] = len(records) / figures["values_statements"]
    return figures


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, default=100_000)
    parser.add_argument("--snowflake-rows", type=int, default=10_000)
    parser.add_argument("--snowflake-staged-rows", type=int, default=100_000)
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--skip-snowflake", action="store_true")
    args = parser.parse_args()
    logging.basicConfig(level=logging.WARNING)

    cluster = None
    dsn = os.environ.get("ROSETTA_TEST_POSTGRES_DSN")
    if not dsn:
        cluster = PostgresCluster()
        dsn = cluster.new_server().dsn
    try:
        pg = bench_postgres(dsn, args.rows, args.repeat)
    finally:
        if cluster is not None:
            cluster.close()
    sf = (
        {}
        if args.skip_snowflake
        else bench_snowflake(args.snowflake_rows, args.snowflake_staged_rows)
    )

    print(f"RESULT pg_apply_vs_copy_upsert={pg['destination'] / pg['copy_upsert']:.2f}")
    print(f"RESULT pg_apply_vs_execute_values={pg['destination'] / pg['execute_values']:.2f}")
    guarded = pg["destination_guarded"] / pg["destination"]
    print(f"RESULT pg_guarded_vs_unguarded={guarded:.2f}")
    guarded_b500 = pg["destination_guarded_b500"] / pg["destination_b500"]
    print(f"RESULT pg_guarded_vs_unguarded_b500={guarded_b500:.2f}")
    if sf:
        print(f"RESULT snowflake_rows_per_statement={sf['rows_per_statement']:.0f}")
        print(f"RESULT snowflake_statements_per_100k_rows={sf['staged_statements_per_100k']:.0f}")
        print(f"RESULT snowflake_bytes_sent_per_row={sf['staged_bytes_per_row']:.1f}")
        print(f"RESULT snowflake_bytes_sent_per_row_values={sf['values_bytes_per_row']:.1f}")


if __name__ == "__main__":
    main()
