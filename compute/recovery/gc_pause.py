"""Pause Python's cyclic garbage collector while a replay pass runs.

Why: a replay pass keeps two or three decoded batches alive (three tracked
objects per message: the DLQMessage, its ChangeRecord and SourcePosition,
15,000 per 5,000-message batch). They live for a batch or two, long enough
to be promoted to the oldest generation, so full collections came every few
batches and each scanned them all: about 20% of replay time went to the
collector (measured on 100k-row replays into PostgreSQL). These objects form
no reference cycles; reference counting frees them when a batch is
acknowledged, paused collector or not.

The pause is process-wide (``gc.disable``), counted across threads (two
pipelines' workers may overlap), and ends with the last pass; a collector
that was already off stays off. Only passes with large batches pause it
(``LARGE_BATCH_SIZE`` in ``compute/recovery/replay.py``).
"""

from __future__ import annotations

import gc
import threading
from collections.abc import Iterator
from contextlib import contextmanager

_lock = threading.Lock()
_holders = 0
_was_enabled = False


@contextmanager
def collector_paused() -> Iterator[None]:
    """Run the body with the cyclic collector off (unless already off); nests across threads."""
    global _holders, _was_enabled
    with _lock:
        if _holders == 0:
            _was_enabled = gc.isenabled()
            gc.disable()
        _holders += 1
    try:
        yield
    finally:
        with _lock:
            _holders -= 1
            if _holders == 0 and _was_enabled:
                gc.enable()
