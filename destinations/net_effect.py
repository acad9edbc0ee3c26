"""Collapse a batch of changes to its net effect, and lay it out by column for bulk writes."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from itertools import compress, repeat
from operator import attrgetter, is_, itemgetter, methodcaller, not_
from typing import Any

from destinations.errors import PermanentDestinationError
from destinations.records import ChangeRecord, Operation

_POSITION = attrgetter("position")
_KEY = attrgetter("key")
_AFTER = attrgetter("after")
_OP = attrgetter("op")
_VALUES = methodcaller("values")


def net_effect(records: Sequence[ChangeRecord]) -> list[ChangeRecord]:
    """One change per key with the effect of all its changes, in source-position order.

    The sort is stable, so changes with equal positions keep their batch order.
    The last change of a key wins; when an upsert follows an upsert whose row
    had columns it lacks (partial rows), the earlier values of those columns
    are carried into it, so collapsing never loses a column. (A delete then a
    partial re-insert of one key in one batch leaves the target's other
    columns as they were; sources that send full rows, like Debezium, never
    meet this.)
    """
    ordered = sorted(records, key=_POSITION)
    # Built with C-level map/zip: this runs once per record of every batch.
    keys = _key_values(ordered)
    latest = dict(zip(keys, ordered, strict=True))  # a later change replaces an earlier one
    if len(latest) == len(ordered):
        return list(latest.values())
    return _collapse(keys, ordered)


def _key_values(ordered: list[ChangeRecord]) -> list[Any]:
    """Each record's key: the bare value for the usual one-column key, else a tuple."""
    key_maps = list(map(_KEY, ordered))
    first = key_maps[0] if key_maps else {}
    if len(first) == 1 and set(map(len, key_maps)) == {1}:
        try:
            return list(map(itemgetter(next(iter(first))), key_maps))
        except KeyError:
            pass  # another key column name: the general path says so later
    keys = list(map(tuple, map(_VALUES, key_maps)))
    if () in keys:
        bad = ordered[keys.index(())]
        raise PermanentDestinationError(
            f"change without a primary key: table={bad.table} position={bad.position}"
        )
    return keys


def _collapse(keys: list[Any], ordered: list[ChangeRecord]) -> list[ChangeRecord]:
    """The slow path, for batches that change some key more than once."""
    latest: dict[Any, ChangeRecord] = {}
    for key, record in zip(keys, ordered, strict=True):
        previous = latest.get(key)
        if (
            previous is not None
            and previous.after is not None
            and record.after is not None
            and previous.op is not Operation.DELETE
            and record.op is not Operation.DELETE
            and not record.after.keys() >= previous.after.keys()
        ):
            record = record._replace(after={**previous.after, **record.after})
        latest[key] = record
    return list(latest.values())


@dataclass
class ColumnBatch:
    """Rows that write the same columns, stored column by column."""

    columns: tuple[str, ...]
    data: list[list[Any]]  # data[i] holds the values of columns[i], one per row
    records: list[ChangeRecord]

    def __len__(self) -> int:
        return len(self.records)

    def rows(self) -> list[tuple[Any, ...]]:
        return list(zip(*self.data, strict=True))


@dataclass
class BatchLayout:
    """A net-effect batch split into upserts (grouped by column set) and deletes."""

    keys: tuple[str, ...]
    upserts: list[ColumnBatch]
    deletes: ColumnBatch  # columns are the keys

    def __len__(self) -> int:
        return len(self.deletes) + sum(len(group) for group in self.upserts)


def layout(changes: list[ChangeRecord]) -> BatchLayout:
    """Group net changes by the columns they write; ``PermanentDestinationError`` if malformed.

    The usual batch writes one column set; several appear when a source adds a
    column mid-batch or sends partial rows, and each set is applied on its own
    so that a missing column is left alone rather than set to NULL. This runs
    for every record of every batch, so the common case stays in C-level
    ``map``/``itemgetter`` calls.
    """
    keys = tuple(changes[0].key)
    is_delete = list(map(is_, map(_OP, changes), repeat(Operation.DELETE)))
    if True in is_delete:
        deletes = list(compress(changes, is_delete))
        upserts = list(compress(changes, map(not_, is_delete)))
    else:
        deletes, upserts = [], changes
    try:
        if set(map(len, map(_KEY, changes))) != {len(keys)}:
            raise KeyError(keys)
        delete_batch = ColumnBatch(keys, _key_columns(deletes, keys), deletes)
    except KeyError:
        shapes = sorted({tuple(c.key) for c in changes})
        raise PermanentDestinationError(
            f"records of one batch have different key columns: {shapes}"
        ) from None
    afters = list(map(_AFTER, upserts))
    if None in afters:
        bad = upserts[afters.index(None)]
        raise PermanentDestinationError(
            f"{bad.op.name.lower()} without a row image: table={bad.table} "
            f"key={dict(bad.key)} position={bad.position}"
        )
    if not upserts:
        return BatchLayout(keys, [], delete_batch)
    shape = tuple(afters[0])
    if set(map(len, afters)) == {len(shape)}:
        try:  # same length and every first-row column present: one column set
            return BatchLayout(keys, [_upsert_batch(shape, keys, upserts)], delete_batch)
        except KeyError:
            pass
    return BatchLayout(keys, _grouped(keys, afters, upserts), delete_batch)


def _grouped(
    keys: tuple[str, ...], afters: list[Mapping[str, Any]], upserts: list[ChangeRecord]
) -> list[ColumnBatch]:
    groups: dict[frozenset[str], tuple[tuple[str, ...], list[ChangeRecord]]] = {}
    for after, change in zip(afters, upserts, strict=True):
        shape = frozenset(after)
        group = groups.get(shape)
        if group is None:
            group = groups[shape] = (tuple(after), [])
        group[1].append(change)
    return [_upsert_batch(shape, keys, members) for shape, members in groups.values()]


def _upsert_batch(
    shape: tuple[str, ...], keys: tuple[str, ...], members: list[ChangeRecord]
) -> ColumnBatch:
    """Columns of ``members``, whose rows all have the columns ``shape``.

    Key columns absent from the row image are taken from the record's key.
    Raises KeyError if a row lacks one of the columns.
    """
    afters = list(map(_AFTER, members))
    data = [list(map(itemgetter(c), afters)) for c in shape]
    missing = tuple(k for k in keys if k not in shape)
    if missing:
        data += _key_columns(members, missing)
    return ColumnBatch(shape + missing, data, members)


def _key_columns(changes: list[ChangeRecord], keys: tuple[str, ...]) -> list[list[Any]]:
    key_dicts = list(map(_KEY, changes))
    return [list(map(itemgetter(k), key_dicts)) for k in keys]


def positions(changes: list[ChangeRecord]) -> tuple[list[int], list[int]]:
    """The commit and sequence columns of ``changes``."""
    if not changes:
        return [], []
    commits, seqs = zip(*map(_POSITION, changes), strict=True)
    return list(commits), list(seqs)
