"""What a destination says when a value would not land exactly: the reasons and the fixes.

Shared by the destinations so that a refused value reads the same wherever it
was bound; the hints name the Debezium setting that makes the source send the
value exactly.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Iterable
from datetime import UTC, datetime, time, timedelta
from decimal import Decimal
from functools import partial
from operator import attrgetter, is_not
from typing import Any

from destinations.errors import PermanentDestinationError

_ZERO = timedelta(0)
_TZINFO = attrgetter("tzinfo")
_NOT_NONE = partial(is_not, None)
DECIMAL_LITERAL = re.compile(
    r"\s*[+-]?(?:(?:\d+\.?\d*|\.\d+)(?:[eE][+-]?\d+)?|nan|infinity|inf)\s*", re.IGNORECASE
)

# What a Debezium user sets to get each kind of value exactly (the source
# decodes it exactly only when it knows the field's schema).
SCHEMAS_HINT = "enable schemas in the converter (value.converter.schemas.enable=true)"
TIMETZ_HINT = (
    "Snowflake has no time with a time zone; map the column to VARCHAR, or store the time "
    "without its offset on the source"
)
BINARY_HINT = (
    "Debezium without schemas sends bytes as base64 text, which cannot be told from text; "
    "enable schemas in the converter (value.converter.schemas.enable=true) so the bytes are "
    "decoded"
)
BYTES_HINT = (
    "Debezium without schemas sends bytes as base64 text, which cannot be told from text; "
    f"{SCHEMAS_HINT} so the bytes are decoded, or send PostgreSQL hex text ('\\x0102...')"
)
DECIMAL_HINT = (
    "Debezium without schemas sends decimals as base64 bytes; "
    "set decimal.handling.mode=string (or precise, with schemas: "
    "value.converter.schemas.enable=true)"
)
TEMPORAL_HINT = (
    "Debezium without schemas sends times as epoch integers whose unit depends on the "
    f"column; {SCHEMAS_HINT}, or set time.precision.mode=connect with schemas"
)
INTERVAL_HINT = (
    "Debezium sends intervals as microseconds by default; set interval.handling.mode=string "
    "(ISO 8601 text)"
)


def refuse(column: str, column_type: str, carried: str, fix: str) -> PermanentDestinationError:
    """The permanent error for a value its column cannot hold exactly."""
    return PermanentDestinationError(
        f"column {column} is {column_type} but the change carries {carried}: {fix}"
    )


def each(
    values: Iterable[Any],
    kind: type | tuple[type, ...],
    bad: Callable[[Any], bool],
    column: str,
    column_type: str,
    carried: str,
    fix: str,
) -> None:
    """Refuse the first value of ``kind`` for which ``bad`` holds."""
    for value in values:
        if isinstance(value, kind) and bad(value):
            raise refuse(column, column_type, f"{carried} {value!r:.60}", fix)


def too_fine(value: Any, scale: int) -> bool:
    number = value if type(value) is Decimal else Decimal(str(value).strip())
    if not number.is_finite():
        return False
    exponent = number.normalize().as_tuple().exponent
    return isinstance(exponent, int) and exponent < -scale


def check_decimal_text(column: str, column_type: str, kinds: set[type], values: Any) -> None:
    """Refuse text that is not a decimal number (base64 without a schema) and booleans."""
    if str in kinds:
        each(
            values,
            str,
            lambda v: DECIMAL_LITERAL.fullmatch(v) is None,
            column,
            column_type,
            "text that is not a decimal number:",
            DECIMAL_HINT,
        )
    if bool in kinds:
        raise refuse(column, column_type, "a boolean", "send a number")


def check_scale(column: str, column_type: str, values: Any, scale: int, database: str) -> None:
    """Refuse a number with more decimal places than ``scale``: the database would round it."""
    each(
        values,
        (Decimal, float, str),
        lambda v: too_fine(v, scale),
        column,
        column_type,
        f"a value with more than {scale} decimal places:",
        f"widen the column's scale; {database} would round it",
    )


def check_time_of_day(column: str, column_type: str, values: Any) -> None:
    """Refuse a datetime with a time of day for a date column: it would be cut off."""
    each(
        values,
        datetime,
        lambda v: v.timetz() != time(),
        column,
        column_type,
        "a timestamp with a time of day:",
        "make the column a timestamp, or send a date",
    )


def check_offset(column: str, column_type: str, values: Any, fix: str) -> None:
    """Refuse a datetime with a non-UTC offset for a column without a zone: it would be dropped."""
    # The usual batch (naive datetimes, or UTC) is answered at C speed: the set of
    # tzinfos. A zone whose offset depends on the date is checked value by value.
    try:
        zones = set(map(_TZINFO, filter(_NOT_NONE, values)))
    except AttributeError:  # other kinds of values beside the datetimes
        zones = {...}
    if all(zone is None or zone is UTC for zone in zones):
        return
    each(
        values,
        datetime,
        lambda v: v.utcoffset() not in (None, _ZERO),
        column,
        column_type,
        "a time zone offset:",
        fix,
    )


def check_fraction(column: str, column_type: str, values: Any, digits: int, database: str) -> None:
    """Refuse a datetime or time with more fraction digits than ``digits`` (< 6)."""
    unit = 10 ** (6 - digits)
    each(
        values,
        (datetime, time),
        lambda v: v.microsecond % unit != 0,
        column,
        column_type,
        "more fraction digits than the column keeps:",
        f"widen the column's precision; {database} would round it",
    )
