"""One destination of a running pipeline: its batches, delivered in order on its own thread.

Why a thread per destination: a pipeline's destinations must progress
independently. With one thread delivering a batch to every destination in
turn, a destination that hangs holds the others (and the source) until its
write gives up. Each lane takes the pipeline's batches in source order and
hands each to the event handler for its one destination; the pipeline
acknowledges a batch's source position once every lane is done with it.
"""

from __future__ import annotations

import itertools
import logging
import threading
from collections import deque
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

from compute.delivery.event_handler import EventHandler, group_by_table
from compute.errors import DLQFullError
from compute.runtime.fence import Fenced
from compute.runtime.supervisor import Supervisor
from destinations.base import Destination
from destinations.records import ChangeRecord

logger = logging.getLogger(__name__)

# How long a lane waits before retrying a batch the DLQ refused; the
# recovery worker wakes it sooner when it frees room.
BACKPRESSURE_WAIT = 1.0


@dataclass
class LaneBatch:
    """A source batch as the lanes see it: its place in the source order and its groups."""

    seq: int
    groups: dict[str, list[ChangeRecord]]
    events: int = 0
    # Lanes (destination ids) that still have to deliver it; the pipeline's to keep.
    pending: set[str] = field(default_factory=set)
    # The generation of its lanes' latest DLQ writes when they delivered it
    # (covers every enqueue of it); None until one did. The pipeline's to keep.
    generation: int | None = None


class DeliveryLane:
    """Delivers a pipeline's batches to one destination, in order, on a thread of its own.

    A lane that fell behind (its destination was slow, or the source came in
    small reads) takes the batches waiting in its inbox together, up to
    ``max_events``, as one write per table: it catches up in fewer, larger
    transactions instead of paying a round trip per small batch. No write
    carries more than ``max_events`` events (the destination's ``batch_size``
    option): a larger batch goes in slices, each table's in source order.
    """

    def __init__(
        self,
        pipeline_name: str,
        destination: Destination,
        handler: EventHandler,
        stop: threading.Event,
        on_delivered: Callable[[str, LaneBatch], None],
        on_failed: Callable[[str, BaseException], None],
        max_events: int = 500,
    ) -> None:
        self.pipeline_name = pipeline_name
        self.max_events = max_events
        self.destination = destination
        self.destination_id = destination.destination_id
        self._handler = handler
        self._stop = stop
        self._on_delivered = on_delivered
        self._on_failed = on_failed
        self._inbox: deque[LaneBatch] = deque()
        self._ready = threading.Condition()
        self._resume = threading.Event()
        # The lane reports its own failures (the pipeline then fails); the
        # supervisor restarts it only if something unexpected escapes that.
        self.supervisor = Supervisor(
            f"pipeline-{pipeline_name}-dest-{destination.destination_id}", self._run, stop
        )
        # The DLQ refusal this lane is waiting out (backpressure), if any.
        self.refused: DLQFullError | None = None

    def start(self) -> None:
        self.supervisor.start()

    def put(self, batch: LaneBatch) -> None:
        with self._ready:
            self._inbox.append(batch)
            self._ready.notify()

    def resume(self) -> None:
        """Retry a refused batch now (the DLQ may have room)."""
        self._resume.set()

    def wake(self) -> None:
        """Let a waiting lane see that the pipeline stops."""
        self._resume.set()
        with self._ready:
            self._ready.notify_all()

    def join(self, timeout: float) -> None:
        self.supervisor.join(timeout)

    def _next(self) -> list[LaneBatch]:
        """The oldest waiting batches, up to ``max_events`` (at least one); [] when stopping."""
        with self._ready:
            while not self._inbox:
                if self._stop.is_set():
                    return []
                self._ready.wait(0.5)
            taken = [self._inbox[0]]
            events = taken[0].events
            for batch in itertools.islice(self._inbox, 1, None):
                if events + batch.events > self.max_events:
                    break
                taken.append(batch)
                events += batch.events
            return taken

    def _run(self) -> None:
        try:
            while not self._stop.is_set():
                batches = self._next()
                if not batches:
                    return
                if not self._deliver(_merged(batches)):
                    return  # stopping: the batches stay unacknowledged
                with self._ready:
                    for _ in batches:
                        self._inbox.popleft()
                for batch in batches:
                    self._on_delivered(self.destination_id, batch)
        except Fenced as error:  # the lease is gone: expected, no traceback
            logger.warning("delivery lane stopped: pipeline=%s %s", self.pipeline_name, error)
            self._on_failed(self.destination_id, error)
        except Exception as error:
            logger.exception(
                "delivery lane failed: pipeline=%s destination=%s",
                self.pipeline_name,
                self.destination,
            )
            self._on_failed(self.destination_id, error)
        finally:
            self._handler.close_writer(self.destination_id)

    def _deliver(self, groups: dict[str, list[ChangeRecord]]) -> bool:
        """Deliver every (table) group, ``max_events`` at most per write. False if stopped first."""
        return all(self._deliver_slice(part) for part in _slices(groups, self.max_events))

    def _deliver_slice(self, groups: dict[str, list[ChangeRecord]]) -> bool:
        """Deliver every (table) group; waits out a full DLQ. False if stopped first."""
        done: set[tuple[str, str]] = set()
        while not self._stop.is_set():
            try:
                self._handler.deliver_groups(self.destination, groups, done)
            except DLQFullError as error:
                self.refused = error
                self._resume.wait(BACKPRESSURE_WAIT)
                self._resume.clear()
                continue
            self.refused = None
            return True
        return False


def lane_batch(seq: int, records: Sequence[ChangeRecord]) -> LaneBatch:
    return LaneBatch(seq, group_by_table(records), len(records))


def _slices(
    groups: dict[str, list[ChangeRecord]], most: int
) -> list[dict[str, list[ChangeRecord]]]:
    """``groups`` as parts of at most ``most`` events per table, to deliver one after another.

    Part k holds each table's k-th slice, so a table's slices go in source
    order; one part (``groups`` itself) when no table has more.
    """
    longest = max((len(records) for records in groups.values()), default=0)
    if longest <= most:
        return [groups]
    return [
        {table: rows[start : start + most] for table, rows in groups.items() if len(rows) > start}
        for start in range(0, longest, most)
    ]


def _merged(batches: list[LaneBatch]) -> dict[str, list[ChangeRecord]]:
    """The groups of consecutive batches as one: each table's changes in source order."""
    if len(batches) == 1:
        return batches[0].groups
    groups: dict[str, list[ChangeRecord]] = {}
    for batch in batches:
        for table, records in batch.groups.items():
            groups.setdefault(table, []).extend(records)
    return groups
