"""A queue's bytes are one number: status.json, admin API, metrics, `rosetta dlq queues`."""

from __future__ import annotations

import json
import re
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from compute.codec.failure_context import FailureContext
from compute.codec.message import DLQMessage
from compute.dlq.manager import DLQManager
from config.admin_config import AdminConfig
from tests.builders import change, dlq_config, pipelines_toml
from tests.compute.admin.test_http_api import QUEUE, Harness, call, message, start_engine
from tests.rosetta_cli import cli_env, run_rosetta
from tests.waiting import wait_until


@pytest.fixture
def engine(tmp_path: Path) -> Iterator[Harness]:
    harness = start_engine(tmp_path, AdminConfig(port=0))
    yield harness
    harness.engine.stop()


def test_status_file_api_metrics_and_cli_show_the_same_bytes(
    tmp_path: Path, engine: Harness
) -> None:
    status, body = call(engine.url + "/dlq/queues")
    assert status == 200
    api = next(r["bytes_on_disk"] for r in body["queues"] if r["queue"] == str(QUEUE))
    result = run_rosetta(cli_env(DLQ_BASE_PATH=str(tmp_path / "dlq")), "dlq", "queues", "--json")
    assert result.returncode == 0 and "online" in result.stderr, result.stderr
    cli = next(r["bytes_on_disk"] for r in json.loads(result.stdout) if r["queue"] == str(QUEUE))
    _, metrics = call(engine.url + "/metrics")
    found = re.search(r'rosetta_dlq_queue_bytes\{[^}]*destination="7"[^}]*\} (\S+)', metrics)
    assert found is not None, metrics
    gauge = float(found.group(1))

    # status.json: the next refresh after those reads, although the queue did not change.
    path = tmp_path / "dlq" / QUEUE.relative_path / "status.json"
    before = json.loads(path.read_text())["updated_at"]
    wait_until(
        lambda: json.loads(path.read_text())["updated_at"] != before,
        5,
        "the unchanged queue's status.json to be refreshed",
    )
    on_file = json.loads(path.read_text())["bytes_on_disk"]
    assert api == cli == gauge == on_file > 0


# ------------------------------------------------------------------ messages


def error_line(result: subprocess.CompletedProcess[str]) -> str:
    lines = [
        line
        for line in result.stderr.splitlines()
        if line.startswith("rosetta: ")
        and not line.startswith(("rosetta: offline", "rosetta: online"))
    ]
    assert len(lines) == 1, result.stderr
    return lines[0]


def test_replay_during_an_outage_says_the_messages_stay_queued(
    tmp_path: Path, engine: Harness
) -> None:
    env = cli_env(DLQ_BASE_PATH=str(tmp_path / "dlq"))
    result = run_rosetta(env, "dlq", "replay", str(QUEUE))
    assert result.returncode == 6, result.stderr
    assert error_line(result) == (
        "rosetta: destination 7 is unreachable (unhealthy: SessionLostError: connection "
        "refused: Destination Fake-7 (ID=7) is down): 6 message(s) stay queued in "
        "source_1/table_public.accounts/dest_7, nothing was lost; the engine's recovery "
        "worker replays them as soon as the destination is back"
    )
    assert "replayed 0 message(s); not replayed 6 (still queued); parked 0" in result.stdout
    _, body = call(engine.url + "/dlq/queues")
    assert next(r["messages"] for r in body["queues"] if r["queue"] == str(QUEUE)) == 6


def test_a_base_path_that_is_a_file_is_named_as_such(tmp_path: Path) -> None:
    (tmp_path / "dlq").write_text("")
    result = run_rosetta(cli_env(DLQ_BASE_PATH=str(tmp_path / "dlq")), "dlq", "queues")
    assert result.returncode == 2
    assert error_line(result) == (
        f"rosetta: DLQ_BASE_PATH='{tmp_path / 'dlq'}' is a file, not a directory: set "
        "DLQ_BASE_PATH to the engine's DLQ directory (the one `rosetta run` uses; "
        "default ./tmp/dlq)"
    )


def test_unpark_behind_an_earlier_parked_change_names_it_and_the_usual_fixes(
    tmp_path: Path,
) -> None:
    config = dlq_config(tmp_path)
    with DLQManager(config, background=False) as dlq:
        dlq.enqueue(QUEUE, [message(0, 1), message(1, 1)])
        dlq.park_message(QUEUE, "m000")
        dlq.park_message(QUEUE, "m001")
    result = run_rosetta(cli_env(DLQ_BASE_PATH=str(tmp_path / "dlq")), "dlq", "unpark", "m001")
    assert result.returncode == 5
    assert error_line(result) == (
        "rosetta: cannot unpark m001: an earlier change to the same key, message m000, is "
        "still parked in source_1/table_public.accounts/dest_7 (the key's changes go in "
        "order); deal with m000 first: `rosetta dlq discard m000 --confirm` to drop it, "
        "`rosetta dlq unpark m000` to send it back with this one after it, or `rosetta dlq "
        "replay source_1/table_public.accounts/dest_7 --parked` to replay the parked lane "
        "in order"
    )


def test_an_unset_env_option_is_one_error_naming_option_and_variable(tmp_path: Path) -> None:
    (tmp_path / "p.toml").write_text(
        pipelines_toml(
            {"id": "1", "type": "jsonl", "path": str(tmp_path / "events.jsonl")},
            [{"id": "1", "name": "pg", "type": "postgresql", "dsn_env": "NO_SUCH_DSN"}],
        )
    )
    env = cli_env(
        DLQ_BASE_PATH=str(tmp_path / "dlq"),
        ROSETTA_STATE_PATH=str(tmp_path / "state"),
        ROSETTA_PIPELINES_FILE=str(tmp_path / "p.toml"),
    )
    result = run_rosetta(env, "run")
    assert result.returncode == 2
    assert error_line(result) == (
        f"rosetta: {tmp_path / 'p.toml'}: pipelines[0].destinations[0]: 'dsn_env' names "
        "environment variable NO_SUCH_DSN which is not set: set NO_SUCH_DSN in the environment "
        "or in .env, or point 'dsn_env' at a variable that is set"
    )


def test_error_texts_in_tables_are_never_cut_mid_word(tmp_path: Path) -> None:
    words = " ".join(f"word{i:02d}" for i in range(40))
    failure = FailureContext("OperationalError", f"{words} {'x' * 60}")
    with DLQManager(dlq_config(tmp_path), background=False) as dlq:
        dlq.enqueue(QUEUE, [DLQMessage("m1", QUEUE, change(1, 1), failure, time.time())])
    env = cli_env(DLQ_BASE_PATH=str(tmp_path / "dlq"), COLUMNS="120")
    result = run_rosetta(env, "dlq", "show", str(QUEUE))
    assert result.returncode == 0, result.stderr
    cells = [
        line.split("│")[4].strip()
        for line in result.stdout.splitlines()
        if line.startswith("│") and len(line.split("│")) > 5
    ]
    # wrapped between words, shortened (past 300 characters) at a word boundary
    assert " ".join(cells) == f"OperationalError: {words} …"
    assert max(len(line) for line in result.stdout.splitlines()) <= 120
