"""Each queue's status, and the ``status.json`` in its directory that operators read.

Freshness (the README's "status.json" section): the maintenance thread
rewrites, every ``STATUS_INTERVAL`` (1 s), the file of every queue that
changed and of every queue holding messages (their oldest age grows), so
``updated_at`` and ``oldest_age_seconds`` are at most about a second old.
``bytes_on_disk`` is the store's one measure (``RocksqStore.stats``), shared
by ``rosetta dlq queues``, the admin API and the metrics.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from compute.codec.message import decode_message
from compute.dlq.holds import Holds, QueueHold
from compute.dlq.lane_reader import LaneReader
from compute.dlq.queue_info import QueueInfo, QueueInfos
from compute.dlq.timestamps import iso
from compute.errors import DLQError, MessageDecodeError
from compute.queue_id import QueueId
from compute.storage.atomic_file import json_bytes, write_atomic
from compute.storage.base import QueueStore

logger = logging.getLogger(__name__)

STATUS_FILE = "status.json"
# The longest one refresh pass of the status files may run (the pass runs every second).
STATUS_PASS_SECONDS = 0.1


@dataclass(frozen=True, slots=True)
class QueueStatus:
    """What an operator wants to know about one queue."""

    queue: QueueId
    messages: int
    bytes_on_disk: int
    oldest_enqueued_at: float | None
    newest_enqueued_at: float | None
    last_error: str | None
    dropped: int
    quarantined: int
    parked: int = 0
    # When the last error happened; kept when ``last_error`` is cleared by a drain.
    last_error_at: float | None = None
    # Parked changes older than the table's last applied truncate (``truncates.py``),
    # and that truncate (its ``to_json``) while any are parked.
    superseded: int = 0
    truncate: dict[str, Any] | None = None
    # Held: its table fails every change the same way (the cause); None: flowing.
    held: QueueHold | None = None

    def oldest_age(self, now: float) -> float | None:
        return None if self.oldest_enqueued_at is None else max(0.0, now - self.oldest_enqueued_at)

    def to_json(self, now: float) -> dict[str, Any]:
        q = self.queue
        return {
            "queue": str(q),
            **q.json_fields(),
            "messages": self.messages,
            "bytes_on_disk": self.bytes_on_disk,
            "oldest_enqueued_at": iso(self.oldest_enqueued_at),
            "oldest_age_seconds": _round(self.oldest_age(now)),
            "newest_enqueued_at": iso(self.newest_enqueued_at),
            "last_error": self.last_error,
            "last_error_at": iso(self.last_error_at),
            "parked": self.parked,
            "superseded": self.superseded,
            "superseded_by_truncate": self.truncate
            and {
                **self.truncate,
                "applied_at": iso(self.truncate["applied_at"]),
            },
            "dropped": self.dropped,
            "quarantined": self.quarantined,
            "held": None if self.held is None else self.held.to_json(now),
            "updated_at": iso(now),
        }


class StatusFiles:
    """Builds ``QueueStatus`` values and refreshes the ``status.json`` of changed queues."""

    def __init__(
        self,
        store: QueueStore,
        infos: QueueInfos,
        lanes: LaneReader,
        restore_side_files: Callable[[QueueId], None],
        clock: Callable[[], float],
        superseded: Callable[[QueueId], tuple[int, dict[str, Any] | None]] = lambda q: (0, None),
        holds: Holds | None = None,
    ) -> None:
        self._store = store
        self._holds = holds or Holds(clock)
        self._infos = infos
        self._lanes = lanes
        # Writes a queue's tombstones and attempt counts again if their files went missing.
        self._restore_side_files = restore_side_files
        self._clock = clock
        # (parked changes older than the last applied truncate, that truncate)
        self._superseded = superseded

    def status(self, queue: QueueId) -> QueueStatus:
        info = self._infos.of(queue)
        with info.lock:
            error_at = info.last_error_at  # an error recorded while we count is kept
        stats = self._store.stats(queue)
        parked = self._lanes.count(queue.parked)
        superseded, truncate = self._superseded(queue) if parked else (0, None)
        messages = self._lanes.count(queue) if stats.messages else 0
        if messages == 0:
            oldest = newest = None
        else:
            oldest = self._oldest(queue, info)
            newest = self._newest(queue, info)
        with info.lock:
            if messages == 0 and parked == 0 and info.last_error_at == error_at:
                # Drained: the outage's error no longer describes anything queued.
                info.last_error = None
                info.last_failure = None
            return QueueStatus(
                queue=queue,
                messages=messages,
                bytes_on_disk=stats.bytes_on_disk,
                oldest_enqueued_at=oldest,
                newest_enqueued_at=newest,
                last_error=_last_error(info),
                last_error_at=info.last_error_at,
                dropped=info.dropped,
                quarantined=info.quarantined,
                parked=parked,
                superseded=superseded,
                truncate=truncate if superseded else None,
                held=self._holds.of(queue),
            )

    def _oldest(self, queue: QueueId, info: QueueInfo) -> float | None:
        with info.lock:
            if info.oldest_known:
                return info.oldest
        head = self._lanes.peek(queue, 1)
        oldest = head[0].enqueued_at if head else None
        with info.lock:
            info.oldest, info.oldest_known = oldest, True
        return oldest

    def _newest(self, queue: QueueId, info: QueueInfo) -> float | None:
        with info.lock:
            if info.newest_known:
                return info.newest
        tail = self._store.peek(queue, 1, newest=True)
        newest: float | None = None
        if tail:
            try:
                newest = decode_message(tail[0]).enqueued_at
            except MessageDecodeError:
                newest = None
        with info.lock:
            info.newest, info.newest_known = newest, True
        return newest

    def mark_all(self) -> int:
        """Mark every known queue for a refresh; returns how many there are."""
        queues = self._store.list_queues()
        for queue in queues:
            info = self._infos.of(queue)
            info.dirty = True
        return len(queues)

    def write(self, *, force: bool = False) -> int:
        """Refresh ``status.json`` of every changed or non-empty queue (all with ``force``).

        A pass (once a second) stops after ``STATUS_PASS_SECONDS`` unless
        ``force``d: with a thousand queues holding messages, rewriting every
        file every second took over half a core from the pipelines. The
        queues left out stay due and go first in the next pass.
        """
        due = [
            (queue, info)
            for queue, info in self._infos.items()
            if info.dirty or info.aging or force
        ]
        due.sort(key=lambda item: item[1].status_written_at)
        started = time.monotonic()
        written = 0
        for queue, info in due:
            if not force and written and time.monotonic() - started >= STATUS_PASS_SECONDS:
                break
            info.dirty = False
            path = self._store.queue_path(queue)
            if not path.is_dir():
                continue
            try:
                if info.tombstones or info.attempts:
                    self._restore_side_files(queue)
                status = self.status(queue)
                write_atomic(
                    path / STATUS_FILE, json_bytes(status.to_json(self._clock()), indent=2) + b"\n"
                )
                info.aging = status.messages > 0
                info.status_written_at = time.monotonic()
            except (DLQError, OSError) as error:
                # A full disk or a damaged queue must not stop the refresh of
                # the others, nor a clean shutdown; try again next time.
                info.dirty = True
                logger.warning("status file not refreshed: queue=%s error=%s", queue, error)
                continue
            written += 1
        return written


def _last_error(info: QueueInfo) -> str | None:
    if info.last_error is None and info.last_failure is not None:
        info.last_error = f"{info.last_failure.error_class}: {info.last_failure.message}"
    return info.last_error


def _round(value: float | None) -> float | None:
    return None if value is None else round(value, 3)
