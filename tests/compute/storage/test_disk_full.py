"""A full disk: typed refusal, no loss, recovery once space is back (on a real tmpfs)."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from compute.dlq.manager import DLQManager
from compute.errors import DLQFullError
from compute.queue_id import QueueId
from config.dlq_config import DLQConfig
from tests.builders import messages

Q = QueueId("1", "public.accounts", "1")
NOTE = "x" * 200


@pytest.fixture
def small_disk_size() -> str:
    """8 MiB: the 5 MiB filler leaves the queue little room, so it fills quickly."""
    return "8m"


def test_enospc_refuses_typed_then_recovers_everything_once_space_is_back(small_disk: Path) -> None:
    filler = small_disk / "filler"
    filler.write_bytes(os.urandom(5 * 1024 * 1024))  # what "another process" holds
    config = DLQConfig(base_path=small_disk / "dlq", min_free_disk_mb=0)  # floor off: hit ENOSPC
    accepted: list[int] = []
    with DLQManager(config, background=False) as dlq:
        refused = None
        for start in range(0, 100_000, 100):
            try:
                dlq.enqueue(Q, messages(Q, range(start, start + 100), note=NOTE))
            except DLQFullError as error:
                refused = error
                break
            accepted.extend(range(start, start + 100))
        assert refused is not None and refused.limit == "disk_full"
        assert "No space left" in str(refused)
        assert len(accepted) > 500
        with pytest.raises(DLQFullError):  # still full: refused again, typed, no crash
            dlq.enqueue(Q, messages(Q, range(10**6, 10**6 + 100), note=NOTE))
        filler.unlink()  # space is back
        dlq.enqueue(
            Q, messages(Q, range(10**6, 10**6 + 1), note=NOTE)
        )  # the dead handle was closed and reopened
        assert dlq.store.count(Q) == len(accepted) + 1
        got: list[int] = []
        while not (lease := dlq.read_batch(Q, 500)).is_empty:
            got.extend(m.record.key["id"] for m in lease.messages)
            dlq.ack(lease)
        assert got == accepted + [10**6]  # nothing accepted was lost, order kept


def test_free_disk_floor_refuses_before_the_disk_is_full(small_disk: Path) -> None:
    config = DLQConfig(base_path=small_disk / "dlq", min_free_disk_mb=4)
    with DLQManager(config, background=False) as dlq:
        accepted = 0
        with pytest.raises(DLQFullError) as caught:
            for start in range(0, 100_000, 100):
                dlq.enqueue(Q, messages(Q, range(start, start + 100), note=NOTE))
                accepted += 100
        assert caught.value.limit == "min_free_disk"
        assert dlq.store.count(Q) == accepted
        # the floor left room: the queue still reads fine
        lease = dlq.read_batch(Q, 10)
        assert [m.record.key["id"] for m in lease.messages] == list(range(10))
