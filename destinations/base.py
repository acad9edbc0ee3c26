"""The destination interface: the hooks every writer implements, and the framework's own part."""

from __future__ import annotations

import asyncio
from abc import ABC, abstractmethod
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, final

from config.redact import redact
from destinations.errors import ClassifiedError
from destinations.health_probe import HealthProbe
from destinations.records import ChangeRecord, Operation


@dataclass(frozen=True, slots=True)
class PreparedBatch:
    """A batch made ready ahead of its write (``Destination.prepare_batch``)."""

    table: str
    records: Sequence[ChangeRecord]
    # The destination's own head start (its plan, its formatted rows); opaque.
    work: Any = None


class Destination(ABC):
    """A place CDC changes are written to (PostgreSQL, Snowflake, ...).

    Contract, relied on by the DLQ's at-least-once replay:

    * Writes are idempotent: applying the same batch twice leaves the same
      table as applying it once (upsert or delete by primary key).
    * A batch is applied in one transaction: all of it or none of it.
    * Within a batch, the records for one primary key are applied in source
      order, so the net effect is that of the last change.
    * ``test_connection`` never raises and returns within its timeout.
    * Error texts it hands out (``classify_error``, ``last_health_error``,
      its log lines) go through ``redact``: they are logged and stored.

    Hooks a destination implements: ``write_batch``, ``test_connection``,
    ``classify_error`` and ``close``; it may override ``prepare_batch`` with
    ``write_prepared``, and ``last_health_error``. The rest is the
    framework's own and final.
    """

    # The configured credentials (a password), masked wherever they appear in an error text.
    _secrets: tuple[str | None, ...] = ()

    def __init__(self, destination_id: str, name: str) -> None:
        self.destination_id = str(destination_id)
        self.name = name
        # Seconds a live or replay write to this destination may take before the
        # engine stops waiting for it (its ``live_write_deadline_ms`` option);
        # None: the engine's DLQ_LIVE_WRITE_DEADLINE_MS.
        self.live_write_deadline: float | None = None
        # Events per live write and messages per replay batch to this destination
        # (its ``batch_size`` option); None: the pipeline's batch_size, DLQ_BATCH_SIZE.
        self.max_batch_size: int | None = None
        # Source tables whose changes are inserts only (the pipeline's
        # ``append_only``), applied once each by their source position.
        self.append_only: frozenset[str] = frozenset()
        # The source's column types (``Source.column_types``), set by the engine:
        # a table or column made by schema evolution takes them when known.
        self.source_types: Callable[[str], Mapping[str, str] | None] | None = None

    # ------------------------------------------------------------ hooks

    @abstractmethod
    def write_batch(self, table: str, records: Sequence[ChangeRecord]) -> int:
        """Apply ``records`` (all for source table ``table``) in one transaction.

        Returns how many records were applied. Raises the driver's exception on
        failure; ``classify_error`` says whether it is transient or permanent.
        """

    @abstractmethod
    def test_connection(self, timeout: float = 5.0) -> bool:
        """True when the destination accepts a trivial query within ``timeout`` seconds."""

    @abstractmethod
    def classify_error(self, error: BaseException) -> ClassifiedError:
        """Say whether ``error`` (raised by a write) is transient or permanent."""

    @abstractmethod
    def close(self) -> None:
        """Release connections; the destination may not be used afterwards."""

    def prepare_batch(self, table: str, records: Sequence[ChangeRecord]) -> PreparedBatch:
        """Do the CPU-only part of writing ``records`` now, in the caller's thread.

        The DLQ recovery worker prepares batch N+1 while batch N is being
        written on another thread, so the write itself is mostly I/O. No I/O
        here and no state change; may raise what ``write_batch`` would raise
        for these records (e.g. a permanent error for a value it cannot
        store). By default it does nothing ahead.
        """
        return PreparedBatch(table, records)

    def write_prepared(self, batch: PreparedBatch) -> int:
        """``write_batch`` for a batch from ``prepare_batch``: the same contract."""
        return self.write_batch(batch.table, batch.records)

    @property
    def last_health_error(self) -> str | None:
        """Why the last ``test_connection`` failed, when the destination knows."""
        return None

    def check_tables(self, keys: Mapping[str, tuple[str, ...] | None]) -> list[str]:
        """What this destination lacks to apply the changes of each table in ``keys``.

        ``keys`` maps a source table to its key columns (None: not known
        before its events arrive); a table in ``append_only`` takes inserts
        only. One line per table that cannot be written, naming the table,
        what is missing and the fix. Called once at start-up; a destination
        it cannot reach answers no problem (its writes queue until it is
        back). By default nothing is checked.
        """
        return []

    @final
    def appends_only(self, table: str) -> bool:
        """True when ``table`` (``public.t``, or its bare name) is declared append-only."""
        return table in self.append_only or table.rpartition(".")[2] in self.append_only

    @final
    def refused_as_append_only(self, records: Sequence[ChangeRecord]) -> list[ChangeRecord]:
        """The updates and deletes among ``records`` (one table's) when that table is
        append-only (declared, or its changes carry no key): no row to apply them to."""
        if not records or not (self.appends_only(records[0].table) or not records[0].key):
            return []
        return [r for r in records if r.op in (Operation.UPDATE, Operation.DELETE)]

    # ------------------------------------------------------------ the framework's own

    @final
    def __str__(self) -> str:
        return f"Destination {self.name} (ID={self.destination_id})"

    @final
    def redact(self, text: str) -> str:
        """``text`` with this destination's credentials, and what looks like one, masked."""
        return redact(text, self._secrets)

    @final
    async def test_connection_async(self, timeout: float = 5.0) -> bool:
        """``test_connection`` for callers on an event loop; never blocks the loop."""
        return await asyncio.to_thread(self.test_connection, timeout)


class ProbedDestination(Destination):
    """A destination whose health check is one bounded ``_probe_once(timeout)``.

    The probe runs in a daemon thread, at most one in flight (``HealthProbe``),
    so ``test_connection`` keeps its timeout even when the driver does not.
    """

    def __init__(self, destination_id: str, name: str) -> None:
        super().__init__(destination_id, name)
        self._probe = HealthProbe(
            self._probe_once, label=f"{name}:{destination_id}", mask=self.redact
        )

    @abstractmethod
    def _probe_once(self, timeout: float) -> None:
        """Connect afresh and run a trivial query; raise on any failure."""

    @property
    def last_health_error(self) -> str | None:
        return self._probe.last_error

    def test_connection(self, timeout: float = 5.0) -> bool:
        """False on any failure or after ``timeout``; never raises."""
        return self._probe.run(timeout)
