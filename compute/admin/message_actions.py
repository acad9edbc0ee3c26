"""Operator edits of a queue: purge a lane; discard, park or unpark one message."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, TypeVar

from compute.admin.operations_base import OperationsBase
from compute.queue_id import QueueId

T = TypeVar("T")


class MessageActions(OperationsBase):
    """``purge``, ``discard``, ``park`` and ``unpark``, each with the queue's worker held off."""

    def purge(self, queue: QueueId, *, parked: bool = False) -> dict[str, Any]:
        queue = self.known(queue)
        lane = queue.parked if parked else queue
        with self.exclusive(queue):
            removed = self.dlq.purge(lane)
        return {"queue": str(queue), "lane": "parked" if parked else "main", "removed": removed}

    def _edit(
        self, message_id: str, queue: QueueId | None, edit: Callable[[QueueId, str], T]
    ) -> tuple[QueueId, T]:
        """``edit(queue, message_id)`` on the message's queue (found when not named), held still."""
        if queue is not None:
            target = self.known(queue)
        else:
            target = self.dlq.locate(message_id)[0].main
        with self.exclusive(target):
            return target, edit(target, message_id)

    def discard(self, message_id: str, queue: QueueId | None = None) -> dict[str, Any]:
        target, lanes = self._edit(message_id, queue, self.dlq.discard_message)
        return {
            "message_id": message_id,
            "queue": str(target),
            "discarded_from": [lane.lane or "main" for lane in lanes],
        }

    def park(self, message_id: str, queue: QueueId | None = None) -> dict[str, Any]:
        target, message = self._edit(message_id, queue, self.dlq.park_message)
        return {"message_id": message.message_id, "queue": str(target), "parked": True}

    def unpark(self, message_id: str, queue: QueueId | None = None) -> dict[str, Any]:
        target, moved = self._edit(message_id, queue, self.dlq.unpark_message)
        return {
            "message_id": message_id,
            "queue": str(target),
            "moved": [m.message_id for m in moved],
        }
