"""A reconnect never lets psycopg2 confirm transactions the pipeline has not acknowledged."""

from __future__ import annotations

import time

from compute.sources.postgres_source import PostgresSource
from tests.compute.sources.postgres.pg_source_helpers import execute, logical_server, query
from tests.waiting import wait_until

ITEMS = "CREATE TABLE public.items (id int PRIMARY KEY, name text)"


def _confirmed_flush(dsn: str) -> int:
    [(lsn,)] = query(
        dsn,
        "SELECT confirmed_flush_lsn - '0/0' FROM pg_replication_slots WHERE slot_name = %s",
        ("rosetta_1",),
    )
    return int(lsn)


def test_a_reconnect_with_unacknowledged_transactions_confirms_none_of_them(
    postgres_server_factory,
) -> None:
    """Three transactions are received but never acknowledged, then the walsender is killed.

    psycopg2 moves its own flush position to a keepalive's ``wal_end`` while no
    data message has come on a connection, and sends it whenever the server asks
    for a reply (every ``wal_sender_timeout`` / 2 = 1 s here, as the source's own
    status interval is 30 s). Were the stream resumed after the transactions it
    holds, the slot would move past them: a crash then would lose them.
    """
    server = logical_server(postgres_server_factory, wal_sender_timeout="2s")
    execute(server.dsn, ITEMS)
    source = PostgresSource("1", server.dsn, snapshot="never", status_interval=30)
    try:
        wait_until(source.stream.connected.is_set, 10, "the stream is connected")
        before = _confirmed_flush(server.dsn)
        for i in range(3):
            execute(server.dsn, f"INSERT INTO items VALUES ({i}, 'x')")
        wait_until(lambda: source.stream.buffered >= 3, 10, "three changes received")
        execute(server.dsn, "SELECT pg_terminate_backend(pid) FROM pg_stat_replication")
        wait_until(lambda: source.stream.reconnects >= 1, 10, "the stream reconnected")
        wait_until(source.stream.connected.is_set, 10, "the stream is connected again")
        time.sleep(4)  # several reply-requested keepalives on the new connection
        assert _confirmed_flush(server.dsn) == before
        records = []
        deadline = time.monotonic() + 10
        while len(records) < 3 and time.monotonic() < deadline:
            records += source.read(10).records  # read, never acknowledged
        assert [r.key["id"] for r in records] == [0, 1, 2]  # each once, in order
    finally:
        source.close()
    again = PostgresSource("1", server.dsn, snapshot="never", status_interval=30)
    try:
        records = []
        deadline = time.monotonic() + 10
        while len(records) < 3 and time.monotonic() < deadline:
            records += again.read(10).records
        assert [r.key["id"] for r in records] == [0, 1, 2]
    finally:
        again.close()
