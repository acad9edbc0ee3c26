"""The newest truncate applied to each queue's table: parked changes older than it are superseded.

A parked change older than a truncate applied after it can only bring back a
row the source truncated: replaying it (or unparking it) would undo the
truncate. The DLQ remembers, per queue, the newest applied truncate (its
source position and when it was applied) in ``truncated.json`` in the
queue's directory; parked changes older than it are *superseded*: shown so by
``rosetta dlq show --parked`` and the queue's status, refused by a replay of
the parked lane and by ``unpark`` (with the command that drops them), never
dropped without an operator asking.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Iterable
from typing import Any, NamedTuple

from compute.dlq.queue_info import QueueInfos
from compute.queue_id import QueueId
from compute.storage.atomic_file import json_bytes
from compute.storage.base import QueueStore
from destinations.records import ChangeRecord, Operation, SourcePosition

logger = logging.getLogger(__name__)

TRUNCATED_FILE = "truncated.json"


class AppliedTruncate(NamedTuple):
    """A truncate of a queue's table, committed by its destination at ``applied_at``."""

    position: SourcePosition
    applied_at: float

    def supersedes(self, record: ChangeRecord) -> bool:
        """True when ``record`` is older than this truncate (its row went with it)."""
        return tuple(record.position) < tuple(self.position)

    def to_json(self) -> dict[str, Any]:
        return {
            "commit": self.position.commit,
            "seq": self.position.seq,
            "position": str(self.position),
            "applied_at": self.applied_at,
        }


class Truncates:
    """Each queue's newest applied truncate: in memory always, on disk once its queue parks."""

    def __init__(self, store: QueueStore, infos: QueueInfos) -> None:
        self._store = store
        self._infos = infos

    def applied(self, queue: QueueId, records: Iterable[ChangeRecord], now: float) -> bool:
        """The destination committed ``records``; True if one was a truncate newer than known."""
        newest: SourcePosition | None = None
        for record in records:
            if record.op is Operation.TRUNCATE and (newest is None or record.position > newest):
                newest = record.position
        if newest is None:
            return False
        info = self._infos.of(queue.main)
        known = self.of(queue)
        if known is not None and tuple(newest) <= tuple(known.position):
            return False
        mark = AppliedTruncate(SourcePosition(*newest), now)
        with info.lock:
            info.truncate = mark
            info.truncate_saved = False
            info.parked_keys = None  # the superseded count goes with them: counted again
            info.dirty = True
        self.save(queue)
        return True

    def save(self, queue: QueueId) -> None:
        """Write ``queue``'s truncate if it has one not written yet and a parked lane.

        A queue with nothing parked has nothing to supersede: its directory
        may not even exist. Parking calls this again, since a batch narrowed
        down to its poison parks it after the rest (the truncate) is written.
        """
        info = self._infos.of(queue.main)
        mark = info.truncate
        if mark is None or info.truncate_saved or not self._store.count(queue.parked):
            return
        if not self._store.save_record(
            queue.main, TRUNCATED_FILE, json_bytes(mark.to_json()) + b"\n"
        ):
            return
        info.truncate_saved = True
        logger.warning(
            "truncate applied while changes are parked: queue=%s position=%s "
            "(parked changes older than it are superseded)",
            queue.main,
            mark.position,
        )

    def of(self, queue: QueueId) -> AppliedTruncate | None:
        """The newest truncate applied to ``queue``'s table, or None."""
        info = self._infos.of(queue.main)
        if info.truncate is None and not info.truncate_loaded:
            try:
                raw = self._store.load_record(queue.main, TRUNCATED_FILE)
                mark = None if raw is None else _parse_mark(raw)
            except (OSError, ValueError, TypeError, KeyError) as error:
                logger.error(
                    "unreadable truncate record, parked changes are not checked against it: "
                    "queue=%s record=%s error=%s",
                    queue.main,
                    TRUNCATED_FILE,
                    error,
                )
            else:
                if mark is not None:
                    with info.lock:
                        info.truncate = info.truncate or mark
                        info.truncate_saved = True
            info.truncate_loaded = True
        return info.truncate


def _parse_mark(raw: bytes) -> AppliedTruncate:
    data = json.loads(raw)
    return AppliedTruncate(
        SourcePosition(int(data["commit"]), int(data["seq"])), float(data["applied_at"])
    )
