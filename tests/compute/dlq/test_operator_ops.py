"""Operator actions on single messages: discard, park, unpark; crash-safe at every step."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
import threading
from pathlib import Path

import pytest

from compute.codec.failure_context import FailureContext
from compute.codec.message import DLQMessage
from compute.dlq.lane_reader import LaneReader
from compute.dlq.manager import DLQManager
from compute.dlq.parking import record_key
from compute.errors import DLQConflictError, MessageNotFoundError
from compute.queue_id import QueueId
from destinations.records import Operation
from tests.builders import change, dlq_config

QUEUE = QueueId("1", "public.accounts", "2")
ROOT = Path(__file__).resolve().parents[3]


def message(i: int, key: int) -> DLQMessage:
    failure = FailureContext("Boom", f"failed {i}", attempts=1)
    return DLQMessage(f"m{i:03d}", QUEUE, change(i, key), failure, 1000.0 + i)


def ids(messages: list[DLQMessage]) -> list[str]:
    return [m.message_id for m in messages]


def lane_ids(dlq: DLQManager, lane: QueueId) -> list[str]:
    return ids(list(dlq.iter_messages(lane)))


def test_discard_is_honoured_by_count_peek_read_and_survives_a_restart(tmp_path: Path) -> None:
    config = dlq_config(tmp_path, batch_size=100)
    with DLQManager(config, background=False) as dlq:
        dlq.enqueue(QUEUE, [message(i, i) for i in range(5)])
        assert dlq.discard_message(QUEUE, "m002") == [QUEUE]
        with pytest.raises(MessageNotFoundError):
            dlq.discard_message(QUEUE, "nope")
    with DLQManager(config, background=False) as dlq:
        assert dlq.count(QUEUE) == 4
        assert dlq.status(QUEUE).messages == 4
        assert ids(dlq.peek(QUEUE, 10)) == ["m000", "m001", "m003", "m004"]
        lease = dlq.read_batch(QUEUE)
        assert ids(lease.messages) == ["m000", "m001", "m003", "m004"]
        dlq.ack(lease)
        assert dlq.store.count(QUEUE) == 0
        # The tombstone went with the message: the same id can come back (import).
        assert not (dlq.store.queue_path(QUEUE) / "discarded.json").exists()
        dlq.enqueue(QUEUE, [message(2, 2)])
        assert ids(dlq.peek(QUEUE, 10)) == ["m002"]


def test_park_then_unpark_keeps_key_order(tmp_path: Path) -> None:
    with DLQManager(dlq_config(tmp_path), background=False) as dlq:
        # key 7 changes at m000, m002; key 8 at m001.
        dlq.enqueue(QUEUE, [message(0, 7), message(1, 8), message(2, 7)])
        parked = dlq.park_message(QUEUE, "m000")
        assert parked.message_id == "m000"
        assert lane_ids(dlq, QUEUE) == ["m001", "m002"]
        assert lane_ids(dlq, QUEUE.parked) == ["m000"]
        assert dlq.is_parked(QUEUE, change(9, 7))  # later changes to key 7 are held
        with pytest.raises(DLQConflictError):
            dlq.park_message(QUEUE, "m000")
        # A later change to key 7 got parked behind it (as the worker does).
        dlq.park(QUEUE, [message(3, 7)])
        with pytest.raises(DLQConflictError, match="message m000, is still parked"):
            dlq.unpark_message(QUEUE, "m003")
        moved = dlq.unpark_message(QUEUE, "m000")
        # The parked chain (m000, m003), then key 7's change still waiting in
        # the main lane (m002), all at the tail in that order.
        assert ids(moved) == ["m000", "m003", "m002"]
        assert lane_ids(dlq, QUEUE) == ["m001", "m000", "m003", "m002"]
        assert lane_ids(dlq, QUEUE.parked) == []
        assert not dlq.is_parked(QUEUE, change(9, 7))
        assert dlq.count(QUEUE) == 4 and dlq.parked_count(QUEUE) == 0
        lease = dlq.read_batch(QUEUE, 10)
        assert ids(lease.messages) == ["m001", "m000", "m003", "m002"]
        dlq.ack(lease)
        assert dlq.store.count(QUEUE) == 0


def test_unpark_keeps_key_order_while_live_changes_are_appended(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A live change to the key appended (by the event handler's thread) between
    unpark's snapshot of the main lane and its copies lands after them."""
    with DLQManager(dlq_config(tmp_path), background=False) as dlq:
        dlq.enqueue(QUEUE, [message(0, 7), message(1, 8), message(2, 7)])
        dlq.park_message(QUEUE, "m000")
        live = message(10, 7)  # the newest change to key 7
        appended = threading.Event()

        def append_live() -> None:
            dlq.enqueue(QUEUE, [live])
            appended.set()

        appender = threading.Thread(target=append_live)
        real_iter = LaneReader.iter_messages

        def iter_messages(self: LaneReader, lane: QueueId, chunk: int = 1000):  # type: ignore[no-untyped-def]
            yield from real_iter(self, lane, chunk)
            if lane == QUEUE and not appender.is_alive() and not appended.is_set():
                # unpark has its snapshot of the main lane: append now, from
                # another thread, and give it time to land before the copies.
                appender.start()
                appended.wait(1.0)

        monkeypatch.setattr(LaneReader, "iter_messages", iter_messages)
        moved = dlq.unpark_message(QUEUE, "m000")
        appender.join(10)
        assert appended.is_set()
        monkeypatch.undo()
        assert ids(moved) == ["m000", "m002"]
        key7 = [m for m in dlq.iter_messages(QUEUE) if m.record.key["id"] == 7]
        assert ids(key7) == ["m000", "m002", "m010"]  # oldest first
        lease = dlq.read_batch(QUEUE, 10)
        assert ids(lease.messages) == ["m001", "m000", "m002", "m010"]
        dlq.ack(lease)


