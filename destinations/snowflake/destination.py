"""Snowflake destination: applies CDC batches idempotently with one MERGE per batch.

A batch is collapsed to one change per primary key (its net effect), written
into a session-temporary stage table with multi-row ``INSERT ... VALUES``
statements (bound parameters, thousands of rows each), then applied to the
target with a single ``MERGE`` that updates, inserts and deletes by key. The
MERGE is the only statement that touches the target, so the batch lands all
at once or not at all, and applying it twice gives the same table.

Rows of one batch that carry different column sets (a column added mid-batch,
partial rows) keep the target's current value for the columns they lack:
the stage is filled in from the target before the MERGE. A row inserted
without a column gets NULL there, not the column default.

Semi-structured values (dict, list) are written as their JSON text.
"""

from __future__ import annotations

import json
import logging
import math
import threading
import uuid
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from datetime import timedelta
from typing import Any

import snowflake.connector
from snowflake.connector import errors as sf_errors
from snowflake.connector.connection import SnowflakeConnection
from snowflake.connector.cursor import SnowflakeCursor

from config.redact import first_line
from destinations.base import ProbedDestination
from destinations.errors import (
    ClassifiedError,
    DestinationError,
    FailureKind,
    PermanentDestinationError,
)
from destinations.net_effect import BatchLayout, ColumnBatch, layout, net_effect
from destinations.records import ChangeRecord

logger = logging.getLogger(__name__)

STAGE_TABLE = "_ROSETTA_STAGE"
_DELETE_FLAG = "_ROSETTA_DELETED"
_HAS_PREFIX = "_ROSETTA_HAS_"  # stage flag: the row carries this partial column
MAX_ROWS_PER_INSERT = 16_384  # Snowflake's limit on rows in one VALUES clause
MAX_INSERT_BYTES = 512 * 1024  # well under Snowflake's limit on statement text

# Connector errno values (snowflake.connector.errorcode) and server error codes.
_TRANSIENT_ERRNOS = frozenset(
    {
        250001,  # could not connect
        250002,  # connection closed
        250003,  # request failed (network)
        250005,  # server error
        251011,  # connection timeout
        251012,  # retryable code
        252007,  # failed to renew session
        603,  # internal error: processing aborted
        604,  # statement canceled
        625,  # warehouse/resource timeout
        630,  # statement reached its timeout
        390111,  # session no longer exists
        390112,  # session expired
        390113,  # master token not found
        390114,  # authentication token expired
        390115,  # master token invalid
    }
)
# Failures of the session rather than the statement: it could not be opened,
# was closed, or expired (and could not be renewed). Nothing in them is about
# the events, so replay does not charge them to their retry budget. A
# statement timeout (604, 630) is not among them: a statement that is slow for
# its data must still be charged, or it would be retried forever.
_SESSION_ERRNOS = frozenset(
    {
        250001,  # could not connect
        250002,  # connection is closed
        250003,  # request failed (network)
        251011,  # connection timeout during login
        251012,  # login retryable code
        252007,  # failed to renew session
        390111,  # session no longer exists
        390112,  # session expired
        390113,  # master token not found
        390114,  # authentication (master) token expired
        390115,  # master token invalid
    }
)
_SESSION_SQLSTATE_CLASSES = frozenset({"08"})  # connection exception (08001, 08003, ...)
_TRANSIENT_SQLSTATE_CLASSES = frozenset({"08", "40", "53", "57", "58"})
_PERMANENT_SQLSTATE_CLASSES = frozenset({"21", "22", "23", "42", "44", "0A"})


def quote(name: str) -> str:
    """A Snowflake quoted identifier: exact, case-sensitive, any characters."""
    return '"' + name.replace('"', '""') + '"'


@dataclass(frozen=True)
class _TableInfo:
    """What ``DESCRIBE TABLE`` says about a target table."""

    name: str  # qualified, quoted
    columns: dict[str, str]  # exact column name -> type, in table order

    def resolve(self, column: str) -> str | None:
        """The target column for ``column``: exact match, else a unique case-insensitive one."""
        if column in self.columns:
            return column
        folded = [c for c in self.columns if c.upper() == column.upper()]
        return folded[0] if len(folded) == 1 else None


