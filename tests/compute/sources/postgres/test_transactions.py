"""Decoded pgoutput messages into whole transactions of positioned change records."""

from __future__ import annotations

from decimal import Decimal

import pytest

from compute.sources.postgres.pgoutput import (
    UNCHANGED,
    Begin,
    Column,
    Commit,
    Delete,
    Insert,
    Relation,
    Truncate,
    Update,
)
from compute.sources.postgres.transactions import TransactionAssembler, TransactionError
from destinations.records import Operation, SourcePosition

INT4, TEXT, NUMERIC, DATE = 23, 25, 1700, 1082
ITEMS = Relation(
    16400,
    "public",
    "items",
    "d",
    (
        Column("id", INT4, -1, True),
        Column("name", TEXT, -1, False),
        Column("n", NUMERIC, -1, False),
    ),
)
OTHER = Relation(16401, "public", "other", "d", (Column("id", INT4, -1, True),))
COMMIT_LSN, END_LSN = 0x1_0000_0100, 0x1_0000_0180


def transaction(assembler: TransactionAssembler, *changes: object):
    assembler.feed(Begin(COMMIT_LSN, 0, 7))
    for change in changes:
        assert assembler.feed(change) is None  # type: ignore[arg-type]
    done = assembler.feed(Commit(0, COMMIT_LSN, END_LSN, 0))
    assert done is not None and done.end_lsn == END_LSN and done.commit_lsn == COMMIT_LSN
    return done.records


def test_changes_get_typed_values_and_positions_at_the_commit_lsn() -> None:
    assembler = TransactionAssembler()
    assembler.feed(ITEMS)
    records = transaction(
        assembler,
        Insert(16400, ("1", "a", "1.50")),
        Delete(16400, "K", ("2", None, None)),
    )
    assert [(r.op, r.key, r.after, r.position) for r in records] == [
        (
            Operation.INSERT,
            {"id": 1},
            {"id": 1, "name": "a", "n": Decimal("1.50")},
            SourcePosition(COMMIT_LSN, 0),
        ),
        (Operation.DELETE, {"id": 2}, None, SourcePosition(COMMIT_LSN, 1)),
    ]
    assert records[0].table == "public.items"


def test_an_unchanged_toast_column_is_left_out_never_null() -> None:
    assembler = TransactionAssembler()
    assembler.feed(ITEMS)
    [record] = transaction(assembler, Update(16400, None, None, ("1", UNCHANGED, None)))
    assert record.after == {"id": 1, "n": None}
    assert "name" not in record.after


def test_a_key_change_is_a_delete_of_the_old_key_then_an_upsert_of_the_new() -> None:
    assembler = TransactionAssembler()
    assembler.feed(ITEMS)
    records = transaction(assembler, Update(16400, "K", ("1", None, None), ("9", "a", "2")))
    assert [(r.op, r.key, r.position.seq) for r in records] == [
        (Operation.DELETE, {"id": 1}, 0),
        (Operation.UPDATE, {"id": 9}, 1),
    ]
    assert records[1].after == {"id": 9, "name": "a", "n": Decimal(2)}


def test_a_column_added_mid_stream_shapes_the_next_changes() -> None:
    assembler = TransactionAssembler()
    assembler.feed(ITEMS)
    transaction(assembler, Insert(16400, ("1", "a", "1")))
    wider = ITEMS._replace(columns=(*ITEMS.columns, Column("born", DATE, -1, False)))
    assembler.feed(wider)
    [record] = transaction(assembler, Insert(16400, ("2", "b", "1", "2024-02-29")))
    assert str(record.after["born"]) == "2024-02-29"


def test_tables_keeps_only_the_listed_ones() -> None:
    assembler = TransactionAssembler(tables=["public.items"])
    assembler.feed(ITEMS)
    assembler.feed(OTHER)
    records = transaction(assembler, Insert(16401, ("5",)), Insert(16400, ("1", "a", "1")))
    assert [r.table for r in records] == ["public.items"]


def test_a_truncate_is_one_record_per_listed_table_in_order() -> None:
    assembler = TransactionAssembler(tables=["public.items"])
    assembler.feed(ITEMS)
    assembler.feed(OTHER)
    records = transaction(
        assembler,
        Insert(16400, ("1", "a", "1")),
        Truncate((16400, 16401), False, False),
        Insert(16400, ("2", "b", "1")),
    )
    assert [(r.op, r.key, r.position.seq) for r in records] == [
        (Operation.INSERT, {"id": 1}, 0),
        (Operation.TRUNCATE, {}, 1),
        (Operation.INSERT, {"id": 2}, 2),
    ]


def test_a_change_outside_a_transaction_is_refused() -> None:
    assembler = TransactionAssembler()
    assembler.feed(ITEMS)
    with pytest.raises(TransactionError, match="TRUNCATE outside a transaction"):
        assembler.feed(Truncate((16400,), False, False))


def test_unchanged_columns_are_named_and_a_key_change_with_them_is_one_move() -> None:
    assembler = TransactionAssembler()
    assembler.feed(ITEMS)
    [kept, moved] = transaction(
        assembler,
        Update(16400, None, None, ("1", UNCHANGED, "2")),
        Update(16400, "K", ("1", None, None), ("9", UNCHANGED, "3")),
    )
    assert kept.unchanged == ("name",) and kept.moved_from is None
    assert (moved.op, moved.key, moved.after, moved.unchanged) == (
        Operation.UPDATE,
        {"id": 9},
        {"id": 9, "n": Decimal(3)},
        ("name",),
    )
    assert moved.moved_from == {"id": 1}


def test_append_only_tables_changes_carry_no_key() -> None:
    assembler = TransactionAssembler(append_only=["items"])
    assembler.feed(ITEMS)
    [record] = transaction(assembler, Insert(16400, ("1", "a", "1")))
    assert record.key == {} and record.after == {"id": 1, "name": "a", "n": Decimal(1)}


def test_a_value_that_cannot_be_exact_rejects_its_change_only() -> None:
    dated = Relation(
        16402, "public", "d", "d", (Column("id", INT4, -1, True), Column("day", DATE, -1, False))
    )
    assembler = TransactionAssembler()
    assembler.feed(dated)
    records = transaction(
        assembler, Insert(16402, ("1", "infinity")), Insert(16402, ("2", "2024-01-01"))
    )
    assert [(r.key, r.position.seq) for r in records] == [({"id": 2}, 1)]
    assert assembler.rejected_count == 1
    assert "public.d.day" in assembler.rejected[0].reason
