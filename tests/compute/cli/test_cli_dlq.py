"""``rosetta dlq ...`` as a real console script, against a stopped engine's directories
and against a running ``rosetta run``; export/purge/import round trips into PostgreSQL."""

from __future__ import annotations

import datetime as dt
import json
import os
import signal
import socket
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from decimal import Decimal
from pathlib import Path
from typing import Any

import psycopg2
import pytest

from compute.codec.failure_context import FailureContext
from compute.codec.message import DLQMessage, encode_message
from compute.dlq.manager import DLQManager
from compute.queue_id import QueueId
from config.dlq_config import DLQConfig
from destinations.records import ChangeRecord, Operation, SourcePosition
from tests.builders import pipelines_toml, postgresql_destination
from tests.rosetta_cli import TERMINAL_SIZE
from tests.waiting import wait_until

ROOT = Path(__file__).resolve().parents[3]
QUEUE = QueueId("1", "public.items", "1")
Q = str(QUEUE)


def console_script() -> str:
    """The installed ``rosetta`` entry point (PYTHONPATH puts this worktree's code first)."""
    script = Path(sys.executable).parent / "rosetta"
    assert script.is_file(), f"the rosetta console script is not installed next to {sys.executable}"
    return str(script)


def base_env(tmp_path: Path, **extra: str) -> dict[str, str]:
    env = {
        k: v
        for k, v in os.environ.items()
        if not k.startswith(("DLQ_", "ROSETTA_")) and k not in TERMINAL_SIZE
    }
    env.pop("CONFIG_DATABASE_URL", None)
    env.update(
        {
            "DLQ_BASE_PATH": str(tmp_path / "dlq"),
            "ROSETTA_STATE_PATH": str(tmp_path / "state"),
            "DLQ_MIN_FREE_DISK_MB": "0",
            "PYTHONPATH": os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")]),
            **extra,
        }
    )
    return env


def rosetta(
    env: dict[str, str], *args: str, timeout: float = 120
) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [console_script(), *args],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=timeout,
    )


def ok_json(env: dict[str, str], *args: str) -> Any:
    result = rosetta(env, "dlq", *args, "--json")
    assert result.returncode == 0, result.stderr
    assert "Traceback" not in result.stderr
    return json.loads(result.stdout)


def fails(env: dict[str, str], code: int, *args: str) -> str:
    result = rosetta(env, "dlq", *args)
    assert result.returncode == code, (result.returncode, result.stdout, result.stderr)
    assert "Traceback" not in result.stderr + result.stdout
    errors = [
        line
        for line in result.stderr.splitlines()
        if line.startswith("rosetta: ")
        and not line.startswith(("rosetta: offline", "rosetta: online"))
    ]
    assert len(errors) == 1, result.stderr
    return errors[0]


def typed_record(i: int, key: int, op: Operation = Operation.UPDATE) -> ChangeRecord:
    tz = dt.timezone(dt.timedelta(hours=2, minutes=30))
    after = {
        "id": key,
        "amount": Decimal(f"{i}.10"),
        "at": dt.datetime(2024, 1, 2, 3, 4, 5, 123456 + i, tzinfo=tz),
        "day": dt.date(2024, 2, 29),
        "tm": dt.time(23, 59, 58, 1000 + i),
        "uid": uuid.UUID(int=i + 1),
        "raw": bytes([0, 255, i % 256]),
        "note": f"n°{i} ✓",
    }
    return ChangeRecord(
        "public.items",
        op,
        {"id": key},
        None if op is Operation.DELETE else after,
        SourcePosition(1000 + i, i % 3),
        None,
        1700000000.5 + i,
    )


def fill_queue(tmp_path: Path, count: int = 8) -> list[DLQMessage]:
    failure = FailureContext(
        "OperationalError",
        "connection refused",
        attempts=3,
        first_failure_at=1700000000.25,
        last_failure_at=1700000100.75,
    )
    messages = [
        DLQMessage(f"id-{i:03d}", QUEUE, typed_record(i, i % 5), failure, time.time() - 60 + i)
        for i in range(count)
    ]
    config = DLQConfig(base_path=tmp_path / "dlq", min_free_disk_mb=0)
    with DLQManager(config, background=False) as dlq:
        dlq.enqueue(QUEUE, messages)
    return messages


def stored(tmp_path: Path, lane: QueueId = QUEUE) -> list[bytes]:
    config = DLQConfig(base_path=tmp_path / "dlq", min_free_disk_mb=0)
    with DLQManager(config, background=False) as dlq:
        return [encode_message(m) for m in dlq.iter_messages(lane)]


# ------------------------------------------------------------------ engine stopped


