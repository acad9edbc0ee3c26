"""Copies the published tables' rows in the snapshot a new replication slot exported, as changes.

The slot is created on a replication connection with ``SNAPSHOT 'export'``;
a second, ordinary connection imports that snapshot into a REPEATABLE READ
transaction while the first is still open and idle (the snapshot lives only
that long), after which the first may close: the importing transaction keeps
the snapshot for the whole copy. Each table is read with ``COPY ... TO
STDOUT`` (the type's own text output, decoded by type OID exactly as the
stream's values are) by a thread of its own into a bounded buffer, so a
large table is never held in memory and the copy waits while the pipeline
is in backpressure.

Every copied row is a snapshot-read upsert at ``SourcePosition(consistent
point - 1, n)`` (``n`` counts the rows of this copy): a transaction the slot
streams commits at or after its consistent point, so every streamed change
sorts after every copied row, and the position guard never lets a copied
row overwrite a newer change.
"""

from __future__ import annotations

import logging
import re
import time
from collections import deque
from collections.abc import Sequence
from typing import Any, NamedTuple

import psycopg2
import psycopg2.extensions
import psycopg2.extras
from psycopg2 import sql

from compute.sources.postgres.pg_types import session_options
from compute.sources.postgres.pgoutput import Column, Relation
from compute.sources.postgres.reader_thread import (
    RECONNECT,
    ReaderThread,
    close_quietly,
    first_line,
)
from compute.sources.postgres.row_decoder import ColumnValueError, RowDecoder
from compute.sources.postgres.transactions import REJECTED_KEPT, RejectedChange
from destinations.records import ChangeRecord, Operation, SourcePosition, parse_pg_lsn

logger = logging.getLogger(__name__)

_PROGRESS_EVERY = 5.0  # seconds between progress lines in the log

# The columns pgoutput sends (not dropped, not generated) and which of them
# form the replica identity, as the Relation message would mark them.
_COLUMNS = """
SELECT a.attname, a.atttypid, a.atttypmod,
       CASE c.relreplident
           WHEN 'f' THEN true
           WHEN 'n' THEN false
           ELSE a.attnum = ANY (
               SELECT unnest(i.indkey) FROM pg_index i
               WHERE i.indrelid = c.oid
                 AND CASE c.relreplident WHEN 'i' THEN i.indisreplident ELSE i.indisprimary END)
       END
FROM pg_attribute a JOIN pg_class c ON c.oid = a.attrelid
WHERE c.oid = (quote_ident(%s) || '.' || quote_ident(%s))::regclass
  AND a.attnum > 0 AND NOT a.attisdropped AND a.attgenerated = ''
ORDER BY a.attnum
"""
_ESTIMATE = (
    "SELECT greatest(reltuples, 0)::bigint FROM pg_class "
    "WHERE oid = (quote_ident(%s) || '.' || quote_ident(%s))::regclass"
)
_ESCAPE = re.compile(r"\\(x[0-9a-fA-F]{1,2}|[0-7]{1,3}|.)")
_ESCAPES = {"b": "\b", "f": "\f", "n": "\n", "r": "\r", "t": "\t", "v": "\v"}


class SnapshotError(RuntimeError):
    """The copy cannot go on in its snapshot (the connection was lost, a table went away)."""


def connection_lost(error: psycopg2.Error) -> bool:
    """A lost connection or a restarting server, rather than the server refusing a statement.

    A connection cut in the middle of a COPY can surface as a plain
    DatabaseError without a SQLSTATE (libpq's own failure), so that counts too.
    """
    lost = isinstance(error, psycopg2.OperationalError | psycopg2.InterfaceError)
    return lost or error.pgcode is None


class ExportedSnapshot(NamedTuple):
    """A slot's consistent point and the name of the snapshot exported with it."""

    consistent_point: int
    name: str


