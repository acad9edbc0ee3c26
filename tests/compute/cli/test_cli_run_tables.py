"""``rosetta run`` and tables without a usable key: the start-up refusal, append-only tables
(inserts applied once each, even replayed after ``kill -9``), and the run's summary line and
exit code, against a real PostgreSQL."""

from __future__ import annotations

import json
import os
import signal
from pathlib import Path
from typing import Any

from psycopg2 import sql

from compute.dlq.manager import DLQManager
from compute.error_codes import EXIT_CONFIG, EXIT_NEEDS_OPERATOR, EXIT_OK
from config.dlq_config import DLQConfig
from tests.builders import pipelines_toml, postgresql_destination
from tests.rosetta_cli import cli_env, run_rosetta, start_rosetta
from tests.waiting import wait_until

POSITIONS = "_rosetta_commit bigint, _rosetta_seq bigint, UNIQUE (_rosetta_commit, _rosetta_seq)"


def _env(tmp_path: Path, dsn: str, **pipeline: Any) -> dict[str, str]:
    source = pipeline.pop("source")
    (tmp_path / "p.toml").write_text(
        pipelines_toml(source, [postgresql_destination("DSN")], **pipeline)
    )
    return cli_env(
        DLQ_BASE_PATH=str(tmp_path / "dlq"),
        ROSETTA_STATE_PATH=str(tmp_path / "state"),
        ROSETTA_ADMIN_ADDR="127.0.0.1:0",
        ROSETTA_PIPELINES_FILE=str(tmp_path / "p.toml"),
        DLQ_MIN_FREE_DISK_MB="0",
        DSN=dsn,
    )


def _ddl(conn: Any, schema: str, *statements: str) -> None:
    with conn.cursor() as cur:
        cur.execute(sql.SQL("SET search_path TO {}").format(sql.Identifier(schema)))
        for statement in statements:
            cur.execute(statement)
        cur.execute("RESET search_path")


def _insert(schema: str, table: str, n: int, commit: int, seq: int = 0) -> str:
    return json.dumps(
        {
            "op": "c",
            "after": {"n": n, "what": f"event {n}"},
            "source": {"schema": schema, "table": table, "lsn_commit": commit, "sequence": seq},
        }
    )


def _rows(conn: Any, schema: str, table: str) -> list[tuple[Any, ...]]:
    with conn.cursor() as cur:
        cur.execute(
            sql.SQL("SELECT n, count(*) FROM {} GROUP BY n ORDER BY n").format(
                sql.Identifier(schema, table)
            )
        )
        return cur.fetchall()


def _summary(env: dict[str, str], exit_code: int) -> str:
    """Run ``rosetta run`` to its end, expecting ``exit_code``; its summary line, from "run"."""
    result = run_rosetta(env, "run", timeout=300)
    assert result.returncode == exit_code, result.stderr[-3000:]
    [line] = [ln for ln in result.stderr.splitlines() if "run summary:" in ln]
    return line[line.index("run summary:") :]


