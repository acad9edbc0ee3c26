"""Parses PostgreSQL's ``pgoutput`` logical replication messages (protocol version 1).

The input is one message as the replication stream carries it (psycopg2's
``LogicalReplicationConnection`` with ``decode=False`` gives it as bytes):
a one-byte type followed by big-endian fields. Each message becomes a small
NamedTuple. Column values stay as PostgreSQL's text output (``str``); ``None``
is SQL NULL and ``UNCHANGED`` a TOASTed value the server did not send because
the change did not touch it, which must never be taken for NULL.

Protocol version 1 has no streamed (in-progress) transactions, so no message
carries a transaction id except Begin.
"""

from __future__ import annotations

import enum
import struct
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from typing import TYPE_CHECKING, NamedTuple

if TYPE_CHECKING:
    from compute.sources.postgres.row_decoder import RowDecoder

PG_EPOCH = datetime(2000, 1, 1, tzinfo=UTC)
_PG_EPOCH_UNIX = PG_EPOCH.timestamp()

_INT8 = struct.Struct(">b")
_INT16 = struct.Struct(">h")
_INT32 = struct.Struct(">i")
_UINT32 = struct.Struct(">I")
_BEGIN = struct.Struct(">QqI")  # final LSN, commit time, xid
_COMMIT = struct.Struct(">BQQq")  # flags, commit LSN, end LSN, commit time
_COLUMN_TAIL = struct.Struct(">Ii")  # type OID, type modifier
_MESSAGE_HEAD = struct.Struct(">BQ")  # flags, LSN


class PgOutputError(ValueError):
    """A message that is not valid ``pgoutput`` protocol version 1."""


class Unchanged(enum.Enum):
    """The type of ``UNCHANGED``: a TOASTed value the server left out (``'u'``)."""

    UNCHANGED = "u"

    def __repr__(self) -> str:
        return "UNCHANGED"


UNCHANGED = Unchanged.UNCHANGED

# One column value of a tuple: text output, NULL, or not sent (unchanged TOAST).
Field = str | None | Unchanged
TupleData = tuple[Field, ...]


def pg_time(micros: int) -> datetime:
    """A PostgreSQL timestamp (microseconds since 2000-01-01 UTC) as an aware UTC datetime."""
    return PG_EPOCH + timedelta(microseconds=micros)


class Begin(NamedTuple):
    """A transaction starts; ``final_lsn`` is its commit record's LSN."""

    final_lsn: int
    commit_micros: int  # microseconds since 2000-01-01 UTC
    xid: int

    @property
    def commit_time(self) -> datetime:
        return pg_time(self.commit_micros)

    @property
    def commit_ts(self) -> float:
        """The commit time as Unix seconds."""
        return _PG_EPOCH_UNIX + self.commit_micros / 1_000_000


class Commit(NamedTuple):
    """A transaction ends; ``end_lsn`` is where the stream continues after it."""

    flags: int
    commit_lsn: int
    end_lsn: int
    commit_micros: int  # the same time as the Begin's: read it there


class Origin(NamedTuple):
    """The transaction came from another node (replication origin); informational."""

    commit_lsn: int
    name: str


class Column(NamedTuple):
    """One column of a Relation message."""

    name: str
    type_oid: int
    typmod: int
    key: bool  # part of the replica identity (the primary key by default)


class Relation(NamedTuple):
    """The shape of a table, sent before its first change and again after it changes."""

    relation_id: int
    namespace: str  # '' stands for pg_catalog
    name: str
    replica_identity: str  # 'd' default (primary key), 'n' nothing, 'f' full, 'i' index
    columns: tuple[Column, ...]

    @property
    def qualified_name(self) -> str:
        return f"{self.namespace or 'pg_catalog'}.{self.name}"

    @property
    def key_columns(self) -> tuple[str, ...]:
        return tuple(column.name for column in self.columns if column.key)


class Type(NamedTuple):
    """A non-builtin data type's name, sent before a Relation that uses it."""

    type_oid: int
    namespace: str
    name: str


class Insert(NamedTuple):
    relation_id: int
    new: TupleData


class Update(NamedTuple):
    """``old`` is the old key ('K', the key changed) or old row ('O', replica identity full)."""

    relation_id: int
    old_kind: str | None  # 'K', 'O', or None when the server sent no old values
    old: TupleData | None
    new: TupleData


