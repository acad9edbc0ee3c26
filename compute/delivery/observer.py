"""The hook through which the event handler and the recovery worker report what they did.

Components call it once per batch (never per message), so a metrics backend
costs the hot paths one method call per batch. The default does nothing: a
component built without an engine (tests, the example, the CLI) pays only
that call.
"""

from __future__ import annotations

from collections.abc import Mapping

from compute.queue_id import QueueId


class Observer:
    """No-op base; ``DLQMetrics`` overrides what it counts. Every count is for one queue."""

    def enqueued(self, queue: QueueId, accepted: int, dropped: int) -> None:
        """The DLQ accepted ``accepted`` messages for ``queue`` and dropped ``dropped``."""

    def parked(self, queue: QueueId, count: int) -> None:
        """``count`` messages of ``queue`` were parked (poison, or held behind poison)."""

    def retried(self, queue: QueueId, attempts: int = 1) -> None:
        """A write to ``queue``'s destination failed and will be tried again."""

    def replay_batch(self, queue: QueueId, seconds: float, counts: Mapping[str, int]) -> None:
        """One replay batch of ``queue`` ended after ``seconds``; ``counts`` has the
        messages ``replayed``, ``failed``, ``parked`` and ``expired``."""


NULL_OBSERVER = Observer()
