"""One harness over each destination the contract suite holds to one behaviour.

A backend creates the target table, makes the destination, reads the table
back and causes the failures the contract names (an outage, a server that
never answers, a session lost while idle or under a write). Where the
destinations document different behaviour, ``Expected`` says what each one
does, so that a contract test asserts it instead of papering over it.
"""

from __future__ import annotations

import contextlib
import threading
import time
from abc import ABC, abstractmethod
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime
from decimal import Decimal
from typing import Any

import psycopg2
import pytest
from psycopg2 import sql
from psycopg2.extensions import parse_dsn

from destinations.base import Destination
from destinations.errors import FailureKind
from destinations.postgresql.destination import PostgreSQLDestination
from destinations.records import ChangeRecord
from destinations.snowflake.destination import SnowflakeDestination
from tests.builders import SOURCE_TABLE
from tests.destinations.snowflake.expiring_sessions import ExpiringSessions
from tests.fakes import FakeDestination, Fault
from tests.fault_proxy import FaultProxy
from tests.waiting import wait_until

# Column name -> logical type; each backend maps the type to its own DDL.
Columns = Mapping[str, str]
ITEMS: Columns = {"id": "int", "name": "text", "qty": "bigint"}
TYPED: Columns = {
    "id": "int",
    "name": "text",
    "qty": "bigint",
    "amount": "numeric",
    "flag": "bool",
    "ts": "timestamp",
    "tstz": "timestamptz",
    "doc": "json",
}


@dataclass(frozen=True)
class Expected:
    """What one backend documents where the destinations differ."""

    # ClassifiedError.code of: a value its column refuses (a prefix), a missing
    # table, a write during an outage, a write whose every session dies.
    rejected_code: str | None
    missing_table_code: str | None
    outage_code: str | None
    lost_session_code: str | None
    # A value the driver cannot send at all (an arbitrary object): PostgreSQL
    # refuses it as permanent; the Snowflake connector's binding error
    # (252004/255001) is not among the codes the destination calls permanent,
    # so it counts as unknown, transient within the retry budget.
    unsendable_kind: FailureKind
    # Snowflake writes a dict or list as its JSON text (a VARCHAR column);
    # PostgreSQL stores it in jsonb and reads it back as the same value.
    json_as_text: bool


def code_matches(code: str | None, expected: str | None) -> bool:
    return code is None if expected is None else code is not None and code.startswith(expected)


class Backend(ABC):
    """One destination type, one target table ``items`` per test."""

    name: str
    expected: Expected

    def __init__(self) -> None:
        self.columns: Columns = ITEMS
        self.key: tuple[str, ...] = ("id",)
        self.made: list[Destination] = []

    def destination(self, columns: Columns = ITEMS, key: Sequence[str] = ("id",)) -> Destination:
        """Create the target table and a destination writing ``SOURCE_TABLE`` into it."""
        self.columns, self.key = columns, tuple(key)
        destination = self._make()
        self.made.append(destination)
        return destination

    @abstractmethod
    def _make(self) -> Destination: ...

    @abstractmethod
    def rows(self) -> list[dict[str, Any]]:
        """The target table's rows in key order: every column, lower-case names."""

    @abstractmethod
    def outage(self) -> contextlib.AbstractContextManager[None]:
        """Inside: the destination cannot be reached (connections refused or reset)."""

    @abstractmethod
    def unresponsive(self) -> contextlib.AbstractContextManager[None]:
        """Inside: the destination accepts connections and never answers."""

    @abstractmethod
    def lose_idle_session(self) -> None:
        """End the destination's kept session while it is idle (killed, expired)."""

    @abstractmethod
    def write_losing_sessions(
        self, destination: Destination, records: Sequence[ChangeRecord]
    ) -> BaseException:
        """Write ``records`` while every session dies under the write; what it raised."""

    @abstractmethod
    def connections_closed(self) -> bool:
        """True when no connection of the destination is open any more."""

    def close(self) -> None:
        for destination in self.made:
            destination.close()


