"""kill -9 at random instants: no accepted message is lost, none is invented, order holds.

A writer process enqueues numbered messages into several queues and reports
each batch over a pipe twice: an intent line before ``enqueue`` and an
accepted line after it returns. The parent kills it with SIGKILL at random
instants, over and over. Then a reader process drains with read/ack,
reporting each leased batch (its "destination commit") before acking it,
and is itself killed at random. Finally a clean reader drains the rest.

Checks: every accepted message was delivered at least once; nothing was
delivered that no writer ever tried to enqueue; per queue, the first
deliveries come in the order the messages were enqueued.
"""

from __future__ import annotations

import os
import random
import select
import signal
import time
import traceback
from collections.abc import Callable
from pathlib import Path

import pytest

from compute.dlq_manager import DLQManager
from compute.dlq_message import DLQMessage, FailureContext
from compute.queue_id import QueueId
from config.settings import DLQConfig
from destinations.records import ChangeRecord, Operation, SourcePosition

QUEUES = [
    QueueId("1", "public.users", "1"),
    QueueId("1", "public.orders", "1"),
    QueueId("2", "t", "9"),
]
WRITER_KILLS = 100
READER_KILLS = 100
FAILURE = FailureContext("OperationalError", "destination down", code="08006")


def _config(base: Path) -> DLQConfig:
    # Small segments so kills land around segment creation and deletion too.
    return DLQConfig(base_path=base, min_free_disk_mb=0)


def _send(fd: int, line: str) -> None:
    # One write of less than PIPE_BUF bytes is atomic: the parent never sees half a line.
    os.write(fd, line.encode() + b"\n")


def _writer(base: Path, fd: int, epoch: int, seed: int) -> None:
    rng = random.Random(seed)
    manager = DLQManager(_config(base), background=False)
    manager.store.segment_max_items = 300  # type: ignore[attr-defined]
    _send(fd, "READY")
    seq = [0] * len(QUEUES)
    while True:
        q = rng.randrange(len(QUEUES))
        queue = QUEUES[q]
        n = rng.randint(1, 25)
        start = seq[q]
        _send(fd, f"I {q} {epoch} {start} {n}")
        messages = [
            DLQMessage.create(
                queue,
                ChangeRecord(
                    queue.table,
                    Operation.INSERT,
                    {"e": epoch, "s": s},
                    {"e": epoch, "s": s},
                    SourcePosition(epoch, s),
                ),
                FAILURE,
            )
            for s in range(start, start + n)
        ]
        manager.enqueue(queue, messages)
        _send(fd, f"A {q} {epoch} {start} {n}")
        seq[q] += n


def _reader(base: Path, fd: int, epoch: int, seed: int) -> None:
    rng = random.Random(seed)
    manager = DLQManager(_config(base), background=False)
    manager.store.segment_max_items = 300  # type: ignore[attr-defined]
    _send(fd, "READY")
    while True:
        busy = False
        for q, queue in enumerate(QUEUES):
            lease = manager.read_batch(queue, rng.randint(1, 15))
            if lease.is_empty:
                continue
            busy = True
            if rng.random() < 0.1:
                manager.release(lease)
                continue
            keys = " ".join(f"{m.record.key['e']}:{m.record.key['s']}" for m in lease.messages)
            _send(fd, f"D {q} {keys}")  # the destination committed these
            time.sleep(rng.uniform(0, 0.003))  # commit latency: kills land before the ack too
            manager.ack(lease)
        if not busy:
            _send(fd, "EMPTY")
            manager.close()
            return


def _spawn(
    target: Callable[[Path, int, int, int], None], base: Path, epoch: int, seed: int
) -> tuple[int, int]:
    read_fd, write_fd = os.pipe()
    pid = os.fork()
    if pid == 0:  # child
        code = 0
        try:
            os.close(read_fd)
            target(base, write_fd, epoch, seed)
        except BaseException:
            traceback.print_exc()
            code = 1
        finally:
            os._exit(code)
    os.close(write_fd)
    return pid, read_fd


def _collect(
    read_fd: int, lines: list[str], until: Callable[[list[str]], bool], timeout: float
) -> bool:
    """Read lines until ``until(lines)`` or EOF or timeout; True if ``until`` was met."""
    buffer = b""
    deadline = time.monotonic() + timeout
    while True:
        if until(lines):
            return True
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            return False
        ready, _, _ = select.select([read_fd], [], [], remaining)
        if not ready:
            return False
        chunk = os.read(read_fd, 65536)
        if not chunk:
            return until(lines)
        buffer += chunk
        *complete, buffer = buffer.split(b"\n")
        lines.extend(x.decode() for x in complete)


