"""Reads a slot's lag in bytes and its ``wal_status`` from the source every few seconds.

A thread of its own asks, on a normal (not replication) connection it keeps
open, for the source's current WAL position minus the slot's
``confirmed_flush_lsn``. Readers (metrics scrapes, ``/health``, the alert
monitor) take the last answer and never wait on the source: a source that
is down or slow costs them nothing, and the source gets one small query per
``interval`` whatever the number of readers.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from typing import Any, NamedTuple

import psycopg2

from compute.sources.postgres.reader_thread import close_quietly

logger = logging.getLogger(__name__)

# On a standby the current position is the last WAL received (PostgreSQL 16
# and later can decode from a standby).
LAG_QUERY = (
    "SELECT pg_wal_lsn_diff(CASE WHEN pg_is_in_recovery() THEN pg_last_wal_receive_lsn() "
    "ELSE pg_current_wal_lsn() END, confirmed_flush_lsn)::bigint, wal_status "
    "FROM pg_replication_slots WHERE slot_name = %s"
)


class SlotLagReading(NamedTuple):
    """One check: the lag in bytes and ``wal_status`` (None when it failed), and when."""

    lag_bytes: int | None
    wal_status: str | None
    checked_at: float | None
    error: str | None


class SlotLagProbe:
    """Checks slot ``slot``'s lag every ``interval`` seconds; ``reading`` is the last result."""

    def __init__(
        self,
        dsn: str,
        slot: str,
        *,
        interval: float = 5.0,
        name: str = "",
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.dsn = dsn
        self.slot = slot
        self.interval = interval
        self.name = name or slot
        self._clock = clock
        self._conn: Any = None
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._failing = False
        self.reading = SlotLagReading(None, None, None, None)  # not checked yet

    def start(self) -> None:
        self._thread = threading.Thread(
            target=self._loop, name=f"pg-slot-lag-{self.name}", daemon=True
        )
        self._thread.start()

    def stop(self, timeout: float = 5.0) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout)
        self._close()

    def _loop(self) -> None:
        while not self._stop.is_set():
            self.run_once()
            self._stop.wait(self.interval)

    def run_once(self) -> SlotLagReading:
        """Check now; a failure is kept as the reading (with its reason), never raised."""
        try:
            lag, status = self._query()
        except Exception as error:  # the probe must outlive any failure of the source
            self._close()
            text = str(error).strip().splitlines()[0] if str(error).strip() else repr(error)
            self.reading = SlotLagReading(None, None, self._clock(), text)
            if not self._failing:
                logger.warning(
                    "replication lag not read: slot=%s error=%s", self.slot, self.reading.error
                )
            self._failing = True
            return self.reading
        if self._failing:
            logger.info("replication lag read again: slot=%s lag_bytes=%s", self.slot, lag)
        self._failing = False
        self.reading = SlotLagReading(lag, status, self._clock(), None)
        return self.reading

    def _query(self) -> tuple[int | None, str | None]:
        if self._conn is None:
            self._conn = psycopg2.connect(
                self.dsn,
                connect_timeout=5,
                application_name=f"rosetta-lag-{self.name}",
                options="-c statement_timeout=5000",
            )
            self._conn.autocommit = True
        with self._conn.cursor() as cur:
            cur.execute(LAG_QUERY, (self.slot,))
            row = cur.fetchone()
        if row is None:
            raise LookupError(f"replication slot {self.slot!r} does not exist on the source")
        lag, status = row
        return (None if lag is None else max(0, int(lag))), status

    def _close(self) -> None:
        conn, self._conn = self._conn, None
        close_quietly(conn)
