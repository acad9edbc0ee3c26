"""Turns decoded pgoutput messages into whole transactions of ChangeRecords with their positions."""

from __future__ import annotations

import logging
from collections.abc import Callable, Collection
from decimal import Decimal
from typing import Any, NamedTuple

from compute.sources.postgres.pgoutput import (
    UNCHANGED,
    Begin,
    Column,
    Commit,
    Delete,
    Insert,
    Message,
    Relation,
    RelationCache,
    Truncate,
    TupleData,
    Update,
)
from destinations.records import ChangeRecord, Operation, SourcePosition

logger = logging.getLogger(__name__)

# One column's text value -> the value the destinations write.
ValueConverter = Callable[[Relation, Column, str], Any]


class TransactionError(ValueError):
    """A change the source cannot turn into records (a truncate, a change outside a transaction)."""


class Transaction(NamedTuple):
    """A committed transaction's changes; ``end_lsn`` is the position to confirm after them."""

    records: list[ChangeRecord]
    commit_lsn: int
    end_lsn: int


def basic_value(relation: Relation, column: Column, text: str) -> Any:
    """Integers, bool and numeric by type OID; every other type stays PostgreSQL's text."""
    oid = column.type_oid
    if oid in (20, 21, 23):  # int8, int2, int4
        return int(text)
    if oid == 16:  # bool
        return text == "t"
    if oid == 1700:  # numeric
        return Decimal(text)
    return text


class TransactionAssembler:
    """Feeds on messages in stream order; returns a ``Transaction`` at each Commit.

    Records carry ``SourcePosition(commit LSN, sequence in the transaction)``.
    A TOASTed value the server did not send (unchanged) is left out of
    ``after``, so the destination keeps its value. An update that changes the
    key is a delete of the old key then an upsert of the new one, at
    consecutive sequence numbers of the same commit. ``tables`` (qualified
    names), when given, keeps only those tables' changes.
    """

    def __init__(
        self,
        *,
        tables: Collection[str] = (),
        convert: ValueConverter = basic_value,
    ) -> None:
        self.relations = RelationCache()
        self.tables = frozenset(tables)
        self._convert = convert
        self._begin: Begin | None = None
        self._records: list[ChangeRecord] = []

    @property
    def in_transaction(self) -> bool:
        return self._begin is not None

    def reset(self) -> None:
        """Forget a transaction cut off by a lost connection (the server sends it again)."""
        self._begin = None
        self._records = []

    def feed(self, message: Message) -> Transaction | None:
        """Take one message; the finished transaction when ``message`` is its Commit."""
        if isinstance(message, Begin):
            self._begin = message
            self._records = []
            return None
        if isinstance(message, Relation):
            if self.relations.update(message):
                logger.info(
                    "relation shape: table=%s columns=%s key=%s",
                    message.qualified_name,
                    ",".join(c.name for c in message.columns),
                    ",".join(message.key_columns),
                )
            return None
        if isinstance(message, Commit):
            return self._commit(message)
        if isinstance(message, Insert | Update | Delete):
            self._change(message)
        elif isinstance(message, Truncate):
            names = ", ".join(self.relations.get(i).qualified_name for i in message.relation_ids)
            raise TransactionError(
                f"TRUNCATE of {names}: this version cannot apply a truncate to the "
                "destinations, and dropping it would leave them holding rows the source no "
                "longer has; remove the table from the publication before truncating it, "
                "or copy it again after"
            )
        # Origin, Type and logical messages carry no row change.
        return None

    def _commit(self, commit: Commit) -> Transaction:
        if self._begin is None:
            raise TransactionError(f"a Commit at {commit.commit_lsn} without its Begin")
        records = self._records
        self.reset()
        return Transaction(records, commit.commit_lsn, commit.end_lsn)

    def _change(self, message: Insert | Update | Delete) -> None:
        begin = self._begin
        if begin is None:
            raise TransactionError("a row change outside a transaction (no Begin before it)")
        relation = self.relations.get(message.relation_id)
        table = relation.qualified_name
        if self.tables and table not in self.tables:
            return
        keys = relation.key_columns
        commit_ts = begin.commit_ts
        records = self._records

        def position() -> SourcePosition:
            return SourcePosition(begin.final_lsn, len(records))

        if isinstance(message, Insert):
            after = self._row(relation, message.new)
            records.append(
                ChangeRecord(
                    table, Operation.INSERT, _key(after, keys), after, position(), None, commit_ts
                )
            )
            return
        if isinstance(message, Delete):
            old = self._row(relation, message.old)
            before = old if message.old_kind == "O" else None
            records.append(
                ChangeRecord(
                    table, Operation.DELETE, _key(old, keys), None, position(), before, commit_ts
                )
            )
            return
        after = self._row(relation, message.new)
        old_row = self._row(relation, message.old) if message.old is not None else None
        key = {k: after[k] if k in after else (old_row or {}).get(k) for k in keys}
        if old_row is not None:
            old_key = _key(old_row, keys)
            if old_key != key:
                records.append(
                    ChangeRecord(
                        table, Operation.DELETE, old_key, None, position(), None, commit_ts
                    )
                )
        before = old_row if message.old_kind == "O" else None
        records.append(
            ChangeRecord(table, Operation.UPDATE, key, after, position(), before, commit_ts)
        )

    def _row(self, relation: Relation, values: TupleData | None) -> dict[str, Any]:
        """Column -> value; unchanged TOASTed columns are left out, never set to NULL."""
        row: dict[str, Any] = {}
        if values is None:
            return row
        convert = self._convert
        for column, value in zip(relation.columns, values, strict=False):
            if value is UNCHANGED:
                continue
            row[column.name] = None if value is None else convert(relation, column, value)
        return row


def _key(row: dict[str, Any], keys: tuple[str, ...]) -> dict[str, Any]:
    return {k: row.get(k) for k in keys}
