"""Opening a rocksq segment: its errors told in our terms, on a full disk with the reserved room."""

from __future__ import annotations

import os
import shutil
from pathlib import Path

from rocksq.blocking import MpmcQueue

from compute.errors import DLQFullError, DLQStorageError, QueueCorruptError, QueueLockedError
from compute.queue_id import QueueId
from compute.storage.rocksq.diagnosis import is_corruption, is_no_space
from compute.storage.rocksq.disk_reserve import DiskReserve

# MpmcQueue TTL: 0 keeps items forever. Expiry is done by the manager, which
# counts and logs every expired message; RocksDB's TTL would drop them silently.
_NO_TTL = 0


class SegmentOpener:
    """Opens segment directories under ``base_path``, giving up ``reserve`` on a full disk."""

    def __init__(self, base_path: Path, reserve: DiskReserve) -> None:
        self.base_path = base_path
        self.reserve = reserve

    def open(self, path: Path, queue: QueueId) -> MpmcQueue:
        try:
            for old_log in path.glob("LOG.old.*"):
                # RocksDB keeps every info log of every open; they are not data.
                old_log.unlink(missing_ok=True)
            return self._open_segment(path)
        except RuntimeError as error:
            text = str(error)
            if "lock hold by current process" in text:
                raise DLQStorageError(
                    f"queue {queue} is still open in this process ({path}): {text}"
                ) from None
            # Corruption first: its text ("block checksum mismatch") contains "lock".
            if is_corruption(text):
                raise QueueCorruptError(f"queue {queue} is damaged ({path}): {text}") from None
            if "lock" in text.lower():
                raise QueueLockedError(
                    f"queue {queue} is locked by another process ({path}): {text}"
                ) from None
            if "No space left" in text:
                raise DLQFullError(
                    "disk_full",
                    f"cannot open {path}: {text}; free disk space under {self.base_path} "
                    "(the queue is opened again on its next use)",
                    queue,
                ) from None
            raise DLQStorageError(f"cannot open queue {queue} at {path}: {text}") from None

    def _open_segment(self, path: Path) -> MpmcQueue:
        """Open a segment; on a full disk with the reserved room, and leaving no file behind.

        An open flushes the segment's log first (about its size of room); one
        that fails for want of room leaves a partial table file and a rotated
        info log, one more per attempt, unless they are removed.
        """
        before = _listing(path)
        try:
            return MpmcQueue(str(path), _NO_TTL)
        except RuntimeError as error:
            if not is_no_space(str(error)):
                raise
            _remove_new_files(path, before)
            if not self.reserve.release(path):
                raise
        try:
            return MpmcQueue(str(path), _NO_TTL)
        except RuntimeError as error:
            if is_no_space(str(error)):
                _remove_new_files(path, before)
            raise


def _listing(path: Path) -> tuple[set[str] | None, bytes | None]:
    """The names in a segment directory (None: no directory) and its ``CURRENT`` file."""
    try:
        names = set(os.listdir(path))
    except FileNotFoundError:
        return None, None
    try:
        return names, (path / "CURRENT").read_bytes()
    except OSError:
        return names, None


def _remove_new_files(path: Path, before: tuple[set[str] | None, bytes | None]) -> None:
    """Remove what a failed open added to ``path``, unless it got as far as changing the database.

    While ``CURRENT`` names the same MANIFEST, no new file is part of the
    database: a half-written table file, a rotated info log, a new log.
    """
    names, current = before
    if names is None:
        shutil.rmtree(path, ignore_errors=True)  # the open created the directory
        return
    now = _listing(path)
    if now[0] is None or now[1] != current:
        return
    for name in now[0] - names:
        if name not in ("LOG", "LOCK"):
            try:
                (path / name).unlink()
            except OSError:
                pass
