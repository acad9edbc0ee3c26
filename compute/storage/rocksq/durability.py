"""What a queue syncs, and when (``DLQ_FSYNC``): its write segment, new directories, the cursor.

What each file protects decides whether it is synced:

* the write segment's files (RocksDB's write-ahead log above all): by the
  group commit (``syncer.py``), after each enqueue (``always``) or every
  interval (``interval``);
* directories made for a new segment or queue: with the segment's first sync;
* ``queue.json`` (a queue's name, for names cut for length): on creation;
* ``segments.json`` (counts that detect a lost log): only after the
  segments it counts are synced, so a power cut cannot make it claim
  writes the log lost, which would set a healthy queue aside;
* ``cursor.json``: rewritten in place after each acknowledgement and not
  synced then (a lost cursor only delivers acknowledged messages again),
  but synced before an acknowledged segment is deleted, so a persisted
  deletion is never ahead of the cursor that allowed it.
"""

from __future__ import annotations

import os
from pathlib import Path

from compute.storage.rocksq.state import QueueState, segment_dir
from compute.storage.rocksq.syncer import GroupCommit, SyncTarget, fsync_path
from config.dlq_config import FsyncMode


class QueueDurability:
    """The store's side of the group commit: one per store."""

    def __init__(self, base_path: Path, mode: FsyncMode, interval: float) -> None:
        self.base_path = base_path
        self.group = GroupCommit(mode, interval)
        self.enabled = mode is not FsyncMode.OFF
        self.always = mode is FsyncMode.ALWAYS

    def new_segment(self, state: QueueState, number: int, new_queue: bool) -> None:
        """Segment ``number`` is about to be made: its directory entries go with its first sync."""
        if not self.enabled:
            return
        dirs = [state.path]
        if new_queue:
            # The queue's own directories may be new as well, up to the base path.
            parent = state.path.parent
            while parent != self.base_path and self.base_path in parent.parents:
                dirs.append(parent)
                parent = parent.parent
            dirs.append(self.base_path)
        state.new_dirs[number] = dirs

    def wrote(self, state: QueueState, number: int) -> int:
        """Segment ``number`` was written (``state.lock`` held): the generation to wait for."""
        target = state.sync_target
        if target is None or state.sync_number != number:
            target = SyncTarget(segment_dir(state.path, number), state.new_dirs.pop(number, None))
            state.sync_target, state.sync_number = target, number
        return self.group.note(target)

    def settle(self, generation: int) -> None:
        """With the queue's lock released: with ``always``, return once ``generation`` is synced."""
        if self.always:
            self.group.wait(generation)

    def before_counts(self, state: QueueState) -> None:
        """Before ``segments.json`` records the counts: the segments they count are synced."""
        if self.enabled and state.sync_target is not None:
            self.group.sync_now(state.sync_target)

    def before_remove(self, state: QueueState) -> None:
        """Before an acknowledged segment is deleted: its cursor and every write are synced."""
        if not self.enabled:
            return
        if state.cursor_fd is not None:
            os.fsync(state.cursor_fd)
            fsync_path(state.path, directory=True)  # a cursor file created since
        self.group.sync_now(state.sync_target)

    def closed(self, state: QueueState) -> None:
        """The queue's handles were closed (which writes RocksDB's files): synced at ``close``."""
        if self.enabled and state.sync_target is not None:
            self.group.note(state.sync_target)

    def close(self) -> None:
        """A last sync of everything written, then no more."""
        self.group.close()
