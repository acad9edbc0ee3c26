"""JetStreamStore: the QueueStore kept in a replicated NATS JetStream cluster.

Why this shape: a queue lane is one subject of one stream (naming.py), and
each enqueue call one message holding its frame of payloads, so a batch
costs one round trip, acknowledged by the stream's quorum before
``enqueue`` returns (only then may the source position move). Reads walk a
subject in order with ``get_msg(next_by_subj)``, served by the stream's
leader, so they never see a stale replica. An ack purges the subject's
wholly acknowledged messages; a message acknowledged in part keeps the
point reached in a record (``store-cursor``), so a restart redelivers at
most the unacknowledged rest, never skips one.

Appending (limits, one writer per queue, publishes whose answer is lost)
is writer.py; the queue's positions are state.py.
"""

from __future__ import annotations

import json
import logging
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from compute.errors import (
    STORE_UNAVAILABLE,
    DLQFullError,
    DLQStorageError,
)
from compute.queue_id import QueueId
from compute.storage.base import (
    QueueLimits,
    QueueStore,
    StoredStats,
    StoreLease,
    StoreUnreachable,
    acked_count,
    check_oldest,
    check_read,
    lease_position,
)
from compute.storage.jetstream import messages
from compute.storage.jetstream.bridge import NatsBridge, StoreUnavailable
from compute.storage.jetstream.messages import StoredFrame, stored_frame
from compute.storage.jetstream.naming import (
    queue_subject,
    queue_subjects,
    record_key,
    subject_queue,
)
from compute.storage.jetstream.state import QueueState
from compute.storage.jetstream.streams import ensure_queues_stream, open_records
from compute.storage.jetstream.writer import check_limits, publish
from config.nats_config import NatsConfig

logger = logging.getLogger(__name__)

CURSOR_RECORD = "store-cursor"
# The first sequence a subject walk asks for (nats-py leaves a 0 out of the request).
_FIRST = 1


