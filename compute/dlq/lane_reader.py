"""Reads a lane's messages without leasing them: count, peek, scan, find (discarded skipped)."""

from __future__ import annotations

from collections.abc import Iterator

from compute.codec.message import DLQMessage, MessageDecoder
from compute.dlq.tombstones import Tombstones
from compute.errors import MessageDecodeError, MessageNotFoundError
from compute.queue_id import QueueId
from compute.storage.base import QueueStore


class LaneReader:
    """Reads a lane (a queue or its parked lane) as its reader and operators see it."""

    def __init__(self, store: QueueStore, tombstones: Tombstones) -> None:
        self._store = store
        self._tombstones = tombstones

    def count(self, lane: QueueId) -> int:
        """Messages in ``lane`` (a queue or its parked lane), discarded ones not counted."""
        raw = self._store.count(lane)
        if not raw:
            return 0
        return max(0, raw - sum(self._tombstones.of(lane).values()))

    def peek(self, queue: QueueId, limit: int = 10) -> list[DLQMessage]:
        """Up to ``limit`` messages from the head, without leasing or removing them."""
        found: list[DLQMessage] = []
        skip = dict(self._tombstones.of(queue))
        decoder = MessageDecoder(queue.main)
        for payload in self._store.peek(queue, limit + sum(skip.values())):
            try:
                message = decoder.decode(payload)
            except MessageDecodeError:
                continue  # quarantined when the reader reaches it
            if skip.get(message.message_id):
                skip[message.message_id] -= 1
                continue
            found.append(message)
        return found[:limit]

    def iter_messages(self, lane: QueueId, chunk: int = 1000) -> Iterator[DLQMessage]:
        """Every message of ``lane`` in FIFO order, streamed; discarded ones skipped."""
        skip = dict(self._tombstones.of(lane))
        decoder = MessageDecoder(lane.main)
        for payloads in self._store.scan(lane, chunk):
            for payload in payloads:
                try:
                    message = decoder.decode(payload)
                except MessageDecodeError:
                    continue  # quarantined when the reader reaches it
                if skip and skip.get(message.message_id):
                    skip[message.message_id] -= 1
                    continue
                yield message

    def holds(self, lane: QueueId, message_id: str) -> bool:
        """True when ``lane`` holds ``message_id``."""
        return bool(self._store.count(lane)) and any(
            m.message_id == message_id for m in self.iter_messages(lane)
        )

    def find(self, queue: QueueId, message_id: str) -> tuple[QueueId, DLQMessage] | None:
        """(lane, message) for ``message_id`` in ``queue``'s main lane, else its parked lane."""
        for lane in (queue.main, queue.parked):
            if not self._store.count(lane):
                continue
            for message in self.iter_messages(lane):
                if message.message_id == message_id:
                    return lane, message
        return None

    def locate(self, message_id: str) -> tuple[QueueId, DLQMessage]:
        """Find ``message_id`` in any queue; raises ``MessageNotFoundError``."""
        for queue in self._store.list_queues():
            found = self.find(queue, message_id)
            if found is not None:
                return found
        raise MessageNotFoundError(f"no message {message_id!r} in any queue")

    def existing_ids(self, queue: QueueId, ids: set[str]) -> set[str]:
        """Which of ``ids`` are already in ``queue`` (either lane)."""
        found: set[str] = set()
        for lane in (queue.main, queue.parked):
            if self._store.count(lane):
                found.update(m.message_id for m in self.iter_messages(lane) if m.message_id in ids)
        return found
