"""The DLQ manager: typed messages over the queue store, with limits, status and quarantine."""

from __future__ import annotations

import functools
import json
import logging
import os
import reprlib
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Concatenate, ParamSpec, TypeVar

from compute.codec.failure_context import FailureContext
from compute.codec.message import (
    DLQMessage,
    MessageDecoder,
    decode_message,
    encode_message,
    encode_messages,
)
from compute.errors import (
    DLQConflictError,
    DLQError,
    DLQFullError,
    LeaseError,
    MessageDecodeError,
    MessageEncodeError,
    MessageNotFoundError,
    MessageTooLargeError,
)
from compute.queue_id import QueueId
from compute.storage.atomic_file import json_bytes, write_atomic
from compute.storage.base import QueueLimits, QueueStore, StoreLease
from compute.runtime.supervisor import Supervisor
from config.dlq_config import DLQConfig, WhenFull
from destinations.records import ChangeRecord

logger = logging.getLogger(__name__)

_P = ParamSpec("_P")
_T = TypeVar("_T")

STATUS_FILE = "status.json"
ATTEMPTS_FILE = "attempts.json"
QUARANTINE_DIR = "quarantine"
TOMBSTONES_FILE = "discarded.json"
STATUS_INTERVAL = 1.0
IDLE_CLOSE_SECONDS = 60.0


@dataclass(frozen=True, slots=True)
class EnqueueResult:
    """How many messages the DLQ stored, dropped (``drop_newest`` only) and quarantined.

    Quarantined: holding a value no DLQ message can store (see ``DLQManager.enqueue``).
    """

    accepted: int
    dropped: int = 0
    quarantined: int = 0


_ONE_ACCEPTED = EnqueueResult(1)
# Messages decoded between two offers of the GIL during a read-ahead (about 1 ms).
_DECODE_SLICE = 500


@dataclass(frozen=True, slots=True)
class QueueStatus:
    """What an operator wants to know about one queue."""

    queue: QueueId
    messages: int
    bytes_on_disk: int
    oldest_enqueued_at: float | None
    newest_enqueued_at: float | None
    last_error: str | None
    dropped: int
    quarantined: int
    parked: int = 0

    def oldest_age(self, now: float) -> float | None:
        return None if self.oldest_enqueued_at is None else max(0.0, now - self.oldest_enqueued_at)

    def to_json(self, now: float) -> dict[str, Any]:
        q = self.queue
        return {
            "queue": str(q),
            **q.json_fields(),
            "messages": self.messages,
            "bytes_on_disk": self.bytes_on_disk,
            "oldest_enqueued_at": _iso(self.oldest_enqueued_at),
            "oldest_age_seconds": _round(self.oldest_age(now)),
            "newest_enqueued_at": _iso(self.newest_enqueued_at),
            "last_error": self.last_error,
            "parked": self.parked,
            "dropped": self.dropped,
            "quarantined": self.quarantined,
            "updated_at": _iso(now),
        }


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
    _owner: DLQManager | None = field(default=None, repr=False, compare=False)

    def __len__(self) -> int:
        return len(self.messages)

    @property
    def is_empty(self) -> bool:
        return not self._store_lease.payloads

    @property
    def settled(self) -> bool:
        """True once acknowledged or given back (by itself or with an earlier lease)."""
        return self._done

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


@dataclass
class _QueueInfo:
    """In-memory facts about a queue that the store does not keep."""

    lock: threading.Lock = field(default_factory=threading.Lock)
    oldest: float | None = None
    oldest_known: bool = False
    newest: float | None = None
    newest_known: bool = False
    last_error: str | None = None
    parked_keys: set[tuple[Any, ...]] | None = None
    parked_count: int = 0
    attempts: dict[str, int] | None = None
    # The failure of the newest enqueued message; formatted only when shown.
    last_failure: FailureContext | None = None
    dropped: int = 0
    quarantined: int = 0
    dirty: bool = True
    # Discarded messages of this lane: id -> how many of its first occurrences to skip.
    tombstones: dict[str, int] | None = None
    # Outstanding leases, oldest first (the reader's, plus a read-ahead one):
    # settling one also settles the later ones, as in the store.
    leases: list[DLQLease] = field(default_factory=list)
    # Held by every append to the queue (either lane) and by operator edits
    # of it (main lane's info only): see ``DLQManager.editing``.
    edit_lock: threading.RLock = field(default_factory=threading.RLock)


