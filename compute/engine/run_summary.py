"""The summary ``rosetta run`` logs when it ends, and whether the run needs an operator."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING

from compute.dlq.manager import DLQManager
from compute.errors import DLQError

if TYPE_CHECKING:
    from compute.engine.pipeline import Pipeline


@dataclass(frozen=True)
class RunSummary:
    """What a run did, summed over its pipelines (written: per destination)."""

    events: int = 0  # read from the sources
    written: int = 0  # committed by a destination, live or replayed from the DLQ
    queued: int = 0  # sent to the DLQ for later delivery
    parked: int = 0  # parked during this run
    rejected: int = 0  # refused by a source as malformed during this run
    skipped: int = 0  # skipped by a source as carrying no change (tombstones, empty lines)
    still_parked: int = 0  # parked changes in the pipelines' queues at the end
    # Queues held at the end (their target table refuses every change), with the cause.
    held: tuple[str, ...] = ()

    @property
    def needs_operator(self) -> bool:
        """True when changes wait for a decision: parked ones still parked, rejected ones,
        or queues held until someone fixes their table."""
        return self.still_parked > 0 or self.rejected > 0 or bool(self.held)

    def line(self) -> str:
        held = f" held_queues={'; '.join(self.held)}" if self.held else ""
        return (
            f"run summary: events={self.events} written={self.written} queued={self.queued} "
            f"parked={self.parked} rejected={self.rejected} skipped={self.skipped} "
            f"still_parked={self.still_parked} held={len(self.held)}{held}"
        )


def summarize(pipelines: Sequence[Pipeline], dlq: DLQManager | None) -> RunSummary:
    """The summary of ``pipelines``' run so far; the DLQ must still be open."""
    events = written = queued = parked = rejected = skipped = still = 0
    held: list[str] = []
    holds = dlq.holds.all() if dlq is not None else {}
    for pipeline in pipelines:
        sample = pipeline.progress.sample()
        events += sample.read
        written += sample.written + sample.replayed
        queued += sample.queued
        parked += sample.parked
        rejected += sample.rejected
        skipped += sample.skipped
        held += [f"{q} ({h.cause})" for q, h in holds.items() if q in pipeline.worker.queues()]
        if dlq is not None:
            try:
                still += sum(dlq.parked_count(q) for q in pipeline.worker.queues())
            except DLQError:
                still += sample.parked  # cannot count: what this run parked is still there
    return RunSummary(
        events, written, queued, parked, rejected, skipped, still, tuple(sorted(held))
    )
