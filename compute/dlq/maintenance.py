"""The DLQ's background thread: status files, idle handles, drained queues, disk rescans."""

from __future__ import annotations

import logging
import threading
import time
from typing import TYPE_CHECKING

from compute.dlq.attempts import ATTEMPTS_FILE
from compute.dlq.queue_info import QueueInfos
from compute.dlq.status_files import STATUS_FILE, StatusFiles
from compute.dlq.tombstones import TOMBSTONES_FILE
from compute.errors import LeaseError
from compute.queue_id import QueueId
from compute.storage.base import QueueStore

if TYPE_CHECKING:
    from compute.dlq.manager import DLQManager

logger = logging.getLogger(__name__)

STATUS_INTERVAL = 1.0
IDLE_CLOSE_SECONDS = 60.0
# A queue whose lanes stayed empty, and that nothing changed, this long has its
# directory removed (its next enqueue makes it again): drained queues would
# otherwise leave their side files and directories behind for good.
REMOVE_DRAINED_SECONDS = IDLE_CLOSE_SECONDS
# The manager's files in a queue's (or lane's) directory, removed with it.
SIDE_FILES = (STATUS_FILE, TOMBSTONES_FILE, ATTEMPTS_FILE)


class Maintenance:
    """The loop of the ``dlq-maintenance`` thread, until ``stop`` is set."""

    def __init__(
        self,
        dlq: DLQManager,
        store: QueueStore,
        status_files: StatusFiles,
        infos: QueueInfos,
        rescan_interval: float,
        stop: threading.Event,
    ) -> None:
        self._dlq = dlq
        self._store = store
        self._status_files = status_files
        self._infos = infos
        self._rescan_interval = rescan_interval
        self._stop = stop
        # Parked lane -> (stored messages, when first seen all discarded).
        self._discarded_only: dict[QueueId, tuple[int, float]] = {}

    def run(self) -> None:
        scanned_at = time.monotonic()
        while not self._stop.wait(STATUS_INTERVAL):
            try:
                self.run_once()
                if time.monotonic() - scanned_at >= self._rescan_interval:
                    scanned_at = time.monotonic()
                    self._store.rescan()
            except Exception:  # keep the status thread alive whatever happens
                logger.exception("DLQ status refresh failed")

    def run_once(self, now: float | None = None) -> int:
        """One pass: status files, idle handles, drained queues; returns how many were removed.

        ``now`` is on the store's clock (by default the store reads it).
        Status files go first: a queue removed afterwards keeps none, and the
        writer skips a missing directory.
        """
        self._status_files.write()
        self._store.close_idle(IDLE_CLOSE_SECONDS)
        return self.remove_drained(now)

    def remove_drained(self, now: float | None = None) -> int:
        """Remove the directories of queues drained and idle for ``REMOVE_DRAINED_SECONDS``."""
        removed = 0
        for queue in self._store.list_queues():
            # Appends and operator edits hold this lock: a queue being edited
            # is skipped, never waited for, and none starts while it goes.
            lock = self._infos.edit_lock(queue)
            if not lock.acquire(blocking=False):
                continue
            try:
                self._settle_discarded(queue.parked, time.monotonic() if now is None else now)
                if self._store.remove_drained(queue, REMOVE_DRAINED_SECONDS, now, SIDE_FILES):
                    self._forget_side_files(queue)
                    removed += 1
            finally:
                lock.release()
        if removed:
            logger.info("DLQ drained idle queues removed: count=%d", removed)
        return removed

    def _settle_discarded(self, lane: QueueId, now: float) -> None:
        """Read and ack to its end a parked lane holding only discarded messages, once idle.

        Unparked and discarded messages leave a lane at the ack of the lease
        holding them, and nothing reads a parked lane on its own: without
        this, a queue whose parked messages were all unparked would keep its
        directory. The caller holds the queue's edit lock.
        """
        info = self._infos.known(lane)
        stored = self._store.count(lane) if info is not None and info.tombstones else 0
        if not stored or self._dlq.count(lane):
            self._discarded_only.pop(lane, None)
            return
        seen = self._discarded_only.get(lane)
        if seen is None or seen[0] != stored:
            self._discarded_only[lane] = (stored, now)
            return
        if now - seen[1] < REMOVE_DRAINED_SECONDS:
            return
        del self._discarded_only[lane]
        try:
            while not (lease := self._dlq.read_batch(lane)).is_empty:
                if lease.messages:  # not discarded after all: leave it to the operator
                    self._dlq.release(lease)
                    return
                self._dlq.ack(lease)
        except LeaseError:
            return  # an operator is replaying the lane: it settles them itself

    def _forget_side_files(self, queue: QueueId) -> None:
        """The removed files' copies in memory: read again (as missing) when next needed.

        Tombstones and attempt counts of an empty queue name no message left
        in it; kept, a status refresh would write them into a recreated
        directory, and a tombstone would skip a later message reusing an id.
        """
        for lane in (queue, queue.parked):
            info = self._infos.known(lane)
            if info is not None:
                with info.lock:
                    info.tombstones = None
                    info.attempts = None
