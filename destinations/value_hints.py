"""What a destination says when a value would not land exactly: the reasons and the fixes.

Shared by the destinations so that a refused value reads the same wherever it
was bound; the hints name the Debezium setting that makes the source send the
value exactly.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Iterable
from decimal import Decimal
from typing import Any

from destinations.errors import PermanentDestinationError

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
