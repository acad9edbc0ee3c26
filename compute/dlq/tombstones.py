"""Discarded messages of a lane, kept durably as tombstones in its ``discarded.json``.

The store is append-only: a message is removed from a lane by a tombstone
(id -> how many of its first occurrences to skip) that reads skip and the
next ack of the lease holding it deletes for good.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Sequence

from compute.dlq.queue_info import QueueInfos
from compute.errors import DLQStorageError
from compute.queue_id import QueueId
from compute.storage.atomic_file import json_bytes
from compute.storage.base import QueueStore, StoreUnreachable

logger = logging.getLogger(__name__)

TOMBSTONES_FILE = "discarded.json"


class Tombstones:
    """Each lane's tombstones: read once from disk, then kept in its ``QueueInfo``."""

    def __init__(self, store: QueueStore, infos: QueueInfos) -> None:
        self._store = store
        self._infos = infos

    def of(self, lane: QueueId) -> dict[str, int]:
        """``lane``'s tombstones (id -> occurrences to skip); do not change the dict."""
        info = self._infos.of(lane)
        if info.tombstones is None:
            try:
                data = self._store.load_record(lane, TOMBSTONES_FILE)
                loaded = {} if data is None else json.loads(data)["skip"]
                info.tombstones = {str(k): int(v) for k, v in loaded.items() if int(v) > 0}
            except StoreUnreachable as error:
                # Not a damaged record, an unanswered read: forgetting the tombstones
                # now would deliver discarded messages, and the next save would drop
                # them for good. The caller fails this time (a replay retries).
                raise DLQStorageError(f"tombstones of {lane} not read: {error}") from error
            except (OSError, ValueError, TypeError, KeyError, AttributeError) as error:
                # Forgetting tombstones re-delivers discarded messages (duplicates),
                # it never skips a message that was not discarded.
                logger.error(
                    "unreadable tombstone record, discarded messages come back: queue=%s "
                    "record=%s error=%s",
                    lane,
                    TOMBSTONES_FILE,
                    error,
                )
                info.tombstones = {}
        return info.tombstones

    def add(self, lane: QueueId, ids: Sequence[str]) -> None:
        """One more tombstone per id in ``ids``, on disk before this returns."""
        info = self._infos.of(lane)
        with info.lock:
            updated = dict(self.of(lane))
            for message_id in ids:
                updated[message_id] = updated.get(message_id, 0) + 1
            self.save(lane, updated)
            info.tombstones = updated
            info.oldest_known = False
            info.dirty = True

    def forget(self, lane: QueueId, ids: Sequence[str] | None) -> None:
        """Drop one tombstone per id in ``ids`` (all of them with None)."""
        info = self._infos.of(lane)
        with info.lock:
            current = self.of(lane)
            if not current:
                return
            updated: dict[str, int] = {}
            if ids is not None:
                updated = dict(current)
                for message_id in ids:
                    left = updated.get(message_id, 0) - 1
                    if left > 0:
                        updated[message_id] = left
                    else:
                        updated.pop(message_id, None)
            self.save(lane, updated)
            info.tombstones = updated

    def save(self, lane: QueueId, tombstones: dict[str, int]) -> None:
        """Write ``lane``'s tombstones durably (none: remove the record)."""
        if not tombstones:
            self._store.save_record(lane, TOMBSTONES_FILE, None)
            return
        self._store.queue_path(lane).mkdir(parents=True, exist_ok=True)
        self._store.save_record(
            lane, TOMBSTONES_FILE, json_bytes({"version": 1, "skip": tombstones}, indent=2) + b"\n"
        )
