"""Finding the queues on disk: the directory tree, and each queue's ``queue.json``."""

from __future__ import annotations

import errno
import json
import logging
import os
from collections.abc import Callable
from pathlib import Path

from compute.queue_id import DEST_PREFIX, SOURCE_PREFIX, TABLE_PREFIX, QueueId
from compute.storage.atomic_file import json_bytes, write_atomic
from compute.storage.rocksq.state import QueueState

logger = logging.getLogger(__name__)

QUEUE_FILE = "queue.json"


def find_queues(base_path: Path, unidentified: Callable[[Path], None]) -> set[QueueId]:
    """Every queue directory under ``base_path``; ``unidentified`` gets those naming none."""
    found: set[QueueId] = set()
    for source_dir in _subdirs(base_path, SOURCE_PREFIX):
        for table_dir in _subdirs(source_dir, TABLE_PREFIX):
            for dest_dir in _subdirs(table_dir, DEST_PREFIX):
                queue = _queue_of(dest_dir)
                if queue is None:
                    unidentified(dest_dir)
                else:
                    found.add(queue)
    return found


def write_queue_file(state: QueueState, *, durable: bool = False) -> None:
    path = state.path / QUEUE_FILE
    if path.exists():
        return
    # A lone surrogate has no UTF-8 form: json_bytes then writes \u escapes,
    # and json_fields' exact_names keep what they cannot tell apart.
    write_atomic(path, json_bytes(state.queue.json_fields()), durable=durable)


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
