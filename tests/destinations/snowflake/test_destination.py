"""SnowflakeDestination: the real connector against a local fakesnow server.

What every destination must do (writes, net effect, replay, failure
classification, health, close) is in tests/destinations/contract/; this
module keeps what only Snowflake has: its types, identifiers and case
folding, the statement count of a MERGE, connector error codes, expired
sessions under the recovery worker, the password.

fakesnow quirks these tests work around, not hide: it reads a NULL
TIMESTAMP back as 1970-01-01 (so NULL timestamps are checked with IS NULL),
and it answers a NOT NULL or primary-key violation with HTTP 500 instead of
Snowflake's 100072 error, so the constraint class is classified from a
constructed connector error (see test_constraint_errors_are_permanent).
"""

from __future__ import annotations

import contextlib
import http.server
import itertools
import logging
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from datetime import UTC, date, datetime, timedelta, timezone
from datetime import time as dtime
from decimal import Decimal
from typing import Any

import pytest
import snowflake.connector
from snowflake.connector import errors as sf_errors
from snowflake.connector.cursor import SnowflakeCursor

from destinations.errors import FailureKind
from destinations.snowflake.destination import SnowflakeDestination
from destinations.snowflake.stage import quote
from tests.builders import SOURCE_TABLE, delete, upsert
from tests.destinations.snowflake.expiring_sessions import ExpiringSessions
from tests.destinations.snowflake.expiring_sessions import (
    expiring_sessions as patch_expiring_sessions,
)
from tests.servers import free_port

pytestmark = pytest.mark.filterwarnings("ignore:Arrow output on a DB-API result:UserWarning")

DATABASE = "ROSETTA_TEST"
_numbers = itertools.count(1)


@pytest.fixture(scope="module")
def sf_admin(fakesnow_server: dict[str, Any]) -> Iterator[Any]:
    conn = snowflake.connector.connect(**fakesnow_server)
    conn.cursor().execute(f"CREATE DATABASE IF NOT EXISTS {DATABASE}")
    yield conn
    conn.close()


@pytest.fixture
def sf_schema(sf_admin: Any) -> str:
    """A fresh schema in the shared fakesnow database."""
    name = f"T{next(_numbers)}_{uuid.uuid4().hex[:6].upper()}"
    sf_admin.cursor().execute(f"CREATE SCHEMA {DATABASE}.{name}")
    return name


def run(conn: Any, statement: str) -> list[tuple[Any, ...]]:
    cur = conn.cursor()
    cur.execute(statement)
    return list(cur.fetchall())


@pytest.fixture
def make_destination(
    fakesnow_server: dict[str, Any],
) -> Iterator[Callable[..., SnowflakeDestination]]:
    made: list[SnowflakeDestination] = []

    def make(schema: str, **kwargs: Any) -> SnowflakeDestination:
        options = {**fakesnow_server, "database": DATABASE, "schema": schema, **kwargs}
        destination = SnowflakeDestination("2", "Snowflake-Test", **options)
        made.append(destination)
        return destination

    yield make
    for destination in made:
        destination.close()


@pytest.fixture
def items(sf_admin: Any, sf_schema: str) -> str:
    """``ITEMS (ID, NAME, QTY)``, unquoted (upper-case) names; returns the schema."""
    run(sf_admin, f"CREATE TABLE {DATABASE}.{sf_schema}.ITEMS (ID INT, NAME VARCHAR, QTY INT)")
    return sf_schema


def table_rows(conn: Any, schema: str, table: str = "ITEMS") -> list[tuple[Any, ...]]:
    return run(conn, f"SELECT * FROM {DATABASE}.{schema}.{table} ORDER BY 1")


@contextlib.contextmanager
def counted_statements() -> Iterator[list[str]]:
    sent: list[str] = []
    original = SnowflakeCursor.execute

    def execute(self: SnowflakeCursor, command: str, *args: Any, **kwargs: Any) -> Any:
        sent.append(command)
        return original(self, command, *args, **kwargs)

    SnowflakeCursor.execute = execute  # type: ignore[method-assign,assignment]
    try:
        yield sent
    finally:
        SnowflakeCursor.execute = original  # type: ignore[method-assign]


# ---------------------------------------------------------------- apply semantics


