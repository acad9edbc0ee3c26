"""A tmpfs of a test's own, mounted for the test (the suite runs as root, as CI does)."""

from __future__ import annotations

import errno
import os
import subprocess
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path


@contextmanager
def mounted_tmpfs(mount_point: Path, options: str) -> Iterator[Path]:
    """Mount a tmpfs with ``options`` (``size=16m``, ``ro,size=1m``) on a new ``mount_point``."""
    mount_point.mkdir()
    result = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", options, "tmpfs", str(mount_point)],
        capture_output=True,
        text=True,
    )
    assert result.returncode == 0, f"cannot mount a tmpfs ({options}): {result.stderr}"
    try:
        yield mount_point
    finally:
        subprocess.run(["umount", "-l", str(mount_point)], check=False)


def fill_disk(disk: Path, name: str = "filler") -> None:
    """Another process takes every byte left (writing until ENOSPC)."""
    with open(disk / name, "ab", buffering=0) as filler:
        block = b"\0" * 4096
        while True:
            try:
                filler.write(block)
            except OSError as error:
                assert error.errno == errno.ENOSPC
                break
    assert os.statvfs(disk).f_bavail == 0
