"""Debezium's numeric, binary, text and geometry logical types, decoded exactly.

* ``Decimal`` (base64 big-endian two's complement, ``scale`` parameter) and
  ``VariableScaleDecimal`` (``{scale, value}``) become ``Decimal`` built from
  its digits, never through a context that rounds.
* ``Bits`` (``BitSet.toByteArray()``, little-endian) becomes the bit string of
  the column's ``length``, bit 0 last (how PostgreSQL and MySQL print it).
* ``Geometry``/``Geography``/``Point`` become EWKB as hex text, the form a
  PostGIS column (and Snowflake's ``TO_GEOGRAPHY``) reads as is.
* ``Uuid`` becomes ``uuid.UUID``; ``Json``, ``Xml``, ``Enum``, ``EnumSet`` and
  ``Ltree`` stay their text: the JSON text goes to json/jsonb unchanged.
"""

from __future__ import annotations

import struct
import uuid
from collections.abc import Callable, Mapping
from decimal import Decimal
from typing import Any

from compute.sources.debezium.checks import Refused, base64_bytes, expect_int, expect_str, kind_of

_EWKB_SRID = 0x20000000
# PostgreSQL's longest bit string; Debezium gives an unbounded BIT VARYING
# the length 2**31 - 1.
_MAX_BITS = 83_886_080
_VARBIT_REASON = (
    "a BIT VARYING value as Bits: Debezium drops its leading zeros and its length, "
    "so the bit string cannot be known; make the source column BIT(n) or text"
)
# Set when the connector propagates source column types.
_SOURCE_TYPE = "__debezium.source.column.type"


def decimal_of(unscaled: int, scale: int) -> Decimal:
    """``unscaled * 10**-scale`` exactly: built from its digits, so no context rounds it."""
    digits = tuple(int(d) for d in str(abs(unscaled)))
    return Decimal((1 if unscaled < 0 else 0, digits, -scale))


def _unscaled(value: Any) -> int:
    raw = base64_bytes(value)
    if not raw:
        raise Refused("a Decimal with no bytes (expected a two's complement integer)")
    return int.from_bytes(raw, "big", signed=True)


def _scale(schema: Mapping[str, Any]) -> int:
    parameters = schema.get("parameters")
    text = parameters.get("scale") if isinstance(parameters, Mapping) else None
    try:
        return int(text)  # type: ignore[arg-type]
    except (TypeError, ValueError):
        raise Refused(f"a Decimal schema without an integer 'scale' parameter: {text!r}") from None


def _decimal(value: Any, schema: Mapping[str, Any]) -> Decimal:
    if isinstance(value, Decimal):  # the JSON converter's decimal.format=NUMERIC
        return value
    if isinstance(value, int) and not isinstance(value, bool):
        return Decimal(value)
    return decimal_of(_unscaled(value), _scale(schema))


def _variable_scale_decimal(value: Any, schema: Mapping[str, Any]) -> Decimal:
    if not isinstance(value, dict) or "value" not in value:
        raise Refused(f"{kind_of(value)} where VariableScaleDecimal is {{scale, value}}")
    scale = expect_int(value.get("scale"), "VariableScaleDecimal scale")
    return decimal_of(_unscaled(value["value"]), scale)


def _uuid(value: Any, schema: Mapping[str, Any]) -> uuid.UUID:
    text = expect_str(value, "Uuid")
    try:
        return uuid.UUID(text)
    except ValueError:
        raise Refused(f"Uuid {text[:60]!r} is not a UUID") from None


def _text(value: Any, schema: Mapping[str, Any]) -> str:
    return expect_str(value, str(schema.get("name")))


def _bits(value: Any, schema: Mapping[str, Any]) -> str:
    parameters = schema.get("parameters")
    parameters = parameters if isinstance(parameters, Mapping) else {}
    if str(parameters.get(_SOURCE_TYPE, "")).upper() in ("VARBIT", "BIT VARYING"):
        raise Refused(_VARBIT_REASON)
    try:
        length = int(parameters["length"])
    except (KeyError, TypeError, ValueError):
        raise Refused("a Bits schema without an integer 'length' parameter") from None
    if length > _MAX_BITS:
        raise Refused(_VARBIT_REASON)
    number = int.from_bytes(base64_bytes(value), "little")
    if number.bit_length() > length:
        raise Refused(f"Bits value has {number.bit_length()} bits, more than its length {length}")
    return format(number, f"0{length}b")


def ewkb_hex(wkb: bytes, srid: int | None) -> str:
    """EWKB hex of a WKB (or already EWKB, as PostgreSQL's connector sends) and its SRID."""
    if len(wkb) < 5 or wkb[0] not in (0, 1):
        raise Refused("geometry 'wkb' is not WKB (it starts with a byte order, then a type)")
    order = "<" if wkb[0] == 1 else ">"
    (kind,) = struct.unpack(order + "I", wkb[1:5])
    if kind & _EWKB_SRID or not srid:
        return wkb.hex().upper()  # the SRID is already in it, or there is none (MySQL's 0)
    head = wkb[:1] + struct.pack(order + "I", kind | _EWKB_SRID) + struct.pack(order + "i", srid)
    return (head + wkb[5:]).hex().upper()


def _geometry(value: Any, schema: Mapping[str, Any]) -> str:
    if not isinstance(value, dict):
        raise Refused(f"{kind_of(value)} where a geometry is {{wkb, srid}}")
    srid = value.get("srid")
    if srid is not None:
        srid = expect_int(srid, "geometry srid")
    if value.get("wkb") is None and "x" in value and "y" in value:
        # A Point may come without its WKB: build it as Debezium's Point does.
        x, y = (float(expect_number(value[axis])) for axis in ("x", "y"))
        wkb = struct.pack("<BIdd", 1, 1, x, y)
    else:
        wkb = base64_bytes(value.get("wkb"))
    return ewkb_hex(wkb, srid)


def expect_number(value: Any) -> int | float | Decimal:
    if isinstance(value, bool) or not isinstance(value, int | float | Decimal):
        raise Refused(f"{kind_of(value)} where a point coordinate is a number")
    return value


DECODERS: dict[str, Callable[[Any, Mapping[str, Any]], Any]] = {
    "org.apache.kafka.connect.data.Decimal": _decimal,
    "io.debezium.data.VariableScaleDecimal": _variable_scale_decimal,
    "io.debezium.data.Uuid": _uuid,
    "io.debezium.data.Json": _text,
    "io.debezium.data.Xml": _text,
    "io.debezium.data.Enum": _text,
    "io.debezium.data.EnumSet": _text,
    "io.debezium.data.Ltree": _text,
    "io.debezium.data.Bits": _bits,
    "io.debezium.data.geometry.Geometry": _geometry,
    "io.debezium.data.geometry.Geography": _geometry,
    "io.debezium.data.geometry.Point": _geometry,
}
