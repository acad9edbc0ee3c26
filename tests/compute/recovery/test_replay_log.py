"""What replay logs: one INFO line per queue per pass, naming the queue and its counts;
the batches only at DEBUG."""

from __future__ import annotations

import logging
import re
import time
from pathlib import Path

import pytest

from compute.dlq.manager import DLQManager
from compute.queue_id import QueueId
from compute.recovery.replay import MAX_BATCHES_PER_PASS
from tests.builders import messages
from tests.compute.recovery.test_worker import make_worker
from tests.fakes import FakeDestination

PASS_LINE = re.compile(
    r"✓ Successfully replayed (\d+)/(\d+) DLQ messages: pipeline=p queue=(\S+) replayed=(\d+) "
    r"parked=(\d+) expired=(\d+) failed=(\d+) remaining=(\d+) rate=\d+/s elapsed=\d+\.\d\ds$"
)


def info_lines(caplog: pytest.LogCaptureFixture) -> list[str]:
    """The replay lines at INFO or above (the worker's health lines left out)."""
    return [
        r.getMessage()
        for r in caplog.records
        if r.levelno >= logging.INFO
        and r.name.startswith("compute.recovery")
        and "DLQ recovery worker" not in r.getMessage()
    ]


def passes(lines: list[str]) -> list[tuple[str, int, int, int]]:
    """(queue, replayed, of, remaining) of each pass line; fails on any other line."""
    found = []
    for line in lines:
        match = PASS_LINE.match(line)
        assert match, f"not a pass line: {line!r}"
        replayed, of, queue, _, _, _, _, remaining = match.groups()
        found.append((queue, int(replayed), int(of), int(remaining)))
    return found


def fill(dlq: DLQManager, queue: QueueId, count: int, start: int = 0) -> None:
    dlq.enqueue(queue, messages(queue, range(start, start + count)))


@pytest.mark.parametrize("pipelined", [False, True], ids=["inline", "pipelined"])
def test_one_info_line_per_queue_per_pass_none_per_batch(
    tmp_path: Path, caplog: pytest.LogCaptureFixture, pipelined: bool
) -> None:
    dest = FakeDestination("2", "PG")
    worker, dlq = make_worker(tmp_path, [dest], batch_size=2, pipelined=pipelined)
    big, small = QueueId("1", "public.big", "2"), QueueId("1", "public.small", "2")
    over = 10  # batches beyond one pass's budget
    fill(dlq, big, 2 * (MAX_BATCHES_PER_PASS + over))
    fill(dlq, small, 6, start=10_000)
    with caplog.at_level(logging.DEBUG):
        worker.run_once(time.time())
        first = info_lines(caplog)
        caplog.clear()
        worker.run_once(time.time())
        second = info_lines(caplog)
        debug = [r.getMessage() for r in caplog.records if r.levelno == logging.DEBUG]
    assert sorted(passes(first)) == [
        (str(big), 2 * MAX_BATCHES_PER_PASS, 2 * MAX_BATCHES_PER_PASS, 2 * over),
        (str(small), 6, 6, 0),
    ]
    assert passes(second) == [(str(big), 2 * over, 2 * over, 0)]
    # the batches are still there for whoever turns DEBUG on
    assert sum(line.startswith(f"Processing 2 DLQ messages for {big}") for line in debug) == over
    assert sum(line.startswith("DLQ batch replayed: queue=") for line in debug) == over
    dlq.close()


def test_a_pass_that_fails_partway_says_so_once(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    dest = FakeDestination("2", "PG")
    worker, dlq = make_worker(tmp_path, [dest], batch_size=3)
    queue = QueueId("1", "public.t", "2")
    fill(dlq, queue, 12)
    writes = 0
    real_write = dest.write_batch

    def third_write_fails(table, records):  # noqa: ANN001, ANN202 - the destination's signature
        nonlocal writes
        writes += 1
        if writes == 3:
            dest.fail_next(1)
        return real_write(table, records)

    dest.write_batch = third_write_fails  # type: ignore[method-assign]
    with caplog.at_level(logging.INFO):
        worker.run_once(time.time())
    [line] = [r.getMessage() for r in caplog.records if "DLQ messages" in r.getMessage()]
    assert line.startswith(
        f"✓ Successfully replayed 6/9 DLQ messages: pipeline=p queue={queue} replayed=6 "
        "parked=0 expired=0 failed=3 remaining=6 rate="
    )
    assert "DLQ replay failed, backing off: queue=" in caplog.text
    dlq.close()
