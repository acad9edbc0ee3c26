"""Engine-side test doubles and checks: a list source, the applied-changes model, store drains."""

from __future__ import annotations

import contextlib
import threading
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

from compute.queue_id import QueueId
from compute.sources.base import RejectedEvent, Source, SourceBatch
from compute.storage.rocksq.store import RocksqStore
from destinations.records import ChangeRecord, Operation

# The queue the store-level tests write to.
STORE_QUEUE = QueueId("1", "public.users", "2")


def apply_model(
    records: Sequence[ChangeRecord],
) -> dict[str, dict[tuple[Any, ...], dict[str, Any]]]:
    """The tables a correct destination holds after ``records``, in order."""
    tables: dict[str, dict[tuple[Any, ...], dict[str, Any]]] = {}
    for r in records:
        rows = tables.setdefault(r.table, {})
        if r.op is Operation.DELETE:
            rows.pop(r.key_values, None)
        else:
            assert r.after is not None
            rows[r.key_values] = {**rows.get(r.key_values, {}), **r.key, **r.after}
    return tables


class ListSource(Source):
    """A source over a fixed list of records; remembers what was acknowledged."""

    def __init__(self, records: Sequence[ChangeRecord], source_id: str = "1") -> None:
        super().__init__(source_id)
        self.records = list(records)
        self.next_index = 0
        self.acknowledged = 0
        self.reads = 0

    def read(self, max_events: int) -> SourceBatch:
        self.reads += 1
        batch = self.records[self.next_index : self.next_index + max_events]
        self.next_index += len(batch)
        return SourceBatch(batch, str(self.next_index))

    def acknowledge(self, resume_token: str) -> None:
        self.acknowledged = int(resume_token)

    @property
    def exhausted(self) -> bool:
        return self.next_index >= len(self.records)

    @property
    def rejected(self) -> Sequence[RejectedEvent]:
        return ()


def items(start: int, stop: int, size: int = 0) -> list[bytes]:
    """Payloads ``m000000``.. for the store tests, padded with dots to ``size`` bytes."""
    return [(b"m%06d" % i).ljust(size, b".") for i in range(start, stop)]


def drain(store: RocksqStore, queue: QueueId = STORE_QUEUE, batch: int = 7) -> list[bytes]:
    """Read and acknowledge ``queue`` to the end, ``batch`` at a time; the payloads, in order."""
    out: list[bytes] = []
    while True:
        lease = store.read(queue, batch)
        if not lease.payloads:
            return out
        out.extend(lease.payloads)
        store.ack(lease)


def tree_listing(base: Path) -> list[str]:
    """Every path under ``base``, relative to it, sorted: what a directory tree holds."""
    return sorted(str(p.relative_to(base)) for p in base.rglob("*"))


@contextlib.contextmanager
def held_elsewhere(lock: contextlib.AbstractContextManager[object]) -> Iterator[None]:
    """Hold ``lock`` in another thread for the ``with`` block (a reentrant lock would let
    this thread in)."""
    held, done = threading.Event(), threading.Event()

    def hold() -> None:
        with lock:
            held.set()
            done.wait(10)

    holder = threading.Thread(target=hold)
    holder.start()
    held.wait(10)
    try:
        yield
    finally:
        done.set()
        holder.join()
