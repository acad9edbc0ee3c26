"""Room kept on disk so that queues can be reopened, and so drained, when the disk is full.

Opening a RocksDB queue flushes its write-ahead log into a table file first,
which needs about the log's size of free room; a handle that hit ENOSPC is
dead and must be reopened. On a full disk neither could happen, and replay,
the one thing that frees room, would stall. So the store keeps a file of
preallocated blocks as large as the largest unflushed log it wrote (plus
what an open itself writes), releases it just before an open that would
otherwise fail, and takes the room back once there is enough again. The file
outlives the process, so an engine restarted on a full disk can open its
queues too.
"""

from __future__ import annotations

import errno
import logging
import os
import shutil
from pathlib import Path

logger = logging.getLogger(__name__)

_STEP = 1 << 18  # sizes are whole 256 KiB: growing costs a few syscalls per MiB written


class DiskReserve:
    """A preallocated file under the base path whose room is given up when an open needs it."""

    def __init__(self, path: Path, *, keep_free: int) -> None:
        self.path = path
        # Growing the reserve never leaves less than this free: writes must go on.
        self.keep_free = keep_free
        try:
            self.size = path.stat().st_size
        except FileNotFoundError:
            self.size = 0
        # The largest size asked for: what a later ``restore`` takes back.
        self.wanted = self.size

    @property
    def released(self) -> bool:
        """True while the reserve is smaller than asked (released, or not yet taken)."""
        return self.size < self.wanted

    def grow(self, size: int) -> bool:
        """Make the reserve at least ``size`` bytes; False when the disk has no room for it."""
        target = -(-size // _STEP) * _STEP
        self.wanted = max(self.wanted, target)
        if target <= self.size:
            return True
        try:
            free = shutil.disk_usage(self.path.parent).free
        except OSError:
            return False
        if free - (target - self.size) < self.keep_free:
            return False
        fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            # Real blocks, not a sparse file: the room must exist when released.
            os.posix_fallocate(fd, 0, target)
        except OSError as error:
            os.ftruncate(fd, self.size)  # a partial allocation is given back
            if error.errno not in (errno.ENOSPC, errno.EDQUOT):
                logger.warning("DLQ disk reserve cannot grow: path=%s error=%s", self.path, error)
            return False
        finally:
            os.close(fd)
        self.size = target
        return True

    def restore(self) -> bool:
        """Take the released room back, if the disk has it again."""
        return self.grow(self.wanted)

    def shrink(self, size: int) -> None:
        """Give back room beyond ``size`` bytes: no queue holds a log it would be needed for."""
        if self.size <= size and self.wanted <= size:
            return
        try:
            with open(self.path, "r+b") as file:
                file.truncate(min(self.size, size))
        except OSError as error:
            logger.warning("DLQ disk reserve not shrunk: path=%s error=%s", self.path, error)
            return
        self.size = min(self.size, size)
        self.wanted = size

    def release(self, needed_at: Path) -> bool:
        """Give the reserved room up so that replay can go on at ``needed_at``; False if none."""
        freed = self.size
        if not freed:
            return False
        with open(self.path, "r+b") as file:
            file.truncate(0)
        self.size = 0
        logger.warning(
            "DLQ disk full, room kept for replay released: path=%s freed=%d; "
            "enqueues are refused until it can be taken back",
            needed_at,
            freed,
        )
        return True
