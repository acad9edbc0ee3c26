"""Destination health: bounded probes and the state seen by the handler and the worker."""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from enum import StrEnum

from config.redact import redact
from destinations.base import Destination

logger = logging.getLogger(__name__)


class HealthState(StrEnum):
    UNKNOWN = "unknown"
    HEALTHY = "healthy"
    UNHEALTHY = "unhealthy"


@dataclass(frozen=True, slots=True)
class HealthSnapshot:
    destination_id: str
    name: str
    state: HealthState
    since: float
    last_error: str | None
    last_check_at: float | None

    @property
    def circuit_open(self) -> bool:
        return self.state is HealthState.UNHEALTHY


class DestinationHealth:
    """What is known about one destination's health, shared by handler and worker.

    The circuit is open while the destination is UNHEALTHY: the event handler
    then queues new events straight away instead of retrying in place, and
    only a passing health check (by the recovery worker) closes it again.
    Each transition is logged once.
    """

    def __init__(self, destination: Destination, clock: Callable[[], float] = time.time) -> None:
        self.destination = destination
        self._clock = clock
        self._lock = threading.Lock()
        self._state = HealthState.UNKNOWN
        self._since = clock()
        self._last_error: str | None = None
        self._last_check_at: float | None = None
        # The first failed or stuck write of the current trouble, before the
        # circuit opened: an outage is dated from it, not from the give-up.
        self._failing_since: float | None = None

    def snapshot(self) -> HealthSnapshot:
        with self._lock:
            return HealthSnapshot(
                self.destination.destination_id,
                self.destination.name,
                self._state,
                self._since,
                self._last_error,
                self._last_check_at,
            )

    @property
    def circuit_open(self) -> bool:
        return self._state is HealthState.UNHEALTHY

    def note_failure(self, reason: str, now: float | None = None) -> None:
        """A write failed (or is stuck) but is still being retried: the circuit stays
        closed, and if it opens, the outage is dated from this first failure."""
        now = self._clock() if now is None else now
        with self._lock:
            self._last_error = reason
            if self._failing_since is None:
                self._failing_since = now

    def mark_unhealthy(self, reason: str, now: float | None = None) -> None:
        now = self._clock() if now is None else now
        reason = redact(reason)  # logged and shown by status and metrics: no credentials
        with self._lock:
            self._last_error = reason
            if self._state is HealthState.UNHEALTHY:
                return
            since = self._failing_since if self._failing_since is not None else now
            self._state, self._since = HealthState.UNHEALTHY, min(since, now)
            self._failing_since = None
        logger.warning("✗ %s is UNHEALTHY: %s", self.destination, reason)

    def mark_healthy(self, now: float | None = None) -> None:
        now = self._clock() if now is None else now
        with self._lock:
            self._failing_since = None
            previous, since = self._state, self._since
            if previous is HealthState.HEALTHY:
                return
            self._state, self._since = HealthState.HEALTHY, now
        if previous is HealthState.UNHEALTHY:
            logger.info(
                "✓ %s is now HEALTHY (was down for %.1fs)", self.destination, max(0.0, now - since)
            )
        else:
            logger.info("✓ %s is now HEALTHY", self.destination)

    def record_check(self, ok: bool, now: float | None = None, reason: str = "") -> None:
        now = self._clock() if now is None else now
        with self._lock:
            self._last_check_at = now
        if ok:
            self.mark_healthy(now)
        else:
            self.mark_unhealthy(reason or "health check failed", now)


class HealthProbe:
    """Runs ``test_connection`` with a hard deadline, at most one probe in flight.

    A destination's own timeout should hold, but a hung driver must not stall
    the worker or ``stop()``: the probe runs in a daemon thread, and while a
    previous probe is still running no new one starts (no pile-up); it counts
    as a failed check.
    """

    def __init__(self, destination: Destination, timeout: float = 5.0) -> None:
        self.destination = destination
        self.timeout = timeout
        self._lock = threading.Lock()
        self._inflight: threading.Thread | None = None
        self._result: bool | None = None

    def check(self, stop: threading.Event | None = None) -> tuple[bool, str]:
        """(healthy, reason); returns within ``timeout`` plus a little, or at once on stop."""
        with self._lock:
            if self._inflight is not None and self._inflight.is_alive():
                return False, f"previous health check still running after {self.timeout:.1f}s"
            done = threading.Event()
            box: dict[str, object] = {}

            def probe() -> None:
                try:
                    box["ok"] = bool(self.destination.test_connection(self.timeout))
                except Exception as error:  # test_connection must not raise; be safe anyway
                    box["error"] = f"{type(error).__name__}: {error}"
                finally:
                    done.set()

            thread = threading.Thread(
                target=probe, name=f"probe-{self.destination.destination_id}", daemon=True
            )
            self._inflight = thread
            thread.start()
        deadline = time.monotonic() + self.timeout + 0.5
        while not done.wait(0.05):
            if time.monotonic() >= deadline or (stop is not None and stop.is_set()):
                return False, f"health check timed out after {self.timeout:.1f}s"
        if "error" in box:
            return False, str(box["error"])
        ok = bool(box.get("ok"))
        if ok:
            return True, ""
        return False, self.destination.last_health_error or "test_connection() returned False"
