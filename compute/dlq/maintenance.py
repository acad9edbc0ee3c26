"""The DLQ's background thread: refreshes status files, closes idle queues, rescans the disk."""

from __future__ import annotations

import logging
import threading
import time

from compute.dlq.status_files import StatusFiles
from compute.storage.base import QueueStore

logger = logging.getLogger(__name__)

STATUS_INTERVAL = 1.0
IDLE_CLOSE_SECONDS = 60.0


class Maintenance:
    """The loop of the ``dlq-maintenance`` thread, until ``stop`` is set."""

    def __init__(
        self,
        store: QueueStore,
        status_files: StatusFiles,
        rescan_interval: float,
        stop: threading.Event,
    ) -> None:
        self._store = store
        self._status_files = status_files
        self._rescan_interval = rescan_interval
        self._stop = stop

    def run(self) -> None:
        scanned_at = time.monotonic()
        while not self._stop.wait(STATUS_INTERVAL):
            try:
                self._status_files.write()
                self._store.close_idle(IDLE_CLOSE_SECONDS)
                if time.monotonic() - scanned_at >= self._rescan_interval:
                    scanned_at = time.monotonic()
                    self._store.rescan()
            except Exception:  # keep the status thread alive whatever happens
                logger.exception("DLQ status refresh failed")
