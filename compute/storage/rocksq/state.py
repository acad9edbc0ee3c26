"""What the store knows about one queue (QueueState) and one open segment (SegmentHandle)."""

from __future__ import annotations

import os
import re
import threading
from dataclasses import dataclass, field
from pathlib import Path

from rocksq.blocking import MpmcQueue

from compute.queue_id import QueueId
from compute.storage.base import StoreLease
from compute.storage.rocksq.syncer import SyncTarget

SEGMENT_RE = re.compile(r"^seg_(\d{12})$")


def segment_dir(queue_dir: Path, number: int) -> Path:
    return queue_dir / f"seg_{number:012d}"


@dataclass
class SegmentHandle:
    """An open rocksq segment, and the directory it was opened in."""

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
class QueueState:
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
    # Segments counted from ``segments.json`` and not opened since: their counts are
    # checked against the segment itself when it is first opened.
    unverified: set[int] = field(default_factory=set)
    # The write segment whose count ``segments.json`` records as final, if any: the
    # record must go before anything more is written to it.
    recorded_tail: int | None = None
    # Outstanding leases, oldest first: the reader's lease and, at most, one
    # read-ahead lease that follows it.
    leases: list[StoreLease] = field(default_factory=list)
    # Fetched but unleased payloads of ``read_segment``, from ``read_offset`` on:
    # the rest of a frame, or a released lease, served before reading further.
    buffer: list[bytes] = field(default_factory=list)
    disk_bytes: int = 0
    disk_measured_at: float = float("-inf")
    bytes_since_measure: int = 0
    # Open segment handles of this queue (also registered in the HandleCache).
    handles: dict[int, SegmentHandle] = field(default_factory=dict)
    cursor_fd: int | None = None
    # (st_dev, st_ino) of the cursor file ``cursor_fd`` writes to.
    cursor_ident: tuple[int, int] = (0, 0)
    # Old segment number -> new one, after a removed directory was recreated:
    # leases handed out before still name the old numbers.
    renumbered: dict[int, int] = field(default_factory=dict)
    # The write segment's files to sync (DLQ_FSYNC always/interval), and its number.
    # DLQ_FSYNC always or interval: side files that protect data are synced when written.
    durable: bool = False
    sync_target: SyncTarget | None = None
    sync_number: int = 0
    # Directories created for a segment not yet written (synced with its first write).
    new_dirs: dict[int, list[Path]] = field(default_factory=dict)

    @property
    def write_segment(self) -> int | None:
        return self.segments[-1] if self.segments else None
