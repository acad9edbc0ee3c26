"""Live writes that outlived their deadline: held until they end, then settled against the queue.

When a live write to a destination does not finish within
``DLQ_LIVE_WRITE_DEADLINE_MS``, the event handler queues its events in the
DLQ at once (the source moves on, the other destinations are not held) and
registers the write here. The write is not cancelled: it may still commit.
So, until it ends, nothing else may be written to that destination from the
DLQ, or a replayed newer change could be overwritten by the late commit of
an older one. When the write ends, the recovery worker settles it: if it
committed, the queued copies of its events at the head of the queue are
acknowledged; if it failed, they stay and are replayed in order.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Sequence
from concurrent.futures import Future
from dataclasses import dataclass
from typing import Any

from compute.queue_id import QueueId

logger = logging.getLogger(__name__)


@dataclass
class StuckWrite:
    """One live write past its deadline, and what became of it."""

    destination_id: str
    queue: QueueId
    started_at: float
    # The ids of the DLQ messages queued for this write's events, in order;
    # empty when queueing them failed (the handler then keeps the events).
    message_ids: tuple[str, ...] = ()
    queued: bool = False  # the handler finished queueing (or gave up queueing)
    committed: bool | None = None  # None while the write runs
    error: str | None = None


class InFlightWrites:
    """The stuck live writes of one pipeline, by destination."""

    def __init__(self, clock: Callable[[], float] = time.time) -> None:
        self._clock = clock
        self._lock = threading.Lock()
        self._stuck: dict[str, list[StuckWrite]] = {}
        # Called when a stuck write can be settled (the engine wakes the worker).
        self.on_settle: Callable[[], None] = lambda: None

    def hold(self, destination_id: str, queue: QueueId, future: Future[Any]) -> StuckWrite:
        """Hold ``destination_id`` until ``future`` (the write in flight) ends and is settled."""
        stuck = StuckWrite(destination_id, queue, self._clock())
        with self._lock:
            self._stuck.setdefault(destination_id, []).append(stuck)
        future.add_done_callback(lambda done: self._ended(stuck, done))
        return stuck

    def queued(self, stuck: StuckWrite, message_ids: Sequence[str]) -> None:
        """The write's events are in the DLQ as these messages (``()``: they are not)."""
        with self._lock:
            stuck.message_ids = tuple(message_ids)
            stuck.queued = True
            ready = stuck.committed is not None
        if ready:
            self.on_settle()

    def _ended(self, stuck: StuckWrite, future: Future[Any]) -> None:
        error = future.exception()
        with self._lock:
            stuck.committed = error is None
            stuck.error = None if error is None else f"{type(error).__name__}: {error}"
            ready = stuck.queued
        logger.info(
            "live write past its deadline ended: destination=%s queue=%s committed=%s "
            "after=%.1fs%s",
            stuck.destination_id,
            stuck.queue,
            stuck.committed,
            self._clock() - stuck.started_at,
            "" if error is None else f" error={stuck.error}",
        )
        if ready:
            self.on_settle()

    def is_held(self, destination_id: str) -> bool:
        """True while a stuck write to ``destination_id`` runs or waits to be settled."""
        with self._lock:
            return bool(self._stuck.get(destination_id))

    def held(self) -> list[StuckWrite]:
        with self._lock:
            return [s for writes in self._stuck.values() for s in writes]

    def take_ended(self) -> list[StuckWrite]:
        """The stuck writes that ended and whose events were queued, ready to settle.

        Each keeps its destination held until the caller, done settling it,
        calls ``release``.
        """
        with self._lock:
            return [
                s
                for writes in self._stuck.values()
                for s in writes
                if s.queued and s.committed is not None
            ]

    def release(self, stuck: StuckWrite) -> None:
        with self._lock:
            writes = self._stuck.get(stuck.destination_id, [])
            if stuck in writes:
                writes.remove(stuck)
            if not writes:
                self._stuck.pop(stuck.destination_id, None)