def test_value_types_round_trip(
    sf_admin: Any, sf_schema: str, make_destination: Callable[..., SnowflakeDestination]
) -> None:
    run(
        sf_admin,
        f"CREATE TABLE {DATABASE}.{sf_schema}.TYPED (ID INT, TXT VARCHAR, NUM NUMBER(20,6), "
        "TS TIMESTAMP_NTZ, TSTZ TIMESTAMP_TZ, D DATE, T TIME, U VARCHAR, B BINARY, F FLOAT, "
        "FLAG BOOLEAN, DOC VARCHAR)",
    )
    dest = make_destination(sf_schema, table_map={SOURCE_TABLE: "TYPED"})
    some_uuid = uuid.UUID("12345678-1234-5678-1234-567812345678")
    awkward = "tab\t nl\n cr\r back\\slash quote ' dq \" pct %s %(x)s unicode żółw 🐢"
    dest.write_batch(
        SOURCE_TABLE,
        [
            upsert(
                1,
                {
                    "txt": awkward,
                    "num": Decimal("12345678.123456"),
                    "ts": datetime(2024, 2, 29, 23, 59, 58, 123456),
                    "tstz": datetime(2024, 1, 2, 3, 4, 5, tzinfo=timezone(timedelta(hours=2))),
                    "d": date(1999, 12, 31),
                    "t": dtime(13, 14, 15),
                    "u": some_uuid,
                    "b": b"\x00\x01\\\t\n\xff",
                    "f": 1.5e-7,
                    "flag": True,
                    "doc": {"k": ["v", 1, None]},
                },
                1,
            ),
            upsert(2, {"txt": "", "f": float("nan"), "flag": False}, 2),
            upsert(3, {"txt": None, "ts": None, "b": None}, 3),
        ],
    )
    one, two, three = table_rows(sf_admin, sf_schema, "TYPED")
    assert one[:8] == (
        1,
        awkward,
        Decimal("12345678.123456"),
        datetime(2024, 2, 29, 23, 59, 58, 123456),
        datetime(2024, 1, 2, 1, 4, 5, tzinfo=UTC),
        date(1999, 12, 31),
        dtime(13, 14, 15),
        str(some_uuid),
    )
    assert bytes(one[8]) == b"\x00\x01\\\t\n\xff"
    assert one[9:] == (1.5e-7, True, '{"k": ["v", 1, null]}')
    assert two[1] == "" and two[9] != two[9] and two[10] is False  # '' stays '', NaN is NaN
    assert three[1] is None and three[8] is None
    nulls = run(sf_admin, f"SELECT TS IS NULL FROM {DATABASE}.{sf_schema}.TYPED WHERE ID = 3")
    assert nulls == [(True,)]


def test_awkward_identifiers_are_written_to_not_executed(
    sf_admin: Any, sf_schema: str, make_destination: Callable[..., SnowflakeDestination]
) -> None:
    table = 'weird "name"; drop table x'
    run(sf_admin, f"CREATE TABLE {DATABASE}.{sf_schema}.X (ID INT)")
    run(
        sf_admin,
        f'CREATE TABLE {DATABASE}.{sf_schema}.{quote(table)} ("select" INT, "a b" VARCHAR, '
        '"100%" VARCHAR, "quo""te" INT)',
    )
    dest = make_destination(sf_schema, table_map={SOURCE_TABLE: (DATABASE, sf_schema, table)})
    dest.write_batch(
        SOURCE_TABLE,
        [
            upsert({"select": 1}, {"a b": "ab", "100%": "%s%%", 'quo"te': 7}, 1),
            upsert({"select": 2}, {"a b": "gone", "100%": None, 'quo"te': 0}, 2),
            delete({"select": 2}, 3),
        ],
    )
    assert table_rows(sf_admin, sf_schema, quote(table)) == [(1, "ab", "%s%%", 7)]
    assert table_rows(sf_admin, sf_schema, "X") == []  # still there


def test_columns_match_case_insensitively_and_table_map_forms(
    sf_admin: Any, sf_schema: str, make_destination: Callable[..., SnowflakeDestination]
) -> None:
    run(sf_admin, f'CREATE TABLE {DATABASE}.{sf_schema}."Orders" ("Id" INT, "Name" VARCHAR)')
    for spec in (f"{sf_schema}.Orders", (DATABASE, sf_schema, "Orders"), "Orders"):
        dest = make_destination(sf_schema, table_map={"shop.orders": spec})
        dest.write_batch("shop.orders", [upsert({"id": 1}, {"NAME": f"{spec}"}, 1)])
    assert run(sf_admin, f'SELECT "Id", "Name" FROM {DATABASE}.{sf_schema}."Orders"') == [
        (1, "Orders")
    ]