def raised_by(write: Callable[[], Any]) -> BaseException:
    with pytest.raises(Exception) as caught:
        write()
    return caught.value


# ---------------------------------------------------------------- the fake


_FAKE_TYPES: dict[str, type | tuple[type, ...]] = {
    "int": int,
    "bigint": int,
    "numeric": (Decimal, int),
    "text": str,
    "bool": bool,
    "timestamp": datetime,
    "timestamptz": datetime,
    "json": (dict, list),
}


class FakeBackend(Backend):
    name = "fake"
    expected = Expected(
        rejected_code=None,
        missing_table_code=None,
        outage_code=None,
        lost_session_code=None,
        unsendable_kind=FailureKind.PERMANENT,
        json_as_text=False,
    )

    def _make(self) -> Destination:
        declared = {SOURCE_TABLE: {c: _FAKE_TYPES[t] for c, t in self.columns.items()}}
        self.fake = FakeDestination("1", "Fake-Contract", tables=declared)
        return self.fake

    def rows(self) -> list[dict[str, Any]]:
        stored = self.fake.rows(SOURCE_TABLE)
        return [{c: stored[k].get(c) for c in self.columns} for k in sorted(stored)]

    @contextlib.contextmanager
    def outage(self) -> Iterator[None]:
        self.fake.set_down(True)
        try:
            yield
        finally:
            self.fake.set_down(False)

    @contextlib.contextmanager
    def unresponsive(self) -> Iterator[None]:
        self.fake.hang_test_connection(60)
        try:
            yield
        finally:
            self.fake.hang_test_connection(0)

    def lose_idle_session(self) -> None:
        self.fake.lose_session()

    def write_losing_sessions(
        self, destination: Destination, records: Sequence[ChangeRecord]
    ) -> BaseException:
        self.fake.fail_next(1, Fault.SESSION_LOST)
        return raised_by(lambda: destination.write_batch(SOURCE_TABLE, records))

    def connections_closed(self) -> bool:
        return self.fake.closed


# ---------------------------------------------------------------- PostgreSQL


_PG_TYPES = {
    "int": "int",
    "bigint": "bigint",
    "numeric": "numeric(38,9)",
    "text": "text",
    "bool": "boolean",
    "timestamp": "timestamp",
    "timestamptz": "timestamptz",
    "json": "jsonb",
}
# copy_threshold picks the write path: huge keeps every test batch on the
# execute_values path, 0 sends every batch through COPY; the position guard
# always goes through COPY and a tombstone table.
PG_VARIANTS: dict[str, dict[str, Any]] = {
    "values": {"copy_threshold": 10**9},
    "copy": {"copy_threshold": 0},
    "guarded": {"position_guard": True},
}


class ProxiedBackend(Backend):
    """A real server behind a fault proxy: outages and silence are played at the proxy."""

    proxy: FaultProxy

    @contextlib.contextmanager
    def outage(self) -> Iterator[None]:
        self.proxy.reset()  # open connections reset, new ones reset as soon as accepted
        try:
            yield
        finally:
            self.proxy.pass_through()

    @contextlib.contextmanager
    def unresponsive(self) -> Iterator[None]:
        self.proxy.blackhole()
        try:
            yield
        finally:
            self.proxy.pass_through()
            self.proxy.reset_all()  # a blackholed connection stays dead: end it


