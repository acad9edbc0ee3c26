"""A queue's segments on disk: loading them, counting them, retiring the head, ``segments.json``."""

from __future__ import annotations

import json
import logging
import os
import shutil

import rocksq

from compute.errors import DLQFullError, QueueCorruptError
from compute.storage.atomic_file import json_bytes, write_atomic
from compute.storage.rocksq.cursor import read_cursor, write_cursor
from compute.storage.rocksq.diagnosis import disk_low, is_corruption, is_no_space
from compute.storage.rocksq.frames import frame_count
from compute.storage.rocksq.handles import HandleCache
from compute.storage.rocksq.opener import SegmentOpener
from compute.storage.rocksq.state import SEGMENT_RE, QueueState, segment_dir

logger = logging.getLogger(__name__)

# Items fetched per rocksq call when counting, skipping or copying whole frames.
SCAN_CHUNK = 1000
COUNT_LABEL = "rosetta-count"
# Messages written to each segment, recorded at rollover and at a clean close, so
# that a segment found shorter at the next open (a truncated or deleted
# write-ahead log) is reported instead of losing its tail silently.
WRITTEN_FILE = "segments.json"


class Segments:
    """Rebuilds a queue's state from its segment directories, and retires them once acked."""

    def __init__(self, opener: SegmentOpener, handles: HandleCache) -> None:
        self._opener = opener
        self._handles = handles

    def load(self, state: QueueState) -> None:
        """Rebuild the queue's state from its directory (start-up, or after an error)."""
        self._handles.close_all(state)
        state.segments = []
        state.counts = {}
        state.items = {}
        state.leases = []
        state.buffer = []
        state.read_items = 0
        state.renumbered = {}
        if state.path.is_dir():
            state.segments = sorted(
                int(m.group(1))
                for entry in os.scandir(state.path)
                if entry.is_dir() and (m := SEGMENT_RE.match(entry.name))
            )
        cursor = read_cursor(state)
        if cursor is None:
            cursor = (state.segments[0] if state.segments else 1, 0)
        state.cursor_segment, state.cursor_acked = cursor
        # Segments below the cursor are fully acknowledged: a crash came between
        # writing the cursor and deleting the directory.
        for number in [n for n in state.segments if n < state.cursor_segment]:
            remove_segment_dir(state, number)
        state.segments = [n for n in state.segments if n >= state.cursor_segment]
        for number in state.segments:
            state.items[number], state.counts[number] = self.count(state, number)
        _check_written_counts(state)
        state.next_segment = max([*state.segments, state.cursor_segment]) + 1
        if state.cursor_segment not in state.counts:
            state.cursor_acked = 0
        acked = min(state.cursor_acked, state.counts.get(state.cursor_segment, 0))
        state.total = sum(state.counts.values()) - acked
        state.read_segment = state.segments[0] if state.segments else None
        state.read_offset = acked if state.read_segment == state.cursor_segment else 0
        state.rewind = set(state.segments)
        state.disk_measured_at = float("-inf")
        state.loaded = True
        # A fully acknowledged head segment left by a crash is retired now.
        while (
            state.read_segment is not None and state.read_offset >= state.counts[state.read_segment]
        ):
            if not self.retire_head(state):
                break

    def count(self, state: QueueState, number: int) -> tuple[int, int]:
        """``(items, messages)`` of a segment; reads every item's frame header once."""
        handle = self._opener.open(segment_dir(state.path, number), state.queue)
        try:
            items = int(handle.len)
            if not items:
                return 0, 0
            if COUNT_LABEL in handle.labels:
                handle.remove_label(COUNT_LABEL)
            messages = seen = 0
            while seen < items:
                chunk, _ = handle.next(
                    COUNT_LABEL, rocksq.StartPosition.Oldest, min(SCAN_CHUNK, items - seen)
                )
                if not chunk:
                    break
                seen += len(chunk)
                messages += sum(map(frame_count, chunk))
            handle.remove_label(COUNT_LABEL)
            return seen, messages
        except RuntimeError as error:
            text = str(error)
            # A fresh handle that cannot read its own items: a damaged data
            # block (rocksq passes on no more than "Failed to retrieve items"),
            # unless the disk is full, since reading writes the label's position.
            if is_corruption(text) or not (is_no_space(text) or disk_low(self._opener.base_path)):
                raise QueueCorruptError(
                    f"queue {state.queue} is damaged (corrupt RocksDB data): "
                    f"counting segment {number} failed: {text}"
                ) from None
            raise DLQFullError(
                "disk_full", f"cannot count queue {state.queue}: {text}", state.queue
            ) from None
        finally:
            del handle

    def retire_head(self, state: QueueState) -> bool:
        """Delete the fully acknowledged head segment; False if it cannot go yet."""
        number = state.read_segment
        if number is None:
            return False
        if number == state.write_segment:
            # The queue is empty: retire the last segment too, so disk use goes
            # back to nothing; the next enqueue starts a fresh segment.
            write_cursor(state, state.next_segment, 0, self._opener.reserve)
            state.read_segment, state.read_offset = None, 0
            state.read_items = 0
        else:
            following = state.segments[state.segments.index(number) + 1]
            write_cursor(state, following, 0, self._opener.reserve)
            state.read_segment, state.read_offset = following, 0
            state.read_items = 0
        state.buffer = []
        state.segments.remove(number)
        state.counts.pop(number, None)
        state.items.pop(number, None)
        state.rewind.discard(number)
        self._handles.close(state, number)
        remove_segment_dir(state, number)
        state.disk_measured_at = float("-inf")
        return True