def test_bulk_statements_not_per_row(
    items: str, sf_admin: Any, make_destination: Callable[..., SnowflakeDestination]
) -> None:
    dest = make_destination(items)
    dest.write_batch(SOURCE_TABLE, [upsert(0, {"name": "warm", "qty": 0}, 0)])  # log in first
    batch = [upsert(i, {"name": f"n{i}", "qty": i}, i) for i in range(1, 301)]
    batch += [delete(0, 1000)]
    with counted_statements() as sent:
        dest.write_batch(SOURCE_TABLE, batch)
    # describe is cached: create stage, one insert, merge
    assert len(sent) == 3, sent
    assert len(table_rows(sf_admin, items)) == 300

    small_chunks = make_destination(items, max_rows_per_insert=100)
    with counted_statements() as sent:
        small_chunks.write_batch(SOURCE_TABLE, batch)
    assert sum(s.startswith("INSERT") for s in sent) == 4
    assert len(table_rows(sf_admin, items)) == 300


# ---------------------------------------------------------------- secrets


def test_repr_and_logs_hide_the_password(
    fakesnow_server: dict[str, Any], caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG)
    options = {**fakesnow_server, "password": "s3cret-pw", "port": free_port()}
    dest = SnowflakeDestination("4", "Snowflake-Secret", database="D", schema="S", **options)
    assert dest.test_connection(timeout=2.0) is False
    with pytest.raises(sf_errors.OperationalError):
        dest.write_batch(SOURCE_TABLE, [upsert(1, {"name": "a"}, 1)])
    assert "s3cret-pw" not in repr(dest) and "s3cret-pw" not in str(dest)
    assert "s3cret-pw" not in caplog.text


# ---------------------------------------------------------------- classification


@pytest.fixture
def any_dest(make_destination: Callable[..., SnowflakeDestination], sf_schema: str) -> Any:
    return make_destination(sf_schema)


def classified(dest: SnowflakeDestination, error: BaseException) -> tuple[FailureKind, str | None]:
    verdict = dest.classify_error(error)
    assert verdict.error_class == type(error).__name__ and verdict.message
    return verdict.kind, verdict.code


def test_sql_compilation_errors_are_permanent(
    any_dest: SnowflakeDestination, sf_admin: Any
) -> None:
    with pytest.raises(sf_errors.ProgrammingError) as caught:
        sf_admin.cursor().execute("SELEC 1")
    assert classified(any_dest, caught.value)[0] is FailureKind.PERMANENT


def test_missing_table_and_column_are_table_level(
    make_destination: Callable[..., SnowflakeDestination], sf_admin: Any, sf_schema: str, items: str
) -> None:
    """What the emulator raises for a target that is wrong for every row: hold, not park."""
    dest = make_destination(sf_schema)
    with pytest.raises(sf_errors.ProgrammingError) as caught:
        sf_admin.cursor().execute(f"INSERT INTO {DATABASE}.{sf_schema}.NO_SUCH_TABLE VALUES (1)")
    assert classified(dest, caught.value) == (FailureKind.TABLE, "002003")
    with pytest.raises(sf_errors.ProgrammingError) as caught:
        sf_admin.cursor().execute(
            f"INSERT INTO {DATABASE}.{sf_schema}.ITEMS (NO_SUCH_COLUMN) VALUES (1)"
        )
    assert classified(dest, caught.value) == (FailureKind.TABLE, "002043")
    with pytest.raises(Exception) as own:  # the engine's own check of the target's columns
        dest.write_batch(SOURCE_TABLE, [upsert(1, {"name": "a", "colour": "red"}, 1)])
    assert classified(dest, own.value)[0] is FailureKind.TABLE
    assert "colour" in str(own.value)


@pytest.mark.parametrize(
    ("errno", "sqlstate"),
    [(2003, "42S02"), (904, "42000"), (3001, "42501"), (2043, "02000")],
)
def test_snowflake_object_and_privilege_errors_are_table_level(errno: int, sqlstate: str) -> None:
    # Snowflake's real answers (the emulator has no grants), built as the connector builds them.
    error = sf_errors.ProgrammingError(msg="SQL compilation error", errno=errno, sqlstate=sqlstate)
    verdict = offline_dest().classify_error(error)
    assert verdict.kind is FailureKind.TABLE and verdict.code == f"{errno:06d}"
    assert not verdict.connection_lost


@pytest.mark.parametrize("errno", [390100, 390144, 251006])
def test_refused_logins_are_transient_not_charged_and_say_so(errno: int) -> None:
    error = sf_errors.DatabaseError(
        msg="Incorrect username or password was specified.", errno=errno
    )
    verdict = offline_dest().classify_error(error)
    assert verdict.kind is FailureKind.TRANSIENT
    assert verdict.authentication and verdict.connection_lost


