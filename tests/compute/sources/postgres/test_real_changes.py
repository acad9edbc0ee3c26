"""Real pgoutput bytes for changes beyond inserts: TOAST left unchanged, key changes, deletes,
truncates, replica identity full and a column added mid-stream."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import psycopg2
import pytest
from psycopg2 import sql

from compute.sources.postgres.pgoutput import (
    UNCHANGED,
    Begin,
    Delete,
    Insert,
    Relation,
    RelationCache,
    Truncate,
    Update,
)
from destinations.postgresql.destination import PostgreSQLDestination
from destinations.records import Operation
from tests.compute.sources.postgres.replication import (
    LOGICAL_SETTINGS,
    change_records,
    create_slot,
    parse_all,
    read_slot,
)
from tests.servers import PostgresServer

# Stored out of line without compression: over 2 KB, so PostgreSQL TOASTs it.
BIG = "".join(f"{n:05d}" for n in range(1000))


@pytest.fixture
def source(postgres_server_factory: Callable[..., PostgresServer]) -> Any:
    server = postgres_server_factory(LOGICAL_SETTINGS)
    conn = psycopg2.connect(server.dsn)
    conn.autocommit = True
    with conn.cursor() as cur:
        cur.execute("CREATE TABLE docs (id int PRIMARY KEY, n int, big text)")
        cur.execute("ALTER TABLE docs ALTER big SET STORAGE EXTERNAL")
        cur.execute("CREATE TABLE full_rows (a int, b text)")
        cur.execute("ALTER TABLE full_rows REPLICA IDENTITY FULL")
    create_slot(conn, "s1", "p1")
    yield server, conn
    conn.close()


def test_toast_key_change_delete_truncate_and_a_column_added_mid_stream(source: Any) -> None:
    server, conn = source
    statements = [
        ("INSERT INTO docs VALUES (1, 1, %s)", (BIG,)),
        ("UPDATE docs SET n = 2 WHERE id = 1", None),  # big not touched: sent as 'u'
        ("UPDATE docs SET id = 10 WHERE id = 1", None),  # key change: old key 'K'
        ("DELETE FROM docs WHERE id = 10", None),
        ("INSERT INTO full_rows VALUES (1, 'x')", None),
        ("UPDATE full_rows SET b = 'y'", None),  # identity full: old row 'O'
        ("DELETE FROM full_rows", None),
        ("TRUNCATE docs, full_rows RESTART IDENTITY", None),
        ("ALTER TABLE docs ADD COLUMN note text DEFAULT 'n/a'", None),
        ("INSERT INTO docs (id, n, big, note) VALUES (2, 5, 'small', 'hello')", None),
    ]
    with conn.cursor() as cur:
        for statement, args in statements:
            cur.execute(statement, args)
    messages = parse_all(read_slot(server.dsn, "s1", "p1", commits=9))
    changes = [m for m in messages if isinstance(m, Insert | Update | Delete | Truncate)]
    relations = [m for m in messages if isinstance(m, Relation)]
    docs_id = next(r.relation_id for r in relations if r.name == "docs")
    full_id = next(r.relation_id for r in relations if r.name == "full_rows")

    assert changes[0] == Insert(docs_id, ("1", "1", BIG))
    assert changes[1] == Update(docs_id, None, None, ("1", "2", UNCHANGED))
    assert changes[2] == Update(docs_id, "K", ("1", None, None), ("10", "2", UNCHANGED))
    assert changes[3] == Delete(docs_id, "K", ("10", None, None))
    assert changes[4] == Insert(full_id, ("1", "x"))
    assert changes[5] == Update(full_id, "O", ("1", "x"), ("1", "y"))
    assert changes[6] == Delete(full_id, "O", ("1", "y"))
    truncate = changes[7]
    assert isinstance(truncate, Truncate)
    assert sorted(truncate.relation_ids) == sorted([docs_id, full_id])
    assert (truncate.cascade, truncate.restart_identity) == (False, True)
    assert changes[8] == Insert(docs_id, ("2", "5", "small", "hello"))

    cache = RelationCache()
    shapes = []
    for message in messages:
        if isinstance(message, Relation) and message.relation_id == docs_id:
            shapes.append(cache.update(message))
    assert shapes[0] is True and shapes[-1] is True  # the added column is a new shape
    assert [c.name for c in cache.get(docs_id).columns] == ["id", "n", "big", "note"]
    row = cache.decoder(docs_id).decode(changes[8].new)  # type: ignore[union-attr]
    assert row.values == {"id": 2, "n": 5, "big": "small", "note": "hello"}

    records = change_records(messages)
    docs = [r for r in records if r.table == "public.docs"]
    toast_update = docs[1]
    assert toast_update.op is Operation.UPDATE
    assert toast_update.after == {"id": 1, "n": 2}  # big left out, not None
    assert "big" not in toast_update.after
    decoder = first_shape_decoder(messages, docs_id)
    assert decoder.decode(changes[1].new).unchanged == ("big",)  # type: ignore[union-attr]
    assert decoder.key(changes[2].old) == {"id": 1}  # type: ignore[union-attr]
    # Positions: the commit LSN of each transaction, then the order inside it.
    begins = [m.final_lsn for m in messages if isinstance(m, Begin)]
    assert [r.position.commit for r in docs] == [
        begins[0],
        begins[1],
        begins[2],
        begins[3],
        begins[8],
    ]
    assert all(r.position.seq == 1 for r in docs)


def first_shape_decoder(messages: list[Any], relation_id: int) -> Any:
    """The decoder of the relation's first shape."""
    cache = RelationCache()
    cache.update(
        next(m for m in messages if isinstance(m, Relation) and m.relation_id == relation_id)
    )
    return cache.decoder(relation_id)


def test_an_unchanged_toast_column_keeps_its_value_at_the_destination(
    source: Any, pg_conn: Any, pg_schema: str, postgres_dsn: str
) -> None:
    server, conn = source
    with conn.cursor() as cur:
        cur.execute("INSERT INTO docs VALUES (1, 1, %s)", (BIG,))
        cur.execute("UPDATE docs SET n = 2 WHERE id = 1")
    records = change_records(parse_all(read_slot(server.dsn, "s1", "p1", commits=2)))
    target = sql.Identifier(pg_schema, "docs")
    with pg_conn.cursor() as cur:
        cur.execute(sql.SQL("CREATE TABLE {} (id int PRIMARY KEY, n int, big text)").format(target))
    destination = PostgreSQLDestination(
        "d1", "pg", postgres_dsn, table_map={"public.docs": f"{pg_schema}.docs"}
    )
    try:
        destination.write_batch("public.docs", records[:1])
        destination.write_batch("public.docs", records[1:])  # the partial update alone
    finally:
        destination.close()
    with pg_conn.cursor() as cur:
        cur.execute(sql.SQL("SELECT id, n, big FROM {}").format(target))
        assert cur.fetchall() == [(1, 2, BIG)]
