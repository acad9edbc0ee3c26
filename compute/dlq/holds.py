"""Held queues: a queue whose target table fails every change the same way, and why.

A failure of the table (missing table or column, no unique constraint for
the upsert, a revoked privilege) is no fault of the changes: they stay in
order in the queue's main lane (nothing parked) and the queue is *held*
with the cause until a retry succeeds. A hold lives in memory: after a
restart the first replay of the queue meets the same failure and holds it
again. It is logged once when it starts (WARNING) and once when it clears.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable
from dataclasses import dataclass, replace
from typing import Any

from compute.dlq.timestamps import iso
from compute.queue_id import QueueId

logger = logging.getLogger(__name__)


@dataclass(frozen=True, slots=True)
class QueueHold:
    """Why a queue is held, since when, and when it is retried next."""

    error_class: str
    code: str | None
    message: str
    since: float
    retries: int = 0  # failed retries since the hold began
    next_retry_at: float | None = None

    @property
    def cause(self) -> str:
        """One line naming the failure: ``error_class [code]: message``."""
        code = f" [{self.code}]" if self.code else ""
        return f"{self.error_class}{code}: {self.message}"

    def to_json(self, now: float) -> dict[str, Any]:
        return {
            "error_class": self.error_class,
            "code": self.code,
            "message": self.message,
            "since": iso(self.since),
            "held_seconds": round(max(0.0, now - self.since), 3),
            "retries": self.retries,
            "next_retry_at": iso(self.next_retry_at),
        }


class Holds:
    """The held queues of one DLQ manager (main lanes only), thread-safe."""

    def __init__(self, clock: Callable[[], float]) -> None:
        self._clock = clock
        self._lock = threading.Lock()
        self._held: dict[QueueId, QueueHold] = {}

    def hold(
        self,
        queue: QueueId,
        error_class: str,
        code: str | None,
        message: str,
        *,
        next_retry_at: float | None = None,
    ) -> bool:
        """Hold ``queue`` (or note one more failed retry of a held one); True when new."""
        now = self._clock()
        with self._lock:
            held = self._held.get(queue)
            if held is None:
                self._held[queue] = QueueHold(error_class, code, message, now, 0, next_retry_at)
            else:
                self._held[queue] = replace(
                    held,
                    error_class=error_class,
                    code=code,
                    message=message,
                    retries=held.retries + 1,
                    next_retry_at=next_retry_at,
                )
        if held is None:
            logger.warning(
                "⏸ Queue held: every change of its table fails the same way; kept in order "
                "(nothing parked) and retried until the table is fixed: queue=%s error=%s",
                queue,
                self._held[queue].cause,
            )
        return held is None

    def scheduled(self, queue: QueueId, next_retry_at: float) -> None:
        """Record when a held ``queue`` is retried next (shown in its status)."""
        with self._lock:
            held = self._held.get(queue)
            if held is not None:
                self._held[queue] = replace(held, next_retry_at=next_retry_at)

    def clear(self, queue: QueueId) -> QueueHold | None:
        """A write of ``queue`` went in: end its hold (logged with how long it lasted)."""
        if queue not in self._held:  # the usual case, without the lock
            return None
        with self._lock:
            held = self._held.pop(queue, None)
        if held is not None:
            logger.info(
                "▶ Queue hold cleared, draining: queue=%s held_for=%.1fs retries=%d cause=%s",
                queue,
                max(0.0, self._clock() - held.since),
                held.retries,
                held.cause,
            )
        return held

    def of(self, queue: QueueId) -> QueueHold | None:
        return self._held.get(queue)

    def all(self) -> dict[QueueId, QueueHold]:
        with self._lock:
            return dict(self._held)
