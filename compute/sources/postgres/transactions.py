"""Turns decoded pgoutput messages into whole transactions of ChangeRecords with their positions."""

from __future__ import annotations

import logging
import struct
from collections import deque
from collections.abc import Collection
from typing import Any, NamedTuple

from compute.sources.postgres.pgoutput import (
    BEGIN_SIZE,
    COMMIT_SIZE,
    Begin,
    Commit,
    Delete,
    Insert,
    Message,
    Relation,
    RelationCache,
    Truncate,
    Update,
    parse_begin,
    parse_commit,
    parse_message,
)
from compute.sources.postgres.row_decoder import FAST_FAILURES, ColumnValueError, RowDecoder
from compute.sources.postgres.table_keys import is_listed
from destinations.records import ChangeRecord, Operation, SourcePosition

logger = logging.getLogger(__name__)

REJECTED_KEPT = 100

_unpack_relation_id = struct.Struct(">I").unpack_from
_BEGIN, _COMMIT, _INSERT, _UPDATE, _DELETE = 0x42, 0x43, 0x49, 0x55, 0x44  # 'B' 'C' 'I' 'U' 'D'
_NEW, _OLD_KEY = 0x4E, 0x4B  # 'N', 'K'
_INSERT_OP, _UPDATE_OP, _DELETE_OP = Operation.INSERT, Operation.UPDATE, Operation.DELETE
# NamedTuple construction without its Python-level __new__: two of them per change.
# It checks no field count: test_fast_path compares these records with feed's.
_new_tuple = tuple.__new__


class TransactionError(ValueError):
    """A change the source cannot turn into records (a change outside a transaction)."""


class Transaction(NamedTuple):
    """A committed transaction's changes; ``end_lsn`` is the position to confirm after them."""

    records: list[ChangeRecord]
    commit_lsn: int
    end_lsn: int


class RejectedChange(NamedTuple):
    """A change left out because a value of it cannot be decoded exactly, and why."""

    where: str  # "public.t at 0/16B3748#2"
    reason: str
    raw: str


