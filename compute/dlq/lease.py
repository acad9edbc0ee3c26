"""A lease on the head of a queue: the decoded messages handed to its reader until settled."""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Protocol

from compute.codec.message import DLQMessage, MessageDecoder
from compute.errors import DLQError, MessageDecodeError
from compute.queue_id import QueueId
from compute.storage.base import StoreLease

logger = logging.getLogger(__name__)

# Messages decoded between two offers of the GIL during a read-ahead (about 1 ms).
_DECODE_SLICE = 500


class LeaseOwner(Protocol):
    """Who hands out leases and takes them back (the DLQ manager)."""

    def release(self, lease: DLQLease) -> None: ...


@dataclass
class DLQLease:
    """Messages handed to a queue's reader: ack them after the destination committed.

    A context manager: leaving ``with lease:`` gives the lease back (its
    messages stay at the head, in order) unless it was acknowledged or
    released inside, whatever ended the block. A lease that is never given
    back stalls its queue until a restart.
    """

    queue: QueueId
    messages: list[DLQMessage]
    quarantined: int
    _store_lease: StoreLease
    # Position of each message among the leased payloads (quarantined and
    # discarded ones are skipped); None when positions are the same.
    _payload_index: list[int] | None = None
    # Discarded (tombstoned) messages skipped in this lease: (payload index, id).
    _discarded: list[tuple[int, str]] = field(default_factory=list)
    _done: bool = False
    _owner: LeaseOwner | None = field(default=None, repr=False, compare=False)

    def __len__(self) -> int:
        return len(self.messages)

    @property
    def is_empty(self) -> bool:
        return not self._store_lease.payloads

    def close(self) -> None:
        """Give the lease back unless it is settled already."""
        if not self._done and self._owner is not None:
            self._owner.release(self)

    def __enter__(self) -> DLQLease:
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: object
    ) -> None:
        if exc is None:
            self.close()
            return
        try:
            self.close()
        except DLQError as error:  # never hide what ended the block
            logger.error("DLQ lease not given back: queue=%s error=%s", self.queue, error)


def decode_lease(
    queue: QueueId,
    store_lease: StoreLease,
    ahead: bool,
    skip: dict[str, int],
    quarantine: Callable[[QueueId, bytes, str, str], None],
) -> DLQLease:
    """``store_lease``'s payloads as a lease of messages.

    ``skip``: discarded ids (id -> how many occurrences), passed over; each
    undecodable payload goes to ``quarantine(queue, payload, name, reason)``.
    """
    decoder = MessageDecoder(queue.main)
    if not skip:
        try:
            if ahead:
                messages = _decode_yielding(decoder, store_lease.payloads)
            else:
                messages = decoder.decode_many(store_lease.payloads)
            return DLQLease(queue, messages, 0, store_lease)
        except MessageDecodeError:
            pass  # rare: go again one by one, setting the undecodable aside
    messages = []
    quarantined = 0
    payload_index: list[int] = []
    segment, start = store_lease.token
    discarded: list[tuple[int, str]] = []
    for index, payload in enumerate(store_lease.payloads):
        try:
            previous = decoder.decode(payload)
        except MessageDecodeError as error:
            quarantine(queue, payload, f"{segment}_{start + index}", str(error))
            quarantined += 1
            continue
        if skip and skip.get(previous.message_id):
            # Discarded by an operator: skipped, and removed when the lease is acked.
            skip[previous.message_id] -= 1
            discarded.append((index, previous.message_id))
            continue
        messages.append(previous)
        payload_index.append(index)
    return DLQLease(queue, messages, quarantined, store_lease, payload_index, discarded)


def _decode_yielding(decoder: MessageDecoder, payloads: list[bytes]) -> list[DLQMessage]:
    """Decode in slices, offering the GIL to other threads between them.

    A read-ahead decodes while the recovery worker's writer thread talks to
    the destination. Each time one of the writer's network calls returns, it
    needs the GIL back; a long decode would keep it waiting up to the switch
    interval (5 ms), several times per batch. ``sleep(0)`` hands the GIL over
    at once when the writer waits for it (measured: replay about 15% faster).
    """
    if len(payloads) <= _DECODE_SLICE:
        return decoder.decode_many(payloads)
    messages: list[DLQMessage] = []
    for start in range(0, len(payloads), _DECODE_SLICE):
        if start:
            time.sleep(0)
        messages += decoder.decode_many(payloads[start : start + _DECODE_SLICE])
    return messages
