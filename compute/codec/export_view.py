"""The DLQ export format: JSON lines, readable and lossless.

Line 1 is a header::

    {"format": "rosetta-dlq-export", "version": 1, "queue": "source_1/table_t/dest_2",
     "lane": "", "count": 2, "exported_at": "2026-11-23T18:00:00.000Z"}

then one line per message, in queue order, holding every field of
``DLQMessage``. JSON has no Decimal, datetime, UUID, bytes, NaN or non-string
map keys, so such values are tagged: ``{"$decimal": "10.50"}``,
``{"$datetime": "2026-01-02T03:04:05.000001+02:00"}``, ``{"$date": ...}``,
``{"$time": ...}``, ``{"$uuid": ...}``, ``{"$bytes": "<base64>"}``,
``{"$float": "nan"}``, ``{"$tuple": [...]}``, ``{"$set": [...]}``,
``{"$frozenset": [...]}`` and ``{"$map": [[key, value], ...]}`` (a map with a
non-string key, or a key starting with ``$``). Integers of any size are JSON
numbers (never floats), except those too long for Python's int-to-text limit
(over 4,300 digits), which are ``{"$int": "<hex>"}``. Decoding gives back
values of the exact types and equal values, so the message encodes to the
same bytes.
"""

from __future__ import annotations

import base64
import datetime as dt
import math
import uuid
from collections.abc import Callable
from decimal import Decimal
from typing import Any

from compute.codec.failure_context import FailureContext
from compute.codec.message import DLQMessage
from compute.codec.parts import KINDS, OPERATIONS
from compute.queue_id import LANES, QueueId
from destinations.records import ChangeRecord, SourcePosition

EXPORT_FORMAT = "rosetta-dlq-export"
EXPORT_VERSION = 1


def tag(value: Any) -> Any:
    """``value`` as JSON-safe data, non-JSON types tagged (see the module docstring)."""
    if value is None or isinstance(value, bool | str):
        return value
    if isinstance(value, int):
        # Python refuses to print (or parse) ints of over 4,300 digits; hex has no limit.
        return value if value.bit_length() < _MAX_DECIMAL_BITS else {"$int": hex(value)}
    if isinstance(value, float):
        return value if math.isfinite(value) else {"$float": repr(value)}
    if isinstance(value, Decimal):
        return {"$decimal": str(value)}
    if isinstance(value, dt.datetime):
        return {"$datetime": value.isoformat()}
    if isinstance(value, dt.date):
        return {"$date": value.isoformat()}
    if isinstance(value, dt.time):
        return {"$time": value.isoformat()}
    if isinstance(value, uuid.UUID):
        return {"$uuid": str(value)}
    if isinstance(value, bytes | bytearray | memoryview):
        return {"$bytes": base64.b64encode(bytes(value)).decode("ascii")}
    if isinstance(value, list):
        return [tag(v) for v in value]
    if isinstance(value, tuple):
        return {"$tuple": [tag(v) for v in value]}
    if isinstance(value, frozenset):
        return {"$frozenset": [tag(v) for v in value]}
    if isinstance(value, set):
        return {"$set": [tag(v) for v in value]}
    if isinstance(value, dict):
        if all(isinstance(k, str) and not k.startswith("$") for k in value):
            return {k: tag(v) for k, v in value.items()}
        return {"$map": [[tag(k), tag(v)] for k, v in value.items()]}
    raise ValueError(f"cannot export a value of type {type(value).__name__}")


# Well below 4,300 decimal digits (about 14,280 bits): such ints print as JSON numbers.
_MAX_DECIMAL_BITS = 14_000

_UNTAG: dict[str, Callable[[str], Any]] = {
    "$decimal": Decimal,
    "$datetime": dt.datetime.fromisoformat,
    "$date": dt.date.fromisoformat,
    "$time": dt.time.fromisoformat,
    "$uuid": uuid.UUID,
    "$bytes": lambda text: base64.b64decode(text, validate=True),
    "$float": float,
    "$int": lambda text: int(text, 16),
}
_COLLECTIONS: dict[str, Callable[[list[Any]], Any]] = {
    "$tuple": tuple,
    "$set": set,
    "$frozenset": frozenset,
}


def untag(value: Any) -> Any:
    """Reverse ``tag``; raises ValueError on a malformed tag."""
    if isinstance(value, list):
        return [untag(v) for v in value]
    if not isinstance(value, dict):
        return value
    if len(value) == 1:
        ((name, inner),) = value.items()
        if name == "$map":
            if not isinstance(inner, list) or not all(
                isinstance(p, list) and len(p) == 2 for p in inner
            ):
                raise ValueError("$map must hold [key, value] pairs")
            result: dict[Any, Any] = {}
            for k, v in inner:
                key = untag(k)
                if isinstance(key, list):
                    key = tuple(key)
                result[key] = untag(v)
            return result
        if name in _COLLECTIONS:
            if not isinstance(inner, list):
                raise ValueError(f"{name} must hold a list")
            try:
                return _COLLECTIONS[name]([untag(v) for v in inner])
            except TypeError as error:  # an unhashable item in a set
                raise ValueError(f"bad {name} value: {error}") from None
        if name in _UNTAG:
            if not isinstance(inner, str):
                raise ValueError(f"{name} must hold a string")
            try:
                return _UNTAG[name](inner)
            except Exception as error:  # each parser raises its own type for bad text
                raise ValueError(f"bad {name} value {inner!r}: {error}") from None
    return {k: untag(v) for k, v in value.items()}