class PostgreSQLBackend(ProxiedBackend):
    """The suite's PostgreSQL, reached through a fault proxy that plays outages."""

    expected = Expected(
        rejected_code="22P02",  # invalid_text_representation
        missing_table_code="42P01",  # undefined_table
        outage_code=None,  # libpq reports a refused or reset connection without SQLSTATE
        lost_session_code=None,  # ... and a killed backend as "server closed the connection"
        unsendable_kind=FailureKind.PERMANENT,
        json_as_text=False,
    )

    def __init__(self, variant: str, dsn: str, admin: Any, schema: str) -> None:
        super().__init__()
        self.name = f"postgresql-{variant}"
        self.options = PG_VARIANTS[variant]
        self.dsn, self.admin, self.schema = dsn, admin, schema
        options = parse_dsn(dsn)
        self.proxy = FaultProxy(options.get("host", "127.0.0.1"), int(options.get("port", 5432)))
        self.proxy.start()

    def _table(self) -> sql.Composed:
        return sql.SQL("{}.{}").format(sql.Identifier(self.schema), sql.Identifier("items"))

    def _make(self) -> Destination:
        columns = [
            sql.SQL("{} {}").format(sql.Identifier(c), sql.SQL(_PG_TYPES[t]))
            for c, t in self.columns.items()
        ]
        if self.options.get("position_guard"):
            columns += [sql.SQL("_rosetta_commit bigint"), sql.SQL("_rosetta_seq bigint")]
        key = sql.SQL(", ").join(map(sql.Identifier, self.key))
        with self.admin.cursor() as cur:
            cur.execute(sql.SQL("DROP TABLE IF EXISTS {}").format(self._table()))
            cur.execute(
                sql.SQL("CREATE TABLE {} ({}, PRIMARY KEY ({}))").format(
                    self._table(), sql.SQL(", ").join(columns), key
                )
            )
        dsn = self.proxy.dsn_for(" ".join(f"{k}={v}" for k, v in parse_dsn(self.dsn).items()))
        return PostgreSQLDestination(
            "1",
            "PG-Contract",
            dsn,
            table_map={SOURCE_TABLE: (self.schema, "items")},
            connect_timeout=2,
            write_timeout=20,
            **self.options,
        )

    def rows(self) -> list[dict[str, Any]]:
        with self.admin.cursor() as cur:
            cur.execute(
                sql.SQL("SELECT {} FROM {} ORDER BY {}").format(
                    sql.SQL(", ").join(map(sql.Identifier, self.columns)),
                    self._table(),
                    sql.SQL(", ").join(map(sql.Identifier, self.key)),
                )
            )
            return [dict(zip(self.columns, row, strict=True)) for row in cur.fetchall()]

    def _rosetta_backends(self, where: str = "") -> list[int]:
        with self.admin.cursor() as cur:
            cur.execute(
                "SELECT pid FROM pg_stat_activity WHERE application_name = 'rosetta' "
                "AND pid <> pg_backend_pid()" + where
            )
            return [row[0] for row in cur.fetchall()]

    def _terminate(self, pids: list[int]) -> None:
        with self.admin.cursor() as cur:
            for pid in pids:
                cur.execute("SELECT pg_terminate_backend(%s)", (pid,))

    def lose_idle_session(self) -> None:
        pids = self._rosetta_backends()
        assert pids, "the destination keeps no session to lose"
        self._terminate(pids)
        wait_until(
            lambda: not set(pids) & set(self._rosetta_backends()),
            20,
            "the killed backends to be gone",
        )

    def write_losing_sessions(
        self, destination: Destination, records: Sequence[ChangeRecord]
    ) -> BaseException:
        # The target is locked, so the write waits on it; each session that
        # does is killed (the destination replaces a lost kept session once).
        locker = psycopg2.connect(self.dsn)
        errors: list[BaseException] = []

        def write() -> None:
            try:
                destination.write_batch(SOURCE_TABLE, records)
            except BaseException as error:  # handed to the test
                errors.append(error)

        writer = threading.Thread(target=write, name="contract-writer")
        try:
            with locker.cursor() as cur:
                cur.execute(sql.SQL("LOCK TABLE {} IN ACCESS EXCLUSIVE MODE").format(self._table()))
            writer.start()
            deadline = time.monotonic() + 30
            while writer.is_alive() and time.monotonic() < deadline:
                self._terminate(self._rosetta_backends(" AND wait_event_type = 'Lock'"))
                writer.join(0.05)
        finally:
            locker.rollback()
            locker.close()
            writer.join(30)
        assert len(errors) == 1, "the write went through although its sessions died"
        return errors[0]

    def connections_closed(self) -> bool:
        return self.proxy.live_connections == 0

    def close(self) -> None:
        super().close()
        self.proxy.stop()


