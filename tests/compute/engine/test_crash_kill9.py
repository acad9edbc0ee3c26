"""kill -9 at random instants: no accepted message is lost, none is invented, order holds.

A writer process enqueues numbered messages into several queues and reports
each batch over a pipe twice: an intent line before ``enqueue`` and an
accepted line after it returns. The parent kills it with SIGKILL at random
instants, over and over. Then a reader process drains with read/ack,
reporting each leased batch (its "destination commit") before acking it,
often holding a read-ahead lease on the next batch, and is itself killed
at random. Finally a clean reader drains the rest.

Checks: every accepted message was delivered at least once; nothing was
delivered that no writer ever tried to enqueue; per queue, the first
deliveries come in the order the messages were enqueued.

A pipeline whose destination is down (every event goes to the DLQ) is killed
at random too: a source offset stored past an event the DLQ lost would skip
it for good. Both run in every ``DLQ_FSYNC`` mode.
"""

from __future__ import annotations

import multiprocessing
import os
import random
import signal
import time
import traceback
from collections.abc import Callable
from multiprocessing.connection import Connection
from pathlib import Path
from typing import Any

import pytest

from compute.codec.failure_context import FailureContext
from compute.codec.message import DLQMessage
from compute.dlq.manager import DLQManager
from compute.engine.pipeline import Pipeline
from compute.queue_id import QueueId
from compute.runtime.retry_policy import RetryPolicy
from compute.sources.offset_store import OffsetStore
from compute.sources.synthetic_source import SyntheticSource
from config.dlq_config import DLQConfig, FsyncMode
from destinations.records import ChangeRecord, Operation, SourcePosition
from tests.fakes import FakeDestination

QUEUES = [
    QueueId("1", "public.users", "1"),
    QueueId("1", "public.orders", "1"),
    QueueId("2", "t", "9"),
]
WRITER_KILLS = 60
READER_KILLS = 60
DEFAULT_MODE = DLQConfig.fsync
ROUNDS_OTHER = 35  # kills of each kind in the other DLQ_FSYNC modes
FAILURE = FailureContext("OperationalError", "destination down", code="08006")


def _config(base: Path, mode: FsyncMode) -> DLQConfig:
    return DLQConfig(base_path=base, min_free_disk_mb=0, fsync=mode)


def _send(conn: Connection, line: str) -> None:
    # One small message is one write(2) of under PIPE_BUF bytes: atomic, so
    # the parent never sees half a line, whenever the child is killed.
    conn.send_bytes(line.encode())


def _writer(base: Path, conn: Connection, epoch: int, seed: int, mode: FsyncMode) -> None:
    rng = random.Random(seed)
    manager = DLQManager(_config(base, mode), background=False)
    # Small segments so kills land around segment creation and deletion too.
    manager.store.segment_max_messages = 300  # type: ignore[attr-defined]
    _send(conn, "READY")
    seq = [0] * len(QUEUES)
    while True:
        q = rng.randrange(len(QUEUES))
        queue = QUEUES[q]
        n = rng.randint(1, 25)
        start = seq[q]
        _send(conn, f"I {q} {epoch} {start} {n}")
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
        _send(conn, f"A {q} {epoch} {start} {n}")
        seq[q] += n


def _reader(base: Path, conn: Connection, epoch: int, seed: int, mode: FsyncMode) -> None:
    rng = random.Random(seed)
    manager = DLQManager(_config(base, mode), background=False)
    manager.store.segment_max_messages = 300  # type: ignore[attr-defined]
    _send(conn, "READY")
    while True:
        busy = False
        for q, queue in enumerate(QUEUES):
            lease = manager.read_batch(queue, rng.randint(1, 15))
            while not lease.is_empty:
                busy = True
                # As the recovery worker does: the next batch is often read
                # ahead while this one is being committed.
                ahead = (
                    manager.read_batch(queue, rng.randint(1, 15), ahead=True)
                    if rng.random() < 0.5
                    else None
                )
                if rng.random() < 0.1:
                    if ahead is not None:
                        manager.release(ahead)
                    manager.release(lease)
                    break
                keys = " ".join(f"{m.record.key['e']}:{m.record.key['s']}" for m in lease.messages)
                _send(conn, f"D {q} {keys}")  # the destination committed these
                time.sleep(rng.uniform(0, 0.003))  # commit latency: kills land before the ack too
                manager.ack(lease)
                if ahead is None:
                    break
                lease = ahead
        if not busy:
            _send(conn, "EMPTY")
            manager.close()
            return


# Children come from a fork server, never from this process: after a test
# in this process has used RocksDB, a child forked from it can deadlock in
# RocksDB's own locks (they belong to threads the child does not have).
_CONTEXT = multiprocessing.get_context("forkserver")
_CONTEXT.set_forkserver_preload(["compute.dlq.manager", "tests.compute.engine.test_crash_kill9"])


Target = Callable[[Path, Connection, int, int, FsyncMode], None]


