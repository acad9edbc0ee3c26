"""``rosetta run``: clear errors without a traceback, clean stop on SIGTERM and SIGINT."""

from __future__ import annotations

import signal
import subprocess
import time
from pathlib import Path

import psycopg2
import pytest

from compute.dlq.manager import DLQManager
from compute.queue_id import QueueId
from compute.sources.synthetic_source import DEFAULT_TABLES, SyntheticSource
from config.dlq_config import DLQConfig
from tests.builders import pipelines_toml, postgresql_destination
from tests.pg_state import fetch_state
from tests.rosetta_cli import cli_env, run_rosetta, start_rosetta
from tests.tmpfs import mounted_tmpfs
from tests.waiting import OutputLines, wait_until


def base_env(tmp_path: Path) -> dict[str, str]:
    return cli_env(
        DLQ_BASE_PATH=str(tmp_path / "dlq"),
        ROSETTA_STATE_PATH=str(tmp_path / "state"),
        # Port 0: tests running side by side never collide on the default 8686.
        ROSETTA_ADMIN_ADDR="127.0.0.1:0",
    )


def test_no_pipelines_is_a_one_line_error(tmp_path: Path) -> None:
    result = run_rosetta(base_env(tmp_path), "run", timeout=60)
    assert result.returncode == 2
    assert "Traceback" not in result.stderr
    assert "ROSETTA_PIPELINES_FILE" in result.stderr


def test_bad_env_var_names_it(tmp_path: Path) -> None:
    env = base_env(tmp_path) | {"DLQ_BATCH_SIZE": "lots", "ROSETTA_PIPELINES_FILE": "x.toml"}
    result = run_rosetta(env, "run", timeout=60)
    assert result.returncode == 2
    assert "DLQ_BATCH_SIZE='lots' is invalid" in result.stderr
    assert "Traceback" not in result.stderr


def test_a_bad_priority_stops_start_up_naming_the_table(tmp_path: Path) -> None:
    pipelines = tmp_path / "pipelines.toml"
    pipelines.write_text(
        pipelines_toml(
            {"id": "1", "type": "synthetic", "total_events": 1},
            [{"id": "1", "name": "d", "type": "postgresql", "dsn": "host=127.0.0.1 port=1"}],
            priority={"public.orders": "urgent"},
        )
    )
    env = base_env(tmp_path) | {"ROSETTA_PIPELINES_FILE": str(pipelines)}
    result = run_rosetta(env, "run", timeout=60)
    assert result.returncode == 2
    assert "Traceback" not in result.stderr
    assert (
        "pipelines[0]: 'priority' of table 'public.orders' must be an integer from -100 to 100 "
        "(higher replays first, default 0), got 'urgent'"
    ) in result.stderr


PIPELINES = pipelines_toml(
    {"id": "1", "type": "synthetic", "total_events": 1},
    [{"id": "1", "name": "d", "type": "postgresql", "dsn": "host=127.0.0.1 port=1"}],
)


@pytest.fixture
def read_only_dir(tmp_path: Path):  # type: ignore[no-untyped-def]
    """A read-only tmpfs: unwritable even for root (chmod 000 is not)."""
    with mounted_tmpfs(tmp_path / "ro", "ro,size=1m") as mount_point:
        yield mount_point


@pytest.mark.parametrize("variable", ["DLQ_BASE_PATH", "ROSETTA_STATE_PATH"])
@pytest.mark.parametrize(
    ("where", "reason"),
    [
        ("under_a_file", "cannot create the directory: Not a directory"),
        ("is_a_file", "is not a directory"),
        ("read_only", "the directory is not writable: Read-only file system"),
        ("read_only_missing", "cannot create the directory: Read-only file system"),
    ],
)
def test_unusable_directory_is_a_one_line_config_error(
    tmp_path: Path, where: str, reason: str, variable: str, request: pytest.FixtureRequest
) -> None:
    """DLQ_BASE_PATH (queues) and ROSETTA_STATE_PATH (source offsets) are both
    checked at start-up: exit 2 with one line, before any event is read."""
    blocker = tmp_path / "file"
    blocker.write_text("not a directory")
    path = {
        "under_a_file": lambda: blocker / "dlq",
        "is_a_file": lambda: blocker,
        "read_only": lambda: request.getfixturevalue("read_only_dir"),
        "read_only_missing": lambda: request.getfixturevalue("read_only_dir") / "dlq",
    }[where]()
    (tmp_path / "p.toml").write_text(PIPELINES)
    env = base_env(tmp_path) | {
        variable: str(path),
        "ROSETTA_PIPELINES_FILE": str(tmp_path / "p.toml"),
    }
    result = run_rosetta(env, "run", timeout=60)
    assert result.returncode == 2
    assert "Traceback" not in result.stderr
    [line] = [ln for ln in result.stderr.splitlines() if ln.startswith("rosetta:")]
    assert line == f"rosetta: {variable}={str(path)!r}" + (
        f" {reason}" if reason.startswith("is ") else f": {reason}"
    )
    assert blocker.read_text() == "not a directory"  # nothing was overwritten