def test_every_command_offline(tmp_path: Path) -> None:
    messages = fill_queue(tmp_path)
    env = base_env(tmp_path)
    result = rosetta(env, "dlq", "queues")
    assert result.returncode == 0 and "offline" in result.stderr
    assert "public.items" in result.stdout and "engine stopped" in result.stdout
    rows = ok_json(env, "queues")
    assert rows[0]["queue"] == Q and rows[0]["messages"] == 8
    shown = ok_json(env, "show", Q, "--limit", "3")
    assert [m["message_id"] for m in shown["messages"]] == ["id-000", "id-001", "id-002"]
    assert shown["messages"][0]["error_class"] == "OperationalError"
    assert shown["messages"][0]["attempts"] == 3
    result = rosetta(env, "dlq", "show", Q, "--limit", "2")
    assert (
        result.returncode == 0
        and "id-001" in result.stdout
        and "connection refused" in result.stdout
    )
    stats = ok_json(env, "stats")
    assert stats["total_messages"] == 8 and stats["recovery_enabled"] is False
    assert stats["destinations"]["1"]["total_messages"] == 8
    assert rosetta(env, "dlq", "stats").returncode == 0

    # park / unpark / discard by id
    assert ok_json(env, "park", "id-001")["parked"] is True
    assert fails(env, 5, "park", "id-001").endswith("is already parked")
    parked = ok_json(env, "show", Q, "--parked")
    assert [m["message_id"] for m in parked["messages"]] == ["id-001"]
    # id-006 has the same key (1): it is moved behind id-001 on unpark.
    moved = ok_json(env, "unpark", "id-001")["moved"]
    assert moved == ["id-001", "id-006"]
    assert fails(env, 2, "discard", "id-002").endswith("add --confirm")
    assert ok_json(env, "discard", "id-002", "--confirm")["discarded_from"] == ["main"]
    order = [m["message_id"] for m in ok_json(env, "show", Q, "--limit", "100")["messages"]]
    assert order == ["id-000", "id-003", "id-004", "id-005", "id-007", "id-001", "id-006"]

    # export, purge, import: the same queue, byte for byte
    before = stored(tmp_path)
    out = tmp_path / "q.jsonl"
    assert ok_json(env, "export", Q, "--out", str(out))["exported"] == 7
    lines = out.read_text().splitlines()
    assert json.loads(lines[0])["count"] == 7 and len(lines) == 8
    assert fails(env, 2, "purge", Q).endswith("add --confirm")
    assert len(stored(tmp_path)) == 7  # refused: nothing removed
    assert ok_json(env, "purge", Q, "--confirm")["removed"] == 7
    assert stored(tmp_path) == []
    assert ok_json(env, "import", str(out))["imported"] == 7
    assert stored(tmp_path) == before
    assert fails(env, 5, "import", str(out)).find("--skip-existing") > 0
    assert ok_json(env, "import", str(out), "--skip-existing")["skipped_existing"] == 7
    assert stored(tmp_path) == before
    assert {m.message_id for m in messages} - {"id-002"} == {
        m["message_id"] for m in ok_json(env, "show", Q, "--limit", "100")["messages"]
    }

    # dry run says what would go, and moves nothing
    dry = ok_json(env, "replay", "--all", "--dry-run")
    assert dry["queues"][0]["messages"] == 7 and dry["replayed"] == 0
    assert len(stored(tmp_path)) == 7


def test_offline_errors_are_one_line_with_documented_exit_codes(tmp_path: Path) -> None:
    fill_queue(tmp_path, 2)
    env = base_env(tmp_path)
    assert "no queue source_9/table_nope/dest_9" in fails(env, 3, "show", "9/nope/9")
    assert "not a queue name" in fails(env, 2, "show", "just-a-name")
    assert "no message 'nope'" in fails(env, 3, "park", "nope")
    assert "QUEUE or give --all" in fails(env, 2, "replay")
    missing = base_env(tmp_path, DLQ_BASE_PATH=str(tmp_path / "missing"))
    assert "does not exist" in fails(missing, 3, "queues")
    assert not (tmp_path / "missing").exists()  # nothing created by looking
    assert "DLQ_BATCH_SIZE" in fails(base_env(tmp_path, DLQ_BATCH_SIZE="x"), 2, "stats")
    bad = tmp_path / "bad.jsonl"
    out = tmp_path / "ok.jsonl"
    ok_json(env, "export", Q, "--out", str(out))
    lines = out.read_text().splitlines()
    bad.write_text("\n".join([lines[0], lines[1].replace('"op": "u"', '"op": "x"')]) + "\n")
    assert "bad.jsonl line 2: field 'op' must be one of" in fails(env, 1, "import", str(bad))
    bad.write_text("\n".join(lines[:2]) + "\n")
    assert "header says 2 message(s), the file holds 1" in fails(env, 1, "import", str(bad))
    assert len(stored(tmp_path)) == 2  # a bad file writes nothing
    # no replay target: the pipelines config is missing
    assert "ROSETTA_PIPELINES_FILE" in fails(env, 2, "replay", Q)
    # a stale admin.json whose pid is alive but whose API does not answer
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        dead_port = s.getsockname()[1]
    (tmp_path / "dlq" / "admin.json").write_text(
        json.dumps({"pid": os.getpid(), "url": f"http://127.0.0.1:{dead_port}"})
    )
    line = fails(env, 4, "stats")
    assert f"engine pid {os.getpid()} is running but its admin API" in line
    # ... and a dead pid: ignored, the directories are opened directly
    (tmp_path / "dlq" / "admin.json").write_text(
        json.dumps({"pid": 2**22 + 12345, "url": f"http://127.0.0.1:{dead_port}"})
    )
    assert ok_json(env, "stats")["total_messages"] == 2


