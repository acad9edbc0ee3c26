"""The PostgreSQL source: a logical replication slot (pgoutput) read as change events."""

from __future__ import annotations

import logging
import os
import time
from collections.abc import Mapping, Sequence
from typing import Any

from compute.sources.base import (
    RejectedEvent,
    ReplicationLag,
    Source,
    SourceBatch,
    SourceError,
)
from compute.sources.offset_store import OffsetStore
from compute.sources.postgres.slot import Slot, SlotError, TableKeyError
from compute.sources.postgres.slot_lag import SlotLagProbe
from compute.sources.postgres.snapshot import (
    ExportedSnapshot,
    InitialSnapshot,
    SnapshotError,
    create_exporting_slot,
)
from compute.sources.postgres.snapshot_state import COPYING, DONE, SnapshotProgress, SnapshotState
from compute.sources.postgres.source_types import read_column_types
from compute.sources.postgres.stream import ReplicationStream, StreamError
from compute.sources.postgres.table_keys import TableKey, key_problems
from destinations.records import ChangeRecord, format_pg_lsn, parse_pg_lsn

logger = logging.getLogger(__name__)

SNAPSHOT_MODES = ("initial", "never")
_SNAPSHOT_TOKEN = "snapshot:"  # resume token of copied rows: "snapshot:<rows handed out>"