class SnowflakeDestination(ProbedDestination):
    """Writes CDC batches to Snowflake tables by primary key.

    ``table_map`` maps a source table to its target as ``"DB.SCHEMA.TABLE"``,
    ``"SCHEMA.TABLE"``, ``"TABLE"`` (split at dots) or a tuple of those parts;
    names are used exactly (quoted, case-sensitive). By default the target is
    the source table's last name part, upper-cased, in the connection's
    database and schema: what an unquoted name would resolve to. Record
    columns match target columns exactly or, failing that, case-insensitively.

    ``login_timeout`` bounds a login; ``network_timeout`` bounds each
    statement, retries included (the connector cancels a statement that runs
    longer), so a write during an outage fails instead of hanging.
    ``host``/``port``/``protocol`` point the connector elsewhere than
    ``<account>.snowflakecomputing.com`` (tests use a local fakesnow server).
    The password is kept out of ``repr`` and logs.
    """

    def __init__(
        self,
        destination_id: str,
        name: str,
        *,
        account: str,
        user: str,
        password: str,
        database: str,
        schema: str,
        warehouse: str | None = None,
        role: str | None = None,
        host: str | None = None,
        port: int | None = None,
        protocol: str = "https",
        table_map: Mapping[str, str | tuple[str, ...]] | None = None,
        login_timeout: float = 30.0,
        network_timeout: float = 300.0,
        session_parameters: Mapping[str, Any] | None = None,
        max_rows_per_insert: int = MAX_ROWS_PER_INSERT,
        max_insert_bytes: int = MAX_INSERT_BYTES,
    ) -> None:
        super().__init__(destination_id, name)
        self.account = account
        self.user = user
        self._password = password
        self._secrets = (password,)  # masked in every error text this destination hands out
        self.database = database
        self.schema = schema
        self.warehouse = warehouse
        self.role = role
        self.host = host
        self.port = port
        self.protocol = protocol
        self.login_timeout = login_timeout
        self.network_timeout = network_timeout
        self.session_parameters = dict(session_parameters or {})
        self.max_rows_per_insert = min(max_rows_per_insert, MAX_ROWS_PER_INSERT)
        self.max_insert_bytes = max_insert_bytes
        self._table_map = dict(table_map or {})
        self._conn: SnowflakeConnection | None = None
        self._tables: dict[tuple[str, ...], _TableInfo] = {}
        self._lock = threading.Lock()

    def __repr__(self) -> str:
        return (
            f"SnowflakeDestination(id={self.destination_id!r}, name={self.name!r}, "
            f"account={self.account!r}, user={self.user!r}, database={self.database!r}, "
            f"schema={self.schema!r})"
        )

    # ------------------------------------------------------------------ writes

    def write_batch(self, table: str, records: Sequence[ChangeRecord]) -> int:
        """Apply ``records`` with one MERGE; returns ``len(records)``."""
        if not records:
            return 0
        plan = layout(net_effect(records))
        target = self._target_of(table)
        with self._lock:
            reused = self._conn is not None and not self._conn.is_closed()
            try:
                statements = self._apply(target, plan)
            except sf_errors.Error as exc:
                stale = isinstance(exc, sf_errors.OperationalError | sf_errors.InterfaceError)
                if not (reused and self._conn is None and (stale or _connection_lost(exc))):
                    raise
                # The kept session died while idle (expired, server restarted):
                # nothing reached the target, so try once more on a new one.
                logger.info(
                    "stale session replaced destination=%s table=%s error=%s",
                    self,
                    table,
                    self.redact(first_line(exc)),
                )
                statements = self._apply(target, plan)
        logger.debug(
            "batch applied destination=%s table=%s records=%d net=%d statements=%d",
            self,
            table,
            len(records),
            len(plan),
            statements,
        )
        return len(records)

    def _apply(self, target: tuple[str, ...], plan: BatchLayout) -> int:
        """Stage and merge; returns how many statements were sent."""
        conn = self._connection()
        try:
            with conn.cursor() as cur:
                info = self._table_info(cur, target)
                stage = _Stage.build(info, plan, self)
                sent = 0
                for statement, params in stage.statements(
                    self.max_rows_per_insert, self.max_insert_bytes
                ):
                    cur.execute(statement, params)
                    sent += 1
                return sent
        except BaseException as exc:
            self._abort(exc)
            raise

    # ------------------------------------------------------------ catalog

    def _target_of(self, table: str) -> tuple[str, ...]:
        spec = self._table_map.get(table)
        if spec is None:
            return (table.rsplit(".", 1)[-1].upper(),)
        if isinstance(spec, tuple):
            return spec
        return tuple(spec.split("."))

    def _table_info(self, cur: SnowflakeCursor, target: tuple[str, ...]) -> _TableInfo:
        info = self._tables.get(target)
        if info is None:
            name = ".".join(quote(part) for part in target)
            # Raises 002003 (does not exist, permanent) for a missing table.
            cur.execute(f"DESCRIBE TABLE {name}")
            columns = {row[0]: row[1] for row in cur.fetchall() if row[2] == "COLUMN"}
            info = self._tables[target] = _TableInfo(name, columns)
        return info

    # ------------------------------------------------------------ connections

    def _connect_options(self, login_timeout: float, network_timeout: float) -> dict[str, Any]:
        options: dict[str, Any] = {
            "account": self.account,
            "user": self.user,
            "password": self._password,
            "database": self.database,
            "schema": self.schema,
            "warehouse": self.warehouse,
            "role": self.role,
            "host": self.host,
            "port": self.port,
            "protocol": self.protocol,
            "login_timeout": max(1, math.ceil(login_timeout)),
            "network_timeout": max(1, math.ceil(network_timeout)),
            "session_parameters": self.session_parameters,
            "paramstyle": "pyformat",  # bound client-side: one statement per chunk
            "autocommit": True,  # the MERGE is its own transaction
            "application": "rosetta",
        }
        return {k: v for k, v in options.items() if v is not None}

    def _connection(self) -> SnowflakeConnection:
        if self._conn is None or self._conn.is_closed():
            self._conn = snowflake.connector.connect(
                **self._connect_options(self.login_timeout, self.network_timeout)
            )
            self._tables.clear()
        return self._conn

    def _abort(self, error: BaseException) -> None:
        """After a failure: re-read the catalog next time; drop a session that failed below SQL."""
        self._tables.clear()
        conn = self._conn
        answered = isinstance(error, sf_errors.ProgrammingError | DestinationError)
        if conn is None or (answered and not _connection_lost(error)):
            return  # the server answered about the statement: the session is fine
        self._conn = None
        try:
            conn.close(retry=False)  # the server may be gone: do not wait on it
        except Exception:  # closing a broken session may fail too; it is dropped anyway
            logger.debug("close after failure failed destination=%s", self, exc_info=True)

    def close(self) -> None:
        with self._lock:
            conn, self._conn = self._conn, None
            if conn is not None and not conn.is_closed():
                try:
                    conn.close()
                except sf_errors.Error:
                    logger.debug("close failed destination=%s", self, exc_info=True)

    # ------------------------------------------------------------ health

    def _probe_once(self, timeout: float) -> None:
        options = self._connect_options(timeout, timeout)
        options["socket_timeout"] = max(1, math.ceil(timeout))
        conn = snowflake.connector.connect(**options)
        try:
            with conn.cursor() as cur:
                cur.execute("SELECT 1")
                cur.fetchone()
        finally:
            conn.close()

    # ------------------------------------------------------------ errors

    def classify_error(self, error: BaseException) -> ClassifiedError:
        """Transient (retry later) or permanent (park), by connector errno and SQLSTATE.

        A lost or expired session is transient and ``connection_lost``.
        """
        errno = getattr(error, "errno", None)
        code = None
        if isinstance(error, sf_errors.Error) and errno is not None and errno != -1:
            code = f"{errno:06d}"
        return ClassifiedError(
            _kind_of(error),
            type(error).__name__,
            self.redact(first_line(error)),
            code,
            _connection_lost(error),
        )


