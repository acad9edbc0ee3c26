"""What a parked change costs on disk, and what it still tells an operator when read back."""

from __future__ import annotations

import os
import threading
from collections.abc import Sequence
from pathlib import Path

import psycopg2.errors
import pytest

from compute.codec.failure_context import FailureContext
from compute.codec.message import DLQMessage
from compute.codec.message_view import message_to_json
from compute.delivery.event_handler import EventHandler
from compute.delivery.health import DestinationHealth
from compute.delivery.short_stack import MAX_STACK_CHARS
from compute.dlq.manager import DLQManager
from compute.queue_id import QueueId
from compute.runtime.retry_policy import RetryPolicy
from destinations.errors import ClassifiedError, FailureKind
from destinations.records import ChangeRecord
from tests.benchmarks.bench_parked import TABLE, typical_rows
from tests.builders import dlq_config
from tests.fakes import FakeDestination

QUEUE = QueueId("1", TABLE, "2")
NOT_NULL = 'null value in column "email" of relation "users" violates not-null constraint'
# 2,000 typical rows (tests/benchmarks/bench_parked.py), every one refused, in
# batches of 500: 10 KB of stack per row before stacks were cut and a failed
# batch's parked changes were written together; about 170 bytes now.
ROWS = 2000
BATCH = 500
MAX_PARKED_BYTES_PER_MESSAGE = 300


class NotNullTable(FakeDestination):
    """A table whose ``email`` column is NOT NULL, refusing as PostgreSQL does: psycopg2's
    ``NotNullViolation`` with the failing row in its DETAIL, raised a few frames deep."""

    def write_batch(self, table: str, records: Sequence[ChangeRecord]) -> int:
        return self._apply_values(table, records)

    def _apply_values(self, table: str, records: Sequence[ChangeRecord]) -> int:
        for record in records:
            self._execute(record)
        return super().write_batch(table, records)

    def _execute(self, record: ChangeRecord) -> None:
        after = record.after or {}
        if after.get("email") is None:
            row = ", ".join("null" if v is None else str(v) for v in after.values())
            raise psycopg2.errors.NotNullViolation(
                f"{NOT_NULL}\nDETAIL:  Failing row contains ({row})."
            )

    def classify_error(self, error: BaseException) -> ClassifiedError:
        if isinstance(error, psycopg2.errors.NotNullViolation):
            text = str(error).splitlines()[0]
            return ClassifiedError(FailureKind.PERMANENT, "NotNullViolation", text, "23502")
        return super().classify_error(error)


def du_bytes(path: Path) -> int:
    """Bytes the files under ``path`` take on disk, as ``du`` counts them."""
    return sum(
        os.stat(os.path.join(root, name)).st_blocks * 512
        for root, _, files in os.walk(path)
        for name in files
    )


@pytest.fixture
def parked(tmp_path: Path) -> DLQManager:
    """A DLQ with ``ROWS`` refused rows parked the way the engine parks them, closed."""
    config = dlq_config(tmp_path, max_retries=0)
    dlq = DLQManager(config, background=False)
    destination = NotNullTable("2", "PG")
    handler = EventHandler(
        "1",
        [destination],
        {"2": DestinationHealth(destination)},
        dlq,
        RetryPolicy(max_retries=0, base_delay=0.0, max_delay=0.0),
        stop=threading.Event(),
        live_write_deadline=2.0,  # the default: writes run on the writer thread
    )
    try:
        for first in range(1, ROWS + 1, BATCH):
            handler.handle(typical_rows(BATCH, first), set())
    finally:
        handler.close()
    dlq.close()
    return DLQManager(config, background=False)


def test_parked_rows_take_a_few_hundred_bytes_each(parked: DLQManager, tmp_path: Path) -> None:
    assert parked.count(QUEUE.parked) == ROWS
    parked.close()
    size = du_bytes(tmp_path / "dlq" / QUEUE.parked.relative_path)
    assert size / ROWS <= MAX_PARKED_BYTES_PER_MESSAGE, f"{size / ROWS:.0f} bytes per message"


def test_a_parked_row_read_back_keeps_its_error_and_a_short_stack(parked: DLQManager) -> None:
    try:
        messages = list(parked.iter_messages(QUEUE.parked))
    finally:
        parked.close()
    assert [m.record.key["id"] for m in messages] == list(range(1, ROWS + 1))
    for message in (messages[0], messages[-1]):
        failure = message.failure
        assert (failure.error_class, failure.message, failure.kind, failure.code) == (
            "NotNullViolation",
            NOT_NULL,
            FailureKind.PERMANENT,
            "23502",
        )
        assert failure.attempts == 1
        stack = failure.stack
        assert len(stack) <= MAX_STACK_CHARS
        assert stack.startswith("Traceback (most recent call last")
        assert 'File "tests/compute/delivery/test_parked_size.py", line ' in stack
        assert "in _execute\n" in stack and "raise psycopg2.errors.NotNullViolation(" in stack
        row_id = message.record.key["id"]
        assert (
            f"psycopg2.errors.NotNullViolation: {NOT_NULL}\n"
            f"DETAIL:  Failing row contains ({row_id}, customer {row_id:08d}"
        ) in stack
    # What `rosetta dlq show` and the admin API answer with.
    view = message_to_json(messages[0])
    assert view["error_class"] == "NotNullViolation" and view["error_message"] == NOT_NULL
    assert view["error_stack"] == messages[0].failure.stack


def test_a_parked_lane_written_one_message_per_item_still_reads(tmp_path: Path) -> None:
    """Earlier builds parked an isolated batch's changes one call each, full stacks and all."""
    config = dlq_config(tmp_path)
    long_stack = "Traceback (most recent call last):\n" + '  File "/x.py", line 1, in f\n' * 150
    rows = typical_rows(6, 1)
    with DLQManager(config, background=False) as dlq:
        for record in rows[:3]:  # as earlier builds wrote them
            failure = _failure(long_stack)
            assert dlq.park(QUEUE, [DLQMessage.create(QUEUE, record, failure)]) == 1
        batch = [DLQMessage.create(QUEUE, r, _failure("short")) for r in rows[3:]]
        assert dlq.park(QUEUE, batch) == 3
    with DLQManager(config, background=False) as dlq:
        messages = list(dlq.iter_messages(QUEUE.parked))
    assert [m.record for m in messages] == rows
    assert [m.failure.stack for m in messages] == [long_stack] * 3 + ["short"] * 3


def _failure(stack: str) -> FailureContext:
    return FailureContext("NotNullViolation", NOT_NULL, FailureKind.PERMANENT, "23502", stack)
