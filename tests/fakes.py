"""A scriptable in-memory destination for tests of the DLQ, replay and recovery paths."""

from __future__ import annotations

import threading
import time
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from destinations.base import Destination
from destinations.errors import (
    ClassifiedError,
    DestinationError,
    FailureKind,
    PermanentDestinationError,
    TransientDestinationError,
)
from destinations.net_effect import net_effect
from destinations.records import ChangeRecord, Operation

Key = tuple[Any, ...]


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


def _error(kind: FailureKind | str, message: str) -> DestinationError:
    if FailureKind(kind) is FailureKind.PERMANENT:
        return PermanentDestinationError(message)
    return TransientDestinationError(message)


class FakeDestination(Destination):
    """Applies batches to in-memory tables (one dict per table, by key) and can be told to fail.

    Writes follow the real destinations' contract: the batch's net effect is
    applied all at once or, on failure, not at all; an update replaces the
    columns it carries and keeps the others. Scripting (all thread-safe):

    * ``fail_next(n, kind)``: the next ``n`` writes raise (transient by default);
    * ``fail_keys(keys, kind)``: writes containing one of ``keys`` raise
      (permanent by default), until ``clear_failures()``;
    * ``set_down(True)``: writes raise transient errors, health checks say False;
    * ``hang_test_connection(seconds)``: health checks block that long, up to
      their timeout (or beyond it with ``ignore_timeout=True``, to play a
      destination that breaks the contract);
    * ``set_write_delay(seconds)``: each write takes that long;
    * ``hold_writes()``: writes block (as on a server that stopped answering)
      until ``release_writes(fail=...)``, then commit or raise a transient error.
    """

    def __init__(self, destination_id: str = "fake", name: str = "Fake") -> None:
        super().__init__(destination_id, name)
        self.tables: dict[str, dict[Key, dict[str, Any]]] = {}
        self.calls: list[WriteCall] = []
        self.applied: list[ChangeRecord] = []  # every record of every successful write, in order
        self.health_checks = 0
        self.closed = False
        self._lock = threading.RLock()
        self._fail_next: list[FailureKind] = []
        self._fail_keys: dict[Key, tuple[FailureKind, str | None]] = {}
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
        """Let blocked writes go on: they commit, or with ``fail`` raise a transient error."""
        self._released_writes_fail = fail
        self._writes_released.set()

    def fail_next(self, n: int = 1, kind: FailureKind | str = FailureKind.TRANSIENT) -> None:
        with self._lock:
            self._fail_next.extend([FailureKind(kind)] * n)

    def fail_keys(
        self,
        keys: Iterable[Any],
        kind: FailureKind | str = FailureKind.PERMANENT,
        *,
        table: str | None = None,
    ) -> None:
        """Writes that contain one of ``keys`` (a value, tuple or key mapping) raise ``kind``."""
        with self._lock:
            for key in keys:
                self._fail_keys[_as_key(key)] = (FailureKind(kind), table)

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
                error = TransientDestinationError(f"{self}: connection lost while blocked")
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
            return TransientDestinationError(f"{self} is down")
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
        changes = net_effect(records) if records else []
        rows = self.tables.setdefault(table, {})
        staged = dict(rows)  # all or nothing
        for change in changes:
            key = change.key_values
            if change.op is Operation.DELETE:
                staged.pop(key, None)
                continue
            if change.after is None:
                raise PermanentDestinationError(f"{change.op.name.lower()} without a row image")
            row = {**change.key, **change.after}
            staged[key] = {**staged.get(key, {}), **row}
        self.tables[table] = staged

    def test_connection(self, timeout: float = 5.0) -> bool:
        with self._lock:
            self.health_checks += 1
            hang, ignore = self._hang, self._hang_ignores_timeout
            down = self._down
        if hang > 0:
            wait = hang if ignore else min(hang, timeout)
            released = self._unhang.wait(wait)
            if not released and (ignore or hang >= timeout):
                return False
        return not down

    def classify_error(self, error: BaseException) -> ClassifiedError:
        if isinstance(error, PermanentDestinationError):
            kind = FailureKind.PERMANENT
        else:
            kind = FailureKind.TRANSIENT
        return ClassifiedError(kind, type(error).__name__, str(error), None)

    def close(self) -> None:
        self.closed = True
