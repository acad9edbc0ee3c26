"""pgoutput messages built byte by byte from the protocol's documented layouts, parsed back."""

from __future__ import annotations

import struct
from datetime import UTC, datetime

import pytest

from compute.sources.postgres.pgoutput import (
    UNCHANGED,
    Begin,
    Column,
    Commit,
    Delete,
    Insert,
    LogicalMessage,
    Origin,
    PgOutputError,
    Relation,
    RelationCache,
    Truncate,
    Type,
    UnknownRelation,
    Update,
    parse_message,
)


def cstr(text: str) -> bytes:
    return text.encode() + b"\0"


def tuple_data(*values: str | None | object) -> bytes:
    out = struct.pack(">h", len(values))
    for value in values:
        if value is None:
            out += b"n"
        elif value is UNCHANGED:
            out += b"u"
        else:
            raw = str(value).encode()
            out += b"t" + struct.pack(">i", len(raw)) + raw
    return out


def relation_bytes(relation_id: int, columns: list[tuple[int, str, int, int]]) -> bytes:
    out = b"R" + struct.pack(">I", relation_id) + cstr("public") + cstr("users") + b"d"
    out += struct.pack(">h", len(columns))
    for flags, name, oid, typmod in columns:
        out += struct.pack(">b", flags) + cstr(name) + struct.pack(">Ii", oid, typmod)
    return out


def test_begin_and_commit_carry_lsns_times_and_xid() -> None:
    micros = 849_499_481_137_249
    begin = parse_message(b"B" + struct.pack(">QqI", 0x1_0000_0010, micros, 4_000_000_000))
    assert begin == Begin(0x1_0000_0010, micros, 4_000_000_000)
    assert begin.commit_time == datetime(2026, 12, 2, 4, 4, 41, 137249, tzinfo=UTC)
    assert begin.commit_ts == pytest.approx(begin.commit_time.timestamp())
    commit = parse_message(b"C" + struct.pack(">BQQq", 0, 100, 148, micros))
    assert commit == Commit(0, 100, 148, micros)


def test_relation_columns_with_key_flags_type_oids_and_modifiers() -> None:
    data = relation_bytes(16384, [(1, "id", 23, -1), (0, "price", 1700, 786438), (0, "é", 25, -1)])
    relation = parse_message(data)
    assert relation == Relation(
        16384,
        "public",
        "users",
        "d",
        (
            Column("id", 23, -1, True),
            Column("price", 1700, 786438, False),
            Column("é", 25, -1, False),
        ),
    )
    assert isinstance(relation, Relation)
    assert relation.qualified_name == "public.users"
    assert relation.key_columns == ("id",)


def test_a_pg_catalog_relation_has_an_empty_namespace() -> None:
    data = b"R" + struct.pack(">I", 1) + cstr("") + cstr("t") + b"f" + struct.pack(">h", 0)
    relation = parse_message(data)
    assert isinstance(relation, Relation)
    assert relation.qualified_name == "pg_catalog.t"
    assert relation.replica_identity == "f"


def test_type_and_origin() -> None:
    assert parse_message(b"Y" + struct.pack(">I", 70000) + cstr("public") + cstr("mood")) == Type(
        70000, "public", "mood"
    )
    assert parse_message(b"O" + struct.pack(">Q", 77) + cstr("node_a")) == Origin(77, "node_a")


def test_insert_keeps_text_null_and_unchanged_apart() -> None:
    data = b"I" + struct.pack(">I", 5) + b"N" + tuple_data("1", None, UNCHANGED, "", "ä\tb")
    assert parse_message(data) == Insert(5, ("1", None, UNCHANGED, "", "ä\tb"))


def test_update_without_old_values_with_old_key_and_with_old_row() -> None:
    head = b"U" + struct.pack(">I", 5)
    assert parse_message(head + b"N" + tuple_data("1", UNCHANGED)) == Update(
        5, None, None, ("1", UNCHANGED)
    )
    assert parse_message(head + b"K" + tuple_data("1", None) + b"N" + tuple_data("2", "x")) == (
        Update(5, "K", ("1", None), ("2", "x"))
    )
    assert parse_message(head + b"O" + tuple_data("1", "a") + b"N" + tuple_data("1", "b")) == (
        Update(5, "O", ("1", "a"), ("1", "b"))
    )


def test_delete_with_old_key_or_old_row() -> None:
    head = b"D" + struct.pack(">I", 5)
    assert parse_message(head + b"K" + tuple_data("1", None)) == Delete(5, "K", ("1", None))
    assert parse_message(head + b"O" + tuple_data("1", "a")) == Delete(5, "O", ("1", "a"))


def test_truncate_with_its_options() -> None:
    data = b"T" + struct.pack(">ib", 2, 3) + struct.pack(">II", 10, 3_000_000_000)
    assert parse_message(data) == Truncate((10, 3_000_000_000), True, True)
    data = b"T" + struct.pack(">ib", 1, 0) + struct.pack(">I", 10)
    assert parse_message(data) == Truncate((10,), False, False)


def test_logical_message() -> None:
    data = b"M" + struct.pack(">BQ", 1, 99) + cstr("app") + struct.pack(">i", 3) + b"\x00\x01\x02"
    assert parse_message(data) == LogicalMessage(True, 99, "app", b"\x00\x01\x02")


@pytest.mark.parametrize(
    ("data", "says"),
    [
        (b"", "empty message"),
        (b"S" + struct.pack(">I", 1), "unknown pgoutput message type 'S'"),
        (b"B" + struct.pack(">Q", 1), "malformed 'B' message"),
        (b"I" + struct.pack(">I", 5) + b"X", "expected 'N'"),
        (b"I" + struct.pack(">I", 5) + b"N" + struct.pack(">h", 1) + b"x", "unknown column value"),
        (b"I" + struct.pack(">I", 5) + b"N" + struct.pack(">h", 1) + b"b", "binary format"),
        (b"I" + struct.pack(">I", 5) + b"N\0\1t" + struct.pack(">i", 9) + b"ab", "past"),
        (b"U" + struct.pack(">I", 5) + b"Z", "expected 'K', 'O' or 'N'"),
        (b"D" + struct.pack(">I", 5) + b"N", "expected 'K' or 'O'"),
        (b"R" + struct.pack(">I", 5) + b"public", "malformed 'R'"),
    ],
)
def test_malformed_messages_are_refused_naming_the_problem(data: bytes, says: str) -> None:
    with pytest.raises(PgOutputError, match=says):
        parse_message(data)


def test_relation_cache_replaces_a_shape_when_a_column_is_added() -> None:
    cache = RelationCache()
    first = parse_message(relation_bytes(7, [(1, "id", 23, -1)]))
    wider = parse_message(relation_bytes(7, [(1, "id", 23, -1), (0, "note", 25, -1)]))
    assert isinstance(first, Relation) and isinstance(wider, Relation)
    assert cache.update(first) is True
    assert cache.update(first) is False  # sent again unchanged (a new connection)
    assert cache.get(7) is first
    assert cache.update(wider) is True
    assert [c.name for c in cache.get(7).columns] == ["id", "note"]
    assert 7 in cache and len(cache) == 1
    with pytest.raises(UnknownRelation, match="relation id 8"):
        cache.get(8)
