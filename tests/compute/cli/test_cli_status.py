"""A queue's bytes are one number: status.json, admin API, metrics, `rosetta dlq queues`."""

from __future__ import annotations

import json
import re
from collections.abc import Iterator
from pathlib import Path

import pytest

from config.admin_config import AdminConfig
from tests.compute.admin.test_http_api import QUEUE, Harness, call, start_engine
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
