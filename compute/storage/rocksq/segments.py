"""A queue's segments on disk: loading them, counting them, retiring the head, ``segments.json``."""

from __future__ import annotations

import json
import logging
import os
import shutil
from collections.abc import Callable

import rocksq
from rocksq.blocking import MpmcQueue

from compute.errors import DLQFullError, DLQStorageError, QueueCorruptError
from compute.storage.atomic_file import json_bytes, write_atomic
from compute.storage.frames import frame_count
from compute.storage.rocksq.cursor import read_cursor, write_cursor
from compute.storage.rocksq.diagnosis import disk_low, is_corruption, is_no_space
from compute.storage.rocksq.handles import HandleCache
from compute.storage.rocksq.opener import SegmentOpener
from compute.storage.rocksq.state import SEGMENT_RE, QueueState, segment_dir

logger = logging.getLogger(__name__)

# Items fetched per rocksq call when counting, skipping or copying whole frames.
SCAN_CHUNK = 1000
COUNT_LABEL = "rosetta-count"
# Each segment's counts, recorded at rollover and at a clean close:
# ``written`` (messages, a lower bound for the tail) lets a segment found
# shorter at the next open (a truncated or deleted write-ahead log) be
# reported instead of losing its tail silently; ``exact`` (items, messages)
# of segments nothing was written to since, so that a restart trusts them
# instead of reading every frame. The write segment's ``exact`` entry is
# dropped before anything more is written to it.
WRITTEN_FILE = "segments.json"


class Segments:
    """Rebuilds a queue's state from its segment directories, and retires them once acked."""

    def __init__(self, opener: SegmentOpener, handles: HandleCache) -> None:
        self._opener = opener
        self._handles = handles
        # A segment counted from segments.json is checked when first opened.
        handles.on_first_open = self.verify
        # Called before a fully acknowledged segment is deleted (see RocksqStore).
        self.before_remove: Callable[[QueueState], None] | None = None

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
        state.unverified = set()
        state.recorded_tail = None
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
        written, exact = _read_records(state)
        for number in state.segments:
            if number in exact:
                # Final when recorded, checked against the segment when first opened.
                state.items[number], state.counts[number] = exact[number]
                state.unverified.add(number)
            else:
                state.items[number], state.counts[number] = self.count(state, number)
        if state.segments and state.segments[-1] in exact:
            state.recorded_tail = state.segments[-1]
        _check_written_counts(state, written)
        state.next_segment = max([*state.segments, state.cursor_segment]) + 1
        if state.cursor_segment not in state.counts:
            state.cursor_acked = 0
        acked = min(state.cursor_acked, state.counts.get(state.cursor_segment, 0))
        state.total = sum(state.counts.values()) - acked
        state.read_segment = state.segments[0] if state.segments else None
        state.read_offset = acked if state.read_segment == state.cursor_segment else 0
        state.rewind = set(state.segments)
        state.disk_measured_at = float("-inf")
        # The head is counted now, checking its recorded count, as before; a fully
        # acknowledged head segment left by a crash is retired.
        while state.read_segment is not None:
            if state.read_segment in state.unverified:
                self.verify(state, state.read_segment)  # through a handle closed again
            if state.read_offset < state.counts[state.read_segment]:
                break
            if not self.retire_head(state):
                break
        state.loaded = True  # not before: a head that cannot be opened yet is tried again

    def verify(self, state: QueueState, number: int, handle: MpmcQueue | None = None) -> None:
        """Count the segment just opened and check its recorded count; a loss raises.

        Counted, not compared with ``len``: rocksq's ``len`` comes from its
        own index keys, which survive the loss of table files (a truncated
        MANIFEST drops the oldest items and ``len`` is unchanged). Deferred
        to the first open, the count costs the replay about as much as one
        read of the frame headers; a segment holding fewer messages than
        recorded lost unacknowledged ones (``QueueCorruptError``).
        """
        state.unverified.discard(number)
        items, messages = self.count(state, number, handle)
        if (items, messages) == (state.items[number], state.counts[number]):
            return
        logger.warning(
            "segment count differs from the recorded one, recounted: queue=%s segment=%d "
            "recorded_items=%d items=%d recorded_messages=%d messages=%d",
            state.queue,
            number,
            state.items[number],
            items,
            state.counts[number],
            messages,
        )
        loss = _loss(state, number, state.counts[number], messages)
        if loss:
            raise _damaged(state, [loss])
        state.total += messages - state.counts[number]
        state.items[number], state.counts[number] = items, messages

    def count(
        self, state: QueueState, number: int, handle: MpmcQueue | None = None
    ) -> tuple[int, int]:
        """``(items, messages)`` of a segment; reads every item's frame header once."""
        if handle is None:
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
        state.unverified.discard(number)
        self._handles.close(state, number)
        if self.before_remove is not None:
            self.before_remove(state)
        remove_segment_dir(state, number)
        state.disk_measured_at = float("-inf")
        return True


