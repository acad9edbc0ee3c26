"""The identity of one DLQ queue, and its safe, reversible directory names."""

from __future__ import annotations

import hashlib
import re
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import PurePath
from typing import Any

# Characters kept as they are in directory names; everything else is %XX (UTF-8).
_SAFE = frozenset("abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789_-.")
_ESCAPE_RE = re.compile(r"%([0-9A-F]{2})")
# Keep directory names well below the usual 255-byte limit of filesystems.
MAX_COMPONENT = 200
_HASH_MARK = "~"

SOURCE_PREFIX = "source_"
TABLE_PREFIX = "table_"
DEST_PREFIX = "dest_"
PARKED_LANE = "parked"
LANES = ("", PARKED_LANE)


def lone_surrogate_at(text: str) -> int | None:
    """Where ``text``'s first lone surrogate is, or None if it has none.

    A str can hold surrogate code points (JSON's ``"\\udc80"``, a file name
    Python could not decode); they have no UTF-8 form, so no UTF-8 file,
    connection or database identifier can take such a name.
    """
    try:
        text.encode("utf-8")
    except UnicodeEncodeError as error:
        return error.start
    return None


def lone_surrogate_problem(field: str, name: str) -> str | None:
    """Why ``name`` (the value of ``field``) cannot be used as a name, or None if it can.

    The one wording for every place that refuses a name holding a lone surrogate.
    """
    at = lone_surrogate_at(name)
    if at is None:
        return None
    return (
        f"'{field}' is not valid Unicode (lone surrogate {name[at]!r} at character {at}): {name!r}"
    )


def encode_name(name: str) -> str:
    """Encode any string as a safe directory-name fragment, reversibly.

    Letters, digits, ``_ - .`` stay readable; every other UTF-8 byte becomes
    ``%XX``. Names whose encoding is too long are cut and suffixed with a hash
    (``~`` never appears in an un-cut encoding); the full name is then kept in
    the queue's ``queue.json``.
    """
    if not name:
        raise ValueError("a queue name component must not be empty")
    encoded = "".join(
        ch if ch in _SAFE else "".join(f"%{b:02X}" for b in ch.encode("utf-8", "surrogatepass"))
        for ch in name
    )
    if len(encoded) <= MAX_COMPONENT:
        return encoded
    digest = hashlib.sha256(name.encode("utf-8", "surrogatepass")).hexdigest()[:16]
    cut = MAX_COMPONENT - 17
    # Never cut through a %XX escape.
    percent = encoded.rfind("%", cut - 2, cut)
    if percent != -1:
        cut = percent
    return encoded[:cut] + _HASH_MARK + digest


def decode_name(encoded: str) -> str | None:
    """Reverse ``encode_name``; None if ``encoded`` is not a canonical encoding or was cut."""
    if not encoded or _HASH_MARK in encoded:
        return None
    if any(ch not in _SAFE and ch != "%" for ch in encoded):
        return None
    try:
        raw = bytearray()
        i = 0
        while i < len(encoded):
            if encoded[i] == "%":
                match = _ESCAPE_RE.match(encoded, i)
                if not match:
                    return None
                raw.append(int(match.group(1), 16))
                i += 3
            else:
                raw.extend(encoded[i].encode("ascii"))
                i += 1
        name = raw.decode("utf-8", "surrogatepass")
    except (UnicodeDecodeError, ValueError):
        return None
    return name if encode_name(name) == encoded else None


class _HashSlot:
    """Holds QueueId's cached hash in a slot of its own, outside the dataclass fields.

    Outside, so that ``fields()``, ``asdict()``, ``replace()``, repr, equality
    and ordering of a QueueId are exactly what its four fields make them.
    """

    __slots__ = ("_hash",)
    _hash: int


_FIELDS = ("source_id", "table", "destination_id", "lane")