def create_exporting_slot(
    dsn: str, slot: str, *, temporary: bool = False
) -> tuple[Any, ExportedSnapshot]:
    """Create ``slot`` (pgoutput) exporting its snapshot; the still-open replication connection.

    The snapshot stays importable only while the returned connection is open
    and runs no other command: import it before closing the connection.
    """
    conn = psycopg2.connect(dsn, connection_factory=psycopg2.extras.LogicalReplicationConnection)
    try:
        option = (
            sql.SQL("(SNAPSHOT 'export')")
            if conn.server_version >= 150000
            else sql.SQL("EXPORT_SNAPSHOT")
        )
        statement = sql.SQL("CREATE_REPLICATION_SLOT {} {}LOGICAL pgoutput {}").format(
            sql.Identifier(slot), sql.SQL("TEMPORARY " if temporary else ""), option
        )
        with conn.cursor() as cur:
            cur.execute(statement)
            _, consistent_point, name, _ = cur.fetchone()
    except BaseException:
        conn.close()
        raise
    return conn, ExportedSnapshot(parse_pg_lsn(consistent_point), name)


def copy_text_fields(line: str) -> tuple[str | None, ...]:
    """One line of COPY's text format as its fields (``\\N`` is NULL, escapes undone)."""
    return tuple(
        None if field == "\\N" else _ESCAPE.sub(_unescape, field) if "\\" in field else field
        for field in line.split("\t")
    )


def _unescape(match: re.Match[str]) -> str:
    code = match.group(1)
    if code[0] == "x" and len(code) > 1:
        return chr(int(code[1:], 16))
    if code[0] in "01234567":
        return chr(int(code, 8))
    return _ESCAPES.get(code, code)


