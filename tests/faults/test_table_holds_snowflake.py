"""Failures of a table, not of a row, under a real ``rosetta run`` writing to Snowflake (the
fakesnow emulator behind the real snowflake-connector-python).

During traffic (a followed JSON-lines file, two tables) one target table is
dropped, then a column of the other: each must hold that table's queue in
order (nothing parked), fire ``dlq_queue_held`` and show in ``rosetta dlq
queues --json`` with its cause, while the other table flows; creating the
table again, adding the column again, drains the queue with no operator
command, and the tables end exact. The emulator has no GRANT and accepts any
password, so a revoked privilege (003001) and a refused login (390100) are
covered by the classification's unit tests only.
"""

from __future__ import annotations

import itertools
import json
import signal
import threading
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import snowflake.connector

from tests.builders import pipelines_toml
from tests.faults.helpers import queue_leftovers, start_engine
from tests.rosetta_cli import cli_env, run_rosetta
from tests.waiting import wait_until

pytestmark = pytest.mark.filterwarnings("ignore:Arrow output on a DB-API result:UserWarning")

KEYS = 6
TABLES = ("ITEMS", "OTHER")


class Feeder:
    """Appends changes to both tables to a JSON-lines file at a steady rate, in a thread:
    change ``n`` sets ``v = n`` on key ``n % KEYS`` of each table."""

    def __init__(self, path: Path, per_second: float) -> None:
        self.path = path
        self.interval = 1 / per_second
        self.written = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="feeder", daemon=True)

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(10)

    def _run(self) -> None:
        with self.path.open("a") as out:
            for n in itertools.count():
                if self._stop.wait(self.interval):
                    return
                for table in TABLES:
                    change = {
                        "op": "u",
                        "key": {"id": n % KEYS},
                        "after": {"id": n % KEYS, "v": n},
                        "source": {"schema": "public", "table": table.lower(), "lsn": 100 + n},
                    }
                    out.write(json.dumps(change) + "\n")
                out.flush()  # whole lines only: the source reads what is flushed
                self.written = n + 1

    def final(self) -> dict[int, int]:
        """Each key's last value: what both tables hold once everything is delivered."""
        return {n % KEYS: n for n in range(max(0, self.written - KEYS), self.written)}


@pytest.fixture
def sf_database(fakesnow_server: dict[str, Any]) -> Iterator[tuple[Any, str]]:
    """An admin connection and a fresh database with schema ``PUBLIC``."""
    conn = snowflake.connector.connect(**fakesnow_server)
    name = f"HOLDS_{uuid.uuid4().hex[:8].upper()}"
    conn.cursor().execute(f"CREATE DATABASE {name}")
    conn.cursor().execute(f"CREATE SCHEMA IF NOT EXISTS {name}.PUBLIC")
    yield conn, name
    conn.close()


def _rows(conn: Any, database: str, table: str) -> dict[int, int | None]:
    cur = conn.cursor()
    cur.execute(f"SELECT ID, V FROM {database}.PUBLIC.{table}")
    return {int(i): (None if v is None else int(v)) for i, v in cur.fetchall()}


def _held_rows(env: dict[str, str]) -> dict[str, dict[str, Any]]:
    """``rosetta dlq queues --json`` (online, through the engine): the held rows by table."""
    result = run_rosetta(env, "dlq", "queues", "--json", timeout=60)
    assert result.returncode == 0, result.stderr
    rows = json.loads(result.stdout)
    assert not any(r["parked"] for r in rows), rows  # a table fault parks nothing
    return {r["table"]: r["held"] for r in rows if r.get("held")}


