"""A TOAST placeholder, in whichever form Debezium sends it, leaves its column out of the row.

Forms from debezium-connector-postgres/src/main/java/io/debezium/connector/
postgresql/UnchangedToastedPlaceholder.java: the text, its bytes, a one-item
text/binary/uuid array, the list of its byte values, and an hstore map.
"""

from __future__ import annotations

import base64
import hashlib
import uuid
from typing import Any

import pytest

from compute.sources.debezium import DEFAULT_PLACEHOLDERS, decode_row

TEXT = DEFAULT_PLACEHOLDERS[0]
RAW = TEXT.encode()
B64 = base64.b64encode(RAW).decode()
# UUID.nameUUIDFromBytes: MD5, version 3.
UUID3 = str(uuid.UUID(bytes=hashlib.md5(RAW).digest(), version=3))

FORMS: list[tuple[str, Any, dict[str, Any] | None]] = [
    ("text", TEXT, {"type": "string"}),
    ("json", TEXT, {"type": "string", "name": "io.debezium.data.Json"}),
    ("bytea", B64, {"type": "bytes"}),
    ("text[]", [TEXT], {"type": "array", "items": {"type": "string"}}),
    ("bytea[]", [B64], {"type": "array", "items": {"type": "bytes"}}),
    ("int[]", list(RAW), {"type": "array", "items": {"type": "int32"}}),
    ("uuid[]", [UUID3], {"type": "array", "items": {"type": "string"}}),
    ("hstore", {TEXT: TEXT}, {"type": "map"}),
    ("bytea hex, no schema", RAW.hex(), None),
    ("bytea base64, no schema", B64, None),
]


@pytest.mark.parametrize(("form", "value", "schema"), FORMS, ids=[f[0] for f in FORMS])
def test_a_placeholder_leaves_the_column_out(
    form: str, value: Any, schema: dict[str, Any] | None
) -> None:
    fields = (
        None if schema is None else [{"field": "id", "type": "int32"}, {"field": "c", **schema}]
    )
    assert decode_row({"id": 1, "c": value}, fields) == {"id": 1}


def test_a_configured_placeholder_replaces_the_default() -> None:
    row = {"id": 1, "a": "<missing>", "b": TEXT}
    assert decode_row(row, None, placeholders=("<missing>",)) == {"id": 1, "b": TEXT}


def test_base64_of_the_placeholder_in_a_text_column_is_text() -> None:
    # With a schema only a bytes field carries base64: a text value stays.
    fields = [{"field": "c", "type": "string"}]
    assert decode_row({"c": B64}, fields) == {"c": B64}


def test_values_close_to_a_placeholder_stay() -> None:
    row = {"a": TEXT + " ", "b": [TEXT, TEXT], "c": {TEXT: "x"}, "d": list(RAW)[:-1]}
    assert decode_row(row, None) == row
