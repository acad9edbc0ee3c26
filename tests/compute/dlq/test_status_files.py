"""``status.json`` freshness, the one bytes measure, and ``last_error`` after a drain."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from compute.dlq import status_files
from compute.dlq.manager import DLQManager
from compute.dlq.status_files import STATUS_FILE
from compute.queue_id import QueueId
from compute.storage.rocksq.limits import queue_disk_bytes
from tests.compute.dlq.test_manager import Q, config, drain_ids, message
from tests.waiting import wait_until


class Clock:
    def __init__(self, now: float) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


def status_file(manager: DLQManager) -> dict[str, Any]:
    data: dict[str, Any] = json.loads((manager.store.queue_path(Q) / STATUS_FILE).read_text())
    return data


def test_a_queue_holding_messages_has_its_age_refreshed_every_pass(tmp_path: Path) -> None:
    clock = Clock(1000.0)
    with DLQManager(config(tmp_path), background=False, clock=clock) as manager:
        manager.enqueue(Q, [message(0, now=1000.0)])
        manager.write_status_files()  # one maintenance pass
        assert status_file(manager)["oldest_age_seconds"] == 0.0
        clock.now = 1011.0  # nothing changes in the queue for 11 s
        manager.write_status_files()
        data = status_file(manager)
        assert data["oldest_age_seconds"] == 11.0
        assert data["updated_at"].startswith("1970-01-01T00:16:51")


def test_the_maintenance_thread_keeps_the_age_within_a_second(tmp_path: Path) -> None:
    manager = DLQManager(config(tmp_path))
    try:
        manager.enqueue(Q, [message(0)])
        path = manager.store.queue_path(Q) / STATUS_FILE
        wait_until(path.exists, 5, "the status file to be written")
        first = json.loads(path.read_text())

        def rewritten() -> bool:
            return bool(json.loads(path.read_text())["updated_at"] != first["updated_at"])

        wait_until(rewritten, 5, "the unchanged queue's status file to be rewritten")
        later = json.loads(path.read_text())
        assert later["oldest_age_seconds"] > first["oldest_age_seconds"]
    finally:
        manager.close()


def test_a_drained_queue_clears_last_error_and_keeps_its_time(tmp_path: Path) -> None:
    clock = Clock(2000.0)
    with DLQManager(config(tmp_path), background=False, clock=clock) as manager:
        failed = message(0, now=1990.0)
        failed = failed._replace(failure=failed.failure._replace(last_failure_at=1995.0))
        manager.enqueue(Q, [failed])
        status = manager.status(Q)
        assert status.last_error == "OperationalError: connection refused #0"
        assert status.last_error_at == 1995.0
        assert drain_ids(manager) == [0]
        manager.write_status_files()
        data = status_file(manager)
        assert data["messages"] == 0
        assert data["last_error"] is None
        assert data["last_error_at"].startswith("1970-01-01T00:33:15")
        # the next outage shows its own error again
        manager.enqueue(Q, [message(1, now=2000.0)])
        assert manager.status(Q).last_error == "OperationalError: connection refused #1"


def test_files_rewritten_by_opening_a_queue_are_not_counted_in_its_bytes(tmp_path: Path) -> None:
    """RocksDB's LOG and OPTIONS files (rewritten on every open), status.json and a side
    file's temporary copy (status.json is rewritten every second) are left out."""
    with DLQManager(config(tmp_path), background=False) as manager:
        manager.enqueue(Q, [message(i) for i in range(20)])
        path = manager.store.queue_path(Q)
        data_bytes = queue_disk_bytes(path)
        assert data_bytes > 0
        segment = next(path.glob("seg_*"))
        (segment / "LOG.old.1").write_bytes(b"x" * 50_000)
        (segment / "OPTIONS-000099").write_bytes(b"x" * 20_000)
        (path / STATUS_FILE).write_bytes(b"x" * 10_000)
        (path / f".{STATUS_FILE}.4242.tmp").write_bytes(b"x" * 10_000)  # write_atomic's
        assert queue_disk_bytes(path) == data_bytes


def test_a_pass_out_of_time_leaves_the_rest_for_the_next_least_recently_written_first(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A thousand queues holding messages must not cost a core in status files every second."""
    monkeypatch.setattr(status_files, "STATUS_PASS_SECONDS", 0.0)  # one file per pass
    queues = [QueueId("1", f"public.t{i}", "2") for i in range(3)]
    with DLQManager(config(tmp_path), background=False) as manager:
        for queue in queues:
            manager.enqueue(queue, [message(0, queue=queue)])
        files = [manager.store.queue_path(q) / STATUS_FILE for q in queues]
        written = []
        for _ in range(3):
            assert manager.write_status_files() == 1
            written.append([f.exists() for f in files].count(True))
        assert written == [1, 2, 3]  # each queue got its turn, none twice
        first = files[0].stat().st_mtime_ns
        assert manager.write_status_files() == 1
        assert files[0].stat().st_mtime_ns != first  # the least recently written went first
        # A clean stop writes them all, whatever the time.
        assert manager.write_status_files(force=True) == 3
