"""A finite ``rosetta run`` whose only problem is a held queue (its target table is missing):
it ends with the summary naming the queue and its cause and exit 7, parks nothing; an
operator's replay says the table refuses every change and parks nothing either; a restart
with the table still missing holds it again, with the new changes behind the old ones; once
the table exists the next run drains it, in order, and exits 0. Against a real PostgreSQL."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from compute.error_codes import EXIT_FAILED, EXIT_NEEDS_OPERATOR, EXIT_OK
from tests.builders import pipelines_toml, postgresql_destination
from tests.faults.helpers import queue_leftovers
from tests.rosetta_cli import cli_env, run_rosetta

KEYS = 5


def _events(path: Path, schema: str, numbers: range) -> None:
    """Append updates ``v = n`` of key ``n % KEYS`` of ``schema.items`` and of ``schema.other``."""
    with path.open("a") as out:
        for n in numbers:
            for table in ("items", "other"):
                change = {
                    "op": "u",
                    "key": {"id": n % KEYS},
                    "after": {"id": n % KEYS, "v": n},
                    "source": {"schema": schema, "table": table, "lsn": 1000 + n},
                }
                out.write(json.dumps(change) + "\n")


def _run(env: dict[str, str], exit_code: int) -> tuple[str, str]:
    """``rosetta run`` to its end, expecting ``exit_code``: (its summary line, its log)."""
    result = run_rosetta(env, "--log-level", "INFO", "run", timeout=120)
    assert result.returncode == exit_code, result.stderr[-3000:]
    assert "Traceback" not in result.stderr
    [line] = [ln for ln in result.stderr.splitlines() if "run summary:" in ln]
    return line[line.index("run summary:") :], result.stderr


def _rows(conn: Any, table: str) -> dict[int, int]:
    with conn.cursor() as cur:
        cur.execute(f"SELECT id, v FROM {table}")
        return dict(cur.fetchall())


@pytest.mark.timeout(300)
def test_a_run_left_with_only_a_held_queue_ends_with_exit_7_and_drains_after_the_fix(
    tmp_path: Path, postgres_dsn: str, pg_conn: Any, pg_schema: str
) -> None:
    s = pg_schema
    with pg_conn.cursor() as cur:
        cur.execute(f"CREATE TABLE {s}.other (id int PRIMARY KEY, v int)")
    events = tmp_path / "events.jsonl"
    _events(events, s, range(20))
    (tmp_path / "p.toml").write_text(
        pipelines_toml(
            {"id": "1", "type": "jsonl", "path": str(events)},
            [postgresql_destination("DSN")],
            batch_size=7,
        )
    )
    env = cli_env(
        DLQ_BASE_PATH=str(tmp_path / "dlq"),
        ROSETTA_STATE_PATH=str(tmp_path / "state"),
        ROSETTA_ADMIN_ADDR="127.0.0.1:0",
        ROSETTA_PIPELINES_FILE=str(tmp_path / "p.toml"),
        DLQ_MIN_FREE_DISK_MB="0",
        DLQ_CHECK_INTERVAL="0.5",
        DLQ_BACKOFF_BASE_MS="50",
        DSN=postgres_dsn,
    )
    queue = f"source_1/table_{s}.items/dest_1"

    # 1. items is missing from the start: its queue is held, the other table is written.
    summary, log = _run(env, EXIT_NEEDS_OPERATOR)
    assert summary.startswith(
        "run summary: events=40 written=20 queued=20 parked=0 rejected=0 skipped=0 "
        f"still_parked=0 held=1 held_queues={queue} (UndefinedTable [42P01]: "
    ), summary
    assert "only held queues are left" in log
    assert log.count("⏸ Queue held") == 1
    assert _rows(pg_conn, f"{s}.other") == {k: 15 + k for k in range(KEYS)}
    assert queue_leftovers(tmp_path / "dlq") == ({queue: 20}, {})
    # An operator's replay meets the same failure: it says the table is the
    # problem (not the changes), parks nothing and leaves the queue in order.
    replay = run_rosetta(env, "dlq", "replay", queue, "--json")
    assert replay.returncode == EXIT_FAILED, replay.stderr
    [row] = json.loads(replay.stdout)["queues"]
    assert row["error"].startswith(
        "held: the target table refuses every change: UndefinedTable [42P01]: "
    ), row
    assert (row["failed"], row["parked"], row["held"]["code"]) == (20, 0, "42P01"), row
    assert replay.stderr.splitlines()[-1] == (
        f"rosetta: 20 message(s) stay queued in {queue}, nothing was parked: the target table "
        "refuses every change (the table's error column says how); once it is fixed the "
        "engine replays them by itself (or run this replay again)"
    )
    assert queue_leftovers(tmp_path / "dlq") == ({queue: 20}, {})

    # 2. A restart with the table still missing: held again on the first retry
    # (holds live in memory), nothing parked, the new changes queued behind.
    _events(events, s, range(20, 40))
    summary, log = _run(env, EXIT_NEEDS_OPERATOR)
    assert summary.startswith(
        "run summary: events=40 written=20 queued=20 parked=0 rejected=0 skipped=0 "
        f"still_parked=0 held=1 held_queues={queue} (UndefinedTable [42P01]: "
    ), summary
    assert queue_leftovers(tmp_path / "dlq") == ({queue: 40}, {})
    assert _rows(pg_conn, f"{s}.other") == {k: 35 + k for k in range(KEYS)}

    # 3. The table created: the next run drains the queue by itself, oldest first,
    # its new changes behind the queued ones (each key ends at its last value).
    with pg_conn.cursor() as cur:
        cur.execute(f"CREATE TABLE {s}.items (id int PRIMARY KEY, v int)")
    _events(events, s, range(40, 60))
    summary, _ = _run(env, EXIT_OK)
    assert summary.startswith("run summary: events=40 written=80 "), summary
    assert summary.endswith("parked=0 rejected=0 skipped=0 still_parked=0 held=0"), summary
    assert _rows(pg_conn, f"{s}.items") == {k: 55 + k for k in range(KEYS)}
    assert _rows(pg_conn, f"{s}.other") == {k: 55 + k for k in range(KEYS)}
    assert queue_leftovers(tmp_path / "dlq") == ({}, {})