def test_locked_base_path_without_admin_api_names_the_pid(tmp_path: Path) -> None:
    fill_queue(tmp_path, 1)
    config = DLQConfig(base_path=tmp_path / "dlq", min_free_disk_mb=0)
    with DLQManager(config, background=False):  # this process holds the lock
        line = fails(base_env(tmp_path), 4, "queues")
    assert f"pid {os.getpid()}" in line and "admin API is off or unreachable" in line


# ------------------------------------------------------------------ PostgreSQL


def create_items(dsn: str) -> None:
    conn = psycopg2.connect(dsn)
    conn.autocommit = True
    with conn.cursor() as cur:
        cur.execute(
            "CREATE TABLE IF NOT EXISTS public.items (id int PRIMARY KEY, amount numeric,"
            " at timestamptz, day date, tm time, uid uuid, raw bytea, note text)"
        )
        cur.execute("TRUNCATE public.items")
    conn.close()


def rows(dsn: str) -> list[tuple[Any, ...]]:
    conn = psycopg2.connect(dsn)
    with conn.cursor() as cur:
        cur.execute(
            "SELECT id, amount, at, day, tm, uid::text, encode(raw, 'hex'), note"
            " FROM public.items ORDER BY id"
        )
        found = cur.fetchall()
    conn.close()
    return found


def write_pipelines(path: Path, source: str) -> None:
    path.write_text(
        pipelines_toml(
            {"id": "1", "type": "jsonl", "path": source, "follow": True},
            [postgresql_destination("TEST_DEST_DSN")],
            name="items",
            batch_size=50,
        )
    )


def test_export_purge_import_replays_identical_rows(tmp_path: Path, postgres_dsn: str) -> None:
    fill_queue(tmp_path, 12)
    create_items(postgres_dsn)
    (tmp_path / "events.jsonl").write_text("")
    write_pipelines(tmp_path / "p.toml", str(tmp_path / "events.jsonl"))
    env = base_env(
        tmp_path, ROSETTA_PIPELINES_FILE=str(tmp_path / "p.toml"), TEST_DEST_DSN=postgres_dsn
    )
    original = stored(tmp_path)
    out = tmp_path / "q.jsonl"
    ok_json(env, "export", Q, "--out", str(out))
    result = ok_json(env, "replay", Q)
    assert result["replayed"] == 12 and result["failed"] == 0
    first = rows(postgres_dsn)
    assert len(first) == 5  # 12 changes to 5 keys: the last of each wins
    assert first[0][1] == Decimal("10.10")  # key 0: changes 0, 5, 10
    create_items(postgres_dsn)  # empty the table
    assert ok_json(env, "purge", Q, "--confirm")["removed"] == 0  # replay drained it
    assert ok_json(env, "import", str(out))["imported"] == 12
    assert stored(tmp_path) == original  # same ids, order, values, types
    assert ok_json(env, "replay", "--all")["replayed"] == 12
    assert rows(postgres_dsn) == first


# ------------------------------------------------------------------ engine running


