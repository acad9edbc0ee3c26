"""net_effect and layout: collapsing a batch must equal applying it change by change."""

from __future__ import annotations

from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from destinations.errors import PermanentDestinationError
from destinations.net_effect import layout, net_effect
from destinations.records import ChangeRecord, Operation, SourcePosition
from tests.builders import delete, upsert

Table = dict[tuple[Any, ...], dict[str, Any]]


def apply_one_by_one(records: list[ChangeRecord]) -> Table:
    table: Table = {}
    for record in sorted(records, key=lambda r: r.position):
        if record.op is Operation.DELETE:
            table.pop(record.key_values, None)
        else:
            assert record.after is not None
            table[record.key_values] = {**table.get(record.key_values, {}), **record.after}
    return table


def apply_net(records: list[ChangeRecord], start: Table | None = None) -> Table:
    table: Table = {k: dict(v) for k, v in (start or {}).items()}
    for record in net_effect(records):
        if record.op is Operation.DELETE:
            table.pop(record.key_values, None)
        else:
            assert record.after is not None
            table[record.key_values] = {**table.get(record.key_values, {}), **record.after}
    return table


changes = st.lists(
    st.tuples(
        st.integers(0, 4),  # key
        st.sampled_from(["upsert", "delete"]),
        st.integers(0, 6),  # commit position (ties on purpose)
        st.dictionaries(st.sampled_from(["a", "b", "c"]), st.integers(0, 9), max_size=3),
    ),
    max_size=30,
)


@settings(max_examples=200, deadline=None)
@given(changes)
def test_net_effect_equals_applying_each_change(spec: list[Any]) -> None:
    records = [
        upsert(key, row, commit) if kind == "upsert" else delete(key, commit)
        for key, kind, commit, row in spec
    ]
    assert apply_net(records) == apply_one_by_one(records)


def test_equal_positions_keep_batch_order() -> None:
    records = [upsert(1, {"a": 1}, 5, 2), upsert(1, {"a": 2}, 5, 2), upsert(1, {"a": 0}, 5, 1)]
    assert net_effect(records)[0].after == {"id": 1, "a": 2}


def test_commit_position_orders_before_sequence() -> None:
    records = [upsert(1, {"a": "late"}, 7, 0), upsert(1, {"a": "early"}, 6, 99)]
    assert net_effect(records)[0].after == {"id": 1, "a": "late"}


def test_key_required() -> None:
    empty = ChangeRecord("t", Operation.UPDATE, {}, {"a": 1}, SourcePosition(1))
    with pytest.raises(PermanentDestinationError, match="without a primary key"):
        net_effect([empty])


def test_layout_groups_by_column_set_and_splits_deletes() -> None:
    plan = layout(
        net_effect(
            [
                upsert(1, {"a": 1, "b": 2}, 1),
                upsert(2, {"b": 3, "a": 4}, 2),  # same columns, other order
                upsert(3, {"a": 5}, 3),
                delete(4, 4),
            ]
        )
    )
    assert plan.keys == ("id",) and len(plan) == 4
    by_columns = {frozenset(g.columns): g.rows() for g in plan.upserts}
    assert by_columns == {
        frozenset({"id", "a", "b"}): [(1, 1, 2), (2, 4, 3)],
        frozenset({"id", "a"}): [(3, 5)],
    }
    assert plan.deletes.columns == ("id",) and plan.deletes.rows() == [(4,)]


def test_layout_takes_key_columns_from_the_key_when_the_row_lacks_them() -> None:
    record = ChangeRecord("t", Operation.UPDATE, {"id": 9}, {"a": 1}, SourcePosition(1))
    plan = layout([record])
    assert plan.upserts[0].columns == ("a", "id") and plan.upserts[0].rows() == [(1, 9)]


def test_layout_rejects_mixed_key_columns_and_missing_rows() -> None:
    with pytest.raises(PermanentDestinationError, match="different key columns"):
        layout([upsert(1, {"a": 1}, 1), delete({"uid": 2}, 2)])
    broken = ChangeRecord("t", Operation.INSERT, {"id": 1}, None, SourcePosition(1))
    with pytest.raises(PermanentDestinationError, match="without a row image"):
        layout([broken])
