"""Streams a replication slot in a thread of its own: whole transactions in, safe positions out.

One thread owns the replication connection (psycopg2 connections are not to
be used by two threads at once): it reads pgoutput messages, assembles them
into committed transactions in a bounded buffer, and sends the standby status
updates. ``take`` (the source's reader) and ``confirm`` (acknowledgements)
only touch the buffer and a number under a lock. When the buffer is full the
thread stops reading but keeps sending status updates every
``status_interval``, so a pipeline in backpressure for longer than the
server's ``wal_sender_timeout`` keeps its connection. A lost connection or a
restarting server is retried with backoff, from the end of the last
transaction received; the slot is never dropped.
"""

from __future__ import annotations

import logging
import select
import threading
import time
from collections import deque
from collections.abc import Collection
from typing import Any

import psycopg2
import psycopg2.extras

from compute.sources.postgres.pg_types import session_options
from compute.sources.postgres.pgoutput import PgOutputError
from compute.sources.postgres.reader_thread import (
    RECONNECT,
    ReaderThread,
    close_quietly,
    first_line,
)
from compute.sources.postgres.standby_status import StandbyStatus, StandbyStatusError
from compute.sources.postgres.transactions import (
    Transaction,
    TransactionAssembler,
    TransactionError,
)
from destinations.records import ChangeRecord, format_pg_lsn

logger = logging.getLogger(__name__)

# psycopg2's own periodic feedback is switched off (see standby_status.py):
# this thread sends every status update itself.
_PSYCOPG_STATUS_INTERVAL = 1e9
_POLL = 0.2
# Messages read between two looks at the stop flag, the buffer's room and the
# status clock: well under a millisecond of decoding for ordinary rows.
_RUN = 100


class StreamError(RuntimeError):
    """The stream cannot go on safely (a change it cannot represent, an undecodable message)."""


