"""PostgreSQL destination: applies CDC batches idempotently with psycopg2.

A batch is collapsed to one change per primary key (its net effect), then
applied in one transaction:

* large batches (or any batch with the position guard on) are copied into a
  temporary stage table with ``COPY``, then applied with one
  ``DELETE ... USING stage`` and one ``INSERT ... SELECT ... ON CONFLICT (pk)
  DO UPDATE``, sent together in one round trip;
* small batches (fewer than ``copy_threshold`` changes) skip the stage and go
  straight to the target with ``execute_values``.

Position guard (``position_guard=True``): the target table must have two
``bigint`` columns, ``_rosetta_commit`` (the source commit position, e.g. the
commit LSN as an integer) and ``_rosetta_seq`` (the change's order inside its
transaction). A change is applied only if it is newer than the row's stored
position, so an out-of-order replay can never regress a row. Deletes leave a
tombstone (key + position) in a side table ``<table>__rosetta_tombstones`` that
the destination creates next to the target; an older insert replayed after a
delete is refused by it, so it cannot resurrect the row. The target table
itself keeps plain delete semantics (no soft-delete rows for readers to filter).
Rows written before the guard was on (NULL position) count as oldest.
"""

from __future__ import annotations

import hashlib
import logging
import math
import threading
from collections.abc import Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import psycopg2
import psycopg2.errors
import psycopg2.extras
from psycopg2 import sql
from psycopg2.extensions import connection as PgConnection
from psycopg2.extensions import cursor as PgCursor
from psycopg2.extensions import parse_dsn

from config.dsn import dsn_problem
from config.errors import ConfigError
from config.redact import first_line
from destinations.base import PreparedBatch, ProbedDestination
from destinations.connection_watchdog import ConnectionWatchdog, shutdown_socket
from destinations.errors import (
    ClassifiedError,
    DestinationError,
    DestinationTimeoutError,
    FailureKind,
    PermanentDestinationError,
    TransientDestinationError,
)
from destinations.net_effect import BatchLayout, ColumnBatch, layout, net_effect, positions
from destinations.postgresql.copy_text import NULL, CopyReader, copy_column, copy_lines, text_value
from destinations.records import (
    POSITION_COLUMNS,
    POSITION_COMMIT_COLUMN,
    POSITION_SEQ_COLUMN,
    ChangeRecord,
)

logger = logging.getLogger(__name__)

TOMBSTONE_SUFFIX = "__rosetta_tombstones"
_DELETE_FLAG = "_rosetta_stage_delete"  # stage-only column: True for a delete
_MAX_IDENTIFIER_BYTES = 63  # PostgreSQL's NAMEDATALEN - 1
_BIGINT_MAX = 2**63 - 1
_COPY_CHUNK_ROWS = (
    5000  # rows formatted per COPY chunk; the server parses one while we format the next
)

# SQLSTATE classes and codes (https://www.postgresql.org/docs/current/errcodes-appendix.html).
_TRANSIENT_CLASSES = frozenset({"08", "53", "57", "58"})
_TRANSIENT_CODES = frozenset({"40001", "40P01", "40003", "55P03", "55006"})
_PERMANENT_CLASSES = frozenset({"21", "22", "23", "42", "44", "0A", "2F", "P0", "40"})
# Errors about the session rather than the statement: connection exceptions,
# a killed backend (pg_terminate_backend, 57P01), a server crash or shutdown,
# a server still starting, no connection slots left.
_CONNECTION_CLASSES = frozenset({"08"})
_CONNECTION_CODES = frozenset({"57P01", "57P02", "57P03", "57P05", "53300"})

TargetSpec = str | tuple[str, str]


@dataclass(frozen=True)
class _TableInfo:
    """What the catalog says about a target table."""

    schema: str
    name: str
    # column name -> base type, in table order. Without the type modifier on
    # purpose: an explicit cast to varchar(3) would silently truncate, while
    # assigning the base-typed value to the column checks the length (22001).
    columns: dict[str, str]

    @property
    def ident(self) -> sql.Identifier:
        return sql.Identifier(self.schema, self.name)

    def __str__(self) -> str:
        return f"{self.schema}.{self.name}"


