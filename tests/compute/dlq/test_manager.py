"""The DLQ manager: typed messages, limits and drops, status files, quarantine."""

from __future__ import annotations

import json
import logging
from decimal import Decimal
from pathlib import Path

import pytest

from compute.codec.failure_context import FailureContext
from compute.codec.message import DLQMessage
from compute.dlq.manager import DLQManager
from compute.dlq.quarantine import QUARANTINE_DIR
from compute.dlq.status_files import STATUS_FILE
from compute.errors import DLQFullError, MessageTooLargeError
from compute.queue_id import QueueId
from config.dlq_config import DLQConfig, WhenFull
from destinations.records import ChangeRecord, Operation, SourcePosition
from tests.waiting import wait_until

Q = QueueId("1", "public.accounts", "2")


def message(i: int, queue: QueueId = Q, *, now: float | None = None) -> DLQMessage:
    record = ChangeRecord(
        queue.table,
        Operation.UPDATE,
        {"id": i},
        {"id": i, "balance": Decimal(f"{i}.10")},
        SourcePosition(1000 + i, 0),
    )
    failure = FailureContext("OperationalError", f"connection refused #{i}", code="08006")
    return DLQMessage.create(queue, record, failure, now=now)


def config(tmp_path: Path, **overrides: object) -> DLQConfig:
    values: dict[str, object] = {"base_path": tmp_path / "dlq", "min_free_disk_mb": 0}
    values.update(overrides)
    return DLQConfig(**values)  # type: ignore[arg-type]


def drain_ids(manager: DLQManager, queue: QueueId = Q) -> list[int]:
    out: list[int] = []
    while True:
        lease = manager.read_batch(queue, 4)
        if lease.is_empty:
            return out
        out.extend(m.record.key["id"] for m in lease.messages)
        manager.ack(lease)


def test_messages_round_trip_in_order(tmp_path: Path) -> None:
    with DLQManager(config(tmp_path), background=False) as manager:
        sent = [message(i) for i in range(10)]
        assert manager.enqueue(Q, sent[:6]).accepted == 6
        manager.enqueue(Q, sent[6:])
        assert manager.has_messages(Q)
        lease = manager.read_batch(Q, 3)
        assert lease.messages == sent[:3]
        manager.release(lease)
        assert drain_ids(manager) == list(range(10))
        assert not manager.has_messages(Q)


def test_queues_survive_restart(tmp_path: Path) -> None:
    with DLQManager(config(tmp_path), background=False) as manager:
        manager.enqueue(Q, [message(i) for i in range(5)])
        manager.ack(manager.read_batch(Q, 2))
        manager.read_batch(Q, 2)  # not acknowledged
    with DLQManager(config(tmp_path), background=False) as manager:
        assert manager.list_queues() == [Q]
        assert drain_ids(manager) == [2, 3, 4]


def test_full_queue_blocks_by_default(tmp_path: Path) -> None:
    with DLQManager(config(tmp_path, max_queue_messages=3), background=False) as manager:
        manager.enqueue(Q, [message(0), message(1)])
        with pytest.raises(DLQFullError) as caught:
            manager.enqueue(Q, [message(2), message(3)])
        assert caught.value.limit == "max_queue_messages"
        assert caught.value.queue == Q
        assert drain_ids(manager) == [0, 1]