@dataclass(frozen=True, slots=True, order=True)
class QueueId(_HashSlot):
    """One queue: the events of one source table bound for one destination.

    Its hash is computed once: every enqueue looks its queue up in two dicts,
    and the generated ``__hash__`` (a Python call building a tuple) cost
    more than the lookups themselves. The value is the generated one's.
    """

    source_id: str
    table: str
    destination_id: str
    # "" is the queue itself; "parked" holds its parked (poison) messages,
    # stored in a sub-directory of the queue's directory.
    lane: str = ""

    def __post_init__(self) -> None:
        for field_name in ("source_id", "table", "destination_id"):
            value = getattr(self, field_name)
            if not isinstance(value, str) or not value:
                raise ValueError(f"QueueId.{field_name} must be a non-empty string, got {value!r}")
        if self.lane not in LANES:
            raise ValueError(f"QueueId.lane must be one of {LANES}, got {self.lane!r}")
        object.__setattr__(
            self, "_hash", hash((self.source_id, self.table, self.destination_id, self.lane))
        )

    def __hash__(self) -> int:
        return self._hash

    def __setstate__(self, state: list[str]) -> None:
        """Unpickling and copying: the fields, then the hash, computed in this process.

        (str hashes differ between processes: a pickled hash would be wrong.)
        """
        for name, value in zip(_FIELDS, state, strict=True):
            object.__setattr__(self, name, value)
        object.__setattr__(self, "_hash", hash(tuple(state)))

    def __str__(self) -> str:
        text = f"source_{self.source_id}/table_{self.table}/dest_{self.destination_id}"
        return f"{text}/{self.lane}" if self.lane else text

    @property
    def parked(self) -> QueueId:
        """The lane holding this queue's parked messages."""
        return QueueId(self.source_id, self.table, self.destination_id, PARKED_LANE)

    @property
    def main(self) -> QueueId:
        """The queue itself (for a parked lane: the queue it belongs to)."""
        if not self.lane:
            return self
        return QueueId(self.source_id, self.table, self.destination_id)

    @property
    def relative_path(self) -> PurePath:
        """``source_<id>/table_<name>/dest_<id>`` (each part encoded), plus the lane."""
        path = PurePath(
            SOURCE_PREFIX + encode_name(self.source_id),
            TABLE_PREFIX + encode_name(self.table),
            DEST_PREFIX + encode_name(self.destination_id),
        )
        return path / self.lane if self.lane else path

    def json_fields(self) -> dict[str, object]:
        """The names as JSON fields (``queue.json``, ``status.json``), exactly.

        JSON cannot tell a surrogate pair written as two code points from the
        character it encodes (both read back as the character), and any str
        is a valid name: such a name also goes as its code points, under
        ``exact_names``, which ``from_json_fields`` prefers.
        """
        fields: dict[str, object] = {
            "source_id": self.source_id,
            "table": self.table,
            "destination_id": self.destination_id,
        }
        names = (self.source_id, self.table, self.destination_id)
        if any(lone_surrogate_at(name) is not None for name in names):
            fields["exact_names"] = [[ord(c) for c in name] for name in names]
        return fields

    @classmethod
    def from_json_fields(cls, data: Mapping[str, Any]) -> QueueId:
        """The queue ``json_fields`` wrote; ValueError/KeyError/TypeError if it is not one."""
        exact = data.get("exact_names")
        if exact is not None:
            source, table, dest = ("".join(map(chr, codes)) for codes in exact)
            return cls(source, table, dest)
        return cls(str(data["source_id"]), str(data["table"]), str(data["destination_id"]))

    @classmethod
    def from_relative_path(cls, parts: tuple[str, str, str]) -> QueueId | None:
        """Parse directory names back; None when they are not canonical queue names."""
        prefixes = (SOURCE_PREFIX, TABLE_PREFIX, DEST_PREFIX)
        names: list[str] = []
        for part, prefix in zip(parts, prefixes, strict=True):
            if not part.startswith(prefix):
                return None
            name = decode_name(part[len(prefix) :])
            if name is None:
                return None
            names.append(name)
        return cls(*names)

    @classmethod
    def parse(cls, text: str) -> QueueId:
        """Parse ``source_1/table_users/dest_2`` or ``1/users/2`` (operator input).

        The table part may itself contain ``/``: the first and last segments are
        the source and destination ids.
        """
        pieces = text.strip().strip("/").split("/")
        if len(pieces) < 3:
            raise ValueError(
                f"not a queue name: {text!r}; expected source_<id>/table_<name>/dest_<id>"
            )
        source, table, dest = pieces[0], "/".join(pieces[1:-1]), pieces[-1]
        source = source.removeprefix(SOURCE_PREFIX)
        table = table.removeprefix(TABLE_PREFIX)
        dest = dest.removeprefix(DEST_PREFIX)
        return cls(source, table, dest)