@dataclass(frozen=True, slots=True)
class _PreparedWrite:
    """What ``prepare_batch`` worked out ahead of the write."""

    target: tuple[str | None, str]
    changes: list[ChangeRecord]
    # The catalog entry the plan was made against (None: not read yet, so the
    # write plans for itself); the write uses the plan only if it is still current.
    info: _TableInfo | None = None
    plan: BatchLayout | None = None
    # COPY text of each stage table (see _stages), for the staged path.
    copy_chunks: list[list[str]] | None = None


class PostgreSQLDestination(ProbedDestination):
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
        self._watchdog = ConnectionWatchdog(f"{name}:{destination_id}")
        self._conn: PgConnection | None = None
        self._tables: dict[tuple[str | None, str], _TableInfo] = {}
        self._tombstones_ready: set[tuple[str, str]] = set()
        self._lock = threading.Lock()

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
        return self._write(
            table, len(records), _PreparedWrite(self._target_of(table), net_effect(records))
        )

    def prepare_batch(self, table: str, records: Sequence[ChangeRecord]) -> PreparedBatch:
        """Collapse, lay out and (for the staged path) format the COPY text now.

        The plan needs the target's columns; before the first write to a
        table they are not known yet, and the write plans for itself. So it
        does when planning here fails (a column missing, a value it cannot
        format): the write then fails the same way and, failing, re-reads the
        catalog, which picks up a column added since.
        """
        changes = net_effect(records)
        target = self._target_of(table)
        info = self._tables.get(target)
        if info is None or not changes:
            return PreparedBatch(table, records, _PreparedWrite(target, changes))
        try:
            plan = self._plan(info, changes)
            chunks = None
            if self.position_guard or len(plan) >= self.copy_threshold:
                chunks = [list(_stage_chunks(*stage)) for stage in _stages(plan)]
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
        with self._lock:
            reused = self._conn is not None and not self._conn.closed
            try:
                self._apply(prepared)
            except (
                psycopg2.OperationalError,
                psycopg2.InterfaceError,
                DestinationTimeoutError,
            ) as exc:
                if not (reused and self._conn is None):
                    raise
                # The kept connection died while idle (server restart, network
                # blip, idle timeout, a dropped NAT entry that leaves it mute).
                # The batch was not committed, or if the commit raced the
                # failure, replaying it is harmless (idempotent), so try once
                # more on a fresh connection.
                logger.info(
                    "stale connection replaced destination=%s table=%s error=%s",
                    self,
                    table,
                    self.redact(first_line(exc)),
                )
                self._apply(prepared)
        logger.debug(
            "batch applied destination=%s table=%s records=%d net=%d",
            self,
            table,
            count,
            len(prepared.changes),
        )
        return count

    def _apply(self, prepared: _PreparedWrite) -> None:
        target, changes = prepared.target, prepared.changes
        conn = self._connection()
        try:
            # The watch ends before _abort() closes the connection, so the
            # watchdog never touches a descriptor the driver has released.
            with self._watchdog.watch(self.write_timeout, lambda: _cut(conn)) as cut:
                try:
                    with conn.cursor() as cur:
                        info = self._table_info(cur, target)
                        chunks = None
                        if prepared.info is info and prepared.plan is not None:
                            # Planned against the current catalog entry: still valid.
                            plan, chunks = prepared.plan, prepared.copy_chunks
                        else:
                            plan = self._plan(info, changes)
                        if self.position_guard:
                            tombstones = self._ensure_tombstones(cur, info, plan.keys)
                            self._apply_staged(cur, info, plan, tombstones, chunks)
                        elif len(plan) < self.copy_threshold:
                            self._apply_values(cur, info, plan)
                        else:
                            self._apply_staged(cur, info, plan, None, chunks)
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

    def _plan(self, info: _TableInfo, changes: list[ChangeRecord]) -> BatchLayout:
        """Lay the changes out by column, checked against the target table."""
        plan = layout(changes)
        self._check_columns(info, plan.keys, "key")
        for group in plan.upserts:
            self._check_columns(info, group.columns, "record")
        if not self.position_guard:
            return plan
        return BatchLayout(
            plan.keys,
            [_with_positions(_without_positions(g)) for g in plan.upserts],
            _with_positions(plan.deletes),
        )

    def _check_columns(self, info: _TableInfo, columns: Iterable[str], what: str) -> None:
        missing = [c for c in columns if c not in info.columns]
        if missing:
            raise PermanentDestinationError(
                f"{self}: {what} columns missing from target table {info}: "
                f"{', '.join(sorted(missing))} (target has: {', '.join(info.columns)})"
            )

    # ------------------------------------------------------------ catalog

    def _target_of(self, table: str) -> tuple[str | None, str]:
        spec = self._table_map.get(table, table)
        if isinstance(spec, tuple):
            return (spec[0], spec[1])
        schema, dot, name = spec.partition(".")
        return (schema, name) if dot else (None, spec)

    def _table_info(self, cur: PgCursor, target: tuple[str | None, str]) -> _TableInfo:
        info = self._tables.get(target)
        if info is not None:
            return info
        schema, name = target
        ident = sql.Identifier(schema, name) if schema else sql.Identifier(name)
        # ::regclass resolves the quoted name like any statement would, and
        # raises 42P01 (undefined table, permanent) when there is none.
        cur.execute(
            "SELECT c.oid, n.nspname, c.relname FROM pg_class c "
            "JOIN pg_namespace n ON n.oid = c.relnamespace WHERE c.oid = %s::regclass",
            (ident.as_string(cur),),
        )
        oid, nspname, relname = cur.fetchone()  # type: ignore[misc]
        cur.execute(
            "SELECT attname, format_type(atttypid, NULL) FROM pg_attribute "
            "WHERE attrelid = %s AND attnum > 0 AND NOT attisdropped ORDER BY attnum",
            (oid,),
        )
        info = _TableInfo(nspname, relname, dict(cur.fetchall()))
        if self.position_guard:
            self._check_columns(info, (POSITION_COMMIT_COLUMN, POSITION_SEQ_COLUMN), "guard")
        self._tables[target] = info
        return info

    def _ensure_tombstones(
        self, cur: PgCursor, info: _TableInfo, keys: tuple[str, ...]
    ) -> sql.Identifier:
        tomb = sql.Identifier(info.schema, tombstone_table_name(info.name))
        if (info.schema, info.name) in self._tombstones_ready:
            return tomb
        cur.execute("SELECT to_regclass(%s)", (tomb.as_string(cur),))
        row = cur.fetchone()
        if row is None or row[0] is None:
            # Serialise creators (two pipelines starting together) so that
            # CREATE ... IF NOT EXISTS cannot race on the catalog.
            cur.execute("SELECT pg_advisory_xact_lock(hashtext('rosetta.tombstones'))")
            key_defs = [
                sql.SQL("{} {}").format(sql.Identifier(k), sql.SQL(info.columns[k])) for k in keys
            ]
            cur.execute(
                sql.SQL(
                    "CREATE TABLE IF NOT EXISTS {} ({}, {} bigint NOT NULL, {} bigint NOT NULL, "
                    "PRIMARY KEY ({}))"
                ).format(
                    tomb,
                    sql.SQL(", ").join(key_defs),
                    sql.Identifier(POSITION_COMMIT_COLUMN),
                    sql.Identifier(POSITION_SEQ_COLUMN),
                    _idents(keys),
                )
            )
            logger.info("tombstone table ready destination=%s table=%s", self, info)
        self._tombstones_ready.add((info.schema, info.name))
        return tomb

    # ------------------------------------------------------------ apply paths

    def _apply_values(self, cur: PgCursor, info: _TableInfo, plan: BatchLayout) -> None:
        """Small batches: upsert and delete straight from typed VALUES lists."""
        target = info.ident
        keys = plan.keys
        for group in plan.upserts:
            query = sql.SQL("INSERT INTO {} ({}) VALUES {} ON CONFLICT ({}) {}").format(
                target,
                _idents(group.columns),
                sql.Placeholder(),
                _idents(keys),
                _on_conflict_set(group.columns, keys, guard=False),
            )
            _execute_values(cur, query, group, _template(info, group.columns))
        if plan.deletes:
            query = sql.SQL("DELETE FROM {} AS t USING (VALUES {}) AS d ({}) WHERE {}").format(
                target, sql.Placeholder(), _idents(keys), _key_match("t", "d", keys)
            )
            _execute_values(cur, query, plan.deletes, _template(info, keys))

    def _apply_staged(
        self,
        cur: PgCursor,
        info: _TableInfo,
        plan: BatchLayout,
        tombstones: sql.Identifier | None,
        copy_chunks: list[list[str]] | None = None,
    ) -> None:
        """COPY the changes into temporary stage tables, then apply them in one round trip.

        ``copy_chunks`` is the COPY text of each stage, when formatted ahead.
        """
        creates: list[sql.Composable] = []
        statements: list[sql.Composable] = []
        copies: list[tuple[sql.Composable, CopyReader]] = []
        for index, (stage_columns, upserts, deletes) in enumerate(_stages(plan)):
            stage = sql.Identifier(f"_rosetta_stage_{index}")
            text = (
                iter(copy_chunks[index])
                if copy_chunks is not None
                else _stage_chunks(stage_columns, upserts, deletes)
            )
            creates.append(
                sql.SQL(
                    "CREATE TEMPORARY TABLE {} ON COMMIT DROP AS "
                    "SELECT {}, NULL::boolean AS {} FROM {} WITH NO DATA"
                ).format(stage, _idents(stage_columns), sql.Identifier(_DELETE_FLAG), info.ident)
            )
            copies.append(
                (
                    sql.SQL("COPY {} ({}) FROM STDIN").format(
                        stage, _idents(stage_columns + (_DELETE_FLAG,))
                    ),
                    CopyReader(text),
                )
            )
            columns = tuple(c for c in stage_columns if c not in POSITION_COLUMNS)
            statements += _staged_sql(
                info, stage, columns, plan.keys, tombstones, bool(upserts), bool(deletes)
            )
        cur.execute(sql.SQL("; ").join(creates))
        for copy_sql, buffer in copies:
            try:
                cur.copy_expert(copy_sql, buffer, size=1 << 20)
            except psycopg2.Error as exc:
                if buffer.error is not None:  # a value we could not format: permanent
                    raise buffer.error from exc
                raise
        cur.execute(sql.SQL("; ").join(statements))

    # ------------------------------------------------------------ connections

    def _connection(self) -> PgConnection:
        if self._conn is None or self._conn.closed:
            self._conn = self._connect(self.connect_timeout, self.statement_timeout)
            self._tables.clear()
            self._tombstones_ready.clear()
        return self._conn

    def _connect(self, timeout: float, statement_timeout: float | None) -> PgConnection:
        options: dict[str, Any] = {
            # libpq takes whole seconds and treats anything below 2 as 2.
            "connect_timeout": max(2, math.ceil(timeout)),
            "application_name": "rosetta",
            # Notice a peer that vanished mid-write instead of waiting forever.
            "keepalives": 1,
            "keepalives_idle": 30,
            "keepalives_interval": 10,
            "keepalives_count": 3,
        }
        if statement_timeout is not None:
            options["options"] = f"-c statement_timeout={max(1, int(statement_timeout * 1000))}"
        return psycopg2.connect(self._dsn, **options)

    def _abort(self) -> None:
        """Roll back after a failure; drop the connection if it is broken."""
        self._tables.clear()  # the failure may be a schema change: re-read the catalog
        self._tombstones_ready.clear()
        conn = self._conn
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
            self._conn = None

    def close(self) -> None:
        with self._lock:
            conn, self._conn = self._conn, None
            if conn is not None and not conn.closed:
                try:
                    conn.close()
                except psycopg2.Error:
                    logger.debug("close failed destination=%s", self, exc_info=True)
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
            conn, self._conn = self._conn, None
            if conn is not None and not conn.closed:
                try:
                    conn.close()
                except psycopg2.Error:
                    logger.debug("close failed destination=%s", self, exc_info=True)
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
        kind = _kind_of(error)
        code = getattr(error, "pgcode", None)
        message = self.redact(first_line(error))
        return ClassifiedError(kind, type(error).__name__, message, code, _connection_lost(error))


