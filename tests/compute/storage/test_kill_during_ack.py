"""kill -9 inside an acknowledgement of a 1M-message queue: nothing lost, at most one batch again.

The reader process dies at the instants an ack is made of (before and after
the cursor record is written, between the cursor and removing the fully
acknowledged segment, half-way through that removal) and at random
instants. After each death the queue must start exactly at the batch after
the last one the reader committed, or at that batch itself (not yet
acknowledged), and hold every later message in order. In every ``DLQ_FSYNC``
mode: the syncs added before a segment's removal must not change the outcome.
"""

from __future__ import annotations

import os
import random
import subprocess
import sys
import time
from pathlib import Path

import pytest

from compute.storage.rocksq.store import RocksqStore
from config.dlq_config import FsyncMode
from tests.compute.storage.ack_child import BATCH, QUEUE
from tests.rosetta_cli import ROOT

TOTAL = 1_000_000
SEGMENT = 100_000  # the store's default: a segment boundary every 100 acks


def payloads(start: int, stop: int) -> list[bytes]:
    return [b"%07d" % i + b"." * 93 for i in range(start, stop)]


def last_committed(log: Path) -> tuple[int, int] | None:
    lines = log.read_text().split()
    return (int(lines[-2]), int(lines[-1])) if lines else None


def run_reader(
    base: Path, mode: FsyncMode, point: str, after_acks: int, log: Path, kill_after: float = 0.0
) -> str:
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    child = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "tests.compute.storage.ack_child",
            str(base),
            point,
            str(after_acks),
            str(log),
            str(mode),
        ],
        stdout=subprocess.PIPE,
        text=True,
        env=env,
        cwd=ROOT,
    )
    assert child.stdout is not None
    assert child.stdout.readline().strip() == f"ready {mode}"
    if kill_after:
        time.sleep(kill_after)
        child.kill()
    child.wait(timeout=120)
    return "killed" if child.returncode == -9 else child.stdout.read().strip()


def head_and_count(base: Path) -> tuple[int, int]:
    store = RocksqStore(base)
    try:
        lease = store.read(QUEUE, 1)
        head = int(lease.payloads[0][:7]) if lease.payloads else TOTAL
        if lease.payloads:
            store.release(lease)
        return head, store.count(QUEUE)
    finally:
        store.close()


@pytest.mark.parametrize("mode", list(FsyncMode), ids=str)
def test_kill_inside_the_ack_loses_nothing_and_repeats_at_most_the_unacked_batch(
    tmp_path: Path, mode: FsyncMode
) -> None:
    base, log = tmp_path / "dlq", tmp_path / "committed.log"
    store = RocksqStore(base, fsync=mode)
    for start in range(0, TOTAL, BATCH):
        store.enqueue(QUEUE, payloads(start, start + BATCH))
    store.close()
    rng = random.Random(18)
    plan = [
        ("before_pwrite", rng.randint(1, 30)),
        ("after_pwrite", rng.randint(1, 30)),
        ("before_remove", 0),  # at the next segment boundary
        ("mid_remove", 0),
        ("after_pwrite", 0),  # the first ack after a restart
        ("before_pwrite", rng.randint(60, 140)),  # across a boundary
        ("none", 0),
        ("mid_remove", rng.randint(1, 50)),
        ("none", 0),
        ("before_remove", 0),
        ("none", 0),
    ]
    repeated = 0
    for point, after in plan:
        kill_after = rng.uniform(0.005, 0.08) if point == "none" else 0
        outcome = run_reader(base, mode, point, after, log, kill_after)
        assert outcome == "killed", (point, outcome)
        committed = last_committed(log)
        assert committed is not None
        head, count = head_and_count(base)
        # The unacknowledged batch comes back, or the ack landed: nothing in between.
        assert head in (committed[0], committed[1] + 1), (point, committed, head)
        assert count == TOTAL - head, (point, head, count)
        repeated += head == committed[0]
    # Every message after the head is still there, in order, each once.
    store = RocksqStore(base)
    rest: list[bytes] = []
    while lease := store.read(QUEUE, 5000):
        if not lease.payloads:
            break
        rest.extend(lease.payloads)
        store.ack(lease)
    store.close()
    head = last_committed(log)
    assert head is not None
    start = TOTAL - len(rest)
    assert start in (head[0], head[1] + 1)
    assert rest == payloads(start, TOTAL)
    # Both outcomes were seen: kills before the cursor write repeat the batch.
    assert 0 < repeated < len(plan)
