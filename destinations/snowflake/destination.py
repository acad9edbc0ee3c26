"""Snowflake destination: applies CDC batches idempotently with one MERGE per batch.

A batch is collapsed to one change per primary key (its net effect), written
into a session-temporary stage table with multi-row ``INSERT ... VALUES``
statements (bound parameters, thousands of rows each) or, from
``stage_threshold_rows`` rows on, as one Parquet file loaded by ``PUT`` and
``COPY INTO`` (bulk_load.py), then applied to the target with a single
``MERGE`` that updates, inserts and deletes by key. The
MERGE is the only statement that touches the target, so the batch lands all
at once or not at all, and applying it twice gives the same table.

Rows of one batch that carry different column sets (a column added mid-batch,
partial rows) keep the target's current value for the columns they lack:
the stage is filled in from the target before the MERGE. A row inserted
without a column gets NULL there, not the column default.

Semi-structured values (dict, list) travel as their JSON text and are parsed
into documents in the stage (``PARSE_JSON``), on both load paths.

Position guard (``position_guard=True``, ``position_guard.py``): a change is
applied only if it is newer than the row's source position; deletes leave
tombstones and truncates a watermark, so no replay moves a row backwards.
"""

from __future__ import annotations

import functools
import logging
import math
import threading
from collections.abc import Mapping, Sequence
from typing import Any

import snowflake.connector
from snowflake.connector import errors as sf_errors
from snowflake.connector.connection import SnowflakeConnection
from snowflake.connector.cursor import SnowflakeCursor

from config.errors import ConfigError
from config.redact import first_line
from destinations.errors import (
    ClassifiedError,
    DestinationError,
    DestinationTimeoutError,
    PermanentDestinationError,
)
from destinations.net_effect import BatchLayout, layout, net_effect
from destinations.ordered_parts import MOVE, TRUNCATE, key_move_refusal, ordered_parts
from destinations.postgresql.position_guard import with_positions, without_positions
from destinations.records import ChangeRecord
from destinations.schema_evolution import checked_mode
from destinations.session import SessionDestination
from destinations.snowflake.bulk_load import STAGE_THRESHOLD_ROWS, BulkLoad
from destinations.snowflake.connect_options import (
    DEFAULT_LOGIN_TIMEOUT,
    DEFAULT_WRITE_TIMEOUT,
    Timeouts,
    credential_options,
)
from destinations.snowflake.connector_logs import quiet_connector_logs, quiet_error_handler
from destinations.snowflake.errors import classify, connection_lost
from destinations.snowflake.position_guard import Guard
from destinations.snowflake.schema_evolution import (
    append_only_refusal,
    describe,
    evolve,
    missing_targets,
)
from destinations.snowflake.stage import (
    MAX_INSERT_BYTES,
    MAX_ROWS_PER_INSERT,
    Stage,
    TableInfo,
    quote,
)
from destinations.snowflake.write_deadline import WriteDeadline, bounded_cursor

logger = logging.getLogger(__name__)