def record_written_counts(state: QueueState) -> None:
    """Record every segment's counts as final (at rollover and clean close).

    Messages leave a segment only with the whole directory, so a segment
    holding fewer at the next open lost them; see ``_check_written_counts``.
    Not on every enqueue: the hot path stays as it is, so loss is detected
    only up to the last rollover or clean close.
    """
    try:
        _write_records(state, tail_final=True)
    except OSError as error:  # a full disk at close: the next start counts instead
        logger.warning("segment counts not recorded: queue=%s error=%s", state.queue, error)


def forget_tail_count(state: QueueState) -> None:
    """Before the first write to a write segment recorded as final: drop that record.

    Once per queue and load, never per enqueue: a crash after the write
    then finds the segment unrecorded and counts it.
    """
    try:
        _write_records(state, tail_final=False)
    except OSError as error:
        try:
            (state.path / WRITTEN_FILE).unlink(missing_ok=True)  # needs no room
        except OSError:
            raise DLQStorageError(
                f"cannot update {state.path / WRITTEN_FILE} of queue {state.queue}: {error}"
            ) from None
        logger.warning("segment counts removed: queue=%s error=%s", state.queue, error)
    state.recorded_tail = None


def _write_records(state: QueueState, *, tail_final: bool) -> None:
    final = state.segments if tail_final else state.segments[:-1]
    data = {
        "written": {str(n): state.counts[n] for n in state.segments},
        "exact": {str(n): [state.items[n], state.counts[n]] for n in final},
    }
    write_atomic(state.path / WRITTEN_FILE, json_bytes(data), durable=state.durable)
    state.recorded_tail = state.segments[-1] if tail_final and state.segments else None


def _read_records(state: QueueState) -> tuple[dict[int, int], dict[int, tuple[int, int]]]:
    """``(written, exact)`` from segments.json: see ``WRITTEN_FILE``; older files lack ``exact``."""
    path = state.path / WRITTEN_FILE
    try:
        data = json.loads(path.read_text())
        written = {int(n): int(c) for n, c in data["written"].items()}
        exact = {int(n): (int(i), int(c)) for n, (i, c) in data.get("exact", {}).items()}
    except FileNotFoundError:
        return {}, {}
    except (OSError, ValueError, KeyError, TypeError, AttributeError) as error:
        logger.warning(
            "unreadable segment counts, truncation cannot be checked: queue=%s error=%s",
            state.queue,
            error,
        )
        return {}, {}
    return written, exact


def _check_written_counts(state: QueueState, written: dict[int, int]) -> None:
    """Raise ``QueueCorruptError`` when a segment lost unacknowledged messages since recorded.

    RocksDB replays a truncated or damaged write-ahead log up to the
    damage and drops the rest without an error; this is where that
    becomes loud. Segments below the cursor are fully acknowledged, so
    their absence is no loss.
    """
    losses = []
    for number, count in sorted(written.items()):
        if number < state.cursor_segment:
            continue
        loss = _loss(state, number, count, state.counts.get(number))
        if loss:
            losses.append(loss)
    if losses:
        raise _damaged(state, losses)


def _loss(state: QueueState, number: int, count: int, found: int | None) -> str | None:
    """What segment ``number`` lost of ``count`` messages written, if it holds ``found``."""
    acked = state.cursor_acked if number == state.cursor_segment else 0
    lost = count - max(found or 0, acked)
    if lost <= 0:
        return None
    where = "is missing" if found is None else f"holds {found}"
    return f"segment {number} {where} of {count} items written ({lost} unacknowledged lost)"


def _damaged(state: QueueState, losses: list[str]) -> QueueCorruptError:
    return QueueCorruptError(
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
