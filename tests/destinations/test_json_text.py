"""JSON text for json/jsonb/VARIANT columns keeps every number exact, at any depth."""

from __future__ import annotations

import json
import uuid
from datetime import date
from decimal import Decimal

from hypothesis import given
from hypothesis import strategies as st

from destinations.json_text import json_text


def test_decimals_are_numbers_with_every_digit() -> None:
    value = {"price": Decimal("1.50"), "n": [Decimal("-0"), Decimal("1E+3")], "k": 1}
    assert json_text(value) == '{"price": 1.50, "n": [-0, 1E+3], "k": 1}'
    parsed = json.loads(json_text(value), parse_float=Decimal)
    assert parsed == value and str(parsed["price"]) == "1.50"


def test_what_json_knows_is_written_as_json_dumps_writes_it() -> None:
    value = {"a": [1, 2.5, None, "x\ty", {"b": True}], 2: "int key", None: False}
    assert json_text(value) == json.dumps(value)


def test_other_values_keep_their_text_beside_decimals() -> None:
    value = {"d": date(2024, 1, 2), "u": uuid.UUID(int=1), "x": Decimal("2.0")}
    assert json.loads(json_text(value)) == {
        "d": "2024-01-02",
        "u": "00000000-0000-0000-0000-000000000001",
        "x": 2.0,
    }


json_values = st.recursive(
    st.none()
    | st.booleans()
    | st.integers()
    | st.text()
    | st.decimals(allow_nan=False, allow_infinity=False),
    lambda children: st.lists(children) | st.dictionaries(st.text(), children),
    max_leaves=20,
)


@given(json_values)
def test_any_value_reads_back_exactly(value: object) -> None:
    assert json.loads(json_text(value), parse_float=Decimal, parse_int=Decimal) == _as_decimals(
        value
    )


def _as_decimals(value: object) -> object:
    if isinstance(value, bool) or value is None or isinstance(value, str):
        return value
    if isinstance(value, int | Decimal):
        return Decimal(value)
    if isinstance(value, list):
        return [_as_decimals(v) for v in value]
    assert isinstance(value, dict)
    return {k: _as_decimals(v) for k, v in value.items()}
