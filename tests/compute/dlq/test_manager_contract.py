"""The DLQ manager on both stores (rocksq and JetStream): what it promises does not depend on it.

Parked lane and key order, attempts and tombstones kept across a restart,
TTL expiry counted by a replay, status, limits refusing a batch, and an
unreachable store as backpressure even with DLQ_WHEN_FULL=drop_newest.
"""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

from compute.codec.failure_context import FailureContext
from compute.codec.message import DLQMessage
from compute.delivery.health import DestinationHealth
from compute.dlq.manager import DLQManager
from compute.dlq.tombstones import TOMBSTONES_FILE
from compute.errors import STORE_UNAVAILABLE, DLQFullError, DLQStorageError
from compute.queue_id import QueueId
from compute.recovery.worker import DLQRecoveryWorker
from compute.storage.base import StoreUnreachable
from config.dlq_config import DLQConfig, WhenFull
from tests.builders import TABLE, change, dlq_config
from tests.fakes import FakeDestination
from tests.store_backends import BACKENDS, StoreBackend, backend_fixture

QUEUE = QueueId("1", TABLE, "2")


@pytest.fixture(params=BACKENDS)
def backend(request: pytest.FixtureRequest, tmp_path: Path) -> StoreBackend:
    return backend_fixture(request, tmp_path)


def settings(backend: StoreBackend, tmp_path: Path, **overrides: object) -> DLQConfig:
    """DLQ settings on ``backend``, chosen as an engine does: by ``DLQ_BACKEND``."""
    return backend.dlq_config(dlq_config(tmp_path, **overrides))


def message(i: int, key: int, *, now: float | None = None) -> DLQMessage:
    failure = FailureContext("Boom", f"failed {i}", attempts=1)
    return DLQMessage(
        f"m{i:03d}", QUEUE, change(i, key), failure, 1000.0 + i if now is None else now
    )


def ids(messages: list[DLQMessage]) -> list[str]:
    return [m.message_id for m in messages]


def lane_ids(dlq: DLQManager, lane: QueueId) -> list[str]:
    return ids(list(dlq.iter_messages(lane)))


def test_the_configured_backend_is_the_store(backend: StoreBackend, tmp_path: Path) -> None:
    with DLQManager(settings(backend, tmp_path), background=False) as dlq:
        expected = "JetStreamStore" if backend.jetstream else "RocksqStore"
        assert type(dlq.store).__name__ == expected


def test_messages_survive_a_restart_in_order(backend: StoreBackend, tmp_path: Path) -> None:
    config = settings(backend, tmp_path, batch_size=100)
    with DLQManager(config, background=False) as dlq:
        dlq.enqueue(QUEUE, [message(i, i) for i in range(6)])
        dlq.ack(dlq.read_batch(QUEUE, 2))
        dlq.read_batch(QUEUE, 2)  # never acknowledged
    with DLQManager(config, background=False) as dlq:
        assert dlq.list_queues() == [QUEUE]
        lease = dlq.read_batch(QUEUE, 10)
        assert ids(lease.messages) == ["m002", "m003", "m004", "m005"]
        dlq.ack(lease)
        assert dlq.count(QUEUE) == 0


def test_parked_lane_keeps_key_order(backend: StoreBackend, tmp_path: Path) -> None:
    with DLQManager(settings(backend, tmp_path), background=False) as dlq:
        dlq.enqueue(QUEUE, [message(0, 7), message(1, 8), message(2, 7)])
        assert dlq.park_message(QUEUE, "m000").message_id == "m000"
        assert lane_ids(dlq, QUEUE) == ["m001", "m002"]
        assert lane_ids(dlq, QUEUE.parked) == ["m000"]
        assert dlq.is_parked(QUEUE, change(9, 7))
        dlq.park(QUEUE, [message(3, 7)])
        assert dlq.parked_count(QUEUE) == 2
        moved = dlq.unpark_message(QUEUE, "m000")
        assert ids(moved) == ["m000", "m003", "m002"]
        assert lane_ids(dlq, QUEUE) == ["m001", "m000", "m003", "m002"]
        assert dlq.parked_count(QUEUE) == 0
        dlq.ack(dlq.read_batch(QUEUE, 10))
        assert dlq.store.count(QUEUE) == 0


def test_attempts_are_counted_across_a_restart(backend: StoreBackend, tmp_path: Path) -> None:
    config = settings(backend, tmp_path)
    with DLQManager(config, background=False) as dlq:
        dlq.enqueue(QUEUE, [message(0, 1), message(1, 2)])
        lease = dlq.read_batch(QUEUE, 10)
        assert dlq.record_failed_attempt(QUEUE, lease.messages) == {"m000": 2, "m001": 2}
        assert dlq.record_failed_attempt(QUEUE, lease.messages[:1]) == {"m000": 3}
        dlq.release(lease)
    with DLQManager(config, background=False) as dlq:
        first, second = dlq.peek(QUEUE, 2)
        assert (dlq.attempts_of(QUEUE, first), dlq.attempts_of(QUEUE, second)) == (3, 2)