@pytest.mark.parametrize("signum", [signal.SIGTERM, signal.SIGINT])
def test_signal_stops_cleanly_and_keeps_queued_events(
    tmp_path: Path, postgres_server_factory, signum: int
) -> None:
    server = postgres_server_factory()
    source = SyntheticSource("1", None, total_events=100000, seed=3)
    conn = psycopg2.connect(server.dsn)
    conn.autocommit = True
    with conn.cursor() as cur:
        for statement in source.create_tables_sql():
            cur.execute(statement)
    conn.close()
    source_options = {"total_events": 100000, "seed": 3, "events_per_second": 500}
    (tmp_path / "p.toml").write_text(
        pipelines_toml(
            {"id": "1", "type": "synthetic", **source_options}, [postgresql_destination("DSN")]
        )
    )
    env = base_env(tmp_path) | {
        "ROSETTA_PIPELINES_FILE": str(tmp_path / "p.toml"),
        "DSN": server.dsn,
        "DLQ_MIN_FREE_DISK_MB": "0",
    }
    engine = start_rosetta(env, "run")
    assert engine.stdout is not None
    lines = OutputLines(engine.stdout)
    wait_until(
        lambda: sum(len(rows) for rows in fetch_state(server.dsn, DEFAULT_TABLES).values()),
        60,
        "the engine to write to PostgreSQL",
        interval=0.1,
    )
    server.stop("immediate")  # events now go to the DLQ
    users_queue = tmp_path / "dlq" / "source_1" / "table_public.users" / "dest_1"
    wait_until(lambda: any(users_queue.glob("seg_*")), 60, "events queued for public.users")
    started = time.monotonic()
    engine.send_signal(signum)
    engine.wait(timeout=30)
    output = lines.finish(timeout=30)
    assert engine.returncode == 0, output[-2000:]
    assert time.monotonic() - started < 15
    assert "signal received, stopping" in output
    assert "engine stopped" in output
    with DLQManager(
        DLQConfig(base_path=tmp_path / "dlq", min_free_disk_mb=0), background=False
    ) as dlq:
        queued = sum(dlq.store.count(q) for q in dlq.list_queues())
        assert queued > 0  # what could not be written is still on disk after the stop
        status_files = list((tmp_path / "dlq").rglob("status.json"))
        assert status_files, "queues should have a status file after a clean stop"
        assert QueueId("1", "public.users", "1") in dlq.list_queues()


def test_failing_source_stops_the_engine_with_exit_1(tmp_path: Path) -> None:
    events = tmp_path / "events.jsonl"
    events.write_text(
        '{"op": "c", "key": {"id": 1}, "after": {"id": 1}, "source": {"table": "t", "lsn": 10}}\n'
    )
    unreachable = {"dsn": "host=127.0.0.1 port=1 connect_timeout=1"}
    (tmp_path / "p.toml").write_text(
        pipelines_toml(
            {"id": "1", "type": "jsonl", "path": events, "follow": True},
            [{"id": "1", "name": "d", "type": "postgresql", **unreachable}],
        )
    )
    env = base_env(tmp_path) | {
        "ROSETTA_PIPELINES_FILE": str(tmp_path / "p.toml"),
        "DLQ_MIN_FREE_DISK_MB": "0",
    }
    engine = start_rosetta(env, "run")
    assert engine.stdout is not None
    lines = OutputLines(engine.stdout)
    # The event was read, failed against the unreachable destination and was queued.
    lines.wait_for("Enqueued to DLQ", 60)
    events.write_text("")  # the followed file shrinks: the source cannot go on safely
    engine.wait(timeout=60)
    output = lines.finish(timeout=30)
    assert engine.returncode == 1, output[-2000:]
    assert "pipeline failed" in output
    # the event read before the failure was queued (destination unreachable), not lost
    with DLQManager(
        DLQConfig(base_path=tmp_path / "dlq", min_free_disk_mb=0), background=False
    ) as dlq:
        assert sum(dlq.store.count(q) for q in dlq.list_queues()) == 1


BAD_DSNS = [
    "postgresql://user:s3cret@host:notaport/db",
    "postgresql://user:s3cret@host/db?badoption=1",
    "postgresql://user:s3cret@[::1/db",
    "host=x password=s3cret dbname",
    "host=x password='s3cret port=5432",
    "host=127.0.0.1 password=s3cret sslmode=required",
]


def one_line_config_error(result: subprocess.CompletedProcess[str]) -> str:
    assert result.returncode == 2, result.stderr[-2000:]
    assert "s3cret" not in result.stdout + result.stderr
    assert "Traceback" not in result.stderr
    assert result.stdout == ""
    [line] = result.stderr.splitlines()
    return line


@pytest.mark.parametrize("dsn", BAD_DSNS)
@pytest.mark.parametrize("inline", [False, True])
def test_malformed_destination_dsn_is_refused_at_start_without_its_password(
    tmp_path: Path, dsn: str, inline: bool
) -> None:
    setting = f"dsn = {dsn!r}" if inline else 'dsn_env = "DEST_DSN"'
    (tmp_path / "p.toml").write_text(
        '[[pipelines]]\nname="p"\n[pipelines.source]\nid="1"\ntype="synthetic"\n'
        "total_events=5\n"
        '[[pipelines.destinations]]\nid="1"\nname="Postgres-Local"\ntype="postgresql"\n'
        f"{setting}\n"
    )
    env = base_env(tmp_path) | {
        "ROSETTA_PIPELINES_FILE": str(tmp_path / "p.toml"),
        "DEST_DSN": dsn,
        "DLQ_MIN_FREE_DISK_MB": "0",
    }
    line = one_line_config_error(run_rosetta(env, "run", timeout=60))
    where = "dsn" if inline else "dsn_env DEST_DSN"
    assert line.startswith(f"rosetta: destination Postgres-Local (ID=1): {where}: invalid DSN: ")
    # refused before the source was read: nothing was queued or parked
    assert not list((tmp_path / "dlq").glob("source_*"))


@pytest.mark.parametrize("dsn", BAD_DSNS)
def test_malformed_config_database_url_is_refused_without_its_password(
    tmp_path: Path, dsn: str
) -> None:
    env = base_env(tmp_path) | {"CONFIG_DATABASE_URL": dsn}
    line = one_line_config_error(run_rosetta(env, "run", timeout=60))
    assert line.startswith("rosetta: CONFIG_DATABASE_URL: invalid DSN: ")
