"""Checks a batch's values against their Snowflake column types, refusing what would change.

Snowflake casts a bound value to its column's type, and some casts change it
without an error: ``NUMBER(10,2)`` rounds ``1.234``, an integer becomes epoch
seconds in a timestamp column, ``TIMESTAMP_NTZ`` drops an offset, a ``DATE``
drops a time of day, a base64 text is read as hex by ``BINARY``. Those values
are refused as a permanent error naming the column and the fix, so only the
offending rows are parked. One ``set(map(type, values))`` per column decides
whether a column needs a closer look.
"""

from __future__ import annotations

import json
import re
from collections.abc import Sequence
from datetime import datetime, time, timedelta
from decimal import Decimal
from typing import Any

from destinations.value_hints import (
    BINARY_HINT,
    TEMPORAL_HINT,
    TIMETZ_HINT,
    check_decimal_text,
    check_fraction,
    check_offset,
    check_scale,
    check_time_of_day,
    each,
    refuse,
)

_NONE = type(None)
_ZERO = timedelta(0)
_BYTES = (bytes, bytearray, memoryview)
_NUMBER = frozenset({"NUMBER", "DECIMAL", "NUMERIC", "INT", "INTEGER", "BIGINT", "SMALLINT"})
_NUMBER_SCALE = re.compile(r"\(\s*\d+\s*,\s*(\d+)\s*\)")
_PRECISION = re.compile(r"\(\s*(\d)\s*\)")
_NAIVE_TIMESTAMPS = frozenset({"TIMESTAMP_NTZ", "DATETIME", "TIMESTAMP"})
_AWARE_TIMESTAMPS = frozenset({"TIMESTAMP_TZ", "TIMESTAMP_LTZ"})
SEMI_STRUCTURED = frozenset({"VARIANT", "OBJECT", "ARRAY"})


def base_type(target_type: str) -> str:
    """``NUMBER(10,2)`` -> ``NUMBER``."""
    return target_type.split("(", 1)[0].strip().upper()


def check_column(column: str, target_type: str, values: Sequence[Any]) -> None:
    """Raise PermanentDestinationError for a value ``column`` would not hold exactly."""
    kinds = set(map(type, values))
    kinds.discard(_NONE)
    if not kinds:
        return
    base = base_type(target_type)
    if base in ("BINARY", "VARBINARY"):
        if str in kinds:
            each(values, str, bool, column, target_type, "text", BINARY_HINT)
    elif any(issubclass(k, _BYTES) for k in kinds):
        raise refuse(column, target_type, "bytes", "write bytes to a BINARY column")
    elif base in _NUMBER:
        _check_number(column, target_type, kinds, values)
    elif base in _NAIVE_TIMESTAMPS | _AWARE_TIMESTAMPS or base in ("DATE", "TIME"):
        _check_temporal(column, base, target_type, kinds, values)
    elif base in SEMI_STRUCTURED:
        _check_document(column, base, kinds, values)


# What a VARIANT, OBJECT or ARRAY column takes, and the fix for what it does not.
_DOCUMENT_HINT = (
    "the column takes JSON (text, as Debezium sends json columns, or a decoded "
    "document); map the column to VARCHAR to keep any text"
)
_SHAPES: dict[str, tuple[type, ...]] = {"OBJECT": (dict,), "ARRAY": (list,)}
_JSON_KINDS = {
    dict: "object",
    list: "array",
    str: "string",
    int: "number",
    float: "number",
    Decimal: "number",
    bool: "boolean",
    type(None): "null",
}


def _not_json(text: str) -> bool:
    try:
        json.loads(text)
    except ValueError:
        return True
    return False


def _check_document(column: str, base: str, kinds: set[type], values: Sequence[Any]) -> None:
    """Text must be JSON (else PARSE_JSON fails the whole MERGE); an OBJECT takes objects
    and an ARRAY arrays only."""
    if str in kinds:
        each(values, str, _not_json, column, base, "text that is not JSON", _DOCUMENT_HINT)
    shape = _SHAPES.get(base)
    if shape is None:
        return
    for value in values:
        if value is None:
            continue
        document = json.loads(value) if isinstance(value, str) else value
        if not isinstance(document, shape):
            kind = _JSON_KINDS.get(type(document), "value")
            carried = f"a JSON {kind} {value!r:.60}"
            raise refuse(column, base, carried, _DOCUMENT_HINT)


def _check_number(column: str, target_type: str, kinds: set[type], values: Sequence[Any]) -> None:
    check_decimal_text(column, target_type, kinds, values)
    if not kinds & {Decimal, float, str}:
        return
    match = _NUMBER_SCALE.search(target_type)
    scale = int(match.group(1)) if match else 0
    check_scale(column, target_type, values, scale, "Snowflake")


def _check_temporal(
    column: str, base: str, target_type: str, kinds: set[type], values: Sequence[Any]
) -> None:
    if kinds & {int, float, Decimal, bool}:
        raise refuse(column, target_type, "a number", TEMPORAL_HINT)
    if base == "DATE":
        if datetime in kinds:
            check_time_of_day(column, target_type, values)
        return
    if base == "TIME":
        if datetime in kinds:
            raise refuse(column, target_type, "a timestamp", "send a time of day")
        if time in kinds:
            each(
                values,
                time,
                lambda v: v.tzinfo is not None,
                column,
                target_type,
                "a time with a time zone offset:",
                TIMETZ_HINT,
            )
    elif base in _NAIVE_TIMESTAMPS and datetime in kinds:
        check_offset(column, target_type, values, "make the column TIMESTAMP_TZ")
    digits = _PRECISION.search(target_type)
    if digits is not None and int(digits.group(1)) < 6:
        check_fraction(column, target_type, values, int(digits.group(1)), "Snowflake")
