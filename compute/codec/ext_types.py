"""How the DLQ message format stores values msgpack has no type for (extension types).

Decimal, datetime, date, time and UUID, integers outside 64 bits, and tuples,
sets and frozensets each have an extension code, so every value comes back
exactly as it was (a tuple stays hashable, so it can be a map key). The codes
6 to 9 came later in version 2: older builds never wrote them, and messages
without them read the same.
"""

from __future__ import annotations

import datetime as dt
import functools
import uuid
from collections.abc import Mapping
from decimal import Decimal
from enum import Enum
from typing import Any

import msgpack

_EXT_DECIMAL = 1
_EXT_DATETIME = 2
_EXT_DATE = 3
_EXT_TIME = 4
_EXT_UUID = 5
# Added later in version 2 (older builds never wrote them; this one reads both).
_EXT_BIGINT = 6  # an int outside 64 bits: two's-complement big-endian bytes
_EXT_TUPLE = 7  # the packed items, as a list
_EXT_SET = 8
_EXT_FROZENSET = 9


def pack_default(value: Any) -> Any:
    """What msgpack cannot pack itself (the packer is strict: subclasses come here too).

    Called only for such values, so rows of plain JSON-like values never pay for it.
    """
    if isinstance(value, Enum):  # Operation, FailureKind: their stored value
        return value._value_
    if isinstance(value, Decimal):
        return msgpack.ExtType(_EXT_DECIMAL, str(value).encode())
    if isinstance(value, dt.datetime):
        return msgpack.ExtType(_EXT_DATETIME, value.isoformat().encode())
    if isinstance(value, dt.date):
        return msgpack.ExtType(_EXT_DATE, value.isoformat().encode())
    if isinstance(value, dt.time):
        return msgpack.ExtType(_EXT_TIME, value.isoformat().encode())
    if isinstance(value, uuid.UUID):
        return msgpack.ExtType(_EXT_UUID, value.bytes)
    if isinstance(value, int):
        if type(value) is not int:  # an IntEnum or other subclass: as the number
            return int(value)
        # Out of msgpack's 64 bits: the packer calls this only then.
        size = (value.bit_length() + 8) // 8  # + 1 bit for the sign, rounded up
        return msgpack.ExtType(_EXT_BIGINT, value.to_bytes(size, "big", signed=True))
    if isinstance(value, float):
        return float(value)
    if isinstance(value, str):
        return str(value)
    if isinstance(value, bytes | bytearray | memoryview):
        return bytes(value)
    if isinstance(value, tuple):
        return msgpack.ExtType(_EXT_TUPLE, packb(list(value)))
    if isinstance(value, frozenset):
        return msgpack.ExtType(_EXT_FROZENSET, packb(list(value)))
    if isinstance(value, set):
        return msgpack.ExtType(_EXT_SET, packb(list(value)))
    if isinstance(value, Mapping):
        return dict(value)
    if isinstance(value, list):
        return list(value)
    raise TypeError(f"cannot store a value of type {type(value).__name__} in a DLQ message")


def packb(items: list[Any]) -> bytes:
    """``items`` packed by a Packer of its own, lone surrogates too (the slow path).

    Nested collections come here: this thread's Packer is in the middle of a message.
    """
    return msgpack.packb(
        items,
        default=pack_default,
        use_bin_type=True,
        strict_types=True,
        unicode_errors="surrogatepass",
    )


_datetime_from = dt.datetime.fromisoformat
_date_from = dt.date.fromisoformat
_time_from = dt.time.fromisoformat


def _ext_hook(code: int, data: bytes) -> Any:
    # Called once per Decimal or time value of every replayed row: names bound
    # at module level, the most common types first.
    if code == _EXT_DECIMAL:
        return Decimal(data.decode())
    if code == _EXT_DATETIME:
        return _datetime_from(data.decode())
    if code == _EXT_DATE:
        return _date_from(data.decode())
    if code == _EXT_TIME:
        return _time_from(data.decode())
    if code == _EXT_UUID:
        return uuid.UUID(bytes=data)
    if code == _EXT_BIGINT:
        if not data:
            raise ValueError("empty integer")
        return int.from_bytes(data, "big", signed=True)
    if code == _EXT_TUPLE:
        return tuple(_unpack_items(data))
    if code == _EXT_SET:
        return set(_unpack_items(data))
    if code == _EXT_FROZENSET:
        return frozenset(_unpack_items(data))
    raise ValueError(f"unknown extension type {code}")


def _unpack_items(data: bytes) -> list[Any]:
    items = unpackb(data)
    if type(items) is not list:
        raise ValueError("a collection extension does not hold an array")
    return items


# unpackb with this format's options bound once (a C partial, not a Python wrapper).
unpackb = functools.partial(
    msgpack.unpackb,
    ext_hook=_ext_hook,
    raw=False,
    # Non-str map keys and lone surrogates: whatever the encoder accepts.
    strict_map_key=False,
    unicode_errors="surrogatepass",
)