# ---------------------------------------------------------------- SQL helpers


def tombstone_table_name(table: str) -> str:
    """Name of the side table holding delete tombstones for ``table`` (guard mode)."""
    name = f"{table}{TOMBSTONE_SUFFIX}"
    if len(name.encode()) <= _MAX_IDENTIFIER_BYTES:
        return name
    # PostgreSQL would truncate a longer name; keep it unique with a digest.
    digest = hashlib.sha1(table.encode()).hexdigest()[:8]
    room = _MAX_IDENTIFIER_BYTES - len(TOMBSTONE_SUFFIX) - len(digest) - 1
    head = table.encode()[:room].decode(errors="ignore")
    return f"{head}_{digest}{TOMBSTONE_SUFFIX}"


def _idents(names: Iterable[str]) -> sql.Composed:
    return sql.SQL(", ").join(sql.Identifier(n) for n in names)


def _qualified(alias: str, column: str) -> sql.Composed:
    return sql.SQL("{}.{}").format(sql.Identifier(alias), sql.Identifier(column))


def _key_match(left: str, right: str, keys: Sequence[str]) -> sql.Composed:
    return sql.SQL(" AND ").join(
        sql.SQL("{} = {}").format(_qualified(left, k), _qualified(right, k)) for k in keys
    )