def _editing(
    method: Callable[Concatenate[DLQManager, QueueId, _P], _T],
) -> Callable[Concatenate[DLQManager, QueueId, _P], _T]:
    """Run an operator edit of ``queue`` holding ``DLQManager.editing(queue)``."""

    @functools.wraps(method)
    def edit(self: DLQManager, queue: QueueId, /, *args: _P.args, **kwargs: _P.kwargs) -> _T:
        with self.editing(queue):
            return method(self, queue, *args, **kwargs)

    return edit


class DLQManager:
    """Persistent per-(source, table, destination) queues of failed CDC changes.

    Guarantees: a message is on disk when ``enqueue`` returns; it leaves the
    disk only through ``ack`` (after the destination committed), ``purge``,
    or quarantine of its raw bytes. Many threads may enqueue; each queue has
    one reader. Every queue directory holds a ``status.json`` refreshed at
    most once a second while the manager runs, and on close.
    """

    def __init__(
        self,
        config: DLQConfig,
        *,
        store: QueueStore | None = None,
        clock: Callable[[], float] = time.time,
        background: bool = True,
    ) -> None:
        self.config = config
        self._clock = clock
        if store is None:
            from compute.storage.rocksq.store import RocksqStore

            store = RocksqStore(
                Path(config.base_path),
                QueueLimits(
                    max_messages=config.max_queue_messages,
                    max_bytes=config.max_queue_bytes,
                    min_free_disk_bytes=config.min_free_disk_bytes,
                ),
                max_open_handles=config.max_open_queues,
            )
        self.store = store
        if hasattr(store, "on_recreated"):
            store.on_recreated = self._queue_recreated
        self._infos: dict[QueueId, _QueueInfo] = {}
        self._infos_lock = threading.Lock()
        self._stop = threading.Event()
        self.maintenance: Supervisor | None = None
        if background:
            self.maintenance = Supervisor("dlq-maintenance", self._maintain, self._stop)
            self.maintenance.start()
        logger.info("DLQ Manager initialized with base path: %s", config.base_path)

    def __enter__(self) -> DLQManager:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def _info(self, queue: QueueId) -> _QueueInfo:
        info = self._infos.get(queue)
        if info is None:
            with self._infos_lock:
                info = self._infos.setdefault(queue, _QueueInfo())
        return info

    # ---------------------------------------------------------------- writing

    def enqueue(self, queue: QueueId, messages: Sequence[DLQMessage]) -> EnqueueResult:
        """Store ``messages`` (all for ``queue``) at the tail, all or none.

        A message over ``DLQ_MAX_MESSAGE_BYTES`` raises ``MessageTooLargeError``
        and stores nothing. When a capacity limit is reached: with ``DLQ_WHEN_FULL=block`` raises
        ``DLQFullError`` and stores nothing; with ``drop_newest`` drops the
        batch, counts it and logs it. A message holding a value no DLQ message
        can store is quarantined (``quarantined`` in the result) and the others
        are stored.
        """
        count = len(messages)
        if not count:
            return EnqueueResult(0)
        for message in messages:
            if message.queue is not queue and message.queue != queue:
                raise ValueError(
                    f"message {message.message_id} belongs to {message.queue}, not {queue}"
                )
        try:
            payloads = encode_messages(messages)
        except MessageEncodeError:  # rare: set the unstorable ones aside, store the rest
            stored, payloads = self._encode_storable(queue, messages)
            quarantined = count - len(stored)
            if stored:
                result = self.enqueue(queue, stored)
                return EnqueueResult(result.accepted, result.dropped, quarantined)
            return EnqueueResult(0, quarantined=quarantined)
        limit = self.config.max_message_bytes
        # One max() instead of a Python loop; the loop only finds who is too large.
        if max(map(len, payloads)) > limit:
            for message, payload in zip(messages, payloads, strict=True):
                if len(payload) > limit:
                    raise MessageTooLargeError(message.message_id, len(payload), limit)
        info = self._info(queue)
        try:
            # One uncontended lock per batch: an operator edit of this queue
            # (unpark, park, discard, purge, import) is not interleaved with it.
            with (self._info(queue.main) if queue.lane else info).edit_lock:
                self.store.enqueue(queue, payloads)
        except DLQFullError as error:
            error.queue = queue
            with info.lock:
                info.last_error = str(error)
                info.dirty = True
            if self.config.when_full is not WhenFull.DROP_NEWEST:
                raise
            with info.lock:
                info.dropped += count
            logger.error(
                "DLQ full, dropped newest messages (DLQ_WHEN_FULL=drop_newest): "
                "queue=%s dropped=%d total_dropped=%d limit=%s ids=%s",
                queue,
                count,
                info.dropped,
                error.limit,
                ",".join(m.message_id for m in messages[:20]),
            )
            return EnqueueResult(0, dropped=count)
        last = messages[-1]
        # A generator over one message costs more than the rest of this block.
        newest = last.enqueued_at if count == 1 else max(m.enqueued_at for m in messages)
        with info.lock:
            if info.oldest_known and info.oldest is None:
                info.oldest = min(m.enqueued_at for m in messages)  # was empty
            if info.newest is None or newest > info.newest:
                info.newest = newest
            info.newest_known = True
            # A deferral (attempts == 0) does not hide the real failure behind it.
            failure = last.failure
            if failure.attempts or info.last_failure is None:
                info.last_failure = failure
                info.last_error = None
            info.dirty = True
        # Frozen, so one shared result serves every single-message enqueue.
        return _ONE_ACCEPTED if count == 1 else EnqueueResult(count)

    def editing(self, queue: QueueId) -> threading.RLock:
        """Hold this (a context manager) to edit ``queue`` (both lanes) as one step.

        Appends to the queue (``enqueue``, ``park``) wait meanwhile: a live
        change to a key can then not land between an operator's snapshot of
        the queue and the copies it appends (which would put it ahead of
        older changes to the same key). Reentrant; the operator edits of this
        class (purge, discard, park, unpark) take it themselves.
        """
        return self._info(queue.main).edit_lock

    def record_error(self, queue: QueueId, text: str) -> None:
        """Remember the latest failure seen for ``queue`` (shown in its status)."""
        info = self._info(queue)
        with info.lock:
            info.last_error = text
            info.dirty = True

    # ---------------------------------------------------------------- reading

    def read_batch(
        self, queue: QueueId, max_messages: int | None = None, *, ahead: bool = False
    ) -> DLQLease:
        """Lease the oldest unacknowledged messages of ``queue``, in order.

        Undecodable payloads are moved to the queue's ``quarantine/`` directory
        with their raw bytes and are not returned; acking the lease removes
        them from the queue.

        With ``ahead``, one lease may be outstanding already: this reads (and
        decodes) the messages that follow it, while its batch is still being
        written. Leases are acked oldest first; releasing one releases every
        later one.
        """
        limit = max_messages or self.config.batch_size
        store_lease = self.store.read(queue, limit, ahead=ahead)
        try:
            lease = self._decode_lease(queue, store_lease, ahead)
        except BaseException:
            # Whatever went wrong, the payloads stay at the head: a lease the
            # reader never saw would block every later read of the queue.
            self.store.release(store_lease)
            raise
        lease._owner = self
        if store_lease.payloads:
            info = self._info(queue)
            with info.lock:
                info.leases.append(lease)
        return lease

    def _decode_lease(self, queue: QueueId, store_lease: StoreLease, ahead: bool) -> DLQLease:
        decoder = MessageDecoder(queue.main)
        skip = dict(self._tombstones(queue))
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
                self._quarantine(queue, payload, f"{segment}_{start + index}", str(error))
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

    def ack(self, lease: DLQLease, messages_done: int | None = None) -> None:
        """The lease's messages are committed downstream: delete them for good.

        With ``messages_done``, only the first that many messages are; the
        rest go back to the head of the queue, in order.
        """
        if lease._done:
            raise LeaseError(f"lease on {lease.queue} was already acknowledged or released")
        count: int | None = None
        if messages_done is not None and messages_done < len(lease.messages):
            index = lease._payload_index
            count = messages_done if index is None else index[messages_done]
            if count == 0:
                self.release(lease)
                return
        if lease._discarded:
            # Tombstones go first: a crash before the ack then re-delivers a
            # discarded message (a duplicate), never skips a later one.
            gone = [i for index, i in lease._discarded if count is None or index < count]
            self._forget_tombstones(lease.queue, gone)
        self.store.ack(lease._store_lease, count)
        # A partial ack gives the rest back, and a read-ahead lease with it.
        self._settle(lease, later=count is not None)
        if lease.queue.lane:
            self._info(lease.queue.main).parked_keys = None  # keys may be released
        done_ids = lease.messages if count is None else lease.messages[: messages_done or 0]
        self._forget_attempts(lease.queue, [m.message_id for m in done_ids])
        info = self._info(lease.queue)
        with info.lock:
            info.oldest_known = False
            info.dirty = True

    def release(self, lease: DLQLease) -> None:
        """Give the lease back unacknowledged: its messages stay at the head, in order."""
        if lease._done:
            raise LeaseError(f"lease on {lease.queue} was already acknowledged or released")
        self.store.release(lease._store_lease)
        self._settle(lease, later=True)

    def _settle(self, lease: DLQLease, *, later: bool) -> None:
        """``lease`` is acked or given back; with ``later``, so are the leases after it."""
        lease._done = True
        info = self._info(lease.queue)
        with info.lock:
            held = info.leases
            position = next((i for i, x in enumerate(held) if x is lease), None)
            if position is None:
                return
            if later:
                for after in held[position + 1 :]:
                    after._done = True
                del held[position:]
            else:
                del held[position]

    # ---------------------------------------------------------------- parking

    def park(self, queue: QueueId, messages: Sequence[DLQMessage]) -> int:
        """Set ``messages`` aside in ``queue``'s parked lane, keeping their context.

        Parked messages stay on disk, visible and replayable by hand; they are
        never replayed automatically. Their keys count as parked from now on,
        so later changes to the same keys are parked behind them. A message
        holding a value no DLQ message can store is quarantined instead.
        Returns how many were parked.
        """
        if not messages:
            return 0
        try:
            payloads = encode_messages(messages)
        except MessageEncodeError:  # rare: set the unstorable ones aside, park the rest
            messages, payloads = self._encode_storable(queue.parked, messages)
            if not messages:
                return 0
        with self.editing(queue):
            self.store.enqueue(queue.parked, payloads)
        keys = self._parked_keys(queue)
        info = self._info(queue)
        with info.lock:
            keys.update(record_key(m.record) for m in messages)
            info.parked_count += len(messages)
            info.dirty = True
        for m in messages:
            logger.error(
                "DLQ message parked: queue=%s message_id=%s op=%s key=%s attempts=%d error=%s: %s",
                queue,
                m.message_id,
                m.record.op.name.lower(),
                dict(m.record.key),
                m.failure.attempts,
                m.failure.error_class,
                m.failure.message,
            )
        return len(messages)

    def is_parked(self, queue: QueueId, record: ChangeRecord) -> bool:
        """True when an earlier change to ``record``'s key is parked in ``queue``."""
        keys = self._parked_keys(queue)
        return bool(keys) and record_key(record) in keys

    def parked_keys(self, queue: QueueId) -> frozenset[tuple[Any, ...]]:
        """Keys (``record_key``) with a parked change in ``queue``; usually empty.

        Callers checking a whole batch fetch this once instead of calling
        ``is_parked`` per record.
        """
        return frozenset(self._parked_keys(queue))

    def parked_count(self, queue: QueueId) -> int:
        return self.count(queue.parked)

    def count(self, lane: QueueId) -> int:
        """Messages in ``lane`` (a queue or its parked lane), discarded ones not counted."""
        raw = self.store.count(lane)
        if not raw:
            return 0
        return max(0, raw - sum(self._tombstones(lane).values()))

    def _parked_keys(self, queue: QueueId) -> set[tuple[Any, ...]]:
        info = self._info(queue)
        if info.parked_keys is None:
            keys: set[tuple[Any, ...]] = set()
            if self.store.count(queue.parked):
                for message in self.iter_messages(queue.parked):
                    keys.add(record_key(message.record))
            with info.lock:
                if info.parked_keys is None:
                    info.parked_keys = keys
        assert info.parked_keys is not None
        return info.parked_keys

    # --------------------------------------------------------------- attempts

    def record_failed_attempt(
        self, queue: QueueId, messages: Sequence[DLQMessage]
    ) -> dict[str, int]:
        """Count one more failed replay of ``messages``; returns their attempt counts.

        Counts are kept in the queue's ``attempts.json`` (messages in a queue
        are immutable), so a restart does not reset a poison message's budget.
        """
        attempts = self._attempts(queue)
        for m in messages:
            attempts[m.message_id] = attempts.get(m.message_id, m.failure.attempts) + 1
        self._save_attempts(queue, attempts)
        return {m.message_id: attempts[m.message_id] for m in messages}

    def attempts_of(self, queue: QueueId, message: DLQMessage) -> int:
        return self._attempts(queue).get(message.message_id, message.failure.attempts)

    def _attempts(self, queue: QueueId) -> dict[str, int]:
        info = self._info(queue)
        if info.attempts is None:
            path = self.store.queue_path(queue) / ATTEMPTS_FILE
            try:
                loaded = json.loads(path.read_text())
                info.attempts = {str(k): int(v) for k, v in loaded.items()}
            except FileNotFoundError:
                info.attempts = {}
            except (OSError, ValueError, TypeError, AttributeError) as error:
                logger.warning(
                    "unreadable attempts file, counts restart: file=%s error=%s", path, error
                )
                info.attempts = {}
        return info.attempts

    def _save_attempts(self, queue: QueueId, attempts: dict[str, int]) -> None:
        path = self.store.queue_path(queue)
        if path.is_dir():
            _write_json_atomic(path / ATTEMPTS_FILE, attempts)

    def _forget_attempts(self, queue: QueueId, message_ids: list[str]) -> None:
        info = self._info(queue)
        if not info.attempts:  # the common case: nothing ever failed here
            return
        for message_id in message_ids:
            info.attempts.pop(message_id, None)
        self._save_attempts(queue, info.attempts)

    def peek(self, queue: QueueId, limit: int = 10) -> list[DLQMessage]:
        """Up to ``limit`` messages from the head, without leasing or removing them."""
        found: list[DLQMessage] = []
        skip = dict(self._tombstones(queue))
        decoder = MessageDecoder(queue.main)
        for payload in self.store.peek(queue, limit + sum(skip.values())):
            try:
                message = decoder.decode(payload)
            except MessageDecodeError:
                continue  # quarantined when the reader reaches it
            if skip.get(message.message_id):
                skip[message.message_id] -= 1
                continue
            found.append(message)
        return found[:limit]

    @_editing
    def purge(self, queue: QueueId) -> int:
        """Delete every message of ``queue`` (or of its parked lane); returns how many."""
        discarded = sum(self._tombstones(queue).values())
        # Tombstones first: a crash in between brings discarded messages back
        # (duplicates); the other order could skip a later message with the same id.
        self._forget_tombstones(queue, None)
        removed = max(0, self.store.purge(queue) - discarded)
        if queue.lane:
            self._info(queue.main).parked_keys = None
        info = self._info(queue)
        with info.lock:
            info.oldest_known = False
            info.newest, info.newest_known = None, True
            info.dirty = True
        logger.warning("DLQ queue purged: queue=%s removed=%d", queue, removed)
        return removed

    # ------------------------------------------------- operator, per message
    #
    # The store is append-only, so these never rewrite a queue: a message is
    # removed from a lane by a durable tombstone (``discarded.json`` in the
    # lane's directory: id -> how many of its first occurrences to skip) that
    # reads skip and the next ack deletes for good. Each operation copies
    # before it tombstones, so a crash (even kill -9) between two steps
    # leaves at worst a duplicate, never a loss.

    def iter_messages(self, lane: QueueId, chunk: int = 1000) -> Iterator[DLQMessage]:
        """Every message of ``lane`` in FIFO order, streamed; discarded ones skipped."""
        skip = dict(self._tombstones(lane))
        decoder = MessageDecoder(lane.main)
        for payloads in self.store.scan(lane, chunk):
            for payload in payloads:
                try:
                    message = decoder.decode(payload)
                except MessageDecodeError:
                    continue  # quarantined when the reader reaches it
                if skip and skip.get(message.message_id):
                    skip[message.message_id] -= 1
                    continue
                yield message

    def find(self, queue: QueueId, message_id: str) -> tuple[QueueId, DLQMessage] | None:
        """(lane, message) for ``message_id`` in ``queue``'s main lane, else its parked lane."""
        for lane in (queue.main, queue.parked):
            if not self.store.count(lane):
                continue
            for message in self.iter_messages(lane):
                if message.message_id == message_id:
                    return lane, message
        return None

    def locate(self, message_id: str) -> tuple[QueueId, DLQMessage]:
        """Find ``message_id`` in any queue; raises ``MessageNotFoundError``."""
        for queue in self.list_queues():
            found = self.find(queue, message_id)
            if found is not None:
                return found
        raise MessageNotFoundError(f"no message {message_id!r} in any queue")

    @_editing
    def discard_message(self, queue: QueueId, message_id: str) -> list[QueueId]:
        """Remove ``message_id`` from ``queue`` for good (every lane holding it).

        Returns the lanes it was removed from; raises ``MessageNotFoundError``.
        """
        lanes = [
            lane
            for lane in (queue.main, queue.parked)
            if self.store.count(lane)
            and any(m.message_id == message_id for m in self.iter_messages(lane))
        ]
        if not lanes:
            raise MessageNotFoundError(f"no message {message_id!r} in queue {queue}")
        for lane in lanes:
            self._add_tombstones(lane, [message_id])
            if lane.lane:
                self._info(queue.main).parked_keys = None
        self._info(queue.main).dirty = True
        logger.warning(
            "DLQ message discarded by operator: queue=%s message_id=%s lanes=%s",
            queue,
            message_id,
            ",".join(lane.lane or "main" for lane in lanes),
        )
        return lanes

    @_editing
    def park_message(self, queue: QueueId, message_id: str) -> DLQMessage:
        """Move one message of ``queue``'s main lane to its parked lane, by hand.

        Copy first, tombstone second (a crash in between leaves the message in
        both lanes: a duplicate, not a loss). Its key counts as parked from now
        on, so later changes to the key are parked behind it.
        """
        message = next(
            (m for m in self.iter_messages(queue.main) if m.message_id == message_id), None
        )
        if message is None:
            if self.find(queue, message_id) is not None:
                raise DLQConflictError(f"message {message_id} in {queue} is already parked")
            raise MessageNotFoundError(f"no message {message_id!r} in queue {queue}")
        already = self.store.count(queue.parked) and any(
            m.message_id == message_id for m in self.iter_messages(queue.parked)
        )
        if not already:  # a retry after a crash between copy and tombstone
            self.park(queue.main, [message])
        self._add_tombstones(queue.main, [message_id])
        self._info(queue.main).dirty = True
        return message

    @_editing
    def unpark_message(self, queue: QueueId, message_id: str) -> list[DLQMessage]:
        """Send a parked message back for replay, keeping the order of its key.

        Moves the message, every later parked change to the same key and every
        change to that key still waiting in the main lane, in that order, to
        the tail of the main lane, then releases the key. Why all of them:
        the parked chain is older than anything of that key in the main lane;
        moving only the one message (and releasing its key) would let a newer
        change to the row be applied before older ones, which then overwrite
        it. Refuses (``DLQConflictError``) when an earlier change to the key is
        still parked: unpark that one first. Returns the moved messages.
        """
        chain: list[DLQMessage] = []
        target_key: tuple[Any, ...] | None = None
        earlier: dict[tuple[Any, ...], str] = {}
        for message in self.iter_messages(queue.parked):
            key = record_key(message.record)
            if target_key is None:
                if message.message_id == message_id:
                    if key in earlier:
                        raise DLQConflictError(
                            f"an earlier change to the same key is parked in {queue} "
                            f"(message {earlier[key]}): unpark that one first"
                        )
                    target_key = key
                    chain.append(message)
                else:
                    earlier.setdefault(key, message.message_id)
            elif key == target_key:
                chain.append(message)
        if target_key is None:
            if self.find(queue, message_id) is not None:
                raise DLQConflictError(f"message {message_id} in {queue} is not parked")
            raise MessageNotFoundError(f"no parked message {message_id!r} in queue {queue}")
        waiting = [m for m in self.iter_messages(queue.main) if record_key(m.record) == target_key]
        moved = chain + waiting
        # 1. copies at the tail (one atomic enqueue); 2. tombstone the originals
        # in the main lane, 3. then in the parked lane. A crash after 1 or 2
        # leaves duplicates whose last copy is the newest change: the row still
        # ends at its newest value.
        self.enqueue(queue.main, moved)
        if waiting:
            self._add_tombstones(queue.main, [m.message_id for m in waiting])
        self._add_tombstones(queue.parked, [m.message_id for m in chain])
        self._info(queue.main).parked_keys = None  # recomputed: the key is free again
        logger.warning(
            "DLQ messages unparked by operator: queue=%s message_id=%s moved=%d",
            queue,
            message_id,
            len(moved),
        )
        return moved

    def existing_ids(self, queue: QueueId, ids: set[str]) -> set[str]:
        """Which of ``ids`` are already in ``queue`` (either lane)."""
        found: set[str] = set()
        for lane in (queue.main, queue.parked):
            if self.store.count(lane):
                found.update(m.message_id for m in self.iter_messages(lane) if m.message_id in ids)
        return found

    def _tombstones(self, lane: QueueId) -> dict[str, int]:
        info = self._info(lane)
        if info.tombstones is None:
            path = self.store.queue_path(lane) / TOMBSTONES_FILE
            try:
                loaded = json.loads(path.read_text())["skip"]
                info.tombstones = {str(k): int(v) for k, v in loaded.items() if int(v) > 0}
            except FileNotFoundError:
                info.tombstones = {}
            except (OSError, ValueError, TypeError, KeyError, AttributeError) as error:
                # Forgetting tombstones re-delivers discarded messages (duplicates),
                # it never skips a message that was not discarded.
                logger.error(
                    "unreadable tombstone file, discarded messages come back: file=%s error=%s",
                    path,
                    error,
                )
                info.tombstones = {}
        return info.tombstones

    def _add_tombstones(self, lane: QueueId, ids: Sequence[str]) -> None:
        info = self._info(lane)
        with info.lock:
            updated = dict(self._tombstones(lane))
            for message_id in ids:
                updated[message_id] = updated.get(message_id, 0) + 1
            self._save_tombstones(lane, updated)
            info.tombstones = updated
            info.oldest_known = False
            info.dirty = True

    def _forget_tombstones(self, lane: QueueId, ids: Sequence[str] | None) -> None:
        """Drop one tombstone per id in ``ids`` (all of them with None)."""
        info = self._info(lane)
        with info.lock:
            current = self._tombstones(lane)
            if not current:
                return
            updated: dict[str, int] = {}
            if ids is not None:
                updated = dict(current)
                for message_id in ids:
                    left = updated.get(message_id, 0) - 1
                    if left > 0:
                        updated[message_id] = left
                    else:
                        updated.pop(message_id, None)
            self._save_tombstones(lane, updated)
            info.tombstones = updated

    def _save_tombstones(self, lane: QueueId, tombstones: dict[str, int]) -> None:
        path = self.store.queue_path(lane) / TOMBSTONES_FILE
        if not tombstones:
            path.unlink(missing_ok=True)
            return
        path.parent.mkdir(parents=True, exist_ok=True)
        _write_json_atomic(path, {"version": 1, "skip": tombstones}, durable=True)

    # ------------------------------------------------------------- inspection

    def damaged_queues(self) -> list[dict[str, str]]:
        """Queues whose directories were damaged and set aside (files kept) in this run."""
        found = getattr(self.store, "quarantined", [])
        return [{"queue": str(q), "moved_to": str(path), "reason": why} for q, path, why in found]

    def set_aside_directories(self) -> list[dict[str, Any]]:
        """Every damaged queue directory waiting under ``<base>/quarantine/``, this run or earlier.

        Unlike ``damaged_queues`` (what this run found), these stay listed
        until an operator has dealt with the files and removed them.
        """
        base = Path(self.config.base_path) / QUARANTINE_DIR
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

    def has_messages(self, queue: QueueId) -> bool:
        return self.store.count(queue) > 0

    def list_queues(self, *, refresh: bool = False) -> list[QueueId]:
        """Every known queue (from memory); ``refresh`` first scans the disk for new ones.

        Queues made by this process are known at once; others (a restore, a
        second process) appear at the next scan, every ``DLQ_RESCAN_INTERVAL``.
        """
        if refresh:
            return self.store.rescan()
        return self.store.list_queues()

    def _restore_side_files(self, queue: QueueId) -> None:
        """Write this queue's tombstones and attempt counts again if their files went missing.

        They live in the queue's directory; if it was removed (the store then
        recreates it) or a file was deleted, the copy in memory is the truth,
        and a restart must not forget discarded messages or retry budgets.
        """
        info = self._infos.get(queue)
        if info is None:
            return
        path = self.store.queue_path(queue)
        with info.lock:
            if info.tombstones and not (path / TOMBSTONES_FILE).exists():
                logger.warning("tombstone file missing, written again: queue=%s", queue)
                self._save_tombstones(queue, info.tombstones)
            if info.attempts and not (path / ATTEMPTS_FILE).exists():
                logger.warning("attempts file missing, written again: queue=%s", queue)
                self._save_attempts(queue, info.attempts)

    def _queue_recreated(self, queue: QueueId) -> None:
        self._restore_side_files(queue)
        self._info(queue).dirty = True  # its status.json went with the directory

    def status(self, queue: QueueId) -> QueueStatus:
        stats = self.store.stats(queue)
        parked = self.parked_count(queue)
        info = self._info(queue)
        messages = self.count(queue) if stats.messages else 0
        if messages == 0:
            oldest = newest = None
        else:
            oldest = self._oldest(queue, info)
            newest = self._newest(queue, info)
        with info.lock:
            return QueueStatus(
                queue=queue,
                messages=messages,
                bytes_on_disk=stats.bytes_on_disk,
                oldest_enqueued_at=oldest,
                newest_enqueued_at=newest,
                last_error=_last_error(info),
                dropped=info.dropped,
                quarantined=info.quarantined,
                parked=parked,
            )

    def _oldest(self, queue: QueueId, info: _QueueInfo) -> float | None:
        with info.lock:
            if info.oldest_known:
                return info.oldest
        head = self.peek(queue, 1)
        oldest = head[0].enqueued_at if head else None
        with info.lock:
            info.oldest, info.oldest_known = oldest, True
        return oldest

    def _newest(self, queue: QueueId, info: _QueueInfo) -> float | None:
        with info.lock:
            if info.newest_known:
                return info.newest
        tail = self.store.peek(queue, 1, newest=True)
        newest: float | None = None
        if tail:
            try:
                newest = decode_message(tail[0]).enqueued_at
            except MessageDecodeError:
                newest = None
        with info.lock:
            info.newest, info.newest_known = newest, True
        return newest

    def _encode_storable(
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
                self._quarantine_unstorable(lane, message, error.reason)
                continue
            stored.append(message)
        return stored, payloads

    def _quarantine_unstorable(self, lane: QueueId, message: DLQMessage, reason: str) -> None:
        """Write a change no DLQ message can hold to ``<lane>/quarantine/``, readable, with why."""
        directory = self.store.queue_path(lane) / QUARANTINE_DIR
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
            "quarantined_at": _iso(self._clock()),
        }
        (directory / f"{name}.json").write_text(
            json.dumps(meta, indent=2, ensure_ascii=True) + "\n"
        )
        info = self._info(lane.main)
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

    # ------------------------------------------------------------ housekeeping

    def _quarantine(self, queue: QueueId, payload: bytes, name: str, reason: str) -> None:
        directory = self.store.queue_path(queue) / QUARANTINE_DIR
        directory.mkdir(parents=True, exist_ok=True)
        (directory / f"{name}.bin").write_bytes(payload)
        meta = {"reason": reason, "bytes": len(payload), "quarantined_at": _iso(self._clock())}
        (directory / f"{name}.json").write_text(json.dumps(meta, indent=2))
        info = self._info(queue)
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

    def refresh_all_status(self) -> int:
        """Mark every queue on disk for a status-file refresh (after a restart
        their files may predate a crash); returns how many queues there are."""
        queues = self.list_queues()
        for queue in queues:
            info = self._info(queue)
            info.dirty = True
        return len(queues)

    def write_status_files(self, *, force: bool = False) -> int:
        """Refresh ``status.json`` of every changed queue (all of them with ``force``)."""
        written = 0
        for queue, info in list(self._infos.items()):
            if not (info.dirty or force):
                continue
            info.dirty = False
            path = self.store.queue_path(queue)
            if not path.is_dir():
                continue
            try:
                if info.tombstones or info.attempts:
                    self._restore_side_files(queue)
                status = self.status(queue)
                _write_json_atomic(path / STATUS_FILE, status.to_json(self._clock()))
            except (DLQError, OSError) as error:
                # A full disk or a damaged queue must not stop the refresh of
                # the others, nor a clean shutdown; try again next time.
                info.dirty = True
                logger.warning("status file not refreshed: queue=%s error=%s", queue, error)
                continue
            written += 1
        return written

    def _maintain(self) -> None:
        scanned_at = time.monotonic()
        while not self._stop.wait(STATUS_INTERVAL):
            try:
                self.write_status_files()
                self.store.close_idle(IDLE_CLOSE_SECONDS)
                if time.monotonic() - scanned_at >= self.config.rescan_interval:
                    scanned_at = time.monotonic()
                    self.store.rescan()
            except Exception:  # keep the status thread alive whatever happens
                logger.exception("DLQ status refresh failed")

    def close(self) -> None:
        """Write final status files and close every queue."""
        if self._stop.is_set():
            return
        self._stop.set()
        if self.maintenance is not None:
            self.maintenance.join(timeout=5)
        try:
            self.write_status_files(force=True)
        finally:
            self.store.close()
        logger.info("DLQ Manager closed")


def record_key(record: ChangeRecord) -> tuple[Any, ...]:
    """A hashable identity of the row a change applies to."""
    try:
        key = (record.table, *record.key.items())
        hash(key)
        return key
    except TypeError:  # unhashable key values: fall back to their repr
        return (record.table, repr(sorted(record.key.items())))


def _last_error(info: _QueueInfo) -> str | None:
    if info.last_error is None and info.last_failure is not None:
        info.last_error = f"{info.last_failure.error_class}: {info.last_failure.message}"
    return info.last_error


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


def _write_json_atomic(path: Path, data: dict[str, Any], *, durable: bool = False) -> None:
    write_atomic(path, json_bytes(data, indent=2) + b"\n", durable=durable)


def _iso(when: float | None) -> str | None:
    if when is None:
        return None
    return time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(when)) + f".{int(when % 1 * 1000):03d}Z"


def _round(value: float | None) -> float | None:
    return None if value is None else round(value, 3)


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
