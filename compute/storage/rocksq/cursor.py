"""A queue's acknowledgement point: ``cursor.json``, one fixed-size checksummed record."""

from __future__ import annotations

import errno
import json
import logging
import os
import zlib

from compute.storage.rocksq.disk_reserve import DiskReserve
from compute.storage.rocksq.state import QueueState

logger = logging.getLogger(__name__)

CURSOR_FILE = "cursor.json"
_CURSOR_RECORD = 96


def read_cursor(state: QueueState) -> tuple[int, int] | None:
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


def write_cursor(state: QueueState, segment: int, acked: int, reserve: DiskReserve) -> None:
    """Record the acknowledgement point with one small in-place write.

    A single ``pwrite`` of one fixed-size record cannot be torn by a process
    crash, and avoids a rename per ack (slow on overlay filesystems). The
    checksum catches a record torn by an OS crash; the reader then falls
    back to re-delivering, never to skipping.
    """
    record = json.dumps({"segment": segment, "acked": acked, "crc": _cursor_crc(segment, acked)})
    data = record.ljust(_CURSOR_RECORD - 1).encode() + b"\n"
    if state.cursor_fd is None:
        state.cursor_fd = os.open(state.path / CURSOR_FILE, os.O_RDWR | os.O_CREAT, 0o644)
        st = os.fstat(state.cursor_fd)
        state.cursor_ident = (st.st_dev, st.st_ino)
    try:
        os.pwrite(state.cursor_fd, data, 0)
    except OSError as error:
        # A new cursor file needs a block: on a full disk, from the reserve.
        if error.errno != errno.ENOSPC or not reserve.release(state.path):
            raise
        os.pwrite(state.cursor_fd, data, 0)
    state.cursor_segment, state.cursor_acked = segment, acked


def close_cursor(state: QueueState) -> None:
    if state.cursor_fd is not None:
        os.close(state.cursor_fd)
        state.cursor_fd = None


def cursor_current(state: QueueState) -> bool:
    """False when the cursor file was removed or replaced since ``cursor_fd`` opened it."""
    try:
        st = os.stat(state.path / CURSOR_FILE)
    except OSError:
        return False
    return (st.st_dev, st.st_ino) == state.cursor_ident


def _cursor_crc(segment: int, acked: int) -> int:
    return zlib.crc32(f"{segment}:{acked}".encode())
