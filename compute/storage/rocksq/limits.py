"""Whether an enqueue fits: the queue limits, the free-disk floor, and the room to reopen queues."""

from __future__ import annotations

import os
import shutil
import threading
from pathlib import Path

from compute.errors import DLQFullError
from compute.storage.atomic_file import temporary_of
from compute.storage.base import QueueLimits
from compute.storage.rocksq.disk_reserve import DiskReserve
from compute.storage.rocksq.state import QueueState

# Preallocated room given up to reopen queues on a full disk (see DiskReserve).
RESERVE_FILE = ".rosetta.reserve"
# How long measured sizes may be reused before measuring again.
_DISK_BYTES_TTL = 1.0
_FREE_DISK_TTL = 0.5


class LimitGuard:
    """Refuses a batch, with ``DLQFullError``, that a limit or the disk has no room for."""

    def __init__(self, base_path: Path, limits: QueueLimits, reserve: DiskReserve) -> None:
        self.base_path = base_path
        self.limits = limits
        self._reserve = reserve
        self._free_lock = threading.Lock()
        self._free_bytes = 0
        self._free_measured_at = float("-inf")
        # Bytes enqueued since the free room was measured; the store adds to it
        # without a lock: a lost update only makes the estimate slightly
        # optimistic until the next measurement (<= 0.5 s).
        self.written_since_free = 0

    def check(self, state: QueueState, count: int, size: int, now: float) -> None:
        limits = self.limits
        if limits.max_messages and state.total + count > limits.max_messages:
            raise DLQFullError(
                "max_queue_messages",
                f"{state.total} messages queued, limit {limits.max_messages} "
                f"(DLQ_MAX_QUEUE_MESSAGES); batch of {count} refused",
                state.queue,
            )
        if limits.max_bytes:
            used = self.queue_bytes(state, now)
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

    def queue_bytes(self, state: QueueState, now: float) -> int:
        if now - state.disk_measured_at >= _DISK_BYTES_TTL:
            state.disk_bytes = queue_disk_bytes(state.path)
            state.disk_measured_at = now
            state.bytes_since_measure = 0
        return state.disk_bytes + state.bytes_since_measure

    def _free_disk_bytes(self, now: float) -> int:
        with self._free_lock:
            if now - self._free_measured_at >= _FREE_DISK_TTL:
                self._free_bytes = shutil.disk_usage(self.base_path).free
                self._free_measured_at = now
                self.written_since_free = 0
            return self._free_bytes - self.written_since_free

    def keep_reopen_room(self, state: QueueState, size: int) -> None:
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


# Files a queue directory holds that are not its data: RocksDB's own info
# log (rotated on every open) and options file (rewritten on every open), and
# the status file the DLQ writes about the queue. A reader that opens a queue
# (the offline CLI) must not change its size, so they are not counted. Nor is a
# side file's temporary copy (``write_atomic``): the file it replaces is counted,
# and a size read while status.json is rewritten (every second) would differ.
_NOT_DATA_PREFIXES = ("LOG", "OPTIONS-")
_NOT_DATA_NAMES = frozenset({"status.json"})


def queue_disk_bytes(path: Path) -> int:
    """The bytes a queue's directory holds, its lanes and side files included.

    The one measure of a queue's size (``bytes_on_disk`` in ``status.json``,
    ``rosetta dlq queues``, the admin API and ``rosetta_dlq_queue_bytes``, and
    the ``DLQ_MAX_QUEUE_BYTES`` limit): every file under the queue's directory
    but RocksDB's info logs (``LOG``, ``LOG.old.*``), its ``OPTIONS-*`` files,
    ``status.json`` and the temporary copies of side files being rewritten.
    """
    total = 0
    try:
        for entry in os.scandir(path):
            try:
                if entry.is_dir(follow_symlinks=False):
                    total += queue_disk_bytes(Path(entry.path))
                elif not _not_data(entry.name):
                    total += entry.stat(follow_symlinks=False).st_size
            except FileNotFoundError:
                continue  # removed while we looked (compaction, retirement)
    except FileNotFoundError:
        return 0
    return total


def _not_data(name: str) -> bool:
    return (
        name in _NOT_DATA_NAMES
        or name.startswith(_NOT_DATA_PREFIXES)
        or temporary_of(name) is not None
    )
