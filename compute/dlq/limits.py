"""The DLQ's capacity limits: the store holding them, and what a full queue does."""

from __future__ import annotations

import logging
from collections.abc import Sequence
from pathlib import Path

from compute.codec.message import DLQMessage
from compute.dlq.queue_info import QueueInfo
from compute.errors import STORE_UNAVAILABLE, DLQFullError
from compute.queue_id import QueueId
from compute.storage.base import QueueLimits, QueueStore
from config.dlq_config import DLQConfig, WhenFull
from config.nats_config import Backend

logger = logging.getLogger(__name__)


def default_store(config: DLQConfig) -> QueueStore:
    """The store ``DLQ_BACKEND`` names, holding the configured limits.

    rocksq: the embedded store under ``DLQ_BASE_PATH``. jetstream: the NATS
    JetStream store (status files and quarantine still under the base path);
    imported only then, so a rocksq engine never imports nats.
    """
    limits = QueueLimits(
        max_messages=config.max_queue_messages,
        max_bytes=config.max_queue_bytes,
        min_free_disk_bytes=config.min_free_disk_bytes,
    )
    if config.backend is Backend.JETSTREAM:
        from compute.storage.jetstream.store import JetStreamStore

        return JetStreamStore(config.nats, Path(config.base_path), limits)
    from compute.storage.rocksq.store import RocksqStore

    return RocksqStore(
        Path(config.base_path),
        limits,
        max_open_handles=config.max_open_queues,
        fsync=config.fsync,
        fsync_interval=config.fsync_interval_ms / 1000,
    )


def when_full(
    config: DLQConfig,
    queue: QueueId,
    info: QueueInfo,
    messages: Sequence[DLQMessage],
    error: DLQFullError,
    now: float,
) -> bool:
    """``queue`` refused ``messages``: True if the batch is dropped (counted and logged).

    Either way the error is ``queue``'s last error. False (``block``): the
    caller re-raises ``error`` with a bare ``raise`` in its ``except`` block.
    Raising it here would put this frame, which holds ``error``, in its own
    traceback: a cycle that keeps every frame below alive until the garbage
    collector runs, and with them the store's RocksDB handle, locked.
    """
    count = len(messages)
    error.queue = queue
    with info.lock:
        info.last_error = str(error)
        info.last_error_at = now
        info.dirty = True
    # An unreachable store (no quorum) is not a full one: never a reason to drop.
    if config.when_full is not WhenFull.DROP_NEWEST or error.limit == STORE_UNAVAILABLE:
        return False
    with info.lock:
        info.dropped += count
    logger.error(
        "DLQ full, dropped newest messages (DLQ_WHEN_FULL=drop_newest): "
        "queue=%s dropped=%d total_dropped=%d limit=%s ids=%s",
        queue,
        count,
        info.dropped,
        error.limit,
        ",".join(m.message_id for m in messages[:20]),
    )
    return True
