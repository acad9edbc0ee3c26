"""Removing drained, idle queue directories, and creating queue directories safely beside that.

A drained queue keeps its directory (cursor, identity, status and other side
files, the parked lane's directory): a thousand queues drained after an
outage left about 25 MB behind. A queue whose lanes hold no message and no
lease, and that nothing changed for the idle time, is removed here, with the
``table_``/``source_`` directories it leaves empty; its next enqueue makes it
again from nothing.

Why it is safe: the caller holds both lanes' locks (taken without waiting),
so no enqueue, read or ack of the queue runs meanwhile, and the lanes are
reset to unloaded, so the next operation loads them from the (missing)
directory and its enqueue recreates it; nothing writes into deleted files.
Only files listed as side files are unlinked, one by one, and directories
are removed with ``rmdir``: anything else (a segment, a ``quarantine/``
directory, a file appearing meanwhile) keeps the directory. ``queue.json``
goes last, so a crash half-way leaves a queue that is still identified
(and empty); the next pass removes the rest.
"""

from __future__ import annotations

import errno
import logging
import os
import threading
from collections.abc import Callable, Collection
from pathlib import Path

from compute.queue_id import PARKED_LANE, QueueId
from compute.storage.atomic_file import json_bytes, temporary_of, write_atomic
from compute.storage.rocksq.cursor import CURSOR_FILE
from compute.storage.rocksq.discovery import QUEUE_FILE
from compute.storage.rocksq.handles import HandleCache
from compute.storage.rocksq.segments import WRITTEN_FILE
from compute.storage.rocksq.state import QueueState

logger = logging.getLogger(__name__)

# The store's own files in a lane directory; queue.json is removed last.
_STORE_FILES = (CURSOR_FILE, WRITTEN_FILE)

# What a lane looked like when last seen empty: its next segment number and
# cursor (any enqueue since, even one acknowledged since, moved them).
_Mark = tuple[bool, int, int, int]


class DrainedQueues:
    """Notices queues that stay drained, and removes their directories after the idle time."""

    def __init__(self, base_path: Path, handles: HandleCache) -> None:
        self._base_path = base_path
        self._handles = handles
        # Queue -> (marks of its two lanes when first seen empty, when).
        self._seen: dict[QueueId, tuple[tuple[_Mark, _Mark], float]] = {}
        # Held while creating a queue's directory tree and while removing the
        # parents a removal left empty: a parent never goes between a sibling's
        # mkdir of it and the mkdir of its own directory.
        self._tree_lock = threading.Lock()

    def make_dir(self, state: QueueState) -> None:
        """Create ``state``'s directory (and parents); a lane's queue gets its queue.json too.

        A lane written first (a change parked straight from the live path)
        would otherwise leave a queue directory without its identity, which
        a restart cannot map back to a queue when its names were cut.
        """
        with self._tree_lock:
            state.path.mkdir(parents=True, exist_ok=True)
        if state.queue.lane:
            main_file = state.path.parent / QUEUE_FILE
            if not main_file.exists():
                write_atomic(main_file, json_bytes(state.queue.main.json_fields()))

    def remove_if_idle(
        self,
        main: QueueState,
        parked: QueueState,
        idle_seconds: float,
        now: float,
        side_files: Collection[str],
        forget: Callable[[QueueId], None],
    ) -> bool:
        """Remove the queue's directory if both lanes stayed empty for ``idle_seconds``.

        The caller holds both lanes' locks. ``side_files``: names of the
        owner's files a drained queue's directories may hold (removed with
        them). ``forget`` drops the queue from the store's listing.
        """
        queue = main.queue
        main_mark, parked_mark = _mark(main), _mark(parked)
        if main_mark is None or parked_mark is None:
            self._seen.pop(queue, None)  # holds messages, or a lease
            return False
        marks = main_mark, parked_mark
        seen = self._seen.get(queue)
        if seen is None or seen[0] != marks:
            self._seen[queue] = (marks, now)
            return False
        if now - seen[1] < idle_seconds:
            return False
        names = frozenset((*_STORE_FILES, QUEUE_FILE, *side_files))
        files = _removable(main.path, names)
        parked_files = _removable(parked.path, names) if files is not None else None
        if files is None or parked_files is None:
            # Something else lives there (a segment, quarantined messages):
            # look again after another idle time, not at every pass.
            self._seen[queue] = (marks, now)
            return False
        for state in (main, parked):
            self._handles.close_all(state)  # its cursor file too
            state.loaded = False  # the next operation loads it from the missing directory
        del self._seen[queue]
        if not (_remove(parked.path, parked_files) and _remove(main.path, files)):
            # Something appeared meanwhile: the queue stays, still empty and identified.
            if main.path.is_dir() and not (main.path / QUEUE_FILE).exists():
                write_atomic(main.path / QUEUE_FILE, json_bytes(queue.json_fields()))
            return False
        forget(queue)
        self._remove_empty_parents(main.path)
        logger.debug(
            "DLQ queue drained and idle, directory removed: source=%s table=%s destination=%s "
            "path=%s",
            queue.source_id,
            queue.table,
            queue.destination_id,
            main.path,
        )
        return True

    def _remove_empty_parents(self, path: Path) -> None:
        with self._tree_lock:
            for parent in (path.parent, path.parent.parent):
                if parent == self._base_path:
                    return
                try:
                    os.rmdir(parent)
                except OSError:
                    return  # another queue lives there (or it is gone already)


def _mark(state: QueueState) -> _Mark | None:
    """What an empty lane looks like now; None when it holds messages or a lease."""
    if not state.loaded:
        # Not used since start (or reset): its directory is checked before removal.
        return (False, 0, 0, 0)
    if state.segments or state.leases or state.total or state.buffer:
        return None
    return (True, state.next_segment, state.cursor_segment, state.cursor_acked)


def _removable(path: Path, names: frozenset[str]) -> list[str] | None:
    """The files of lane directory ``path``, if it holds nothing but side files."""
    try:
        entries = list(os.scandir(path))
    except FileNotFoundError:
        return []
    except OSError as error:
        logger.warning("DLQ queue directory unreadable, kept: path=%s error=%s", path, error)
        return None
    found: list[str] = []
    for entry in entries:
        if entry.name == PARKED_LANE and entry.is_dir(follow_symlinks=False):
            continue  # the lane beside it, checked on its own
        known = entry.name in names or temporary_of(entry.name) in names  # one a crash left
        if not known or not entry.is_file(follow_symlinks=False):
            logger.debug("DLQ queue directory holds %s, kept: path=%s", entry.name, path)
            return None
        found.append(entry.name)
    return found


def _remove(path: Path, files: list[str]) -> bool:
    """Unlink ``files`` of ``path`` (queue.json last), then the directory; False if it stays."""
    for name in sorted(files, key=lambda name: name == QUEUE_FILE):
        try:
            os.unlink(path / name)
        except FileNotFoundError:
            continue
        except OSError as error:
            logger.warning("DLQ side file not removed: path=%s error=%s", path / name, error)
            return False
    try:
        os.rmdir(path)
    except FileNotFoundError:
        return True
    except OSError as error:
        # A file that appeared meanwhile (a quarantined message) keeps it:
        # the queue is still empty, and is looked at again later.
        if error.errno not in (errno.ENOTEMPTY, errno.EEXIST):
            logger.warning("DLQ queue directory not removed: path=%s error=%s", path, error)
        return False
    return True
