"""A VARIANT, OBJECT or ARRAY column's values checked before the MERGE: text that is not
JSON (or a document of the wrong shape) is refused for that change alone, naming the
column, instead of failing the whole MERGE in PARSE_JSON with a server error."""

from __future__ import annotations

from decimal import Decimal

import pytest

from destinations.errors import PermanentDestinationError
from destinations.snowflake.value_check import check_column


@pytest.mark.parametrize(
    ("target_type", "values"),
    [
        ("VARIANT", ['{"a": 1}', "[1, 2]", "3.5", '"text"', "null", None, {"a": 1}, [1], 7]),
        ("OBJECT", ['{"a": [1]}', {"b": Decimal("1.5")}, None]),
        ("ARRAY", ["[]", [1, "x"], None]),
    ],
)
def test_json_documents_pass(target_type: str, values: list[object]) -> None:
    check_column("DOC", target_type, values)


@pytest.mark.parametrize(
    ("target_type", "values", "carried"),
    [
        ("VARIANT", ['{"a": 1}', "{oops"], "text that is not JSON '{oops'"),
        ("VARIANT", ["plain words"], "text that is not JSON 'plain words'"),
        ("OBJECT", ["[1, 2]"], "a JSON array '[1, 2]'"),
        ("OBJECT", [[1]], "a JSON array [1]"),
        ("ARRAY", ['{"a": 1}'], "a JSON object '{\"a\": 1}'"),
        ("ARRAY", ["5"], "a JSON number '5'"),
        ("ARRAY", ["not json"], "text that is not JSON 'not json'"),
    ],
)
def test_what_a_document_column_cannot_hold_is_refused_naming_it(
    target_type: str, values: list[object], carried: str
) -> None:
    with pytest.raises(PermanentDestinationError) as caught:
        check_column("DOC", target_type, values)
    assert str(caught.value).startswith(
        f"column DOC is {target_type} but the change carries {carried}: the column takes JSON"
    )
