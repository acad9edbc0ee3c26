"""Scale benchmark: many active queues, one long queue, restarts, disk left behind.

    python tests/benchmarks/bench_scale.py [--queues 1000] [--long 3000000] [--rounds 3]
        [--max-open N] [--restarts 30] [--bytes-messages 100000] [--skip many|long|bytes]

Each figure stands beside its baseline, measured in the same run:

* ``many_queues_enqueue_ratio``: one batch of 100 to each of ``--queues``
  queues in turn (as in an outage of a destination that hundreds of tables
  replicate to), against the same batches into one queue; median of rounds.
* ``status_1000_queues_seconds``: ``status()`` of every one of those queues,
  in the process that wrote them, as a running engine answers it (beside the
  first pass, ``status_1000_queues_first_seconds``, and
  ``status_one_queue_x1000_seconds``).
* ``writer_rss_mb_3m``: peak RSS of a process that enqueued ``--long`` messages
  into one queue (beside ``writer_rss_mb_100k``).
* ``restart_first_replay_seconds_3m``: from process start to the first
  replayed batch of that queue, after a clean close and after ``kill -9`` of
  the writer (beside the same for 100k messages, and a process that only
  imports and opens an empty store).
* ``drain_3m_vs_100k``: the drain rate (read, decode, ack) of that queue
  against one of 100k messages (one segment).
* ``bytes_per_message_random`` beside ``bytes_per_message_repetitive``: disk
  per message of 300-byte messages, random text or the repetitive ones of
  ``bench_dlq.py``, after the store flushed them.
* ``drained_disk_bytes`` beside ``empty_base_disk_bytes``: what the base path
  holds once every queue is drained and idle, against a fresh store's.
* ``files_after_restarts``: files of a queue directory after ``--restarts`` restarts that
  each replay and acknowledge a batch (beside ``files_after_1_restart``).
"""

from __future__ import annotations

import argparse
import os
import random
import resource
import signal
import statistics
import string
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from bench_dlq import make_messages  # noqa: E402

from compute.codec.message import DLQMessage  # noqa: E402
from compute.dlq.manager import DLQManager  # noqa: E402
from compute.queue_id import QueueId  # noqa: E402
from config.dlq_config import DLQConfig  # noqa: E402
from destinations.records import ChangeRecord, Operation, SourcePosition  # noqa: E402

BATCH = 100
LONG_QUEUE = QueueId("1", "public.orders", "2")