class SnowflakeDestination(SessionDestination[SnowflakeConnection]):
    """Writes CDC batches to Snowflake tables by primary key.

    ``table_map`` maps a source table to its target as ``"DB.SCHEMA.TABLE"``,
    ``"SCHEMA.TABLE"``, ``"TABLE"`` (split at dots) or a tuple of those parts;
    names are used exactly (quoted, case-sensitive). By default the target is
    the source table's last name part, upper-cased, in the connection's
    database and schema: what an unquoted name would resolve to. Record
    columns match target columns exactly or, failing that, case-insensitively.

    One credential: ``password``, a PEM ``private_key`` (text) or
    ``private_key_file`` with ``private_key_passphrase`` when encrypted
    (key-pair authentication), an OAuth ``token``, or an ``authenticator``
    that needs none (see ``connect_options``). Credentials are kept out of
    ``repr`` and logs.

    ``write_timeout`` bounds one batch's write (its login, statements and
    the connector's retries): past it the write fails as a lost session
    (transient: retried or queued). ``login_timeout`` bounds a login (within
    a write, what is left of ``write_timeout`` at most); ``socket_timeout``
    one network attempt (default a sixth of ``write_timeout``, at most 60);
    ``network_timeout`` the connector's other requests, such as cancelling
    a statement (default ``socket_timeout``). ``host``/``port``/``protocol``
    point the connector elsewhere than ``<account>.snowflakecomputing.com``
    (tests use a local fakesnow server). ``position_guard``: see the module.
    ``schema_evolution``: "basic" creates a missing target or column, "none" refuses it.
    """

    _session_noun = "session"
    _close_errors = (sf_errors.Error,)

    def __init__(
        self,
        destination_id: str,
        name: str,
        *,
        account: str,
        database: str,
        schema: str,
        user: str | None = None,
        password: str | None = None,
        private_key: str | None = None,
        private_key_file: str | None = None,
        private_key_passphrase: str | None = None,
        token: str | None = None,
        authenticator: str | None = None,
        warehouse: str | None = None,
        role: str | None = None,
        host: str | None = None,
        port: int | None = None,
        protocol: str = "https",
        table_map: Mapping[str, str | tuple[str, ...]] | None = None,
        login_timeout: float = DEFAULT_LOGIN_TIMEOUT,
        write_timeout: float = DEFAULT_WRITE_TIMEOUT,
        network_timeout: int | None = None,
        socket_timeout: int | None = None,
        session_parameters: Mapping[str, Any] | None = None,
        max_rows_per_insert: int = MAX_ROWS_PER_INSERT,
        max_insert_bytes: int = MAX_INSERT_BYTES,
        stage_threshold_rows: int = STAGE_THRESHOLD_ROWS,
        position_guard: bool = False,
        schema_evolution: str = "none",
    ) -> None:
        super().__init__(destination_id, name)
        where = f"destination {name} (ID={destination_id})"
        self.account = account
        self.user = user
        # Masked in every error text this destination hands out.
        self._secrets = (password, token, private_key_passphrase, private_key)
        # The connector's credential arguments (a private key as DER bytes):
        # never logged, never in repr.
        self._credentials = credential_options(
            where,
            password=password,
            private_key=private_key,
            private_key_file=private_key_file,
            private_key_passphrase=private_key_passphrase,
            token=token,
            authenticator=authenticator,
        )
        self.timeouts = Timeouts.of(
            where,
            write_timeout=write_timeout,
            login_timeout=login_timeout,
            socket_timeout=socket_timeout,
            network_timeout=network_timeout,
        )
        self._deadline = WriteDeadline(self, self.timeouts)
        self.database = database
        self.schema = schema
        self.warehouse = warehouse
        self.role = role
        self.host = host
        self.port = port
        self.protocol = protocol
        self.session_parameters = dict(session_parameters or {})
        self.max_rows_per_insert = min(max_rows_per_insert, MAX_ROWS_PER_INSERT)
        self.max_insert_bytes = max_insert_bytes
        whole = isinstance(stage_threshold_rows, int) and not isinstance(stage_threshold_rows, bool)
        if not whole or stage_threshold_rows < 1:
            raise ConfigError(
                [
                    f"destination {destination_id}: stage_threshold_rows must be a whole number "
                    f"of rows, 1 or more (1 stages every batch), got {stage_threshold_rows!r}"
                ]
            )
        self.stage_threshold_rows = stage_threshold_rows
        self._table_map = dict(table_map or {})
        self._tables: dict[tuple[str, ...], TableInfo] = {}
        self.position_guard = position_guard
        self.schema_evolution = checked_mode(f"destination {destination_id}", schema_evolution)
        # Targets whose guard side tables this session has made sure of.
        self._guards_ready: set[tuple[str, ...]] = set()
        quiet_connector_logs()

    def __repr__(self) -> str:
        return (
            f"SnowflakeDestination(id={self.destination_id!r}, name={self.name!r}, "
            f"account={self.account!r}, user={self.user!r}, database={self.database!r}, "
            f"schema={self.schema!r}, position_guard={self.position_guard})"
        )

    def check_tables(self, keys: Mapping[str, tuple[str, ...] | None]) -> list[str]:
        """Append-only tables are refused (the MERGE matches by key), and with "none" a missing
        target; a server that cannot be reached answers no problem (the writes will tell)."""
        problems = [append_only_refusal(self, t) for t in keys if self.appends_only(t)]
        if self.schema_evolution == "basic":
            return problems
        targets = {t: self._target_of(t) for t in keys if not self.appends_only(t)}
        return problems + [f"{self}: {p}" for p in self._missing_targets(targets)]

    def _missing_targets(self, targets: Mapping[str, tuple[str, ...]]) -> list[str]:
        if not targets:
            return []
        with self._deadline.bound():  # the whole check within write_timeout
            conn = None
            try:
                conn = self._connect(self.timeouts.login)
                with bounded_cursor(conn, self._deadline) as cur:
                    return missing_targets(cur, targets, (self.database, self.schema))
            except (sf_errors.Error, DestinationError) as error:
                logger.warning(
                    "cannot check the target tables at start-up, their writes will tell: "
                    "destination=%s error=%s",
                    self,
                    self.redact(first_line(error)),
                )
                return []
            finally:
                if conn is not None:
                    self._close_quietly(conn)

    # ------------------------------------------------------------------ writes

    def write_batch(self, table: str, records: Sequence[ChangeRecord]) -> int:
        """Apply ``records`` with one MERGE, within ``write_timeout``; returns ``len(records)``."""
        if not records:
            return 0
        with self._deadline.bound():
            return self._write_batch(table, records)

    def _write_batch(self, table: str, records: Sequence[ChangeRecord]) -> int:
        target = self._target_of(table)
        parts = ordered_parts(records)
        if parts is not None:
            # One statement per part, in order. Not one transaction: a batch
            # replayed whole after a failure in the middle ends the same.
            for kind, part in parts:
                if kind == MOVE:
                    raise PermanentDestinationError(key_move_refusal(part[0]))
                if kind == TRUNCATE:
                    apply = functools.partial(self._truncate, target, part[0])
                    self._write_once_more(table, apply)
                else:
                    self._write_batch(table, part)
            return len(records)
        plan = layout(net_effect(records))
        statements = self._write_once_more(table, lambda: self._apply(target, plan, records))
        logger.debug(
            "batch applied destination=%s table=%s records=%d net=%d statements=%d",
            self,
            table,
            len(records),
            len(plan),
            statements,
        )
        return len(records)

    def _truncate(self, target: tuple[str, ...], truncate: ChangeRecord) -> None:
        conn = self._current_session()
        try:
            with bounded_cursor(conn, self._deadline) as cur:
                if self.schema_evolution == "basic" and self._missing(cur, target):
                    return  # nothing to empty: the first write creates it, empty
                info = self._table_info(cur, target)
                if not self.position_guard:
                    cur.execute(f"TRUNCATE TABLE {info.name}")
                    return
                done = Guard.of(info, target, self).truncate(cur, info, truncate.position)
                logger.info(
                    "truncate applied destination=%s table=%s position=%s guard=on result=%s",
                    self,
                    info.name,
                    truncate.position,
                    done,
                )
        except BaseException as exc:
            self._abort(exc)
            raise

    def _apply(
        self, target: tuple[str, ...], plan: BatchLayout, records: Sequence[ChangeRecord]
    ) -> int:
        """Stage and merge (the same statements after either load path); returns statements sent.

        With ``schema_evolution = "basic"`` the target is first made to have
        every column of ``records`` (``schema_evolution.py``)."""
        conn = self._current_session()
        try:
            with bounded_cursor(conn, self._deadline) as cur:
                evolved = self._evolve(cur, target, records)
                info = self._table_info(cur, target)
                guard = None
                if self.position_guard:
                    guard = Guard.of(info, target, self)
                    plan = BatchLayout(
                        plan.keys,
                        [with_positions(without_positions(g)) for g in plan.upserts],
                        with_positions(plan.deletes),
                    )
                stage = Stage.build(info, plan, self)
                sent = evolved + (0 if guard is None else self._ready(cur, guard, info, stage.keys))
                cur.execute(stage.create())
                if len(stage.rows) >= self.stage_threshold_rows:
                    sent += 1 + self._load_staged(cur, stage)
                else:
                    sent += 1
                    for statement, params in stage.inserts(
                        self.max_rows_per_insert, self.max_insert_bytes
                    ):
                        cur.execute(statement, params)
                        sent += 1
                for statement in stage.merges() if guard is None else guard.statements(stage):
                    cur.execute(statement)
                    sent += 1
                return sent
        except BaseException as exc:
            self._abort(exc)
            raise

    def _ready(
        self, cur: SnowflakeCursor, guard: Guard, info: TableInfo, keys: tuple[str, ...]
    ) -> int:
        """Create the guard's side tables once a session; returns the statements sent."""
        if guard.target in self._guards_ready:
            return 0
        cur.execute(guard.create_tombstones(info, keys))
        cur.execute(guard.create_truncates())
        logger.info(
            "tombstone table ready destination=%s table=%s tombstones=%s truncates=%s",
            self,
            info.name,
            guard.tombstones,
            guard.truncates,
        )
        self._guards_ready.add(guard.target)
        return 2

    def _evolve(
        self, cur: SnowflakeCursor, target: tuple[str, ...], records: Sequence[ChangeRecord]
    ) -> int:
        """With "basic": create the target or add the columns ``records`` need; returns the
        statements sent."""
        if self.schema_evolution != "basic":
            return 0
        table = records[0].table
        done = evolve(
            cur,
            target,
            self._tables.get(target),
            records,
            guard=self.position_guard,
            source_types=lambda: None if self.source_types is None else self.source_types(table),
            owner=self,
        )
        if done.info is None:
            self._tables.pop(target, None)  # read again, with what the DDL made
        else:
            self._tables[target] = done.info
        return done.sent

    def _load_staged(self, cur: SnowflakeCursor, stage: Stage) -> int:
        """Fill the created stage table with PUT + COPY INTO; returns statements sent."""
        size = BulkLoad(stage, self).run(cur)
        logger.debug(
            "batch staged destination=%s target=%s rows=%d file_bytes=%d",
            self,
            stage.info.name,
            len(stage.rows),
            size,
        )
        return 2

    # ------------------------------------------------------------ catalog

    def _target_of(self, table: str) -> tuple[str, ...]:
        spec = self._table_map.get(table)
        if spec is None:
            return (table.rsplit(".", 1)[-1].upper(),)
        if isinstance(spec, tuple):
            return spec
        return tuple(spec.split("."))

    def _missing(self, cur: SnowflakeCursor, target: tuple[str, ...]) -> bool:
        return target not in self._tables and describe(cur, ".".join(map(quote, target))) is None

    def _table_info(self, cur: SnowflakeCursor, target: tuple[str, ...]) -> TableInfo:
        info = self._tables.get(target)
        if info is None:
            name = ".".join(quote(part) for part in target)
            info = self._tables[target] = TableInfo.read(cur, name)
        return info

    # ------------------------------------------------------------ connections

    def _connect_options(self, login_timeout: float) -> dict[str, Any]:
        timeouts = self.timeouts
        options: dict[str, Any] = {
            "account": self.account,
            "user": self.user,
            **self._credentials,
            "database": self.database,
            "schema": self.schema,
            "warehouse": self.warehouse,
            "role": self.role,
            "host": self.host,
            "port": self.port,
            "protocol": self.protocol,
            "login_timeout": max(1, math.ceil(login_timeout)),
            "network_timeout": timeouts.network,
            "socket_timeout": min(timeouts.socket, max(1, math.ceil(login_timeout))),
            "backoff_policy": timeouts.backoff_policy(),
            "session_parameters": self.session_parameters,
            "paramstyle": "pyformat",  # bound client-side: one statement per chunk
            "autocommit": True,  # the MERGE is its own transaction
            "application": "rosetta",
        }
        return {k: v for k, v in options.items() if v is not None}

    def _connect(self, login_timeout: float) -> SnowflakeConnection:
        conn = snowflake.connector.connect(**self._connect_options(login_timeout))
        conn.errorhandler = quiet_error_handler
        return conn

    def _open_session(self) -> SnowflakeConnection:
        # A login inside a write has what is left of write_timeout, at most.
        budget = self._deadline.retry_budget("before a login")
        login = self.timeouts.login if budget is None else min(self.timeouts.login, budget)
        try:
            conn = self._connect(login)
        except sf_errors.Error as error:
            if self._deadline.passed():
                raise self._deadline.expired("a login") from error
            raise
        self._tables.clear()
        self._guards_ready.clear()
        return conn

    def _is_open(self, session: SnowflakeConnection) -> bool:
        return not session.is_closed()

    def _is_stale(self, error: Exception) -> bool:
        # An expired or closed session (nothing reached the target).
        stale = isinstance(error, sf_errors.OperationalError | sf_errors.InterfaceError)
        return isinstance(error, sf_errors.Error) and (stale or connection_lost(error))

    def _abort(self, error: BaseException) -> None:
        """After a failure: re-read the catalog next time; drop a session that failed below SQL."""
        self._tables.clear()
        self._guards_ready.clear()
        conn = self._session
        answered = isinstance(
            error, sf_errors.ProgrammingError | DestinationError
        ) and not isinstance(error, DestinationTimeoutError)
        if conn is None or (answered and not connection_lost(error)):
            return  # the server answered about the statement: the session is fine
        self._session = None
        # The server may be gone, and the connector's close waits for a
        # cancel of the failed statement still retrying in its timer thread:
        # close in the background, the write's time is up.
        threading.Thread(
            target=self._close_quietly, args=(conn,), name=f"close:{self.name}", daemon=True
        ).start()

    def _close_quietly(self, conn: SnowflakeConnection) -> None:
        try:
            conn.close(retry=False)
        except Exception:  # closing a broken session may fail too; it is dropped anyway
            logger.debug("close after failure failed destination=%s", self, exc_info=True)

    # ------------------------------------------------------------ errors

    def classify_error(self, error: BaseException) -> ClassifiedError:
        """Transient (retry later), row-level (park) or table-level (hold), by errno and SQLSTATE.

        A lost or expired session is transient and ``connection_lost``.
        """
        return classify(error, self.redact)

    # ------------------------------------------------------------ health

    def _probe_once(self, timeout: float) -> None:
        conn = self._connect(timeout)
        try:
            with conn.cursor() as cur:
                cur.execute("SELECT 1", timeout=max(1, math.ceil(timeout)))
                cur.fetchone()
        finally:
            conn.close()