def _kill_and_reap(pid: int, read_fd: int, lines: list[str]) -> None:
    try:
        os.kill(pid, signal.SIGKILL)
    except ProcessLookupError:
        pass
    _, status = os.waitpid(pid, 0)
    _collect(read_fd, lines, lambda _: False, timeout=5)  # drain to EOF
    os.close(read_fd)
    exited_by_itself = os.WIFEXITED(status) and os.WEXITSTATUS(status) != 0
    assert not exited_by_itself, f"child failed on its own (exit {os.WEXITSTATUS(status)})"


@pytest.mark.timeout(240)
def test_kill9_writers_and_readers_lose_nothing(tmp_path: Path) -> None:
    base = tmp_path / "dlq"
    rng = random.Random(20261123)
    attempted: list[set[tuple[int, int]]] = [set() for _ in QUEUES]
    accepted: list[set[tuple[int, int]]] = [set() for _ in QUEUES]

    # Phase 1: writers killed at random instants.
    for epoch in range(1, WRITER_KILLS + 1):
        lines: list[str] = []
        pid, fd = _spawn(_writer, base, epoch, rng.randrange(2**32))
        assert _collect(fd, lines, lambda ls: "READY" in ls, timeout=30), "writer did not start"
        # Let it accept a random number of batches (progress does not depend
        # on how loaded the machine is), then kill it at a random instant.
        wanted = rng.randint(0, 6)
        _collect(
            fd, lines, lambda ls, n=wanted: sum(x.startswith("A") for x in ls) >= n, timeout=20
        )
        time.sleep(rng.uniform(0, 0.02))
        _kill_and_reap(pid, fd, lines)
        for line in lines:
            kind, *fields = line.split()
            if kind in ("I", "A"):
                q, e, start, n = map(int, fields)
                target = attempted if kind == "I" else accepted
                target[q].update((e, s) for s in range(start, start + n))
    total_accepted = sum(map(len, accepted))
    assert total_accepted > 1000, "writers accepted too little for a meaningful test"

    # Phase 2: readers killed at random instants; phase 3: one reader drains the rest.
    delivered: list[list[tuple[int, int]]] = [[] for _ in QUEUES]

    def record(lines: list[str]) -> None:
        for line in lines:
            kind, *fields = line.split()
            if kind == "D":
                q = int(fields[0])
                delivered[q].extend(tuple(map(int, f.split(":"))) for f in fields[1:])  # type: ignore[misc]

    killed_mid_work = 0
    for _ in range(READER_KILLS):
        lines = []
        pid, fd = _spawn(_reader, base, 0, rng.randrange(2**32))
        assert _collect(fd, lines, lambda ls: "READY" in ls, timeout=30), "reader did not start"
        # Wait for the first delivery, then kill somewhere in the work that follows.
        _collect(fd, lines, lambda ls: any(x.startswith(("D", "EMPTY")) for x in ls), timeout=10)
        time.sleep(rng.uniform(0, 0.03))
        _kill_and_reap(pid, fd, lines)
        if not any(x == "EMPTY" for x in lines) and any(x.startswith("D") for x in lines):
            killed_mid_work += 1
        record(lines)
    lines = []
    pid, fd = _spawn(_reader, base, 0, 0)
    assert _collect(fd, lines, lambda ls: "EMPTY" in ls, timeout=120), "final reader did not finish"
    os.waitpid(pid, 0)
    os.close(fd)
    record(lines)

    for q in range(len(QUEUES)):
        got = set(delivered[q])
        missing = accepted[q] - got
        assert not missing, (
            f"queue {q}: {len(missing)} accepted messages lost, e.g. {sorted(missing)[:5]}"
        )
        invented = got - attempted[q]
        assert not invented, f"queue {q}: delivered messages never enqueued: {sorted(invented)[:5]}"
        first_seen: list[tuple[int, int]] = []
        seen: set[tuple[int, int]] = set()
        for item in delivered[q]:
            if item not in seen:
                seen.add(item)
                first_seen.append(item)
        assert first_seen == sorted(first_seen), (
            f"queue {q}: delivery order differs from enqueue order"
        )

    with DLQManager(_config(base), background=False) as manager:
        assert all(manager.store.stats(queue).messages == 0 for queue in QUEUES)
    duplicates = sum(map(len, delivered)) - sum(len(set(d)) for d in delivered)
    print(
        f"accepted={total_accepted} delivered={sum(map(len, delivered))} "
        f"duplicates={duplicates} readers_killed_mid_work={killed_mid_work}"
    )
    # The test means something only if readers died with work in hand.
    assert killed_mid_work >= 20