class TransactionAssembler:
    """Feeds on messages in stream order; returns a ``Transaction`` at each Commit.

    Records carry ``SourcePosition(commit LSN, sequence in the transaction)``.
    A TOASTed value the server did not send (unchanged) is left out of
    ``after`` and named in ``unchanged``, so the destination keeps its value.
    An update that changes the key is a delete of the old key then an upsert
    of the new one, at consecutive sequence numbers of the same commit; when
    it has unchanged columns it is one update whose ``before`` holds the old
    key (``ChangeRecord.moved_from``), since the new row's values of those
    columns exist only in the old row. A truncate is one TRUNCATE record per
    table. ``tables`` (qualified names), when given, keeps only those tables'
    changes; ``append_only`` tables' changes carry no key. A change with a
    value no Python value holds exactly is rejected (kept in ``rejected``,
    counted) rather than written as something else.
    """

    def __init__(self, *, tables: Collection[str] = (), append_only: Collection[str] = ()) -> None:
        self.relations = RelationCache()
        self.tables = frozenset(tables)
        self.append_only = frozenset(append_only)
        self.rejected: deque[RejectedChange] = deque(maxlen=REJECTED_KEPT)
        self.rejected_count = 0
        self._decoders: dict[int, RowDecoder] = {}
        # relation id -> (decoder, append-only) of the tables whose changes are kept
        self._routes: dict[int, tuple[RowDecoder, bool]] = {}
        self._warned: set[tuple[str, str]] = set()
        self._begin: Begin | None = None
        self._commit_ts = 0.0  # the Begin's commit time as Unix seconds
        self._records: list[ChangeRecord] = []
        self._seq = 0

    @property
    def in_transaction(self) -> bool:
        return self._begin is not None

    def reset(self) -> None:
        """Forget a transaction cut off by a lost connection (the server sends it again)."""
        self._begin = None
        self._records = []
        self._seq = 0

    def feed(self, message: Message) -> Transaction | None:
        """Take one message; the finished transaction when ``message`` is its Commit."""
        if isinstance(message, Begin):
            self._start(message)
            return None
        if isinstance(message, Commit):
            return self._commit(message)
        if isinstance(message, Relation):
            if self.relations.update(message):
                decoder = RowDecoder(message, self._warned)
                self._decoders[message.relation_id] = decoder
                table = decoder.table
                if self.tables and table not in self.tables:
                    self._routes.pop(message.relation_id, None)
                else:
                    keyless = bool(self.append_only) and is_listed(table, self.append_only)
                    self._routes[message.relation_id] = (decoder, keyless)
                logger.info(
                    "relation shape: table=%s columns=%s key=%s",
                    message.qualified_name,
                    ",".join(c.name for c in message.columns),
                    ",".join(message.key_columns),
                )
            return None
        if isinstance(message, Insert | Update | Delete):
            self._change(message)
        elif isinstance(message, Truncate):
            self._truncate(message)
        # Origin, Type and logical messages carry no row change.
        return None

    def _start(self, begin: Begin) -> None:
        self._begin = begin
        self._commit_ts = begin.commit_ts
        self._records = []
        self._seq = 0

    def feed_bytes(self, data: bytes) -> Transaction | None:
        """``feed(parse_message(data))``, with the common row changes read straight from bytes.

        An insert, an update without old values or a delete by key of a kept
        table becomes its record without the message tuples in between; the
        records are the same. Anything else, and anything the direct read
        finds unusual (it then leaves no trace), takes the exact path.
        """
        kind = data[0] if data else None
        if kind == _BEGIN and len(data) >= BEGIN_SIZE:
            self._start(parse_begin(data))
            return None
        if kind == _COMMIT and len(data) >= COMMIT_SIZE:
            return self._commit(parse_commit(data))
        if (kind == _UPDATE or kind == _INSERT or kind == _DELETE) and len(data) > 6:
            route = self._routes.get(_unpack_relation_id(data, 1)[0])
            begin = self._begin
            if route is not None and begin is not None:
                decoder, keyless = route
                tuple_kind = data[5]
                seq = self._seq
                try:
                    if kind == _DELETE:
                        # Only by key: the old row ('O') has its before image on the exact path.
                        if tuple_kind == _OLD_KEY:
                            old, unchanged = decoder.read(data, 6)
                            # A key column sent as unchanged: the exact path refuses it.
                            if not unchanged:
                                key = {} if keyless else {k: old[k] for k in decoder.key_columns}
                                self._seq = seq + 1
                                self._fast_record(decoder.table, _DELETE_OP, key, None, seq, ())
                                return None
                    # Only without old values: old ones ('K', 'O') come with a key change.
                    elif tuple_kind == _NEW:
                        after, unchanged = decoder.read(data, 6)
                        key = {} if keyless else {k: after.get(k) for k in decoder.key_columns}
                        if kind == _INSERT:
                            self._seq = seq + 1
                            self._fast_record(decoder.table, _INSERT_OP, key, after, seq, ())
                        else:
                            # The sequence numbers of a key-changing update, which it is not.
                            self._seq = seq + 2
                            self._fast_record(
                                decoder.table, _UPDATE_OP, key, after, seq + 1, unchanged
                            )
                        return None
                except FAST_FAILURES:
                    pass
        return self.feed(parse_message(data))

    def _fast_record(
        self,
        table: str,
        op: Operation,
        key: dict[str, Any],
        after: dict[str, Any] | None,
        seq: int,
        unchanged: tuple[str, ...],
    ) -> None:
        begin = self._begin
        assert begin is not None
        position = _new_tuple(SourcePosition, (begin.final_lsn, seq))
        record = (table, op, key, after, position, None, self._commit_ts, unchanged)
        self._records.append(_new_tuple(ChangeRecord, record))

    def _commit(self, commit: Commit) -> Transaction:
        if self._begin is None:
            raise TransactionError(f"a Commit at {commit.commit_lsn} without its Begin")
        records = self._records
        self.reset()
        return Transaction(records, commit.commit_lsn, commit.end_lsn)

    def _truncate(self, message: Truncate) -> None:
        begin = self._begin
        if begin is None:
            raise TransactionError("a TRUNCATE outside a transaction (no Begin before it)")
        for relation_id in message.relation_ids:
            table = self.relations.get(relation_id).qualified_name
            if self.tables and table not in self.tables:
                continue
            position = SourcePosition(begin.final_lsn, self._seq)
            self._seq += 1
            logger.info("truncate: table=%s position=%s", table, position)
            self._records.append(
                ChangeRecord(table, Operation.TRUNCATE, {}, None, position, None, begin.commit_ts)
            )

    def _change(self, message: Insert | Update | Delete) -> None:
        begin = self._begin
        if begin is None:
            raise TransactionError("a row change outside a transaction (no Begin before it)")
        relation = self.relations.get(message.relation_id)
        table = relation.qualified_name
        if self.tables and table not in self.tables:
            return
        decoder = self._decoders[message.relation_id]
        # Sequence numbers are taken even by a rejected change, so that the
        # positions of the others do not depend on it.
        first = self._seq
        self._seq += 2 if isinstance(message, Update) else 1
        try:
            made = _records(decoder, message, begin, first)
        except ColumnValueError as error:
            self._reject(table, SourcePosition(begin.final_lsn, first), error, message)
            return
        if self.append_only and is_listed(table, self.append_only):
            # No key: each insert is a new row (the destination appends it).
            made = [record._replace(key={}) for record in made]
        self._records.extend(made)

    def _reject(
        self, table: str, position: SourcePosition, error: ColumnValueError, message: Any
    ) -> None:
        self.rejected_count += 1
        self.rejected.append(RejectedChange(f"{table} at {position}", str(error), repr(message)))
        logger.error(
            "change rejected, a value cannot be decoded exactly: table=%s position=%s error=%s",
            table,
            position,
            error,
        )