class PostgresSource(Source):
    """Change events from PostgreSQL's logical replication, resumed from the slot itself.

    The slot is the offset store: its ``confirmed_flush_lsn`` moves only when
    ``acknowledge`` is called with a transaction's end LSN, i.e. once every
    change of that transaction (and of every earlier one) was committed by
    the destinations or accepted by the DLQ. After a crash the server sends
    again everything after it: changes may come twice, none is lost.

    ``snapshot``: "initial" (when this source creates the slot) copies the
    published tables' rows first, in the snapshot the slot exported as it was
    created, then streams from the slot; "never" only streams. A copy cut
    off by a lost connection is taken again within the run, one cut off by
    a crash at the next start, from the tables not yet copied, in a fresh
    snapshot (see ``_recopy``); the slot is kept, so no change after it is
    lost, and the stream leaves out the changes the new copy holds.

    Each published table's key comes from its replica identity (DEFAULT: the
    primary key; USING INDEX: that index); a table with REPLICA IDENTITY FULL
    is refused at start-up (before the publication or slot is created) unless
    it is in ``append_only``, whose tables' changes carry no key (each insert
    is appended). Truncates are TRUNCATE records, applied in order with the other changes.

    ``lag_interval``: seconds between reads of the slot's lag in bytes and
    ``wal_status`` on a normal connection (``replication_lag``).
    """

    def __init__(
        self,
        source_id: str,
        dsn: str,
        *,
        slot: str | None = None,
        publication: str | None = None,
        tables: Sequence[str] = (),
        append_only: Sequence[str] = (),
        create: bool = True,
        snapshot: str = "initial",
        status_interval: float = 10.0,
        max_buffered: int = 20_000,
        offsets: OffsetStore | None = None,
        lag_interval: float = 5.0,
    ) -> None:
        super().__init__(source_id)
        if snapshot not in SNAPSHOT_MODES:
            raise ValueError(
                f"snapshot must be one of {', '.join(SNAPSHOT_MODES)}, got {snapshot!r}"
            )
        if not isinstance(tables, list | tuple) or not all(isinstance(t, str) for t in tables):
            raise ValueError(f"tables must be a list of 'schema.table' names, got {tables!r}")
        if not (isinstance(status_interval, int | float) and 0 < status_interval <= 3600):
            raise ValueError(
                f"status_interval must be a number of seconds from 0 to 3600, got "
                f"{status_interval!r}"
            )
        if not (isinstance(lag_interval, int | float) and 0.1 <= lag_interval <= 3600):
            raise ValueError(
                f"lag_interval must be a number of seconds from 0.1 to 3600, got {lag_interval!r}"
            )
        self.dsn = dsn
        self.tables = tuple(tables)
        self.max_buffered = max_buffered
        self.slot = Slot(
            dsn,
            slot or f"rosetta_{source_id}",
            publication or f"rosetta_{source_id}",
            tables=tables,
            create=bool(create),
        )
        self.progress = SnapshotState(offsets, self.source_id)
        self.snapshot: InitialSnapshot | None = None
        self._snapshot_out = False
        # table -> consistent point of its latest copy in a temporary slot's
        # snapshot: its changes that committed before it are in that copy.
        self._recopied: dict[str, int] = {}
        self.skipped_in_copy = 0  # streamed changes left out as already copied
        try:
            # The keys first: a refused start must create neither publication nor slot.
            keys = self.slot.prepare_publication(
                lambda found: key_problems(source_id, found, append_only)
            )
            start = self._prepare(snapshot == "initial" and bool(create))
        except TableKeyError as error:
            raise SourceError(str(error)) from None
        except (SlotError, OSError, ValueError) as error:
            raise SourceError(f"source {source_id} (postgresql): {error}") from None
        except Exception as error:  # psycopg2.OperationalError: the server is not reachable
            raise SourceError(
                f"source {source_id} (postgresql): cannot reach the source database: "
                f"{str(error).strip()}"
            ) from None
        self.table_keys: dict[str, TableKey] = keys
        self.stream = ReplicationStream(
            dsn,
            self.slot.name,
            self.slot.publication,
            start_lsn=start,
            tables=tables,
            append_only=tuple(append_only),
            status_interval=float(status_interval),
            max_buffered=max_buffered,
            name=f"{source_id}",
        )
        self.stream.start()
        self.lag_probe = SlotLagProbe(
            dsn, self.slot.name, interval=float(lag_interval), name=f"{source_id}"
        )
        self.lag_probe.start()

    def _prepare(self, initial: bool) -> int:
        """The slot's start position, after starting the initial copy when one is due."""
        progress = self.progress.load()
        if progress is not None and progress.slot == self.slot.name:
            self._recopied = dict(progress.recopied)
        if initial and not self.slot.exists():
            # Saved before the slot exists: a crash from here on is an unfinished copy.
            self.progress.save(SnapshotProgress(self.slot.name, COPYING))
            self._recopied = {}
            conn, exported = create_exporting_slot(self.dsn, self.slot.name)
            try:
                logger.info(
                    "created replication slot with an exported snapshot: slot=%s plugin=pgoutput "
                    "consistent_point=%s snapshot=%s",
                    self.slot.name,
                    format_pg_lsn(exported.consistent_point),
                    exported.name,
                )
                self._start_copy(self._copy_tables(()), exported)
            finally:
                conn.close()  # the copy's transaction imported the snapshot: it keeps it
            return exported.consistent_point
        start = self.slot.prepare()
        if progress is not None and progress.slot == self.slot.name and progress.state == COPYING:
            self._recopy(progress.tables_done)
        return start

    def _recopy(self, tables_done: Sequence[str]) -> None:
        """Copy again the tables an interrupted initial copy had not finished.

        Their exported snapshot died with the crashed process, so a temporary
        slot exports a fresh one (consistent point C). Each such table is
        first emptied at the destination by a TRUNCATE record, queued behind
        whatever the interrupted copy wrote, then copied at (C - 1, n); the
        kept slot streams from before C, and its changes of these tables that
        committed before C (in the copy already) are left out. So an
        append-only table gets no row twice, and a keyed one loses the rows
        deleted since the first copy.
        """
        tables = self._copy_tables(tables_done)
        logger.warning(
            "initial copy was interrupted, copying again: source=%s slot=%s tables=%s "
            "tables_done=%s",
            self.source_id,
            self.slot.name,
            ",".join(tables) or "-",
            ",".join(tables_done) or "-",
        )
        self._start_copy(tables, None)

    def _copy_tables(self, done: Sequence[str]) -> list[str]:
        tables = list(self.tables) or self.slot.published_tables()
        return [t for t in tables if t not in done]

    def _start_copy(self, tables: Sequence[str], exported: ExportedSnapshot | None) -> None:
        self.snapshot = InitialSnapshot(
            self.dsn,
            tables,
            exported=exported,
            temporary_slot=f"{self.slot.name}_copy_{os.getpid()}",
            max_buffered=self.max_buffered,
            name=self.source_id,
        )
        self.snapshot.start()

    def declared_tables(self) -> Sequence[str]:
        """The published tables (those of ``tables`` when it is given)."""
        return list(self.table_keys)

    def key_columns(self, table: str) -> tuple[str, ...] | None:
        """The replica identity's columns; () for a table without one (NOTHING, or DEFAULT
        without a primary key), which replicates only as append-only."""
        key = self.table_keys.get(table)
        if key is None:
            return None  # published later: its changes name their key
        return key.columns

    def column_types(self, table: str) -> Mapping[str, str] | None:
        """``table``'s columns as the source's catalog types them now (``source_types.py``)."""
        return read_column_types(self.dsn, table)

    def read(self, max_events: int) -> SourceBatch:
        if self.snapshot is not None and not self._snapshot_out:
            try:
                records, handed = self.snapshot.take(max_events)
            except SnapshotError as error:
                raise SourceError(
                    f"source {self.source_id} (postgresql): the initial copy stopped: {error}; "
                    "it is taken again at the next start, from the tables not finished"
                ) from None
            self._save_recopies(self.snapshot)
            if not records and self.snapshot.done:
                self._snapshot_out = True  # the stream's changes follow every copied row
            else:
                return SourceBatch(records, f"{_SNAPSHOT_TOKEN}{handed}")
        try:
            records, end_lsn = self.stream.take(max_events)
        except StreamError as error:
            raise SourceError(f"source {self.source_id} (postgresql) stopped: {error}") from None
        if self._recopied:
            records = self._not_copied(records)
        return SourceBatch(records, format_pg_lsn(end_lsn) if end_lsn is not None else "")

    def _save_recopies(self, copy: InitialSnapshot) -> None:
        """Record durably where each table was copied again, before any of it is handed out."""
        recopied = {**self._recopied, **copy.recopies()}
        if recopied == self._recopied:
            return
        self._recopied = recopied
        progress = self.progress.load() or SnapshotProgress(self.slot.name, COPYING)
        self.progress.save(progress._replace(recopied=tuple(sorted(recopied.items()))))

    def _not_copied(self, records: list[ChangeRecord]) -> list[ChangeRecord]:
        """``records`` without the changes a table's copy in a later snapshot already holds."""
        kept = [r for r in records if r.position.commit >= self._recopied.get(r.table, 0)]
        self.skipped_in_copy += len(records) - len(kept)
        return kept

    def acknowledge(self, resume_token: str) -> None:
        if not resume_token:
            return
        if resume_token.startswith(_SNAPSHOT_TOKEN):
            self._acknowledge_copy(int(resume_token[len(_SNAPSHOT_TOKEN) :]))
            return
        self._acknowledge_copy(None)
        try:
            lsn = parse_pg_lsn(resume_token)
        except ValueError as error:
            raise SourceError(f"source {self.source_id}: bad resume token: {error}") from None
        self.stream.confirm(lsn)

    def _acknowledge_copy(self, rows: int | None) -> None:
        """Record the tables whose every copied row is safe (``rows``: None for all)."""
        copy = self.snapshot
        if copy is None:
            return
        progress = self.progress.load()
        if progress is None or progress.state != COPYING:
            return
        if rows is None or (copy.done and rows >= copy.handed):
            done = tuple(copy.tables)
        else:
            done = tuple(t for t, end in copy.table_ends.items() if end <= rows)
        tables = tuple(dict.fromkeys(progress.tables_done + done))
        if rows is None or (copy.done and rows >= copy.handed):
            self.progress.save(progress._replace(state=DONE, tables_done=tables))
            logger.info(
                "initial copy acknowledged: source=%s slot=%s rows=%d",
                self.source_id,
                self.slot.name,
                copy.handed,
            )
        elif tables != progress.tables_done:
            self.progress.save(progress._replace(tables_done=tables))

    def status(self) -> dict[str, Any]:
        """The slot, the position confirmed to it, and the initial copy's progress."""
        out: dict[str, Any] = {
            "slot": self.slot.name,
            "confirmed_lsn": format_pg_lsn(self.stream.confirmed),
            "buffered": self.stream.buffered,
            "skipped_in_copy": self.skipped_in_copy,
        }
        if self.snapshot is not None:
            out["snapshot"] = self.snapshot.status()
        return out

    @property
    def rejected(self) -> Sequence[RejectedEvent]:
        """Changes left out because a value could not be decoded exactly (the last 100)."""
        copied = list(self.snapshot.rejected) if self.snapshot is not None else []
        return [
            RejectedEvent(r.where, r.reason, r.raw)
            for r in copied + list(self.stream.assembler.rejected)
        ]

    @property
    def rejected_count(self) -> int:
        copied = self.snapshot.rejected_count if self.snapshot is not None else 0
        return copied + self.stream.assembler.rejected_count

    def replication_lag(self) -> ReplicationLag:
        reading = self.lag_probe.reading
        return ReplicationLag(
            self.slot.name,
            reading.lag_bytes,
            self.stream.lag_seconds(time.time()),
            reading.wal_status,
            reading.checked_at,
            reading.error,
        )

    def close(self) -> None:
        self.lag_probe.stop()
        if self.snapshot is not None:
            self.snapshot.stop()
        self.stream.stop()
