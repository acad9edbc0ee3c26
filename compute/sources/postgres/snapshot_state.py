"""Remembers across crashes whether a slot's initial copy finished, and which tables it did."""

from __future__ import annotations

import json
from typing import NamedTuple, Protocol

COPYING = "copying"  # the slot may exist; some tables are not copied (and acknowledged) yet
DONE = "done"  # every table was copied and acknowledged: only the slot's changes are left


class TokenStore(Protocol):
    """Where the progress is kept: the source's offset file (``OffsetStore``)."""

    def get(self, source_id: str) -> str | None: ...

    def put(self, source_id: str, token: str) -> None: ...


class SnapshotProgress(NamedTuple):
    """The initial copy of slot ``slot``: its state and the tables copied and acknowledged.

    ``recopied`` maps each table copied again (in a temporary slot's snapshot,
    after an interruption) to that snapshot's consistent point: the slot's
    changes of that table that committed before it are in the copy. It is
    saved before any of the copy's rows is handed out, and kept after the
    copy is done, so that a restart from an older ``confirmed_flush_lsn``
    still leaves those changes out.
    """

    slot: str
    state: str
    tables_done: tuple[str, ...] = ()
    recopied: tuple[tuple[str, int], ...] = ()


class SnapshotState:
    """The copy's progress, kept as the source's entry in its offset file.

    The entry is written *before* the slot is created ("copying"), so a crash
    between creating the slot and copying the first row is seen at the next
    start as an unfinished copy rather than as a slot with nothing to copy.
    A source given no store (``store=None``) keeps the progress in memory
    only: a copy interrupted by a crash is then not resumed.
    """

    def __init__(self, store: TokenStore | None, source_id: str) -> None:
        self.store = store
        self.key = f"{source_id}.snapshot"
        self._memory: SnapshotProgress | None = None

    def load(self) -> SnapshotProgress | None:
        if self.store is None or self._memory is not None:
            return self._memory
        text = self.store.get(self.key)
        if text is None:
            return None
        try:
            data = json.loads(text)
            self._memory = SnapshotProgress(
                str(data["slot"]),
                str(data["state"]),
                tuple(data.get("tables_done", ())),
                tuple((str(t), int(p)) for t, p in data.get("recopied", {}).items()),
            )
            return self._memory
        except (ValueError, KeyError, TypeError, AttributeError):
            raise ValueError(
                f"the initial copy's progress {self.key!r} in the offset file is not readable: "
                f"{text[:80]!r}; remove that entry to copy the tables again"
            ) from None

    def save(self, progress: SnapshotProgress) -> None:
        self._memory = progress
        if self.store is not None:
            data = {**progress._asdict(), "recopied": dict(progress.recopied)}
            self.store.put(self.key, json.dumps(data, sort_keys=True))