def _position(alias: str) -> sql.Composed:
    return sql.SQL("({}, {})").format(
        _qualified(alias, POSITION_COMMIT_COLUMN), _qualified(alias, POSITION_SEQ_COLUMN)
    )


def _on_conflict_set(columns: Sequence[str], keys: Sequence[str], *, guard: bool) -> sql.Composed:
    updates = [c for c in columns if c not in keys]
    if guard:
        updates += [POSITION_COMMIT_COLUMN, POSITION_SEQ_COLUMN]
    if not updates:
        return sql.Composed([sql.SQL("DO NOTHING")])
    assignments = sql.SQL(", ").join(
        sql.SQL("{} = EXCLUDED.{}").format(sql.Identifier(c), sql.Identifier(c)) for c in updates
    )
    if not guard:
        return sql.SQL("DO UPDATE SET {}").format(assignments)
    # Only a newer change may overwrite; rows from before the guard count as oldest.
    return sql.SQL("DO UPDATE SET {} WHERE {} IS NULL OR {} < {}").format(
        assignments,
        _qualified("t", POSITION_COMMIT_COLUMN),
        _position("t"),
        sql.SQL("(EXCLUDED.{}, EXCLUDED.{})").format(
            sql.Identifier(POSITION_COMMIT_COLUMN), sql.Identifier(POSITION_SEQ_COLUMN)
        ),
    )


