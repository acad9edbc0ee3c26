"""A reader process for the kill-during-ack test: replays a queue and dies inside an ack.

    python -m tests.compute.storage.ack_child BASE POINT AFTER_ACKS LOG [FSYNC]

Each lease is logged (its first and last message number) before it is
acknowledged, as a destination commits before the DLQ deletes. POINT says
where this process kills itself (SIGKILL) once AFTER_ACKS acks went through:
``before_pwrite``/``after_pwrite`` of the cursor record, ``before_remove`` (cursor
written, the fully acknowledged segment not yet removed), ``mid_remove`` (half
of the segment's files removed), or ``none`` (the test kills it from outside).
FSYNC is the store's ``DLQ_FSYNC`` mode (``always``, ``interval``, ``off``; default ``off``).
"""

from __future__ import annotations

import os
import signal
import sys
from pathlib import Path

import rocksq

from compute.queue_id import QueueId
from compute.storage.rocksq import segments
from compute.storage.rocksq.store import RocksqStore
from config.dlq_config import FsyncMode

QUEUE = QueueId("1", "public.ledger", "2")
BATCH = 1000


def die() -> None:
    os.kill(os.getpid(), signal.SIGKILL)


def main() -> None:
    base, point, after_acks, log_path = sys.argv[1], sys.argv[2], int(sys.argv[3]), sys.argv[4]
    mode = FsyncMode(sys.argv[5]) if len(sys.argv) > 5 else FsyncMode.OFF
    acks = 0
    armed = False  # not while the store opens: only inside the acks of this run
    real_pwrite, real_remove_queue = os.pwrite, rocksq.remove_mpmc_queue

    def pwrite(fd: int, data: bytes, offset: int) -> int:
        if armed and acks >= after_acks and point == "before_pwrite":
            die()
        written = real_pwrite(fd, data, offset)
        if armed and acks >= after_acks and point == "after_pwrite":
            die()
        return written

    def remove_queue(path: str) -> None:
        if armed and acks >= after_acks and point == "mid_remove":
            files = sorted(Path(path).iterdir())
            for file in files[: len(files) // 2]:
                file.unlink()
            die()
        real_remove_queue(path)

    real_remove = segments.remove_segment_dir

    def remove_segment_dir(state: object, number: int) -> None:
        if armed and acks >= after_acks and point == "before_remove":
            die()
        real_remove(state, number)  # type: ignore[arg-type]

    os.pwrite = pwrite  # type: ignore[assignment]
    rocksq.remove_mpmc_queue = remove_queue  # type: ignore[assignment]
    segments.remove_segment_dir = remove_segment_dir  # type: ignore[assignment]
    # A short interval, so kills land between syncs and right after them alike.
    store = RocksqStore(Path(base), fsync=mode, fsync_interval=0.02)
    log = os.open(log_path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
    print(f"ready {mode}", flush=True)
    armed = True
    while True:
        lease = store.read(QUEUE, BATCH)
        if not lease.payloads:
            print("drained", flush=True)
            return
        first, last = int(lease.payloads[0][:7]), int(lease.payloads[-1][:7])
        # The "destination commit": in the kernel once written, whatever kills us next.
        os.write(log, b"%d %d\n" % (first, last))
        store.ack(lease)
        acks += 1


if __name__ == "__main__":
    main()
