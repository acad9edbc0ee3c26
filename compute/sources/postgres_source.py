"""The PostgreSQL source: a logical replication slot (pgoutput) read as change events."""

from __future__ import annotations

import logging
from collections.abc import Sequence

from compute.sources.base import RejectedEvent, Source, SourceBatch, SourceError
from compute.sources.postgres.slot import Slot, SlotError
from compute.sources.postgres.stream import ReplicationStream, StreamError
from compute.sources.postgres.table_keys import TableKey, key_problems, published_keys
from destinations.records import format_pg_lsn, parse_pg_lsn

logger = logging.getLogger(__name__)

SNAPSHOT_MODES = ("initial", "never")


class PostgresSource(Source):
    """Change events from PostgreSQL's logical replication, resumed from the slot itself.

    The slot is the offset store: its ``confirmed_flush_lsn`` moves only when
    ``acknowledge`` is called with a transaction's end LSN, i.e. once every
    change of that transaction (and of every earlier one) was committed by
    the destinations or accepted by the DLQ. After a crash the server sends
    again everything after it: changes may come twice, none is lost.

    ``snapshot``: "never" streams from the slot's position; "initial" is
    accepted for configurations written for the initial copy, which this
    version does not make yet (it streams from the slot's position and says
    so in the log).

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
        self.slot = Slot(
            dsn,
            slot or f"rosetta_{source_id}",
            publication or f"rosetta_{source_id}",
            tables=tables,
            create=bool(create),
        )
        try:
            start = self.slot.prepare()
        except (SlotError, OSError) as error:
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
        if snapshot == "initial":
            logger.warning(
                "snapshot=initial: the initial copy is not made by this version; streaming "
                "changes from the slot's position: source=%s slot=%s",
                source_id,
                self.slot.name,
            )
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
        try:
            records, end_lsn = self.stream.take(max_events)
        except StreamError as error:
            raise SourceError(f"source {self.source_id} (postgresql) stopped: {error}") from None
        return SourceBatch(records, format_pg_lsn(end_lsn) if end_lsn is not None else "")

    def acknowledge(self, resume_token: str) -> None:
        if not resume_token:
            return
        try:
            lsn = parse_pg_lsn(resume_token)
        except ValueError as error:
            raise SourceError(f"source {self.source_id}: bad resume token: {error}") from None
        self.stream.confirm(lsn)

    @property
    def rejected(self) -> Sequence[RejectedEvent]:
        """Changes left out because a value could not be decoded exactly (the last 100)."""
        return [RejectedEvent(r.where, r.reason, r.raw) for r in self.stream.assembler.rejected]

    @property
    def rejected_count(self) -> int:
        return self.stream.assembler.rejected_count

    def close(self) -> None:
        self.stream.stop()