CRASH_SCRIPT = textwrap.dedent(
    """
    import os, sys
    from pathlib import Path
    from compute.dlq.manager import DLQManager
    from compute.dlq.parking import Parking
    from compute.dlq.tombstones import Tombstones
    from compute.queue_id import QueueId
    from tests.builders import dlq_config

    tmp, action, crash_at = Path(sys.argv[1]), sys.argv[2], int(sys.argv[3])
    calls = {"n": 0}
    original_save = Tombstones.save
    original_enqueue = DLQManager.enqueue
    original_park = Parking.park

    def step():
        calls["n"] += 1
        if calls["n"] == crash_at:
            os.kill(os.getpid(), 9)  # kill -9 between two steps

    def save(self, *a, **k):
        step()
        return original_save(self, *a, **k)

    def enqueue(self, *a, **k):
        result = original_enqueue(self, *a, **k)
        step()
        return result

    def park(self, *a, **k):
        result = original_park(self, *a, **k)
        step()
        return result

    Tombstones.save = save
    DLQManager.enqueue = enqueue
    Parking.park = park
    queue = QueueId("1", "public.accounts", "2")
    dlq = DLQManager(dlq_config(tmp), background=False)
    if action == "park":
        dlq.park_message(queue, "m000")
    elif action == "unpark":
        dlq.unpark_message(queue, "m000")
    else:
        dlq.discard_message(queue, "m000")
    dlq.close()
    """
)


@pytest.mark.parametrize(
    ("action", "crash_at"),
    [("park", 1), ("park", 2), ("unpark", 1), ("unpark", 2), ("unpark", 3), ("discard", 1)],
)
def test_kill_9_between_steps_leaves_duplicates_never_a_loss(
    tmp_path: Path, action: str, crash_at: int
) -> None:
    with DLQManager(dlq_config(tmp_path), background=False) as dlq:
        dlq.enqueue(QUEUE, [message(0, 7), message(1, 8), message(2, 7)])
        if action == "unpark":
            dlq.park_message(QUEUE, "m000")
    child = subprocess.run(
        [sys.executable, "-c", CRASH_SCRIPT, str(tmp_path), action, str(crash_at)],
        cwd=ROOT,
        env={**os.environ},
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert child.returncode == -9, child.stderr[-2000:]
    with DLQManager(dlq_config(tmp_path), background=False) as dlq:
        main = lane_ids(dlq, QUEUE)
        parked = lane_ids(dlq, QUEUE.parked)
        everything = main + parked
        if action == "discard":  # crashed before the tombstone: nothing changed
            assert main == ["m000", "m001", "m002"]
            return
        # Nothing lost: every message is still somewhere.
        assert {"m000", "m001", "m002"} <= set(everything)
        # Key 7's newest change (m002) comes last in the main lane: a replay
        # of what is there ends at the newest value.
        key7 = [m for m in dlq.iter_messages(QUEUE) if record_key(m.record)[1:] == (("id", 7),)]
        if key7:
            assert key7[-1].message_id == "m002"
            assert key7[-1].record.op is Operation.UPDATE
        # Retrying the operation (or unparking the rest) completes it.
        if "m000" in parked and action == "unpark":
            dlq.unpark_message(QUEUE, "m000")
        elif "m000" in main and action == "park":
            dlq.park_message(QUEUE, "m000")
        main = lane_ids(dlq, QUEUE)
        assert "m001" in main
