"""The JSONL export format: every value type round-trips exactly; bad lines are named."""

from __future__ import annotations

import datetime as dt
import json
import math
import uuid
from decimal import Decimal
from typing import Any

import pytest
from hypothesis import example, given, settings
from hypothesis import strategies as st

from compute.codec.export_view import message_from_line, message_to_line, tag, untag
from compute.codec.failure_context import FailureContext
from compute.codec.message import DLQMessage, decode_message, encode_message
from compute.queue_id import QueueId
from destinations.errors import FailureKind
from destinations.records import ChangeRecord, Operation, SourcePosition
from tests.compute.value_strategies import any_row, any_value, same

QUEUE = QueueId("s", "a/b ü", "d")

TRICKY: dict[Any, Any] = {
    "dec": Decimal("-0.000000000000000000001"),
    "dec_exp": Decimal("1E+30"),
    "naive": dt.datetime(2024, 1, 1, 0, 0),
    "aware": dt.datetime(2024, 1, 1, 0, 0, 0, 1, tzinfo=dt.timezone(dt.timedelta(hours=-9))),
    "date": dt.date(1, 1, 1),
    "time_tz": dt.time(1, 2, 3, 4, tzinfo=dt.UTC),
    "uuid": uuid.UUID("12345678-1234-5678-1234-567812345678"),
    "bytes": bytes(range(256)),
    "big": 2**63 + 1,
    "neg_zero": -0.0,
    "inf": math.inf,
    "bool": True,
    "none": None,
    "list": [1, "x", [Decimal("2.5")]],
    "$dollar": "a key starting with $",
    "nested": {1: "int key", "s": {"$decimal": "not a tag, a plain map"}},
}


def roundtrip(message: DLQMessage) -> DLQMessage:
    line = json.dumps(message_to_line(message), allow_nan=False)
    return message_from_line(json.loads(line), QUEUE)


def test_every_type_round_trips_to_the_same_bytes() -> None:
    record = ChangeRecord(
        "a/b ü",
        Operation.DELETE,
        {"id": 7, "k": "x"},
        None,
        SourcePosition(2**40, 3),
        TRICKY,
        12.5,
    )
    failure = FailureContext("E", "m", FailureKind.PERMANENT, "23505", "stack", 4, 1.0, 2)
    original = decode_message(encode_message(DLQMessage("id1", QUEUE, record, failure, 3.25)))
    back = roundtrip(original)
    assert encode_message(back) == encode_message(original)
    before = back.record.before
    assert before is not None
    for name, value in TRICKY.items():
        got = before[name]
        assert type(got) is type(value), name
        if isinstance(value, float) and math.isnan(value):
            continue
        assert got == value, name
    assert math.copysign(1, before["neg_zero"]) == -1
    assert before["aware"].utcoffset() == dt.timedelta(hours=-9)
    assert type(back.failure.last_failure_at) is int


def test_tags_are_readable() -> None:
    assert tag(Decimal("10.50")) == {"$decimal": "10.50"}
    assert tag({1: 2}) == {"$map": [[1, 2]]}
    assert untag({"$uuid": str(uuid.UUID(int=1))}) == uuid.UUID(int=1)
    assert math.isnan(untag(tag(math.nan)))


@pytest.mark.parametrize(
    ("mutate", "reason"),
    [
        (lambda d: d.pop("message_id"), "missing field 'message_id'"),
        (lambda d: d["record"].update(op="z"), "field 'op' must be one of"),
        (lambda d: d["record"].update(position=[1]), "field 'position'"),
        (lambda d: d["record"]["key"].update(id={"$decimal": "x"}), "bad $decimal"),
        (lambda d: d["failure"].update(attempts="3"), "field 'attempts' must be int"),
        (lambda d: d["failure"].update(kind="maybe"), "field 'kind' must be one of"),
    ],
)
def test_bad_lines_name_the_field(mutate: Any, reason: str) -> None:
    record = ChangeRecord("t", Operation.INSERT, {"id": 1}, {"id": 1}, SourcePosition(1, 0))
    data = message_to_line(DLQMessage("x", QUEUE, record, FailureContext("E", "m"), 1.0))
    mutate(data)
    with pytest.raises(ValueError, match=reason.replace("$", r"\$")):
        message_from_line(data, QUEUE)


@settings(max_examples=150, deadline=None)
@given(
    st.dictionaries(st.text(min_size=1, max_size=6), any_value, min_size=1, max_size=3),
    st.one_of(st.none(), any_row),
    any_row,
    st.integers(min_value=0),
    st.integers(min_value=0),
)
@example({"id": 10**25}, None, {"id": 10**25, "n": -(10**5000)}, 2**64, 2**64 + 1)
@example({"k": (1, "a")}, {"s": {1, 2}}, {"f": frozenset({(1,)}), "t": ((),)}, 0, 0)
def test_every_value_survives_export_and_import_exactly(
    key: dict[str, Any], before: dict[str, Any] | None, after: dict[str, Any], commit: int, seq: int
) -> None:
    """Big ints stay ints (never floats), NaNs, sets and tuples keep their types."""
    record = ChangeRecord("t", Operation.UPDATE, key, after, SourcePosition(commit, seq), before)
    original = DLQMessage("id1", QUEUE, record, FailureContext("E", "m"), 3.25)
    line = json.dumps(message_to_line(original), allow_nan=False)
    back = message_from_line(json.loads(line), QUEUE)
    assert same(back, original)
    assert same(decode_message(encode_message(back)), original)
