"""Operator edits of a queue (purge, discard, park, unpark), each done under the queue's edit lock.

The store is append-only, so these never rewrite a queue: a message is
removed from a lane by a durable tombstone (``discarded.json`` in the
lane's directory: id -> how many of its first occurrences to skip) that
reads skip and the next ack deletes for good. Each operation copies
before it tombstones, so a crash (even kill -9) between two steps
leaves at worst a duplicate, never a loss.
"""

from __future__ import annotations

import functools
import logging
from collections.abc import Callable, Sequence
from typing import Any, Concatenate, ParamSpec, TypeVar

from compute.codec.message import DLQMessage
from compute.dlq.lane_reader import LaneReader
from compute.dlq.parking import Parking, record_key
from compute.dlq.queue_info import QueueInfos
from compute.dlq.timestamps import iso
from compute.dlq.tombstones import Tombstones
from compute.dlq.truncates import Truncates
from compute.errors import DLQConflictError, MessageNotFoundError
from compute.queue_id import QueueId
from compute.storage.base import QueueStore

logger = logging.getLogger(__name__)

_P = ParamSpec("_P")
_T = TypeVar("_T")


def _editing(
    method: Callable[Concatenate[OperatorEdits, QueueId, _P], _T],
) -> Callable[Concatenate[OperatorEdits, QueueId, _P], _T]:
    """Run an operator edit of ``queue`` holding its edit lock (``DLQManager.editing``)."""

    @functools.wraps(method)
    def edit(self: OperatorEdits, queue: QueueId, /, *args: _P.args, **kwargs: _P.kwargs) -> _T:
        with self._infos.edit_lock(queue):
            return method(self, queue, *args, **kwargs)

    return edit


class OperatorEdits:
    """An operator's edits of a queue's lanes; ``DLQManager`` documents each one's contract."""

    def __init__(
        self,
        store: QueueStore,
        infos: QueueInfos,
        lanes: LaneReader,
        tombstones: Tombstones,
        parking: Parking,
        enqueue: Callable[[QueueId, Sequence[DLQMessage]], object],
        truncates: Truncates,
    ) -> None:
        self._store = store
        self._infos = infos
        self._lanes = lanes
        self._tombstones = tombstones
        self._parking = parking
        # The manager's enqueue: copies obey its limits and edit lock like any append.
        self._enqueue = enqueue
        self._truncates = truncates

    @_editing
    def purge(self, queue: QueueId) -> int:
        """Delete every message of ``queue`` (or of its parked lane); returns how many."""
        discarded = sum(self._tombstones.of(queue).values())
        # Tombstones first: a crash in between brings discarded messages back
        # (duplicates); the other order could skip a later message with the same id.
        self._tombstones.forget(queue, None)
        removed = max(0, self._store.purge(queue) - discarded)
        if queue.lane:
            self._parking.forget_keys(queue)
        info = self._infos.of(queue)
        with info.lock:
            info.oldest_known = False
            info.newest, info.newest_known = None, True
            info.dirty = True
        logger.warning("DLQ queue purged: queue=%s removed=%d", queue, removed)
        return removed

    @_editing
    def discard_message(self, queue: QueueId, message_id: str) -> list[QueueId]:
        """Remove ``message_id`` from ``queue`` for good (every lane holding it)."""
        lanes = [lane for lane in (queue.main, queue.parked) if self._lanes.holds(lane, message_id)]
        if not lanes:
            raise MessageNotFoundError(f"no message {message_id!r} in queue {queue}")
        for lane in lanes:
            self._tombstones.add(lane, [message_id])
            if lane.lane:
                self._parking.forget_keys(queue)
        self._infos.of(queue.main).dirty = True
        logger.warning(
            "DLQ message discarded by operator: queue=%s message_id=%s lanes=%s",
            queue,
            message_id,
            ",".join(lane.lane or "main" for lane in lanes),
        )
        return lanes

    @_editing
    def park_message(self, queue: QueueId, message_id: str) -> DLQMessage:
        """Move one message of ``queue``'s main lane to its parked lane: copy, then tombstone."""
        message = next(
            (m for m in self._lanes.iter_messages(queue.main) if m.message_id == message_id), None
        )
        if message is None:
            if self._lanes.find(queue, message_id) is not None:
                raise DLQConflictError(f"message {message_id} in {queue} is already parked")
            raise MessageNotFoundError(f"no message {message_id!r} in queue {queue}")
        if not self._lanes.holds(queue.parked, message_id):
            # Not there yet (else: a retry after a crash between copy and tombstone).
            self._parking.park(queue.main, [message])
        self._tombstones.add(queue.main, [message_id])
        self._infos.of(queue.main).dirty = True
        return message

    @_editing
    def unpark_message(self, queue: QueueId, message_id: str) -> list[DLQMessage]:
        """Send a parked message, its key's later parked changes and its key's waiting changes back.

        Why all of them: the parked chain is older than anything of that key
        in the main lane; moving only the one message (and releasing its key)
        would let a newer change to the row be applied before older ones,
        which then overwrite it.
        """
        chain: list[DLQMessage] = []
        target_key: tuple[Any, ...] | None = None
        earlier: dict[tuple[Any, ...], str] = {}
        for message in self._lanes.iter_messages(queue.parked):
            key = record_key(message.record)
            if target_key is None:
                if message.message_id == message_id:
                    if key in earlier:
                        first = earlier[key]
                        raise DLQConflictError(
                            f"cannot unpark {message_id}: an earlier change to the same key, "
                            f"message {first}, is still parked in {queue} (the key's changes "
                            f"go in order); deal with {first} first: `rosetta dlq discard "
                            f"{first} --confirm` to drop it, `rosetta dlq unpark {first}` to "
                            f"send it back with this one after it, or `rosetta dlq replay "
                            f"{queue} --parked` to replay the parked lane in order"
                        )
                    target_key = key
                    chain.append(message)
                else:
                    earlier.setdefault(key, message.message_id)
            elif key == target_key:
                chain.append(message)
        truncate = self._truncates.of(queue)
        if chain and truncate is not None and truncate.supersedes(chain[0].record):
            raise DLQConflictError(
                f"cannot unpark {message_id}: it is older than the truncate of {queue.table} "
                f"at {truncate.position} applied at {iso(truncate.applied_at)}, and replaying "
                "it would bring back a row the source truncated; drop it with `rosetta dlq "
                f"discard {message_id} --confirm`"
            )
        if target_key is None:
            if self._lanes.find(queue, message_id) is not None:
                raise DLQConflictError(f"message {message_id} in {queue} is not parked")
            raise MessageNotFoundError(f"no parked message {message_id!r} in queue {queue}")
        waiting = [
            m for m in self._lanes.iter_messages(queue.main) if record_key(m.record) == target_key
        ]
        moved = chain + waiting
        # 1. copies at the tail (one atomic enqueue); 2. tombstone the originals
        # in the main lane, 3. then in the parked lane. A crash after 1 or 2
        # leaves duplicates whose last copy is the newest change: the row still
        # ends at its newest value.
        self._enqueue(queue.main, moved)
        if waiting:
            self._tombstones.add(queue.main, [m.message_id for m in waiting])
        self._tombstones.add(queue.parked, [m.message_id for m in chain])
        self._parking.forget_keys(queue)  # recomputed: the key is free again
        logger.warning(
            "DLQ messages unparked by operator: queue=%s message_id=%s moved=%d",
            queue,
            message_id,
            len(moved),
        )
        return moved
