"""Recreating a queue whose directory was removed or moved away while the engine ran."""

from __future__ import annotations

import logging
from collections.abc import Callable

import rocksq
from rocksq.blocking import MpmcQueue

from compute.errors import DLQError, DLQStorageError
from compute.queue_id import QueueId
from compute.storage.frames import frame_count
from compute.storage.rocksq.cursor import CURSOR_FILE, close_cursor, cursor_current, write_cursor
from compute.storage.rocksq.discovery import write_queue_file
from compute.storage.rocksq.handles import HandleCache
from compute.storage.rocksq.opener import SegmentOpener
from compute.storage.rocksq.segments import SCAN_CHUNK, record_written_counts, remove_segment_dir
from compute.storage.rocksq.state import QueueState, segment_dir

logger = logging.getLogger(__name__)

SALVAGE_LABEL = "rosetta-salvage"


class Salvage:
    """Notices a removed queue directory, and copies what is still readable into a new one."""

    def __init__(
        self,
        opener: SegmentOpener,
        handles: HandleCache,
        recreated: Callable[[QueueId], None],
    ) -> None:
        self._opener = opener
        self._handles = handles
        # Called (with the queue's lock held) once a queue was recreated.
        self._recreated = recreated

    def _segment_current(self, state: QueueState, number: int) -> bool:
        """False when segment ``number``'s directory was removed or replaced under us."""
        entry = state.handles.get(number)
        if entry is not None:
            return entry.is_current()
        return not state.items.get(number) or segment_dir(state.path, number).is_dir()

    def ensure_present(self, state: QueueState, action: str) -> None:
        """Recreate the queue if its directory, a segment or its cursor file was removed.

        The caller holds ``state.lock`` and the queue is loaded. Costs one stat
        per segment (and one for the cursor file): per batch, never per message.
        """
        removed = [n for n in state.segments if not self._segment_current(state, n)]
        if removed:
            self._recover(state, action, removed)
            return
        if state.cursor_fd is not None and not cursor_current(state):
            close_cursor(state)
            if not state.path.is_dir():
                return  # an empty queue: the next enqueue recreates its directory
            logger.error(
                "DLQ cursor file removed or replaced while the engine ran, rewritten from "
                "memory: source=%s table=%s destination=%s path=%s",
                state.queue.source_id,
                state.queue.table,
                state.queue.destination_id,
                state.path / CURSOR_FILE,
            )
            write_cursor(state, state.cursor_segment, state.cursor_acked, self._opener.reserve)

    def _recover(self, state: QueueState, action: str, removed: list[int]) -> None:
        """Recreate a queue whose directory (or some segment of it) was removed or moved away.

        RocksDB goes on writing into the deleted files through the descriptors
        it holds, so nothing said anything while the data went nowhere. Every
        segment still readable (an open handle on the deleted files, or an
        untouched directory) is copied, item by item and in order, into fresh
        segments of the recreated directory; a removed segment with no open
        handle is gone and counted as lost. Leases keep working: their old
        segment numbers are mapped to the new ones.

        A crash half-way leaves the old segments (if any are left) and part of
        the copies: the next start replays both, which means duplicates, never
        a loss.
        """
        queue = state.queue
        try:
            state.path.mkdir(parents=True, exist_ok=True)
        except OSError as error:
            raise DLQStorageError(
                f"the directory {state.path} of queue {queue} was removed while the engine "
                f"ran and cannot be recreated ({error.strerror}); make it writable and retry"
            ) from None
        close_cursor(state)  # it may write into a deleted file
        old = list(state.segments)
        acked_in = {state.cursor_segment: state.cursor_acked}
        mapping: dict[int, int] = {}
        counts: dict[int, int] = {}
        items: dict[int, int] = {}
        salvaged = lost = 0
        for number in old:
            entry = state.handles.get(number)
            source: MpmcQueue | None = entry.queue if entry is not None else None
            if source is None and number not in removed:
                try:
                    source = self._opener.open(segment_dir(state.path, number), queue)
                except DLQError:
                    source = None
            acked = min(acked_in.get(number, 0), state.counts[number])
            if source is None:
                lost += state.counts[number] - acked
                continue
            target_number = state.next_segment
            state.next_segment += 1
            copied_items, copied = self._copy_segment(state, source, target_number)
            del source
            entry = None
            mapping[number] = target_number
            counts[target_number], items[target_number] = copied, copied_items
            salvaged += max(0, copied - acked)
            lost += max(0, state.counts[number] - max(copied, acked))
        for number in old:
            self._handles.close(state, number)
        self._rebuild_after_copy(state, old, mapping, counts, items)
        write_cursor(state, state.cursor_segment, state.cursor_acked, self._opener.reserve)
        write_queue_file(state)
        if state.segments:
            record_written_counts(state)
        for number in old:
            if number not in removed:
                remove_segment_dir(state, number)  # copied, and below the cursor now
        logger.error(
            "DLQ queue directory removed or moved away while the engine ran; recreated it: "
            "source=%s table=%s destination=%s path=%s noticed_at=%s salvaged=%d lost=%d%s",
            queue.source_id,
            queue.table,
            queue.destination_id,
            state.path,
            action,
            salvaged,
            lost,
            " (messages of removed segments that were not open went with the directory)"
            if lost
            else " (every queued message was still readable and was copied back)",
        )
        self._recreated(queue)

    def _copy_segment(self, state: QueueState, source: MpmcQueue, number: int) -> tuple[int, int]:
        """Copy every item of ``source`` into new segment ``number``: ``(items, messages)``."""
        target = self._handles.get(state, number)
        copied_items = copied = 0
        try:
            if SALVAGE_LABEL in source.labels:
                source.remove_label(SALVAGE_LABEL)
            while True:
                chunk, _ = source.next(SALVAGE_LABEL, rocksq.StartPosition.Oldest, SCAN_CHUNK)
                if not chunk:
                    break
                target.add(list(chunk))
                copied_items += len(chunk)
                copied += sum(map(frame_count, chunk))
        except RuntimeError as error:
            # What was copied stays; the rest is counted as lost by the caller.
            logger.error(
                "copying a removed DLQ segment failed part-way: queue=%s copied=%d error=%s",
                state.queue,
                copied,
                error,
            )
        return copied_items, copied

    @staticmethod
    def _rebuild_after_copy(
        state: QueueState,
        old: list[int],
        mapping: dict[int, int],
        counts: dict[int, int],
        items: dict[int, int],
    ) -> None:
        """Point the queue's state at the copied segments (same offsets, new numbers)."""
        state.segments = [mapping[n] for n in old if n in mapping]
        state.counts, state.items = counts, items
        first = state.segments[0] if state.segments else state.next_segment
        if state.cursor_segment in mapping:
            cursor = mapping[state.cursor_segment]
            acked = min(state.cursor_acked, counts[cursor])
        else:
            cursor, acked = first, 0
        # The reader goes on where it was if its segment, the cursor's and its
        # leases' were all copied; else it starts again from the cursor.
        kept = (
            (state.cursor_segment in mapping or state.cursor_segment not in old)
            and (state.read_segment is None or state.read_segment in mapping)
            and all(
                lease.token[0] in mapping or state.renumbered.get(lease.token[0]) in mapping
                for lease in state.leases
            )
        )
        if kept:
            if state.read_segment is not None:
                state.read_segment = mapping[state.read_segment]
        else:
            state.leases = []  # they can no longer be acked: their messages come again
            state.read_segment = cursor if state.segments else None
            state.read_offset = acked
        for old_number, new_number in list(state.renumbered.items()):
            if new_number in mapping:
                state.renumbered[old_number] = mapping[new_number]
        state.renumbered.update(mapping)
        state.cursor_segment, state.cursor_acked = cursor, acked
        state.buffer = []
        state.read_items = 0
        state.rewind = set(state.segments)
        state.unverified = set()  # every copy was counted as it was made
        state.total = sum(counts.values()) - acked
        state.disk_measured_at = float("-inf")
