"""The PostgreSQL source: a logical replication slot (pgoutput) read as change events."""

from __future__ import annotations

import logging
import os
from collections.abc import Sequence
from typing import Any

from compute.sources.base import RejectedEvent, Source, SourceBatch, SourceError
from compute.sources.offset_store import OffsetStore
from compute.sources.postgres.slot import Slot, SlotError
from compute.sources.postgres.snapshot import (
    ExportedSnapshot,
    InitialSnapshot,
    SnapshotError,
    create_exporting_slot,
)
from compute.sources.postgres.snapshot_state import COPYING, DONE, SnapshotProgress, SnapshotState
from compute.sources.postgres.stream import ReplicationStream, StreamError
from compute.sources.postgres.table_keys import TableKey, key_problems, published_keys
from destinations.records import format_pg_lsn, parse_pg_lsn

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
    created, then streams from the slot; "never" only streams. An initial
    copy cut off by a crash is taken again at the next start, from the
    tables not yet copied and acknowledged, in a fresh snapshot (see
    ``_recopy``); the slot is kept, so no change after it is lost.

    Each published table's key comes from its replica identity (DEFAULT: the
    primary key; USING INDEX: that index); a table with REPLICA IDENTITY FULL
    is refused at start-up unless it is in ``append_only``, whose tables'
    changes carry no key (each insert is appended). Truncates are TRUNCATE
    records, applied in order with the other changes.
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
        try:
            start = self._prepare(snapshot == "initial" and bool(create))
        except (SlotError, OSError, ValueError) as error:
            raise SourceError(f"source {source_id} (postgresql): {error}") from None
        except Exception as error:  # psycopg2.OperationalError: the server is not reachable
            raise SourceError(
                f"source {source_id} (postgresql): cannot reach the source database: "
                f"{str(error).strip()}"
            ) from None
        try:
            keys = published_keys(dsn, self.slot.publication)
        except Exception as error:  # psycopg2.Error: the catalog could not be read
            raise SourceError(
                f"source {source_id} (postgresql): cannot read the published tables' replica "
                f"identity: {str(error).strip()}"
            ) from None
        if tables:
            keys = {table: key for table, key in keys.items() if table in tables}
        problems = key_problems(source_id, keys, append_only)
        if problems:
            raise SourceError("\n".join(problems))
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

    def _prepare(self, initial: bool) -> int:
        """The slot's start position, after starting the initial copy when one is due."""
        progress = self.progress.load()
        if initial and not self.slot.exists():
            self.slot.ensure_publication()
            # Saved before the slot exists: a crash from here on is an unfinished copy.
            self.progress.save(SnapshotProgress(self.slot.name, COPYING))
            conn, exported = create_exporting_slot(self.dsn, self.slot.name)
            try:
                logger.info(
                    "created replication slot with an exported snapshot: slot=%s plugin=pgoutput "
                    "consistent_point=%s snapshot=%s",
                    self.slot.name,
                    format_pg_lsn(exported.consistent_point),
                    exported.name,
                )
                self._start_copy(exported, self._copy_tables(()))
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
        slot exports a fresh one. Its rows sit at (that slot's consistent
        point - 1, n): after every change the kept slot still streams from
        before that point, so the position guard skips those older changes
        for the rows copied, and applies deletes of rows the new copy no
        longer has; without the guard, the replayed changes are applied over
        the newer rows and the later ones bring each row back to its latest
        value. The temporary slot goes away with its connection.
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
        temporary = f"{self.slot.name}_copy_{os.getpid()}"[-63:]
        conn, exported = create_exporting_slot(self.dsn, temporary, temporary=True)
        try:
            self._start_copy(exported, tables)
        finally:
            conn.close()

    def _copy_tables(self, done: Sequence[str]) -> list[str]:
        tables = list(self.tables) or self.slot.published_tables()
        return [t for t in tables if t not in done]

    def _start_copy(self, exported: ExportedSnapshot, tables: Sequence[str]) -> None:
        self.snapshot = InitialSnapshot(
            self.dsn, exported, tables, max_buffered=self.max_buffered, name=self.source_id
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

    def read(self, max_events: int) -> SourceBatch:
        if self.snapshot is not None and not self._snapshot_out:
            try:
                records, handed = self.snapshot.take(max_events)
            except SnapshotError as error:
                raise SourceError(
                    f"source {self.source_id} (postgresql): the initial copy stopped: {error}; "
                    "it is taken again at the next start, from the tables not finished"
                ) from None
            if not records and self.snapshot.done:
                self._snapshot_out = True  # the stream's changes follow every copied row
            else:
                return SourceBatch(records, f"{_SNAPSHOT_TOKEN}{handed}")
        try:
            records, end_lsn = self.stream.take(max_events)
        except StreamError as error:
            raise SourceError(f"source {self.source_id} (postgresql) stopped: {error}") from None
        return SourceBatch(records, format_pg_lsn(end_lsn) if end_lsn is not None else "")

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
            self.progress.save(SnapshotProgress(self.slot.name, DONE, tables))
            logger.info(
                "initial copy acknowledged: source=%s slot=%s rows=%d",
                self.source_id,
                self.slot.name,
                copy.handed,
            )
        elif tables != progress.tables_done:
            self.progress.save(SnapshotProgress(self.slot.name, COPYING, tables))

    def status(self) -> dict[str, Any]:
        """The slot, the position confirmed to it, and the initial copy's progress."""
        out: dict[str, Any] = {
            "slot": self.slot.name,
            "confirmed_lsn": format_pg_lsn(self.stream.confirmed),
            "buffered": self.stream.buffered,
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

    def close(self) -> None:
        if self.snapshot is not None:
            self.snapshot.stop()
        self.stream.stop()
