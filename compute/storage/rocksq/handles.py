"""The open segment handles of every queue, capped (each holds file descriptors), LRU first out."""

from __future__ import annotations

import os
import threading
from collections.abc import Callable

from rocksq.blocking import MpmcQueue

from compute.errors import DLQError, DLQFullError, DLQStorageError
from compute.queue_id import QueueId
from compute.storage.rocksq.cursor import close_cursor
from compute.storage.rocksq.diagnosis import disk_low, is_no_space
from compute.storage.rocksq.opener import SegmentOpener
from compute.storage.rocksq.state import QueueState, SegmentHandle, segment_dir


class HandleCache:
    """Segment handles kept open across calls, at most ``max_open`` of them.

    Each handle is registered twice: in its queue's ``state.handles`` (guarded
    by the queue's lock) and here, for the cap (guarded by ``_lock``).
    """

    def __init__(
        self,
        opener: SegmentOpener,
        states: dict[QueueId, QueueState],
        max_open: int,
        clock: Callable[[], float],
    ) -> None:
        self._opener = opener
        # The store's queues, looked up (never changed) to lock an eviction's victim.
        self._states = states
        self.max_open = max_open
        self._clock = clock
        self._open: dict[tuple[QueueId, int], SegmentHandle] = {}
        self._lock = threading.Lock()
        # Called with a segment of ``state.unverified`` just opened (its count was
        # taken from segments.json): checks it, raising QueueCorruptError on loss.
        self.on_first_open: Callable[[QueueState, int, MpmcQueue], None] | None = None

    def get(self, state: QueueState, number: int, now: float | None = None) -> MpmcQueue:
        """An open handle on segment ``number``; the caller holds ``state.lock``.

        ``now``: the store's clock, when the caller has just read it.
        """
        entry = state.handles.get(number)
        if now is None:
            now = self._clock()
        if entry is not None:
            entry.last_used = now
            return entry.queue
        path = segment_dir(state.path, number)
        if state.items.get(number) and not path.is_dir():
            # RocksDB would create an empty segment in its place, and the
            # messages counted in it would vanish without a word.
            raise DLQStorageError(
                f"segment directory {path} of queue {state.queue} was removed while the "
                "engine ran; retry: the next operation recreates the queue"
            )
        path.parent.mkdir(parents=True, exist_ok=True)
        entry = SegmentHandle(self._opener.open(path, state.queue), now, path=str(path))
        st = os.stat(path)
        entry.dev, entry.ino, entry.checked_at = st.st_dev, st.st_ino, now
        state.handles[number] = entry
        # Opening rewrites RocksDB files (the log is flushed): measure the size again.
        state.disk_measured_at = float("-inf")
        with self._lock:
            self._open[(state.queue, number)] = entry
            self._evict_over_cap(keep=state.queue)
        if number in state.unverified and self.on_first_open is not None:
            self.on_first_open(state, number, entry.queue)
        return entry.queue

    def _evict_over_cap(self, keep: QueueId) -> None:
        """Close handles beyond the cap, idle ones first, then LRU; holds ``_lock``.

        Idle: not the segment a queue holding messages is read or written in
        (one a peek or an export opened). Closing one that is means reopening
        it (10 to 15 ms) at the queue's next enqueue or read. A victim's queue
        lock is only tried, never waited for, so two queues evicting each
        other's handles cannot deadlock; a busy queue is skipped.
        """
        excess = len(self._open) - self.max_open
        if excess <= 0:
            return
        # Read without the victims' locks: a stale value only changes which
        # handle goes first.
        by_need = sorted(
            self._open.items(),
            key=lambda item: (_serves_work(self._states, *item[0]), item[1].last_used),
        )
        for (queue, number), entry in by_need:
            if excess <= 0:
                break
            if queue == keep:
                continue
            victim = self._states.get(queue)
            if victim is None or not entry.is_current():
                # Its directory was removed: the open handle is the only way left
                # to its messages; the queue's next operation copies them back.
                continue
            if not victim.lock.acquire(blocking=False):
                continue
            try:
                self._drop(victim, number)
                excess -= 1
            finally:
                victim.lock.release()

    def _drop(self, state: QueueState, number: int) -> None:
        """Forget one handle (closing it); holds ``_lock`` and the queue's lock."""
        self._open.pop((state.queue, number), None)
        state.handles.pop(number, None)
        if not state.handles:
            close_cursor(state)

    def close(self, state: QueueState, number: int) -> None:
        with self._lock:
            self._drop(state, number)

    def close_all(self, state: QueueState) -> None:
        """Close every handle of the queue, and its cursor file."""
        with self._lock:
            for number in list(state.handles):
                self._drop(state, number)
        close_cursor(state)

    def close_idle(self, idle_seconds: float) -> int:
        """Close handles unused for ``idle_seconds``, unless they serve pending work.

        A segment stays open while its queue holds messages and it is the one
        being read or written: closing it would only mean reopening it at the
        next enqueue or replay. Other segments (opened by a peek or an export,
        or of drained queues) close once idle.
        """
        reserve = self._opener.reserve
        if reserve.released and not reserve.restore():
            # The disk is full: reopening needs room, an open handle does not.
            return 0
        cutoff = self._clock() - idle_seconds
        closed = 0
        with self._lock:
            for (queue, number), entry in list(self._open.items()):
                if entry.last_used > cutoff or not entry.is_current():
                    continue  # a removed directory's handle stays open: see _evict_over_cap
                owner = self._states.get(queue)
                if owner is None or not owner.lock.acquire(blocking=False):
                    continue
                try:
                    if _serves_work(self._states, queue, number):
                        continue
                    self._drop(owner, number)
                    closed += 1
                finally:
                    owner.lock.release()
        return closed

    def fail(self, state: QueueState, action: str, error: RuntimeError) -> DLQError:
        """Turn a rocksq error into ours; the handles are dead, so reload on next use."""
        self.close_all(state)
        state.loaded = False
        text = str(error)
        # rocksq's read errors carry no cause; a nearly full disk is the likely one.
        if is_no_space(text) or disk_low(self._opener.base_path):
            return DLQFullError("disk_full", f"{action} failed: {text}", state.queue)
        return DLQStorageError(f"{action} on queue {state.queue} failed: {text}")


def _serves_work(states: dict[QueueId, QueueState], queue: QueueId, number: int) -> bool:
    """True for the segment a queue holding messages is read or written in.

    Closing it would only mean reopening it at the queue's next enqueue or replay.
    """
    state = states.get(queue)
    return (
        state is not None
        and state.total > 0
        and number in (state.read_segment, state.write_segment)
    )
