"""The admin API's temporary files in DLQ_BASE_PATH (uploads, export spools): never left behind."""

from __future__ import annotations

import logging
import os
import shutil
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import IO, Any

from compute.admin.http_errors import HTTPError
from config.settings import MIB

logger = logging.getLogger(__name__)

# Temporary files in DLQ_BASE_PATH: removed when their request ends, and at start-up
# (left by a kill -9).
UPLOAD_PREFIX = ".import-"
SPOOL_PREFIX = ".export-"
# Free disk is re-checked after this much of an export was spooled.
ROOM_CHECK_BYTES = 8 * MIB


def ensure_room(directory: Path, size: int, floor_bytes: int, what: str) -> None:
    """Refuse (507) when writing ``size`` bytes would take ``directory``'s free
    space below ``floor_bytes`` (DLQ_MIN_FREE_DISK_MB): the DLQ's enqueues need it."""
    try:
        free = shutil.disk_usage(directory).free
    except OSError as error:
        raise HTTPError(f"cannot check free disk under {directory}: {error.strerror}") from None
    if free - size < floor_bytes:
        raise HTTPError(
            f"not enough free disk under {directory} for {what}: {size // MIB} MiB needed, "
            f"{free // MIB} MiB free, {floor_bytes // MIB} MiB kept free for the DLQ "
            "(DLQ_MIN_FREE_DISK_MB); free some space and retry",
            status=507,
        )


@contextmanager
def temp_file(directory: Path, prefix: str, mode: str, what: str) -> Iterator[tuple[Path, IO[Any]]]:
    """A new ``<prefix>*.jsonl`` in ``directory`` and the file open on it.

    The file is removed on every failure while it is written; an ``OSError``
    (the disk) is refused with 507, naming ``what`` (e.g. "spool the export").
    """
    fd, name = tempfile.mkstemp(prefix=prefix, suffix=".jsonl", dir=directory)
    path = Path(name)
    encoding = None if "b" in mode else "utf-8"
    try:
        with os.fdopen(fd, mode, encoding=encoding) as out:
            yield path, out
    except OSError as error:
        path.unlink(missing_ok=True)
        raise HTTPError(f"cannot {what} under {directory}: {error.strerror}", status=507) from None
    except BaseException:
        path.unlink(missing_ok=True)
        raise


def remove_leftovers(directory: Path) -> None:
    """Uploads and export spools of an engine killed mid-request hold disk for nothing."""
    for prefix in (UPLOAD_PREFIX, SPOOL_PREFIX):
        for path in directory.glob(f"{prefix}*.jsonl"):
            try:
                path.unlink()
                logger.info("admin API leftover removed: file=%s", path)
            except OSError as error:
                logger.warning(
                    "admin API leftover not removed: file=%s error=%s", path, error.strerror
                )
