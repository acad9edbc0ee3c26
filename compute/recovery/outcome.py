"""How a replay write ends: its outcome decided in one place, and what a replay moved.

Like dlt's job runner (``run_managed`` sets a load job's state from the kind
of exception it raised), ``decide`` turns the end of one replay write into one
outcome, and the replay acts on that alone:

* ``ACKNOWLEDGED``: committed; the batch is acknowledged.
* ``HELD``: still running at its deadline; the destination is held until it
  ends, then the batch is settled against the head of the queue.
* ``RETRY_LATER``: transient; the batch goes back and the queue backs off. An
  outage (the destination fails its health check) or a lost session
  (``ClassifiedError.connection_lost``: a reset, a killed backend, a server
  restarting under the write) charges nothing to the messages, so an outage
  never turns events into poison; any other transient failure costs each
  message one attempt.
* ``TABLE_HELD``: the target table refused it (missing table or column, no
  unique constraint for the upsert, no privilege): nothing is charged, the
  batch goes back and the queue is held, retried on its own schedule.
* ``POISON``: refused for good, or over the retry budget while the destination
  is up: the offending messages are found one by one and parked.
"""

from __future__ import annotations

from collections.abc import Callable
from concurrent.futures import Future
from dataclasses import dataclass
from enum import Enum
from typing import Any

from compute.queue_id import QueueId
from destinations.errors import ClassifiedError, FailureKind


class Outcome(Enum):
    ACKNOWLEDGED = "acknowledged"
    HELD = "held"
    RETRY_LATER = "retry_later"
    TABLE_HELD = "table_held"
    POISON = "poison"


@dataclass(frozen=True, slots=True)
class Decision:
    """An outcome, the failure's classification and the attempts charged (when counted)."""

    outcome: Outcome
    classified: ClassifiedError | None = None
    attempts: int | None = None


class StuckWrite(Exception):
    """A replay write still running at its deadline (``future`` is its outcome)."""

    def __init__(self, future: Future[Any]) -> None:
        super().__init__("replay write past its deadline")
        self.future = future


def decide(
    error: BaseException | None,
    *,
    classify: Callable[[BaseException], ClassifiedError],
    destination_up: Callable[[], bool],
    attempts: Callable[[], int],
    max_retries: int,
) -> Decision:
    """The outcome of a replay write that raised ``error`` (None: it committed).

    The callables are only called when the decision needs them, in this order:
    ``classify`` the failure, probe whether the destination is up (transient
    failures only), then the messages' ``attempts`` after this failure
    (transient failures of a destination that is up, outside a lost session).
    """
    if error is None:
        return Decision(Outcome.ACKNOWLEDGED)
    if isinstance(error, StuckWrite):
        return Decision(Outcome.HELD)
    classified = classify(error)
    if classified.kind is FailureKind.TABLE:
        return Decision(Outcome.TABLE_HELD, classified)
    if classified.kind is FailureKind.PERMANENT:
        return Decision(Outcome.POISON, classified)
    if not destination_up() or classified.connection_lost:
        return Decision(Outcome.RETRY_LATER, classified)
    charged = attempts()
    if charged <= max_retries:
        return Decision(Outcome.RETRY_LATER, classified, charged)
    return Decision(Outcome.POISON, classified, charged)


@dataclass(slots=True)
class ReplayCounts:
    """Messages a replay batch (or pass) moved, by where they went."""

    replayed: int = 0
    failed: int = 0  # given back, to be tried again
    parked: int = 0
    expired: int = 0
    quarantined: int = 0
    # The table-level failure that held the queue (``TABLE_HELD``), else None.
    held_by: ClassifiedError | None = None

    def add(self, other: ReplayCounts) -> None:
        self.replayed += other.replayed
        self.failed += other.failed
        self.parked += other.parked
        self.expired += other.expired
        self.quarantined += other.quarantined

    def observed(self) -> dict[str, int]:
        """The counts the metrics observer takes for one batch."""
        return {
            "replayed": self.replayed,
            "failed": self.failed,
            "parked": self.parked,
            "expired": self.expired,
        }


@dataclass(frozen=True, slots=True)
class ReplayResult:
    """What one replay pass did to one queue."""

    queue: QueueId
    replayed: int = 0
    failed: int = 0
    parked: int = 0
    expired: int = 0
    quarantined: int = 0

    @classmethod
    def of(cls, queue: QueueId, counts: ReplayCounts) -> ReplayResult:
        return cls(
            queue,
            counts.replayed,
            counts.failed,
            counts.parked,
            counts.expired,
            counts.quarantined,
        )