def _child(
    target: Target, base: Path, conn: Connection, epoch: int, seed: int, mode: FsyncMode
) -> None:
    try:
        target(base, conn, epoch, seed, mode)
    except BaseException:
        traceback.print_exc()
        os._exit(1)
    os._exit(0)


def _spawn(
    target: Target, base: Path, epoch: int, seed: int, mode: FsyncMode
) -> tuple[Any, Connection]:
    reader, writer = _CONTEXT.Pipe(duplex=False)
    args = (target, base, writer, epoch, seed, mode)
    process = _CONTEXT.Process(target=_child, args=args, daemon=True)
    process.start()
    writer.close()
    return process, reader


def _collect(
    conn: Connection, lines: list[str], until: Callable[[list[str]], bool], timeout: float
) -> bool:
    """Read lines until ``until(lines)`` or EOF or timeout; True if ``until`` was met."""
    deadline = time.monotonic() + timeout
    while True:
        if until(lines):
            return True
        remaining = deadline - time.monotonic()
        if remaining <= 0 or not conn.poll(remaining):
            return until(lines)
        try:
            lines.append(conn.recv_bytes().decode())
        except EOFError:
            return until(lines)


def _kill_and_reap(process: Any, conn: Connection, lines: list[str]) -> None:
    if process.is_alive():
        os.kill(process.pid, signal.SIGKILL)
    process.join()
    _collect(conn, lines, lambda _: False, timeout=5)  # drain to EOF
    conn.close()
    assert process.exitcode in (0, -signal.SIGKILL), (
        f"child failed on its own (exit {process.exitcode})"
    )


@pytest.mark.timeout(240)
@pytest.mark.parametrize("mode", list(FsyncMode), ids=str)
def test_kill9_writers_and_readers_lose_nothing(tmp_path: Path, mode: FsyncMode) -> None:
    base = tmp_path / "dlq"
    rng = random.Random(20261123)
    # The default mode gets every round; the others a third (the suite's time).
    writer_kills, reader_kills = (
        (WRITER_KILLS, READER_KILLS) if mode is DEFAULT_MODE else (ROUNDS_OTHER, ROUNDS_OTHER)
    )
    attempted: list[set[tuple[int, int]]] = [set() for _ in QUEUES]
    accepted: list[set[tuple[int, int]]] = [set() for _ in QUEUES]

    # Phase 1: writers killed at random instants.
    for epoch in range(1, writer_kills + 1):
        lines: list[str] = []
        process, conn = _spawn(_writer, base, epoch, rng.randrange(2**32), mode)
        assert _collect(conn, lines, lambda ls: "READY" in ls, timeout=30), "writer did not start"
        # Let it accept a random number of batches (progress does not depend
        # on how loaded the machine is), then kill it at a random instant.
        wanted = rng.randint(0, 6)
        _collect(
            conn, lines, lambda ls, n=wanted: sum(x.startswith("A") for x in ls) >= n, timeout=20
        )
        time.sleep(rng.uniform(0, 0.02))
        _kill_and_reap(process, conn, lines)
        for line in lines:
            kind, *fields = line.split()
            if kind in ("I", "A"):
                q, e, start, n = map(int, fields)
                target = attempted if kind == "I" else accepted
                target[q].update((e, s) for s in range(start, start + n))
    total_accepted = sum(map(len, accepted))
    assert total_accepted > 10 * writer_kills, "writers accepted too little for a meaningful test"

    # Phase 2: readers killed at random instants; phase 3: one reader drains the rest.
    delivered: list[list[tuple[int, int]]] = [[] for _ in QUEUES]

    def record(lines: list[str]) -> None:
        for line in lines:
            kind, *fields = line.split()
            if kind == "D":
                q = int(fields[0])
                delivered[q].extend(tuple(map(int, f.split(":"))) for f in fields[1:])  # type: ignore[misc]

    killed_mid_work = 0
    for _ in range(reader_kills):
        lines = []
        process, conn = _spawn(_reader, base, 0, rng.randrange(2**32), mode)
        assert _collect(conn, lines, lambda ls: "READY" in ls, timeout=30), "reader did not start"
        # Wait for the first delivery, then kill somewhere in the work that follows.
        _collect(conn, lines, lambda ls: any(x.startswith(("D", "EMPTY")) for x in ls), timeout=10)
        time.sleep(rng.uniform(0, 0.03))
        _kill_and_reap(process, conn, lines)
        if not any(x == "EMPTY" for x in lines) and any(x.startswith("D") for x in lines):
            killed_mid_work += 1
        record(lines)
    lines = []
    process, conn = _spawn(_reader, base, 0, 0, mode)
    assert _collect(conn, lines, lambda ls: "EMPTY" in ls, timeout=120), (
        "final reader did not finish"
    )
    _kill_and_reap(process, conn, lines)
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

    with DLQManager(_config(base, mode), background=False) as manager:
        assert all(manager.store.stats(queue).messages == 0 for queue in QUEUES)
    duplicates = sum(map(len, delivered)) - sum(len(set(d)) for d in delivered)
    print(
        f"accepted={total_accepted} delivered={sum(map(len, delivered))} "
        f"duplicates={duplicates} readers_killed_mid_work={killed_mid_work}"
    )
    # The test means something only if readers died with work in hand.
    assert killed_mid_work >= reader_kills // 5