def header(lane: QueueId, count: int, exported_at: str) -> dict[str, Any]:
    return {
        "format": EXPORT_FORMAT,
        "version": EXPORT_VERSION,
        "queue": str(lane.main),
        "source_id": lane.source_id,
        "table": lane.table,
        "destination_id": lane.destination_id,
        "lane": lane.lane,
        "count": count,
        "exported_at": exported_at,
    }


def parse_header(data: Any) -> tuple[QueueId, int]:
    """(lane, count) from a header line; ValueError naming what is wrong."""
    if not isinstance(data, dict) or data.get("format") != EXPORT_FORMAT:
        raise ValueError(f"not a DLQ export header (expected format {EXPORT_FORMAT!r})")
    if data.get("version") != EXPORT_VERSION:
        raise ValueError(
            f"unsupported export version {data.get('version')!r} "
            f"(this build reads {EXPORT_VERSION})"
        )
    lane = data.get("lane", "")
    count = data.get("count")
    if lane not in LANES:
        raise ValueError(f"bad lane {lane!r}: expected one of {LANES}")
    if type(count) is not int or count < 0:
        raise ValueError(f"bad count {count!r}: expected a non-negative integer")
    try:
        queue = QueueId(data["source_id"], data["table"], data["destination_id"], lane)
    except (KeyError, ValueError) as error:
        raise ValueError(f"bad queue in header: {error}") from None
    return queue, count


def message_to_line(message: DLQMessage) -> dict[str, Any]:
    record, failure = message.record, message.failure
    line: dict[str, Any] = {
        "message_id": message.message_id,
        "enqueued_at": message.enqueued_at,
        "record": {
            "table": record.table,
            "op": record.op.value,
            "key": tag(dict(record.key)),
            "before": tag(record.before),
            "after": tag(record.after),
            "position": [tag(record.position[0]), tag(record.position[1])],
            "commit_ts": tag(record.commit_ts),
        },
        "failure": {
            "error_class": failure.error_class,
            "message": failure.message,
            "kind": failure.kind.value,
            "code": failure.code,
            "stack": failure.stack,
            "attempts": failure.attempts,
            "first_failure_at": failure.first_failure_at,
            "last_failure_at": failure.last_failure_at,
        },
    }
    if record.unchanged:
        # Only when there are some: lines of other changes stay as before.
        line["record"]["unchanged"] = list(record.unchanged)
    return line


def _typed(data: dict[str, Any], name: str, types: tuple[type, ...], optional: bool = False) -> Any:
    if name not in data:
        raise ValueError(f"missing field {name!r}")
    value = data[name]
    if value is None and optional:
        return None
    if type(value) is bool or not isinstance(value, types):
        accepted = " or ".join(t.__name__ for t in types)
        raise ValueError(f"field {name!r} must be {accepted}, got {type(value).__name__}")
    return value


def message_from_line(data: Any, queue: QueueId) -> DLQMessage:
    """The message a line holds, for ``queue``; ValueError naming the bad field."""
    if not isinstance(data, dict):
        raise ValueError("a message line must be a JSON object")
    record = _typed(data, "record", (dict,))
    failure = _typed(data, "failure", (dict,))
    op = _typed(record, "op", (str,))
    if op not in OPERATIONS:
        raise ValueError(f"field 'op' must be one of {sorted(OPERATIONS)}, got {op!r}")
    kind = _typed(failure, "kind", (str,))
    if kind not in KINDS:
        raise ValueError(f"field 'kind' must be one of {sorted(KINDS)}, got {kind!r}")
    key = untag(_typed(record, "key", (dict,)))
    if not all(isinstance(k, str) for k in key):
        raise ValueError("field 'key' must map column names (strings) to values")
    before = untag(_typed(record, "before", (dict,), optional=True))
    after = untag(_typed(record, "after", (dict,), optional=True))
    position = untag(_typed(record, "position", (list,)))
    if len(position) != 2 or not all(type(p) is int for p in position):
        raise ValueError("field 'position' must be [commit, seq] (two integers)")
    commit_ts = untag(record.get("commit_ts"))
    if commit_ts is not None and (
        type(commit_ts) is bool or not isinstance(commit_ts, int | float)
    ):
        raise ValueError("field 'commit_ts' must be a number or null")
    unchanged = record.get("unchanged", [])
    if not isinstance(unchanged, list) or not all(isinstance(c, str) for c in unchanged):
        raise ValueError("field 'unchanged' must be a list of column names")
    message_id = _typed(data, "message_id", (str,))
    if not message_id:
        raise ValueError("field 'message_id' must not be empty")
    return DLQMessage(
        message_id,
        queue.main,
        ChangeRecord(
            table=_typed(record, "table", (str,)),
            op=OPERATIONS[op],
            key=key,
            after=after,
            position=SourcePosition(commit=position[0], seq=position[1]),
            before=before,
            commit_ts=commit_ts,
            unchanged=tuple(unchanged),
        ),
        FailureContext(
            _typed(failure, "error_class", (str,)),
            _typed(failure, "message", (str,)),
            KINDS[kind],
            _typed(failure, "code", (str,), optional=True),
            _typed(failure, "stack", (str,)),
            _typed(failure, "attempts", (int,)),
            _typed(failure, "first_failure_at", (int, float)),
            _typed(failure, "last_failure_at", (int, float)),
        ),
        _typed(data, "enqueued_at", (int, float)),
    )
