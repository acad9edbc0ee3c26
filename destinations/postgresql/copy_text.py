"""PostgreSQL text representations of Python values, plain and escaped for ``COPY``.

Both write paths use the same text (COPY for large batches, typed VALUES for
small ones), so a value lands the same way whichever path a batch takes.
"""

from __future__ import annotations

import io
import uuid
from collections.abc import Callable, Iterable, Iterator, Sequence
from datetime import date, datetime, time, timedelta
from decimal import Decimal
from typing import Any

from destinations.errors import PermanentDestinationError
from destinations.json_text import json_text

NULL = "\\N"  # COPY text format's NULL marker; an empty string stays an empty string

# Types whose str() PostgreSQL reads back as is: 'True', 'nan', '1E+2',
# '2024-01-02 03:04:05+00:00' and so on are all valid input.
_PLAIN: frozenset[type] = frozenset({int, float, bool, Decimal, uuid.UUID, datetime, date, time})
_NONE = type(None)
_SPECIAL = ("\\", "\t", "\n", "\r")


def escape(text: str) -> str:
    """Escape text for COPY: backslash escapes; tab and newline separate fields and rows."""
    if "\\" in text:
        text = text.replace("\\", "\\\\")
    if "\t" in text:
        text = text.replace("\t", "\\t")
    if "\n" in text:
        text = text.replace("\n", "\\n")
    if "\r" in text:
        text = text.replace("\r", "\\r")
    return text


def _bytes_text(value: bytes | bytearray | memoryview) -> str:
    return "\\x" + bytes(value).hex()  # bytea hex format


def _interval_text(value: timedelta) -> str:
    return f"{value.days} days {value.seconds} seconds {value.microseconds} microseconds"


def _json_text(value: Any) -> str:
    return json_text(value)


_TEXT: dict[type, Callable[[Any], str]] = {
    **{kind: str for kind in _PLAIN},
    str: str.__str__,  # the plain value, also for a (str, Enum)
    bytes: _bytes_text,
    bytearray: _bytes_text,
    memoryview: _bytes_text,
    timedelta: _interval_text,
    dict: _json_text,
    list: _json_text,
}


def _converter(value: Any) -> Callable[[Any], str]:
    converter = _TEXT.get(type(value))
    if converter is not None:
        return converter
    for kind, fallback in _TEXT.items():  # subclasses: IntEnum, StrEnum, ...
        if isinstance(value, kind):
            return fallback
    raise PermanentDestinationError(
        f"cannot write a value of type {type(value).__name__} to PostgreSQL: {value!r:.80}"
    )


def text_value(value: Any) -> str | None:
    """The value as text PostgreSQL's input functions accept; None stays None."""
    if value is None:
        return None
    return _converter(value)(value)


def copy_field(value: Any) -> str:
    """One COPY text-format field."""
    if value is None:
        return NULL
    text = _converter(value)(value)
    return text if type(value) in _PLAIN else escape(text)


def copy_column(values: Sequence[Any]) -> Sequence[str]:
    """COPY fields for a whole column; C-level fast paths for the common cases."""
    kinds = set(map(type, values))
    has_null = _NONE in kinds
    kinds.discard(_NONE)
    if kinds <= _PLAIN:
        texts = list(map(str, values))
    elif kinds == {str}:
        blob = "".join([v for v in values if v is not None] if has_null else values)
        if any(c in blob for c in _SPECIAL):
            return [NULL if v is None else escape(v) for v in values]
        texts = list(values)
    else:
        return [copy_field(v) for v in values]
    if has_null:
        texts = [NULL if v is None else t for v, t in zip(values, texts, strict=True)]
    return texts


def copy_lines(columns: Sequence[Sequence[str]]) -> str:
    """Join columns of COPY fields into text-format lines, newline-terminated."""
    if not columns or not columns[0]:
        return ""
    return "\n".join(map("\t".join, zip(*columns, strict=True))) + "\n"


class CopyReader(io.TextIOBase):
    """A file-like source for ``copy_expert`` that formats chunks as they are read.

    The server parses one chunk while Python formats the next, instead of
    waiting for the whole text to be built first.
    """

    def __init__(self, chunks: Iterable[str]) -> None:
        super().__init__()
        self._chunks: Iterator[str] = iter(chunks)
        # What formatting a chunk raised: psycopg2 reports it only as text in a
        # QueryCanceled (57014, which reads as transient), so the caller
        # raises this instead.
        self.error: Exception | None = None

    def readable(self) -> bool:
        return True

    def read(self, size: int | None = -1) -> str:
        try:
            for chunk in self._chunks:
                if chunk:
                    return chunk
        except Exception as error:
            self.error = error
            raise
        return ""
