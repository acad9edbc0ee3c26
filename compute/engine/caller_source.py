"""A source fed by the embedding program: its batches in, tickets and the safe position out.

``compute/engine/embedded.py`` hands the caller's batches to this source; the
pipeline reads them as from any other source, delivers them through its lanes
and acknowledges their resume tokens in order. An acknowledgement completes
tickets and moves the safe position: nothing here delivers anything itself.
"""

from __future__ import annotations

import threading
import time
from collections import deque
from collections.abc import Callable, Sequence
from dataclasses import dataclass

from compute.sources.base import Source, SourceBatch
from config.errors import RosettaError
from destinations.records import ChangeRecord, SourcePosition

# How often a blocked submit looks whether the delivery stopped meanwhile.
STOP_CHECK_INTERVAL = 0.2


class DeliveryStoppedError(RosettaError):
    """The delivery was closed or its pipeline failed: nothing more is accepted.

    What was not safe yet was not acknowledged: the caller's upstream sends it
    again after a restart (at-least-once).
    """


class Ticket:
    """One submitted batch: its last position, and whether it is safe yet.

    Safe means every change of the batch, and of every batch submitted
    before it, is written by every destination or durably queued in the DLQ
    (or parked) for it. Thread-safe: ``done`` and ``wait`` from any thread.
    """

    __slots__ = ("events", "position", "_safe")

    def __init__(self, events: int, position: SourcePosition | None) -> None:
        self.events = events
        # The position of the batch's last change; None for an empty batch.
        self.position = position
        self._safe = threading.Event()

    def done(self) -> bool:
        """True once the batch (and everything submitted before it) is safe."""
        return self._safe.is_set()

    def wait(self, timeout: float | None = None) -> bool:
        """Block until the batch is safe or ``timeout`` seconds passed; True if it is safe."""
        return self._safe.wait(timeout)

    def __repr__(self) -> str:
        state = "safe" if self.done() else "pending"
        return f"Ticket(events={self.events}, position={self.position}, {state})"


@dataclass(slots=True)
class _Chunk:
    """Up to one pipeline batch of a ticket's changes; the last chunk completes the ticket."""

    token: str
    records: Sequence[ChangeRecord]
    ticket: Ticket
    last: bool


class CallerSource(Source):
    """Batches the caller submits, read by the pipeline in submit order.

    At most about ``capacity`` events wait here to be read: beyond that
    ``offer`` blocks until the pipeline reads (it stops reading while its
    lanes are ``DLQ_READ_AHEAD_EVENTS`` behind or the DLQ refuses writes),
    which is how backpressure reaches the caller.
    """

    def __init__(self, source_id: str, capacity: int) -> None:
        super().__init__(source_id)
        self.capacity = max(1, capacity)
        self.on_offer: Callable[[], None] = lambda: None
        self._cond = threading.Condition()
        self._inbox: deque[_Chunk] = deque()
        self._inbox_events = 0
        self._read: deque[_Chunk] = deque()  # read, not yet acknowledged, in order
        self._next_token = 0
        self._last_ticket: Ticket | None = None
        self._safe_position: SourcePosition | None = None
        self.submitted_events = 0
        self.safe_events = 0

    def offer(
        self,
        records: Sequence[ChangeRecord],
        deadline: float | None,
        stopped: Callable[[], str | None],
    ) -> Ticket:
        """Queue ``records`` for the pipeline, in pipeline batches of at most ``capacity``.

        Blocks while the inbox is full; raises ``TimeoutError`` at ``deadline``
        (``time.monotonic()``) and ``DeliveryStoppedError`` when ``stopped()``
        names a reason, in both cases with nothing of ``records`` queued.
        """
        records = list(records)
        ticket = Ticket(len(records), records[-1].position if records else None)
        with self._cond:
            while self._inbox_events >= self.capacity:
                reason = stopped()
                if reason is not None:
                    raise DeliveryStoppedError(reason)
                wait = STOP_CHECK_INTERVAL
                if deadline is not None:
                    left = deadline - time.monotonic()
                    if left <= 0:
                        raise TimeoutError(
                            f"submit timed out: {self._inbox_events} events still wait to be "
                            "read (the destinations are behind, or the DLQ is full); "
                            "nothing of this batch was taken"
                        )
                    wait = min(wait, left)
                self._cond.wait(wait)
            reason = stopped()
            if reason is not None:
                raise DeliveryStoppedError(reason)
            starts = range(0, len(records), self.capacity) if records else range(1)
            for start in starts:
                part = records[start : start + self.capacity]
                last = start + self.capacity >= len(records)
                self._inbox.append(_Chunk(str(self._next_token), part, ticket, last))
                self._next_token += 1
            self._inbox_events += len(records)
            self.submitted_events += len(records)
            self._last_ticket = ticket
        self.on_offer()
        return ticket

    def read(self, max_events: int) -> SourceBatch:
        with self._cond:
            if not self._inbox:
                return SourceBatch((), "")
            chunk = self._inbox.popleft()
            self._inbox_events -= len(chunk.records)
            self._read.append(chunk)
            self._cond.notify_all()
        return SourceBatch(chunk.records, chunk.token)

    def acknowledge(self, resume_token: str) -> None:
        """Everything read up to ``resume_token`` is safe (the pipeline acknowledges in order)."""
        with self._cond:
            while self._read:
                chunk = self._read.popleft()
                self.safe_events += len(chunk.records)
                if chunk.records:
                    position = chunk.records[-1].position
                    if self._safe_position is None or position > self._safe_position:
                        self._safe_position = position
                if chunk.last:
                    chunk.ticket._safe.set()
                if chunk.token == resume_token:
                    break
            self._cond.notify_all()

    @property
    def safe_position(self) -> SourcePosition | None:
        with self._cond:
            return self._safe_position

    @property
    def last_ticket(self) -> Ticket | None:
        with self._cond:
            return self._last_ticket

    def wake_waiters(self) -> None:
        """Let blocked ``offer`` calls look at ``stopped()`` now."""
        with self._cond:
            self._cond.notify_all()
