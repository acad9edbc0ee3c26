"""The source interface: change events with positions, and acknowledgement of safe positions."""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from config.errors import RosettaError
from destinations.records import ChangeRecord


class SourceError(RosettaError):
    """A source cannot go on safely (unreadable input, corrupt offset file, bad resume token)."""


@dataclass(frozen=True, slots=True)
class SourceBatch:
    """Change events in source order, and the resume token after the last of them.

    ``resume_token`` is opaque to the engine: handing it back to ``acknowledge``
    says every event of this batch (and of all earlier batches) is safe, i.e.
    committed by every destination or accepted by the DLQ.
    """

    records: Sequence[ChangeRecord]
    resume_token: str


@dataclass(frozen=True, slots=True)
class RejectedEvent:
    """An input event the source could not turn into a ChangeRecord, and why."""

    where: str  # e.g. "events.jsonl line 17"
    reason: str
    raw: str


@dataclass(frozen=True, slots=True)
class ReplicationLag:
    """How far the pipeline is behind a replicating source (a PostgreSQL slot), as last seen.

    ``lag_bytes``: the source's current WAL position minus the slot's
    ``confirmed_flush_lsn`` (WAL the source keeps for this slot), read on a
    normal connection every few seconds (``checked_at``); None when that read
    failed (``error`` says why). ``lag_seconds``: now minus the commit time of
    the oldest transaction received and not yet confirmed, i.e. the one right
    after the last confirmed transaction; 0 when every transaction received is
    confirmed. ``wal_status``: the slot's ``pg_replication_slots.wal_status``.
    """

    slot: str
    lag_bytes: int | None
    lag_seconds: float
    wal_status: str | None
    checked_at: float | None
    error: str | None = None

    def to_json(self) -> dict[str, Any]:
        return {
            "slot": self.slot,
            "lag_bytes": self.lag_bytes,
            "lag_seconds": round(self.lag_seconds, 3),
            "wal_status": self.wal_status,
            "checked_at": self.checked_at,
            "error": self.error,
        }


class Source(ABC):
    """A stream of change events that resumes from its last acknowledged position.

    ``read`` returns the next batch after everything already read (possibly
    empty when nothing is available now). ``acknowledge`` persists the resume
    token; after a restart, ``read`` starts right after the last acknowledged
    batch, so events read but not acknowledged are read again.
    """

    def __init__(self, source_id: str) -> None:
        self.source_id = str(source_id)

    @abstractmethod
    def read(self, max_events: int) -> SourceBatch:
        """Up to ``max_events`` next change events."""

    @abstractmethod
    def acknowledge(self, resume_token: str) -> None:
        """Persist that everything up to ``resume_token`` is safe."""

    def declared_tables(self) -> Sequence[str]:
        """Tables the source's configuration names, known before any event (checked at start)."""
        return ()

    def key_columns(self, table: str) -> tuple[str, ...] | None:
        """The key columns ``table``'s changes carry: () when it has none (append-only at
        best), None when not known before its events arrive (each event names its key)."""
        return None

    def column_types(self, table: str) -> Mapping[str, str] | None:
        """``table``'s columns and their types at the source (PostgreSQL type names, as
        ``format_type`` writes them), for a destination creating its target; None when
        the source does not know (the values then tell)."""
        return None

    def replication_lag(self) -> ReplicationLag | None:
        """How far behind the source the pipeline is; None for a source without a WAL."""
        return None

    def status(self) -> dict[str, Any]:
        """What the source reports about itself in the pipeline's status (progress, lag)."""
        return {}

    @property
    def exhausted(self) -> bool:
        """True when a finite source has nothing more to give (a file read to its end)."""
        return False

    @property
    def rejected(self) -> Sequence[RejectedEvent]:
        """Events set aside as malformed so far (reported, never crashed on)."""
        return ()

    @property
    def rejected_count(self) -> int:
        """Events set aside as malformed so far, every one (``rejected`` may keep only the last)."""
        return len(self.rejected)

    @property
    def skipped_count(self) -> int:
        """Input skipped on purpose as carrying no change (Kafka tombstones), every one."""
        return 0

    def close(self) -> None:  # noqa: B027 - optional hook, a no-op by default
        """Release files and handles."""