def test_start_up_refuses_tables_without_a_usable_key_one_line_each(
    tmp_path: Path, postgres_dsn: str, pg_conn: Any, pg_schema: str
) -> None:
    _ddl(
        pg_conn,
        pg_schema,
        "CREATE TABLE orders (id int, other int PRIMARY KEY)",  # keyed on the wrong column
        "CREATE TABLE plain (id int)",  # no key at all
        "CREATE TABLE audit_log (n int)",  # append-only without its position columns
        "CREATE TABLE events (n int, _rosetta_commit bigint, _rosetta_seq bigint)",  # no UNIQUE
        "CREATE TABLE fine (id int PRIMARY KEY)",
        f"CREATE TABLE history (n int, {POSITIONS})",
    )
    events = tmp_path / "events.jsonl"
    events.write_text("")
    s = pg_schema
    env = _env(
        tmp_path,
        postgres_dsn,
        source={
            "id": "1",
            "type": "jsonl",
            "path": str(events),
            "primary_keys": {f"{s}.orders": ["id"], f"{s}.fine": ["id"], f"{s}.nokey": []},
        },
        tables=[f"{s}.plain"],
        append_only=[f"{s}.audit_log", f"{s}.events", f"{s}.history"],
    )
    result = run_rosetta(env, "run", timeout=60)
    assert result.returncode == EXIT_CONFIG, result.stderr[-3000:]
    assert "Traceback" not in result.stderr
    lines = [ln.strip() for ln in result.stderr.splitlines() if ln.startswith("  pipeline p:")]
    dest = "pipeline p: Destination PG (ID=1): table"
    assert sorted(lines) == sorted(
        [
            f"{dest} {s}.orders -> {s}.orders: no primary key or unique constraint on exactly "
            f"the source's key (id) (it has PRIMARY KEY (other)); fix: ALTER TABLE {s}.orders "
            "ADD PRIMARY KEY (id), or declare it in the pipeline's append_only",
            f"{dest} {s}.plain -> {s}.plain: no primary key or unique constraint to upsert by; "
            f"fix: ALTER TABLE {s}.plain ADD PRIMARY KEY (<the key columns of its changes>), "
            "or declare it in the pipeline's append_only",
            f"{dest} {s}.audit_log -> {s}.audit_log: append-only, but no unique constraint on "
            "(_rosetta_commit, _rosetta_seq) to make a replayed insert a no-op (it has none); "
            f"fix: ALTER TABLE {s}.audit_log ADD COLUMN _rosetta_commit bigint, ADD COLUMN "
            "_rosetta_seq bigint, ADD UNIQUE (_rosetta_commit, _rosetta_seq)",
            f"{dest} {s}.events -> {s}.events: append-only, but no unique constraint on "
            "(_rosetta_commit, _rosetta_seq) to make a replayed insert a no-op (it has none); "
            f"fix: ALTER TABLE {s}.events ADD UNIQUE (_rosetta_commit, _rosetta_seq)",
            f"pipeline p: table {s}.nokey: its changes carry no key (no primary key at the "
            "source, no primary_keys entry), so they cannot be upserted or deleted by key; "
            "fix: give the source table a primary key (or set its primary_keys), or declare "
            "it in the pipeline's append_only",
        ]
    )
    assert "5 invalid settings:" in result.stderr
    assert not (tmp_path / "state" / "offsets").exists() or not any(
        (tmp_path / "state" / "offsets").iterdir()
    )


def _parked(tmp_path: Path) -> list[tuple[str, str]]:
    with DLQManager(
        DLQConfig(base_path=tmp_path / "dlq", min_free_disk_mb=0), background=False
    ) as dlq:
        return [
            (m.record.op.name, m.failure.message)
            for q in dlq.list_queues()
            for m in dlq.iter_messages(q.parked)
        ]


def test_append_only_inserts_land_once_updates_and_deletes_are_parked_and_run_exits_7(
    tmp_path: Path, postgres_dsn: str, pg_conn: Any, pg_schema: str
) -> None:
    s = pg_schema
    _ddl(pg_conn, s, f"CREATE TABLE audit_log (n int, what text, {POSITIONS})")
    update = {
        "op": "u",
        "before": {"n": 2, "what": "event 2"},
        "after": {"n": 2, "what": "changed"},
        "source": {"schema": s, "table": "audit_log", "lsn_commit": 35, "sequence": 0},
    }
    delete = {
        "op": "d",
        "before": {"n": 3, "what": "event 3"},
        "source": {"schema": s, "table": "audit_log", "lsn_commit": 36, "sequence": 0},
    }
    lines = [_insert(s, "audit_log", n, 10 * n) for n in range(1, 7)]
    lines[3:3] = [json.dumps(update), json.dumps(delete)]
    events = tmp_path / "events.jsonl"
    events.write_text("\n".join(lines) + "\n")
    env = _env(
        tmp_path,
        postgres_dsn,
        source={"id": "1", "type": "jsonl", "path": str(events)},
        append_only=[f"{s}.audit_log"],
    )
    assert _summary(env, EXIT_NEEDS_OPERATOR) == (
        "run summary: events=8 written=6 queued=0 parked=2 rejected=0 skipped=0 "
        "still_parked=2 held=0: "
        "changes wait for an operator (rosetta dlq list; the source's rejected events; a held "
        "queue's table to fix), exiting with 7"
    )
    assert _rows(pg_conn, s, "audit_log") == [(n, 1) for n in range(1, 7)]
    with pg_conn.cursor() as cur:
        cur.execute(
            sql.SQL("SELECT what FROM {} WHERE n = 2").format(sql.Identifier(s, "audit_log"))
        )
        assert cur.fetchall() == [("event 2",)]  # the update was not applied
    parked = sorted(_parked(tmp_path))
    assert [op for op, _ in parked] == ["DELETE", "UPDATE"]
    for op, reason in parked:
        assert f"{op.lower()} of append-only table {s}.audit_log at " in reason
        assert "an append-only table takes inserts only" in reason

    # Once an operator discarded them, the next run (nothing new) ends clean.
    with DLQManager(
        DLQConfig(base_path=tmp_path / "dlq", min_free_disk_mb=0), background=False
    ) as dlq:
        for queue in dlq.list_queues():
            dlq.purge(queue.parked)
    assert _summary(env, EXIT_OK) == (
        "run summary: events=0 written=0 queued=0 parked=0 rejected=0 skipped=0 "
        "still_parked=0 held=0"
    )