# ---------------------------------------------------------------- the stage and the MERGE


@dataclass
class _Stage:
    """The stage table for one batch and the statements that fill and merge it."""

    info: _TableInfo
    keys: tuple[str, ...]  # target column names
    columns: tuple[str, ...]  # target column names written, in table order
    partial: tuple[str, ...]  # columns some rows lack
    rows: list[tuple[Any, ...]]  # stage rows: columns, delete flag, partial flags

    @classmethod
    def build(cls, info: _TableInfo, plan: BatchLayout, owner: object) -> _Stage:
        keys = _resolve(info, plan.keys, "key", owner)
        groups = [(_resolve(info, g.columns, "record", owner), g) for g in plan.upserts]
        used = set(keys).union(*(set(cols) for cols, _ in groups))
        columns = tuple(c for c in info.columns if c in used)
        partial = tuple(c for c in columns if any(c not in cols for cols, _ in groups))
        rows: list[tuple[Any, ...]] = []
        for cols, group in groups:
            rows += _group_rows(columns, partial, cols, group)
        rows += _delete_rows(columns, partial, keys, plan.deletes)
        return cls(info, keys, columns, partial, rows)

    def statements(self, max_rows: int, max_bytes: int) -> Iterator[tuple[str, Any]]:
        stage = quote(STAGE_TABLE)
        flags = [quote(_HAS_PREFIX + str(i)) for i in range(len(self.partial))]
        definitions = [f"{quote(c)} {_stage_type(self.info.columns[c])}" for c in self.columns]
        definitions += [f"{quote(_DELETE_FLAG)} BOOLEAN"] + [f"{f} BOOLEAN" for f in flags]
        yield f"CREATE OR REPLACE TEMPORARY TABLE {stage} ({', '.join(definitions)})", None
        names = ", ".join([quote(c) for c in self.columns] + [quote(_DELETE_FLAG), *flags])
        names = names.replace("%", "%%")  # the INSERT is %-formatted with its parameters
        row_sql = "(" + ", ".join(["%s"] * (len(self.columns) + 1 + len(flags))) + ")"
        for chunk in _chunks(self.rows, max_rows, max_bytes):
            values = ", ".join([row_sql] * len(chunk))
            yield (
                f"INSERT INTO {stage} ({names}) VALUES {values}",
                [v for row in chunk for v in row],
            )
        match = " AND ".join(f"t.{quote(k)} = s.{quote(k)}" for k in self.keys)
        for column, flag in zip(self.partial, flags, strict=True):
            # Rows without this column keep the target's value (a plain MERGE would null it).
            yield (
                f"UPDATE {stage} AS s SET {quote(column)} = t.{quote(column)} "
                f"FROM {self.info.name} AS t WHERE {match} AND NOT s.{flag}",
                None,
            )
        yield self._merge(stage, match), None

    def _merge(self, stage: str, match: str) -> str:
        deleted = f"s.{quote(_DELETE_FLAG)}"
        updates = [c for c in self.columns if c not in self.keys]
        clauses = [f"WHEN MATCHED AND {deleted} THEN DELETE"]
        if updates:
            assignments = ", ".join(f"{quote(c)} = s.{quote(c)}" for c in updates)
            clauses.append(f"WHEN MATCHED THEN UPDATE SET {assignments}")
        insert_columns = ", ".join(quote(c) for c in self.columns)
        insert_values = ", ".join(f"s.{quote(c)}" for c in self.columns)
        clauses.append(
            f"WHEN NOT MATCHED AND NOT {deleted} THEN INSERT ({insert_columns}) "
            f"VALUES ({insert_values})"
        )
        return f"MERGE INTO {self.info.name} AS t USING {stage} AS s ON {match} " + " ".join(
            clauses
        )


