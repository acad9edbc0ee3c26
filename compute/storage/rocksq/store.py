"""The embedded queue store: each queue is a short series of rocksq MpmcQueue segments.

Why this shape (DESIGN.md section 3): rocksq's ``pop`` deletes what it
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

Only this module imports rocksq.
"""

from __future__ import annotations

import errno
import fcntl
import json
import logging
import os
import re
import shutil
import threading
import time
import traceback
import zlib
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import rocksq
from rocksq.blocking import MpmcQueue

from compute.errors import (
    DLQError,
    DLQFullError,
    DLQStorageError,
    LeaseError,
    QueueCorruptError,
    QueueLockedError,
)
from compute.queue_id import DEST_PREFIX, SOURCE_PREFIX, TABLE_PREFIX, QueueId
from compute.storage.atomic_file import json_bytes, write_atomic
from compute.storage.base import QueueLimits, QueueStore, StoredStats, StoreLease
from compute.storage.disk_reserve import DiskReserve
from compute.storage.rocksq.frames import decode_frame, encode_frames, frame_count

logger = logging.getLogger(__name__)

READER_LABEL = "rosetta-reader"
PEEK_LABEL = "rosetta-peek"
COUNT_LABEL = "rosetta-count"
# Items fetched per rocksq call when counting or skipping whole frames.
_SCAN_CHUNK = 1000
SCAN_LABEL = "rosetta-scan"
CURSOR_FILE = "cursor.json"
QUARANTINE_DIR = "quarantine"
QUEUE_FILE = "queue.json"
# Items written to each segment, recorded at rollover and at a clean close, so
# that a segment found shorter at the next open (a truncated or deleted
# write-ahead log) is reported instead of losing its tail silently.
WRITTEN_FILE = "segments.json"
VERIFY_LABEL = "rosetta-verify"
SALVAGE_LABEL = "rosetta-salvage"
LOCK_FILE = ".rosetta.lock"
# Preallocated room given up to reopen queues on a full disk (see DiskReserve).
RESERVE_FILE = ".rosetta.reserve"
_SEGMENT_RE = re.compile(r"^seg_(\d{12})$")
# MpmcQueue TTL: 0 keeps items forever. Expiry is done by the manager, which
# counts and logs every expired message; RocksDB's TTL would drop them silently.
_NO_TTL = 0
# How long measured sizes may be reused before measuring again.
_DISK_BYTES_TTL = 1.0
_CURSOR_RECORD = 96
_FREE_DISK_TTL = 0.5
# Free room under which a failed RocksDB call is put down to a full disk, not damage.
_WRITE_ROOM = 1 << 20
# What opening a segment writes besides flushing its log (measured: 0.1 to 0.3 MiB,
# a new MANIFEST and OPTIONS file, the info log, a small table file).
_REOPEN_ROOM = 1 << 20
# RocksDB's write buffer (rocksq's default): a larger log is flushed by RocksDB itself.
_WAL_CAP = 64 << 20
# Bytes a rocksq item adds to the log beyond its own (key, record header).
_ITEM_OVERHEAD = 64
# How often (seconds) an enqueue checks that its segment directory is still there.
_PRESENCE_TTL = 0.001


def _segment_dir(queue_dir: Path, number: int) -> Path:
    return queue_dir / f"seg_{number:012d}"


@dataclass
class _Handle:
    queue: MpmcQueue
    last_used: float
    # Bytes added through this handle: its log, which the next open must flush.
    log_bytes: int = 0
    # The segment directory and its identity when opened: RocksDB writes through
    # its open descriptors even after the directory was deleted or moved away,
    # so one stat compared with these tells whether the files are still ours.
    path: str = ""
    dev: int = 0
    ino: int = 0
    checked_at: float = float("-inf")

    def is_current(self) -> bool:
        """True while ``path`` is still the directory this handle writes into."""
        try:
            st = os.stat(self.path)
        except OSError:
            return False
        return st.st_ino == self.ino and st.st_dev == self.dev


@dataclass
class _QueueState:
    """What the store knows about one queue; every field is guarded by ``lock``."""

    queue: QueueId
    path: Path
    lock: threading.RLock = field(default_factory=threading.RLock)
    loaded: bool = False
    segments: list[int] = field(default_factory=list)
    counts: dict[int, int] = field(default_factory=dict)  # messages per segment
    items: dict[int, int] = field(default_factory=dict)  # rocksq items (frames) per segment
    cursor_segment: int = 1
    cursor_acked: int = 0
    read_segment: int | None = None
    # Message position in ``read_segment`` of the next message to lease.
    read_offset: int = 0
    # Items of ``read_segment`` already fetched through the reader label.
    read_items: int = 0
    next_segment: int = 1
    total: int = 0
    # Segments whose reader label must be reset before the next read (after load).
    rewind: set[int] = field(default_factory=set)
    # Outstanding leases, oldest first: the reader's lease and, at most, one
    # read-ahead lease that follows it.
    leases: list[StoreLease] = field(default_factory=list)
    # Fetched but unleased payloads of ``read_segment``, from ``read_offset`` on:
    # the rest of a frame, or a released lease, served before reading further.
    buffer: list[bytes] = field(default_factory=list)
    disk_bytes: int = 0
    disk_measured_at: float = float("-inf")
    bytes_since_measure: int = 0
    # Open segment handles of this queue (also registered in the store's LRU).
    handles: dict[int, _Handle] = field(default_factory=dict)
    cursor_fd: int | None = None
    # (st_dev, st_ino) of the cursor file ``cursor_fd`` writes to.
    cursor_ident: tuple[int, int] = (0, 0)
    # Old segment number -> new one, after a removed directory was recreated:
    # leases handed out before still name the old numbers.
    renumbered: dict[int, int] = field(default_factory=dict)

    @property
    def write_segment(self) -> int | None:
        return self.segments[-1] if self.segments else None


