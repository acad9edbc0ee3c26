"""Debezium's placeholders for a value it did not send (unchanged TOAST), in all their forms.

Debezium sends ``unavailable.value.placeholder`` (default
``__debezium_unavailable_value``) as: the text itself; its UTF-8 bytes
(base64 in JSON, hex with ``binary.handling.mode=hex``) for a binary column;
a one-item list of either for a text or binary array; the list of its byte
values for an integer array; ``[uuid3(bytes)]`` for a uuid array; and
``{text: text}`` for an hstore map.
"""

from __future__ import annotations

import base64
import hashlib
import uuid
from collections.abc import Collection, Mapping
from typing import Any, NamedTuple


class Placeholders(NamedTuple):
    """Every JSON form of the configured placeholders, for a quick membership test."""

    texts: frozenset[str]
    binary_texts: frozenset[str]  # base64, base64-url-safe and hex (lower) of the UTF-8 bytes
    byte_lists: tuple[tuple[int, ...], ...]
    uuids: frozenset[str]

    @classmethod
    def of(cls, placeholders: Collection[str]) -> Placeholders:
        return _cached(tuple(placeholders))

    def matches(self, value: Any, schema: Mapping[str, Any] | None) -> bool:
        """True if ``value`` is a placeholder in a form its field (schema or none) allows."""
        if isinstance(value, str):
            if value in self.texts:
                return True
            # With a schema only a bytes field carries base64; without one,
            # the binary column's type is not known here.
            binary = schema is None or schema.get("type") == "bytes"
            return binary and (value in self.binary_texts or value.lower() in self.binary_texts)
        if isinstance(value, list):
            if len(value) == 1 and isinstance(value[0], str):
                item = value[0]
                return item in self.texts or item in self.binary_texts or item in self.uuids
            return tuple(value) in self.byte_lists
        if isinstance(value, dict) and len(value) == 1:
            ((k, v),) = value.items()
            return k == v and k in self.texts
        return False


_CACHE: dict[tuple[str, ...], Placeholders] = {}


def _cached(texts: tuple[str, ...]) -> Placeholders:
    found = _CACHE.get(texts)
    if found is None:
        raw = [t.encode("utf-8") for t in texts]
        found = Placeholders(
            texts=frozenset(texts),
            binary_texts=frozenset(
                [base64.b64encode(b).decode("ascii") for b in raw]
                + [base64.urlsafe_b64encode(b).decode("ascii") for b in raw]
                + [b.hex() for b in raw]
            ),
            # Java's bytes are signed: (int) b of a UTF-8 byte over 127 is negative.
            byte_lists=tuple(tuple(x - 256 if x > 127 else x for x in b) for b in raw),
            uuids=frozenset(str(uuid.UUID(bytes=hashlib.md5(b).digest(), version=3)) for b in raw),
        )
        if len(_CACHE) < 64:  # a handful of configurations per process
            _CACHE[texts] = found
    return found
