"""The order of one recovery pass: higher-priority queues first, equals round-robin by batch.

A pass takes the queues that hold events and whose destination is up. Each
turn goes to the queue at the head of the highest priority that still has
queues in the pass (``priority`` per table in the pipeline's configuration),
so a large low-priority queue never runs before a small high-priority one.
Queues of the same priority take turns of one batch each, so one huge queue
cannot starve the others. A queue alone at the top of the pass replays its
batches in one turn when its destination's replay is pipelined (batches of
1000 or more: read ahead, ``compute/recovery/replay.py``), else one batch a
turn, so that a queue that fills during the pass is let in within one batch.

A queue leaves the pass when it is empty, a batch failed (it backs off), or
it used its budget of batches for the pass (it comes back in the next pass,
which starts at once); a queue leaves a pass once, and never comes back into
the same pass.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Callable, Iterable

from compute.queue_id import QueueId


class ReplaySchedule:
    """Which queue replays next in a pass, and how many batches it may replay in its turn."""

    def __init__(
        self,
        queues: Iterable[QueueId],
        priority_of: Callable[[QueueId], int],
        budget: int,
        pipelined: Callable[[QueueId], bool] = lambda queue: False,
    ) -> None:
        self._priority_of = priority_of
        self._pipelined = pipelined
        self._budget = budget
        # Batches each queue still may replay in this pass.
        self._left: dict[QueueId, int] = {}
        # Queues still in the pass, by priority; the head of a ring has the turn.
        self._rings: dict[int, deque[QueueId]] = {}
        for queue in queues:
            self.add(queue)

    def add(self, queue: QueueId) -> bool:
        """Let ``queue`` into the pass (e.g. one that filled while it ran); False when it is
        or was already in this pass."""
        if queue in self._left:
            return False
        self._left[queue] = self._budget
        self._rings.setdefault(self._priority_of(queue), deque()).append(queue)
        return True

    def seen(self, queue: QueueId) -> bool:
        """``queue`` is or was in this pass."""
        return queue in self._left

    def __bool__(self) -> bool:
        return bool(self._rings)

    def next_turn(self) -> tuple[QueueId, int] | None:
        """The queue whose turn it is and the batches it may replay; None when the pass is over."""
        if not self._rings:
            return None
        ring = self._rings[max(self._rings)]
        queue = ring[0]
        if len(ring) == 1 and self._pipelined(queue):
            return queue, self._left[queue]
        return queue, 1

    def turn_ended(self, queue: QueueId, batches: int, *, more: bool) -> None:
        """``queue`` had its turn of ``batches`` batches; ``more``: it has events left and
        its last batch did not fail, so it stays in the pass while its budget lasts."""
        priority = self._priority_of(queue)
        ring = self._rings[priority]
        ring.remove(queue)
        self._left[queue] -= batches
        if more and self._left[queue] > 0:
            ring.append(queue)
        elif not ring:
            del self._rings[priority]

    def leave(self, queue: QueueId) -> None:
        """Take ``queue`` out of the pass without a turn (its destination is held)."""
        ring = self._rings.get(self._priority_of(queue))
        if ring is not None and queue in ring:
            self.turn_ended(queue, 0, more=False)

    def used_budget(self, queue: QueueId) -> bool:
        """``queue`` replayed all the batches a pass allows."""
        return self._left.get(queue, 1) <= 0
