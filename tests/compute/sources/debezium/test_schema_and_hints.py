"""An envelope schema's before/after fields are found; schemaless hints name the setting."""

from __future__ import annotations

from typing import Any

import pytest

from compute.sources.debezium import SCHEMALESS_HINTS, decode_row, schema_fields, schemaless_hint


def _customers(side: str) -> dict[str, Any]:
    # The value schema of Debezium's PostgreSQL docs, "create events"
    # (documentation/modules/ROOT/pages/connectors/postgresql.adoc), shortened.
    return {
        "type": "struct",
        "fields": [
            {"type": "int32", "optional": False, "field": "id"},
            {"type": "string", "optional": False, "field": "email"},
        ],
        "optional": True,
        "name": "PostgreSQL_server.inventory.customers.Value",
        "field": side,
    }


ENVELOPE = {
    "type": "struct",
    "fields": [
        _customers("before"),
        _customers("after"),
        {"type": "struct", "fields": [], "optional": False, "field": "source"},
        {"type": "string", "optional": False, "field": "op"},
    ],
    "optional": False,
    "name": "PostgreSQL_server.inventory.customers.Envelope",
}


def test_schema_fields_finds_each_side() -> None:
    after = schema_fields(ENVELOPE, "after")
    assert after is not None and [f["field"] for f in after] == ["id", "email"]
    assert schema_fields(ENVELOPE, "before") == after
    row = {"id": 1004, "email": "annek@noanswer.org"}
    assert decode_row(row, after) == row


@pytest.mark.parametrize(
    "schema",
    [
        {"type": "struct", "fields": [{"type": "string", "field": "after"}]},
        {"type": "struct", "fields": [{"type": "struct", "field": "before", "fields": []}]},
        {"type": "string"},
        {"type": "struct", "fields": "not a list"},
    ],
)
def test_schema_fields_without_the_side(schema: dict[str, Any]) -> None:
    assert schema_fields(schema, "after") is None


@pytest.mark.parametrize(
    ("column_type", "setting"),
    [
        ("numeric", "decimal.handling.mode=string"),
        ("numeric(10,2)", "decimal.handling.mode=string"),
        ("NUMBER", "decimal.handling.mode=string"),
        ("bytea", "schemas.enable=true"),
        ("BINARY", "schemas.enable=true"),
        ("bit varying", "schemas.enable=true"),
        ("timestamp without time zone", "schemas.enable=true"),
        ("interval", "interval.handling.mode=string"),
        ("geometry", "schemas.enable=true"),
    ],
)
def test_schemaless_hint_names_the_setting(column_type: str, setting: str) -> None:
    hint = schemaless_hint(column_type)
    assert hint is not None and setting in hint
    assert hint in SCHEMALESS_HINTS.values()


@pytest.mark.parametrize("column_type", ["text", "integer", "jsonb", "timestamp with time zone"])
def test_no_hint_where_the_json_value_is_exact(column_type: str) -> None:
    assert schemaless_hint(column_type) is None
