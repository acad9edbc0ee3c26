"""The destination contract, writes: what lands, with which values, in which order, how often."""

from __future__ import annotations

import json
import threading
from datetime import UTC, datetime, timedelta, timezone
from decimal import Decimal
from typing import Any

import pytest

from destinations.records import Operation
from tests.builders import SOURCE_TABLE, delete, upsert
from tests.destinations.contract.backends import TYPED, Backend

pytestmark = pytest.mark.filterwarnings("ignore:Arrow output on a DB-API result:UserWarning")

TEXT = "żółw 🐢 tab\t nl\n cr\r back\\slash \\N quote ' dq \" pct %s %(x)s %"
DOC = {"k": ["v\t", 1, None, True], "q": 'it\'s "x"', "u": "żółw 🐢", "n": {"deep": [1.5]}}
VALUES: dict[int, dict[str, Any]] = {
    1: {
        "name": TEXT,
        "qty": 2**63 - 1,
        "amount": Decimal("12345678901234567890123456789.123456789"),  # 38 digits
        "flag": True,
        "ts": datetime(2024, 2, 29, 23, 59, 58, 123456),
        "tstz": datetime(2024, 1, 2, 3, 4, 5, 6, tzinfo=timezone(timedelta(hours=2))),
        "doc": DOC,
    },
    2: dict.fromkeys(("name", "qty", "amount", "flag", "ts", "tstz", "doc")),
    3: {
        "name": "",
        "qty": -(2**63),
        "amount": Decimal("-0.000000001"),
        "flag": False,
        "ts": datetime(1970, 1, 1),  # what fakesnow reads a NULL timestamp back as
        "tstz": datetime(1999, 12, 31, 23, 59, 59, tzinfo=UTC),
        "doc": [],
    },
}


def items(*rows: tuple[int, str | None, int | None]) -> list[dict[str, Any]]:
    return [{"id": i, "name": n, "qty": q} for i, n, q in rows]


def test_inserts_updates_and_deletes_land(backend: Backend) -> None:
    dest = backend.destination()
    batch = [
        upsert(1, {"name": "one", "qty": 1}, 10, op=Operation.INSERT),
        upsert(2, {"name": "two", "qty": 2}, 11, op=Operation.INSERT),
        upsert(3, {"name": "three", "qty": 3}, 12, op=Operation.SNAPSHOT_READ),
    ]
    assert dest.write_batch(SOURCE_TABLE, batch) == 3
    assert backend.rows() == items((1, "one", 1), (2, "two", 2), (3, "three", 3))
    changes = [upsert(2, {"name": "TWO", "qty": 20}, 13), delete(3, 14), delete(9, 15)]
    assert dest.write_batch(SOURCE_TABLE, changes) == 3
    assert backend.rows() == items((1, "one", 1), (2, "TWO", 20))


def test_every_value_type_lands_exactly(backend: Backend) -> None:
    dest = backend.destination(TYPED)
    dest.write_batch(SOURCE_TABLE, [upsert(k, v, k) for k, v in VALUES.items()])
    stored = backend.rows()
    expected = [{"id": k, **v} for k, v in VALUES.items()]
    if backend.expected.json_as_text:  # Snowflake: the JSON text, in a VARCHAR column
        for row in expected:
            row["doc"] = None if row["doc"] is None else json.dumps(row["doc"])
    assert stored == expected
    # Exact, not merely equal after rounding: integers stay int, numerics Decimal.
    assert type(stored[0]["qty"]) is int and type(stored[2]["qty"]) is int
    assert isinstance(stored[0]["amount"], Decimal)
    assert str(stored[0]["amount"]) == "12345678901234567890123456789.123456789"
    assert stored[0]["flag"] is True and stored[2]["flag"] is False
    assert stored[0]["tstz"].utcoffset() is not None  # still an instant, not a wall time


def test_several_changes_to_one_key_leave_their_net_effect(backend: Backend) -> None:
    dest = backend.destination()
    batch = [
        # listed out of order: the source position decides, not the list order
        upsert(1, {"name": "v3", "qty": 3}, 30),
        upsert(1, {"name": "v1", "qty": 1}, 10),
        upsert(1, {"name": "v2", "qty": 2}, 20),
        # inserted, updated, deleted: gone
        upsert(2, {"name": "a", "qty": 1}, 10, op=Operation.INSERT),
        upsert(2, {"name": "b", "qty": 2}, 11),
        delete(2, 12),
        # deleted then re-inserted: present
        delete(3, 10),
        upsert(3, {"name": "back", "qty": 3}, 11, op=Operation.INSERT),
        # equal positions keep their batch order (same transaction, same seq)
        upsert(4, {"name": "first", "qty": 1}, 40, 1),
        upsert(4, {"name": "second", "qty": 2}, 40, 1),
        # a partial update after a full insert keeps the insert's other columns
        upsert(5, {"name": "five", "qty": 5}, 50, op=Operation.INSERT),
        upsert(5, {"qty": 55}, 51),
    ]
    assert dest.write_batch(SOURCE_TABLE, batch) == len(batch)
    assert backend.rows() == items((1, "v3", 3), (3, "back", 3), (4, "second", 2), (5, "five", 55))
    # Batches apply in the order they are written: the later one wins.
    dest.write_batch(SOURCE_TABLE, [upsert(1, {"name": "v4", "qty": 4}, 60), delete(4, 61)])
    dest.write_batch(SOURCE_TABLE, [upsert(1, {"name": "v5", "qty": 5}, 70)])
    assert backend.rows() == items((1, "v5", 5), (3, "back", 3), (5, "five", 55))