# ------------------------------------------------------- source offsets past DLQ writes

PIPELINE_EVENTS = 30_000
PIPELINE_KILLS = 10


def _pipeline(base: Path, conn: Connection, epoch: int, seed: int, mode: FsyncMode) -> None:
    """A pipeline whose destination is down: every event goes to the DLQ, then its offset moves."""
    rng = random.Random(seed)
    config = _config(base, mode)
    offsets = OffsetStore(base.parent / "offsets.json", fsync=mode is not FsyncMode.OFF)
    source = SyntheticSource("1", offsets, total_events=PIPELINE_EVENTS, seed=11)
    destination = FakeDestination("2", "PG")
    destination.set_down(True)
    with DLQManager(config, background=False) as manager:
        pipeline = Pipeline(
            "p", source, [destination], manager, config, batch_size=rng.randint(5, 80),
            retry_policy=RetryPolicy(max_retries=0, base_delay=0.001, max_delay=0.001),
        )  # fmt: skip
        _send(conn, "READY")
        pipeline.start()
        pipeline.finished.wait(120)
        pipeline.stop()
        _send(conn, f"DONE {pipeline.state}")


def _stored_offset(tmp_path: Path) -> int:
    path = tmp_path / "offsets.json"
    return int(OffsetStore(path).get("1") or 0) if path.exists() else 0


@pytest.mark.timeout(240)
@pytest.mark.parametrize("mode", list(FsyncMode), ids=str)
def test_kill9_of_a_pipeline_never_leaves_a_source_offset_past_a_lost_dlq_write(
    tmp_path: Path, mode: FsyncMode
) -> None:
    """Killed at random while its events go to the DLQ, a pipeline skips none of them.

    The source resumes at its stored offset, so an event below it that is not
    in the DLQ would never be read again: at the end the DLQ must hold every
    event, each queue's first copies in source order.
    """
    base = tmp_path / "dlq"
    rng = random.Random(20261124)
    offsets = [0]
    for _ in range(PIPELINE_KILLS):
        lines: list[str] = []
        process, conn = _spawn(_pipeline, base, 0, rng.randrange(2**32), mode)
        assert _collect(conn, lines, lambda ls: "READY" in ls, timeout=30), "pipeline did not start"
        # Once the offset moves (so, whatever the machine's load, while batches
        # are going to the DLQ and offsets being stored), at a random instant.
        deadline = time.monotonic() + 30
        while _stored_offset(tmp_path) <= offsets[-1] and time.monotonic() < deadline:
            if conn.poll(0.005):
                break  # the source ran out (DONE): not a meaningful round
        time.sleep(rng.uniform(0, 0.15))
        _kill_and_reap(process, conn, lines)
        offsets.append(_stored_offset(tmp_path))
        if offsets[-1] == PIPELINE_EVENTS:
            break  # done before this kill (a fast machine)
    assert offsets == sorted(offsets), f"a stored offset went back: {offsets}"
    # The test means something only if kills landed while offsets were moving.
    mid_work = sum(a < b < PIPELINE_EVENTS for a, b in zip(offsets, offsets[1:], strict=False))
    assert mid_work >= PIPELINE_KILLS // 2, offsets
    lines = []
    process, conn = _spawn(_pipeline, base, 0, 0, mode)
    assert _collect(conn, lines, lambda ls: any(x.startswith("DONE") for x in ls), timeout=150)
    _kill_and_reap(process, conn, lines)
    assert "DONE finished" in lines, lines
    assert _stored_offset(tmp_path) == PIPELINE_EVENTS

    expected: dict[str, list[SourcePosition]] = {}
    source = SyntheticSource("1", None, total_events=PIPELINE_EVENTS, seed=11)
    while records := source.read(1000).records:
        for record in records:
            expected.setdefault(record.table, []).append(record.position)
    queued: dict[str, list[SourcePosition]] = {}
    with DLQManager(_config(base, mode), background=False) as manager:
        for queue in manager.list_queues():
            while not (lease := manager.read_batch(queue, 1000)).is_empty:
                queued.setdefault(queue.table, []).extend(m.record.position for m in lease.messages)
                manager.ack(lease)
    assert queued.keys() == expected.keys()
    for table, positions in expected.items():
        first_copies = list(dict.fromkeys(queued[table]))
        missing = set(positions) - set(first_copies)
        assert not missing, f"{table}: {len(missing)} events skipped, e.g. {sorted(missing)[:3]}"
        assert first_copies == positions, f"{table}: queued out of source order"
    print(f"mode={mode} offsets={offsets} queued={sum(map(len, queued.values()))}")
