"""A queue's tombstones and attempt counts written again when the store lost their records."""

from __future__ import annotations

import logging

from compute.dlq.attempts import ATTEMPTS_FILE, Attempts
from compute.dlq.queue_info import QueueInfos
from compute.dlq.tombstones import TOMBSTONES_FILE, Tombstones
from compute.queue_id import QueueId
from compute.storage.base import QueueStore

logger = logging.getLogger(__name__)


def restore_records(
    store: QueueStore,
    infos: QueueInfos,
    tombstones: Tombstones,
    attempts: Attempts,
    queue: QueueId,
) -> None:
    """Write ``queue``'s tombstones and attempt counts again if their records went missing.

    They live beside the queue (its directory, for rocksq); if it was removed
    (the store then recreates it) or a file was deleted, the copy in memory
    is the truth, and a restart must not forget discarded messages or retry
    budgets.
    """
    info = infos.known(queue)
    if info is None:
        return
    with info.lock:
        if info.tombstones and store.load_record(queue, TOMBSTONES_FILE) is None:
            logger.warning("tombstone file missing, written again: queue=%s", queue)
            tombstones.save(queue, info.tombstones)
        if info.attempts and store.load_record(queue, ATTEMPTS_FILE) is None:
            logger.warning("attempts file missing, written again: queue=%s", queue)
            attempts.save(queue, info.attempts)
