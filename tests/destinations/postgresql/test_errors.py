"""PostgreSQLDestination.classify_error on real errors raised by a real server.

Each SQLSTATE class the destination names is provoked for real. Two of them
never reach the client with their SQLSTATE, and the tests say so: libpq
reports a refused connection (08) and a backend killed by
``pg_terminate_backend`` (57P01) as "connection ... failed" / "server closed
the connection unexpectedly", an OperationalError without ``pgcode``; the
destination classes that as a lost connection, transient.
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Iterator
from typing import Any

import psycopg2
import psycopg2.errors
import pytest
from psycopg2 import sql

from destinations.errors import FailureKind, TableLevelDestinationError
from destinations.postgresql.destination import PostgreSQLDestination
from tests.builders import SOURCE_TABLE, upsert
from tests.servers import PostgresServer, free_port
from tests.waiting import wait_until

TRANSIENT = FailureKind.TRANSIENT
PERMANENT = FailureKind.PERMANENT
TABLE = FailureKind.TABLE


@pytest.fixture
def dest(postgres_dsn: str, pg_conn: Any, pg_schema: str) -> Iterator[PostgreSQLDestination]:
    with pg_conn.cursor() as cur:
        cur.execute(
            sql.SQL(
                "CREATE TABLE {}.items (id int PRIMARY KEY, name text NOT NULL, "
                "email text UNIQUE, qty int, code varchar(3))"
            ).format(sql.Identifier(pg_schema))
        )
    destination = PostgreSQLDestination(
        "7", "PG-Errors", postgres_dsn, table_map={SOURCE_TABLE: (pg_schema, "items")}
    )
    yield destination
    destination.close()


def raised_by(write: Callable[[], Any]) -> BaseException:
    with pytest.raises(Exception) as caught:
        write()
    return caught.value


def verdict(dest: PostgreSQLDestination, error: BaseException) -> tuple[FailureKind, str | None]:
    classified = dest.classify_error(error)
    assert classified.error_class == type(error).__name__
    assert classified.message
    return classified.kind, classified.code


# ---------------------------------------------------------------- row-level: 22, 23


def test_unique_violation_23505_is_permanent(dest: PostgreSQLDestination) -> None:
    error = raised_by(
        lambda: dest.write_batch(
            SOURCE_TABLE,
            [
                upsert(1, {"name": "a", "email": "x@y"}, 1),
                upsert(2, {"name": "b", "email": "x@y"}, 2),
            ],
        )
    )
    assert isinstance(error, psycopg2.errors.UniqueViolation)
    assert verdict(dest, error) == (PERMANENT, "23505")


def test_not_null_violation_23502_is_permanent(dest: PostgreSQLDestination) -> None:
    error = raised_by(lambda: dest.write_batch(SOURCE_TABLE, [upsert(1, {"name": None}, 1)]))
    assert verdict(dest, error) == (PERMANENT, "23502")


@pytest.mark.parametrize("threshold", [0, 10**9], ids=["copy", "values"])
def test_invalid_text_representation_22P02_is_permanent(
    dest: PostgreSQLDestination, threshold: int
) -> None:
    dest.copy_threshold = threshold
    error = raised_by(
        lambda: dest.write_batch(SOURCE_TABLE, [upsert(1, {"name": "a", "qty": "lots"}, 1)])
    )
    assert verdict(dest, error) == (PERMANENT, "22P02")


@pytest.mark.parametrize("threshold", [0, 10**9], ids=["copy", "values"])
def test_string_too_long_22001_is_permanent_not_truncated(
    dest: PostgreSQLDestination, threshold: int
) -> None:
    dest.copy_threshold = threshold
    error = raised_by(
        lambda: dest.write_batch(SOURCE_TABLE, [upsert(1, {"name": "a", "code": "ABCD"}, 1)])
    )
    assert verdict(dest, error) == (PERMANENT, "22001")


# ------------------------------------------- table-level: the target, not the row


def test_undefined_table_42P01_is_table_level(dest: PostgreSQLDestination) -> None:
    error = raised_by(lambda: dest.write_batch("public.nowhere", [upsert(1, {"name": "a"}, 1)]))
    assert isinstance(error, psycopg2.errors.UndefinedTable)
    assert verdict(dest, error) == (TABLE, "42P01")


def test_no_unique_key_for_upsert_42P10_is_table_level(
    pg_conn: Any, pg_schema: str, postgres_dsn: str
) -> None:
    with pg_conn.cursor() as cur:
        cur.execute(
            sql.SQL("CREATE TABLE {}.history (id int, name text)").format(sql.Identifier(pg_schema))
        )
    dest = PostgreSQLDestination(
        "7", "PG", postgres_dsn, table_map={SOURCE_TABLE: (pg_schema, "history")}
    )
    error = raised_by(lambda: dest.write_batch(SOURCE_TABLE, [upsert(1, {"name": "a"}, 1)]))
    assert verdict(dest, error) == (TABLE, "42P10")
    dest.close()


def test_dropped_column_42703_is_table_level(
    dest: PostgreSQLDestination, pg_conn: Any, pg_schema: str
) -> None:
    dest.write_batch(SOURCE_TABLE, [upsert(1, {"name": "a", "qty": 1}, 1)])  # catalog cached
    with pg_conn.cursor() as cur:
        cur.execute(
            sql.SQL("ALTER TABLE {}.items DROP COLUMN qty").format(sql.Identifier(pg_schema))
        )
    error = raised_by(
        lambda: dest.write_batch(SOURCE_TABLE, [upsert(2, {"name": "b", "qty": 2}, 2)])
    )
    assert isinstance(error, psycopg2.errors.UndefinedColumn)
    assert verdict(dest, error) == (TABLE, "42703")
    # the next write reads the catalog again: the engine's own check names the column
    error = raised_by(
        lambda: dest.write_batch(SOURCE_TABLE, [upsert(2, {"name": "b", "qty": 2}, 2)])
    )
    assert isinstance(error, TableLevelDestinationError) and "qty" in str(error)
    assert verdict(dest, error) == (TABLE, None)


def test_revoked_privilege_42501_and_missing_schema_3F000_are_table_level(
    pg_conn: Any, pg_schema: str, postgres_dsn: str
) -> None:
    role = f"{pg_schema}_writer"
    with pg_conn.cursor() as cur:
        cur.execute(sql.SQL("CREATE ROLE {} LOGIN").format(sql.Identifier(role)))
        cur.execute(
            sql.SQL("CREATE TABLE {}.locked (id int PRIMARY KEY, name text)").format(
                sql.Identifier(pg_schema)
            )
        )
        cur.execute(
            sql.SQL("GRANT USAGE ON SCHEMA {} TO {}").format(
                sql.Identifier(pg_schema), sql.Identifier(role)
            )
        )
    dsn = f"{postgres_dsn} user={role}"
    dest = PostgreSQLDestination(
        "7", "PG", dsn, table_map={SOURCE_TABLE: (pg_schema, "locked"), "a.b": ("nowhere", "t")}
    )
    try:
        error = raised_by(lambda: dest.write_batch(SOURCE_TABLE, [upsert(1, {"name": "a"}, 1)]))
        assert isinstance(error, psycopg2.errors.InsufficientPrivilege)
        assert verdict(dest, error) == (TABLE, "42501")
        error = raised_by(lambda: dest.write_batch("a.b", [upsert(1, {"name": "a"}, 1)]))
        # a target in a schema that does not exist: the catalog lookup says 42P01
        assert verdict(dest, error) == (TABLE, "42P01")
        with pg_conn.cursor() as cur:  # where the server says 3F000 (invalid schema name)
            error = raised_by(lambda: cur.execute("CREATE TABLE nowhere.t (id int)"))
        assert verdict(dest, error) == (TABLE, "3F000")
    finally:
        dest.close()
        with pg_conn.cursor() as cur:
            cur.execute(sql.SQL("DROP OWNED BY {}").format(sql.Identifier(role)))
            cur.execute(sql.SQL("DROP ROLE {}").format(sql.Identifier(role)))


def test_syntax_error_and_own_row_errors_stay_row_level(
    dest: PostgreSQLDestination, pg_conn: Any
) -> None:
    with pg_conn.cursor() as cur:
        error = raised_by(lambda: cur.execute("SELEC 1"))
    assert verdict(dest, error) == (PERMANENT, "42601")
    error = raised_by(
        lambda: dest.write_batch(SOURCE_TABLE, [upsert(1, {"name": "a", "code": "ABCD"}, 1)])
    )
    assert verdict(dest, error) == (PERMANENT, "22001")


def test_refused_login_is_transient_not_charged_and_says_so(
    postgres_server_factory: Callable[..., PostgresServer],
) -> None:
    server = postgres_server_factory()
    admin = psycopg2.connect(server.dsn)
    admin.autocommit = True
    with admin.cursor() as cur:
        cur.execute("CREATE ROLE scram_writer LOGIN PASSWORD 'right'")
    hba = server.data_dir / "pg_hba.conf"
    hba.write_text("host all scram_writer 127.0.0.1/32 scram-sha-256\n" + hba.read_text())
    with admin.cursor() as cur:
        cur.execute("SELECT pg_reload_conf()")
    dsn = f"host=127.0.0.1 port={server.port} dbname=postgres user=scram_writer password=wrong"
    dest = PostgreSQLDestination("7", "PG", dsn)
    try:
        error = raised_by(lambda: dest.write_batch(SOURCE_TABLE, [upsert(1, {"name": "a"}, 1)]))
        classified = dest.classify_error(error)
        assert "password authentication failed" in str(error)
        assert classified.kind is TRANSIENT
        assert classified.authentication and classified.connection_lost
        assert "wrong" not in classified.message
        assert not dest.test_connection(2.0)
        assert "password authentication failed" in (dest.last_health_error or "")
    finally:
        dest.close()
        admin.close()


# ---------------------------------------------------------------- transient: 40, 53, 57, 08


def test_serialization_failure_40001_is_transient(
    dest: PostgreSQLDestination, postgres_dsn: str, pg_conn: Any, pg_schema: str
) -> None:
    table = sql.SQL("{}.items").format(sql.Identifier(pg_schema))
    with pg_conn.cursor() as cur:
        cur.execute(sql.SQL("INSERT INTO {} (id, name) VALUES (1, 'a')").format(table))
    first = psycopg2.connect(postgres_dsn)
    first.set_session(isolation_level="REPEATABLE READ")
    try:
        with first.cursor() as cur:
            cur.execute(sql.SQL("SELECT name FROM {} WHERE id = 1").format(table))
            with pg_conn.cursor() as other:  # a concurrent committed update
                other.execute(sql.SQL("UPDATE {} SET name = 'b' WHERE id = 1").format(table))
            error = raised_by(
                lambda: cur.execute(sql.SQL("UPDATE {} SET name = 'c' WHERE id = 1").format(table))
            )
    finally:
        first.close()
    assert isinstance(error, psycopg2.errors.SerializationFailure)
    assert verdict(dest, error) == (TRANSIENT, "40001")


@pytest.mark.timeout(60)
def test_deadlock_40P01_is_transient(
    dest: PostgreSQLDestination, postgres_dsn: str, pg_conn: Any, pg_schema: str
) -> None:
    table = sql.SQL("{}.items").format(sql.Identifier(pg_schema))
    with pg_conn.cursor() as cur:
        cur.execute(sql.SQL("INSERT INTO {} (id, name) VALUES (1, 'a'), (2, 'b')").format(table))
    left, right = psycopg2.connect(postgres_dsn), psycopg2.connect(postgres_dsn)
    errors: list[BaseException] = []

    both_hold_their_first_row = threading.Barrier(2, timeout=30)

    def lock_then_wait(conn: Any, first: int, second: int) -> None:
        try:
            with conn.cursor() as cur:
                cur.execute("SET deadlock_timeout = '100ms'")
                cur.execute(sql.SQL("UPDATE {} SET qty = 1 WHERE id = %s").format(table), (first,))
                both_hold_their_first_row.wait()
                cur.execute(sql.SQL("UPDATE {} SET qty = 2 WHERE id = %s").format(table), (second,))
        except psycopg2.Error as exc:
            errors.append(exc)
        finally:
            conn.rollback()

    threads = [
        threading.Thread(target=lock_then_wait, args=(left, 1, 2)),
        threading.Thread(target=lock_then_wait, args=(right, 2, 1)),
    ]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(30)
    left.close()
    right.close()
    assert len(errors) == 1 and isinstance(errors[0], psycopg2.errors.DeadlockDetected)
    assert verdict(dest, errors[0]) == (TRANSIENT, "40P01")


def wait_until_sleeping(conn: Any, pid: int) -> None:
    """Wait until backend ``pid`` is running its ``pg_sleep`` (so a cancel hits the statement)."""

    def sleeping() -> bool:
        with conn.cursor() as cur:
            cur.execute(
                "SELECT 1 FROM pg_stat_activity WHERE pid = %s AND state = 'active' "
                "AND query LIKE 'SELECT pg_sleep%%'",
                (pid,),
            )
            return cur.fetchone() is not None

    wait_until(sleeping, 20, f"backend {pid} to run its pg_sleep")


@pytest.mark.timeout(60)
def test_query_canceled_57014_is_transient(
    dest: PostgreSQLDestination, postgres_dsn: str, pg_conn: Any
) -> None:
    victim = psycopg2.connect(postgres_dsn)
    pid = victim.get_backend_pid()

    def cancel_soon() -> None:
        wait_until_sleeping(pg_conn, pid)
        with pg_conn.cursor() as cur:
            cur.execute("SELECT pg_cancel_backend(%s)", (pid,))

    canceller = threading.Thread(target=cancel_soon)
    canceller.start()
    with victim.cursor() as cur:
        error = raised_by(lambda: cur.execute("SELECT pg_sleep(10)"))
    canceller.join()
    victim.close()
    assert isinstance(error, psycopg2.errors.QueryCanceled)
    assert verdict(dest, error) == (TRANSIENT, "57014")


@pytest.mark.timeout(60)
def test_terminated_backend_57P01_is_transient(
    dest: PostgreSQLDestination, postgres_dsn: str, pg_conn: Any
) -> None:
    victim = psycopg2.connect(postgres_dsn)
    pid = victim.get_backend_pid()

    def terminate_soon() -> None:
        wait_until_sleeping(pg_conn, pid)
        with pg_conn.cursor() as cur:
            cur.execute("SELECT pg_terminate_backend(%s)", (pid,))

    killer = threading.Thread(target=terminate_soon)
    killer.start()
    with victim.cursor() as cur:
        error = raised_by(lambda: cur.execute("SELECT pg_sleep(10)"))
    killer.join()
    victim.close()
    # The server sends 57P01, but libpq surfaces the closed socket instead.
    assert isinstance(error, psycopg2.OperationalError)
    assert verdict(dest, error)[0] is TRANSIENT


@pytest.fixture(scope="module")
def tiny_server(postgres_cluster: Any) -> PostgresServer:
    """A server with very few connections and a tiny lock table."""
    return postgres_cluster.new_server(  # type: ignore[no-any-return]
        {
            "max_connections": "4",
            "superuser_reserved_connections": "0",
            "reserved_connections": "0",
            "max_locks_per_transaction": "10",
            "max_wal_senders": "0",
            "max_worker_processes": "1",
            "autovacuum_max_workers": "1",
        }
    )


def test_out_of_shared_memory_53200_is_transient(
    dest: PostgreSQLDestination, tiny_server: PostgresServer
) -> None:
    conn = psycopg2.connect(tiny_server.dsn)
    try:
        with conn.cursor() as cur:
            # every new table holds a lock until commit: exhaust the lock table
            error = raised_by(
                lambda: cur.execute(
                    "DO $$ BEGIN FOR i IN 1..5000 LOOP "
                    "EXECUTE format('CREATE TEMP TABLE lock_hog_%s (a int)', i); "
                    "END LOOP; END $$"
                )
            )
    finally:
        conn.close()
    assert isinstance(error, psycopg2.errors.OutOfMemory)
    assert verdict(dest, error) == (TRANSIENT, "53200")


def test_too_many_connections_53300_is_transient(
    dest: PostgreSQLDestination, tiny_server: PostgresServer
) -> None:
    held = []
    try:
        with pytest.raises(psycopg2.OperationalError, match="too many clients") as caught:
            for _ in range(10):
                held.append(psycopg2.connect(tiny_server.dsn))
    finally:
        for conn in held:
            conn.close()
    # Refused at login: FATAL 53300 arrives as a connection failure without pgcode.
    assert verdict(dest, caught.value)[0] is TRANSIENT


def test_connection_refused_08_is_transient() -> None:
    dest = PostgreSQLDestination("8", "PG-Closed", f"host=127.0.0.1 port={free_port()} user=x")
    error = raised_by(lambda: dest.write_batch(SOURCE_TABLE, [upsert(1, {"name": "a"}, 1)]))
    assert isinstance(error, psycopg2.OperationalError)
    assert "refused" in str(error)
    assert verdict(dest, error) == (TRANSIENT, None)


def test_unknown_errors_are_transient(dest: PostgreSQLDestination) -> None:
    assert verdict(dest, RuntimeError("something odd")) == (TRANSIENT, None)
    assert verdict(dest, TimeoutError("slow")) == (TRANSIENT, None)


def test_lost_sessions_are_told_apart_from_failed_statements(postgres_dsn: str) -> None:
    """A killed backend or a cut socket is a lost session; a bad value or a timeout is not."""
    import psycopg2 as pg

    from destinations.errors import DestinationTimeoutError
    from destinations.postgresql.destination import PostgreSQLDestination

    destination = PostgreSQLDestination("1", "PG", postgres_dsn)
    victim = pg.connect(postgres_dsn)
    admin = pg.connect(postgres_dsn)
    admin.autocommit = True
    with admin.cursor() as cur:
        cur.execute("SELECT pg_terminate_backend(%s)", (victim.get_backend_pid(),))
    with pytest.raises(pg.Error) as killed:
        victim.cursor().execute("SELECT 1")
    classified = destination.classify_error(killed.value)
    assert classified.is_transient and classified.connection_lost, classified
    with pytest.raises(pg.Error) as refused:
        pg.connect("host=127.0.0.1 port=1 connect_timeout=2")
    assert destination.classify_error(refused.value).connection_lost
    with pytest.raises(pg.Error) as bad_value, admin.cursor() as cur:
        cur.execute("SELECT 'x'::int")
    assert not destination.classify_error(bad_value.value).connection_lost
    timeout = DestinationTimeoutError("no answer within write_timeout=2s")
    assert destination.classify_error(timeout).is_transient
    assert not destination.classify_error(timeout).connection_lost
    admin.close()
    victim.close()
    destination.close()


@pytest.mark.parametrize("bad", [0, -1, "5", True])
def test_bad_write_timeout_is_a_config_error_naming_the_option(bad: object) -> None:
    from config.errors import ConfigError
    from destinations.postgresql.destination import PostgreSQLDestination

    with pytest.raises(ConfigError, match=r"destination 7: write_timeout must be a positive"):
        PostgreSQLDestination("7", "PG", "host=127.0.0.1", write_timeout=bad)  # type: ignore[arg-type]
