"""What the DLQ manager keeps in memory about each queue (the store does not keep it)."""

from __future__ import annotations

import threading
from dataclasses import dataclass, field
from typing import Any

from compute.codec.failure_context import FailureContext
from compute.dlq.lease import DLQLease
from compute.queue_id import QueueId


@dataclass
class QueueInfo:
    """In-memory facts about a queue that the store does not keep."""

    lock: threading.Lock = field(default_factory=threading.Lock)
    oldest: float | None = None
    oldest_known: bool = False
    newest: float | None = None
    newest_known: bool = False
    last_error: str | None = None
    # When the last error happened; kept after the queue drains and the error is cleared.
    last_error_at: float | None = None
    parked_keys: set[tuple[Any, ...]] | None = None
    # Parked changes older than ``truncate``, counted with ``parked_keys``.
    parked_superseded: int = 0
    # The newest truncate applied to the table (``truncates.AppliedTruncate``),
    # whether it is in the queue's truncated.json, and whether that was read.
    truncate: Any = None
    truncate_saved: bool = False
    truncate_loaded: bool = False
    attempts: dict[str, int] | None = None
    # The failure of the newest enqueued message; formatted only when shown.
    last_failure: FailureContext | None = None
    dropped: int = 0
    quarantined: int = 0
    dirty: bool = True
    # The last status written held messages: its age grows, so it is rewritten every pass.
    aging: bool = False
    # When its status.json was last written (monotonic): the least recently
    # written go first when a pass runs out of time.
    status_written_at: float = float("-inf")
    # Discarded messages of this lane: id -> how many of its first occurrences to skip.
    tombstones: dict[str, int] | None = None
    # Outstanding leases, oldest first (the reader's, plus a read-ahead one):
    # settling one also settles the later ones, as in the store.
    leases: list[DLQLease] = field(default_factory=list)
    # Held by every append to the queue (either lane) and by operator edits
    # of it (main lane's info only): see ``DLQManager.editing``.
    edit_lock: threading.RLock = field(default_factory=threading.RLock)


class QueueInfos:
    """Every queue's ``QueueInfo`` (each lane has its own), made on first use."""

    def __init__(self) -> None:
        self._infos: dict[QueueId, QueueInfo] = {}
        self._lock = threading.Lock()

    def of(self, queue: QueueId) -> QueueInfo:
        info = self._infos.get(queue)
        if info is None:
            with self._lock:
                info = self._infos.setdefault(queue, QueueInfo())
        return info

    def known(self, queue: QueueId) -> QueueInfo | None:
        """``queue``'s info if it has one already (never makes one)."""
        return self._infos.get(queue)

    def items(self) -> list[tuple[QueueId, QueueInfo]]:
        return list(self._infos.items())

    def forget_source(self, source_id: str) -> None:
        """What is cached from the store of ``source_id``'s queues: read again at next use."""
        for queue, info in self.items():
            if queue.source_id != source_id:
                continue
            with info.lock:
                info.tombstones = info.attempts = info.parked_keys = None
                info.truncate, info.truncate_saved, info.truncate_loaded = None, False, False
                info.oldest_known = info.newest_known = False
                info.dirty = True

    def edit_lock(self, queue: QueueId) -> threading.RLock:
        """The lock of ``queue``'s edits and appends (both lanes): see ``DLQManager.editing``."""
        return self.of(queue.main).edit_lock