def _stage_type(target_type: str) -> str:
    """The stage column type for a target column type.

    Strings and binaries lose their length: the stage only carries values,
    and the MERGE into the target still enforces the target's lengths.
    """
    base = target_type.split("(", 1)[0].strip().upper()
    if base in {"VARCHAR", "TEXT", "STRING", "CHAR", "CHARACTER", "NCHAR", "NVARCHAR"}:
        return "VARCHAR"
    if base in {"BINARY", "VARBINARY"}:
        return "BINARY"
    return target_type


def _resolve(info: _TableInfo, columns: Sequence[str], what: str, owner: object) -> tuple[str, ...]:
    resolved = [info.resolve(c) for c in columns]
    missing = [c for c, r in zip(columns, resolved, strict=True) if r is None]
    if missing:
        raise PermanentDestinationError(
            f"{owner}: {what} columns missing from target table {info.name}: "
            f"{', '.join(sorted(missing))} (target has: {', '.join(info.columns)})"
        )
    return tuple(r for r in resolved if r is not None)


def _group_rows(
    columns: tuple[str, ...],
    partial: tuple[str, ...],
    present: tuple[str, ...],
    group: ColumnBatch,
) -> list[tuple[Any, ...]]:
    by_column = dict(zip(present, group.data, strict=True))
    missing = [None] * len(group)
    data = [list(map(_param, by_column[c])) if c in by_column else missing for c in columns]
    data.append([False] * len(group))
    data += [[c in by_column] * len(group) for c in partial]
    return list(zip(*data, strict=True))