def test_constraint_errors_are_permanent(any_dest: SnowflakeDestination) -> None:
    # fakesnow turns NOT NULL violations into HTTP 500, so this one is built
    # the way the connector builds Snowflake's real answer.
    error = sf_errors.ProgrammingError(
        msg="NULL result in a non-nullable column", errno=100072, sqlstate="22000"
    )
    assert classified(any_dest, error) == (FailureKind.PERMANENT, "100072")
    integrity = sf_errors.IntegrityError(msg="duplicate key", errno=100090, sqlstate="23505")
    assert classified(any_dest, integrity)[0] is FailureKind.PERMANENT


class _Unavailable(http.server.BaseHTTPRequestHandler):
    def do_POST(self) -> None:  # noqa: N802 (http.server's naming)
        self.send_response(503)
        self.send_header("Content-Length", "0")
        self.end_headers()

    def log_message(self, *args: Any) -> None:
        pass


@pytest.mark.timeout(60)
def test_service_unavailable_is_transient() -> None:
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _Unavailable)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        dest = SnowflakeDestination(
            "6", "Snowflake-503", account="a", user="u", password="p", database="D",
            schema="S", host="127.0.0.1", port=server.server_address[1], protocol="http",
            login_timeout=2, network_timeout=2,
        )  # fmt: skip
        with pytest.raises(sf_errors.Error) as caught:
            dest.write_batch(SOURCE_TABLE, [upsert(1, {"name": "a"}, 1)])
    finally:
        server.shutdown()
        server.server_close()
    assert classified(dest, caught.value)[0] is FailureKind.TRANSIENT
    for http_error in (
        sf_errors.ServiceUnavailableError(msg="503", errno=290503),
        sf_errors.GatewayTimeoutError(msg="504", errno=290504),
        sf_errors.OperationalError(msg="x", errno=-1, sqlstate="08001"),
        sf_errors.ProgrammingError(msg="statement timeout", errno=630, sqlstate="57014"),
    ):
        assert classified(dest, http_error)[0] is FailureKind.TRANSIENT


# ---------------------------------------------------------------- lost and expired sessions


def offline_dest() -> SnowflakeDestination:
    """A destination that never connects: classification needs no server."""
    return SnowflakeDestination(
        "6", "Snowflake-Offline", account="a", user="u", password="p", database="D", schema="S"
    )


@pytest.mark.parametrize(
    "error",
    [
        sf_errors.ProgrammingError(msg="Session no longer exists.", errno=390111, sqlstate="08001"),
        sf_errors.ProgrammingError(
            msg="Your session has expired. Please login again.", errno=390112, sqlstate="08001"
        ),
        sf_errors.ProgrammingError(
            msg="Authentication token has expired.  The user must authenticate again.",
            errno=390114,
            sqlstate="08001",
        ),
        sf_errors.DatabaseError(msg="Connection is closed", errno=250002, sqlstate="08003"),
        sf_errors.OperationalError(msg="Failed to connect to DB", errno=250001, sqlstate="08001"),
        sf_errors.OperationalError(msg="Failed to execute request: reset", errno=250003),
        sf_errors.OperationalError(msg="ConnectionTimeout occurred during login", errno=251011),
        sf_errors.InterfaceError(msg="Failed to renew session", errno=252007),
        sf_errors.HttpError(msg="401 Unauthorized", errno=290401, sqlstate="08001"),
        ConnectionResetError("Connection reset by peer"),
    ],
    ids=lambda e: f"{type(e).__name__}-{getattr(e, 'errno', '')}",
)
def test_lost_or_expired_session_is_transient_and_not_the_events_fault(
    error: BaseException,
) -> None:
    verdict = offline_dest().classify_error(error)
    assert verdict.kind is FailureKind.TRANSIENT
    assert verdict.connection_lost


@pytest.mark.parametrize(
    "error",
    [
        sf_errors.ProgrammingError(msg="statement timeout", errno=630, sqlstate="57014"),
        sf_errors.ProgrammingError(msg="SQL execution canceled", errno=604, sqlstate="57014"),
        sf_errors.ProgrammingError(msg="does not exist", errno=2003, sqlstate="42S02"),
        sf_errors.ProgrammingError(msg="NULL result", errno=100072, sqlstate="22000"),
        RuntimeError("odd"),
    ],
    ids=lambda e: f"{type(e).__name__}-{getattr(e, 'errno', '')}",
)
def test_statement_failures_are_charged_to_the_events(error: BaseException) -> None:
    assert not offline_dest().classify_error(error).connection_lost


