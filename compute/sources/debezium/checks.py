"""The refusals and the plain value checks every Debezium decoder shares."""

from __future__ import annotations

import base64
import binascii
from decimal import Decimal
from typing import Any


class ValueUndecodable(Exception):
    """A column's value cannot be known exactly; ``reason`` says why and what fixes it."""

    def __init__(self, column: str, reason: str) -> None:
        super().__init__(f"column {column!r}: {reason}")
        self.column = column
        self.reason = reason


class Refused(Exception):
    """A decoder's refusal of one value; ``decode_row`` adds the column's name."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


def kind_of(value: Any) -> str:
    """The JSON kind of a value, for messages."""
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "a boolean"
    if isinstance(value, int | float | Decimal):
        return "a number"
    if isinstance(value, str):
        return "a string"
    if isinstance(value, list):
        return "an array"
    return "an object"


def expect_int(value: Any, what: str) -> int:
    if isinstance(value, bool) or not isinstance(value, int):
        raise Refused(f"{kind_of(value)} where the schema says {what} (an integer)")
    return value


def expect_str(value: Any, what: str) -> str:
    if not isinstance(value, str):
        raise Refused(f"{kind_of(value)} where the schema says {what} (a string)")
    return value


def base64_bytes(value: Any) -> bytes:
    """The bytes of the JSON converter's base64 text."""
    text = expect_str(value, "bytes (base64)")
    try:
        return base64.b64decode(text, validate=True)
    except (binascii.Error, ValueError):
        raise Refused(f"bytes value is not base64: {text[:40]!r}") from None