def _delete_rows(
    columns: tuple[str, ...],
    partial: tuple[str, ...],
    keys: tuple[str, ...],
    deletes: ColumnBatch,
) -> list[tuple[Any, ...]]:
    if not deletes:
        return []
    by_column = dict(zip(keys, deletes.data, strict=True))
    missing = [None] * len(deletes)
    data = [list(map(_param, by_column[c])) if c in by_column else missing for c in columns]
    data.append([True] * len(deletes))
    data += [[True] * len(deletes) for _ in partial]  # nothing to fill in for a delete
    return list(zip(*data, strict=True))


def _chunks(
    rows: list[tuple[Any, ...]], max_rows: int, max_bytes: int
) -> Iterator[list[tuple[Any, ...]]]:
    """Consecutive runs of rows whose estimated statement text stays under ``max_bytes``."""
    chunk: list[tuple[Any, ...]] = []
    size = 0
    for row in rows:
        row_size = len(repr(row)) + 8  # ~ the row's literal text in the statement
        if chunk and (len(chunk) >= max_rows or size + row_size > max_bytes):
            yield chunk
            chunk, size = [], 0
        chunk.append(row)
        size += row_size
    if chunk:
        yield chunk


def _param(value: Any) -> Any:
    """A value the connector can bind; the rest as text Snowflake casts on insert."""
    if value is None or isinstance(value, str | int | bool | bytes):
        return value
    if isinstance(value, float):
        if math.isfinite(value):
            return value
        return "NaN" if math.isnan(value) else ("inf" if value > 0 else "-inf")
    if isinstance(value, uuid.UUID):
        return str(value)
    if isinstance(value, dict | list):
        return json.dumps(value, default=str)
    if isinstance(value, bytearray | memoryview):
        return bytes(value)
    if isinstance(value, timedelta):
        return value.total_seconds()
    return value  # Decimal, datetime, date, time: the connector converts them


# ---------------------------------------------------------------- classification


def _kind_of(error: BaseException) -> FailureKind:
    if isinstance(error, PermanentDestinationError):
        return FailureKind.PERMANENT
    if isinstance(error, DestinationError):
        return FailureKind.TRANSIENT
    if not isinstance(error, sf_errors.Error):
        return FailureKind.TRANSIENT  # network errors below the connector, unknowns
    errno = error.errno if isinstance(error.errno, int) else -1
    sqlstate = error.sqlstate if isinstance(error.sqlstate, str) else ""
    if errno in _TRANSIENT_ERRNOS or sqlstate[:2] in _TRANSIENT_SQLSTATE_CLASSES:
        return FailureKind.TRANSIENT
    if isinstance(error, sf_errors.IntegrityError | sf_errors.DataError):
        return FailureKind.PERMANENT
    if sqlstate[:2] in _PERMANENT_SQLSTATE_CLASSES:
        return FailureKind.PERMANENT
    if isinstance(error, sf_errors.ProgrammingError) and (
        1000 <= errno < 3000 or 100000 <= errno < 101000
    ):
        return FailureKind.PERMANENT  # SQL compilation (00xxxx) and data/DML (100xxx) errors
    # Network, HTTP 5xx/429, closed sessions, and anything unknown: retry
    # within the budget.
    return FailureKind.TRANSIENT


def _connection_lost(error: BaseException) -> bool:
    """True when ``error`` is about the session (lost, closed, expired), not the statement."""
    if isinstance(error, sf_errors.Error):
        errno = error.errno if isinstance(error.errno, int) else -1
        sqlstate = error.sqlstate if isinstance(error.sqlstate, str) else ""
        return errno in _SESSION_ERRNOS or sqlstate[:2] in _SESSION_SQLSTATE_CLASSES
    # Below the connector: a reset, refused or aborted socket.
    return isinstance(error, ConnectionError)