class ReplicationStream(ReaderThread):
    """Committed transactions of slot ``slot`` (publication ``publication``), read by a thread."""

    def __init__(
        self,
        dsn: str,
        slot: str,
        publication: str,
        *,
        start_lsn: int = 0,
        tables: Collection[str] = (),
        append_only: Collection[str] = (),
        status_interval: float = 10.0,
        max_buffered: int = 20_000,
        name: str = "",
    ) -> None:
        super().__init__(f"pg-stream-{name or slot}")
        self.dsn = dsn
        self.slot = slot
        self.publication = publication
        self.status_interval = status_interval
        self.max_buffered = max_buffered
        self.name = name or slot
        self.assembler = TransactionAssembler(tables=tables, append_only=append_only)
        self._buffer: deque[Transaction] = deque()
        self._buffered = 0  # records in _buffer
        self._head_taken = 0  # records of _buffer[0] already handed out
        self._received_lsn = start_lsn  # end of the last whole transaction received
        self._confirmed = start_lsn  # safe to confirm: acknowledged by the pipeline
        self._taken_lsn = start_lsn  # end of the last transaction handed out whole
        self._resent_through = 0  # transactions up to here were received before a reconnect
        # (end LSN, commit time) of transactions with changes received, not yet confirmed.
        self._unconfirmed: deque[tuple[int, float]] = deque()
        self._sent_flush = 0
        self._last_status = 0.0
        self.error: BaseException | None = None
        self.connected = threading.Event()
        self.reconnects = 0

    # ------------------------------------------------------------ caller side

    def start(self) -> None:
        self._start_thread()

    def take(self, max_events: int) -> tuple[list[ChangeRecord], int | None]:
        """Up to ``max_events`` records in order, and the end LSN of the last whole transaction
        among them (None when they end inside a transaction or there are none)."""
        if self.error is not None and not self._buffer:
            # Every whole transaction before the failure was handed out first.
            raise StreamError(str(self.error)) from self.error
        out: list[ChangeRecord] = []
        token: int | None = None
        with self._lock:
            while self._buffer and len(out) < max_events:
                head = self._buffer[0]
                room = max_events - len(out)
                part = head.records[self._head_taken : self._head_taken + room]
                out.extend(part)
                self._head_taken += len(part)
                self._buffered -= len(part)
                if self._head_taken >= len(head.records):
                    self._buffer.popleft()
                    self._head_taken = 0
                    token = head.end_lsn
                    self._taken_lsn = head.end_lsn
            self._lock.notify_all()
        return out, token

    def confirm(self, lsn: int) -> None:
        """Everything up to ``lsn`` (a transaction's end LSN) is safe: the slot may move there."""
        with self._lock:
            if lsn > self._confirmed:
                self._confirmed = lsn
                self._lock.notify_all()
            while self._unconfirmed and self._unconfirmed[0][0] <= lsn:
                self._unconfirmed.popleft()

    def lag_seconds(self, now: float) -> float:
        """Seconds since the commit of the oldest transaction received and not yet confirmed
        (the one right after the last confirmed); 0 when every one received is confirmed."""
        with self._lock:
            oldest = self._unconfirmed[0][1] if self._unconfirmed else None
        return 0.0 if oldest is None else max(0.0, now - oldest)

    @property
    def confirmed(self) -> int:
        return self._confirmed

    @property
    def buffered(self) -> int:
        return self._buffered

    # ------------------------------------------------------------ thread side

    def _run(self) -> None:
        attempt = 0
        while not self._stop.is_set():
            conn = None
            try:
                conn, cursor = self._connect()
                attempt = 0
                self._stream(conn, cursor)
            except (TransactionError, PgOutputError) as error:
                self.error = error
                self.connected.clear()
                logger.error("replication stream stopped: slot=%s error=%s", self.slot, error)
                return
            except (psycopg2.Error, StandbyStatusError, OSError) as error:
                attempt += 1
                delay = RECONNECT.next_delay(attempt)
                self.connected.clear()
                self.reconnects += 1
                logger.warning(
                    "replication connection lost, reconnecting: slot=%s attempt=%d delay=%.1fs "
                    "error=%s",
                    self.slot,
                    attempt,
                    delay,
                    first_line(error),
                )
                self._stop.wait(delay)
            except Exception as error:
                # A bug, not a lost connection: stop loudly. Were it left to end the
                # thread, take() would return nothing forever and the pipeline would
                # look idle while the slot's changes waited.
                self.error = error
                self.connected.clear()
                logger.error(
                    "replication stream failed: slot=%s error=%s: %s",
                    self.slot,
                    type(error).__name__,
                    error,
                    exc_info=error,
                )
                return
            finally:
                close_quietly(conn)
        self.connected.clear()

    def _connect(self) -> tuple[Any, Any]:
        # The session settings the value converters read exactly (DateStyle ISO, ...).
        conn = psycopg2.connect(
            self.dsn,
            connection_factory=psycopg2.extras.LogicalReplicationConnection,
            options=session_options(),
        )
        try:
            cursor = conn.cursor()
            # A transaction cut off by the lost connection is sent again from its start.
            self.assembler.reset()
            with self._lock:
                # Resume from the confirmed position, not from the last transaction
                # received: until a data message arrives on a connection, psycopg2
                # moves its own flush position to each keepalive's wal_end and sends
                # it whenever the server asks for a reply. Resumed past transactions
                # held here unacknowledged, that would confirm them. From here, the
                # server sends them again first; _received drops the copies.
                start = self._confirmed
                self._resent_through = self._received_lsn
            cursor.start_replication(
                slot_name=self.slot,
                decode=False,
                start_lsn=start,
                options={"proto_version": "1", "publication_names": self.publication},
                status_interval=_PSYCOPG_STATUS_INTERVAL,
            )
        except BaseException:
            conn.close()
            raise
        self._sent_flush = 0
        logger.info(
            "replication started: slot=%s publication=%s start_lsn=%s",
            self.slot,
            self.publication,
            format_pg_lsn(start),
        )
        self.connected.set()
        return conn, cursor

    def _stream(self, conn: Any, cursor: Any) -> None:
        status = StandbyStatus(conn)
        self._send_status(status, force=True)
        read = cursor.read_message
        feed = self.assembler.feed_bytes
        received: list[Transaction] = []
        try:
            while not self._stop.is_set():
                # Read without the lock: a stale count only moves the wait by one round.
                if self._buffered >= self.max_buffered:
                    with self._lock:
                        if self._buffered >= self.max_buffered:
                            # Backpressure: read nothing more, but keep the connection alive.
                            self._lock.wait(min(_POLL, self.status_interval))
                    self._send_status(status)
                    continue
                self._send_status(status)
                # A run of messages between the checks above, so that the lock, the
                # clock and the stop flag cost once per run rather than per change;
                # the run ends early once the buffer would be full.
                room = self.max_buffered - self._buffered
                message = None
                for _ in range(_RUN):
                    message = read()
                    if message is None:
                        break
                    transaction = feed(message.payload)
                    if transaction is not None:
                        received.append(transaction)
                        room -= len(transaction.records)
                        if room <= 0:
                            break
                self._received(received)
                received = []
                if message is None:
                    if not self.assembler.in_transaction:
                        self._idle(cursor.wal_end)
                    select.select([conn], [], [], _POLL)
        finally:
            # Whole transactions read before a lost connection or a stop are kept.
            self._received(received)

    def _received(self, transactions: list[Transaction]) -> None:
        with self._lock:
            for transaction in transactions:
                self._receive(transaction)

    def _receive(self, transaction: Transaction) -> None:
        """Buffer one whole transaction (the caller holds the lock)."""
        if transaction.end_lsn <= self._resent_through:
            return  # received before the reconnect: already buffered or handed out
        if transaction.records:
            self._buffer.append(transaction)
            self._buffered += len(transaction.records)
            commit_ts = transaction.records[0].commit_ts
            if commit_ts is not None:
                self._unconfirmed.append((transaction.end_lsn, commit_ts))
        elif not self._buffer and self._confirmed >= self._taken_lsn:
            # Nothing of this transaction is published and nothing before it
            # is pending: it is as safe as what was confirmed last.
            self._confirmed = max(self._confirmed, transaction.end_lsn)
            self._taken_lsn = max(self._taken_lsn, transaction.end_lsn)
        else:
            # An empty transaction behind pending ones is confirmed with them.
            self._buffer.append(transaction)
        self._received_lsn = transaction.end_lsn

    def _idle(self, wal_end: int) -> None:
        """Nothing is pending: confirm the server's ``wal_end`` so the slot keeps no old WAL.

        Safe only here: the stream is between transactions, every transaction
        received was handed out and acknowledged, and the server sends a
        keepalive's ``wal_end`` only after every transaction committed before
        it. Busy tables outside the publication would otherwise hold WAL on
        the source for as long as the published ones stay quiet.
        """
        with self._lock:
            if (
                not self._buffer
                and self._confirmed >= self._taken_lsn >= self._received_lsn
                and wal_end > self._confirmed
            ):
                self._confirmed = wal_end
                self._taken_lsn = wal_end
                self._received_lsn = wal_end

    def _send_status(self, status: StandbyStatus, force: bool = False) -> None:
        """A status update when the safe position moved, or every ``status_interval``."""
        with self._lock:
            flush = self._confirmed
            write = max(self._received_lsn, flush)
        now = time.monotonic()
        if (
            not force
            and flush <= self._sent_flush
            and now - self._last_status < self.status_interval
        ):
            return
        status.send(write, flush)
        self._sent_flush = flush
        self._last_status = now