# ---------------------------------------------------------------- Snowflake


SF_DATABASE = "ROSETTA_CONTRACT"
_SF_TYPES = {
    "int": "NUMBER(38,0)",
    "bigint": "BIGINT",
    "numeric": "NUMBER(38,9)",
    "text": "VARCHAR",
    "bool": "BOOLEAN",
    "timestamp": "TIMESTAMP_NTZ",
    "timestamptz": "TIMESTAMP_TZ",
    "json": "VARCHAR",  # semi-structured values are written as their JSON text
}


class SnowflakeBackend(ProxiedBackend):
    """The real connector against the suite's fakesnow server, through a fault proxy."""

    name = "snowflake"
    expected = Expected(
        rejected_code=None,  # text that is no number is refused before it reaches the server
        missing_table_code="002003",
        outage_code="250001",  # could not connect
        lost_session_code="390114",  # session expired, and its renewal refused
        unsendable_kind=FailureKind.TRANSIENT,
        json_as_text=True,
    )

    def __init__(
        self, server: Mapping[str, Any], admin: Any, schema: str, sessions: ExpiringSessions
    ) -> None:
        super().__init__()
        self.server, self.admin, self.schema, self.sessions = server, admin, schema, sessions
        self.proxy = FaultProxy(str(server["host"]), int(server["port"]))
        self.proxy.start()
        self.before = sessions.current()  # sessions that are not the destination's

    def _run(self, statement: str) -> list[tuple[Any, ...]]:
        cur = self.admin.cursor()
        cur.execute(statement)
        return list(cur.fetchall())

    def _table(self) -> str:
        return f"{SF_DATABASE}.{self.schema}.ITEMS"

    def _make(self) -> Destination:
        columns = ", ".join(f"{c.upper()} {_SF_TYPES[t]}" for c, t in self.columns.items())
        self._run(f"CREATE OR REPLACE TABLE {self._table()} ({columns})")
        options = {**self.server, "port": self.proxy.port, "login_timeout": 2}
        return SnowflakeDestination(
            "1", "Snowflake-Contract", database=SF_DATABASE, schema=self.schema, **options
        )

    def rows(self) -> list[dict[str, Any]]:
        names = [c.upper() for c in self.columns]
        # fakesnow reads a NULL TIMESTAMP back as 1970-01-01: ask IS NULL as well.
        nulls = [f"{n} IS NULL" for n in names]
        order = ", ".join(k.upper() for k in self.key)
        found = self._run(
            f"SELECT {', '.join(names + nulls)} FROM {self._table()} ORDER BY {order}"
        )
        width = len(names)
        return [
            {c: None if row[width + i] else row[i] for i, c in enumerate(self.columns)}
            for row in found
        ]

    def lose_idle_session(self) -> None:
        assert self.sessions.current() - self.before, "the destination keeps no session to lose"
        self.sessions.expire_since(self.before)

    def write_losing_sessions(
        self, destination: Destination, records: Sequence[ChangeRecord]
    ) -> BaseException:
        # The kept session expires, and every new one after its first query.
        self.sessions.expire_since(self.before)
        self.sessions.limit_queries(1)
        try:
            return raised_by(lambda: destination.write_batch(SOURCE_TABLE, records))
        finally:
            self.sessions.limit_queries(None)

    def connections_closed(self) -> bool:
        return self.proxy.live_connections == 0

    def close(self) -> None:
        super().close()
        self.proxy.stop()
