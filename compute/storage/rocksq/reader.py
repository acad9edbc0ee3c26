"""Reading a queue in order: the reader label, its buffer and leases, peeking and scanning."""

from __future__ import annotations

import logging
import threading
from collections.abc import Iterator
from typing import Any

import rocksq
from rocksq.blocking import MpmcQueue

from compute.errors import QueueCorruptError
from compute.storage.base import StoreLease
from compute.storage.frames import decode_after, decode_frame
from compute.storage.rocksq.handles import HandleCache
from compute.storage.rocksq.quarantine import Quarantine
from compute.storage.rocksq.segments import SCAN_CHUNK, Segments
from compute.storage.rocksq.state import QueueState

logger = logging.getLogger(__name__)

READER_LABEL = "rosetta-reader"
PEEK_LABEL = "rosetta-peek"
SCAN_LABEL = "rosetta-scan"


class ShortSegment(Exception):
    """A segment returned fewer items than counted (a write that failed half-way)."""


class SegmentReader:
    """Reads segments for the reader, ``peek`` and ``scan``; the caller holds the queue's lock."""

    def __init__(self, handles: HandleCache, segments: Segments, quarantine: Quarantine) -> None:
        self._handles = handles
        self._segments = segments
        self._quarantine = quarantine

    def read_locked(self, state: QueueState, max_items: int) -> StoreLease:
        for _attempt in range(2):
            number = state.read_segment
            if number is None:
                return StoreLease(state.queue, [], (0, 0))
            try:
                self.pull(state, max_items)
            except ShortSegment:
                if state.leases:
                    # A read-ahead: reloading would take the outstanding lease
                    # away; the next plain read recounts.
                    return StoreLease(state.queue, [], (number, state.read_offset))
                # The segment holds fewer items than counted: a write that
                # failed half-way. Recount from disk and try again.
                logger.warning("DLQ segment shorter than counted, reloading: queue=%s", state.queue)
                state.loaded = False
                self._segments.load(state)
                continue
            except RuntimeError as error:
                self._quarantine.on_read_error(state, error, "read")
                return StoreLease(state.queue, [], (0, 0))
            # Nothing unread means the queue is drained, or outstanding leases
            # hold the rest of the segment (a lease never spans two segments).
            taken = state.buffer[:max_items]
            del state.buffer[:max_items]
            lease = StoreLease(state.queue, taken, (number, state.read_offset))
            state.read_offset += len(taken)
            return lease
        return StoreLease(state.queue, [], (state.read_segment or 0, state.read_offset))

    def pull(self, state: QueueState, wanted: int) -> None:
        """Top the buffer up to ``wanted`` payloads from the read segment.

        The caller holds the queue lock and handles ``RuntimeError`` from
        rocksq; ``ShortSegment`` means the segment has fewer items than counted.
        """
        number = state.read_segment
        if number is None or len(state.buffer) >= wanted:
            return
        handle = self._handles.get(state, number)
        if number in state.rewind:
            self._rewind(state, handle, number)
        while len(state.buffer) < wanted:
            remaining = state.items[number] - state.read_items
            if remaining <= 0:
                return
            # Frames usually hold whole batches: fetch about as many as needed.
            per_item = max(1, state.counts[number] // max(1, state.items[number]))
            fetch = min(remaining, -(-(wanted - len(state.buffer)) // per_item))
            items, _ = handle.next(READER_LABEL, rocksq.StartPosition.Oldest, fetch)
            if not items:
                raise ShortSegment
            state.read_items += len(items)
            for item in items:
                state.buffer.extend(decode_frame(item))

    def _rewind(self, state: QueueState, handle: MpmcQueue, number: int) -> None:
        """Point the reader label at ``state.read_offset``, re-reading from the oldest item.

        Whole frames below the offset are skipped by their headers; the frame
        the offset cuts is decoded and its unacknowledged rest buffered.
        """
        if READER_LABEL in handle.labels:
            handle.remove_label(READER_LABEL)
        state.rewind.discard(number)
        state.read_items = 0
        state.buffer = []
        skip = state.read_offset
        while skip > 0:
            remaining = state.items[number] - state.read_items
            if remaining <= 0:
                raise RuntimeError(f"segment {number} ends before the cursor ({skip} short)")
            chunk, _ = handle.next(
                READER_LABEL, rocksq.StartPosition.Oldest, min(SCAN_CHUNK, remaining)
            )
            if not chunk:
                raise RuntimeError(f"segment {number} ends before the cursor ({skip} short)")
            state.read_items += len(chunk)
            skip = decode_after(chunk, skip, state.buffer)

    def peek(self, state: QueueState, limit: int, newest: bool) -> list[bytes]:
        """Up to ``limit`` payloads from the head (or the newest one), unleased."""
        try:
            if newest:
                handle = self._handles.get(state, state.segments[-1])
                last = self._peek_segment(handle, 1, rocksq.StartPosition.Newest)[-1:]
                return decode_frame(last[0])[-1:] if last else []
            # The head is what the reader holds or will read next: serve it
            # from the lease and the buffer, topping the buffer up from the
            # reader label, so peeking never re-reads acknowledged messages.
            found: list[bytes] = []
            for lease in state.leases:
                found.extend(lease.payloads)
            try:
                self.pull(state, limit - len(found))
            except ShortSegment:
                pass  # the next read recounts the segment
            found.extend(state.buffer[: max(0, limit - len(found))])
            for number in state.segments:
                if len(found) >= limit:
                    break
                if state.read_segment is not None and number <= state.read_segment:
                    continue
                handle = self._handles.get(state, number)
                # Every item holds at least one payload: this many items is enough.
                for item in self._peek_segment(
                    handle, limit - len(found), rocksq.StartPosition.Oldest
                ):
                    found.extend(decode_frame(item))
            return found[:limit]
        except RuntimeError as error:
            handle = None  # see RocksqStore.enqueue: the traceback must let go of it
            self._quarantine.on_read_error(state, error, "peek")
            return []
        except QueueCorruptError as error:  # reopening a segment found it damaged
            self._quarantine.reset(state, str(error))
            return []

    @staticmethod
    def _peek_segment(handle: Any, count: int, start: Any) -> list[bytes]:
        if count <= 0:
            return []
        if PEEK_LABEL in handle.labels:
            handle.remove_label(PEEK_LABEL)
        try:
            items, _ = handle.next(PEEK_LABEL, start, count)
            return list(items)
        finally:
            handle.remove_label(PEEK_LABEL)

    def scan(
        self, state: QueueState, plan: list[tuple[int, int]], chunk: int
    ) -> Iterator[list[bytes]]:
        """Stream the payloads of ``plan``'s segments, each from its number of skipped messages.

        Each segment is read with its own label, one chunk per lock hold, so
        the reader and writers go on between chunks. A segment retired (fully
        acknowledged) meanwhile simply ends; its items were committed.
        """
        for number, skip in plan:
            label = f"{SCAN_LABEL}-{threading.get_ident()}"
            first = True
            while True:
                with state.lock:
                    if number not in state.counts:
                        break
                    # ``chunk`` counts messages; frames hold several each.
                    fetch = max(1, chunk * state.items[number] // max(1, state.counts[number]))
                    try:
                        handle = self._handles.get(state, number)
                        if first and label in handle.labels:
                            handle.remove_label(label)
                        items, _ = handle.next(label, rocksq.StartPosition.Oldest, fetch)
                        first = False
                        if not items:
                            handle.remove_label(label)
                    except RuntimeError as error:
                        handle = None  # see RocksqStore.enqueue: the traceback must let go of it
                        # Damage sets the queue aside (raising otherwise): the scan ends.
                        self._quarantine.on_read_error(state, error, "scan")
                        return
                    except QueueCorruptError as error:
                        self._quarantine.reset(state, str(error))
                        return
                if not items:
                    break
                payloads: list[bytes] = []
                # ``skip``: acknowledged messages at the head of the cursor's segment.
                skip = decode_after(items, skip, payloads)
                if not payloads:
                    continue
                try:
                    yield payloads
                except GeneratorExit:  # the caller stopped early: drop the label
                    with state.lock:
                        if number in state.counts:
                            try:
                                self._handles.get(state, number).remove_label(label)
                            except RuntimeError:
                                pass
                    raise


def give_back(state: QueueState, head: list[bytes], offset: int, first: int = 0) -> None:
    """Put ``head`` and the leases from ``first`` on back in front of the buffer, in order."""
    returned = list(head)
    for later in state.leases[first:]:
        returned.extend(later.payloads)
    del state.leases[first:]
    state.buffer[0:0] = returned
    state.read_offset = offset
