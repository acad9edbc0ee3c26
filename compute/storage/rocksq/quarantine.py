"""Damaged queues: told apart from a full disk, then moved whole under ``<base>/quarantine/``."""

from __future__ import annotations

import json
import logging
import os
import time
import traceback
from pathlib import Path

import rocksq

from compute.errors import DLQError, QueueCorruptError
from compute.queue_id import QueueId
from compute.storage.rocksq.diagnosis import disk_low, is_corruption, is_no_space
from compute.storage.rocksq.handles import HandleCache
from compute.storage.rocksq.opener import SegmentOpener
from compute.storage.rocksq.segments import Segments
from compute.storage.rocksq.state import SEGMENT_RE, QueueState, segment_dir

logger = logging.getLogger(__name__)

QUARANTINE_DIR = "quarantine"
VERIFY_LABEL = "rosetta-verify"


class Quarantine:
    """Sets damaged queue directories aside, so that the other queues go on."""

    def __init__(self, opener: SegmentOpener, handles: HandleCache, segments: Segments) -> None:
        self.base_path = opener.base_path
        self._opener = opener
        self._handles = handles
        self._segments = segments
        # Damaged queues moved aside: (queue, where its files are now, why); the
        # queue is a relative path for a directory that names no queue.
        self.moved: list[tuple[QueueId | str, Path, str]] = []

    def reset(self, state: QueueState, reason: str) -> None:
        """Set the queue aside and load it again: it starts empty."""
        self.set_aside(state, reason)
        self._segments.load(state)

    def set_aside(self, state: QueueState, reason: str) -> None:
        """Move a damaged queue directory under ``<base>/quarantine/``, keeping every file.

        Crash-looping on a damaged queue would stop every other queue too; its
        files are kept for an operator (or a recovery tool), the queue starts
        empty, and the move is logged, listed in ``moved`` and
        explained in the moved directory's ``reason.json``.
        """
        self._handles.close_all(state)
        target = self._move(state.path, state.queue, reason)
        logger.error(
            "damaged DLQ queue set aside, it starts empty: queue=%s moved_to=%s reason=%s",
            state.queue,
            target,
            reason,
        )
        state.loaded = False

    def _move(self, path: Path, queue: QueueId | str, reason: str) -> Path:
        """Move ``path`` whole to ``<base>/quarantine/<time>-<its path>/``, with a reason.json."""
        stamp = time.strftime("%Y%m%dT%H%M%S", time.gmtime())
        target = (
            self.base_path
            / QUARANTINE_DIR
            / f"{stamp}-{'-'.join(path.relative_to(self.base_path).parts)}"
        )
        suffix = 0
        while target.exists():
            suffix += 1
            target = target.with_name(f"{target.name}.{suffix}")
        target.parent.mkdir(parents=True, exist_ok=True)
        os.replace(path, target)
        (target / "reason.json").write_text(
            json.dumps({"queue": str(queue), "reason": reason, "moved_at": stamp}, indent=2)
        )
        self.moved.append((queue, target, reason))
        return target

    def set_aside_unidentified(self, dest_dir: Path) -> None:
        """A ``dest_*`` directory no queue maps to: set it aside if it holds messages.

        Left in place, its messages would never be replayed and nobody would
        be told; an empty one (a stray directory) is only logged.
        """
        try:
            holds_data = any(
                entry.is_dir(follow_symlinks=False)
                and (SEGMENT_RE.match(entry.name) or entry.name == "parked")
                for entry in os.scandir(dest_dir)
            )
        except OSError as error:
            logger.warning("unreadable DLQ directory ignored: path=%s error=%s", dest_dir, error)
            return
        if not holds_data:
            logger.warning("not a DLQ queue directory, ignored: path=%s", dest_dir)
            return
        reason = (
            "cannot tell which queue this directory belongs to: no readable queue.json "
            "matching it, and its name is not an encoded queue name"
        )
        try:
            target = self._move(dest_dir, str(dest_dir.relative_to(self.base_path)), reason)
        except OSError as error:
            logger.error(
                "unidentified DLQ directory cannot be moved: path=%s error=%s", dest_dir, error
            )
            return
        logger.error(
            "unidentified DLQ queue directory set aside: path=%s moved_to=%s", dest_dir, target
        )

    def on_read_error(self, state: QueueState, error: RuntimeError, action: str) -> None:
        """After a failed read or peek: set the queue aside if its data is damaged, else raise.

        Damaged data blocks pass the open and fail only when read, and rocksq
        then says no more than "Failed to retrieve items"; a dead handle (after
        ENOSPC) says the same. Reading every segment again through fresh
        handles tells the two apart.
        """
        text = str(error)
        # The traceback's frames (``rewind``'s among them) still hold the failed
        # handle, and with it RocksDB's lock: let go before reopening.
        traceback.clear_frames(error.__traceback__)
        if is_corruption(text) or (not disk_low(self.base_path) and self._unreadable(state)):
            self.reset(
                state,
                f"queue {state.queue} is damaged (corrupt RocksDB data): {action} failed: {text}",
            )
            return
        raise self._handles.fail(state, action, error) from None

    def _unreadable(self, state: QueueState) -> bool:
        """True when a fresh handle cannot read some segment of the queue to its end."""
        self._handles.close_all(state)
        for number in list(state.segments):
            try:
                handle = self._opener.open(segment_dir(state.path, number), state.queue)
            except QueueCorruptError:
                return True
            except DLQError:
                return False  # locked or out of space: no proof of damage
            try:
                if VERIFY_LABEL in handle.labels:
                    handle.remove_label(VERIFY_LABEL)
                while True:
                    items, _ = handle.next(VERIFY_LABEL, rocksq.StartPosition.Oldest, 1000)
                    if not items:
                        break
                handle.remove_label(VERIFY_LABEL)
            except RuntimeError as failure:
                return not (is_no_space(str(failure)) or disk_low(self.base_path))
            finally:
                del handle
        # Every item was readable: the next use reloads (and rewinds) the queue.
        state.loaded = False
        return False