class Delete(NamedTuple):
    """``old`` holds the key columns ('K'; others are NULL) or the whole old row ('O')."""

    relation_id: int
    old_kind: str
    old: TupleData


class Truncate(NamedTuple):
    relation_ids: tuple[int, ...]
    cascade: bool
    restart_identity: bool


class LogicalMessage(NamedTuple):
    """A ``pg_logical_emit_message`` payload; carries no row change."""

    transactional: bool
    lsn: int
    prefix: str
    content: bytes


Message = (
    Begin | Commit | Origin | Relation | Type | Insert | Update | Delete | Truncate | LogicalMessage
)

TRUNCATE_CASCADE = 1
TRUNCATE_RESTART_IDENTITY = 2


def _string(data: bytes, offset: int) -> tuple[str, int]:
    end = data.index(b"\0", offset)
    return data[offset:end].decode(), end + 1


def _tuple(data: bytes, offset: int) -> tuple[TupleData, int]:
    (count,) = _INT16.unpack_from(data, offset)
    offset += 2
    values: list[Field] = []
    append = values.append
    unpack_length = _INT32.unpack_from
    for _ in range(count):
        kind = data[offset]
        offset += 1
        if kind == 0x74:  # 't': text
            (length,) = unpack_length(data, offset)
            offset += 4
            end = offset + length
            if end > len(data):
                raise PgOutputError(f"a column value runs past the message end at byte {offset}")
            append(data[offset:end].decode())
            offset = end
        elif kind == 0x6E:  # 'n'
            append(None)
        elif kind == 0x75:  # 'u'
            append(UNCHANGED)
        elif kind == 0x62:  # 'b'
            raise PgOutputError(
                "a column value in binary format ('b'): start replication without the "
                "'binary' option; the decoder reads the text format"
            )
        else:
            raise PgOutputError(
                f"unknown column value kind {chr(kind)!r} at byte {offset - 1} "
                "(expected 'n', 'u' or 't')"
            )
    return tuple(values), offset


# Messages at least this long parse as Begin / Commit without fail.
BEGIN_SIZE = 1 + _BEGIN.size
COMMIT_SIZE = 1 + _COMMIT.size


def parse_begin(data: bytes) -> Begin:
    """The Begin message ``data`` (its type byte unchecked)."""
    return Begin(*_BEGIN.unpack_from(data, 1))


def parse_commit(data: bytes) -> Commit:
    """The Commit message ``data`` (its type byte unchecked)."""
    return Commit(*_COMMIT.unpack_from(data, 1))


def _origin(data: bytes) -> Origin:
    (lsn,) = struct.unpack_from(">Q", data, 1)
    name, _ = _string(data, 9)
    return Origin(lsn, name)


def _relation(data: bytes) -> Relation:
    (relation_id,) = _UINT32.unpack_from(data, 1)
    namespace, offset = _string(data, 5)
    name, offset = _string(data, offset)
    identity = chr(data[offset])
    (count,) = _INT16.unpack_from(data, offset + 1)
    offset += 3
    columns = []
    for _ in range(count):
        flags = data[offset]
        column, offset = _string(data, offset + 1)
        type_oid, typmod = _COLUMN_TAIL.unpack_from(data, offset)
        offset += 8
        columns.append(Column(column, type_oid, typmod, bool(flags & 1)))
    return Relation(relation_id, namespace, name, identity, tuple(columns))


def _type(data: bytes) -> Type:
    (type_oid,) = _UINT32.unpack_from(data, 1)
    namespace, offset = _string(data, 5)
    name, _ = _string(data, offset)
    return Type(type_oid, namespace, name)


def _insert(data: bytes) -> Insert:
    (relation_id,) = _UINT32.unpack_from(data, 1)
    if data[5] != 0x4E:  # 'N'
        raise PgOutputError(f"Insert: expected 'N' before the new tuple, got {data[5:6]!r}")
    new, _ = _tuple(data, 6)
    return Insert(relation_id, new)


def _update(data: bytes) -> Update:
    (relation_id,) = _UINT32.unpack_from(data, 1)
    kind = chr(data[5])
    old: TupleData | None = None
    old_kind: str | None = None
    offset = 5
    if kind in ("K", "O"):
        old_kind = kind
        old, offset = _tuple(data, 6)
        kind = chr(data[offset])
    if kind != "N":
        raise PgOutputError(f"Update: expected 'K', 'O' or 'N' at byte {offset}, got {kind!r}")
    new, _ = _tuple(data, offset + 1)
    return Update(relation_id, old_kind, old, new)