def _staged_sql(
    info: _TableInfo,
    stage: sql.Identifier,
    columns: tuple[str, ...],
    keys: tuple[str, ...],
    tombstones: sql.Identifier | None,
    has_upserts: bool,
    has_deletes: bool,
) -> list[sql.Composable]:
    """The statements that apply one stage table to the target."""
    flag = _qualified("s", _DELETE_FLAG)
    target = sql.SQL("{} AS t").format(info.ident)
    source = sql.SQL("{} AS s").format(stage)
    match = _key_match("t", "s", keys)
    insert_columns = columns + ((POSITION_COMMIT_COLUMN, POSITION_SEQ_COLUMN) if tombstones else ())
    select_list = sql.SQL(", ").join(_qualified("s", c) for c in insert_columns)
    statements: list[sql.Composable] = []
    if tombstones is None:
        if has_deletes:
            statements.append(
                sql.SQL("DELETE FROM {} USING {} WHERE {} AND {}").format(
                    target, source, flag, match
                )
            )
        if not has_upserts:
            return statements
        statements.append(
            sql.SQL(
                "INSERT INTO {} ({}) SELECT {} FROM {} WHERE NOT {} ON CONFLICT ({}) {}"
            ).format(
                target,
                _idents(insert_columns),
                select_list,
                source,
                flag,
                _idents(keys),
                _on_conflict_set(columns, keys, guard=False),
            )
        )
        return statements

    tomb_match = _key_match("b", "s", keys)
    newer_than_row = sql.SQL("({} IS NULL OR {} < {})").format(
        _qualified("t", POSITION_COMMIT_COLUMN), _position("t"), _position("s")
    )
    tomb = sql.SQL("{} AS b").format(tombstones)
    if has_deletes:
        statements += [
            # 1. A delete removes the row unless the row is newer.
            sql.SQL("DELETE FROM {} USING {} WHERE {} AND {} AND {}").format(
                target, source, flag, match, newer_than_row
            ),
            # 2. Remember applied deletes (row gone or never there), newest wins.
            sql.SQL(
                "INSERT INTO {} AS b ({}, {}, {}) SELECT {}, {}, {} FROM {} WHERE {} "
                "AND NOT EXISTS (SELECT 1 FROM {} WHERE {}) "
                "ON CONFLICT ({}) DO UPDATE SET {} = EXCLUDED.{}, {} = EXCLUDED.{} "
                "WHERE {} < (EXCLUDED.{}, EXCLUDED.{})"
            ).format(
                tombstones,
                _idents(keys),
                sql.Identifier(POSITION_COMMIT_COLUMN),
                sql.Identifier(POSITION_SEQ_COLUMN),
                sql.SQL(", ").join(_qualified("s", k) for k in keys),
                _qualified("s", POSITION_COMMIT_COLUMN),
                _qualified("s", POSITION_SEQ_COLUMN),
                source,
                flag,
                target,
                match,
                _idents(keys),
                sql.Identifier(POSITION_COMMIT_COLUMN),
                sql.Identifier(POSITION_COMMIT_COLUMN),
                sql.Identifier(POSITION_SEQ_COLUMN),
                sql.Identifier(POSITION_SEQ_COLUMN),
                _position("b"),
                sql.Identifier(POSITION_COMMIT_COLUMN),
                sql.Identifier(POSITION_SEQ_COLUMN),
            ),
        ]
    if not has_upserts:
        return statements
    statements += [
        # 3. Upserts, unless a tombstone or the row itself is at least as new.
        sql.SQL(
            "INSERT INTO {} ({}) SELECT {} FROM {} WHERE NOT {} "
            "AND NOT EXISTS (SELECT 1 FROM {} WHERE {} AND {} >= {}) ON CONFLICT ({}) {}"
        ).format(
            target,
            _idents(insert_columns),
            select_list,
            source,
            flag,
            tomb,
            tomb_match,
            _position("b"),
            _position("s"),
            _idents(keys),
            _on_conflict_set(columns, keys, guard=True),
        ),
        # 4. A newer upsert makes older tombstones of its key useless.
        sql.SQL("DELETE FROM {} USING {} WHERE NOT {} AND {} AND {} < {}").format(
            tomb, source, flag, tomb_match, _position("b"), _position("s")
        ),
    ]
    return statements