class JetStreamStore(QueueStore):
    """Queues of payloads as subjects of ``<prefix>_QUEUES``; records in ``<prefix>_RECORDS``."""

    def __init__(
        self,
        config: NatsConfig,
        base_path: Path,
        limits: QueueLimits | None = None,
        *,
        bridge: NatsBridge | None = None,
        stream_max_bytes: int = -1,
        stream_max_messages: int = -1,
    ) -> None:
        self.config = config
        self.base_path = Path(base_path)
        self._limits = limits or QueueLimits()
        self._own_bridge = bridge is None
        self._bridge = NatsBridge(config) if bridge is None else bridge
        try:
            self.stream = ensure_queues_stream(self._bridge, stream_max_bytes, stream_max_messages)
            self._records = open_records(self._bridge)
        except BaseException:
            if self._own_bridge:
                self._bridge.close()
            raise
        self._prefix = config.stream_prefix
        self._states: dict[QueueId, QueueState] = {}
        self._states_lock = threading.Lock()
        self._known: set[QueueId] = set()
        self._made_dirs: set[QueueId] = set()
        self._closed = False
        self.rescan()

    # ------------------------------------------------------------ queue state

    def _state(self, queue: QueueId) -> QueueState:
        if self._closed:
            raise DLQStorageError("the DLQ store is closed")
        state = self._states.get(queue)
        if state is None:
            with self._states_lock:
                state = self._states.setdefault(
                    queue, QueueState(queue, queue_subject(self._prefix, queue))
                )
        return state

    def _call(self, coroutine: Any, what: str, state: QueueState) -> Any:
        """Run a JetStream call; an outage is a ``DLQStorageError`` naming ``what``."""
        try:
            return self._bridge.run(coroutine)
        except StoreUnavailable as error:
            raise DLQStorageError(f"{what} {state.queue}: {error}") from error

    def _get(self, state: QueueState, seq: int | None, what: str) -> StoredFrame | None:
        """The subject's first message from ``seq`` on, or its last (``seq`` None); None if none."""
        from nats.js import errors as js_errors

        js = self._bridge.js
        if seq is None:
            request = js.get_msg(self.stream, subject=state.subject)
        else:
            request = js.get_msg(
                self.stream, seq=max(seq, _FIRST), subject=state.subject, next=True
            )
        try:
            return stored_frame(self._call(request, what, state))
        except js_errors.NotFoundError:
            return None

    def _loaded(self, state: QueueState) -> QueueState:
        """``state``, read from the stream first if need be; the caller holds its lock."""
        if state.loaded:
            return state
        last = self._get(state, None, "load")
        if last is None:
            state.last_seq = state.end = state.bytes_end = 0
            state.acked = state.acked_bytes = 0
        else:
            first = self._get(state, _FIRST, "load")
            first = last if first is None else first
            state.last_seq, state.end, state.bytes_end = last.seq, last.end, last.bytes_end
            state.acked, state.acked_bytes = first.start, first.bytes_start
            cursor = self._load_cursor(state.queue)
            if cursor and cursor.get("seq") == first.seq and cursor.get("id") == first.msg_id:
                state.acked = min(max(first.start, int(cursor["pos"])), first.end)
            with self._states_lock:
                self._known.add(state.queue.main)
        state.reset_reader()
        state.loaded = True
        return state

    # ---------------------------------------------------------------- writing

    def enqueue(self, queue: QueueId, payloads: list[bytes]) -> None:
        count = len(payloads)
        if not count:
            return
        state = self._state(queue)
        with state.lock:
            try:
                self._loaded(state)
            except DLQStorageError as error:
                raise DLQFullError(STORE_UNAVAILABLE, str(error), queue) from error
            check_limits(self._limits, state, count, sum(map(len, payloads)))
            max_payload = int(getattr(self._bridge.nc, "max_payload", 0) or 1 << 20)
            for body in messages.bodies(payloads, max_payload - 1024):
                if len(body.data) > max_payload - 1024:
                    raise DLQStorageError(
                        f"a frame of {len(body.data)} bytes is over the NATS server's "
                        f"max_payload ({max_payload} bytes): raise it to DLQ_MAX_MESSAGE_BYTES"
                    )
                publish(self._bridge, state, body, self._tail, self._delete_phantom)
            with self._states_lock:
                self._known.add(queue.main)

    def _tail(self, state: QueueState) -> StoredFrame | None:
        """The subject's last message, read again (after a refused publish)."""
        return self._get(state, None, "reload")

    def _delete_phantom(self, state: QueueState, seq: int) -> None:
        """Delete the message at ``seq``: a batch whose enqueue was refused, landed late."""
        from nats.js import errors as js_errors

        logger.warning(
            "queue %s: a batch refused earlier (its publish went unanswered) was stored "
            "late at stream sequence %d; deleted, its caller sends it again",
            state.queue,
            seq,
        )
        try:
            self._call(self._bridge.js.delete_msg(self.stream, seq), "delete", state)
        except js_errors.NotFoundError:
            pass  # already gone

    # ---------------------------------------------------------------- reading

    def read(self, queue: QueueId, max_items: int, *, ahead: bool = False) -> StoreLease:
        state = self._state(queue)
        with state.lock:
            check_read(queue, max_items, state.leases, ahead)
            self._loaded(state)
            self._fill(state, max_items)
            taken = state.buffer[:max_items]
            del state.buffer[:max_items]
            lease = StoreLease(queue, taken, (state.read_pos, 0))
            state.read_pos += len(taken)
            if taken:
                state.leases.append(lease)
            return lease

    def _fill(self, state: QueueState, wanted: int) -> None:
        """Fetch frames until the buffer holds ``wanted`` payloads or the subject ends."""
        while len(state.buffer) < wanted and state.buffer_end < state.end:
            frame = self._get(state, state.fetched_seq + 1, "read")
            if frame is None:
                return
            state.take_buffer(frame)
        if len(state.buffer) < wanted and state.buffer_end >= state.end and not state.unsure_ids:
            # Another writer may have added more. Not while a publish of ours went
            # unanswered: what it may have stored is not accepted (see writer.py).
            frame = self._get(state, state.fetched_seq + 1, "read")
            if frame is not None:
                state.take_buffer(frame)
                self._fill(state, wanted)

    def ack(self, lease: StoreLease, count: int | None = None) -> None:
        if not lease.payloads:
            return
        done = acked_count(lease, count)
        state = self._state(lease.queue)
        with state.lock:
            check_oldest(lease, state.leases)
            point = lease.token[0] + done
            kept = [frame for frame in state.frames if frame.end > point]
            gone = state.frames[: len(state.frames) - len(kept)]
            head = kept[0] if kept else None
            if gone:
                keep_from = head.seq if head is not None else state.fetched_seq + 1
                purge = self._bridge.js.purge_stream(
                    self.stream, subject=state.subject, seq=keep_from
                )
                self._call(purge, "ack", state)
            if head is not None and point > head.start:
                cursor = {"seq": head.seq, "id": head.msg_id, "pos": point}
                try:
                    self._save(state.queue, CURSOR_RECORD, json.dumps(cursor).encode())
                except OSError as error:
                    raise DLQStorageError(f"ack {state.queue}: {error}") from error
            state.frames = kept
            if gone:
                state.acked_bytes = gone[-1].bytes_end
                if head is None and state.fetched_seq >= state.last_seq:
                    state.last_seq = 0  # the subject is empty: the next publish expects none
            state.acked = point
            del state.leases[0]
            if done < len(lease.payloads):
                # The rest goes back to the head, a read-ahead lease with it.
                state.give_back(0, point, lease.payloads[done:])

    def release(self, lease: StoreLease) -> None:
        if not lease.payloads:
            return
        state = self._state(lease.queue)
        with state.lock:
            position = lease_position(lease, state.leases)
            state.give_back(position, lease.token[0])

    def peek(self, queue: QueueId, limit: int, *, newest: bool = False) -> list[bytes]:
        state = self._state(queue)
        with state.lock:
            self._loaded(state)
            if state.count <= 0 or limit < 1:
                return []
            if newest:
                last = self._get(state, None, "peek")
                return last.payloads()[-1:] if last is not None else []
            found = [payload for lease in state.leases for payload in lease.payloads]
            self._fill(state, limit - len(found))
            found.extend(state.buffer[: max(0, limit - len(found))])
            return found[:limit]

    def scan(self, queue: QueueId, chunk: int = 1000) -> Iterator[list[bytes]]:
        """Every unacknowledged payload, walking the subject a message at a time, unleased."""
        state = self._state(queue)
        seq = 0
        pending: list[bytes] = []
        while True:
            with state.lock:
                self._loaded(state)
                frame = self._get(state, seq + 1, "scan")
                acked = state.acked
            if frame is None:
                break
            seq = frame.seq
            if frame.end <= acked:
                continue
            pending.extend(frame.payloads()[max(0, acked - frame.start) :])
            while len(pending) >= chunk:
                yield pending[:chunk]
                del pending[:chunk]
        if pending:
            yield pending

    def count(self, queue: QueueId) -> int:
        state = self._state(queue)
        with state.lock:
            return self._loaded(state).count

    def stats(self, queue: QueueId) -> StoredStats:
        state = self._state(queue)
        with state.lock:
            self._loaded(state)
            stored = state.count
            return StoredStats(
                messages=stored,
                bytes_on_disk=max(0, state.bytes_end - state.acked_bytes) if stored else 0,
                segments=1 if stored else 0,
            )

    def list_queues(self) -> list[QueueId]:
        with self._states_lock:
            return sorted(self._known)

    def rescan(self) -> list[QueueId]:
        """The queues with messages in the stream (any engine's), and those held here."""
        try:
            info = self._bridge.run(
                self._bridge.js.stream_info(
                    self.stream, subjects_filter=queue_subjects(self._prefix)
                )
            )
        except StoreUnavailable as error:
            logger.warning("DLQ rescan skipped, JetStream unavailable: %s", error)
            return self.list_queues()
        found = set()
        for subject in (info.state.subjects or {}).keys():
            queue = subject_queue(self._prefix, subject)
            if queue is not None:
                found.add(queue.main)
        with self._states_lock:
            held = {s.queue.main for s in self._states.values() if s.loaded and s.count}
            self._known = found | held
            return sorted(self._known)

    def refresh_source(self, source_id: str) -> None:
        """Read ``source_id``'s queues from the stream again at their next use.

        Another engine owned them until now: its appends, acks and partial
        acks moved their ends and heads. A lane with a lease out is being
        read here already and is left as it is.
        """
        with self._states_lock:
            states = [s for q, s in self._states.items() if q.source_id == source_id]
        for state in states:
            with state.lock:
                if not state.leases:
                    state.loaded = False
        self.rescan()

    # ------------------------------------------------------------- the rest

    def queue_path(self, queue: QueueId) -> Path:
        """A local directory (status file, quarantine), made on first use."""
        path = self.base_path / queue.relative_path
        if queue not in self._made_dirs:
            path.mkdir(parents=True, exist_ok=True)
            self._made_dirs.add(queue)
        return path

    def purge(self, queue: QueueId) -> int:
        state = self._state(queue)
        with state.lock:
            self._loaded(state)
            removed = state.count
            purge = self._bridge.js.purge_stream(self.stream, subject=state.subject)
            self._call(purge, "purge", state)
            state.acked, state.acked_bytes = state.end, state.bytes_end
            state.last_seq = 0
            state.reset_reader()
            return removed

    def close_idle(self, idle_seconds: float) -> int:
        return 0

    def load_record(self, queue: QueueId, name: str) -> bytes | None:
        from nats.js import errors as js_errors

        try:
            entry = self._bridge.run(self._records.get(record_key(queue, name)))
        except (js_errors.KeyNotFoundError, js_errors.KeyDeletedError):
            return None
        except StoreUnavailable as error:
            raise StoreUnreachable(f"record {name} of {queue} not read: {error}") from error
        return entry.value

    def save_record(
        self, queue: QueueId, name: str, data: bytes | None, *, durable: bool = True
    ) -> bool:
        # Every write is on the quorum's disks before it is acknowledged: ``durable`` always.
        self._save(queue, name, data)
        return True

    def _save(self, queue: QueueId, name: str, data: bytes | None) -> None:
        from nats.js import errors as js_errors

        key = record_key(queue, name)
        try:
            if data is None:
                self._bridge.run(self._records.delete(key))
            else:
                self._bridge.run(self._records.put(key, data))
        except js_errors.KeyNotFoundError:
            return
        except StoreUnavailable as error:
            raise OSError(f"record {name} of {queue} not written: {error}") from error

    def _load_cursor(self, queue: QueueId) -> dict[str, Any] | None:
        try:
            data = self.load_record(queue, CURSOR_RECORD)
        except OSError as error:
            raise DLQStorageError(str(error)) from error
        try:
            value = json.loads(data) if data else None
        except ValueError:
            return None
        return value if isinstance(value, dict) else None

    def close(self) -> None:
        if self._closed:
            return
        self._closed = True
        if self._own_bridge:
            self._bridge.close()
