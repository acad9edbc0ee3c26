"""pgbench on embedded servers for the CDC example, benchmark and fault tests: runs, checks.

The source server runs with ``wal_level = logical``; ``pgbench -i`` data is
deterministic, so a destination initialised the same way starts equal to the
source and only the changes have to travel.
"""

from __future__ import annotations

import subprocess
from collections.abc import Sequence
from typing import Any

from tests.compute.sources.postgres.pg_source_helpers import LOGICAL
from tests.compute.sources.postgres.pg_source_helpers import execute as run_sql
from tests.compute.sources.postgres.pg_source_helpers import query as fetch
from tests.servers import POSTGRES_BIN_PATH, PostgresServer

__all__ = [
    "KEYED",
    "LOGICAL",
    "balances",
    "checksums",
    "current_lsn",
    "history_checksum",
    "fetch",
    "pgbench",
    "pgbench_command",
    "run_sql",
]

# The keyed pgbench tables and their keys (pgbench_history has none).
KEYED = {
    "public.pgbench_accounts": "aid",
    "public.pgbench_branches": "bid",
    "public.pgbench_tellers": "tid",
}


def pgbench_command(server: PostgresServer, *args: str, dbname: str = "postgres") -> list[str]:
    return [
        str(POSTGRES_BIN_PATH / "pgbench"),
        *("-h", server.host, "-p", str(server.port), "-U", "postgres"),
        *args,
        dbname,
    ]


def pgbench(server: PostgresServer, *args: str, dbname: str = "postgres") -> str:
    """Run pgbench to the end; its output (the run's figures), or an error with its output."""
    result = subprocess.run(
        pgbench_command(server, *args, dbname=dbname),
        capture_output=True,
        text=True,
        check=False,
        stdin=subprocess.DEVNULL,
    )
    if result.returncode != 0:
        raise RuntimeError(f"pgbench {' '.join(args)} failed: {result.stdout}{result.stderr}")
    return result.stdout + result.stderr


def checksums(dsn: str, tables: Sequence[str] = tuple(KEYED)) -> dict[str, str]:
    """An md5 of each keyed table's rows in key order: equal exactly when the rows are."""
    sums = {}
    for table in tables:
        key = KEYED[table]
        rows = fetch(dsn, f"SELECT md5(string_agg(t::text, '|' ORDER BY {key})) FROM {table} t")
        sums[table] = rows[0][0]
    return sums


def history_checksum(dsn: str) -> tuple[Any, ...]:
    """pgbench_history (no key) as a multiset: its row count and an md5 of its sorted rows."""
    row = "(tid, bid, aid, delta, mtime, filler)::text"
    return fetch(
        dsn, f"SELECT count(*), md5(string_agg({row}, '|' ORDER BY {row})) FROM pgbench_history"
    )[0]


BALANCES = (
    "SELECT (SELECT sum(abalance) FROM pgbench_accounts), "
    "(SELECT sum(bbalance) FROM pgbench_branches), "
    "(SELECT sum(tbalance) FROM pgbench_tellers)"
)


def balances(dsn: str) -> tuple[Any, ...]:
    """Progress marker: the balance sums of the three keyed tables."""
    return fetch(dsn, BALANCES)[0]


def current_lsn(dsn: str) -> str:
    return str(fetch(dsn, "SELECT pg_current_wal_lsn()::text")[0][0])
