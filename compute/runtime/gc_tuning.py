"""The garbage collector tuned for a process that streams changes: far fewer full walks.

CPython's cyclic collector runs a young collection every 700 net allocations
and, every 10 and 100 of those, older ones that walk every object still
alive. Every change a pipeline reads allocates a record and its row dicts,
and the read-ahead buffers keep tens of thousands of them alive: at tens of
thousands of changes a second the collector walked them over and over,
about a fifth of the engine's CPU in a catch-up (``bench_cdc.py``). The
records are freed by reference counting, not by the collector (they hold no
cycles), so collecting less often costs little memory.

``rosetta run`` calls ``tune_for_streaming`` once, after start-up; the
embedding API leaves its host's collector alone.
"""

from __future__ import annotations

import gc

# Young collections every 100,000 net allocations instead of 700; the older
# generations after 50 and 100 of those instead of 10 and 10.
STREAMING_THRESHOLDS = (100_000, 50, 100)


def tune_for_streaming() -> None:
    """Raise the collector's thresholds; objects made so far (modules, settings) are frozen
    out of its walks for good."""
    gc.collect()
    gc.freeze()
    gc.set_threshold(*STREAMING_THRESHOLDS)
