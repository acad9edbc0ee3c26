"""A scriptable in-memory destination for tests of the DLQ, replay and recovery paths."""

from __future__ import annotations

import threading
import time
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from enum import StrEnum
from operator import attrgetter
from typing import Any

from destinations.base import Destination
from destinations.errors import (
    ClassifiedError,
    DestinationError,
    FailureKind,
    PermanentDestinationError,
    TableLevelDestinationError,
    TransientDestinationError,
)
from destinations.records import ChangeRecord, Operation

Key = tuple[Any, ...]
# A declared table: column name -> the Python type(s) its values must have (None: any).
Columns = Mapping[str, type | tuple[type, ...] | None]


class Fault(StrEnum):
    """A scripted failure, named after how the real destinations classify what it plays."""

    TRANSIENT = "transient"  # a failed statement the server may accept later (deadlock, timeout)
    PERMANENT = "permanent"  # the row refused for good (a constraint, a type)
    # The target table refuses every row (missing table or column, no privilege):
    # the queue is held in order and retried, nothing parked.
    TABLE = "table"
    # The session died under the write (killed backend, reset, expired session):
    # transient, and ``connection_lost`` so that replay does not charge the events.
    SESSION_LOST = "session_lost"


class SessionLostError(TransientDestinationError):
    """The fake's session was lost or refused; what a driver's connection error plays here."""


@dataclass(frozen=True)
class WriteCall:
    """One ``write_batch`` call as the fake saw it."""

    table: str
    records: tuple[ChangeRecord, ...]
    error: BaseException | None  # None: applied
    at: float  # time.monotonic() when the call started

    @property
    def ok(self) -> bool:
        return self.error is None

    @property
    def keys(self) -> list[Key]:
        return [r.key_values for r in self.records]


def _as_key(key: Any) -> Key:
    """``5`` -> ``(5,)``; ``{"id": 5}`` -> ``(5,)``; a tuple stays a tuple."""
    if isinstance(key, Mapping):
        return tuple(key.values())
    if isinstance(key, tuple):
        return key
    return (key,)


def _error(fault: Fault, message: str) -> DestinationError:
    if fault is Fault.PERMANENT:
        return PermanentDestinationError(message)
    if fault is Fault.TABLE:
        return TableLevelDestinationError(message)
    if fault is Fault.SESSION_LOST:
        return SessionLostError(message)
    return TransientDestinationError(message)


def _net_effect(records: Sequence[ChangeRecord]) -> list[ChangeRecord]:
    """One change per key, in source-position order (stable): the last one wins.

    A partial upsert after an upsert of the same key keeps the earlier
    columns it lacks, as the real destinations' collapse does. Written out
    here on purpose: the fake is a model of the contract, not a second user
    of the real destinations' code.
    """
    latest: dict[Key, ChangeRecord] = {}
    for record in sorted(records, key=attrgetter("position")):
        key = record.key_values
        if not key:
            raise PermanentDestinationError(
                f"change without a primary key: table={record.table} position={record.position}"
            )
        previous = latest.get(key)
        if (
            previous is not None
            and previous.after is not None
            and record.after is not None
            and not previous.op.is_delete
            and not record.op.is_delete
        ):
            record = record._replace(after={**previous.after, **record.after})
        latest[key] = record
    return list(latest.values())