def _template(info: _TableInfo, columns: Sequence[str]) -> str:
    """An execute_values row template that casts each value to its column's type."""
    return "(" + ", ".join(f"%s::{info.columns[c]}" for c in columns) + ")"


def _execute_values(cur: PgCursor, query: sql.Composed, batch: ColumnBatch, template: str) -> None:
    if not batch:
        return
    # Identifiers may contain '%', which the parameter formatting would read
    # as a placeholder: escape the composed text, then put the one %s back.
    marker = "\x00rosetta-values\x00"
    text = query.as_string(cur).replace("%s", marker).replace("%", "%%").replace(marker, "%s")
    # Values go as the same text COPY would send, cast by the template, so
    # both paths store a value identically (an aware datetime in a timestamp
    # column, a UUID, a NaN...).
    columns = [list(map(text_value, column)) for column in batch.data]
    rows = list(zip(*columns, strict=True))
    psycopg2.extras.execute_values(cur, text, rows, template=template, page_size=len(rows))


def _stages(
    plan: BatchLayout,
) -> list[tuple[tuple[str, ...], ColumnBatch | None, ColumnBatch | None]]:
    """The stage tables of a staged write: (columns, upserts, deletes) for each.

    One stage per upsert column set; deletes ride in the first stage with
    only their key (and position) set.
    """
    stages: list[tuple[ColumnBatch | None, ColumnBatch | None]] = [
        (group, plan.deletes if index == 0 and plan.deletes else None)
        for index, group in enumerate(plan.upserts)
    ] or [(None, plan.deletes)]
    return [
        ((upserts or deletes or plan.deletes).columns, upserts, deletes)
        for upserts, deletes in stages
    ]


