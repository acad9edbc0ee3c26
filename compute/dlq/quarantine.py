"""Quarantine: what the DLQ sets aside in ``quarantine/`` instead of storing or reading it.

Changes no DLQ message can hold and payloads that no longer decode go to
their queue's ``quarantine/`` directory, readable, with the reason; damaged
queue directories are set aside by the store under ``<base>/quarantine/``.
"""

from __future__ import annotations

import json
import logging
import os
import reprlib
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from compute.codec.message import DLQMessage, encode_message
from compute.dlq.queue_info import QueueInfos
from compute.dlq.timestamps import iso
from compute.errors import MessageEncodeError
from compute.queue_id import QueueId
from compute.storage.base import QueueStore

logger = logging.getLogger(__name__)

QUARANTINE_DIR = "quarantine"


class Quarantine:
    """Writes set-aside messages to their queue's ``quarantine/`` and counts them."""

    def __init__(self, store: QueueStore, infos: QueueInfos, clock: Callable[[], float]) -> None:
        self._store = store
        self._infos = infos
        self._clock = clock

    def encode_storable(
        self, lane: QueueId, messages: Sequence[DLQMessage]
    ) -> tuple[list[DLQMessage], list[bytes]]:
        """(storable messages, their payloads); the others are quarantined with their reason.

        Only after a batch failed to encode: one message at a time (the same
        bytes as in a batch), so one unstorable change never holds the others.
        """
        stored: list[DLQMessage] = []
        payloads: list[bytes] = []
        for message in messages:
            try:
                payloads.append(encode_message(message))
            except MessageEncodeError as error:
                self._unstorable(lane, message, error.reason)
                continue
            stored.append(message)
        return stored, payloads

    def _unstorable(self, lane: QueueId, message: DLQMessage, reason: str) -> None:
        """Write a change no DLQ message can hold to ``<lane>/quarantine/``, readable, with why."""
        directory = self._store.queue_path(lane) / QUARANTINE_DIR
        directory.mkdir(parents=True, exist_ok=True)
        name = f"unstorable-{message.message_id}"
        text, complete = _describe(message)
        (directory / f"{name}.txt").write_text(text + "\n", errors="backslashreplace")
        record = message.record
        meta = {
            "reason": f"cannot be stored in a DLQ message: {reason}",
            "message_id": message.message_id,
            "table": record.table,
            "op": record.op.name.lower(),
            "key": reprlib.repr(dict(record.key)),
            "position": str(record.position),
            "failure": f"{message.failure.error_class}: {message.failure.message}",
            "complete": complete,  # False: the .txt holds an abridged repr
            "quarantined_at": iso(self._clock()),
        }
        (directory / f"{name}.json").write_text(
            json.dumps(meta, indent=2, ensure_ascii=True) + "\n"
        )
        info = self._infos.of(lane.main)
        with info.lock:
            info.quarantined += 1
            info.last_error = f"unstorable change quarantined: {reason}"
            info.dirty = True
        logger.error(
            "DLQ cannot store a change, quarantined it instead: queue=%s message_id=%s "
            "position=%s file=%s reason=%s; the other changes go on, see the file to "
            "re-apply it by hand",
            lane,
            message.message_id,
            record.position,
            directory / f"{name}.txt",
            reason,
        )

    def undecodable(self, queue: QueueId, payload: bytes, name: str, reason: str) -> None:
        """Keep a payload that no longer decodes as ``<queue>/quarantine/<name>.bin``, with why."""
        directory = self._store.queue_path(queue) / QUARANTINE_DIR
        directory.mkdir(parents=True, exist_ok=True)
        (directory / f"{name}.bin").write_bytes(payload)
        meta = {"reason": reason, "bytes": len(payload), "quarantined_at": iso(self._clock())}
        (directory / f"{name}.json").write_text(json.dumps(meta, indent=2))
        info = self._infos.of(queue)
        with info.lock:
            info.quarantined += 1
            info.last_error = f"undecodable message quarantined: {reason}"
            info.dirty = True
        logger.error(
            "undecodable DLQ message quarantined: queue=%s file=%s reason=%s",
            queue,
            directory / f"{name}.bin",
            reason,
        )


def set_aside_directories(base_path: Path) -> list[dict[str, Any]]:
    """Every damaged queue directory waiting under ``<base_path>/quarantine/``, with its reason."""
    base = base_path / QUARANTINE_DIR
    found: list[dict[str, Any]] = []
    try:
        entries = sorted(
            (e for e in os.scandir(base) if e.is_dir(follow_symlinks=False)),
            key=lambda e: e.name,
        )
    except FileNotFoundError:
        return found
    for entry in entries:
        path = Path(entry.path)
        try:
            reason = json.loads((path / "reason.json").read_text())
            queue, why = str(reason["queue"]), str(reason["reason"])
        except (OSError, ValueError, KeyError, TypeError):
            queue, why = entry.name, "no readable reason.json"
        found.append({"queue": queue, "moved_to": str(path), "reason": why})
    return found


def _describe(message: DLQMessage) -> tuple[str, bool]:
    """``repr(message)`` (exact values, as Python literals), and whether it is whole.

    A value nested too deeply to print is abridged (``...``) column by column.
    """
    try:
        return repr(message), True
    except RecursionError:
        pass
    record = message.record
    lines = [repr(message._replace(record=record._replace(before=None, after=None)))]
    for side, row in (("before", record.before), ("after", record.after)):
        for column, value in (row or {}).items():
            try:
                text = repr(value)
            except RecursionError:
                text = reprlib.repr(value) + "  # abridged: nested too deeply to print"
            lines.append(f"{side}[{column!r}] = {text}")
    return "\n".join(lines), False
