"""Test helpers: a logical-replication source server and the raw pgoutput bytes of its slot."""

from __future__ import annotations

import select
import time
from collections.abc import Callable, Sequence
from typing import Any

import psycopg2
import psycopg2.extras

from compute.sources.postgres.pg_types import session_options
from compute.sources.postgres.pgoutput import (
    Begin,
    Commit,
    Delete,
    Insert,
    Message,
    Relation,
    RelationCache,
    Update,
    parse_message,
)
from destinations.records import ChangeRecord, Operation, SourcePosition

LOGICAL_SETTINGS = {"wal_level": "logical", "max_wal_senders": "4", "max_replication_slots": "4"}


def create_slot(conn: Any, slot: str, publication: str, tables: str = "ALL TABLES") -> None:
    with conn.cursor() as cur:
        cur.execute(f"CREATE PUBLICATION {publication} FOR {tables}")
        cur.execute("SELECT pg_create_logical_replication_slot(%s, 'pgoutput')", (slot,))


def read_slot(
    dsn: str,
    slot: str,
    publication: str,
    commits: int,
    *,
    time_zone: str | None = "UTC",
    session: bool = True,
    timeout: float = 30.0,
) -> list[bytes]:
    """The raw pgoutput messages of the slot's first ``commits`` transactions (not confirmed).

    ``time_zone`` None keeps the server's own TimeZone.
    """
    conn = psycopg2.connect(
        dsn,
        connection_factory=psycopg2.extras.LogicalReplicationConnection,
        options=" ".join(
            ([session_options()] if session else [])
            + ([f"-c TimeZone={time_zone}"] if time_zone else [])
        ),
    )
    payloads: list[bytes] = []
    try:
        cur = conn.cursor()
        cur.start_replication(
            slot_name=slot,
            decode=False,
            options={"proto_version": "1", "publication_names": publication, "messages": "true"},
        )
        seen = 0
        deadline = time.monotonic() + timeout
        while seen < commits:
            message = cur.read_message()
            if message is None:
                if time.monotonic() > deadline:
                    raise AssertionError(f"only {seen} of {commits} transactions in {timeout}s")
                select.select([cur], [], [], 0.5)
                continue
            payloads.append(bytes(message.payload))
            seen += message.payload[:1] == b"C"
    finally:
        conn.close()
    return payloads


def change_records(
    messages: Sequence[Message], on_error: Callable[[Exception], None] | None = None
) -> list[ChangeRecord]:
    """What a source makes of the messages: inserts, updates and deletes at (commit, seq).

    A value that cannot be decoded goes to ``on_error`` (the change is left
    out) when given, and raises otherwise.
    """
    cache = RelationCache()
    records: list[ChangeRecord] = []
    commit = seq = 0
    commit_ts = 0.0
    for message in messages:
        if isinstance(message, Begin):
            commit, seq, commit_ts = message.final_lsn, 0, message.commit_ts
        elif isinstance(message, Relation):
            cache.update(message)
        elif isinstance(message, Insert | Update | Delete):
            seq += 1
            decoder = cache.decoder(message.relation_id)
            position = SourcePosition(commit, seq)
            try:
                if isinstance(message, Delete):
                    key = decoder.key(message.old)
                    op, after = Operation.DELETE, None
                else:
                    row = decoder.decode(message.new)
                    key = decoder.key(message.new)
                    op = Operation.INSERT if isinstance(message, Insert) else Operation.UPDATE
                    after = row.values
            except ValueError as error:
                if on_error is None:
                    raise
                on_error(error)
                continue
            records.append(
                ChangeRecord(decoder.table, op, key, after, position, commit_ts=commit_ts)
            )
        elif isinstance(message, Commit):
            assert message.commit_lsn == commit
    return records


def parse_all(payloads: Sequence[bytes]) -> list[Message]:
    return [parse_message(payload) for payload in payloads]