@pytest.mark.timeout(600)
def test_a_dropped_table_and_a_dropped_column_hold_in_order_and_drain_after_the_fix(
    tmp_path: Path, fakesnow_server: dict[str, Any], sf_database: tuple[Any, str]
) -> None:
    admin, database = sf_database
    for table in TABLES:
        admin.cursor().execute(f"CREATE TABLE {database}.PUBLIC.{table} (ID INT, V INT)")
    events = tmp_path / "events.jsonl"
    events.touch()
    destination = {
        "id": "1",
        "name": "Snowflake-Emulator",
        "type": "snowflake",
        "account": fakesnow_server["account"],
        "user": fakesnow_server["user"],
        "password_env": "SF_PASSWORD",
        "database": database,
        "schema": "PUBLIC",
        "host": fakesnow_server["host"],
        "port": fakesnow_server["port"],
        "protocol": "http",
        "login_timeout": 5,
        "network_timeout": 10,
        "session_parameters": {"CLIENT_OUT_OF_BAND_TELEMETRY_ENABLED": False},
    }
    (tmp_path / "pipelines.toml").write_text(
        pipelines_toml(
            {"id": "1", "type": "jsonl", "path": str(events), "follow": True},
            [destination],
            name="holds",
            batch_size=20,
        )
    )
    env = cli_env(
        DLQ_BASE_PATH=str(tmp_path / "dlq"),
        ROSETTA_STATE_PATH=str(tmp_path / "state"),
        ROSETTA_PIPELINES_FILE=str(tmp_path / "pipelines.toml"),
        ROSETTA_ADMIN_ADDR="127.0.0.1:0",
        DLQ_MIN_FREE_DISK_MB="0",
        DLQ_CHECK_INTERVAL="0.5",
        DLQ_BACKOFF_BASE_MS="50",
        DLQ_ALERT_EVAL_INTERVAL="0.5",
        SF_PASSWORD=fakesnow_server["password"],
        PYTHONUNBUFFERED="1",
    )
    log = tmp_path / "engine.log"
    feeder = Feeder(events, per_second=25)
    engine = start_engine(env, log)
    feeder.start()

    def text() -> str:
        return log.read_text(errors="replace")

    def newest(table: str) -> int:
        values = [v for v in _rows(admin, database, table).values() if v is not None]
        return max(values, default=-1)

    def grows(table: str) -> None:
        """New changes of ``table`` keep landing (its queue is not held)."""
        before = newest(table)
        wait_until(lambda: newest(table) > before, 30, f"{table} written", interval=0.3)

    def held(table: str, codes: tuple[str, ...]) -> None:
        queue = f"source_1/table_public.{table.lower()}/dest_1"
        firing = f"alert firing: alert=dlq_queue_held severity=warning subject={queue}"
        wait_until(
            lambda: f"public.{table.lower()}" in _held_rows(env), 60, f"{table} held", interval=0.5
        )
        hold = _held_rows(env)[f"public.{table.lower()}"]
        # A retry may meet the engine's own check first (it read the catalog again).
        assert hold["code"] in codes or "columns missing" in hold["message"], hold
        wait_until(lambda: firing in text(), 30, f"dlq_queue_held for {table}")

    def drained(table: str) -> None:
        name = f"public.{table.lower()}"
        wait_until(lambda: name not in _held_rows(env), 60, f"{table} hold cleared", interval=0.5)

    try:
        wait_until(lambda: len(_rows(admin, database, "OTHER")) == KEYS, 60, "first writes")

        # 1. the target table dropped (002003), then created again, empty
        admin.cursor().execute(f"DROP TABLE {database}.PUBLIC.ITEMS")
        held("ITEMS", ("002003",))
        grows("OTHER")
        at_fix = feeder.written
        admin.cursor().execute(f"CREATE TABLE {database}.PUBLIC.ITEMS (ID INT, V INT)")
        drained("ITEMS")
        # every key changed again since: the live flow is back on ITEMS
        wait_until(lambda: feeder.written > at_fix + 2 * KEYS, 30, "traffic after the fix")
        grows("ITEMS")

        # 2. a column of the other table dropped (002043 from the emulator; 000904 on
        # Snowflake), then added again
        admin.cursor().execute(f"ALTER TABLE {database}.PUBLIC.OTHER DROP COLUMN V")
        held("OTHER", ("002043", "000904"))
        grows("ITEMS")
        # every key of OTHER changes while held: its queue alone must bring them back
        at_hold = feeder.written
        wait_until(lambda: feeder.written > at_hold + 2 * KEYS, 30, "traffic while held")
        feeder.stop()
        final = feeder.final()
        wait_until(lambda: _rows(admin, database, "ITEMS") == final, 60, "ITEMS up to date")
        admin.cursor().execute(f"ALTER TABLE {database}.PUBLIC.OTHER ADD COLUMN V INT")
        drained("OTHER")
        # The queue replays oldest first: a change replayed out of order would
        # leave an older value behind.
        wait_until(lambda: _rows(admin, database, "OTHER") == final, 60, "OTHER drained")
    finally:
        feeder.stop()
        if engine.poll() is None:
            engine.send_signal(signal.SIGTERM)
            engine.wait(60)
    log_text = text()
    assert log_text.count("⏸ Queue held") == 2, log_text[-4000:]
    assert log_text.count("▶ Queue hold cleared") == 2
    queued, parked = queue_leftovers(tmp_path / "dlq")
    assert not queued and not parked, (queued, parked)
    assert _rows(admin, database, "ITEMS") == _rows(admin, database, "OTHER") == final
