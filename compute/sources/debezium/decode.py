"""A Debezium row's values turned into exact Python values, by each column's field schema.

The field schemas are those of Kafka Connect's JSON converter with schemas on
(``{"schema": ..., "payload": ...}``): each has ``field``, ``type`` and maybe a
logical ``name`` with ``parameters``. A value is decoded by its ``name`` when
the name is known (see ``temporal`` and ``encoded``), else by its ``type``.
A value that cannot be known exactly raises ``ValueUndecodable``, whose
reason names the Debezium setting that fixes it when there is one; a TOAST
placeholder leaves its column out of the row, so the destination keeps it.

Without a schema (``schemas.enable=false``) the values are taken as the JSON
gives them; only placeholders are recognised.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Collection, Mapping, Sequence
from decimal import Decimal
from typing import Any

from compute.sources.debezium import encoded, temporal
from compute.sources.debezium.checks import (
    Refused,
    ValueUndecodable,
    base64_bytes,
    expect_int,
    expect_str,
    kind_of,
)
from compute.sources.debezium.placeholders import Placeholders

__all__ = ["DEFAULT_PLACEHOLDERS", "ValueUndecodable", "decode_row", "schema_fields"]

# Debezium's default ``unavailable.value.placeholder``.
DEFAULT_PLACEHOLDERS: tuple[str, ...] = ("__debezium_unavailable_value",)

Decoder = Callable[[Any, Mapping[str, Any]], Any]

_LOGICAL: dict[str, Decoder] = {**temporal.DECODERS, **encoded.DECODERS}
_INTEGERS = ("int8", "int16", "int32", "int64")
_FLOATS = ("float32", "float64")
# Jackson writes non-finite doubles as these strings (WRITE_NAN_AS_STRINGS).
_NON_FINITE = {"NaN": float("nan"), "Infinity": float("inf"), "-Infinity": float("-inf")}


def schema_fields(value_schema: Mapping[str, Any], side: str) -> Sequence[Mapping[str, Any]] | None:
    """The ``fields`` of the ``side`` (``before``/``after``) struct of an envelope's value schema.

    None when the schema has no such struct field.
    """
    fields = value_schema.get("fields")
    if not isinstance(fields, list):
        return None
    for field in fields:
        if isinstance(field, Mapping) and field.get("field") == side:
            inner = field.get("fields")
            if field.get("type") == "struct" and isinstance(inner, list):
                return inner
            return None
    return None


def decode_row(
    row: dict[str, Any],
    fields: Sequence[Mapping[str, Any]] | None,
    *,
    placeholders: Collection[str] = DEFAULT_PLACEHOLDERS,
) -> dict[str, Any]:
    """The row with every value decoded; a column holding a placeholder is left out.

    ``fields``: the before/after struct's field schemas, None for a line
    without schema. ``ValueUndecodable`` names the first column whose value
    cannot be known exactly.
    """
    marks = Placeholders.of(placeholders)
    by_name = {f.get("field"): f for f in fields or () if isinstance(f, Mapping)}
    decoded: dict[str, Any] = {}
    for column, value in row.items():
        schema = by_name.get(column)
        if marks.matches(value, schema):
            continue
        if schema is None or value is None:
            decoded[column] = value
            continue
        try:
            decoded[column] = decode_value(value, schema)
        except Refused as refused:
            raise ValueUndecodable(column, refused.reason) from None
    return decoded


def decode_value(value: Any, schema: Mapping[str, Any]) -> Any:
    """One value by its field schema; ``Refused`` when it cannot be known exactly."""
    if value is None:
        return None
    name = schema.get("name")
    if name is not None:
        decoder = _LOGICAL.get(name)
        if decoder is not None:
            return decoder(value, schema)
    kind = schema.get("type")
    if name is not None and kind in ("bytes", "struct"):
        # Base64 text or a struct of an encoding this engine does not know:
        # writing it as is would put something else than the source's value.
        raise Refused(
            f"logical type {name!r} ({kind}) is not known to this engine; "
            "its value cannot be written exactly"
        )
    return _by_type(value, schema, kind)


def _by_type(value: Any, schema: Mapping[str, Any], kind: Any) -> Any:
    if kind in _INTEGERS:
        return expect_int(value, kind)
    if kind in _FLOATS:
        return _float(value, kind)
    if kind == "boolean":
        if not isinstance(value, bool):
            raise Refused(f"{kind_of(value)} where the schema says boolean")
        return value
    if kind == "string":
        return expect_str(value, "string")
    if kind == "bytes":
        return base64_bytes(value)
    if kind == "array":
        return _array(value, schema)
    if kind == "map":
        return _map(value, schema)
    if kind == "struct":
        return decode_struct(value, schema)
    raise Refused(f"unknown schema type {kind!r}")


def _float(value: Any, kind: str) -> float:
    # Jackson writes a double as Java's shortest round-trip text (a float32
    # as its own shortest text): float() of that text is the source's value.
    if isinstance(value, str) and value in _NON_FINITE:
        return _NON_FINITE[value]
    if isinstance(value, bool) or not isinstance(value, int | float | Decimal):
        raise Refused(f"{kind_of(value)} where the schema says {kind}")
    number = float(value)
    if math.isinf(number):  # Java never writes a finite double this large
        raise Refused(f"{value} is beyond the range of {kind}")
    return number


def _array(value: Any, schema: Mapping[str, Any]) -> list[Any]:
    if not isinstance(value, list):
        raise Refused(f"{kind_of(value)} where the schema says array")
    items = schema.get("items")
    if not isinstance(items, Mapping):
        return list(value)
    return [decode_value(item, items) for item in value]


def _map(value: Any, schema: Mapping[str, Any]) -> dict[Any, Any]:
    keys = schema.get("keys")
    values = schema.get("values")
    if isinstance(value, dict):  # string keys: a JSON object
        pairs = list(value.items())
    elif isinstance(value, list) and all(isinstance(p, list) and len(p) == 2 for p in value):
        pairs = [(p[0], p[1]) for p in value]  # other keys: an array of [key, value]
    else:
        raise Refused(f"{kind_of(value)} where the schema says map")
    return {
        decode_value(k, keys) if isinstance(keys, Mapping) else k: (
            decode_value(v, values) if isinstance(values, Mapping) else v
        )
        for k, v in pairs
    }


def decode_struct(value: Any, schema: Mapping[str, Any]) -> dict[str, Any]:
    """A struct's fields, each decoded by its schema."""
    if not isinstance(value, dict):
        raise Refused(f"{kind_of(value)} where the schema says struct")
    inner = {f.get("field"): f for f in schema.get("fields") or ()}
    return {
        k: decode_value(v, inner[k]) if k in inner and isinstance(inner[k], Mapping) else v
        for k, v in value.items()
    }