def test_replaying_a_batch_leaves_the_same_table(backend: Backend) -> None:
    dest = backend.destination()
    dest.write_batch(
        SOURCE_TABLE,
        [upsert(1, {"name": "old", "qty": 0}, 1), upsert(2, {"name": "gone", "qty": 0}, 2)],
    )
    batch = [
        upsert(1, {"name": "new", "qty": 1}, 20),
        delete(2, 21),
        upsert(3, {"name": "three", "qty": 3}, 22),
        upsert(3, {"name": "three again", "qty": 33}, 23),
    ]
    dest.write_batch(SOURCE_TABLE, batch)
    once = backend.rows()
    assert dest.write_batch(SOURCE_TABLE, batch) == len(batch)
    assert dest.write_batch(SOURCE_TABLE, batch) == len(batch)
    assert backend.rows() == once == items((1, "new", 1), (3, "three again", 33))


def test_partial_rows_leave_missing_columns_alone(backend: Backend) -> None:
    dest = backend.destination()
    dest.write_batch(SOURCE_TABLE, [upsert(1, {"name": "one", "qty": 1}, 1)])
    dest.write_batch(
        SOURCE_TABLE,
        [upsert(1, {"qty": 10}, 2), upsert(2, {"name": "two"}, 3), upsert(3, {"qty": 3}, 4)],
    )
    assert backend.rows() == items((1, "one", 10), (2, "two", None), (3, None, 3))


def test_composite_key(backend: Backend) -> None:
    dest = backend.destination({"o": "int", "n": "int", "v": "text"}, key=("o", "n"))
    dest.write_batch(
        SOURCE_TABLE,
        [
            upsert({"o": 1, "n": 1}, {"v": "a"}, 1),
            upsert({"o": 1, "n": 2}, {"v": "b"}, 2),
            upsert({"o": 2, "n": 1}, {"v": "c"}, 3),
            delete({"o": 1, "n": 2}, 4),
        ],
    )
    dest.write_batch(SOURCE_TABLE, [upsert({"o": 2, "n": 1}, {"v": "C"}, 5)])
    assert backend.rows() == [{"o": 1, "n": 1, "v": "a"}, {"o": 2, "n": 1, "v": "C"}]


def test_an_empty_batch_writes_nothing_and_needs_no_server(backend: Backend) -> None:
    dest = backend.destination()
    with backend.outage():
        assert dest.write_batch(SOURCE_TABLE, []) == 0
        assert dest.write_prepared(dest.prepare_batch(SOURCE_TABLE, [])) == 0
    assert backend.rows() == []


def test_batches_prepared_ahead_write_like_write_batch(backend: Backend) -> None:
    dest = backend.destination()
    first = [upsert(i, {"name": f"n{i}", "qty": i}, 10 + i) for i in range(1, 6)]
    assert dest.write_prepared(dest.prepare_batch(SOURCE_TABLE, first)) == 5
    # As the recovery worker does: batch 3 is prepared before batch 2 is written.
    second = [upsert(2, {"name": "two", "qty": 20}, 30), delete(3, 31), delete(9, 32)]
    third = [
        upsert(2, {"name": "two again", "qty": 22}, 40),
        upsert(7, {"name": "seven", "qty": 7}, 41),
        upsert(1, {"name": "one"}, 42),  # a partial row: qty left alone
    ]
    prepared = [dest.prepare_batch(SOURCE_TABLE, b) for b in (second, third)]
    assert [dest.write_prepared(p) for p in prepared] == [3, 3]
    assert backend.rows() == items(
        (1, "one", 1), (2, "two again", 22), (4, "n4", 4), (5, "n5", 5), (7, "seven", 7)
    )


def test_concurrent_writers_share_a_destination(backend: Backend) -> None:
    dest = backend.destination()
    errors: list[BaseException] = []

    def writer(base: int) -> None:
        try:
            for i in range(3):
                row = {"name": f"w{base}", "qty": i}
                dest.write_batch(SOURCE_TABLE, [upsert(base + i, row, base + i)])
        except BaseException as exc:  # surfaced by the assert below
            errors.append(exc)

    threads = [threading.Thread(target=writer, args=(n * 100,)) for n in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert errors == []
    assert [r["id"] for r in backend.rows()] == [n * 100 + i for n in range(4) for i in range(3)]
