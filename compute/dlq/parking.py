"""Parking: setting messages aside in a queue's parked lane, and holding their keys.

Parked messages stay on disk, visible and replayable by hand; they are never
replayed automatically. Their keys count as parked, so later changes to the
same keys are parked behind them (a row's changes stay in order).
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from typing import Any

from compute.codec.message import DLQMessage, encode_messages
from compute.dlq.lane_reader import LaneReader
from compute.dlq.quarantine import Quarantine
from compute.dlq.queue_info import QueueInfos
from compute.dlq.truncates import Truncates
from compute.errors import MessageEncodeError
from compute.queue_id import QueueId
from compute.storage.base import QueueStore
from destinations.records import ChangeRecord

logger = logging.getLogger(__name__)


class Parking:
    """Each queue's parked lane and the keys it holds (computed once, kept in memory)."""

    def __init__(
        self,
        store: QueueStore,
        infos: QueueInfos,
        lanes: LaneReader,
        quarantine: Quarantine,
        truncates: Truncates,
    ) -> None:
        self._store = store
        self._infos = infos
        self._lanes = lanes
        self._quarantine = quarantine
        self._truncates = truncates

    def park(self, queue: QueueId, messages: Sequence[DLQMessage]) -> int:
        """Append ``messages`` to ``queue``'s parked lane and hold their keys; returns how many."""
        if not messages:
            return 0
        try:
            payloads = encode_messages(messages)
        except MessageEncodeError:  # rare: set the unstorable ones aside, park the rest
            messages, payloads = self._quarantine.encode_storable(queue.parked, messages)
            if not messages:
                return 0
        keys = self._keys(queue)  # counted before these join them
        with self._infos.edit_lock(queue):
            self._store.enqueue(queue.parked, payloads)
        # A truncate written before its batch's poison was parked is known by now.
        self._truncates.save(queue)
        truncate = self._truncates.of(queue)
        info = self._infos.of(queue.main)
        with info.lock:
            keys.update(record_key(m.record) for m in messages)
            if truncate is not None:
                info.parked_superseded += sum(truncate.supersedes(m.record) for m in messages)
            info.dirty = True
        for m in messages:
            logger.error(
                "DLQ message parked: queue=%s message_id=%s op=%s key=%s attempts=%d error=%s: %s",
                queue,
                m.message_id,
                m.record.op.name.lower(),
                dict(m.record.key),
                m.failure.attempts,
                m.failure.error_class,
                m.failure.message,
            )
        return len(messages)

    def is_parked(self, queue: QueueId, record: ChangeRecord) -> bool:
        """True when an earlier change to ``record``'s key is parked in ``queue``."""
        keys = self._keys(queue)
        return bool(keys) and record_key(record) in keys

    def parked_keys(self, queue: QueueId) -> frozenset[tuple[Any, ...]]:
        """Keys (``record_key``) with a parked change in ``queue``; usually empty."""
        return frozenset(self._keys(queue))

    def superseded(self, queue: QueueId) -> int:
        """How many parked changes of ``queue`` are older than its table's last truncate."""
        self._keys(queue)
        return self._infos.of(queue.main).parked_superseded

    def forget_keys(self, queue: QueueId) -> None:
        """Messages left ``queue``'s parked lane: its keys are computed again when next asked."""
        self._infos.of(queue.main).parked_keys = None

    def _keys(self, queue: QueueId) -> set[tuple[Any, ...]]:
        info = self._infos.of(queue.main)
        if info.parked_keys is None:
            keys: set[tuple[Any, ...]] = set()
            superseded = 0
            if self._store.count(queue.parked):
                truncate = self._truncates.of(queue)
                for message in self._lanes.iter_messages(queue.parked):
                    keys.add(record_key(message.record))
                    if truncate is not None and truncate.supersedes(message.record):
                        superseded += 1
            with info.lock:
                if info.parked_keys is None:
                    info.parked_keys = keys
                    info.parked_superseded = superseded
        assert info.parked_keys is not None
        return info.parked_keys


class ParkingBatch:
    """Changes to park, gathered while a failed batch is narrowed down to its poison.

    The caller parks them in one ``park`` call (``messages``) before anything
    else of the batch is queued: one write is one compressed frame, so what
    their failures share (class, stack, queue, columns) is stored about once
    instead of once per change. A change to a key gathered here counts as
    held, like one to a key already parked.
    """

    def __init__(self, parking: Parking, queue: QueueId) -> None:
        self._parking = parking
        self._queue = queue
        self._keys: set[tuple[Any, ...]] = set()
        self.messages: list[DLQMessage] = []

    def holds(self, record: ChangeRecord) -> bool:
        """True when an earlier change to ``record``'s key is parked, or gathered here."""
        return record_key(record) in self._keys or self._parking.is_parked(self._queue, record)

    def add(self, message: DLQMessage) -> None:
        self.messages.append(message)
        self._keys.add(record_key(message.record))


def record_key(record: ChangeRecord) -> tuple[Any, ...]:
    """A hashable identity of the row a change applies to.

    A change without a key (an append-only table's) is a row of its own: its
    position names it, so one parked change holds no other back.
    """
    if not record.key:
        return (record.table, ("", tuple(record.position)))
    try:
        key = (record.table, *record.key.items())
        hash(key)
        return key
    except TypeError:  # unhashable key values: fall back to their repr
        return (record.table, repr(sorted(record.key.items())))
