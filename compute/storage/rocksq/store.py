"""The embedded queue store: each queue is a short series of rocksq MpmcQueue segments.

Why this shape: rocksq's ``pop`` deletes what it
returns, so it cannot back an acknowledged read. ``MpmcQueue.next`` reads
without deleting, but its label cursor moves at read time, not at ack time.
So each queue directory holds:

* ``seg_<n>/``: MpmcQueue segments, appended to in order; a new one starts
  when the last is full, and a segment directory is deleted only once every
  message in it is acknowledged. Each enqueue call is stored as one item, a
  frame of its payloads (``frames.py``), so positions count messages, not
  items.
* ``cursor.json``: the acknowledgement point ``(segment, acked)``: every
  segment below ``segment`` is fully acknowledged, and so are the first
  ``acked`` messages of ``segment``. It is rewritten after each ack (which
  comes after the destination committed) with one small in-place write of
  a fixed-size, checksummed record.
* ``queue.json``: the queue's identity, so any name maps back from disk.

After a crash, the reader label is reset and reading restarts from the
oldest item of the cursor's segment, skipping ``acked`` messages (the rest
of a frame cut by the cursor is kept): unacknowledged messages come back, in
order, and acknowledged ones never do.

Only this package imports rocksq; this module is the ``QueueStore`` it
implements, and wires up the modules beside it, one job each.
"""

from __future__ import annotations

import logging
import os
import shutil
import threading
import time
from collections.abc import Callable, Collection, Iterator
from pathlib import Path

from compute.errors import DLQError, DLQStorageError, LeaseError, QueueCorruptError
from compute.queue_id import QueueId
from compute.storage.base import (
    QueueLimits,
    QueueStore,
    StoredStats,
    StoreLease,
    acked_count,
    check_oldest,
    check_read,
    lease_position,
)
from compute.storage.frames import encode_frames
from compute.storage.rocksq.base_lock import prepare_base_path, take_lock
from compute.storage.rocksq.cursor import close_cursor, cursor_current, write_cursor
from compute.storage.rocksq.diagnosis import WRITE_ROOM
from compute.storage.rocksq.discovery import QUEUE_FILE, find_queues, write_queue_file
from compute.storage.rocksq.disk_reserve import DiskReserve
from compute.storage.rocksq.drained import DrainedQueues
from compute.storage.rocksq.durability import QueueDurability
from compute.storage.rocksq.handles import HandleCache
from compute.storage.rocksq.limits import RESERVE_FILE, LimitGuard
from compute.storage.rocksq.open_budget import open_cap
from compute.storage.rocksq.opener import SegmentOpener
from compute.storage.rocksq.quarantine import Quarantine
from compute.storage.rocksq.reader import SegmentReader, give_back
from compute.storage.rocksq.salvage import Salvage
from compute.storage.rocksq.segments import (
    Segments,
    forget_tail_count,
    record_written_counts,
    remove_segment_dir,
)
from compute.storage.rocksq.state import QueueState
from config.dlq_config import FsyncMode

logger = logging.getLogger(__name__)

# What opening a segment writes besides flushing its log (measured: 0.1 to 0.3 MiB,
# a new MANIFEST and OPTIONS file, the info log, a small table file).
_REOPEN_ROOM = 1 << 20
# RocksDB's write buffer (rocksq's default): a larger log is flushed by RocksDB itself.
_WAL_CAP = 64 << 20
# Bytes a rocksq item adds to the log beyond its own (key, record header).
_ITEM_OVERHEAD = 64
# How often (seconds) an enqueue checks that its segment directory is still there.
_PRESENCE_TTL = 0.001