class RocksqStore(QueueStore):
    """Queues of payloads under ``base_path``, one directory per ``QueueId``."""

    def __init__(
        self,
        base_path: Path,
        limits: QueueLimits | None = None,
        *,
        max_open_handles: int = 32,
        segment_max_items: int = 100_000,
        clock: Callable[[], float] = time.monotonic,
        lock_base_path: bool = True,
    ) -> None:
        self.base_path = Path(base_path)
        self.limits = limits or QueueLimits()
        self.max_open_handles = max_open_handles
        self.segment_max_items = segment_max_items
        self._clock = clock
        self._states: dict[QueueId, _QueueState] = {}
        self._states_lock = threading.Lock()
        # Every open segment handle, for the cap on open handles (file descriptors).
        self._open: dict[tuple[QueueId, int], _Handle] = {}
        self._handles_lock = threading.Lock()
        self._free_lock = threading.Lock()
        self._free_bytes = 0
        self._free_measured_at = float("-inf")
        self._written_since_free = 0
        self._closed = False
        self._lock_fd: int | None = None
        # Damaged queues moved aside: (queue, where its files are now, why); the
        # queue is a relative path for a directory that names no queue.
        self.quarantined: list[tuple[QueueId | str, Path, str]] = []
        # Called (with the queue's lock held) after a removed queue directory
        # was recreated, so that the owner can write its own side files again.
        self.on_recreated: Callable[[QueueId], None] | None = None
        # The queues listed by ``list_queues``: found on disk at start-up and at
        # each ``rescan``, plus those created since; listing never touches the disk.
        self._known: set[QueueId] = set()
        self._prepare_base_path()
        if lock_base_path:
            self._lock_fd = self._lock_base_path()
        self._reserve = DiskReserve(self.base_path / RESERVE_FILE, keep_free=_WRITE_ROOM)
        if not self._reserve.grow(_REOPEN_ROOM):
            logger.warning(
                "DLQ disk nearly full, no room kept to reopen queues yet: path=%s free=%d",
                self.base_path,
                shutil.disk_usage(self.base_path).free,
            )
        self.rescan()

    # ----------------------------------------------------------------- set-up

    def _prepare_base_path(self) -> None:
        try:
            self.base_path.mkdir(parents=True, exist_ok=True)
        except OSError as error:
            raise DLQStorageError(
                f"DLQ base path {str(self.base_path)!r} cannot be created: {error.strerror}"
            ) from None
        if not self.base_path.is_dir():
            raise DLQStorageError(f"DLQ base path {str(self.base_path)!r} is not a directory")
        if not os.access(self.base_path, os.W_OK | os.X_OK):
            raise DLQStorageError(f"DLQ base path {str(self.base_path)!r} is not writable")

    def _lock_base_path(self) -> int:
        """One process per base path: RocksDB would refuse a second opener queue by queue."""
        path = self.base_path / LOCK_FILE
        fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = os.pread(fd, 64, 0).decode(errors="replace").strip() or "unknown"
            os.close(fd)
            raise QueueLockedError(
                f"DLQ base path {str(self.base_path)!r} is in use by another process "
                f"(pid {holder}); stop it, or go through its admin API"
            ) from None
        os.ftruncate(fd, 0)
        os.pwrite(fd, str(os.getpid()).encode(), 0)
        return fd

    # ------------------------------------------------------------ queue state

    def _state(self, queue: QueueId) -> _QueueState:
        if self._closed:
            raise DLQStorageError("the DLQ store is closed")
        state = self._states.get(queue)
        if state is None:
            with self._states_lock:
                state = self._states.get(queue)
                if state is None:
                    state = _QueueState(queue, self.base_path / queue.relative_path)
                    self._states[queue] = state
        return state

    def _loaded(self, state: _QueueState) -> _QueueState:
        """``state``, loaded from disk first if need be; the caller holds ``state.lock``."""
        if not state.loaded:
            try:
                self._load(state)
            except QueueCorruptError as error:
                self._set_aside(state, str(error))
                self._load(state)
        return state

    def _set_aside(self, state: _QueueState, reason: str) -> Path:
        """Move a damaged queue directory under ``<base>/quarantine/``, keeping every file.

        Crash-looping on a damaged queue would stop every other queue too; its
        files are kept for an operator (or a recovery tool), the queue starts
        empty, and the move is logged, listed by ``quarantined()`` and
        explained in the moved directory's ``reason.json``.
        """
        self._close_handles_of(state)
        target = self._move_to_quarantine(state.path, state.queue, reason)
        logger.error(
            "damaged DLQ queue set aside, it starts empty: queue=%s moved_to=%s reason=%s",
            state.queue,
            target,
            reason,
        )
        state.loaded = False
        return target

    def _move_to_quarantine(self, path: Path, queue: QueueId | str, reason: str) -> Path:
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
        self.quarantined.append((queue, target, reason))
        return target

    def _unidentified(self, dest_dir: Path) -> None:
        """A ``dest_*`` directory no queue maps to: set it aside if it holds messages.

        Left in place, its messages would never be replayed and nobody would
        be told; an empty one (a stray directory) is only logged.
        """
        try:
            holds_data = any(
                entry.is_dir(follow_symlinks=False)
                and (_SEGMENT_RE.match(entry.name) or entry.name == "parked")
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
            target = self._move_to_quarantine(
                dest_dir, str(dest_dir.relative_to(self.base_path)), reason
            )
        except OSError as error:
            logger.error(
                "unidentified DLQ directory cannot be moved: path=%s error=%s", dest_dir, error
            )
            return
        logger.error(
            "unidentified DLQ queue directory set aside: path=%s moved_to=%s", dest_dir, target
        )

    def _load(self, state: _QueueState) -> None:
        """Rebuild the queue's state from its directory (start-up, or after an error)."""
        self._close_handles_of(state)
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
                if entry.is_dir() and (m := _SEGMENT_RE.match(entry.name))
            )
        cursor = self._read_cursor(state)
        if cursor is None:
            cursor = (state.segments[0] if state.segments else 1, 0)
        state.cursor_segment, state.cursor_acked = cursor
        # Segments below the cursor are fully acknowledged: a crash came between
        # writing the cursor and deleting the directory.
        for number in [n for n in state.segments if n < state.cursor_segment]:
            self._remove_segment_dir(state, number)
        state.segments = [n for n in state.segments if n >= state.cursor_segment]
        for number in state.segments:
            state.items[number], state.counts[number] = self._count_segment(state, number)
        self._check_written_counts(state)
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
            if not self._retire_head(state):
                break

    def _read_cursor(self, state: _QueueState) -> tuple[int, int] | None:
        path = state.path / CURSOR_FILE
        try:
            data = json.loads(path.read_bytes())
            segment, acked = int(data["segment"]), int(data["acked"])
            if data["crc"] != _cursor_crc(segment, acked):
                raise ValueError("checksum mismatch")
            if segment < 1 or acked < 0:
                raise ValueError("negative position")
            return segment, acked
        except FileNotFoundError:
            return None
        except (OSError, ValueError, KeyError, TypeError) as error:
            # Falling back to the oldest segment re-delivers acknowledged
            # messages (duplicates, which destinations absorb) but loses none.
            logger.warning(
                "unreadable DLQ cursor, replaying the queue from its oldest message: "
                "queue=%s file=%s error=%s",
                state.queue,
                path,
                error,
            )
            return None

    def _write_cursor(self, state: _QueueState, segment: int, acked: int) -> None:
        """Record the acknowledgement point with one small in-place write.

        A single ``pwrite`` of one fixed-size record cannot be torn by a process
        crash, and avoids a rename per ack (slow on overlay filesystems). The
        checksum catches a record torn by an OS crash; the reader then falls
        back to re-delivering, never to skipping.
        """
        record = json.dumps(
            {"segment": segment, "acked": acked, "crc": _cursor_crc(segment, acked)}
        )
        data = record.ljust(_CURSOR_RECORD - 1).encode() + b"\n"
        if state.cursor_fd is None:
            state.cursor_fd = os.open(state.path / CURSOR_FILE, os.O_RDWR | os.O_CREAT, 0o644)
            st = os.fstat(state.cursor_fd)
            state.cursor_ident = (st.st_dev, st.st_ino)
        try:
            os.pwrite(state.cursor_fd, data, 0)
        except OSError as error:
            # A new cursor file needs a block: on a full disk, from the reserve.
            if error.errno != errno.ENOSPC or not self._release_reserve(state.path):
                raise
            os.pwrite(state.cursor_fd, data, 0)
        state.cursor_segment, state.cursor_acked = segment, acked

    def _close_cursor(self, state: _QueueState) -> None:
        if state.cursor_fd is not None:
            os.close(state.cursor_fd)
            state.cursor_fd = None

    def _write_queue_file(self, state: _QueueState) -> None:
        path = state.path / QUEUE_FILE
        if path.exists():
            return
        # A lone surrogate has no UTF-8 form: json_bytes then writes \u escapes,
        # and json_fields' exact_names keep what they cannot tell apart.
        write_atomic(path, json_bytes(state.queue.json_fields()))

    def _count_segment(self, state: _QueueState, number: int) -> tuple[int, int]:
        """``(items, messages)`` of a segment; reads every item's frame header once."""
        handle = self._open_raw(_segment_dir(state.path, number), state.queue)
        try:
            items = int(handle.len)
            if not items:
                return 0, 0
            if COUNT_LABEL in handle.labels:
                handle.remove_label(COUNT_LABEL)
            messages = seen = 0
            while seen < items:
                chunk, _ = handle.next(
                    COUNT_LABEL, rocksq.StartPosition.Oldest, min(_SCAN_CHUNK, items - seen)
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
            if _is_corruption(text) or not (_is_no_space(text) or self._disk_low()):
                raise QueueCorruptError(
                    f"queue {state.queue} is damaged (corrupt RocksDB data): "
                    f"counting segment {number} failed: {text}"
                ) from None
            raise DLQFullError(
                "disk_full", f"cannot count queue {state.queue}: {text}", state.queue
            ) from None
        finally:
            del handle

    def _record_written_counts(self, state: _QueueState) -> None:
        """Record how many items each segment holds (at rollover and clean close).

        Items leave a segment only with the whole directory, so a segment
        holding fewer items at the next open lost them; see
        ``_check_written_counts``. Not on every enqueue: the hot path stays as
        it is, so loss is detected only up to the last rollover or clean close.
        """
        data = {"written": {str(n): state.counts[n] for n in state.segments}}
        try:
            write_atomic(state.path / WRITTEN_FILE, json_bytes(data))
        except OSError as error:  # a full disk at close: detection degrades, nothing else
            logger.warning("segment counts not recorded: queue=%s error=%s", state.queue, error)

    def _check_written_counts(self, state: _QueueState) -> None:
        """Raise ``QueueCorruptError`` when a segment lost unacknowledged items since recorded.

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
                    f"segment {number} {where} of {count} items written "
                    f"({lost} unacknowledged lost)"
                )
        if losses:
            raise QueueCorruptError(
                f"queue {state.queue} is damaged: {'; '.join(losses)}; its write-ahead log "
                "was probably truncated or deleted"
            )

    def _on_read_error(self, state: _QueueState, error: RuntimeError, action: str) -> None:
        """After a failed read or peek: set the queue aside if its data is damaged, else raise.

        Damaged data blocks pass the open and fail only when read, and rocksq
        then says no more than "Failed to retrieve items"; a dead handle (after
        ENOSPC) says the same. Reading every segment again through fresh
        handles tells the two apart.
        """
        text = str(error)
        # The traceback's frames (``_rewind``'s among them) still hold the failed
        # handle, and with it RocksDB's lock: let go before reopening.
        traceback.clear_frames(error.__traceback__)
        if _is_corruption(text) or (not self._disk_low() and self._unreadable(state)):
            self._set_aside(
                state,
                f"queue {state.queue} is damaged (corrupt RocksDB data): {action} failed: {text}",
            )
            self._load(state)
            return
        raise self._fail(state, action, error) from None

    def _unreadable(self, state: _QueueState) -> bool:
        """True when a fresh handle cannot read some segment of the queue to its end."""
        self._close_handles_of(state)
        for number in list(state.segments):
            try:
                handle = self._open_raw(_segment_dir(state.path, number), state.queue)
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
                return not (_is_no_space(str(failure)) or self._disk_low())
            finally:
                del handle
        # Every item was readable: the next use reloads (and rewinds) the queue.
        state.loaded = False
        return False

    # ------------------------------------------------- removed directories

    def _segment_current(self, state: _QueueState, number: int) -> bool:
        """False when segment ``number``'s directory was removed or replaced under us."""
        entry = state.handles.get(number)
        if entry is not None:
            return entry.is_current()
        return not state.items.get(number) or _segment_dir(state.path, number).is_dir()

    def _cursor_current(self, state: _QueueState) -> bool:
        try:
            st = os.stat(state.path / CURSOR_FILE)
        except OSError:
            return False
        return (st.st_dev, st.st_ino) == state.cursor_ident

    def _ensure_present(self, state: _QueueState, action: str) -> None:
        """Recreate the queue if its directory, a segment or its cursor file was removed.

        The caller holds ``state.lock`` and the queue is loaded. Costs one stat
        per segment (and one for the cursor file): per batch, never per message.
        """
        removed = [n for n in state.segments if not self._segment_current(state, n)]
        if removed:
            self._recover_removed(state, action, removed)
            return
        if state.cursor_fd is not None and not self._cursor_current(state):
            self._close_cursor(state)
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
            self._write_cursor(state, state.cursor_segment, state.cursor_acked)

    def _recover_removed(self, state: _QueueState, action: str, removed: list[int]) -> None:
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
        self._close_cursor(state)  # it may write into a deleted file
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
                    source = self._open_raw(_segment_dir(state.path, number), queue)
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
            self._close_handle(state, number)
        self._rebuild_after_copy(state, old, mapping, counts, items)
        self._write_cursor(state, state.cursor_segment, state.cursor_acked)
        self._write_queue_file(state)
        if state.segments:
            self._record_written_counts(state)
        for number in old:
            if number not in removed:
                self._remove_segment_dir(state, number)  # copied, and below the cursor now
        with self._states_lock:
            self._known.add(queue.main)
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
        if self.on_recreated is not None:
            try:
                self.on_recreated(queue)
            except Exception:  # the queue itself is recreated: the side files may lag
                logger.exception("restoring side files failed: queue=%s", queue)

    def _copy_segment(self, state: _QueueState, source: MpmcQueue, number: int) -> tuple[int, int]:
        """Copy every item of ``source`` into new segment ``number``: ``(items, messages)``."""
        target = self._handle(state, number)
        copied_items = copied = 0
        try:
            if SALVAGE_LABEL in source.labels:
                source.remove_label(SALVAGE_LABEL)
            while True:
                chunk, _ = source.next(SALVAGE_LABEL, rocksq.StartPosition.Oldest, _SCAN_CHUNK)
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
        state: _QueueState,
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
        state.total = sum(counts.values()) - acked
        state.disk_measured_at = float("-inf")

    # ---------------------------------------------------------------- handles

    def _open_raw(self, path: Path, queue: QueueId) -> MpmcQueue:
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
            if _is_corruption(text):
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
            if not _is_no_space(str(error)):
                raise
            _remove_new_files(path, before)
            if not self._release_reserve(path):
                raise
        try:
            return MpmcQueue(str(path), _NO_TTL)
        except RuntimeError as error:
            if _is_no_space(str(error)):
                _remove_new_files(path, before)
            raise

    def _release_reserve(self, path: Path) -> bool:
        """Give up the reserved room so that replay can go on; False if there was none."""
        freed = self._reserve.release()
        if freed:
            logger.warning(
                "DLQ disk full, room kept for replay released: path=%s freed=%d; "
                "enqueues are refused until it can be taken back",
                path,
                freed,
            )
        return bool(freed)

    def _keep_reopen_room(self, state: _QueueState, size: int) -> None:
        """Grow (or take back) the reserve to ``size`` bytes, or refuse the enqueue.

        Data the store could not reopen on a full disk could not be replayed
        either: a batch is accepted only while its log's flush is covered.
        """
        if not self._reserve.grow(max(size, self._reserve.wanted)):
            free = shutil.disk_usage(self.base_path).free
            raise DLQFullError(
                "disk_full",
                f"No space left on device for the DLQ under {self.base_path}: {free} bytes free, "
                f"and {self._reserve.wanted} bytes ({RESERVE_FILE}) must stay available to reopen "
                "the queues; batch refused until replay or the operator frees room",
                state.queue,
            )

    def _handle(self, state: _QueueState, number: int, now: float | None = None) -> MpmcQueue:
        """An open handle on segment ``number``; the caller holds ``state.lock``.

        ``now``: the store's clock, when the caller has just read it.
        """
        entry = state.handles.get(number)
        if now is None:
            now = self._clock()
        if entry is not None:
            entry.last_used = now
            return entry.queue
        path = _segment_dir(state.path, number)
        if state.items.get(number) and not path.is_dir():
            # RocksDB would create an empty segment in its place, and the
            # messages counted in it would vanish without a word.
            raise DLQStorageError(
                f"segment directory {path} of queue {state.queue} was removed while the "
                "engine ran; retry: the next operation recreates the queue"
            )
        path.parent.mkdir(parents=True, exist_ok=True)
        entry = _Handle(self._open_raw(path, state.queue), now, path=str(path))
        st = os.stat(path)
        entry.dev, entry.ino, entry.checked_at = st.st_dev, st.st_ino, now
        state.handles[number] = entry
        with self._handles_lock:
            self._open[(state.queue, number)] = entry
            self._evict_over_cap(keep=state.queue)
        return entry.queue

    def _evict_over_cap(self, keep: QueueId) -> None:
        """Close least recently used handles beyond the cap; holds ``_handles_lock``.

        A victim's queue lock is only tried, never waited for, so two queues
        evicting each other's handles cannot deadlock; a busy queue is skipped.
        """
        excess = len(self._open) - self.max_open_handles
        if excess <= 0:
            return
        by_age = sorted(self._open.items(), key=lambda item: item[1].last_used)
        for (queue, number), entry in by_age:
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
                self._drop_handle(victim, number)
                excess -= 1
            finally:
                victim.lock.release()

    def _drop_handle(self, state: _QueueState, number: int) -> None:
        """Forget one handle (closing it); holds ``_handles_lock`` and the queue's lock."""
        self._open.pop((state.queue, number), None)
        state.handles.pop(number, None)
        if not state.handles:
            self._close_cursor(state)

    def _close_handle(self, state: _QueueState, number: int) -> None:
        with self._handles_lock:
            self._drop_handle(state, number)

    def _close_handles_of(self, state: _QueueState) -> None:
        with self._handles_lock:
            for number in list(state.handles):
                self._drop_handle(state, number)
        self._close_cursor(state)

    def _fail(self, state: _QueueState, action: str, error: RuntimeError) -> DLQError:
        """Turn a rocksq error into ours; the handles are dead, so reload on next use."""
        self._close_handles_of(state)
        state.loaded = False
        text = str(error)
        # rocksq's read errors carry no cause; a nearly full disk is the likely one.
        if _is_no_space(text) or self._disk_low():
            return DLQFullError("disk_full", f"{action} failed: {text}", state.queue)
        return DLQStorageError(f"{action} on queue {state.queue} failed: {text}")

    def open_handle_count(self) -> int:
        with self._handles_lock:
            return len(self._open)

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
            self._check_limits(state, count, size, now)
            entry = None
            if state.segments:
                # Noticing that the directory was deleted or moved away (RocksDB
                # goes on writing into the deleted files without an error) costs
                # one stat, at most once per _PRESENCE_TTL: a stat per call made
                # single enqueues 20% slower. Messages written in between are not
                # lost: the open handle still reads them, and they are copied back.
                entry = state.handles.get(state.segments[-1])
                if entry is None:
                    self._ensure_present(state, "enqueue")
                elif now - entry.checked_at >= _PRESENCE_TTL:
                    entry.checked_at = now
                    if not entry.is_current():
                        self._ensure_present(state, "enqueue")
            segments, counts = state.segments, state.counts
            if not segments or counts[segments[-1]] >= self.segment_max_items:
                number = self._start_segment(state)
            else:
                number = segments[-1]
            handle = self._handle(state, number, now)
            frames = encode_frames(payloads)
            entry = state.handles[number]
            logged = entry.log_bytes + _ITEM_OVERHEAD * len(frames)
            logged += len(frames[0]) if len(frames) == 1 else sum(map(len, frames))
            # The next open must flush this log: keep room for that (a check per
            # batch, a syscall per MiB at most).
            if min(logged, _WAL_CAP) + _REOPEN_ROOM > self._reserve.size:
                self._keep_reopen_room(state, min(logged, _WAL_CAP) + _REOPEN_ROOM)
            try:
                handle.add(frames)
            except RuntimeError as error:
                # The traceback keeps this frame, and the frame the handle: let
                # go of it, or the dead RocksDB stays open and locked.
                del handle, entry
                raise self._fail(state, "enqueue", error) from None
            entry.log_bytes = logged
            counts[number] += count
            state.items[number] += len(frames)
            state.total += count
            state.bytes_since_measure += size
            # Unlocked add: a lost update only makes the free-disk estimate
            # slightly optimistic until the next measurement (<= 0.5 s).
            self._written_since_free += size

    def _start_segment(self, state: _QueueState) -> int:
        if not state.segments:
            if state.cursor_fd is not None and not self._cursor_current(state):
                self._close_cursor(state)  # an empty queue's directory was removed
            state.path.mkdir(parents=True, exist_ok=True)
            self._write_queue_file(state)
            with self._states_lock:
                self._known.add(state.queue.main)
        else:
            self._record_written_counts(state)  # the current write segment is now complete
        number = state.next_segment
        state.next_segment += 1
        state.segments.append(number)
        state.counts[number] = 0
        state.items[number] = 0
        if state.read_segment is None:
            state.read_segment, state.read_offset, state.read_items = number, 0, 0
        return number

    def _check_limits(self, state: _QueueState, count: int, size: int, now: float) -> None:
        limits = self.limits
        if limits.max_messages and state.total + count > limits.max_messages:
            raise DLQFullError(
                "max_queue_messages",
                f"{state.total} messages queued, limit {limits.max_messages} "
                f"(DLQ_MAX_QUEUE_MESSAGES); batch of {count} refused",
                state.queue,
            )
        if limits.max_bytes:
            used = self._queue_bytes(state, now)
            if used + size > limits.max_bytes:
                raise DLQFullError(
                    "max_queue_bytes",
                    f"{used} bytes queued, limit {limits.max_bytes} (DLQ_MAX_QUEUE_BYTES); "
                    f"batch of {size} bytes refused",
                    state.queue,
                )
        if limits.min_free_disk_bytes:
            free = self._free_disk_bytes(now)
            if free - size < limits.min_free_disk_bytes:
                raise DLQFullError(
                    "min_free_disk",
                    f"{free} bytes free under {self.base_path}, floor "
                    f"{limits.min_free_disk_bytes} (DLQ_MIN_FREE_DISK_MB); batch refused",
                    state.queue,
                )

    def _queue_bytes(self, state: _QueueState, now: float) -> int:
        if now - state.disk_measured_at >= _DISK_BYTES_TTL:
            state.disk_bytes = _tree_size(state.path)
            state.disk_measured_at = now
            state.bytes_since_measure = 0
        return state.disk_bytes + state.bytes_since_measure

    def _disk_low(self) -> bool:
        """True when the base path has too little room left for RocksDB's small writes.

        Called only after a failure: rocksq reports a failed read as "Failed
        to retrieve items" whatever the cause, and a read writes too (the
        label's new position), so on a full disk it fails as a damaged block
        does. Damage is concluded only while there is room.
        """
        try:
            return shutil.disk_usage(self.base_path).free < _WRITE_ROOM
        except OSError:
            return True

    def _free_disk_bytes(self, now: float) -> int:
        with self._free_lock:
            if now - self._free_measured_at >= _FREE_DISK_TTL:
                self._free_bytes = shutil.disk_usage(self.base_path).free
                self._free_measured_at = now
                self._written_since_free = 0
            return self._free_bytes - self._written_since_free

    def read(self, queue: QueueId, max_items: int, *, ahead: bool = False) -> StoreLease:
        if max_items < 1:
            raise ValueError("max_items must be at least 1")
        state = self._state(queue)
        with state.lock:
            self._loaded(state)
            if len(state.leases) > (1 if ahead else 0):
                raise LeaseError(
                    f"queue {queue} already has an outstanding lease"
                    + (" and a read-ahead lease" if ahead else "")
                )
            self._ensure_present(state, "read")
            try:
                lease = self._read_locked(state, max_items)
            except RuntimeError as error:  # topping up the buffer failed
                self._on_read_error(state, error, "read")
                return StoreLease(state.queue, [], (0, 0))
            except QueueCorruptError as error:  # reopening a segment, or recounting it
                self._set_aside(state, str(error))
                self._load(state)
                return StoreLease(state.queue, [], (0, 0))
            if lease.payloads:
                state.leases.append(lease)
            return lease

    def _read_locked(self, state: _QueueState, max_items: int) -> StoreLease:
        for _attempt in range(2):
            number = state.read_segment
            if number is None:
                return StoreLease(state.queue, [], (0, 0))
            try:
                self._pull(state, max_items)
            except _ShortSegment:
                if state.leases:
                    # A read-ahead: reloading would take the outstanding lease
                    # away; the next plain read recounts.
                    return StoreLease(state.queue, [], (number, state.read_offset))
                # The segment holds fewer items than counted: a write that
                # failed half-way. Recount from disk and try again.
                logger.warning("DLQ segment shorter than counted, reloading: queue=%s", state.queue)
                state.loaded = False
                self._load(state)
                continue
            except RuntimeError as error:
                self._on_read_error(state, error, "read")
                return StoreLease(state.queue, [], (0, 0))
            # Nothing unread means the queue is drained, or outstanding leases
            # hold the rest of the segment (a lease never spans two segments).
            taken = state.buffer[:max_items]
            del state.buffer[:max_items]
            lease = StoreLease(state.queue, taken, (number, state.read_offset))
            state.read_offset += len(taken)
            return lease
        return StoreLease(state.queue, [], (state.read_segment or 0, state.read_offset))

    def _pull(self, state: _QueueState, wanted: int) -> None:
        """Top the buffer up to ``wanted`` payloads from the read segment.

        The caller holds the queue lock and handles ``RuntimeError`` from
        rocksq; ``_ShortSegment`` means the segment has fewer items than counted.
        """
        number = state.read_segment
        if number is None or len(state.buffer) >= wanted:
            return
        handle = self._handle(state, number)
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
                raise _ShortSegment
            state.read_items += len(items)
            for item in items:
                state.buffer.extend(decode_frame(item))

    def _rewind(self, state: _QueueState, handle: MpmcQueue, number: int) -> None:
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
                READER_LABEL, rocksq.StartPosition.Oldest, min(_SCAN_CHUNK, remaining)
            )
            if not chunk:
                raise RuntimeError(f"segment {number} ends before the cursor ({skip} short)")
            state.read_items += len(chunk)
            for item in chunk:
                if skip <= 0:
                    state.buffer.extend(decode_frame(item))
                    continue
                count = frame_count(item)
                if count <= skip:
                    skip -= count
                else:
                    state.buffer.extend(decode_frame(item)[skip:])
                    skip = 0

    def ack(self, lease: StoreLease, count: int | None = None) -> None:
        if not lease.payloads:
            return
        done = len(lease.payloads) if count is None else count
        if not 0 < done <= len(lease.payloads):
            raise ValueError(f"can acknowledge 1 to {len(lease.payloads)} items, not {count}")
        state = self._state(lease.queue)
        with state.lock:
            if not state.leases or state.leases[0] is not lease:
                raise LeaseError(f"lease on {lease.queue} is not the oldest outstanding lease")
            self._ensure_present(state, "ack")
            if not state.leases or state.leases[0] is not lease:
                raise LeaseError(
                    f"lease on {lease.queue} was lost with its removed directory; "
                    "its messages are delivered again"
                )
            number, start = lease.token
            number = state.renumbered.get(number, number)
            self._write_cursor(state, number, start + done)
            state.total -= done
            del state.leases[0]
            if done < len(lease.payloads):
                # The rest goes back to the head, as after a release, and a
                # read-ahead lease with it (it no longer follows acked data).
                self._give_back(state, lease.payloads[done:], start + done)
            elif (
                state.cursor_acked >= state.counts[number] and not state.buffer and not state.leases
            ):
                self._retire_head(state)

    @staticmethod
    def _give_back(state: _QueueState, head: list[bytes], offset: int, first: int = 0) -> None:
        """Put ``head`` and the leases from ``first`` on back in front of the buffer, in order."""
        returned = list(head)
        for later in state.leases[first:]:
            returned.extend(later.payloads)
        del state.leases[first:]
        state.buffer[0:0] = returned
        state.read_offset = offset

    def _retire_head(self, state: _QueueState) -> bool:
        """Delete the fully acknowledged head segment; False if it cannot go yet."""
        number = state.read_segment
        if number is None:
            return False
        if number == state.write_segment:
            # The queue is empty: retire the last segment too, so disk use goes
            # back to nothing; the next enqueue starts a fresh segment.
            self._write_cursor(state, state.next_segment, 0)
            state.read_segment, state.read_offset = None, 0
            state.read_items = 0
        else:
            following = state.segments[state.segments.index(number) + 1]
            self._write_cursor(state, following, 0)
            state.read_segment, state.read_offset = following, 0
            state.read_items = 0
        state.buffer = []
        state.segments.remove(number)
        state.counts.pop(number, None)
        state.items.pop(number, None)
        state.rewind.discard(number)
        self._close_handle(state, number)
        self._remove_segment_dir(state, number)
        state.disk_measured_at = float("-inf")
        return True

    def _remove_segment_dir(self, state: _QueueState, number: int) -> None:
        path = _segment_dir(state.path, number)
        try:
            rocksq.remove_mpmc_queue(str(path))
        except RuntimeError:
            pass  # rmtree below removes whatever is left
        shutil.rmtree(path, ignore_errors=True)

    def release(self, lease: StoreLease) -> None:
        if not lease.payloads:
            return
        state = self._state(lease.queue)
        with state.lock:
            position = next((i for i, held in enumerate(state.leases) if held is lease), None)
            if position is None:
                raise LeaseError(f"lease on {lease.queue} is not an outstanding lease")
            self._give_back(state, [], lease.token[1], position)

    def peek(self, queue: QueueId, limit: int, *, newest: bool = False) -> list[bytes]:
        state = self._state(queue)
        with state.lock:
            self._loaded(state)
            if not state.segments or state.total <= 0 or limit < 1:
                return []
            self._ensure_present(state, "peek")
            try:
                if newest:
                    handle = self._handle(state, state.segments[-1])
                    last = self._peek_segment(handle, 1, rocksq.StartPosition.Newest)[-1:]
                    return decode_frame(last[0])[-1:] if last else []
                # The head is what the reader holds or will read next: serve it
                # from the lease and the buffer, topping the buffer up from the
                # reader label, so peeking never re-reads acknowledged messages.
                found: list[bytes] = []
                for lease in state.leases:
                    found.extend(lease.payloads)
                try:
                    self._pull(state, limit - len(found))
                except _ShortSegment:
                    pass  # the next read recounts the segment
                found.extend(state.buffer[: max(0, limit - len(found))])
                for number in state.segments:
                    if len(found) >= limit:
                        break
                    if state.read_segment is not None and number <= state.read_segment:
                        continue
                    handle = self._handle(state, number)
                    # Every item holds at least one payload: this many items is enough.
                    for item in self._peek_segment(
                        handle, limit - len(found), rocksq.StartPosition.Oldest
                    ):
                        found.extend(decode_frame(item))
                return found[:limit]
            except RuntimeError as error:
                handle = None  # see enqueue: the traceback must not keep it open
                self._on_read_error(state, error, "peek")
                return []
            except QueueCorruptError as error:  # reopening a segment found it damaged
                self._set_aside(state, str(error))
                self._load(state)
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

    def scan(self, queue: QueueId, chunk: int = 1000) -> Iterator[list[bytes]]:
        """Stream the queue's unacknowledged payloads (export, find by id), unleased.

        Each segment is read with its own label, one chunk per lock hold, so
        the reader and writers go on between chunks. A segment retired (fully
        acknowledged) meanwhile simply ends; its items were committed.
        """
        state = self._state(queue)
        with state.lock:
            self._loaded(state)
            self._ensure_present(state, "scan")
            plan = [
                (n, state.cursor_acked if n == state.cursor_segment else 0) for n in state.segments
            ]
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
                        handle = self._handle(state, number)
                        if first and label in handle.labels:
                            handle.remove_label(label)
                        items, _ = handle.next(label, rocksq.StartPosition.Oldest, fetch)
                        first = False
                        if not items:
                            handle.remove_label(label)
                    except RuntimeError as error:
                        handle = None  # see enqueue: the traceback must not keep it open
                        # Damage sets the queue aside (raising otherwise): the scan ends.
                        self._on_read_error(state, error, "scan")
                        return
                    except QueueCorruptError as error:
                        self._set_aside(state, str(error))
                        self._load(state)
                        return
                if not items:
                    break
                payloads: list[bytes] = []
                for item in items:
                    if skip:  # acknowledged messages at the head of the cursor's segment
                        count = frame_count(item)
                        if count <= skip:
                            skip -= count
                            continue
                        payloads.extend(decode_frame(item)[skip:])
                        skip = 0
                    else:
                        payloads.extend(decode_frame(item))
                if not payloads:
                    continue
                try:
                    yield payloads
                except GeneratorExit:  # the caller stopped early: drop the label
                    with state.lock:
                        if number in state.counts:
                            try:
                                self._handle(state, number).remove_label(label)
                            except RuntimeError:
                                pass
                    raise

    def stats(self, queue: QueueId) -> StoredStats:
        state = self._state(queue)
        with state.lock:
            self._loaded(state)
            return StoredStats(
                messages=state.total,
                bytes_on_disk=self._queue_bytes(state, self._clock()) if state.path.exists() else 0,
                segments=len(state.segments),
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
        found: set[QueueId] = set()
        for source_dir in _subdirs(self.base_path, SOURCE_PREFIX):
            for table_dir in _subdirs(source_dir, TABLE_PREFIX):
                for dest_dir in _subdirs(table_dir, DEST_PREFIX):
                    queue = _queue_of(dest_dir)
                    if queue is None:
                        self._unidentified(dest_dir)
                    else:
                        found.add(queue)
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
                        self._write_queue_file(state)
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
            self._close_handles_of(state)
            for number in list(state.segments):
                self._remove_segment_dir(state, number)
            if state.path.exists():
                self._write_cursor(state, state.next_segment, 0)
            state.loaded = False
            self._load(state)
            return removed

    def close_idle(self, idle_seconds: float) -> int:
        if self._reserve.released and not self._reserve.restore():
            # The disk is full: reopening needs room, an open handle does not.
            return 0
        cutoff = self._clock() - idle_seconds
        closed = 0
        with self._handles_lock:
            for (queue, number), entry in list(self._open.items()):
                if entry.last_used > cutoff or not entry.is_current():
                    continue  # a removed directory's handle stays open: see _evict_over_cap
                owner = self._states.get(queue)
                if owner is None or not owner.lock.acquire(blocking=False):
                    continue
                try:
                    self._drop_handle(owner, number)
                    closed += 1
                finally:
                    owner.lock.release()
        return closed

    def close(self) -> None:
        if self._closed:
            return
        for state in list(self._states.values()):
            with state.lock:
                if state.loaded and state.segments:
                    try:
                        # Closing the handles of a removed directory would lose
                        # what only they can still read.
                        self._ensure_present(state, "close")
                    except DLQError as error:
                        logger.error(
                            "DLQ queue not recovered at close: queue=%s %s", state.queue, error
                        )
                    self._record_written_counts(state)
                self._close_handles_of(state)
                state.loaded = False
        self._closed = True
        if self._lock_fd is not None:
            os.close(self._lock_fd)
            self._lock_fd = None


class _ShortSegment(Exception):
    """A segment returned fewer items than counted (a write that failed half-way)."""


# RocksDB's texts for damaged files. Its corruption statuses read "Corruption: ...",
# but the detail alone ("block checksum mismatch", "bad block contents", ...)
# is all some wrappers pass on, so those are matched too.
_CORRUPTION_RE = re.compile(
    r"corrupt|checksum mismatch|bad block|bad entry in block|bad table magic"
    r"|bad extended magic|magic number mismatch|truncated block|truncated (header|record)"
    r"|bad record length|file is too short|too short to be an sst|file too short"
    r"|internal key (length )?too small|bad writebatch",
    re.IGNORECASE,
)


def _is_corruption(text: str) -> bool:
    """RocksDB errors that mean damaged files, not a busy or full disk."""
    return bool(_CORRUPTION_RE.search(text)) or (
        "IO error" in text and "No such file or directory" in text
    )


def _is_no_space(text: str) -> bool:
    return "No space left" in text or "ENOSPC" in text


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


def _cursor_crc(segment: int, acked: int) -> int:
    return zlib.crc32(f"{segment}:{acked}".encode())


def _subdirs(path: Path, prefix: str) -> list[Path]:
    try:
        return sorted(
            Path(entry.path)
            for entry in os.scandir(path)
            if entry.name.startswith(prefix) and entry.is_dir(follow_symlinks=False)
        )
    except OSError as error:
        if error.errno != errno.ENOENT:
            logger.warning("cannot list DLQ directory: path=%s error=%s", path, error)
        return []


def _queue_of(dest_dir: Path) -> QueueId | None:
    """The queue stored in ``dest_dir``: from its ``queue.json``, else from the names."""
    parts = dest_dir.parts[-3:]
    try:
        data = json.loads((dest_dir / QUEUE_FILE).read_text())
        queue = QueueId.from_json_fields(data)
        if queue.relative_path.parts == parts:
            return queue
        # A queue.json copied or moved from elsewhere: trusting it would serve
        # another directory and leave this one's messages unread.
        logger.warning(
            "queue.json names another queue, using directory names: path=%s queue_json=%s",
            dest_dir,
            queue,
        )
    except FileNotFoundError:
        pass
    except (OSError, ValueError, KeyError, TypeError, AttributeError):
        logger.warning("unreadable queue.json, using directory names: path=%s", dest_dir)
    return QueueId.from_relative_path((parts[0], parts[1], parts[2]))


def _tree_size(path: Path) -> int:
    total = 0
    try:
        for entry in os.scandir(path):
            try:
                if entry.is_dir(follow_symlinks=False):
                    total += _tree_size(Path(entry.path))
                else:
                    total += entry.stat(follow_symlinks=False).st_size
            except FileNotFoundError:
                continue  # removed while we looked (compaction, retirement)
    except FileNotFoundError:
        return 0
    return total
