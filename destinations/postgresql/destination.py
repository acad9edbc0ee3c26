"""PostgreSQL destination: applies CDC batches idempotently with psycopg2.

A batch is collapsed to one change per primary key (its net effect), then
applied in one transaction (the statements: ``apply.py``):

* large batches (or any batch with the position guard on) are copied into a
  temporary stage table with ``COPY``, then applied with one
  ``DELETE ... USING stage`` and one ``INSERT ... SELECT ... ON CONFLICT (pk)
  DO UPDATE``, sent together in one round trip;
* small batches (fewer than ``copy_threshold`` changes) skip the stage and go
  straight to the target with ``execute_values``.

Position guard (``position_guard=True``, ``position_guard.py``): a change is
applied only if it is newer than the row's stored source position, and
deletes leave tombstones in a side table, so an out-of-order replay can never
regress or resurrect a row.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from functools import partial

import psycopg2
import psycopg2.errors
import psycopg2.extras
from psycopg2 import sql
from psycopg2.extensions import connection as PgConnection
from psycopg2.extensions import cursor as PgCursor
from psycopg2.extensions import parse_dsn

from config.dsn import dsn_problem
from config.errors import ConfigError
from destinations.base import PreparedBatch
from destinations.connection_watchdog import ConnectionWatchdog, shutdown_socket
from destinations.errors import (
    ClassifiedError,
    DestinationError,
    DestinationTimeoutError,
    TableLevelDestinationError,
)
from destinations.net_effect import BatchLayout, layout, net_effect
from destinations.ordered_parts import Part, ordered_parts
from destinations.postgresql.append_only import append_groups
from destinations.postgresql.apply import (
    TableInfo,
    apply_append,
    apply_staged,
    apply_values,
    create_tombstone_table,
    stage_chunks,
    stages,
)
from destinations.postgresql.catalog import read_table_info
from destinations.postgresql.connection import connect
from destinations.postgresql.errors import classify
from destinations.postgresql.ordered_apply import apply_parts
from destinations.postgresql.position_guard import (
    tombstone_table_name,
    with_positions,
    without_positions,
)
from destinations.postgresql.schema_evolution import evolve
from destinations.postgresql.table_check import target_problem
from destinations.postgresql.truncate_watermark import create_truncates_table
from destinations.postgresql.value_check import checked_group
from destinations.records import (
    POSITION_COMMIT_COLUMN,
    POSITION_SEQ_COLUMN,
    ChangeRecord,
)
from destinations.schema_evolution import checked_mode, key_of
from destinations.session import SessionDestination

logger = logging.getLogger(__name__)

TargetSpec = str | tuple[str, str]


@dataclass(frozen=True, slots=True)
class _PreparedWrite:
    """What ``prepare_batch`` worked out ahead of the write."""

    target: tuple[str | None, str]
    changes: list[ChangeRecord]
    # The catalog entry the plan was made against (None: not read yet, so the
    # write plans for itself); the write uses the plan only if it is still current.
    info: TableInfo | None = None
    plan: BatchLayout | None = None
    # COPY text of each stage table (see stages), for the staged path.
    copy_chunks: list[list[str]] | None = None
    # An append-only table: ``changes`` are the batch's records, each a new row.
    append: bool = False
    # Truncates or key moves: the batch in parts applied in order (ordered_parts).
    parts: list[Part] | None = None


class PostgreSQLDestination(SessionDestination[PgConnection]):
    """Writes CDC batches to PostgreSQL tables by primary key.

    ``table_map`` maps a source table (``ChangeRecord.table``) to its target,
    as ``"schema.table"`` (split at the first dot) or a ``(schema, table)``
    tuple; by default the target has the source table's name. Record columns
    must exist in the target; target columns absent from a record are left
    alone on update and take their default on insert.

    ``write_timeout`` bounds one batch (all its statements and the commit) on
    the client side: a server that stops answering mid-write (a blackholed
    network, a hung proxy) gets its connection cut after that many seconds,
    and the write fails as transient (retried or queued, never lost). ``None``
    waits forever. ``statement_timeout`` is the server-side bound and cannot
    help when the server never sees the statement.
    """

    _close_errors = (psycopg2.Error,)

    def __init__(
        self,
        destination_id: str,
        name: str,
        dsn: str,
        *,
        table_map: Mapping[str, TargetSpec] | None = None,
        position_guard: bool = False,
        connect_timeout: float = 5.0,
        copy_threshold: int = 200,
        statement_timeout: float | None = None,
        write_timeout: float | None = 60.0,
        schema_evolution: str = "none",
    ) -> None:
        super().__init__(destination_id, name)
        if write_timeout is not None and (
            isinstance(write_timeout, bool)
            or not isinstance(write_timeout, int | float)
            or not write_timeout > 0
        ):
            raise ConfigError(
                [
                    f"destination {destination_id}: write_timeout must be a positive number "
                    f"of seconds, got {write_timeout!r}"
                ]
            )
        problem = dsn_problem(dsn)
        if problem is not None:
            raise ConfigError(
                [f"destination {name} (ID={destination_id}): dsn: invalid DSN: {problem}"]
            )
        self._dsn = dsn  # may hold a password: never logged, never in repr
        # Masked literally in every error text this destination hands out.
        self._secrets = (parse_dsn(dsn).get("password"),)
        self._table_map = dict(table_map or {})
        self.position_guard = position_guard
        self.connect_timeout = connect_timeout
        self.copy_threshold = copy_threshold
        self.statement_timeout = statement_timeout
        self.write_timeout = write_timeout
        self.schema_evolution = checked_mode(f"destination {destination_id}", schema_evolution)
        self._watchdog = ConnectionWatchdog(f"{name}:{destination_id}")
        self._tables: dict[tuple[str | None, str], TableInfo] = {}
        self._tombstones_ready: set[tuple[str, str]] = set()

    def __repr__(self) -> str:
        return (
            f"PostgreSQLDestination(id={self.destination_id!r}, name={self.name!r}, "
            f"position_guard={self.position_guard})"
        )

    # ------------------------------------------------------------------ writes

    def write_batch(self, table: str, records: Sequence[ChangeRecord]) -> int:
        """Apply ``records`` in one transaction; returns ``len(records)``.

        Every record is then reflected in the table: applied, or superseded by a
        later change to the same key (in the batch, or already in the table when
        the position guard is on).
        """
        if not records:
            return 0
        parts = ordered_parts(records)
        if parts is not None:
            prepared = _PreparedWrite(self._target_of(table), list(records), parts=parts)
            return self._write(table, len(records), prepared)
        if self._appends(table, records):
            prepared = _PreparedWrite(self._target_of(table), list(records), append=True)
            return self._write(table, len(records), prepared)
        return self._write(
            table, len(records), _PreparedWrite(self._target_of(table), net_effect(records))
        )

    def _appends(self, table: str, records: Sequence[ChangeRecord]) -> bool:
        """Append-only: declared so, or its changes carry no key (a table without one)."""
        return self.appends_only(table) or not records[0].key

    def prepare_batch(self, table: str, records: Sequence[ChangeRecord]) -> PreparedBatch:
        """Collapse, lay out and (for the staged path) format the COPY text now.

        The plan needs the target's columns; before the first write to a
        table they are not known yet, and the write plans for itself. So it
        does when planning here fails (a column missing, a value it cannot
        format): the write then fails the same way and, failing, re-reads the
        catalog, which picks up a column added since.
        """
        if records and (self._appends(table, records) or ordered_parts(records) is not None):
            return PreparedBatch(table, records)  # the write lays it out
        changes = net_effect(records)
        target = self._target_of(table)
        info = self._tables.get(target)
        if info is None or not changes:
            return PreparedBatch(table, records, _PreparedWrite(target, changes))
        try:
            plan = self._plan(info, changes)
            chunks = None
            if self.position_guard or len(plan) >= self.copy_threshold:
                chunks = [list(stage_chunks(*stage)) for stage in stages(plan)]
        except DestinationError:
            return PreparedBatch(table, records, _PreparedWrite(target, changes))
        return PreparedBatch(table, records, _PreparedWrite(target, changes, info, plan, chunks))

    def write_prepared(self, batch: PreparedBatch) -> int:
        work = batch.work
        if not isinstance(work, _PreparedWrite):
            return self.write_batch(batch.table, batch.records)
        if not batch.records:
            return 0
        return self._write(batch.table, len(batch.records), work)

    def _write(self, table: str, count: int, prepared: _PreparedWrite) -> int:
        self._write_once_more(table, lambda: self._apply(prepared))
        logger.debug(
            "batch applied destination=%s table=%s records=%d net=%d",
            self,
            table,
            count,
            len(prepared.changes),
        )
        return count

    def _apply(self, prepared: _PreparedWrite) -> None:
        conn = self._current_session()
        try:
            # The watch ends before _abort() closes the connection, so the
            # watchdog never touches a descriptor the driver has released.
            with self._watchdog.watch(self.write_timeout, lambda: _cut(conn)) as cut:
                try:
                    with conn.cursor() as cur:
                        if self.schema_evolution != "basic" or self._evolve(cur, prepared):
                            self._write_rows(cur, prepared)
                    conn.commit()
                except psycopg2.Error as exc:
                    if cut():
                        raise DestinationTimeoutError(
                            f"{self}: no answer from the server within "
                            f"write_timeout={self.write_timeout:g}s; connection dropped"
                        ) from exc
                    raise
        except BaseException:
            self._abort()
            raise

    def _write_rows(self, cur: PgCursor, prepared: _PreparedWrite) -> None:
        info = self._table_info(cur, prepared.target)
        if prepared.parts is not None:
            # In order, in this one transaction: all of it lands or none.
            rows = partial(self._apply_rows, cur, info)
            apply_parts(cur, info, prepared.parts, self.position_guard, rows)
        elif prepared.append:
            groups = append_groups(info, prepared.changes)
            apply_append(cur, info, groups, guard=self.position_guard)
        else:
            self._apply_by_key(cur, info, prepared)

    def _apply_rows(self, cur: PgCursor, info: TableInfo, records: list[ChangeRecord]) -> None:
        if self._appends(records[0].table, records):
            apply_append(cur, info, append_groups(info, records), guard=self.position_guard)
        else:
            self._apply_by_key(
                cur, info, _PreparedWrite((info.schema, info.name), net_effect(records))
            )

    def _apply_by_key(self, cur: PgCursor, info: TableInfo, prepared: _PreparedWrite) -> None:
        chunks = None
        if prepared.info is info and prepared.plan is not None:
            # Planned against the current catalog entry: still valid.
            plan, chunks = prepared.plan, prepared.copy_chunks
        else:
            plan = self._plan(info, prepared.changes)
        if self.position_guard:
            tombstones = self._ensure_tombstones(cur, info, plan.keys)
            apply_staged(cur, info, plan, tombstones, chunks)
        elif len(plan) < self.copy_threshold:
            apply_values(cur, info, plan)
        else:
            apply_staged(cur, info, plan, None, chunks)

    def _plan(self, info: TableInfo, changes: list[ChangeRecord]) -> BatchLayout:
        """Lay the changes out by column, checked against the target table."""
        plan = layout(changes)
        self._check_columns(info, plan.keys, "key")
        for group in plan.upserts:
            self._check_columns(info, group.columns, "record")
        plan = BatchLayout(
            plan.keys,
            [checked_group(info.columns, info.full_types, g) for g in plan.upserts],
            plan.deletes and checked_group(info.columns, info.full_types, plan.deletes),
        )
        if not self.position_guard:
            return plan
        return BatchLayout(
            plan.keys,
            [with_positions(without_positions(g)) for g in plan.upserts],
            with_positions(plan.deletes),
        )

    def _check_columns(self, info: TableInfo, columns: Iterable[str], what: str) -> None:
        missing = [c for c in columns if c not in info.columns]
        if missing:
            raise TableLevelDestinationError(
                f"{self}: {what} columns missing from target table {info}: "
                f"{', '.join(sorted(missing))} (target has: {', '.join(info.columns)})"
            )

    # ------------------------------------------------------------ catalog

    def check_tables(self, keys: Mapping[str, tuple[str, ...] | None]) -> list[str]:
        """Each target's unique key against what its writes need (``table_check``)."""
        try:
            conn = self._connect(self.connect_timeout, statement_timeout=30.0)
        except psycopg2.Error as error:
            logger.warning(
                "cannot check the target tables at start-up, their writes will tell: "
                "destination=%s error=%s",
                self,
                self.redact(str(error).strip()),
            )
            return []
        try:
            with conn.cursor() as cur:
                problems = []
                for table, columns in keys.items():
                    schema, name = self._target_of(table)
                    appends = self.appends_only(table)
                    problem = target_problem(
                        cur, table, schema, name, columns, appends, self.schema_evolution == "basic"
                    )
                    if problem is not None:
                        problems.append(f"{self}: {problem}")
                return problems
        finally:
            conn.close()

    def _target_of(self, table: str) -> tuple[str | None, str]:
        spec = self._table_map.get(table, table)
        if isinstance(spec, tuple):
            return (spec[0], spec[1])
        schema, dot, name = spec.partition(".")
        return (schema, name) if dot else (None, spec)

    def _evolve(self, cur: PgCursor, prepared: _PreparedWrite) -> bool:
        """Create the target or add the columns the batch needs (``schema_evolution.py``).

        False when the target does not exist and the batch holds nothing to
        create it from (only truncates): emptying a table that is not there is
        done already, and the first write creates it empty.
        """
        target, records = prepared.target, prepared.changes
        table = records[0].table
        source = self.source_types

        def types() -> Mapping[str, str] | None:
            return source(table) if source is not None else None

        # Keyless when no change names a key (a truncate names none: it does not count).
        appends = prepared.append or self.appends_only(table) or not key_of(records)
        positions = self.position_guard or appends
        owner = str(self)
        done = evolve(cur, target, self._tables.get(target), records, positions=positions,
                      append=appends, source_types=types, owner=owner)  # fmt: skip
        if done:
            self._tables.pop(target, None)
        return done is not None

    def _table_info(self, cur: PgCursor, target: tuple[str | None, str]) -> TableInfo:
        info = self._tables.get(target)
        if info is not None:
            return info
        info = read_table_info(cur, target)
        if self.position_guard:
            self._check_columns(info, (POSITION_COMMIT_COLUMN, POSITION_SEQ_COLUMN), "guard")
        self._tables[target] = info
        return info

    def _ensure_tombstones(
        self, cur: PgCursor, info: TableInfo, keys: tuple[str, ...]
    ) -> sql.Identifier:
        tomb = sql.Identifier(info.schema, tombstone_table_name(info.name))
        if (info.schema, info.name) not in self._tombstones_ready:
            if create_tombstone_table(cur, info, tomb, keys):
                logger.info("tombstone table ready destination=%s table=%s", self, info)
            if create_truncates_table(cur, info.schema):
                logger.info("truncate table ready destination=%s schema=%s", self, info.schema)
            self._tombstones_ready.add((info.schema, info.name))
        return tomb

    # ------------------------------------------------------------ connections

    def _open_session(self) -> PgConnection:
        conn = self._connect(self.connect_timeout, self.statement_timeout)
        self._tables.clear()
        self._tombstones_ready.clear()
        return conn

    def _is_open(self, session: PgConnection) -> bool:
        return not session.closed

    def _is_stale(self, error: Exception) -> bool:
        return isinstance(
            error, psycopg2.OperationalError | psycopg2.InterfaceError | DestinationTimeoutError
        )

    def _connect(self, timeout: float, statement_timeout: float | None) -> PgConnection:
        return connect(self._dsn, timeout, statement_timeout)

    def _abort(self) -> None:
        """Roll back after a failure; drop the connection if it is broken."""
        self._tables.clear()  # the failure may be a schema change: re-read the catalog
        self._tombstones_ready.clear()
        conn = self._session
        if conn is None:
            return
        if not conn.closed:
            try:
                conn.rollback()
                return
            except psycopg2.Error:
                pass
        try:
            conn.close()
        finally:
            self._session = None

    def close(self) -> None:
        super().close()
        self._watchdog.close()

    # ------------------------------------------------------------ health

    def test_connection(self, timeout: float = 5.0) -> bool:
        """False on any failure or after ``timeout``; never raises.

        A failed check also drops the kept write connection when it is idle:
        a connection that went mute (a dropped NAT entry, a blackholed
        network) would otherwise fail only at the next write, after
        ``write_timeout``, and delay the replay once the destination is back.
        """
        ok = super().test_connection(timeout)
        if not ok:
            self._drop_idle_connection()
        return ok

    def _drop_idle_connection(self) -> None:
        if not self._lock.acquire(blocking=False):
            return  # a write is using it: its own timeout bounds it
        try:
            self._drop_session()
        finally:
            self._lock.release()

    def _probe_once(self, timeout: float) -> None:
        conn = self._connect(timeout, statement_timeout=timeout)
        try:
            # connect_timeout bounds the login; this bounds the query, which a
            # server that went mute right after the login would never answer.
            with self._watchdog.watch(timeout, lambda: _cut(conn)):
                with conn.cursor() as cur:
                    cur.execute("SELECT 1")
                    cur.fetchone()
        finally:
            conn.close()

    # ------------------------------------------------------------ errors

    def classify_error(self, error: BaseException) -> ClassifiedError:
        """Transient (retry later) or permanent (park), by SQLSTATE class."""
        return classify(error, self.redact)


def _cut(conn: PgConnection) -> None:
    """Wake a call blocked on ``conn``: it fails with a connection error."""
    if not conn.closed:
        shutdown_socket(conn.fileno())
