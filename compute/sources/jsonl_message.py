"""One input line as a Kafka message: its key and its value, in the shapes kcat prints.

* A plain JSON value: the event (no message key).
* ``kcat -J``: ``{"topic": ..., "partition": ..., "offset": ..., "tstype": ...,
  "ts": ..., "key": "<JSON text>" or null, "payload": "<JSON text>" or null}``;
  the key and payload are strings holding JSON (or JSON itself, with kcat's
  JSON deserializer).
* ``kcat -f '%k\\t%s\\n'``: the key's JSON, a TAB, the value's JSON; an empty
  part or ``NULL`` (``-Z``) is null.

A key in its own schema envelope (``{"schema": ..., "payload": {...}}``) is
unwrapped; its schema's fields are kept to decode the key's values.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any, NamedTuple

from compute.sources.jsonl_event import EventRejected, parse_json

_KCAT_FIELDS = ("topic", "partition", "offset")
_NULL_TEXTS = ("", "NULL")


class Message(NamedTuple):
    """``key`` None: the line carries no message key (or a null one)."""

    key: Any
    key_fields: Sequence[Mapping[str, Any]] | None
    value: Any


def split_message(text: str) -> Message:
    """The key and value of a non-blank line; ``EventRejected`` when neither shape fits."""
    try:
        doc = parse_json(text)
    except EventRejected as whole:
        if "\t" not in text:
            raise
        return _tab_separated(text, whole)
    if isinstance(doc, dict) and all(f in doc for f in _KCAT_FIELDS) and "payload" in doc:
        for error in ("key_error", "payload_error"):
            if error in doc:
                raise EventRejected(f"kcat could not deserialize the message: {doc[error]}")
        key, fields = unwrap_key(_embedded(doc, "key"))
        return Message(key, fields, _embedded(doc, "payload"))
    if text.rstrip("\r\n").endswith("\t") and not (isinstance(doc, dict) and "op" in doc):
        # ``key TAB`` and nothing: JSON allows the TAB as trailing whitespace, but
        # kcat printed a key and a null value (a tombstone).
        key, fields = unwrap_key(doc)
        return Message(key, fields, None)
    return Message(None, None, doc)


def unwrap_key(key: Any) -> tuple[Any, Sequence[Mapping[str, Any]] | None]:
    """A key without its schema envelope, and the fields of that schema (None if none)."""
    if isinstance(key, dict) and set(key) == {"schema", "payload"}:
        schema = key["schema"]
        fields = schema.get("fields") if isinstance(schema, dict) else None
        return key["payload"], fields if isinstance(fields, list) else None
    return key, None


def is_tombstone(value: Any) -> bool:
    """A Kafka tombstone: a null value, or a schema envelope whose payload is null."""
    if value is None:
        return True
    return (
        isinstance(value, dict)
        and "payload" in value
        and value["payload"] is None
        and "op" not in value
        and set(value) <= {"schema", "payload"}
    )


def _embedded(doc: dict[str, Any], field: str) -> Any:
    value = doc.get(field)
    if not isinstance(value, str):
        return value
    try:
        return parse_json(value)
    except EventRejected as exc:
        raise EventRejected(f"kcat '{field}' does not hold JSON: {exc}") from None


def _tab_separated(text: str, whole: EventRejected) -> Message:
    """``key TAB value``; the first TAB where both sides are JSON (or null) splits them."""
    line = text.rstrip("\r\n")
    start = 0
    while (tab := line.find("\t", start)) >= 0:
        start = tab + 1
        try:
            key = _part(line[:tab])
            value = _part(line[tab + 1 :])
        except EventRejected:
            continue
        unwrapped, fields = unwrap_key(key)
        return Message(unwrapped, fields, value)
    raise EventRejected(f"{whole} (nor a message key, a TAB and a value, each JSON)")


def _part(text: str) -> Any:
    stripped = text.strip(" ")
    return None if stripped in _NULL_TEXTS else parse_json(stripped)
