"""Checks a batch's values against their PostgreSQL column types, refusing what would change.

PostgreSQL reads every value from its text and casts it to the column's type,
and some of those casts change the value without an error: a ``numeric(12,2)``
rounds ``1.234``, a ``timestamp`` drops an offset, a ``date`` drops a time of
day, a ``bytea`` stores the ASCII bytes of a base64 text, an integer becomes
seconds of an ``interval``. Those values are refused here, as a permanent
error naming the column and what would fix it, so the batch is split and only
the offending rows are parked. Lists bound for array columns are turned into
array literals.

The checks run per column of a batch: one ``set(map(type, values))``, then a
closer look only for the columns whose type and value kinds call for one.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from datetime import datetime, time, timedelta
from decimal import Decimal
from functools import partial
from operator import attrgetter, is_not
from typing import Any

from destinations.net_effect import ColumnBatch
from destinations.postgresql.copy_text import text_value
from destinations.value_hints import (
    BYTES_HINT,
    INTERVAL_HINT,
    TEMPORAL_HINT,
    check_decimal_text,
    check_fraction,
    check_offset,
    check_scale,
    check_time_of_day,
    each,
    refuse,
)

_NONE = type(None)
_EXPONENT = attrgetter("exponent")
_NOT_NONE = partial(is_not, None)
_ZERO = timedelta(0)
_BYTES = (bytes, bytearray, memoryview)
_NUMBERS = (int, float)
_TIMESTAMP = "timestamp without time zone"
_TIMESTAMPTZ = "timestamp with time zone"
_TIME = "time without time zone"
_TIMETZ = "time with time zone"
_TEMPORAL = frozenset({_TIMESTAMP, _TIMESTAMPTZ, "date", _TIME, _TIMETZ})
_BYTEA_HEX = re.compile(r"\\x(?:[0-9a-fA-F]{2})*")
_SCALE = re.compile(r"numeric\(\d+,(\d+)\)")
_FRACTION_DIGITS = re.compile(r"\((\d)\)")


def checked_group(
    columns: dict[str, str], full_types: dict[str, str], group: ColumnBatch
) -> ColumnBatch:
    """``group`` with its values checked against the column types (array columns formatted).

    ``columns`` maps a column to its base type, ``full_types`` to its type
    with modifiers (``numeric(12,2)``). Raises PermanentDestinationError for a
    value the column would not hold exactly.
    """
    data = list(group.data)
    changed = False
    for index, (column, values) in enumerate(zip(group.columns, group.data, strict=True)):
        base = columns[column]
        kinds = set(map(type, values))
        kinds.discard(_NONE)
        if not kinds:
            continue
        if base.endswith("[]"):
            if list in kinds:
                data[index] = [array_literal(v) if type(v) is list else v for v in values]
                changed = True
            continue
        if base in ("json", "jsonb") and bool in kinds:
            data[index] = [("true" if v else "false") if type(v) is bool else v for v in values]
            changed = True
            continue
        _check(column, base, full_types.get(column, base), kinds, values)
    return ColumnBatch(group.columns, data, group.records) if changed else group


def _check(column: str, base: str, full: str, kinds: set[type], values: Sequence[Any]) -> None:
    if base != "bytea" and any(issubclass(k, _BYTES) for k in kinds):
        raise refuse(column, base, "bytes", "write bytes to a bytea column")
    if base == "bytea":
        if str in kinds:
            each(
                values,
                str,
                lambda v: _BYTEA_HEX.fullmatch(v) is None,
                column,
                base,
                "text",
                BYTES_HINT,
            )
    elif base == "numeric":
        _check_numeric(column, full, kinds, values)
    elif base in _TEMPORAL:
        _check_temporal(column, base, full, kinds, values)
    elif base == "interval":
        if kinds & {int, float}:
            raise refuse(column, base, "a number", INTERVAL_HINT)


def _check_numeric(column: str, full: str, kinds: set[type], values: Sequence[Any]) -> None:
    check_decimal_text(column, full, kinds, values)
    match = _SCALE.fullmatch(full)
    if match is None or not kinds & {Decimal, float, str}:
        return
    scale = int(match.group(1))
    try:
        # Fast path, at C speed: no value has more fraction digits than the column
        # keeps (the smallest exponent of the batch's Decimals).
        if kinds == {Decimal}:
            exponents = map(_EXPONENT, map(Decimal.as_tuple, filter(_NOT_NONE, values)))
            if min(exponents, default=0) >= -scale:  # type: ignore[operator]
                return
    except TypeError:  # NaN or Infinity in the batch: check each value
        pass
    check_scale(column, full, values, scale, "PostgreSQL")


def _check_temporal(
    column: str, base: str, full: str, kinds: set[type], values: Sequence[Any]
) -> None:
    if kinds & {int, float, Decimal}:
        raise refuse(column, base, "a number", TEMPORAL_HINT)
    if base == "date":
        if datetime in kinds:
            check_time_of_day(column, base, values)
        return
    if base in (_TIME, _TIMETZ) and datetime in kinds:
        raise refuse(
            column, base, "a timestamp", "send a time of day, or make the column a timestamp"
        )
    if base == _TIMESTAMP and datetime in kinds:
        check_offset(column, base, values, "make the column timestamp with time zone (timestamptz)")
    if base == _TIME and time in kinds:
        each(
            values,
            time,
            lambda v: v.tzinfo is not None,
            column,
            base,
            "a time zone offset:",
            "make the column time with time zone (timetz)",
        )
    digits = _FRACTION_DIGITS.search(full)
    if digits is not None and int(digits.group(1)) < 6:
        check_fraction(column, full, values, int(digits.group(1)), "PostgreSQL")


def array_literal(items: list[Any]) -> str:
    """A PostgreSQL array literal (``{1,NULL,"a b"}``) for a list, nested lists as dimensions."""
    return "{" + ",".join(_element(item) for item in items) + "}"


def _element(item: Any) -> str:
    if item is None:
        return "NULL"
    if type(item) is list:
        return array_literal(item)
    if type(item) is bool:
        return "t" if item else "f"
    text = text_value(item)
    assert text is not None
    return '"' + text.replace("\\", "\\\\").replace('"', '\\"') + '"'
