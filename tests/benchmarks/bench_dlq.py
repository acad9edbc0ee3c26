"""DLQ store benchmark, side by side with raw rocksq and persist-queue in the same run.

    python tests/benchmarks/bench_dlq.py [--messages 50000] [--rounds 3]
    python tests/benchmarks/bench_dlq.py --backend jetstream   # see bench_jetstream.py

Each figure is measured in slices that alternate with its baseline's (so a
load change on a shared machine hits both sides alike). Prints per-round
figures, then ``RESULT name=value`` lines (medians over rounds):
enqueue_batch_ratio, enqueue_single_ratio, drain_ratio, vs_persist_queue_drain,
enqueue_fsync_always_vs_off and enqueue_fsync_interval_vs_off (DLQ_FSYNC modes,
4 concurrent writers, batches of 100),
fds_1000_queues (DLQ_MAX_OPEN_QUEUES=auto and =32) (plus the absolute rates they are made of, and
mpmc_add_single_vs_raw_push_single: the ceiling of enqueue_single_ratio on
this backend).
"""

from __future__ import annotations

import argparse
import os
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

import rocksq  # noqa: E402
from rocksq.blocking import MpmcQueue, PersistentQueueWithCapacity  # noqa: E402

from compute.codec.failure_context import FailureContext  # noqa: E402
from compute.codec.message import DLQMessage  # noqa: E402
from compute.dlq.manager import DLQManager  # noqa: E402
from compute.queue_id import QueueId  # noqa: E402
from config.dlq_config import DLQConfig, FsyncMode  # noqa: E402
from destinations.records import ChangeRecord, Operation, SourcePosition  # noqa: E402

PAYLOAD_BYTES = 300
BATCH = 100


def make_messages(queue: QueueId, count: int) -> list[DLQMessage]:
    """Messages whose encoding is about 300 bytes, like a typical narrow row."""
    failure = FailureContext(
        "OperationalError",
        "connection refused",
        code="08006",
        first_failure_at=1.0,
        last_failure_at=1.0,
    )
    messages = []
    for i in range(count):
        after = {
            "id": i,
            "name": f"customer {i:08d}",
            "email": f"customer{i:08d}@example.com",
            "balance": "1234.56",
            "note": "x" * 60,
        }
        record = ChangeRecord(
            "public.users", Operation.UPDATE, {"id": i}, after, SourcePosition(i, 0)
        )
        messages.append(DLQMessage.create(queue, record, failure))
    return messages


def timed(fn) -> float:
    start = time.perf_counter()
    fn()
    return time.perf_counter() - start


def open_fds() -> int:
    return len(os.listdir("/proc/self/fd"))