def test_drop_newest_is_counted_and_logged(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    cfg = config(tmp_path, max_queue_messages=3, when_full=WhenFull.DROP_NEWEST)
    with DLQManager(cfg, background=False) as manager:
        manager.enqueue(Q, [message(0), message(1)])
        dropped = [message(2), message(3)]
        with caplog.at_level(logging.ERROR):
            result = manager.enqueue(Q, dropped)
        assert (result.accepted, result.dropped) == (0, 2)
        assert manager.status(Q).dropped == 2
        logged = caplog.text
        assert "dropped=2" in logged and dropped[0].message_id in logged
        assert drain_ids(manager) == [0, 1]


def test_status_and_status_file(tmp_path: Path) -> None:
    with DLQManager(config(tmp_path), background=False) as manager:
        manager.enqueue(Q, [message(0, now=1000.0), message(1, now=1005.0)])
        manager.enqueue(Q, [message(2, now=1010.0)])
        status = manager.status(Q)
        assert status.messages == 3
        assert status.oldest_enqueued_at == 1000.0
        assert status.newest_enqueued_at == 1010.0
        assert status.bytes_on_disk > 0
        assert status.last_error == "OperationalError: connection refused #2"
        manager.ack(manager.read_batch(Q, 1))
        assert manager.status(Q).oldest_enqueued_at == 1005.0
        manager.write_status_files()
        data = json.loads((manager.store.queue_path(Q) / STATUS_FILE).read_text())
        assert data["messages"] == 2
        assert data["queue"] == "source_1/table_public.accounts/dest_2"
        assert data["oldest_enqueued_at"].startswith("1970-01-01T00:16:45")
        assert data["last_error"].startswith("OperationalError")


def test_status_file_refreshes_while_running(tmp_path: Path) -> None:
    manager = DLQManager(config(tmp_path))
    try:
        manager.enqueue(Q, [message(0)])
        path = manager.store.queue_path(Q) / STATUS_FILE
        wait_until(
            lambda: path.exists() and json.loads(path.read_text())["messages"] == 1,
            5,
            "the status file to show 1 message",
        )
        manager.enqueue(Q, [message(1)])
        wait_until(
            lambda: json.loads(path.read_text())["messages"] == 2,
            5,
            "the status file to show 2 messages",
        )
    finally:
        manager.close()


def test_undecodable_message_is_quarantined_and_queue_moves_on(tmp_path: Path) -> None:
    with DLQManager(config(tmp_path), background=False) as manager:
        manager.enqueue(Q, [message(0)])
        garbage = b"\x07not a message from this version"
        manager.store.enqueue(Q, [garbage])
        manager.enqueue(Q, [message(2)])
        lease = manager.read_batch(Q, 10)
        assert [m.record.key["id"] for m in lease.messages] == [0, 2]
        assert lease.quarantined == 1
        manager.ack(lease)
        quarantine = manager.store.queue_path(Q) / QUARANTINE_DIR
        raw = [p for p in quarantine.iterdir() if p.suffix == ".bin"]
        assert [p.read_bytes() for p in raw] == [garbage]
        reason = json.loads(raw[0].with_suffix(".json").read_text())["reason"]
        assert "unknown message format (first byte 0x07)" in reason
        assert manager.status(Q).quarantined == 1
        assert not manager.has_messages(Q)


def test_enqueue_rejects_message_of_another_queue(tmp_path: Path) -> None:
    other = QueueId("1", "public.accounts", "3")
    with DLQManager(config(tmp_path), background=False) as manager:
        with pytest.raises(ValueError, match="belongs to"):
            manager.enqueue(Q, [message(0), message(1, other)])
        assert not manager.has_messages(Q)


def test_restart_refreshes_stale_status_files(tmp_path: Path) -> None:
    with DLQManager(config(tmp_path), background=False) as manager:
        manager.enqueue(Q, [message(0), message(1)])
        path = manager.store.queue_path(Q) / STATUS_FILE
    path.write_text('{"messages": 999}')  # as if the process died before its last refresh
    with DLQManager(config(tmp_path), background=False) as manager:
        assert manager.refresh_all_status() == 1
        manager.write_status_files()
        assert json.loads(path.read_text())["messages"] == 2


def test_read_ahead_decodes_the_messages_after_the_outstanding_lease(tmp_path: Path) -> None:
    with DLQManager(config(tmp_path), background=False) as manager:
        manager.enqueue(Q, [message(i) for i in range(10)])
        first = manager.read_batch(Q, 4)
        ahead = manager.read_batch(Q, 4, ahead=True)
        assert [m.record.key["id"] for m in ahead.messages] == [4, 5, 6, 7]
        manager.ack(first)
        manager.ack(ahead)
        assert drain_ids(manager) == [8, 9]


def test_a_read_that_fails_after_leasing_gives_the_payloads_back(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    with DLQManager(config(tmp_path), background=False) as manager:
        manager.enqueue(Q, [message(i) for i in range(5)])

        def broken(self: object, payloads: object) -> list[DLQMessage]:
            raise MemoryError("no room to decode")

        with monkeypatch.context() as patch:
            patch.setattr("compute.dlq.lease.MessageDecoder.decode_many", broken)
            with pytest.raises(MemoryError):
                manager.read_batch(Q, 3)
        # No lease was left behind: the next read gets the same head, in order.
        assert drain_ids(manager) == [0, 1, 2, 3, 4]


def test_single_message_enqueues_keep_results_limits_and_status(tmp_path: Path) -> None:
    """One message per call takes shortcuts in ``enqueue``: same results as a batch."""
    with DLQManager(config(tmp_path, max_message_bytes=1024), background=False) as manager:
        first = manager.enqueue(Q, [message(0, now=1000.0)])
        assert (first.accepted, first.dropped) == (1, 0)
        status = manager.status(Q)
        assert (status.oldest_enqueued_at, status.newest_enqueued_at) == (1000.0, 1000.0)
        # An older message enqueued later does not move "newest" back.
        assert manager.enqueue(Q, [message(1, now=990.0)]).accepted == 1
        assert manager.status(Q).newest_enqueued_at == 1000.0
        assert manager.enqueue(Q, [message(2, now=1010.0)]) == first
        assert manager.status(Q).newest_enqueued_at == 1010.0
        assert manager.status(Q).last_error == "OperationalError: connection refused #2"
        big = message(3)._replace(
            record=message(3).record._replace(after={"id": 3, "blob": "x" * 2000})
        )
        with pytest.raises(MessageTooLargeError) as caught:
            manager.enqueue(Q, [big])
        assert caught.value.message_id == big.message_id
        with pytest.raises(MessageTooLargeError) as caught:
            manager.enqueue(Q, [message(4), big, message(5)])
        assert caught.value.message_id == big.message_id
        assert drain_ids(manager) == [0, 1, 2]


def test_a_long_read_ahead_decodes_in_slices_with_the_same_result(tmp_path: Path) -> None:
    with DLQManager(config(tmp_path), background=False) as manager:
        sent = [message(i) for i in range(1203)]  # more than two decode slices
        manager.enqueue(Q, sent)
        first = manager.read_batch(Q, 1)
        ahead = manager.read_batch(Q, 1202, ahead=True)
        assert ahead.messages == sent[1:]
        manager.ack(first)
        manager.ack(ahead)
        assert not manager.has_messages(Q)