def _stage_chunks(
    columns: tuple[str, ...], upserts: ColumnBatch | None, deletes: ColumnBatch | None
) -> Iterator[str]:
    """COPY text for one stage table (its columns, then the delete flag), in chunks."""
    if upserts:
        for start in range(0, len(upserts), _COPY_CHUNK_ROWS):
            end = start + _COPY_CHUNK_ROWS
            fields = [copy_column(values[start:end]) for values in upserts.data]
            yield copy_lines([*fields, ["f"] * len(fields[0])])
    if deletes:
        given = dict(zip(deletes.columns, deletes.data, strict=True))
        for start in range(0, len(deletes), _COPY_CHUNK_ROWS):
            end = start + _COPY_CHUNK_ROWS
            count = len(deletes.records[start:end])
            nulls = [NULL] * count  # a delete sets only its key (and position)
            fields = [copy_column(given[c][start:end]) if c in given else nulls for c in columns]
            yield copy_lines([*fields, ["t"] * count])


def _without_positions(group: ColumnBatch) -> ColumnBatch:
    """Drop position columns a record carries: with the guard on, the destination writes them."""
    keep = [i for i, c in enumerate(group.columns) if c not in POSITION_COLUMNS]
    if len(keep) == len(group.columns):
        return group
    return ColumnBatch(
        tuple(group.columns[i] for i in keep), [group.data[i] for i in keep], group.records
    )


def _with_positions(group: ColumnBatch) -> ColumnBatch:
    """Append the changes' source positions as the guard columns."""
    commits, seqs = positions(group.records)
    if commits and not (
        0 <= min(commits)
        and max(commits) <= _BIGINT_MAX
        and 0 <= min(seqs) <= max(seqs) <= _BIGINT_MAX
    ):
        raise PermanentDestinationError(
            "source position does not fit the bigint position columns "
            f"(commit {min(commits)}..{max(commits)}, seq {min(seqs)}..{max(seqs)})"
        )
    return ColumnBatch(
        group.columns + POSITION_COLUMNS, [*group.data, commits, seqs], group.records
    )


# ---------------------------------------------------------------- classification


def _kind_of(error: BaseException) -> FailureKind:
    if isinstance(error, PermanentDestinationError):
        return FailureKind.PERMANENT
    if isinstance(error, TransientDestinationError | DestinationError):
        return FailureKind.TRANSIENT
    code = getattr(error, "pgcode", None)
    if isinstance(error, psycopg2.Error) and code:
        if code in _TRANSIENT_CODES or code[:2] in _TRANSIENT_CLASSES:
            return FailureKind.TRANSIENT
        if code[:2] in _PERMANENT_CLASSES:
            return FailureKind.PERMANENT
        return FailureKind.TRANSIENT  # unknown: retry within the budget
    if isinstance(error, psycopg2.OperationalError | psycopg2.InterfaceError):
        return FailureKind.TRANSIENT  # lost or refused connection (libpq sets no SQLSTATE)
    if isinstance(error, psycopg2.DataError | psycopg2.IntegrityError | psycopg2.ProgrammingError):
        return FailureKind.PERMANENT  # client-side, e.g. a value psycopg2 cannot adapt
    if isinstance(error, ValueError):
        # psycopg2 refusing to send a value ("A string literal cannot contain NUL",
        # text that does not encode): the same change fails the same way every time.
        return FailureKind.PERMANENT
    return FailureKind.TRANSIENT


def _connection_lost(error: BaseException) -> bool:
    """True when ``error`` is about the session (lost, refused, killed), not the statement."""
    code = getattr(error, "pgcode", None)
    if isinstance(error, psycopg2.Error) and code:
        return code in _CONNECTION_CODES or code[:2] in _CONNECTION_CLASSES
    # libpq sets no SQLSTATE when the socket itself failed (reset, refused,
    # closed mid-statement, login timed out). A write cut by write_timeout is
    # not in this set: a statement that is slow for its data must still be
    # charged, or it would be retried forever.
    return isinstance(error, psycopg2.OperationalError | psycopg2.InterfaceError)


def _cut(conn: PgConnection) -> None:
    """Wake a call blocked on ``conn``: it fails with a connection error."""
    if not conn.closed:
        shutdown_socket(conn.fileno())
