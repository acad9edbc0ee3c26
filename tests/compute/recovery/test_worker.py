"""The recovery worker: health transitions, ordered replay, backoff, parking, TTL, hangs."""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from pathlib import Path

import pytest

from compute.codec.failure_context import FailureContext
from compute.codec.message import DLQMessage
from compute.delivery.health import DestinationHealth
from compute.dlq.manager import DLQManager
from compute.errors import DLQFullError, DLQStorageError
from compute.queue_id import QueueId
from compute.recovery.worker import DLQRecoveryWorker
from destinations.errors import PermanentDestinationError
from destinations.records import Operation
from tests.builders import TABLE, change, dlq_config
from tests.compute.helpers import apply_model
from tests.fakes import FakeDestination, Fault
from tests.waiting import wait_until

FAILURE = FailureContext("OperationalError", "connection refused", code="08006")


def enqueue(dlq: DLQManager, queue: QueueId, records, now: float | None = None) -> None:
    dlq.enqueue(queue, [DLQMessage.create(queue, r, FAILURE, now=now) for r in records])


def make_worker(
    tmp_path: Path, destinations, *, pipelined: bool = False, **config
) -> tuple[DLQRecoveryWorker, DLQManager]:
    """A worker; ``pipelined`` makes even these small test batches pipelined."""
    cfg = dlq_config(tmp_path, **config)
    dlq = DLQManager(cfg, background=False)
    health = {d.destination_id: DestinationHealth(d) for d in destinations}
    extra = {"large_batch_size": 1} if pipelined else {}
    worker = DLQRecoveryWorker("p", "1", destinations, health, dlq, cfg, probe_timeout=0.5, **extra)
    return worker, dlq