class RocksqStore(QueueStore):
    """Queues of payloads under ``base_path``, one directory per ``QueueId``."""

    def __init__(
        self,
        base_path: Path,
        limits: QueueLimits | None = None,
        *,
        max_open_handles: int | None = None,
        segment_max_messages: int = 100_000,
        clock: Callable[[], float] = time.monotonic,
        lock_base_path: bool = True,
        fsync: FsyncMode = FsyncMode.OFF,
        fsync_interval: float = 0.2,
    ) -> None:
        self.base_path = Path(base_path)
        self.segment_max_messages = segment_max_messages
        self._clock = clock
        self._states: dict[QueueId, QueueState] = {}
        self._states_lock = threading.Lock()
        self._closed = False
        self._lock_fd: int | None = None
        # Called (with the queue's lock held) after a removed queue directory
        # was recreated, so that the owner can write its own side files again.
        self.on_recreated: Callable[[QueueId], None] | None = None
        # The queues listed by ``list_queues``: found on disk at start-up and at
        # each ``rescan``, plus those created since; listing never touches the disk.
        self._known: set[QueueId] = set()
        prepare_base_path(self.base_path)
        if lock_base_path:
            self._lock_fd = take_lock(self.base_path)
        self._reserve = DiskReserve(self.base_path / RESERVE_FILE, keep_free=WRITE_ROOM)
        if not self._reserve.grow(_REOPEN_ROOM):
            logger.warning(
                "DLQ disk nearly full, no room kept to reopen queues yet: path=%s free=%d",
                self.base_path,
                shutil.disk_usage(self.base_path).free,
            )
        self._limits = LimitGuard(self.base_path, limits or QueueLimits(), self._reserve)
        opener = SegmentOpener(self.base_path, self._reserve)
        # Every open segment handle, for the cap on open handles (file descriptors).
        self._handles = HandleCache(opener, self._states, open_cap(max_open_handles), clock)
        self._segments = Segments(opener, self._handles)
        self._durability = QueueDurability(self.base_path, fsync, fsync_interval)
        # The generation of each thread's latest enqueue: a pipeline's lane waits
        # for its own writes to be synced, not for another pipeline's.
        self._by_thread = threading.local()
        self._segments.before_remove = self._durability.before_remove
        self._quarantine = Quarantine(opener, self._handles, self._segments)
        self._salvage = Salvage(opener, self._handles, self._recreated)
        self._reader = SegmentReader(self._handles, self._segments, self._quarantine)
        self._drained = DrainedQueues(self.base_path, self._handles)
        if not self.rescan():
            self._reserve.shrink(_REOPEN_ROOM)  # grown by queues since drained and removed

    @property
    def quarantined(self) -> list[tuple[QueueId | str, Path, str]]:
        """Damaged queues moved aside: (queue, where its files are now, why); the
        queue is a relative path for a directory that names no queue."""
        return self._quarantine.moved

    # ------------------------------------------------------------ queue state

    def _state(self, queue: QueueId) -> QueueState:
        if self._closed:
            raise DLQStorageError("the DLQ store is closed")
        state = self._states.get(queue)
        if state is None:
            with self._states_lock:
                state = self._states.get(queue)
                if state is None:
                    state = QueueState(queue, self.base_path / queue.relative_path)
                    state.durable = self._durability.enabled
                    self._states[queue] = state
        return state

    def _loaded(self, state: QueueState) -> QueueState:
        """``state``, loaded from disk first if need be; the caller holds ``state.lock``."""
        if not state.loaded:
            try:
                self._segments.load(state)
            except QueueCorruptError as error:
                self._quarantine.reset(state, str(error))
        return state

    def _recreated(self, queue: QueueId) -> None:
        """A removed queue directory was recreated (its lock held): list it, tell the owner."""
        with self._states_lock:
            self._known.add(queue.main)
        if self.on_recreated is not None:
            try:
                self.on_recreated(queue)
            except Exception:  # the queue itself is recreated: the side files may lag
                logger.exception("restoring side files failed: queue=%s", queue)

    # ------------------------------------------------------------- operations

    def enqueue(self, queue: QueueId, payloads: list[bytes]) -> None:
        # The hot path of every enqueue, one message per call at worst: what
        # it needs is looked up once, and one clock reading serves the limits
        # and the handle's last use.
        count = len(payloads)
        if not count:
            return
        size = len(payloads[0]) if count == 1 else sum(map(len, payloads))
        state = self._state(queue)
        with state.lock:
            if not state.loaded:
                self._loaded(state)
            now = self._clock()
            self._limits.check(state, count, size, now)
            entry = None
            if state.segments:
                # Noticing that the directory was deleted or moved away (RocksDB
                # goes on writing into the deleted files without an error) costs
                # one stat, at most once per _PRESENCE_TTL: a stat per call made
                # single enqueues 20% slower. Messages written in between are not
                # lost: the open handle still reads them, and they are copied back.
                entry = state.handles.get(state.segments[-1])
                if entry is None:
                    self._salvage.ensure_present(state, "enqueue")
                    if state.segments and state.segments[-1] in state.unverified:
                        self._verify_tail(state)
                elif now - entry.checked_at >= _PRESENCE_TTL:
                    entry.checked_at = now
                    if not entry.is_current():
                        self._salvage.ensure_present(state, "enqueue")
                entry = None  # a rollover closes this handle: nothing may keep it open
            segments, counts = state.segments, state.counts
            if not segments or counts[segments[-1]] >= self.segment_max_messages:
                number = self._start_segment(state)
            else:
                number = segments[-1]
            handle = self._handles.get(state, number, now)
            if state.recorded_tail == number:
                forget_tail_count(state)  # once per load: see forget_tail_count
            frames = encode_frames(payloads)
            entry = state.handles[number]
            logged = entry.log_bytes + _ITEM_OVERHEAD * len(frames)
            logged += len(frames[0]) if len(frames) == 1 else sum(map(len, frames))
            # The next open must flush this log: keep room for that (a check per
            # batch, a syscall per MiB at most).
            if min(logged, _WAL_CAP) + _REOPEN_ROOM > self._reserve.size:
                self._limits.keep_reopen_room(state, min(logged, _WAL_CAP) + _REOPEN_ROOM)
            try:
                handle.add(frames)
            except RuntimeError as error:
                # The traceback keeps this frame, and the frame the handle: let
                # go of it, or the dead RocksDB stays open and locked.
                del handle, entry
                raise self._handles.fail(state, "enqueue", error) from None
            entry.log_bytes = logged
            generation = self._durability.wrote(state, number) if self._durability.enabled else 0
            counts[number] += count
            state.items[number] += len(frames)
            state.total += count
            state.bytes_since_measure += size
            # Unlocked add: see LimitGuard.written_since_free.
            self._limits.written_since_free += size
        if generation:  # with the queue's lock released, so writers share one sync
            self._by_thread.generation = generation
            self._durability.settle(generation)

    def _verify_tail(self, state: QueueState) -> None:
        """Open the write segment, checking its recorded count; a loss sets the queue aside."""
        try:
            self._handles.get(state, state.segments[-1])
        except QueueCorruptError as error:
            self._quarantine.reset(state, str(error))

    def _start_segment(self, state: QueueState) -> int:
        new_queue = not state.segments
        if new_queue:
            if state.cursor_fd is not None and not cursor_current(state):
                close_cursor(state)  # an empty queue's directory was removed
            self._drained.make_dir(state)  # never while an empty parent is removed
            write_queue_file(state, durable=self._durability.enabled)
            with self._states_lock:
                self._known.add(state.queue.main)
        else:
            full = state.segments[-1]
            if full != state.read_segment:
                # Nothing writes to it again, and the reader reaches it only after
                # every segment before it: an open handle would hold its memtable
                # (memory growing with the queue) for nothing until then.
                self._handles.close(state, full)
            # After the close, which writes RocksDB's files once more.
            self._durability.before_counts(state)
            record_written_counts(state)  # the current write segment is now complete
        number = state.next_segment
        self._durability.new_segment(state, number, new_queue)
        state.next_segment += 1
        state.segments.append(number)
        state.counts[number] = 0
        state.items[number] = 0
        if state.read_segment is None:
            state.read_segment, state.read_offset, state.read_items = number, 0, 0
        return number

    def read(self, queue: QueueId, max_items: int, *, ahead: bool = False) -> StoreLease:
        state = self._state(queue)
        with state.lock:
            check_read(queue, max_items, state.leases, ahead)
            self._loaded(state)
            self._salvage.ensure_present(state, "read")
            try:
                lease = self._reader.read_locked(state, max_items)
            except RuntimeError as error:  # topping up the buffer failed
                self._quarantine.on_read_error(state, error, "read")
                return StoreLease(state.queue, [], (0, 0))
            except QueueCorruptError as error:  # reopening a segment, or recounting it
                self._quarantine.reset(state, str(error))
                return StoreLease(state.queue, [], (0, 0))
            if lease.payloads:
                state.leases.append(lease)
            return lease

    def ack(self, lease: StoreLease, count: int | None = None) -> None:
        if not lease.payloads:
            return
        done = acked_count(lease, count)
        state = self._state(lease.queue)
        with state.lock:
            check_oldest(lease, state.leases)
            self._salvage.ensure_present(state, "ack")
            if not state.leases or state.leases[0] is not lease:
                raise LeaseError(
                    f"lease on {lease.queue} was lost with its removed directory; "
                    "its messages are delivered again"
                )
            number, start = lease.token
            number = state.renumbered.get(number, number)
            write_cursor(state, number, start + done, self._reserve)
            state.total -= done
            del state.leases[0]
            if done < len(lease.payloads):
                # The rest goes back to the head, as after a release, and a
                # read-ahead lease with it (it no longer follows acked data).
                give_back(state, lease.payloads[done:], start + done)
            elif (
                state.cursor_acked >= state.counts[number] and not state.buffer and not state.leases
            ):
                self._segments.retire_head(state)

    def release(self, lease: StoreLease) -> None:
        if not lease.payloads:
            return
        state = self._state(lease.queue)
        with state.lock:
            position = lease_position(lease, state.leases)
            give_back(state, [], lease.token[1], position)

    def peek(self, queue: QueueId, limit: int, *, newest: bool = False) -> list[bytes]:
        state = self._state(queue)
        with state.lock:
            self._loaded(state)
            if not state.segments or state.total <= 0 or limit < 1:
                return []
            self._salvage.ensure_present(state, "peek")
            return self._reader.peek(state, limit, newest)

    def scan(self, queue: QueueId, chunk: int = 1000) -> Iterator[list[bytes]]:
        """Stream the queue's unacknowledged payloads (export, find by id), unleased."""
        state = self._state(queue)
        with state.lock:
            self._loaded(state)
            self._salvage.ensure_present(state, "scan")
            plan = [
                (n, state.cursor_acked if n == state.cursor_segment else 0) for n in state.segments
            ]
        yield from self._reader.scan(state, plan, chunk)

    def stats(self, queue: QueueId) -> StoredStats:
        state = self._state(queue)
        with state.lock:
            self._loaded(state)
            on_disk = self._limits.queue_bytes(state, self._clock()) if state.path.exists() else 0
            return StoredStats(
                messages=state.total, bytes_on_disk=on_disk, segments=len(state.segments)
            )

    def count(self, queue: QueueId) -> int:
        state = self._state(queue)
        with state.lock:
            self._loaded(state)
            return state.total

    def list_queues(self) -> list[QueueId]:
        """The known queues, from memory: see ``rescan`` for what is on disk."""
        with self._states_lock:
            return sorted(self._known)

    def rescan(self) -> list[QueueId]:
        """Walk the base path for queues (made by another process, restored by hand).

        Directories that name no queue and hold messages are set aside here,
        at start-up and at each rescan, never by a listing. A queue this store
        holds messages of stays listed even if its directory is gone: its next
        operation recreates it.
        """
        found = find_queues(self.base_path, self._quarantine.set_aside_unidentified)
        with self._states_lock:
            held = [s for s in self._states.values() if s.loaded and s.segments]
            self._known = found | {s.queue.main for s in held}
            listed = sorted(self._known)
        for state in held:
            # A queue.json deleted by hand is written again: names cut for
            # length map back to their queue only through it.
            if not (state.path / QUEUE_FILE).exists() and state.lock.acquire(blocking=False):
                try:
                    if state.path.is_dir():
                        write_queue_file(state)
                except OSError as error:
                    logger.warning("queue.json not restored: queue=%s error=%s", state.queue, error)
                finally:
                    state.lock.release()
        return listed

    def queue_path(self, queue: QueueId) -> Path:
        return self.base_path / queue.relative_path

    def purge(self, queue: QueueId) -> int:
        state = self._state(queue)
        with state.lock:
            self._loaded(state)
            removed = state.total
            self._handles.close_all(state)
            for number in list(state.segments):
                remove_segment_dir(state, number)
            if state.path.exists():
                write_cursor(state, state.next_segment, 0, self._reserve)
            state.loaded = False
            self._segments.load(state)
            return removed

    def close_idle(self, idle_seconds: float) -> int:
        return self._handles.close_idle(idle_seconds)

    def remove_drained(
        self, queue: QueueId, idle: float, now: float | None = None, files: Collection[str] = ()
    ) -> bool:
        """Remove ``queue``'s directory if it stayed drained (both lanes) for ``idle`` seconds.

        Never waits: a queue in use is skipped. ``now`` is on the store's clock.
        """
        main, parked = self._state(queue.main), self._state(queue.parked)
        now = self._clock() if now is None else now
        if not main.lock.acquire(blocking=False):
            return False
        try:
            if not parked.lock.acquire(blocking=False):
                return False
            try:
                return self._drained.remove_if_idle(main, parked, idle, now, files, self._forget)
            finally:
                parked.lock.release()
        finally:
            main.lock.release()

    def _forget(self, queue: QueueId) -> None:
        with self._states_lock:
            self._known.discard(queue.main)
            if not self._known:
                # No queue is left to reopen: the room kept for the largest log
                # goes back (an enqueue lists its queue, under this lock, before
                # it writes, and grows the reserve again as it needs).
                self._reserve.shrink(_REOPEN_ROOM)

    def written_generation(self) -> int:
        group = self._durability.group
        return group.written if group.mode is FsyncMode.INTERVAL else 0

    def written_generation_of_this_thread(self) -> int:
        group = self._durability.group
        if group.mode is not FsyncMode.INTERVAL:
            return 0
        return int(getattr(self._by_thread, "generation", 0))

    def is_synced(self, generation: int) -> bool:
        return self._durability.group.is_synced(generation)

    def add_sync_listener(self, listener: Callable[[], None]) -> None:
        self._durability.group.add_listener(listener)

    def remove_sync_listener(self, listener: Callable[[], None]) -> None:
        self._durability.group.remove_listener(listener)

    def close(self) -> None:
        if self._closed:
            return
        for state in list(self._states.values()):
            with state.lock:
                if state.loaded and state.segments:
                    try:
                        # Closing the handles of a removed directory would lose
                        # what only they can still read.
                        self._salvage.ensure_present(state, "close")
                    except DLQError as error:
                        logger.error(
                            "DLQ queue not recovered at close: queue=%s %s", state.queue, error
                        )
                    self._durability.before_counts(state)
                    record_written_counts(state)
                self._handles.close_all(state)
                self._durability.closed(state)
                state.loaded = False
        self._durability.close()
        self._closed = True
        if self._lock_fd is not None:
            os.close(self._lock_fd)
            self._lock_fd = None
