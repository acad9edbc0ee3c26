"""A file's dirty page-cache pages, from the kernel's ``cachestat`` system call (Linux 6.5+).

``dirty`` + ``writeback`` of a file are the pages written but not yet on
stable storage; an ``fsync`` of the file brings both to zero. Tests use it to
prove what the DLQ synced, and skip with a clear reason where the kernel
lacks the call.
"""

from __future__ import annotations

import ctypes
import errno
import os
import platform
from pathlib import Path

import pytest

_CACHESTAT_X86_64 = 451


class _Range(ctypes.Structure):
    _fields_ = [("off", ctypes.c_uint64), ("len", ctypes.c_uint64)]


class _Stat(ctypes.Structure):
    _fields_ = [
        (name, ctypes.c_uint64)
        for name in ("cache", "dirty", "writeback", "evicted", "recently_evicted")
    ]


_libc = ctypes.CDLL(None, use_errno=True)


def unsynced_pages(path: Path) -> int:
    """Pages of ``path`` not yet on stable storage (dirty or under writeback); 0 if it is gone."""
    try:
        fd = os.open(path, os.O_RDONLY)
    except (FileNotFoundError, IsADirectoryError):
        return 0
    try:
        whole, stat = _Range(0, 0), _Stat()  # len 0: to the end of the file
        if _libc.syscall(_CACHESTAT_X86_64, fd, ctypes.byref(whole), ctypes.byref(stat), 0):
            code = ctypes.get_errno()
            raise OSError(code, f"cachestat({path}): {os.strerror(code)}")
        return int(stat.dirty + stat.writeback)
    finally:
        os.close(fd)


def unsynced_files(directory: Path) -> dict[str, int]:
    """Every file under ``directory`` (recursively) with unsynced pages: relative name -> pages."""
    found = {}
    for path in sorted(directory.rglob("*")):
        if path.is_file() and (pages := unsynced_pages(path)):
            found[str(path.relative_to(directory))] = pages
    return found


def require_cachestat(tmp_path: Path) -> None:
    """Skip the test, saying why, where the kernel has no ``cachestat`` (before 6.5, not x86-64)."""
    if platform.machine() != "x86_64":
        pytest.skip(f"cachestat's syscall number is known for x86_64, not {platform.machine()}")
    probe = tmp_path / ".cachestat-probe"
    probe.write_bytes(b"x")
    try:
        unsynced_pages(probe)
    except OSError as error:
        if error.errno == errno.ENOSYS:
            pytest.skip(f"this kernel ({platform.release()}) has no cachestat system call (6.5+)")
        raise
    finally:
        probe.unlink()
