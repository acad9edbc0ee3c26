"""What a Debezium user must set for exact values when lines carry no schema, per column type.

Without ``schemas.enable=true`` a base64 string, an epoch number or a
decimal's bytes cannot be told from plain text or a plain number, so the
destination refuses such values for these column types; the sentences here
name the Debezium setting that makes the value exact.
"""

from __future__ import annotations

# Keyed by PostgreSQL type family (see ``schemaless_hint`` for the spellings).
SCHEMALESS_HINTS: dict[str, str] = {
    "numeric": (
        "without a schema a DECIMAL/NUMERIC value is base64 bytes with no scale: set "
        "decimal.handling.mode=string on the Debezium connector (or enable schemas: "
        "value.converter.schemas.enable=true)"
    ),
    "bytea": (
        "without a schema a binary value is base64 or hex text that cannot be told from text: "
        "enable schemas (value.converter.schemas.enable=true); binary.handling.mode=hex "
        "does not make it distinguishable"
    ),
    "bit": (
        "without a schema a BIT(n) value is base64 bytes: enable schemas "
        "(value.converter.schemas.enable=true); a BIT VARYING value loses its leading "
        "zeros in Debezium either way"
    ),
    "date": (
        "without a schema a DATE is a number of days: set time.precision.mode=connect and "
        "enable schemas (value.converter.schemas.enable=true)"
    ),
    "time": (
        "without a schema a TIME is an epoch number in ms, us or ns: enable schemas "
        "(value.converter.schemas.enable=true)"
    ),
    "timestamp": (
        "without a schema a TIMESTAMP is an epoch number in ms, us or ns: enable schemas "
        "(value.converter.schemas.enable=true)"
    ),
    "interval": (
        "without a schema an INTERVAL is microseconds with months counted as 30.4375 days: "
        "set interval.handling.mode=string"
    ),
    "geometry": (
        "without a schema a geometry is a {wkb, srid} object: enable schemas "
        "(value.converter.schemas.enable=true)"
    ),
}

_FAMILIES: dict[str, str] = {
    "numeric": "numeric",
    "decimal": "numeric",
    "money": "numeric",
    "number": "numeric",  # Snowflake
    "bytea": "bytea",
    "binary": "bytea",  # Snowflake
    "varbinary": "bytea",
    "bit": "bit",
    "bit varying": "bit",
    "varbit": "bit",
    "date": "date",
    "time": "time",
    "time without time zone": "time",
    "timestamp": "timestamp",
    "timestamp without time zone": "timestamp",
    "timestamp_ntz": "timestamp",  # Snowflake
    "datetime": "timestamp",
    "interval": "interval",
    "geometry": "geometry",
    "geography": "geometry",
}


def schemaless_hint(column_type: str) -> str | None:
    """The setting sentence for a column type as the database spells it, None if none is needed.

    Takes PostgreSQL's ``information_schema`` spellings (``timestamp without
    time zone``, ``bit varying``), ``format_type`` ones with a modifier
    (``numeric(10,2)``) and Snowflake's (``NUMBER``, ``BINARY``).
    """
    family = _FAMILIES.get(column_type.split("(", 1)[0].strip().lower())
    return SCHEMALESS_HINTS.get(family) if family else None
