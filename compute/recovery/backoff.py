"""When a queue is replayed again: its backoff after a failed batch, and a held queue's schedule."""

from __future__ import annotations

from dataclasses import dataclass

from config.dlq_config import DLQConfig


@dataclass
class QueueBackoff:
    """When a queue whose last batch failed is replayed again."""

    failures: int = 0  # consecutive failed batches, for the backoff
    retry_at: float = 0.0
    # Consecutive retries of a held queue (its table failed every change the same way).
    held_retries: int = 0


def hold_delay(config: DLQConfig, retries: int) -> float:
    """Seconds until a held queue is tried again after its ``retries``-th failed try.

    Doubles from the first retry delay (``DLQ_BACKOFF_BASE_MS``) up to
    ``DLQ_CHECK_INTERVAL``: with the defaults 1, 2, 4, 8, 16, then every 30 s.
    No jitter: a held queue costs one small write per try, and an operator
    who fixed the table can tell when the queue moves.
    """
    first = config.backoff_base_ms / 1000
    longest = max(first, config.check_interval)
    return min(longest, first * 2 ** min(max(0, retries - 1), 32))