def test_discarded_messages_stay_discarded_across_a_restart(
    backend: StoreBackend, tmp_path: Path
) -> None:
    config = settings(backend, tmp_path, batch_size=100)
    with DLQManager(config, background=False) as dlq:
        dlq.enqueue(QUEUE, [message(i, i) for i in range(5)])
        assert dlq.discard_message(QUEUE, "m002") == [QUEUE]
    with DLQManager(config, background=False) as dlq:
        assert dlq.count(QUEUE) == 4
        assert dlq.status(QUEUE).messages == 4
        lease = dlq.read_batch(QUEUE)
        assert ids(lease.messages) == ["m000", "m001", "m003", "m004"]
        dlq.ack(lease)
        assert dlq.store.count(QUEUE) == 0


def test_expired_messages_are_counted_by_a_replay(backend: StoreBackend, tmp_path: Path) -> None:
    config = settings(backend, tmp_path, message_ttl=60)
    dest = FakeDestination("2", "PG")
    dlq = DLQManager(config, background=False)
    try:
        now = time.time()
        dlq.enqueue(QUEUE, [message(1, 1, now=now - 3600)])
        dlq.enqueue(QUEUE, [message(2, 2, now=now)])
        health = {"2": DestinationHealth(dest)}
        worker = DLQRecoveryWorker("p", "1", [dest], health, dlq, config, probe_timeout=0.5)
        result = worker.run_once(now)[0]
        assert (result.expired, result.replayed) == (1, 1)
        assert set(dest.rows(TABLE)) == {(2,)}
        assert dlq.count(QUEUE) == 0
    finally:
        dlq.close()


def test_status_counts_bytes_times_and_the_last_error(
    backend: StoreBackend, tmp_path: Path
) -> None:
    with DLQManager(settings(backend, tmp_path), background=False) as dlq:
        dlq.enqueue(QUEUE, [message(0, 0, now=1000.0), message(1, 1, now=1005.0)])
        dlq.enqueue(QUEUE, [message(2, 2, now=1010.0)])
        status = dlq.status(QUEUE)
        assert status.messages == 3
        assert (status.oldest_enqueued_at, status.newest_enqueued_at) == (1000.0, 1010.0)
        assert status.bytes_on_disk > 0
        assert status.last_error == "Boom: failed 2"
        dlq.ack(dlq.read_batch(QUEUE, 1))
        assert dlq.status(QUEUE).oldest_enqueued_at == 1005.0
        assert dlq.write_status_files(force=True) >= 1


def test_a_full_queue_refuses_the_whole_batch(backend: StoreBackend, tmp_path: Path) -> None:
    with DLQManager(settings(backend, tmp_path, max_queue_messages=3), background=False) as dlq:
        dlq.enqueue(QUEUE, [message(0, 0), message(1, 1)])
        with pytest.raises(DLQFullError) as caught:
            dlq.enqueue(QUEUE, [message(2, 2), message(3, 3)])
        assert caught.value.limit == "max_queue_messages"
        assert dlq.count(QUEUE) == 2
        assert "DLQ full" in (dlq.status(QUEUE).last_error or "")


def test_an_unreachable_store_is_backpressure_even_with_drop_newest(
    nats_session_cluster: object, tmp_path: Path
) -> None:
    backend = StoreBackend("jetstream", tmp_path / "dlq", nats_session_cluster)
    config = settings(backend, tmp_path, when_full=WhenFull.DROP_NEWEST)
    dlq = DLQManager(config, background=False)
    try:
        dlq.enqueue(QUEUE, [message(0, 0)])
        dlq.store._bridge.close()  # type: ignore[attr-defined] - as if every node were gone
        with pytest.raises(DLQFullError) as caught:
            dlq.enqueue(QUEUE, [message(1, 1)])
        assert caught.value.limit == STORE_UNAVAILABLE  # raised: not dropped
    finally:
        dlq.close()


def test_a_rocksq_engine_never_imports_nats(tmp_path: Path) -> None:
    code = (
        "import sys\n"
        "from compute.dlq.manager import DLQManager\n"
        "from tests.builders import dlq_config\n"
        f"with DLQManager(dlq_config(__import__('pathlib').Path({str(tmp_path)!r})), "
        "background=False) as dlq:\n"
        "    assert type(dlq.store).__name__ == 'RocksqStore'\n"
        "print(sorted(m for m in sys.modules if m == 'nats' or m.startswith('nats.')))\n"
    )
    root = Path(__file__).resolve().parents[3]
    env = {**os.environ, "PYTHONPATH": str(root)}
    done = subprocess.run(
        [sys.executable, "-c", code], cwd=root, env=env, capture_output=True, text=True, timeout=60
    )
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "[]"


def test_tombstones_the_store_does_not_answer_for_are_not_forgotten(
    backend: StoreBackend, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    config = settings(backend, tmp_path, batch_size=100)
    with DLQManager(config, background=False) as dlq:
        dlq.enqueue(QUEUE, [message(i, i) for i in range(3)])
        dlq.discard_message(QUEUE, "m001")
    with DLQManager(config, background=False) as dlq:
        load_record = dlq.store.load_record

        def unanswered_once(queue: QueueId, name: str) -> bytes | None:
            if name == TOMBSTONES_FILE:
                monkeypatch.setattr(dlq.store, "load_record", load_record)
                raise StoreUnreachable("no quorum")  # a node election, a partition
            return load_record(queue, name)

        monkeypatch.setattr(dlq.store, "load_record", unanswered_once)
        with pytest.raises(DLQStorageError, match="no quorum"):
            dlq.read_batch(QUEUE)  # a replay fails this once, it does not deliver m001
        lease = dlq.read_batch(QUEUE)
        assert ids(lease.messages) == ["m000", "m002"]