@pytest.fixture
def running_engine(
    tmp_path: Path, postgres_server_factory: Any
) -> Iterator[tuple[dict[str, str], Any, subprocess.Popen[bytes]]]:
    server = postgres_server_factory()
    create_items(server.dsn)
    server.stop("fast")  # the outage: every event goes to the DLQ
    events = tmp_path / "events.jsonl"
    with events.open("w") as f:
        for i in range(10):
            f.write(
                json.dumps(
                    {
                        "op": "u",
                        "key": {"id": i % 4},
                        "after": {"id": i % 4, "note": f"v{i}"},
                        "source": {"table": "public.items", "lsn": 100 + i},
                    }
                )
                + "\n"
            )
    write_pipelines(tmp_path / "p.toml", str(events))
    env = base_env(
        tmp_path,
        ROSETTA_PIPELINES_FILE=str(tmp_path / "p.toml"),
        TEST_DEST_DSN=server.dsn + " connect_timeout=2",
        ROSETTA_ADMIN_ADDR="127.0.0.1:0",
        # no automatic replay: the operator drives it (nor the quick probes after a failure)
        DLQ_CHECK_INTERVAL="3600",
        DLQ_CHECK_INTERVAL_MIN="3600",
        PYTHONUNBUFFERED="1",
    )
    log = tmp_path / "engine.log"
    engine = subprocess.Popen(
        [console_script(), "run"],
        cwd=ROOT,
        env=env,
        stdout=log.open("wb"),
        stderr=subprocess.STDOUT,
    )

    def engine_reports_ten_queued() -> bool:
        assert engine.poll() is None, log.read_text()[-3000:]
        if not (tmp_path / "dlq" / "admin.json").exists():
            return False
        result = rosetta(env, "dlq", "stats", "--json")
        return result.returncode == 0 and json.loads(result.stdout)["total_messages"] == 10

    wait_until(
        engine_reports_ten_queued,
        120,
        "the running engine to report 10 queued messages",
        interval=0.2,  # each look runs a ``rosetta dlq stats`` process
    )
    yield env, server, engine
    if engine.poll() is None:
        engine.send_signal(signal.SIGTERM)
        engine.wait(60)


def test_every_command_against_a_running_engine(
    tmp_path: Path, running_engine: tuple[dict[str, str], Any, subprocess.Popen[bytes]]
) -> None:
    env, server, engine = running_engine
    info = json.loads((tmp_path / "dlq" / "admin.json").read_text())
    assert info["pid"] == engine.pid
    result = rosetta(env, "dlq", "queues")
    assert result.returncode == 0 and f"online: engine pid {engine.pid}" in result.stderr
    rows_ = ok_json(env, "queues")
    assert rows_[0]["messages"] == 10 and rows_[0]["destination_health"] == "unhealthy"
    shown = ok_json(env, "show", Q, "--limit", "10")
    ids = [m["message_id"] for m in shown["messages"]]
    assert len(ids) == 10 and shown["messages"][0]["key"] == {"id": 0}
    stats = ok_json(env, "stats")
    assert stats["recovery_enabled"] is True and stats["mode"] == "online"
    # errors go through the API with the same exit codes
    assert "no queue" in fails(env, 3, "show", "1/nope/1")
    assert "no message" in fails(env, 3, "unpark", "nope")
    # park the first change to key 1 (ids[1]); key 1 changes again at 5 and 9
    assert ok_json(env, "park", ids[1])["parked"] is True
    assert "already parked" in fails(env, 5, "park", ids[1])
    # park and unpark key 2's first change: it and key 2's later change go to the tail
    assert ok_json(env, "park", ids[2])["parked"] is True
    assert ok_json(env, "unpark", ids[2])["moved"] == [ids[2], ids[6]]
    assert ok_json(env, "discard", ids[0], "--confirm")["discarded_from"] == ["main"]
    out = tmp_path / "online.jsonl"
    assert ok_json(env, "export", Q, "--out", str(out))["exported"] == 8
    assert ok_json(env, "purge", Q, "--confirm")["removed"] == 8
    assert ok_json(env, "import", str(out))["imported"] == 8
    assert "--skip-existing" in fails(env, 5, "import", str(out))
    dry = ok_json(env, "replay", Q, "--dry-run")
    assert dry["queues"][0]["messages"] == 8 and dry["replayed"] == 0
    # still down: the replay stops, exit 6 (destination unreachable), nothing lost
    failed = rosetta(env, "dlq", "replay", Q, "--json")
    assert failed.returncode == 6 and json.loads(failed.stdout)["replayed"] == 0
    assert "8 message(s) stay queued" in failed.stderr
    server.start()
    result = ok_json(env, "replay", Q)
    # key 1's later changes (5, 9) are held behind the parked one
    assert result["replayed"] == 6 and result["parked"] == 2
    assert {r[0]: r[7] for r in rows(server.dsn)} == {2: "v6", 3: "v7", 0: "v8"}
    parked = ok_json(env, "show", Q, "--parked")
    assert [m["message_id"] for m in parked["messages"]] == [ids[1], ids[5], ids[9]]
    result = ok_json(env, "replay", Q, "--parked")
    assert result["replayed"] == 3
    assert {r[0]: r[7] for r in rows(server.dsn)}[1] == "v9"
    assert ok_json(env, "stats")["total_messages"] == 0
    engine.send_signal(signal.SIGTERM)
    assert engine.wait(60) == 0
    assert not (tmp_path / "dlq" / "admin.json").exists()
    # stopped now: the same command works offline
    result = rosetta(env, "dlq", "stats", "--json")
    assert result.returncode == 0 and "offline" in result.stderr
