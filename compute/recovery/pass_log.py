"""The one INFO line a replay pass logs per queue (its batches log at DEBUG only).

An outage's drain is thousands of batches: one line per batch buried
everything else in the log. A pass (up to ``MAX_BATCHES_PER_PASS`` batches of
one queue) logs, when it moved anything::

    ✓ Successfully replayed 5000/5000 DLQ messages: pipeline=orders queue=1/public.orders/2
    replayed=5000 parked=0 expired=0 failed=0 remaining=12000 rate=8400/s elapsed=0.60s
"""

from __future__ import annotations

import logging

from compute.dlq.manager import DLQManager
from compute.errors import DLQError
from compute.queue_id import QueueId
from compute.recovery.outcome import ReplayCounts

logger = logging.getLogger(__name__)


def log_pass(
    pipeline_name: str, queue: QueueId, counts: ReplayCounts, elapsed: float, dlq: DLQManager
) -> None:
    """Log what one pass over ``queue`` did, unless it moved nothing (an empty queue, or
    its first batch failed: that failure has its own WARNING line)."""
    moved = counts.replayed + counts.parked + counts.expired + counts.quarantined
    if not moved:
        return
    try:
        remaining: int | str = dlq.count(queue)
    except DLQError:  # the queue cannot be counted now: the line still goes out
        remaining = "-"
    logger.info(
        "✓ Successfully replayed %d/%d DLQ messages: pipeline=%s queue=%s replayed=%d "
        "parked=%d expired=%d failed=%d remaining=%s rate=%.0f/s elapsed=%.2fs",
        counts.replayed,
        moved + counts.failed,
        pipeline_name,
        queue,
        counts.replayed,
        counts.parked,
        counts.expired,
        counts.failed,
        remaining,
        counts.replayed / max(elapsed, 1e-6),
        elapsed,
    )