@pytest.fixture
def expiring_sessions(monkeypatch: pytest.MonkeyPatch) -> Iterator[ExpiringSessions]:
    with patch_expiring_sessions(monkeypatch) as control:
        yield control


@pytest.mark.timeout(120)
def test_replay_failing_on_an_expired_session_does_not_charge_the_events(
    items: str,
    sf_admin: Any,
    make_destination: Callable[..., SnowflakeDestination],
    expiring_sessions: ExpiringSessions,
    tmp_path: Any,
) -> None:
    from compute.codec.failure_context import FailureContext
    from compute.codec.message import DLQMessage
    from compute.delivery.health import DestinationHealth
    from compute.dlq.manager import DLQManager
    from compute.queue_id import QueueId
    from compute.recovery.worker import DLQRecoveryWorker
    from tests.builders import dlq_config

    dest = make_destination(items)
    config = dlq_config(tmp_path, max_retries=1)
    dlq = DLQManager(config, background=False)
    queue = QueueId("1", SOURCE_TABLE, dest.destination_id)
    records = [upsert(i, {"name": f"n{i}", "qty": i}, i) for i in range(1, 4)]
    failure = FailureContext("OperationalError", "Snowflake was down")
    dlq.enqueue(queue, [DLQMessage.create(queue, r, failure) for r in records])
    health = {dest.destination_id: DestinationHealth(dest)}
    worker = DLQRecoveryWorker("p", "1", [dest], health, dlq, config, probe_timeout=10.0)
    # Every session expires after its first query: the health check's
    # SELECT 1 passes, the replay's write fails midway, again and again.
    expiring_sessions.limit_queries(1)
    now = time.time()
    try:
        for i in range(4):
            result = worker.run_once(now + i * 100)[0]
            assert result.failed == len(records) and result.parked == 0
            assert dlq.parked_count(queue) == 0
            assert [dlq.attempts_of(queue, m) for m in dlq.peek(queue, 10)] == [1, 1, 1]
        expiring_sessions.limit_queries(None)  # sessions last again
        assert worker.run_once(now + 1000)[0].replayed == len(records)
        assert table_rows(sf_admin, items) == [(1, "n1", 1), (2, "n2", 2), (3, "n3", 3)]
        assert not dlq.has_messages(queue)
    finally:
        dlq.close()


def test_append_only_tables_are_refused_at_start_up_naming_the_table(
    make_destination: Callable[..., SnowflakeDestination], items: str
) -> None:
    destination = make_destination(items)
    assert destination.check_tables({"public.items": ("id",)}) == []  # ITEMS exists
    destination.append_only = frozenset({"public.audit_log"})
    [line] = destination.check_tables({"public.items": ("id",), "public.audit_log": None})
    assert line.startswith(
        "Destination Snowflake-Test (ID=2): table public.audit_log: append-only tables are not "
        "supported by a Snowflake destination (its MERGE matches rows by key); fix: "
    )


# ---------------------------------------------------------------- truncate and key moves


def test_a_truncate_applies_between_the_changes_around_it(
    sf_admin: Any, items: str, make_destination: Callable[..., SnowflakeDestination]
) -> None:
    from destinations.records import ChangeRecord, Operation, SourcePosition

    dest = make_destination(items)
    dest.write_batch(SOURCE_TABLE, [upsert(9, {"name": "old", "qty": 1}, 5)])
    truncate = ChangeRecord(SOURCE_TABLE, Operation.TRUNCATE, {}, None, SourcePosition(11))
    batch = [upsert(1, {"name": "a", "qty": 1}, 10), truncate, upsert(2, {"name": "b"}, 12)]
    assert dest.write_batch(SOURCE_TABLE, batch) == 3
    assert table_rows(sf_admin, items) == [(2, "b", None)]


def test_a_key_move_is_refused_as_permanent_naming_why(
    items: str, make_destination: Callable[..., SnowflakeDestination]
) -> None:
    from destinations.errors import PermanentDestinationError
    from destinations.records import ChangeRecord, Operation, SourcePosition

    dest = make_destination(items)
    moved = ChangeRecord(
        SOURCE_TABLE,
        Operation.UPDATE,
        {"id": 2},
        {"id": 2, "name": "n"},
        SourcePosition(10, 1),
        {"id": 1},
        None,
        ("qty",),
    )
    with pytest.raises(
        PermanentDestinationError, match=r"unchanged columns \(qty\).*cannot move a row"
    ):
        dest.write_batch(SOURCE_TABLE, [moved])