def bench_round(workdir: Path, count: int, blocks: int = 10) -> dict[str, float]:
    """One round; each figure is measured in ``blocks`` slices that alternate with
    the baseline's, so a load change on a shared machine hits both sides alike."""
    queue = QueueId("1", "public.users", "2")
    messages = make_messages(queue, count)
    payloads = [m.encode() for m in messages]
    size = statistics.mean(map(len, payloads))
    results: dict[str, float] = {"payload_bytes": size}
    singles = min(count, 10_000)
    raw = PersistentQueueWithCapacity(str(workdir / "raw"), count * 4)
    # The store's backend: each DLQ queue segment is an MpmcQueue (non-destructive
    # reads), whose add is itself slower than the baseline's push.
    mpmc = MpmcQueue(str(workdir / "mpmc"), 0)
    config = DLQConfig(base_path=workdir / "dlq", min_free_disk_mb=0)
    manager = DLQManager(config, background=False)
    elapsed: dict[str, float] = dict.fromkeys(
        (
            "raw_push_batch",
            "dlq_enqueue_batch",
            "raw_push_single",
            "dlq_enqueue_single",
            "mpmc_add_single",
        ),
        0.0,
    )

    def slices(total: int, step: int) -> list[range]:
        per = -(-total // blocks // step) * step
        return [range(i, min(i + per, total)) for i in range(0, total, per)]

    # --- enqueue batches of 100 (the DLQ encodes its messages; raw pushes bytes)
    for part in slices(count, BATCH):
        elapsed["raw_push_batch"] += timed(
            lambda p=part: [raw.push(payloads[i : i + BATCH]) for i in p[::BATCH]]
        )
        elapsed["dlq_enqueue_batch"] += timed(
            lambda p=part: [manager.enqueue(queue, messages[i : i + BATCH]) for i in p[::BATCH]]
        )
    # --- enqueue single messages
    for part in slices(singles, 1):
        elapsed["raw_push_single"] += timed(lambda p=part: [raw.push([payloads[i]]) for i in p])
        elapsed["dlq_enqueue_single"] += timed(
            lambda p=part: [manager.enqueue(queue, [messages[i]]) for i in p]
        )
        elapsed["mpmc_add_single"] += timed(lambda p=part: [mpmc.add([payloads[i]]) for i in p])
    results["raw_push_batch"] = count / elapsed["raw_push_batch"]
    results["dlq_enqueue_batch"] = count / elapsed["dlq_enqueue_batch"]
    results["raw_push_single"] = singles / elapsed["raw_push_single"]
    results["dlq_enqueue_single"] = singles / elapsed["dlq_enqueue_single"]
    results["mpmc_add_single"] = singles / elapsed["mpmc_add_single"]

    # --- drain: raw pop of 100 against DLQ read_batch + ack of 100 (decoding included)
    total = count + singles
    drained = 0

    def drain(n: int) -> None:
        nonlocal drained
        done = 0
        while done < n:
            lease = manager.read_batch(queue, BATCH)
            if lease.is_empty:
                return
            done += len(lease.messages)
            manager.ack(lease)
        drained += done

    raw_time = dlq_time = 0.0
    for part in slices(total, BATCH):
        raw_time += timed(lambda p=part: [raw.pop(BATCH) for _ in p[::BATCH]])
        dlq_time += timed(lambda p=part: drain(len(p)))
    assert drained == total, (drained, total)
    results["raw_pop"] = total / raw_time
    results["dlq_drain"] = total / dlq_time
    manager.close()

    # --- persist-queue SQLiteAckQueue get + ack (what a Python user would otherwise pick)
    import persistqueue

    pq_count = min(count, 2000)
    ack_queue = persistqueue.SQLiteAckQueue(
        str(workdir / "pq"), auto_commit=True, multithreading=True
    )
    for p in payloads[:pq_count]:
        ack_queue.put(p)

    def pq_drain() -> None:
        for _ in range(pq_count):
            item = ack_queue.get(block=False)
            ack_queue.ack(item)

    results["persist_queue_drain"] = pq_count / timed(pq_drain)
    return results


def bench_fsync(workdir: Path, count: int, writers: int = 4, blocks: int = 10) -> dict[str, float]:
    """Enqueue rate (messages/s) per DLQ_FSYNC mode: ``writers`` threads, each its own queue,
    batches of 100; the modes' slices alternate, so load changes hit all three alike."""
    import threading

    queues = [QueueId("1", f"public.t{w}", "2") for w in range(writers)]
    per_writer = count // writers // BATCH * BATCH
    messages = {q: make_messages(q, per_writer) for q in queues}
    managers = {
        mode: DLQManager(
            DLQConfig(base_path=workdir / f"fsync_{mode.value}", min_free_disk_mb=0, fsync=mode),
            background=False,
        )
        for mode in FsyncMode
    }
    elapsed = dict.fromkeys(FsyncMode, 0.0)
    per_slice = -(-per_writer // blocks // BATCH) * BATCH
    for start in range(0, per_writer, per_slice):
        stop = min(start + per_slice, per_writer)
        for mode, manager in managers.items():

            def write(
                queue: QueueId, m: DLQManager = manager, first: int = start, end: int = stop
            ) -> None:
                for i in range(first, end, BATCH):
                    m.enqueue(queue, messages[queue][i : i + BATCH])

            threads = [threading.Thread(target=write, args=(q,)) for q in queues]
            began = time.perf_counter()
            for thread in threads:
                thread.start()
            for thread in threads:
                thread.join()
            elapsed[mode] += time.perf_counter() - began
    for manager in managers.values():
        manager.close()
    return {f"fsync_{mode.value}": per_writer * writers / elapsed[mode] for mode in FsyncMode}


def bench_fds(workdir: Path, queues: int, max_open: int | None = None) -> int:
    config = DLQConfig(base_path=workdir / "fds", min_free_disk_mb=0, max_open_queues=max_open)
    manager = DLQManager(config, background=False)
    queue0 = QueueId("1", "t0", "1")
    message = make_messages(queue0, 1)[0]
    peak = open_fds()
    for i in range(queues):
        queue = QueueId(str(i % 10), f"table_{i}", str(i % 3))
        manager.enqueue(queue, [DLQMessage.create(queue, message.record, message.failure)])
        peak = max(peak, open_fds())
    for queue in manager.list_queues():
        lease = manager.read_batch(queue, 10)
        manager.ack(lease)
        peak = max(peak, open_fds())
    manager.close()
    return peak


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--messages", type=int, default=50_000)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--queues", type=int, default=1000)
    parser.add_argument("--backend", choices=("rocksq", "jetstream"), default="rocksq")
    args = parser.parse_args()
    if args.backend == "jetstream":
        from tests.benchmarks.bench_jetstream import main as jetstream_main

        # Each change is a quorum-acknowledged network write: fewer than rocksq's default.
        jetstream_main(min(args.messages, 20_000), args.rounds)
        return
    rounds = []
    for r in range(args.rounds):
        workdir = Path(tempfile.mkdtemp(prefix="bench_dlq_"))
        try:
            result = bench_round(workdir, args.messages)
            result |= bench_fsync(workdir, args.messages)
        finally:
            shutil.rmtree(workdir, ignore_errors=True)
        rounds.append(result)
        print(f"round {r + 1}: " + " ".join(f"{k}={v:,.0f}" for k, v in result.items()), flush=True)
    workdir = Path(tempfile.mkdtemp(prefix="bench_dlq_fds_"))
    try:
        fds = bench_fds(workdir, args.queues)
        fds_capped = bench_fds(workdir / "capped", args.queues, max_open=32)
    finally:
        shutil.rmtree(workdir, ignore_errors=True)

    def median_ratio(a: str, b: str) -> float:
        return statistics.median(r[a] / r[b] for r in rounds)

    def median(a: str) -> float:
        return statistics.median(r[a] for r in rounds)

    print(f"rocksq {rocksq.version()} messages={args.messages} rounds={args.rounds}")
    for name in (
        "raw_push_batch",
        "dlq_enqueue_batch",
        "raw_push_single",
        "dlq_enqueue_single",
        "mpmc_add_single",
        "raw_pop",
        "dlq_drain",
        "persist_queue_drain",
    ):
        print(f"RESULT {name}_per_s={median(name):.0f}")
    print(f"RESULT enqueue_batch_ratio={median_ratio('dlq_enqueue_batch', 'raw_push_batch'):.3f}")
    print(
        f"RESULT enqueue_single_ratio={median_ratio('dlq_enqueue_single', 'raw_push_single'):.3f}"
    )
    # The ceiling of enqueue_single_ratio on this backend: a bare MpmcQueue.add of
    # one ready-made payload, with no encoding and no bookkeeping at all.
    print(
        "RESULT mpmc_add_single_vs_raw_push_single="
        f"{median_ratio('mpmc_add_single', 'raw_push_single'):.3f}"
    )
    print(f"RESULT drain_ratio={median_ratio('dlq_drain', 'raw_pop'):.3f}")
    print(f"RESULT vs_persist_queue_drain={median_ratio('dlq_drain', 'persist_queue_drain'):.1f}")
    # DLQ_FSYNC: 4 writers, batches of 100, each mode against off in the same slices.
    for mode in FsyncMode:
        print(f"RESULT enqueue_fsync_{mode.value}_per_s={median(f'fsync_{mode.value}'):.0f}")
    print(f"RESULT enqueue_fsync_always_vs_off={median_ratio('fsync_always', 'fsync_off'):.3f}")
    print(f"RESULT enqueue_fsync_interval_vs_off={median_ratio('fsync_interval', 'fsync_off'):.3f}")
    # DLQ_MAX_OPEN_QUEUES=auto keeps every queue with messages open (about 9
    # descriptors each, within the open-file limit); 32 caps it at the cost of reopening.
    print(f"RESULT fds_1000_queues={fds}")
    print(f"RESULT fds_1000_queues_max_open_32={fds_capped}")


if __name__ == "__main__":
    main()