def test_replays_in_order_once_healthy_and_logs_transitions(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    dest = FakeDestination("2", "Snowflake-Prod")
    worker, dlq = make_worker(tmp_path, [dest], batch_size=4)
    queue = QueueId("1", TABLE, "2")
    history = [
        change(1, 1),
        change(2, 2),
        change(3, 1),
        change(4, 2, Operation.DELETE),
        change(5, 3),
    ]
    history += [change(6 + i, i % 4) for i in range(20)]
    enqueue(dlq, queue, history)
    dest.set_down(True)
    with caplog.at_level(logging.INFO):
        assert worker.run_once() == []
        assert worker.health["2"].circuit_open
        dest.set_down(False)
        results = worker.run_once(time.time() + 60)
    assert results[0].replayed == len(history)
    assert dest.rows(TABLE) == apply_model(history)[TABLE]
    assert not dlq.has_messages(queue)
    text = caplog.text
    assert "✓ Destination Snowflake-Prod (ID=2) is now HEALTHY" in text
    # one line for the pass (7 batches of 4), none per batch
    [line] = [r.getMessage() for r in caplog.records if "DLQ messages" in r.getMessage()]
    assert line.startswith(
        f"✓ Successfully replayed 25/25 DLQ messages: pipeline=p queue={queue} replayed=25 "
        "parked=0 expired=0 failed=0 remaining=0 rate="
    )
    # the batches reached the destination in queue order
    applied = [r.position.commit for r in dest.applied]
    assert applied == sorted(applied)
    dlq.close()


def test_failed_batch_is_released_and_backs_off(tmp_path: Path) -> None:
    dest = FakeDestination("2", "PG")
    worker, dlq = make_worker(tmp_path, [dest], backoff_base_ms=1000, backoff_max_ms=2000)
    queue = QueueId("1", TABLE, "2")
    enqueue(dlq, queue, [change(1, 1), change(2, 2)])
    dest.fail_next(1)  # one transient failure while the health check passes
    now = time.time()
    result = worker.run_once(now)[0]
    assert result.failed == 2 and result.replayed == 0
    assert dlq.attempts_of(queue, dlq.peek(queue, 1)[0]) == 2  # enqueued with 1, failed once more
    assert worker.run_once(now + 0.1)[0].replayed == 0  # still backing off
    assert worker.run_once(now + 5)[0].replayed == 2
    assert set(dest.rows(TABLE)) == {(1,), (2,)}
    dlq.close()


def test_outage_never_charges_attempts(tmp_path: Path) -> None:
    dest = FakeDestination("2", "PG")
    worker, dlq = make_worker(tmp_path, [dest], max_retries=1)
    queue = QueueId("1", TABLE, "2")
    enqueue(dlq, queue, [change(1, 1)])
    dest.set_down(True)
    for i in range(10):
        worker.run_once(time.time() + i * 100)
    assert dlq.parked_count(queue) == 0
    dest.set_down(False)
    worker.run_once(time.time() + 5000)
    assert set(dest.rows(TABLE)) == {(1,)}
    dlq.close()


def test_poison_is_parked_and_its_key_held_while_others_flow(tmp_path: Path) -> None:
    dest = FakeDestination("2", "PG")
    worker, dlq = make_worker(tmp_path, [dest], batch_size=10)
    queue = QueueId("1", TABLE, "2")
    enqueue(dlq, queue, [change(1, 1), change(2, 2), change(3, 3), change(4, 2), change(5, 1)])
    dest.fail_keys([2])  # permanent
    result = worker.run_once()[0]
    assert result.parked == 2  # key 2, and its later change behind it
    assert result.replayed == 3
    assert dest.row(TABLE, 1)["v"] == 5
    assert dest.row(TABLE, 2) is None
    parked = dlq.peek(queue.parked, 10)
    assert [(m.record.key["id"], m.record.position.commit) for m in parked] == [(2, 2), (2, 4)]
    assert parked[0].failure.kind.value == "permanent"
    held = parked[1].failure
    assert held.error_class == "HeldBehindParkedChange"
    # Its own history stays: it was queued after "connection refused".
    assert held.message == (
        "an earlier change to this key is parked; this one waits behind it "
        "(its own last failure: OperationalError: connection refused)"
    )
    assert held.attempts == FAILURE.attempts
    assert not dlq.has_messages(queue)
    # parked messages are never replayed automatically
    dest.clear_failures()
    worker.run_once(time.time() + 100)
    assert dest.row(TABLE, 2) is None
    dlq.close()


def test_a_replayed_batchs_poison_is_parked_in_one_write(tmp_path: Path) -> None:
    """One write is one compressed frame: the stack they share is stored about once."""
    dest = FakeDestination("2", "PG")
    worker, dlq = make_worker(tmp_path, [dest], batch_size=10)
    queue = QueueId("1", TABLE, "2")
    enqueue(dlq, queue, [change(k, k) for k in range(1, 9)] + [change(9, 2), change(10, 10)])
    dest.fail_keys([2, 3, 5, 8])
    writes: list[list[int]] = []
    park = dlq.park

    def spy(lane: QueueId, messages):  # type: ignore[no-untyped-def]
        writes.append([m.record.position.commit for m in messages])
        return park(lane, messages)

    dlq.park = spy  # type: ignore[method-assign]
    result = worker.run_once()[0]
    assert (result.parked, result.replayed) == (5, 5)
    assert writes == [[2, 3, 5, 8, 9]]  # 9: key 2 again, held behind its parked change
    assert [m.record.position.commit for m in dlq.peek(queue.parked, 10)] == [2, 3, 5, 8, 9]
    dlq.close()


def test_message_over_retry_budget_is_parked(tmp_path: Path) -> None:
    dest = FakeDestination("2", "PG")
    worker, dlq = make_worker(tmp_path, [dest], max_retries=2, batch_size=10)
    queue = QueueId("1", TABLE, "2")
    enqueue(dlq, queue, [change(1, 1), change(2, 2)])
    dest.fail_keys([1], kind="transient")  # fails "transiently" forever while healthy
    now = time.time()
    for i in range(6):
        worker.run_once(now + i * 100)
    assert [m.record.key["id"] for m in dlq.peek(queue.parked, 10)] == [1]
    assert set(dest.rows(TABLE)) == {(2,)}
    assert not dlq.has_messages(queue)
    dlq.close()


def test_expired_messages_are_counted_and_logged(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    dest = FakeDestination("2", "PG")
    worker, dlq = make_worker(tmp_path, [dest], message_ttl=60)
    queue = QueueId("1", TABLE, "2")
    now = time.time()
    enqueue(dlq, queue, [change(1, 1)], now=now - 3600)
    enqueue(dlq, queue, [change(2, 2)], now=now)
    with caplog.at_level(logging.WARNING):
        result = worker.run_once(now)[0]
    assert (result.expired, result.replayed) == (1, 1)
    assert set(dest.rows(TABLE)) == {(2,)}
    assert "DLQ messages expired" in caplog.text
    dlq.close()


def test_hung_health_check_delays_neither_others_nor_stop(tmp_path: Path) -> None:
    hung = FakeDestination("2", "Hung")
    hung.hang_test_connection(30, ignore_timeout=True)
    fine = FakeDestination("3", "Fine")
    worker, dlq = make_worker(tmp_path, [hung, fine])
    enqueue(dlq, QueueId("1", TABLE, "2"), [change(1, 1)])
    enqueue(dlq, QueueId("1", TABLE, "3"), [change(1, 1)])
    started = time.monotonic()
    worker.run_once()
    assert time.monotonic() - started < 3  # probe timeout 0.5 s, not 30 s
    assert set(fine.rows(TABLE)) == {(1,)}
    assert worker.health["2"].circuit_open
    enqueue(dlq, QueueId("1", TABLE, "3"), [change(2, 2)])
    worker.start()
    # The worker's own thread replays it: its loop runs (with Hung's probe still hanging).
    wait_until(lambda: set(fine.rows(TABLE)) == {(1,), (2,)}, 20, "the running worker's pass")
    started = time.monotonic()
    assert worker.stop(timeout=1.0)
    assert time.monotonic() - started < 1.0
    # no pile-up: while the first probe hangs, no second one starts
    checks = hung.health_checks
    for _ in range(3):
        worker.run_once(time.time() + 1000)
    assert hung.health_checks == checks
    hung.hang_test_connection(0)
    dlq.close()


def test_fresh_events_flow_through_a_running_replay(tmp_path: Path) -> None:
    dest = FakeDestination("2", "PG")
    dest.set_write_delay(0.002)
    worker, dlq = make_worker(tmp_path, [dest], batch_size=5, check_interval=0.05)
    queue = QueueId("1", TABLE, "2")
    history = [change(i, i % 7) for i in range(1, 101)]
    enqueue(dlq, queue, history[:50])
    worker.start()

    def producer() -> None:
        for i in range(50, 100, 5):
            enqueue(dlq, queue, history[i : i + 5])
            worker.wake()
            time.sleep(0.01)

    thread = threading.Thread(target=producer)
    thread.start()
    thread.join()
    wait_until(lambda: not dlq.has_messages(queue), 20, "the running replay to drain the queue")
    worker.stop()
    assert dest.rows(TABLE) == apply_model(history)[TABLE]
    applied = [r.position.commit for r in dest.applied]
    assert applied == sorted(applied)
    dlq.close()


def test_a_storage_error_in_one_queue_does_not_stop_the_others(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:

    fake = FakeDestination("1")
    worker, dlq = make_worker(tmp_path, [fake])
    broken, fine = QueueId("1", "public.a", "1"), QueueId("1", "public.b", "1")
    for queue in (broken, fine):
        dlq.enqueue(
            queue,
            [DLQMessage.create(queue, change(i, i, table=queue.table), FAILURE) for i in range(3)],
        )
    real_read = dlq.store.read

    def read(queue: QueueId, max_items: int, *, ahead: bool = False):  # type: ignore[no-untyped-def]
        if queue == broken:
            raise DLQStorageError("read on queue failed: Failed to retrieve items")
        return real_read(queue, max_items, ahead=ahead)

    monkeypatch.setattr(dlq.store, "read", read)
    with caplog.at_level(logging.ERROR, logger="compute.recovery.worker"):
        results = worker.run_once(time.time())
    assert [r.key["id"] for r in fake.applied] == [0, 1, 2]
    assert {r.queue: r.replayed for r in results} == {broken: 0, fine: 3}
    assert dlq.store.count(broken) == 3  # still there for the next pass
    assert "the others go on" in caplog.text and "public.a" in caplog.text
    assert "Failed to retrieve items" in (dlq.status(broken).last_error or "")
    dlq.close()


def test_lost_sessions_while_healthy_are_never_charged(tmp_path: Path) -> None:
    """Sessions killed under every replay (health checks pass): retried, never parked."""
    dest = FakeDestination("2", "PG")
    worker, dlq = make_worker(tmp_path, [dest], max_retries=1, batch_size=10)
    queue = QueueId("1", TABLE, "2")
    enqueue(dlq, queue, [change(1, 1), change(2, 2)])
    dest.fail_keys([1], kind=Fault.SESSION_LOST)  # as a backend killed under every write
    charged_before = dlq.attempts_of(queue, dlq.peek(queue, 1)[0])
    now = time.time()
    for i in range(8):
        worker.run_once(now + i * 100)
    assert len([c for c in dest.calls if not c.ok]) >= 8
    assert dlq.parked_count(queue) == 0
    assert dlq.attempts_of(queue, dlq.peek(queue, 1)[0]) == charged_before
    dest.clear_failures()
    worker.run_once(now + 5000)
    assert set(dest.rows(TABLE)) == {(1,), (2,)}
    assert not dlq.has_messages(queue)
    dlq.close()


class _FailingWrite(FakeDestination):
    """Fails its ``fail_at``-th write (1-based) with a transient error."""

    def __init__(self, fail_at: int, dlq_reads: list[tuple[bool, int]]) -> None:
        super().__init__("2", "PG")
        self.fail_at = fail_at
        self.reads = dlq_reads
        self.set_write_delay(0.02)  # long enough for the read-ahead to land inside it

    def write_batch(self, table, records):  # type: ignore[no-untyped-def]
        if len(self.calls) + 1 == self.fail_at:
            self.fail_next(1)
        return super().write_batch(table, records)


def _noting_reads(dlq: DLQManager, dest: _FailingWrite) -> None:
    """Note each read: (read ahead?, writes finished when it returned)."""
    real = dlq.read_batch

    def read_batch(queue, max_messages=None, *, ahead=False):  # type: ignore[no-untyped-def]
        lease = real(queue, max_messages, ahead=ahead)
        dest.reads.append((ahead, dest.write_count))
        return lease

    dlq.read_batch = read_batch  # type: ignore[method-assign]


def test_next_batch_is_read_while_the_previous_one_is_written(tmp_path: Path) -> None:
    reads: list[tuple[bool, int]] = []
    dest = _FailingWrite(fail_at=0, dlq_reads=reads)
    worker, dlq = make_worker(tmp_path, [dest], batch_size=5, pipelined=True)
    _noting_reads(dlq, dest)
    queue = QueueId("1", TABLE, "2")
    history = [
        change(i, i % 7, Operation.DELETE if i % 5 == 4 else Operation.UPDATE) for i in range(1, 31)
    ]
    enqueue(dlq, queue, history)
    assert worker.run_once()[0].replayed == 30
    # Every batch after the first was read ahead, before the previous write
    # had finished; the last read ahead finds the queue empty, and a plain read
    # after the write makes sure of it.
    assert reads == [(False, 0)] + [(True, batch) for batch in range(6)] + [(False, 6)]
    assert dest.rows(TABLE) == apply_model(history)[TABLE]
    assert [r.position.commit for r in dest.applied] == list(range(1, 31))
    assert not dlq.has_messages(queue)
    dlq.close()


def test_a_failed_write_gives_back_the_batch_read_ahead_in_order(tmp_path: Path) -> None:
    reads: list[tuple[bool, int]] = []
    dest = _FailingWrite(fail_at=2, dlq_reads=reads)
    worker, dlq = make_worker(tmp_path, [dest], batch_size=4, pipelined=True)
    _noting_reads(dlq, dest)
    queue = QueueId("1", TABLE, "2")
    history = [change(i, i % 3) for i in range(1, 21)]
    enqueue(dlq, queue, history)
    now = time.time()
    result = worker.run_once(now)[0]
    # Batch 1 committed; batch 2 failed while batch 3 was read ahead.
    assert (result.replayed, result.failed) == (4, 4)
    assert dlq.count(queue) == 16
    # Batch 3 went back before batch 2 was handled: the head is batch 2, in order.
    assert [m.record.position.commit for m in dlq.peek(queue, 16)] == list(range(5, 21))
    assert worker.run_once(now + 5)[0].replayed == 16
    assert dest.rows(TABLE) == apply_model(history)[TABLE]
    committed = [r.position.commit for c in dest.successful_calls() for r in c.records]
    assert committed == list(range(1, 21))
    assert not dlq.has_messages(queue)
    dlq.close()


def test_stop_during_a_write_leaves_no_lease_behind(tmp_path: Path) -> None:
    reads: list[tuple[bool, int]] = []
    dest = _FailingWrite(fail_at=0, dlq_reads=reads)
    worker, dlq = make_worker(tmp_path, [dest], batch_size=3, pipelined=True)
    queue = QueueId("1", TABLE, "2")
    history = [change(i, i) for i in range(1, 13)]
    enqueue(dlq, queue, history)
    real_write = dest.write_batch

    def write_then_stop(table, records):  # type: ignore[no-untyped-def]
        worker.stop(0)  # stop() lands while the next batch is read ahead
        return real_write(table, records)

    dest.write_batch = write_then_stop  # type: ignore[method-assign]
    assert worker.run_once()[0].replayed == 3
    # The batch read ahead went back: the rest is at the head, in order, unleased.
    lease = dlq.read_batch(queue, 20)
    assert [m.record.position.commit for m in lease.messages] == list(range(4, 13))
    dlq.release(lease)
    dlq.close()


class _PreparingDestination(FakeDestination):
    """Notes when each batch is prepared; refuses a batch with a poison key."""

    def __init__(self, poison: int | None = None) -> None:
        super().__init__("2", "PG")
        self.poison = poison
        # Writes finished when each batch was prepared.
        self.writes_done_at_prepare: list[int] = []
        self.set_write_delay(0.02)

    def prepare_batch(self, table, records):  # type: ignore[no-untyped-def]
        self.writes_done_at_prepare.append(self.write_count)
        if self.poison is not None and any(r.key["id"] == self.poison for r in records):
            raise PermanentDestinationError(f"cannot store key {self.poison}")
        return super().prepare_batch(table, records)

    def write_batch(self, table, records):  # type: ignore[no-untyped-def]
        if self.poison is not None and any(r.key["id"] == self.poison for r in records):
            raise PermanentDestinationError(f"cannot store key {self.poison}")
        return super().write_batch(table, records)


def test_the_next_batch_is_prepared_while_the_previous_one_is_written(tmp_path: Path) -> None:
    dest = _PreparingDestination()
    worker, dlq = make_worker(tmp_path, [dest], batch_size=4, pipelined=True)
    queue = QueueId("1", TABLE, "2")
    history = [change(i, i % 5) for i in range(1, 21)]
    enqueue(dlq, queue, history)
    assert worker.run_once()[0].replayed == 20
    # Batch k+1 was prepared before write k had finished.
    assert dest.writes_done_at_prepare == [0, 0, 1, 2, 3]
    assert dest.rows(TABLE) == apply_model(history)[TABLE]
    dlq.close()


def test_a_batch_its_destination_cannot_prepare_is_handled_as_a_failed_write(
    tmp_path: Path,
) -> None:
    dest = _PreparingDestination(poison=7)
    worker, dlq = make_worker(tmp_path, [dest], batch_size=4, pipelined=True)
    queue = QueueId("1", TABLE, "2")
    history = [change(i, i) for i in range(1, 13)]  # key 7 is in the second batch
    enqueue(dlq, queue, history)
    now = time.time()
    for step in range(5):
        worker.run_once(now + step * 10)
    # The poison change is parked with its error; every other change arrived, in order.
    assert dlq.parked_count(queue) == 1
    assert dlq.peek(queue.parked, 1)[0].record.key == {"id": 7}
    assert set(dest.rows(TABLE)) == {(k,) for k in range(1, 13) if k != 7}
    committed = [r.position.commit for c in dest.successful_calls() for r in c.records]
    assert committed == [i for i in range(1, 13) if i != 7]
    assert not dlq.has_messages(queue)
    dlq.close()


def test_an_ack_that_fails_after_the_commit_leaves_no_lease_behind(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    dest = _PreparingDestination()
    worker, dlq = make_worker(tmp_path, [dest], batch_size=4, pipelined=True)
    queue = QueueId("1", TABLE, "2")
    history = [change(i, i % 3) for i in range(1, 13)]
    enqueue(dlq, queue, history)
    real_ack = dlq.ack
    failures = [DLQStorageError("ack on queue failed: No space left on device")]

    def ack(lease, messages_done=None):  # type: ignore[no-untyped-def]
        if failures:
            raise failures.pop()
        return real_ack(lease, messages_done)

    monkeypatch.setattr(dlq, "ack", ack)
    worker.run_once()  # batch 1 committed, its ack failed (logged; the pass ends)
    assert dlq.count(queue) == 12
    # Both leases (the batch and the one read ahead) went back: the next pass
    # reads from the head, re-applies batch 1 (idempotent) and drains the rest.
    assert worker.run_once()[0].replayed == 12
    assert dest.rows(TABLE) == apply_model(history)[TABLE]
    assert not dlq.has_messages(queue)
    dlq.close()


@pytest.mark.parametrize(("batch_size", "paused"), [(100, False), (1000, True)])
def test_large_replay_batches_pause_the_collector_for_the_pass(
    tmp_path: Path, batch_size: int, paused: bool
) -> None:
    import gc

    seen: list[bool] = []

    class Noting(FakeDestination):
        def write_batch(self, table, records):  # type: ignore[no-untyped-def]
            seen.append(gc.isenabled())
            return super().write_batch(table, records)

    dest = Noting("2", "PG")
    worker, dlq = make_worker(tmp_path, [dest], batch_size=batch_size)
    queue = QueueId("1", TABLE, "2")
    enqueue(dlq, queue, [change(i, i) for i in range(1, 2 * batch_size + 1)])
    gc.enable()
    assert worker.run_once()[0].replayed == 2 * batch_size
    assert seen == [not paused, not paused]
    assert gc.isenabled()  # restored when the pass ended
    dlq.close()


def test_small_batches_are_written_one_at_a_time_without_reading_ahead(tmp_path: Path) -> None:
    """Below LARGE_BATCH_SIZE nothing is read ahead; each write still runs on the
    destination's writer thread, so that a hung one is left there at the deadline."""
    reads: list[tuple[bool, int]] = []
    dest = _FailingWrite(fail_at=0, dlq_reads=reads)
    worker, dlq = make_worker(tmp_path, [dest], batch_size=5)  # below LARGE_BATCH_SIZE
    _noting_reads(dlq, dest)
    queue = QueueId("1", TABLE, "2")
    history = [change(i, i % 4) for i in range(1, 16)]
    enqueue(dlq, queue, history)
    threads: list[str] = []
    real_write = dest.write_batch

    def noting_thread(table, records):  # type: ignore[no-untyped-def]
        threads.append(threading.current_thread().name)
        return real_write(table, records)

    dest.write_batch = noting_thread  # type: ignore[method-assign]
    assert worker.run_once()[0].replayed == 15
    # three batches, none read ahead (and no empty read after the last: the queue is empty)
    assert reads == [(False, 0), (False, 1), (False, 2)]
    assert len(set(threads)) == 1
    assert threads[0].startswith("dlq-recovery-") and threads[0].endswith("-writer")
    assert dest.rows(TABLE) == apply_model(history)[TABLE]
    dlq.close()


@pytest.mark.parametrize("pipelined", [False, True], ids=["inline", "pipelined"])
@pytest.mark.parametrize("broken", ["record_failed_attempt", "park"])
def test_a_failure_while_handling_a_failed_batch_gives_the_lease_back(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, broken: str, pipelined: bool
) -> None:
    """Counting the attempt (a full disk) or parking the poison (DLQ full) fails
    while a replay failure is handled: the batch (and a read-ahead one) goes back
    in order, the status names that cause, and the next pass goes on."""
    dest = _PreparingDestination()
    worker, dlq = make_worker(tmp_path, [dest], batch_size=4, pipelined=pipelined)
    queue = QueueId("1", TABLE, "2")
    history = [change(i, i % 3) for i in range(1, 13)]
    enqueue(dlq, queue, history)
    ids = [m.message_id for m in dlq.iter_messages(queue)]
    if broken == "record_failed_attempt":
        dest.fail_next(1)  # transient while the destination is healthy: the attempt is counted
        error: Exception = OSError(28, "No space left on device")
        cause = "OSError: [Errno 28] No space left on device"
    else:
        dest.fail_keys([history[0].key["id"]])  # permanent: the change is parked
        error = DLQFullError("disk_full", "No space left on device")
        cause = "DLQ full (disk_full): No space left on device"
    real = getattr(dlq, broken)
    failures = [error]

    def failing(*args, **kwargs):  # type: ignore[no-untyped-def]
        if failures:
            raise failures.pop()
        return real(*args, **kwargs)

    monkeypatch.setattr(dlq, broken, failing)
    result = worker.run_once()[0]
    assert result.replayed == 0
    assert dlq.status(queue).last_error == f"replay failed: {cause}"
    # Nothing lost, nothing duplicated, same order; the lease is free again.
    assert [m.message_id for m in dlq.iter_messages(queue)] == ids
    lease = dlq.read_batch(queue, 12)
    assert [m.message_id for m in lease.messages] == ids
    dlq.release(lease)
    dest.clear_failures()
    assert worker.run_once(time.time() + 100)[0].replayed == 12
    assert dest.rows(TABLE) == apply_model(history)[TABLE]
    assert not dlq.has_messages(queue)
    dlq.close()


# ------------------------------------------------------------- probe schedule

T0 = 1_000_000.0  # an injected clock: every pass gets its time from run_once(now=...)


def probe_times(worker: DLQRecoveryWorker, dest: FakeDestination, start: float, end: float):
    """Run a pass every 10 ms from ``start`` to ``end``; the times a probe was made."""
    times = []
    for i in range(round((end - start) * 100)):
        now = start + i / 100
        checks = dest.health_checks
        worker.run_once(now)
        if dest.health_checks != checks:
            times.append(now)
    return times


def test_a_failed_destination_is_probed_soon_then_less_often_up_to_the_interval(
    tmp_path: Path,
) -> None:
    dest = FakeDestination("2", "PG")
    # the defaults: DLQ_CHECK_INTERVAL=30, DLQ_CHECK_INTERVAL_MIN=1
    worker, dlq = make_worker(tmp_path, [dest], check_interval=30.0, check_interval_min=1.0)
    enqueue(dlq, QueueId("1", TABLE, "2"), [change(1, 1)])
    dest.set_down(True)
    times = probe_times(worker, dest, T0, T0 + 400)
    ages = [round(t - T0, 2) for t in times]
    # every second for the first 5 s, then a fifth of the outage so far (1.2x apart)
    assert ages[:10] == [0.0, 1.0, 2.0, 3.0, 4.0, 5.0, 6.0, 7.2, 8.64, 10.37]
    gaps = [b - a for a, b in zip(times, times[1:], strict=False)]
    for age, gap in zip(ages, gaps, strict=False):
        assert gap == pytest.approx(min(30.0, max(1.0, age / 5)), abs=0.011)
    assert max(gaps) <= 30.0 + 0.011  # never more than DLQ_CHECK_INTERVAL apart
    assert gaps[-3:] == pytest.approx([30.0] * 3, abs=0.011)
    dlq.close()


def test_a_first_probe_wait_at_the_interval_gives_a_fixed_schedule(tmp_path: Path) -> None:
    dest = FakeDestination("2", "PG")
    worker, dlq = make_worker(tmp_path, [dest], check_interval=2.0, check_interval_min=2.0)
    enqueue(dlq, QueueId("1", TABLE, "2"), [change(1, 1)])
    dest.set_down(True)
    ages = [round(t - T0, 2) for t in probe_times(worker, dest, T0, T0 + 20)]
    assert ages == [float(a) for a in range(0, 20, 2)]
    dlq.close()


def test_recovery_resets_the_schedule(tmp_path: Path) -> None:
    dest = FakeDestination("2", "PG")
    worker, dlq = make_worker(tmp_path, [dest], check_interval=30.0, check_interval_min=1.0)
    queue = QueueId("1", TABLE, "2")
    enqueue(dlq, queue, [change(1, 1)])
    dest.set_down(True)
    last = probe_times(worker, dest, T0, T0 + 300)[-1]
    dest.set_down(False)
    back = probe_times(worker, dest, T0 + 300, T0 + 330)
    assert back[0] == pytest.approx(last + 30, abs=0.011)  # the 30 s spacing reached
    assert set(dest.rows(TABLE)) == {(1,)}
    # A new outage starts its own schedule from the first wait again, not from 30 s.
    t1 = T0 + 400
    dest.set_down(True)
    worker.health["2"].mark_unhealthy("OperationalError: connection refused", t1)
    enqueue(dlq, queue, [change(2, 2)])
    ages = [round(t - t1, 2) for t in probe_times(worker, dest, t1, t1 + 4.5)]
    assert ages == [0.0, 1.0, 2.0, 3.0, 4.0]
    dlq.close()


def test_each_destination_keeps_its_own_schedule(tmp_path: Path) -> None:
    long_down, fresh = FakeDestination("2", "Old"), FakeDestination("3", "New")
    worker, dlq = make_worker(
        tmp_path, [long_down, fresh], check_interval=30.0, check_interval_min=1.0
    )
    enqueue(dlq, QueueId("1", TABLE, "2"), [change(1, 1)])
    long_down.set_down(True)
    probe_times(worker, long_down, T0, T0 + 300)  # its probes are 30 s apart by now
    enqueue(dlq, QueueId("1", TABLE, "3"), [change(1, 1)])
    fresh.set_down(True)
    checks = long_down.health_checks
    ages = [round(t - T0 - 300, 2) for t in probe_times(worker, fresh, T0 + 300, T0 + 305.5)]
    assert ages == [0.0, 1.0, 2.0, 3.0, 4.0, 5.0]
    assert long_down.health_checks - checks <= 1  # still on its 30 s spacing
    dlq.close()


def test_the_recovery_line_gives_the_measured_outage_and_its_precision(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    dest = FakeDestination("2", "PG")
    worker, dlq = make_worker(tmp_path, [dest], check_interval=30.0, check_interval_min=1.0)
    for table in ("public.a", "public.b", "public.c"):
        enqueue(dlq, QueueId("1", table, "2"), [change(1, 1, table=table)])
    health = worker.health["2"]
    dest.set_down(True)
    # The first write failed at T0 and was retried in place; the circuit opened at T0 + 2.
    health.note_failure("OperationalError: connection refused", T0)
    health.mark_unhealthy("OperationalError: connection refused", T0 + 2)
    probe_times(worker, dest, T0 + 2, T0 + 10)  # probes at ages 2..7, 7.2, 8.64
    dest.set_down(False)  # back at T0 + 10; the next probe, at age 10.37, finds it
    with caplog.at_level(logging.INFO, logger="compute.delivery.health"):
        assert probe_times(worker, dest, T0 + 10, T0 + 11) == [pytest.approx(T0 + 10.37)]
    [line] = [r.getMessage() for r in caplog.records if "now HEALTHY" in r.getMessage()]
    assert line == (
        "✓ Destination PG (ID=2) is now HEALTHY: down for 10.4s (+-1.7s), replaying 3 queue(s): "
        "pipeline=p destination=2 down_seconds=10.4 precision_seconds=1.7"
    )
    dlq.close()


def test_probes_of_several_hung_destinations_run_side_by_side(tmp_path: Path) -> None:
    hung = [FakeDestination(str(i), f"Hung{i}") for i in (2, 3, 4)]
    fine = FakeDestination("5", "Fine")
    for dest in hung:
        dest.hang_test_connection(30, ignore_timeout=True)
    worker, dlq = make_worker(tmp_path, [*hung, fine])  # probe timeout 0.5 s (+0.5 s grace)
    probe_started: list[float] = []
    for dest in hung:
        probe = dest.test_connection

        def recorded(probe: Callable[[], bool] = probe) -> bool:
            probe_started.append(time.monotonic())
            return probe()

        dest.test_connection = recorded  # type: ignore[method-assign]
    for dest in [*hung, fine]:
        enqueue(dlq, QueueId("1", TABLE, dest.destination_id), [change(1, 1)])
    worker.run_once()
    # Side by side: every hung probe began before the first one's 0.5 s timeout
    # ran out; one after the other they would begin at least 0.5 s apart.
    # (Wall time is not asserted: a loaded machine stretches it.)
    assert len(probe_started) == 3
    assert max(probe_started) - min(probe_started) < 0.45
    assert set(fine.rows(TABLE)) == {(1,)}
    for dest in hung:
        dest.hang_test_connection(0)
    dlq.close()
