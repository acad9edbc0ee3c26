"""Restart of a long queue: from a new process's start to its first replayed batch.

    python tests/benchmarks/bench_restart.py [--messages 3000000] [--kill]

A writer process enqueues ``--messages`` messages of about 300 bytes (half
random, so compression does not hide their size) through ``RocksqStore`` in
batches of 100, with the default segment size, then closes the store
(``--kill``: is killed with SIGKILL instead, its last segment unrecorded).
Then a new process is started and timed from its launch to the end of its
first ``read(queue, 500)``. Prints ``RESULT restart_first_replay_seconds=``
(and the writer's time, the store open and the first read apart).
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
BATCH = 100

_WRITER = """
import os, sys, time
from pathlib import Path
from compute.queue_id import QueueId
from compute.storage.rocksq.store import RocksqStore
base, total, kill = Path(sys.argv[1]), int(sys.argv[2]), sys.argv[3] == "1"
store = RocksqStore(base)
queue = QueueId("1", "public.users", "1")
start = time.perf_counter()
for first in range(0, total, 100):
    noise = os.urandom(7500).hex().encode()
    batch = [noise[i * 150 : i * 150 + 150] + b":%09d:" % (first + i) for i in range(100)]
    store.enqueue(queue, [payload + b"x" * 139 for payload in batch])
print(f"enqueue_seconds={time.perf_counter() - start:.1f}", flush=True)
if kill:
    print("ready", flush=True)
    time.sleep(3600)
store.close()
"""

_READER = """
import sys, time, json
started = float(sys.argv[2])
from pathlib import Path
from compute.queue_id import QueueId
from compute.storage.rocksq.store import RocksqStore
imported = time.time()
store = RocksqStore(Path(sys.argv[1]))
opened = time.time()
lease = store.read(QueueId("1", "public.users", "1"), 500)
done = time.time()
assert len(lease.payloads) == 500, len(lease.payloads)
count = store.count(QueueId("1", "public.users", "1"))
store.close()
print(json.dumps({"imports": imported - started, "store_open": opened - imported,
                  "first_read": done - opened, "total": done - started, "count": count}))
"""


def write(base: Path, total: int, kill: bool) -> str:
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    args = [sys.executable, "-c", _WRITER, str(base), str(total), "1" if kill else "0"]
    proc = subprocess.Popen(args, env=env, stdout=subprocess.PIPE, text=True)
    assert proc.stdout is not None
    first = proc.stdout.readline().strip()
    if kill:
        assert proc.stdout.readline().strip() == "ready"
        os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    return first


def restart(base: Path) -> dict[str, float]:
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    started = time.time()
    out = subprocess.run(
        [sys.executable, "-c", _READER, str(base), repr(started)],
        env=env,
        check=True,
        capture_output=True,
        text=True,
    ).stdout
    result: dict[str, float] = json.loads(out)
    return result


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--messages", type=int, default=3_000_000)
    parser.add_argument("--kill", action="store_true", help="SIGKILL the writer instead of close")
    parser.add_argument("--restarts", type=int, default=1)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        base = Path(tmp) / "dlq"
        print(write(base, args.messages, args.kill), flush=True)
        for _ in range(args.restarts):
            result = restart(base)
            print(json.dumps(result), flush=True)
        how = "kill" if args.kill else "close"
        print(f"RESULT restart_first_replay_seconds_{how}={result['total']:.2f}")


if __name__ == "__main__":
    main()