def record_written_counts(state: QueueState) -> None:
    """Record how many messages each segment holds (at rollover and clean close).

    Messages leave a segment only with the whole directory, so a segment
    holding fewer at the next open lost them; see
    ``_check_written_counts``. Not on every enqueue: the hot path stays as
    it is, so loss is detected only up to the last rollover or clean close.
    """
    data = {"written": {str(n): state.counts[n] for n in state.segments}}
    try:
        write_atomic(state.path / WRITTEN_FILE, json_bytes(data))
    except OSError as error:  # a full disk at close: detection degrades, nothing else
        logger.warning("segment counts not recorded: queue=%s error=%s", state.queue, error)


def _check_written_counts(state: QueueState) -> None:
    """Raise ``QueueCorruptError`` when a segment lost unacknowledged messages since recorded.

    RocksDB replays a truncated or damaged write-ahead log up to the
    damage and drops the rest without an error; this is where that
    becomes loud. Segments below the cursor are fully acknowledged, so
    their absence is no loss.
    """
    path = state.path / WRITTEN_FILE
    try:
        written = {int(n): int(c) for n, c in json.loads(path.read_text())["written"].items()}
    except FileNotFoundError:
        return
    except (OSError, ValueError, KeyError, TypeError, AttributeError) as error:
        logger.warning(
            "unreadable segment counts, truncation cannot be checked: queue=%s error=%s",
            state.queue,
            error,
        )
        return
    losses = []
    for number, count in sorted(written.items()):
        if number < state.cursor_segment:
            continue
        acked = state.cursor_acked if number == state.cursor_segment else 0
        found = state.counts.get(number)
        lost = count - max(found or 0, acked)
        if lost > 0:
            where = "is missing" if found is None else f"holds {found}"
            losses.append(
                f"segment {number} {where} of {count} items written ({lost} unacknowledged lost)"
            )
    if losses:
        raise QueueCorruptError(
            f"queue {state.queue} is damaged: {'; '.join(losses)}; its write-ahead log "
            "was probably truncated or deleted"
        )


def remove_segment_dir(state: QueueState, number: int) -> None:
    path = segment_dir(state.path, number)
    try:
        rocksq.remove_mpmc_queue(str(path))
    except RuntimeError:
        pass  # rmtree below removes whatever is left
    shutil.rmtree(path, ignore_errors=True)
    state.disk_measured_at = float("-inf")  # its size is measured again when next shown