def rss_mb() -> float:
    with open("/proc/self/statm") as statm:
        return int(statm.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 1e6


def open_fds() -> int:
    return len(os.listdir("/proc/self/fd"))


def disk_bytes(path: Path) -> int:
    total = 0
    for root, dirs, files in os.walk(path):
        for name in dirs + files:
            try:
                total += os.lstat(os.path.join(root, name)).st_blocks * 512
            except FileNotFoundError:
                pass
    return total


def manager_at(base: Path, max_open: int | None = None) -> DLQManager:
    config = DLQConfig(base_path=base, min_free_disk_mb=0, max_open_queues=max_open)
    return DLQManager(config, background=False)


def random_messages(queue: QueueId, count: int, seed: int = 7) -> list[DLQMessage]:
    """Messages of about the size of ``make_messages``', with random text in them."""
    rng = random.Random(seed)
    alphabet = string.ascii_letters + string.digits
    template = make_messages(queue, 1)[0]
    messages = []
    for i in range(count):
        after = {
            "id": i,
            "name": "".join(rng.choices(alphabet, k=18)),
            "email": "".join(rng.choices(alphabet, k=20)) + "@example.com",
            "balance": f"{rng.randint(0, 10**8) / 100:.2f}",
            "note": "".join(rng.choices(alphabet, k=60)),
        }
        record = ChangeRecord(
            "public.users", Operation.UPDATE, {"id": i}, after, SourcePosition(i, 0)
        )
        messages.append(DLQMessage.create(queue, record, template.failure))
    return messages


# ----------------------------------------------------------- many active queues


def bench_many_queues(
    workdir: Path, queues: int, rounds: int, max_open: int | None
) -> dict[str, float]:
    manager = manager_at(workdir / "many", max_open)
    names = [QueueId("1", f"public.table_{i:04d}", "2") for i in range(queues)]
    one = QueueId("1", "public.one", "2")
    batches = {q: make_messages(q, BATCH) for q in [*names, one]}
    rss0, fds0 = rss_mb(), open_fds()
    # The outage begins: every queue gets its first batch (creating it).
    start = time.perf_counter()
    for queue in names:
        manager.enqueue(queue, batches[queue])
    created = time.perf_counter() - start
    manager.enqueue(one, batches[one])
    ratios, many_rates, one_rates = [], [], []
    for _ in range(rounds):
        start = time.perf_counter()
        for queue in names:
            manager.enqueue(queue, batches[queue])
        many = queues * BATCH / (time.perf_counter() - start)
        batch = batches[one]
        start = time.perf_counter()
        for _ in names:
            manager.enqueue(one, batch)
        single = queues * BATCH / (time.perf_counter() - start)
        ratios.append(many / single)
        many_rates.append(many)
        one_rates.append(single)
        print(f"many queues: {many:,.0f} msg/s, one queue: {single:,.0f} msg/s", flush=True)
    results = {
        "many_queues_enqueue_ratio": statistics.median(ratios),
        "many_queues_msg_per_s": statistics.median(many_rates),
        "one_queue_msg_per_s": statistics.median(one_rates),
        "many_queues_create_ms_per_queue": created / queues * 1000,
        "many_queues_rss_mb": rss_mb() - rss0,
        "many_queues_open_fds": open_fds() - fds0,
    }
    # The first status of each queue in a process peeks its head for the oldest
    # enqueue time and loads its parked lane; a running engine's maintenance
    # pass has done that long before an operator asks. Both are reported; the
    # second pass comes after the sizes' 1 s reuse, so it measures the disk again.
    start = time.perf_counter()
    for queue in names:
        manager.status(queue)
    results["status_1000_queues_first_seconds"] = (time.perf_counter() - start) * 1000 / queues
    time.sleep(1.1)
    start = time.perf_counter()
    for queue in names:
        manager.status(queue)
    results["status_1000_queues_seconds"] = (time.perf_counter() - start) * 1000 / queues
    start = time.perf_counter()
    for _ in names:
        manager.status(one)
    results["status_one_queue_x1000_seconds"] = (time.perf_counter() - start) * 1000 / queues
    # Drain everything, then let the queues go idle and the maintenance run.
    start = time.perf_counter()
    for queue in [*names, one]:
        while True:
            lease = manager.read_batch(queue, 500)
            if lease.is_empty:
                break
            manager.ack(lease)
    results["drain_many_queues_seconds"] = time.perf_counter() - start
    results["drained_disk_bytes"] = drained_disk(manager, workdir / "many")
    manager.close()
    empty = manager_at(workdir / "empty")
    empty.close()
    results["empty_base_disk_bytes"] = disk_bytes(workdir / "empty")
    return results


def drained_disk(manager: DLQManager, base: Path) -> int:
    """What ``base`` holds once every queue is drained and has been idle long enough."""
    # Two maintenance passes an hour apart (on the store's clock): the queues
    # were seen empty at both, so they count as idle.
    now = time.monotonic()
    manager.maintain(now=now)
    manager.maintain(now=now + 3600)
    return disk_bytes(base)


# ------------------------------------------------------------- one long queue

CHILD = r"""
import os, sys, time
sys.path.insert(0, {root!r})
sys.path.insert(0, {here!r})
mode, base, count = sys.argv[1], sys.argv[2], int(sys.argv[3])
from compute.dlq.manager import DLQManager
from compute.queue_id import QueueId
from config.dlq_config import DLQConfig
queue = QueueId("1", "public.orders", "2")
manager = DLQManager(DLQConfig(base_path=base, min_free_disk_mb=0), background=False)
if mode == "write":
    from bench_dlq import make_messages
    pool = make_messages(queue, 10_000)
    for i in range(0, count, 100):
        start = i % len(pool)
        manager.enqueue(queue, pool[start : start + 100])
    # VmHWM, not ru_maxrss: the latter keeps the parent's peak across fork + exec.
    peak = next(
        int(line.split()[1]) / 1024
        for line in open("/proc/self/status")
        if line.startswith("VmHWM:")
    )
    print("written", peak, flush=True)
    if sys.argv[4] == "kill":
        time.sleep(3600)  # the parent kills this process here
    manager.close()
elif mode == "replay":
    lease = manager.read_batch(queue, 500)
    print("replayed", len(lease.messages), flush=True)
    manager.ack(lease)
    manager.close()
elif mode == "drain":
    start, drained = time.perf_counter(), 0
    while not (lease := manager.read_batch(queue, 1000)).is_empty:
        drained += len(lease.messages)
        manager.ack(lease)
    print("drained", drained / (time.perf_counter() - start), flush=True)
    manager.close()
"""


def run_child(script: Path, *args: str) -> tuple[float, str]:
    """Seconds from starting the process to its line, and the line."""
    start = time.perf_counter()
    child = subprocess.Popen(
        [sys.executable, str(script), *args], stdout=subprocess.PIPE, text=True
    )
    assert child.stdout is not None
    line = child.stdout.readline()
    elapsed = time.perf_counter() - start
    if args[-1] == "kill":
        child.send_signal(signal.SIGKILL)
    child.wait()
    if not line:
        raise RuntimeError(f"child {args} printed nothing (exit {child.returncode})")
    return elapsed, line.strip()


def bench_long_queue(workdir: Path, long: int, restarts: int) -> dict[str, float]:
    script = workdir / "child.py"
    script.write_text(CHILD.format(root=str(ROOT), here=str(Path(__file__).resolve().parent)))
    results: dict[str, float] = {}
    for label, count in (("100k", min(100_000, long)), ("3m", long)):
        for ending in ("close", "kill"):
            base = workdir / f"long_{label}_{ending}"
            seconds, line = run_child(script, "write", str(base), str(count), ending)
            if ending == "close":
                results[f"writer_rss_mb_{label}"] = float(line.split()[1])
                results[f"writer_msg_per_s_{label}"] = count / seconds
            print(f"wrote {count:,} ({ending}) in {seconds:.1f} s: {line}", flush=True)
            seconds, line = run_child(script, "replay", str(base), "0", "-")
            suffix = "" if ending == "close" else "_after_kill"
            results[f"restart_first_replay_seconds_{label}{suffix}"] = seconds
            print(f"first replay of {count:,} after {ending}: {seconds:.2f} s", flush=True)
    # Draining: a long queue's full segments were closed once written, so each
    # is reopened (its log flushed) and counted when the reader reaches it.
    for label in ("100k", "3m"):
        _, line = run_child(script, "drain", str(workdir / f"long_{label}_kill"), "0", "-")
        results[f"drain_msg_per_s_{label}"] = float(line.split()[1])
    results["drain_3m_vs_100k"] = results["drain_msg_per_s_3m"] / results["drain_msg_per_s_100k"]
    empty = workdir / "long_empty"
    results["restart_first_replay_seconds_empty"], _ = run_child(
        script, "replay", str(empty), "0", "-"
    )
    # Repeated restarts of the 100k queue, each replaying and acknowledging a batch.
    base = workdir / "long_100k_close"
    queue_dir = next(base.glob("source_*/table_*/dest_*"))
    results["files_after_1_restart"] = sum(len(f) for _, _, f in os.walk(queue_dir))
    for _ in range(restarts):
        run_child(script, "replay", str(base), "0", "-")
    results["files_after_restarts"] = sum(len(f) for _, _, f in os.walk(queue_dir))
    return results


# ------------------------------------------------------------ bytes per message


def bench_bytes(workdir: Path, count: int = 100_000) -> dict[str, float]:
    results = {}
    for label, maker in (("repetitive", make_messages), ("random", random_messages)):
        base = workdir / f"bytes_{label}"
        queue = QueueId("1", f"public.{label}", "2")
        messages = maker(queue, count)
        manager = manager_at(base)
        for i in range(0, count, BATCH):
            manager.enqueue(queue, messages[i : i + BATCH])
        manager.close()
        # Reopening flushes the write-ahead log into (compressed) tables: the
        # queue's size for as long as it waits.
        manager = manager_at(base)
        manager.count(queue)
        manager.release(manager.read_batch(queue, 1))
        manager.close()
        results[f"bytes_per_message_{label}"] = disk_bytes(base) / count
        results[f"encoded_bytes_per_message_{label}"] = statistics.mean(
            len(m.encode()) for m in messages[:1000]
        )
    return results


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--queues", type=int, default=1000)
    parser.add_argument("--long", type=int, default=3_000_000)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--restarts", type=int, default=30)
    parser.add_argument("--bytes-messages", type=int, default=100_000)
    parser.add_argument(
        "--max-open",
        type=int,
        default=None,
        help="DLQ_MAX_OPEN_QUEUES for the many-queues part (default: auto)",
    )
    parser.add_argument("--skip", action="append", default=[], choices=["many", "long", "bytes"])
    args = parser.parse_args()
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    print(f"open-file limit at start: soft={soft} hard={hard}", flush=True)
    results: dict[str, float] = {}
    with tempfile.TemporaryDirectory(prefix="bench_scale_") as tmp:
        workdir = Path(tmp)
        if "many" not in args.skip:
            results.update(bench_many_queues(workdir, args.queues, args.rounds, args.max_open))
        if "bytes" not in args.skip:
            results.update(bench_bytes(workdir, args.bytes_messages))
        if "long" not in args.skip:
            results.update(bench_long_queue(workdir, args.long, args.restarts))
    for name, value in results.items():
        text = f"{value:.3f}" if isinstance(value, float) else str(value)
        print(f"RESULT {name}={text}")


if __name__ == "__main__":
    main()
