"""Claiming the base path: it exists, it is writable, and one process holds it."""

from __future__ import annotations

import fcntl
import os
from pathlib import Path

from compute.errors import DLQStorageError, QueueLockedError

LOCK_FILE = ".rosetta.lock"


def prepare_base_path(base_path: Path) -> None:
    try:
        base_path.mkdir(parents=True, exist_ok=True)
    except OSError as error:
        raise DLQStorageError(
            f"DLQ base path {str(base_path)!r} cannot be created: {error.strerror}"
        ) from None
    if not base_path.is_dir():
        raise DLQStorageError(f"DLQ base path {str(base_path)!r} is not a directory")
    if not os.access(base_path, os.W_OK | os.X_OK):
        raise DLQStorageError(f"DLQ base path {str(base_path)!r} is not writable")


def take_lock(base_path: Path) -> int:
    """One process per base path: RocksDB would refuse a second opener queue by queue."""
    path = base_path / LOCK_FILE
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        holder = os.pread(fd, 64, 0).decode(errors="replace").strip() or "unknown"
        os.close(fd)
        raise QueueLockedError(
            f"DLQ base path {str(base_path)!r} is in use by another process "
            f"(pid {holder}); stop it, or go through its admin API"
        ) from None
    os.ftruncate(fd, 0)
    os.pwrite(fd, str(os.getpid()).encode(), 0)
    return fd
