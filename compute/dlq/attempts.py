"""How many replays of each message failed, kept in its queue's ``attempts.json``."""

from __future__ import annotations

import json
import logging
from collections.abc import Sequence

from compute.codec.message import DLQMessage
from compute.dlq.queue_info import QueueInfos
from compute.queue_id import QueueId
from compute.storage.atomic_file import json_bytes
from compute.storage.base import QueueStore

logger = logging.getLogger(__name__)

ATTEMPTS_FILE = "attempts.json"


class Attempts:
    """Per-message attempt counts of each queue, read once, then kept in its ``QueueInfo``.

    Messages in a queue are immutable, so a count that grows lives beside them
    in a file; a restart then does not reset a poison message's budget.
    """

    def __init__(self, store: QueueStore, infos: QueueInfos) -> None:
        self._store = store
        self._infos = infos

    def record_failed(self, queue: QueueId, messages: Sequence[DLQMessage]) -> dict[str, int]:
        """Count one more failed replay of ``messages``; returns their attempt counts."""
        attempts = self._load(queue)
        for m in messages:
            attempts[m.message_id] = attempts.get(m.message_id, m.failure.attempts) + 1
        self.save(queue, attempts)
        return {m.message_id: attempts[m.message_id] for m in messages}

    def of(self, queue: QueueId, message: DLQMessage) -> int:
        return self._load(queue).get(message.message_id, message.failure.attempts)

    def forget(self, queue: QueueId, message_ids: list[str]) -> None:
        """Drop the counts of messages that left ``queue``."""
        info = self._infos.of(queue)
        if not info.attempts:  # the common case: nothing ever failed here
            return
        for message_id in message_ids:
            info.attempts.pop(message_id, None)
        self.save(queue, info.attempts)

    def _load(self, queue: QueueId) -> dict[str, int]:
        info = self._infos.of(queue)
        if info.attempts is None:
            try:
                data = self._store.load_record(queue, ATTEMPTS_FILE)
                loaded = {} if data is None else json.loads(data)
                info.attempts = {str(k): int(v) for k, v in loaded.items()}
            except (OSError, ValueError, TypeError, AttributeError) as error:
                logger.warning(
                    "unreadable attempts record, counts restart: queue=%s record=%s error=%s",
                    queue,
                    ATTEMPTS_FILE,
                    error,
                )
                info.attempts = {}
        return info.attempts

    def save(self, queue: QueueId, attempts: dict[str, int]) -> None:
        """Write ``queue``'s counts, unless the queue keeps nothing any more (then they live in
        memory). Not synced: a count lost to an OS crash only gives a message one more try."""
        self._store.save_record(
            queue, ATTEMPTS_FILE, json_bytes(attempts, indent=2) + b"\n", durable=False
        )
