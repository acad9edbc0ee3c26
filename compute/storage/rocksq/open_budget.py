"""How many queue segments the store keeps open: a file-descriptor budget from the process limit.

Every open segment is a RocksDB instance: measured, 9 file descriptors and
about 0.5 MB of memory each, and 10 to 15 ms to open one again. A store that
closes queues with pending work to stay under a small cap reopens one for
nearly every enqueue once more queues are active than the cap (an outage of
a destination that hundreds of tables replicate to): 4k instead of 200k
messages a second. So, as databases do, the store raises the soft open-file
limit to the hard one at start and keeps as many segments open as the
descriptors allow, up to a ceiling set by memory.
"""

from __future__ import annotations

import logging
import resource

logger = logging.getLogger(__name__)

# Measured: an open MpmcQueue holds 9 descriptors (files, locks, directories).
FDS_PER_SEGMENT = 10
# Descriptors left for everything else the engine opens (destination and admin
# sockets, cursor and status files, pipes): a quarter of the limit, at least this.
MIN_OTHER_FDS = 256
# Above this many open segments (about 1 GB of RocksDB memory), memory rather
# than descriptors is what a default must not use up: DLQ_MAX_OPEN_QUEUES goes higher.
MAX_AUTO_SEGMENTS = 2048
# Never fewer: a queue being drained while written holds two segments open.
MIN_SEGMENTS = 16
# A hard limit of "unlimited" cannot be the soft limit (the kernel caps it at fs.nr_open).
_UNLIMITED_CAP = 1 << 20


def raise_open_file_limit() -> int:
    """Raise the soft ``RLIMIT_NOFILE`` to the hard limit (logged); returns the soft limit now."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    target = _UNLIMITED_CAP if hard == resource.RLIM_INFINITY else hard
    if soft != resource.RLIM_INFINITY and soft < target:
        try:
            resource.setrlimit(resource.RLIMIT_NOFILE, (target, hard))
        except (ValueError, OSError) as error:
            logger.warning(
                "open-file limit not raised, keeping soft=%d: hard=%s error=%s", soft, hard, error
            )
            return soft
        logger.info(
            "raised the open-file limit for DLQ queues: soft=%d -> %d (the hard limit)",
            soft,
            target,
        )
        return target
    return _UNLIMITED_CAP if soft == resource.RLIM_INFINITY else soft


def segments_within(file_limit: int) -> int:
    """Segments that ``file_limit`` descriptors hold, beside the engine's other files."""
    other = max(MIN_OTHER_FDS, file_limit // 4)
    return max(0, (file_limit - other) // FDS_PER_SEGMENT)


def open_segment_budget(file_limit: int) -> int:
    """Segments to keep open under ``file_limit`` descriptors, within the memory ceiling."""
    return max(MIN_SEGMENTS, min(MAX_AUTO_SEGMENTS, segments_within(file_limit)))


def open_cap(requested: int | None) -> int:
    """The cap on open segments: ``requested``, or the budget the open-file limit allows."""
    file_limit = raise_open_file_limit()
    if requested is None:
        budget = open_segment_budget(file_limit)
        logger.info(
            "DLQ keeps up to %d queue segments open: open_file_limit=%d", budget, file_limit
        )
        return budget
    if requested > (room := segments_within(file_limit)):
        logger.warning(
            "DLQ_MAX_OPEN_QUEUES=%d may run out of file descriptors: open_file_limit=%d "
            "holds about %d open segments (%d descriptors each) beside the engine's other files",
            requested,
            file_limit,
            room,
            FDS_PER_SEGMENT,
        )
    return requested