def _records(
    decoder: RowDecoder, message: Insert | Update | Delete, begin: Begin, seq: int
) -> list[ChangeRecord]:
    """The change's records at ``seq`` (and ``seq + 1`` for a key-changing update)."""
    table = decoder.table
    commit_ts = begin.commit_ts
    commit = begin.final_lsn
    if isinstance(message, Insert):
        after = decoder.decode(message.new).values
        key = {k: after.get(k) for k in decoder.key_columns}
        return [
            ChangeRecord(
                table, Operation.INSERT, key, after, SourcePosition(commit, seq), None, commit_ts
            )
        ]
    if isinstance(message, Delete):
        old_key = decoder.key(message.old)
        before = decoder.decode(message.old).values if message.old_kind == "O" else None
        return [
            ChangeRecord(
                table,
                Operation.DELETE,
                old_key,
                None,
                SourcePosition(commit, seq),
                before,
                commit_ts,
            )
        ]
    new = decoder.decode(message.new)
    after, unchanged = new.values, new.unchanged
    previous_key = decoder.key(message.old) if message.old is not None else None
    key = {k: after[k] if k in after else (previous_key or {}).get(k) for k in decoder.key_columns}
    before = (
        decoder.decode(message.old).values
        if message.old is not None and message.old_kind == "O"
        else None
    )
    out = []
    if previous_key is not None and previous_key != key and unchanged:
        # The unchanged values are only in the old row: the destination moves it
        # to the new key in place (a delete then an upsert would lose them).
        return [
            ChangeRecord(
                table,
                Operation.UPDATE,
                key,
                after,
                SourcePosition(commit, seq + 1),
                {**(before or {}), **previous_key},
                commit_ts,
                unchanged,
            )
        ]
    if previous_key is not None and previous_key != key:
        out.append(
            ChangeRecord(
                table,
                Operation.DELETE,
                previous_key,
                None,
                SourcePosition(commit, seq),
                None,
                commit_ts,
            )
        )
    out.append(
        ChangeRecord(
            table,
            Operation.UPDATE,
            key,
            after,
            SourcePosition(commit, seq + 1),
            before,
            commit_ts,
            unchanged,
        )
    )
    return out