class InitialSnapshot(ReaderThread):
    """The rows of ``tables`` in an exported snapshot, read by a thread, taken in order.

    ``exported``: the snapshot the source's slot exported as it was created
    (``start()`` imports it: call it while the exporting connection is open).
    None: the tables are copied again after an interrupted copy, in the
    snapshot a temporary slot exports. A connection lost during the copy is
    retried with backoff the same way, within the run: the tables not copied
    to their end are copied again in a temporary slot's fresh snapshot.

    A table copied in a temporary slot's snapshot (consistent point C) starts
    with a TRUNCATE record, so what an earlier attempt wrote of it goes first
    (in order, behind those rows), and ``recopied`` maps it to C: the kept
    slot still streams the table's changes that committed before C, which the
    copy already holds, and the source leaves them out.

    ``take()`` hands out records and the number of records handed out so far;
    ``done`` is true once every row was handed out.
    """

    def __init__(
        self,
        dsn: str,
        tables: Sequence[str],
        *,
        exported: ExportedSnapshot | None = None,
        temporary_slot: str = "rosetta_copy",
        max_buffered: int = 20_000,
        name: str = "",
    ) -> None:
        super().__init__(f"pg-snapshot-{name}")
        self.dsn = dsn
        self.tables = tuple(tables)
        self.temporary_slot = temporary_slot
        self.max_buffered = max_buffered
        self.name = name
        self.exported = exported  # the snapshot being copied in
        self.commit = 0  # the copied rows' commit position: its consistent point - 1
        self.recopied: dict[str, int] = {}  # table -> consistent point of its copy
        self.retries = 0  # copies started again after a lost connection
        self.rejected: deque[RejectedChange] = deque(maxlen=REJECTED_KEPT)
        self.rejected_count = 0
        self.error: BaseException | None = None
        self.copied = 0  # rows read from the server
        self.queued = 0  # records put in the buffer (rows and truncates)
        self.handed = 0  # records handed out by take()
        self.estimated = 0  # the tables' row estimates (pg_class.reltuples)
        self.table_ends: dict[str, int] = {}  # table -> records handed out once it is all out
        self.current = ""
        self.started_at = 0.0
        self.finished_at: float | None = None
        self._copy_ends: list[tuple[str, int]] = []  # (table, records queued at its end)
        self._buffer: deque[ChangeRecord] = deque()
        self._finished = False
        self._seq = 0
        self._truncate_first = False
        self._conn: Any = None
        self._decoders: dict[str, RowDecoder] = {}
        self._last_log = 0.0

    # ------------------------------------------------------------ caller side

    def start(self) -> None:
        """Import the snapshot (the exporting connection must still be open), then copy."""
        self._open(self.exported)
        self.started_at = time.monotonic()
        assert self.exported is not None
        logger.info(
            "initial copy started: source=%s tables=%d estimated_rows=%d snapshot=%s "
            "consistent_point=%s",
            self.name,
            len(self.tables),
            self.estimated,
            self.exported.name,
            SourcePosition(self.exported.consistent_point),
        )
        self._start_thread()

    @property
    def done(self) -> bool:
        """Every row was copied and handed out."""
        with self._lock:
            self._settle()
            return self._finished and not self._buffer

    def _settle(self) -> None:
        # A table is all out once the records up to its end were handed out.
        while self._copy_ends and self._copy_ends[0][1] <= self.handed:
            table, _ = self._copy_ends.pop(0)
            self.table_ends[table] = self.handed

    def take(self, max_events: int) -> tuple[list[ChangeRecord], int]:
        """Up to ``max_events`` copied records in order, and the records handed out so far."""
        with self._lock:
            if self.error is not None and not self._buffer:
                raise SnapshotError(str(self.error)) from self.error
            count = min(max_events, len(self._buffer))
            out = [self._buffer.popleft() for _ in range(count)]
            self.handed += count
            self._settle()
            self._lock.notify_all()
            return out, self.handed

    def recopies(self) -> dict[str, int]:
        """Each table copied in a temporary slot's snapshot, and its consistent point."""
        with self._lock:
            return dict(self.recopied)

    def status(self) -> dict[str, Any]:
        """Progress: rows and tables copied, rows per second, the table being copied."""
        end = self.finished_at or time.monotonic()
        elapsed = max(end - self.started_at, 1e-6) if self.started_at else 0.0
        point = self.exported.consistent_point if self.exported is not None else 0
        return {
            "state": "copied" if self._finished else "copying",
            "tables_total": len(self.tables),
            "tables_copied": len(self.tables) - len(self._pending_tables()),
            "table": self.current,
            "rows_copied": self.copied,
            "rows_estimated": self.estimated,
            "rows_per_second": round(self.copied / elapsed, 1) if elapsed else 0.0,
            "consistent_point": str(SourcePosition(point)),
            "retries": self.retries,
            "rejected": self.rejected_count,
        }

    def _pending_tables(self) -> list[str]:
        """The tables not copied to their end yet (in any snapshot)."""
        with self._lock:
            copied = {table for table, _ in self._copy_ends} | set(self.table_ends)
        return [t for t in self.tables if t not in copied]

    # ------------------------------------------------------------ both sides

    def _open(self, exported: ExportedSnapshot | None) -> None:
        """Import ``exported`` (None: a temporary slot's new one) for the tables not copied."""
        tables = self._pending_tables()
        exporting = None
        if exported is None:
            slot = f"{self.temporary_slot}_{self.retries}"[-63:]
            exporting, exported = create_exporting_slot(self.dsn, slot, temporary=True)
        conn = psycopg2.connect(self.dsn, options=session_options())
        try:
            conn.set_session(
                isolation_level=psycopg2.extensions.ISOLATION_LEVEL_REPEATABLE_READ,
                readonly=True,
            )
            estimated = 0
            with conn.cursor() as cur:
                cur.execute("SET TRANSACTION SNAPSHOT %s", (exported.name,))
                for table in tables:
                    schema, _, name = table.rpartition(".")
                    cur.execute(_COLUMNS, (schema, name))
                    columns = tuple(Column(n, oid, mod, bool(key)) for n, oid, mod, key in cur)
                    relation = Relation(0, schema, name, "d", columns)
                    self._decoders[table] = RowDecoder(relation)
                    cur.execute(_ESTIMATE, (schema, name))
                    estimated += int(cur.fetchone()[0])
        except BaseException:
            conn.close()
            raise
        finally:
            if exporting is not None:
                # The temporary slot goes with its connection; the import keeps the snapshot.
                exporting.close()
        recopy = exporting is not None
        with self._lock:
            self._conn = conn
            self.exported = exported
            self.commit = exported.consistent_point - 1
            self._truncate_first = recopy
            if recopy:
                self.recopied.update(dict.fromkeys(tables, exported.consistent_point))
            if not self.estimated:
                self.estimated = estimated

    def _close(self) -> None:
        conn, self._conn = self._conn, None
        close_quietly(conn)

    # ------------------------------------------------------------ thread side

    def _run(self) -> None:
        failures = 0
        try:
            while True:
                copied = self.copied
                try:
                    if self._conn is None:
                        self._open(None)
                    for table in self._pending_tables():
                        self._copy(table)
                    self._conn.commit()
                    break
                except psycopg2.Error as error:
                    if self._stop.is_set() or not connection_lost(error):
                        raise
                    self._close()
                    failures = 1 if self.copied > copied else failures + 1
                    self._lost(error, failures)
        except BaseException as error:  # the stream side reports it, with every row before it
            if not self._stop.is_set():
                logger.error(
                    "initial copy stopped: source=%s table=%s rows_copied=%d error=%s",
                    self.name,
                    self.current,
                    self.copied,
                    first_line(error),
                )
            with self._lock:
                self.error = error
                self._lock.notify_all()
            return
        finally:
            self._close()
        self.finished_at = time.monotonic()
        with self._lock:
            self._finished = True
            self._lock.notify_all()
        self._log_progress(final=True)

    def _lost(self, error: BaseException, failures: int) -> None:
        """Wait before copying the unfinished tables again in a new snapshot."""
        delay = RECONNECT.next_delay(failures)
        self.retries += 1
        logger.warning(
            "initial copy connection lost, copying the unfinished tables again: source=%s "
            "table=%s tables=%s attempt=%d delay=%.1fs error=%s",
            self.name,
            self.current,
            ",".join(self._pending_tables()),
            failures,
            delay,
            first_line(error),
        )
        if self._stop.wait(delay):
            raise SnapshotError("the source is closing")

    def _copy(self, table: str) -> None:
        self.current = table
        decoder = self._decoders[table]
        schema, _, name = table.rpartition(".")
        statement = sql.SQL("COPY {} ({}) TO STDOUT").format(
            sql.Identifier(schema, name),
            sql.SQL(", ").join(sql.Identifier(n) for n in decoder.names),
        )
        before = self.copied
        if self._truncate_first:
            # What an earlier attempt wrote of this table goes first, in order.
            self._put(ChangeRecord(table, Operation.TRUNCATE, {}, None, self._position()))
        with self._conn.cursor() as cur:
            cur.copy_expert(statement, _CopyLines(self, table, decoder))
        with self._lock:
            self._copy_ends.append((table, self.queued))
        logger.info(
            "initial copy of a table done: source=%s table=%s rows=%d",
            self.name,
            table,
            self.copied - before,
        )

    def _position(self) -> SourcePosition:
        position = SourcePosition(self.commit, self._seq)
        self._seq += 1
        return position

    def add(self, table: str, decoder: RowDecoder, fields: tuple[str | None, ...]) -> None:
        """One copied row, as a snapshot-read record (waits while the buffer is full)."""
        position = self._position()
        self.copied += 1
        try:
            after = decoder.decode(fields).values
        except ColumnValueError as error:
            self.rejected_count += 1
            self.rejected.append(RejectedChange(f"{table} at {position}", str(error), repr(fields)))
            logger.error(
                "copied row rejected, a value cannot be decoded exactly: table=%s position=%s "
                "error=%s",
                table,
                position,
                error,
            )
            return
        key = {k: after.get(k) for k in decoder.key_columns}
        self._put(ChangeRecord(table, Operation.SNAPSHOT_READ, key, after, position, None, None))
        if time.monotonic() - self._last_log >= _PROGRESS_EVERY:
            self._log_progress()

    def _put(self, record: ChangeRecord) -> None:
        with self._lock:
            while len(self._buffer) >= self.max_buffered and not self._stop.is_set():
                self._lock.wait(0.5)
            if self._stop.is_set():
                raise SnapshotError("the source is closing")
            self._buffer.append(record)
            self.queued += 1

    def _log_progress(self, final: bool = False) -> None:
        self._last_log = time.monotonic()
        status = self.status()
        logger.info(
            "initial copy %s: source=%s tables=%d/%d table=%s rows=%d estimated_rows=%d "
            "rows_per_second=%.0f",
            "finished" if final else "progress",
            self.name,
            status["tables_copied"],
            status["tables_total"],
            status["table"],
            status["rows_copied"],
            status["rows_estimated"],
            status["rows_per_second"],
        )


class _CopyLines:
    """The file psycopg2's ``copy_expert`` writes COPY's output to: rows go to the snapshot."""

    def __init__(self, snapshot: InitialSnapshot, table: str, decoder: RowDecoder) -> None:
        self.snapshot = snapshot
        self.table = table
        self.decoder = decoder
        self._partial = ""

    def write(self, data: str | bytes) -> int:
        text = data.decode("utf-8") if isinstance(data, bytes) else data
        lines = (self._partial + text).split("\n")
        self._partial = lines.pop()
        for line in lines:
            self.snapshot.add(self.table, self.decoder, copy_text_fields(line))
        return len(data)