class FakeDestination(Destination):
    """Applies batches to in-memory tables (one dict per table, by key) and can be told to fail.

    Writes follow the real destinations' contract (the suite in
    tests/destinations/contract/ holds all three to it): the batch's net
    effect is applied all at once or, on failure, not at all; an update
    replaces the columns it carries and keeps the others. Failures are
    classified as the real destinations classify what they play: a refused
    row or a missing table or column is permanent, a lost session transient
    and ``connection_lost``, anything else transient.

    ``tables`` declares the target tables and their columns, as a real
    database has them: writes to another table, or with another column, or
    with a value of the wrong type, fail as permanent. Without it any table
    and column is accepted. Scripting (all thread-safe):

    * ``fail_next(n, kind)``: the next ``n`` writes raise (transient by default,
      or a ``Fault``: ``"permanent"``, ``"session_lost"``);
    * ``fail_keys(keys, kind)``: writes containing one of ``keys`` raise
      (permanent by default), until ``clear_failures()``;
    * ``lose_session()``: the kept session dies while idle; the next write
      replaces it and goes through, as the real destinations' do;
    * ``set_down(True)``: writes fail as lost sessions (refused), health checks
      say False;
    * ``hang_test_connection(seconds)``: health checks block that long, up to
      their timeout (or beyond it with ``ignore_timeout=True``, to play a
      destination that breaks the contract);
    * ``set_write_delay(seconds)``: each write takes that long;
    * ``hold_writes()``: writes block (as on a server that stopped answering)
      until ``release_writes(fail=...)``, then commit or fail as a lost session.
    """

    def __init__(
        self,
        destination_id: str = "fake",
        name: str = "Fake",
        *,
        tables: Mapping[str, Columns] | None = None,
    ) -> None:
        super().__init__(destination_id, name)
        self.tables: dict[str, dict[Key, dict[str, Any]]] = {}
        self.schema = {table: dict(columns) for table, columns in (tables or {}).items()}
        self.strict = tables is not None
        self.sessions_replaced = 0  # kept sessions found dead and replaced by a write
        self.calls: list[WriteCall] = []
        self.applied: list[ChangeRecord] = []  # every record of every successful write, in order
        self.health_checks = 0
        self._health_error: str | None = None
        self.closed = False
        self._lock = threading.RLock()
        self._fail_next: list[Fault] = []
        self._fail_keys: dict[Key, tuple[Fault, str | None]] = {}
        self._session_lost = False
        self._down = False
        self._hang = 0.0
        self._hang_ignores_timeout = False
        self._unhang = threading.Event()
        self._write_delay = 0.0
        self._writes_released = threading.Event()
        self._writes_released.set()
        self._released_writes_fail = False
        self.held_writes = 0  # writes that were blocked by hold_writes()

    # ------------------------------------------------------------ scripting

    def hold_writes(self) -> None:
        """Block every write from now on, until ``release_writes``."""
        self._released_writes_fail = False
        self._writes_released.clear()

    def release_writes(self, *, fail: bool = False) -> None:
        """Let blocked writes go on: they commit, or with ``fail`` lose their session."""
        self._released_writes_fail = fail
        self._writes_released.set()

    def fail_next(self, n: int = 1, kind: Fault | FailureKind | str = Fault.TRANSIENT) -> None:
        with self._lock:
            self._fail_next.extend([Fault(kind)] * n)

    def fail_keys(
        self,
        keys: Iterable[Any],
        kind: Fault | FailureKind | str = Fault.PERMANENT,
        *,
        table: str | None = None,
    ) -> None:
        """Writes that contain one of ``keys`` (a value, tuple or key mapping) raise ``kind``."""
        with self._lock:
            for key in keys:
                self._fail_keys[_as_key(key)] = (Fault(kind), table)

    def lose_session(self) -> None:
        """The kept session dies while idle (killed, expired): the next write replaces it."""
        with self._lock:
            self._session_lost = True

    def clear_failures(self) -> None:
        with self._lock:
            self._fail_next.clear()
            self._fail_keys.clear()

    def set_down(self, down: bool = True) -> None:
        with self._lock:
            self._down = down

    @property
    def is_down(self) -> bool:
        return self._down

    def hang_test_connection(self, seconds: float, *, ignore_timeout: bool = False) -> None:
        """Make health checks block for ``seconds`` (0 stops it and releases waiting checks)."""
        with self._lock:
            self._hang = seconds
            self._hang_ignores_timeout = ignore_timeout
            if seconds > 0:
                self._unhang.clear()
            else:
                self._unhang.set()

    def set_write_delay(self, seconds: float) -> None:
        with self._lock:
            self._write_delay = seconds

    # ------------------------------------------------------------ inspection

    def rows(self, table: str) -> dict[Key, dict[str, Any]]:
        """A copy of ``table``'s rows by key."""
        with self._lock:
            return {k: dict(v) for k, v in self.tables.get(table, {}).items()}

    def row(self, table: str, key: Any) -> dict[str, Any] | None:
        with self._lock:
            found = self.tables.get(table, {}).get(_as_key(key))
            return dict(found) if found is not None else None

    @property
    def write_count(self) -> int:
        return len(self.calls)

    def successful_calls(self) -> list[WriteCall]:
        with self._lock:
            return [c for c in self.calls if c.ok]

    def failed_calls(self) -> list[WriteCall]:
        with self._lock:
            return [c for c in self.calls if not c.ok]

    # ------------------------------------------------------------ Destination

    def write_batch(self, table: str, records: Sequence[ChangeRecord]) -> int:
        if not records:
            return 0  # as the real ones: nothing to send, no connection needed
        started = time.monotonic()
        if self._write_delay:
            time.sleep(self._write_delay)
        held = not self._writes_released.is_set()
        if held:
            with self._lock:
                self.held_writes += 1
            self._writes_released.wait()
        with self._lock:
            error = self._scripted_failure(table, records)
            if held and self._released_writes_fail:
                error = SessionLostError(f"{self}: connection lost while blocked")
            if error is None:
                try:
                    self._apply(table, records)
                except DestinationError as exc:
                    error = exc
            self.calls.append(WriteCall(table, tuple(records), error, started))
            if error is not None:
                raise error
            self.applied.extend(records)
            return len(records)

    def _scripted_failure(
        self, table: str, records: Sequence[ChangeRecord]
    ) -> DestinationError | None:
        if self._down:
            return SessionLostError(f"connection refused: {self} is down")
        if self._session_lost:
            # As the real destinations do: a kept session found dead is
            # replaced once, and the write goes on on the new one.
            self._session_lost = False
            self.sessions_replaced += 1
        if self._fail_next:
            kind = self._fail_next.pop(0)
            return _error(kind, f"injected {kind.value} failure in {self}")
        for record in records:
            rule = self._fail_keys.get(record.key_values)
            if rule is not None and rule[1] in (None, table):
                return _error(
                    rule[0], f"injected {rule[0].value} failure for key {record.key_values}"
                )
        return None

    def _apply(self, table: str, records: Sequence[ChangeRecord]) -> None:
        if not records:
            return
        changes = _net_effect(records)
        columns = self.schema.get(table)
        if self.strict and columns is None:
            raise TableLevelDestinationError(f"{self}: target table {table} does not exist")
        rows = self.tables.setdefault(table, {})
        staged = dict(rows)  # all or nothing
        key_columns = tuple(changes[0].key)
        for change in changes:
            key = change.key_values
            if tuple(change.key) != key_columns:
                raise PermanentDestinationError(
                    f"records of one batch have different key columns: {key_columns}, "
                    f"{tuple(change.key)}"
                )
            if change.op is Operation.DELETE:
                self._check(table, columns, change.key, "key")
                staged.pop(key, None)
                continue
            if change.after is None:
                raise PermanentDestinationError(
                    f"{change.op.name.lower()} without a row image: table={change.table} "
                    f"key={dict(change.key)} position={change.position}"
                )
            row = {**change.key, **change.after}
            self._check(table, columns, change.key, "key")
            self._check(table, columns, row, "record")
            staged[key] = {**staged.get(key, {}), **row}
        self.tables[table] = staged

    def _check(
        self, table: str, columns: Columns | None, row: Mapping[str, Any], what: str
    ) -> None:
        """Refuse, as a real table would, a column it lacks or a value its column cannot hold."""
        if columns is None:
            return
        missing = sorted(c for c in row if c not in columns)
        if missing:
            raise TableLevelDestinationError(
                f"{self}: {what} columns missing from target table {table}: "
                f"{', '.join(missing)} (target has: {', '.join(columns)})"
            )
        for column, value in row.items():
            kind = columns[column]
            if value is not None and kind is not None and not isinstance(value, kind):
                raise PermanentDestinationError(
                    f"{self}: column {column} of {table} cannot hold {value!r}"
                )

    def test_connection(self, timeout: float = 5.0) -> bool:
        with self._lock:
            self.health_checks += 1
            hang, ignore = self._hang, self._hang_ignores_timeout
            down = self._down
        if hang > 0:
            wait = hang if ignore else min(hang, timeout)
            released = self._unhang.wait(wait)
            if not released and (ignore or hang >= timeout):
                self._health_error = f"no answer within {timeout:.1f}s"
                return False
        self._health_error = (
            f"SessionLostError: connection refused: {self} is down" if down else None
        )
        return not down

    @property
    def last_health_error(self) -> str | None:
        return self._health_error

    def classify_error(self, error: BaseException) -> ClassifiedError:
        """Table-level or permanent for a refusal, else transient; a lost session is
        ``connection_lost``."""
        if isinstance(error, TableLevelDestinationError):
            kind = FailureKind.TABLE
        elif isinstance(error, PermanentDestinationError):
            kind = FailureKind.PERMANENT
        else:
            kind = FailureKind.TRANSIENT
        text = str(error).strip()
        message = self.redact(text.splitlines()[0] if text else type(error).__name__)
        lost = isinstance(error, SessionLostError)
        return ClassifiedError(kind, type(error).__name__, message, None, lost)

    def close(self) -> None:
        self.closed = True