def test_summary_of_a_clean_run_and_a_rejected_event_exits_7(
    tmp_path: Path, postgres_dsn: str, pg_conn: Any, pg_schema: str
) -> None:
    s = pg_schema
    _ddl(pg_conn, s, "CREATE TABLE users (id int PRIMARY KEY, name text)")
    good = {
        "op": "c",
        "after": {"id": 1, "name": "a"},
        "source": {"schema": s, "table": "users", "lsn": 10},
    }
    events = tmp_path / "events.jsonl"
    # A tombstone and an empty line carry no change: skipped and counted, not rejected.
    events.write_text(json.dumps(good) + "\nnull\n\n")
    source = {
        "id": "1",
        "type": "jsonl",
        "path": str(events),
        "primary_keys": {f"{s}.users": ["id"]},
    }
    env = _env(tmp_path, postgres_dsn, source=source)
    assert _summary(env, EXIT_OK) == (
        "run summary: events=1 written=1 queued=0 parked=0 rejected=0 skipped=2 "
        "still_parked=0 held=0"
    )
    with events.open("a") as out:
        out.write("not json\n")
    assert _summary(env, EXIT_NEEDS_OPERATOR).startswith(
        "run summary: events=0 written=0 queued=0 parked=0 rejected=1 skipped=0 "
        "still_parked=0 held=0: "
    )


def test_append_only_inserts_replayed_after_kill_9_land_once(
    tmp_path: Path, postgres_dsn: str, pg_conn: Any, pg_schema: str
) -> None:
    """A keyless table's inserts, read again after ``kill -9`` (the unacknowledged tail) and
    once more from the start (offsets removed), are each in the table exactly once."""
    s = pg_schema
    _ddl(pg_conn, s, f"CREATE TABLE history (n int, what text, {POSITIONS})")
    total = 30_000
    events = tmp_path / "events.jsonl"
    events.write_text(
        "\n".join(_insert(s, "history", n, 100 + n // 3, n % 3) for n in range(total)) + "\n"
    )
    env = _env(
        tmp_path,
        postgres_dsn,
        source={"id": "1", "type": "jsonl", "path": str(events)},
        append_only=[f"{s}.history"],
        batch_size=50,
    )

    def count() -> int:
        with pg_conn.cursor() as cur:
            cur.execute(sql.SQL("SELECT count(*) FROM {}").format(sql.Identifier(s, "history")))
            return int(cur.fetchone()[0])

    for _ in range(3):
        engine = start_rosetta(env, "run")
        before = count()
        try:
            wait_until(lambda b=before: count() > b + 500, 60, "rows written", interval=0.01)
        finally:
            os.kill(engine.pid, signal.SIGKILL)
            engine.communicate(timeout=30)
        assert engine.returncode == -signal.SIGKILL
    _summary(env, EXIT_OK)
    assert _rows(pg_conn, s, "history") == [(n, 1) for n in range(total)]

    # Every insert delivered again from the start: still each row once.
    for offsets in (tmp_path / "state" / "offsets").iterdir():
        offsets.unlink()
    assert _summary(env, EXIT_OK).startswith(f"run summary: events={total} written={total} ")
    assert _rows(pg_conn, s, "history") == [(n, 1) for n in range(total)]