def _delete(data: bytes) -> Delete:
    (relation_id,) = _UINT32.unpack_from(data, 1)
    kind = chr(data[5])
    if kind not in ("K", "O"):
        raise PgOutputError(f"Delete: expected 'K' or 'O' before the old tuple, got {kind!r}")
    old, _ = _tuple(data, 6)
    return Delete(relation_id, kind, old)


def _truncate(data: bytes) -> Truncate:
    (count,) = _INT32.unpack_from(data, 1)
    options = data[5]
    ids = struct.unpack_from(f">{count}I", data, 6)
    return Truncate(
        ids, bool(options & TRUNCATE_CASCADE), bool(options & TRUNCATE_RESTART_IDENTITY)
    )


def _message(data: bytes) -> LogicalMessage:
    flags, lsn = _MESSAGE_HEAD.unpack_from(data, 1)
    prefix, offset = _string(data, 10)
    (length,) = _INT32.unpack_from(data, offset)
    content = bytes(data[offset + 4 : offset + 4 + length])
    return LogicalMessage(bool(flags & 1), lsn, prefix, content)


_PARSERS: dict[int, Callable[[bytes], Message]] = {
    ord("B"): parse_begin,
    ord("C"): parse_commit,
    ord("O"): _origin,
    ord("R"): _relation,
    ord("Y"): _type,
    ord("I"): _insert,
    ord("U"): _update,
    ord("D"): _delete,
    ord("T"): _truncate,
    ord("M"): _message,
}


def parse_message(data: bytes) -> Message:
    """One ``pgoutput`` message as a NamedTuple; PgOutputError if it is not one.

    Raises PgOutputError naming the problem for an unknown message type (the
    streaming and two-phase messages of protocol versions 2 to 4 among them)
    or a truncated or malformed message.
    """
    if not data:
        raise PgOutputError("an empty message (expected a pgoutput message type byte)")
    parser = _PARSERS.get(data[0])
    if parser is None:
        raise PgOutputError(
            f"unknown pgoutput message type {chr(data[0])!r}: protocol version 1 has "
            "B, C, O, R, Y, I, U, D, T and M (start replication with proto_version '1')"
        )
    try:
        return parser(data)
    except (struct.error, IndexError, ValueError) as error:
        if isinstance(error, PgOutputError):
            raise
        raise PgOutputError(
            f"a malformed {chr(data[0])!r} message ({len(data)} bytes): {error}"
        ) from error


class UnknownRelation(PgOutputError):
    """A change names a relation id no Relation message described."""


class RelationCache:
    """The latest Relation message per relation id; a new one replaces the shape.

    ``decoder(relation_id)`` gives the RowDecoder of the current shape.
    """

    def __init__(self) -> None:
        self._relations: dict[int, Relation] = {}
        self._decoders: dict[int, RowDecoder] = {}
        self._warned: set[tuple[str, str]] = set()

    def __len__(self) -> int:
        return len(self._relations)

    def __contains__(self, relation_id: object) -> bool:
        return relation_id in self._relations

    def update(self, relation: Relation) -> bool:
        """Store ``relation``; True when its shape differs from the one stored before."""
        previous = self._relations.get(relation.relation_id)
        self._relations[relation.relation_id] = relation
        if previous == relation:
            return False
        self._decoders.pop(relation.relation_id, None)
        return True

    def get(self, relation_id: int) -> Relation:
        try:
            return self._relations[relation_id]
        except KeyError:
            raise UnknownRelation(
                f"a change for relation id {relation_id}, which no Relation message described "
                "(the server sends one before a table's first change on each connection)"
            ) from None

    def decoder(self, relation_id: int) -> RowDecoder:
        """The decoder for the relation's current shape (built once per shape)."""
        decoder = self._decoders.get(relation_id)
        if decoder is None:
            # Imported here: the row decoder module imports this one's message types.
            from compute.sources.postgres.row_decoder import RowDecoder

            decoder = RowDecoder(self.get(relation_id), self._warned)
            self._decoders[relation_id] = decoder
        return decoder
