"""The position guard: source positions on target rows, tombstones for deletes (no driver).

With ``position_guard=True`` the target table must have two ``bigint``
columns, ``_rosetta_commit`` (the source commit position, e.g. the commit LSN
as an integer) and ``_rosetta_seq`` (the change's order inside its
transaction). A change is applied only if it is newer than the row's stored
position, so an out-of-order replay can never regress a row. Deletes leave a
tombstone (key + position) in a side table ``<table>__rosetta_tombstones``
that the destination creates next to the target; an older insert replayed
after a delete is refused by it, so it cannot resurrect the row. The target
table itself keeps plain delete semantics (no soft-delete rows for readers to
filter). Rows written before the guard was on (NULL position) count as oldest.
"""

from __future__ import annotations

import hashlib

from destinations.errors import PermanentDestinationError
from destinations.net_effect import ColumnBatch, positions
from destinations.records import POSITION_COLUMNS

_TOMBSTONE_SUFFIX = "__rosetta_tombstones"
_MAX_IDENTIFIER_BYTES = 63  # PostgreSQL's NAMEDATALEN - 1
_BIGINT_MAX = 2**63 - 1


def tombstone_table_name(table: str) -> str:
    """Name of the side table holding delete tombstones for ``table`` (guard mode)."""
    name = f"{table}{_TOMBSTONE_SUFFIX}"
    if len(name.encode()) <= _MAX_IDENTIFIER_BYTES:
        return name
    # PostgreSQL would truncate a longer name; keep it unique with a digest.
    digest = hashlib.sha1(table.encode()).hexdigest()[:8]
    room = _MAX_IDENTIFIER_BYTES - len(_TOMBSTONE_SUFFIX) - len(digest) - 1
    head = table.encode()[:room].decode(errors="ignore")
    return f"{head}_{digest}{_TOMBSTONE_SUFFIX}"


def without_positions(group: ColumnBatch) -> ColumnBatch:
    """Drop position columns a record carries: with the guard on, the destination writes them."""
    keep = [i for i, c in enumerate(group.columns) if c not in POSITION_COLUMNS]
    if len(keep) == len(group.columns):
        return group
    return ColumnBatch(
        tuple(group.columns[i] for i in keep), [group.data[i] for i in keep], group.records
    )


def with_positions(group: ColumnBatch) -> ColumnBatch:
    """Append the changes' source positions as the guard columns."""
    commits, seqs = positions(group.records)
    if commits and not (
        0 <= min(commits)
        and max(commits) <= _BIGINT_MAX
        and 0 <= min(seqs) <= max(seqs) <= _BIGINT_MAX
    ):
        raise PermanentDestinationError(
            "source position does not fit the bigint position columns "
            f"(commit {min(commits)}..{max(commits)}, seq {min(seqs)}..{max(seqs)})"
        )
    return ColumnBatch(
        group.columns + POSITION_COLUMNS, [*group.data, commits, seqs], group.records
    )
