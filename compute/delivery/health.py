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
        # The latest sign of trouble (a failed write or check): the outage
        # ended between it and the first passing check (its precision).
        self._last_failure_at: float | None = None

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
            self._last_failure_at = now
            if self._failing_since is None:
                self._failing_since = now

    def mark_unhealthy(self, reason: str, now: float | None = None) -> None:
        now = self._clock() if now is None else now
        reason = redact(reason)  # logged and shown by status and metrics: no credentials
        with self._lock:
            self._last_error = reason
            self._last_failure_at = now
            if self._state is HealthState.UNHEALTHY:
                return
            since = self._failing_since if self._failing_since is not None else now
            self._state, self._since = HealthState.UNHEALTHY, min(since, now)
            self._failing_since = None
        logger.warning("✗ %s is UNHEALTHY: %s", self.destination, reason)

    def mark_healthy(
        self, now: float | None = None, *, pipeline: str | None = None, queues: int | None = None
    ) -> None:
        """The destination works again; after an outage, log how long it lasted.

        The outage is measured from its first failure (a failed write or
        check) to this success; it ended somewhere after the last failure
        seen, so the time since that one is the figure's precision.
        ``queues`` (how many queues the worker is about to replay) and
        ``pipeline`` only add to the log line.
        """
        now = self._clock() if now is None else now
        with self._lock:
            self._failing_since = None
            previous, since, last_failure = self._state, self._since, self._last_failure_at
            if previous is HealthState.HEALTHY:
                return
            self._state, self._since = HealthState.HEALTHY, now
        where = f"pipeline={pipeline} " if pipeline is not None else ""
        destination_id = self.destination.destination_id
        if previous is not HealthState.UNHEALTHY:
            logger.info(
                "✓ %s is now HEALTHY: %sdestination=%s", self.destination, where, destination_id
            )
            return
        down = max(0.0, now - since)
        precision = max(0.0, now - (since if last_failure is None else max(since, last_failure)))
        replaying = "" if queues is None else f", replaying {queues} queue(s)"
        logger.info(
            "✓ %s is now HEALTHY: down for %.1fs (+-%.1fs)%s: %sdestination=%s "
            "down_seconds=%.1f precision_seconds=%.1f",
            self.destination,
            down,
            precision,
            replaying,
            where,
            destination_id,
            down,
            precision,
        )

    def record_check(
        self,
        ok: bool,
        now: float | None = None,
        reason: str = "",
        *,
        pipeline: str | None = None,
        queues: int | None = None,
    ) -> None:
        """A health check's result at ``now``; a pass closes the circuit (see ``mark_healthy``)."""
        now = self._clock() if now is None else now
        with self._lock:
            self._last_check_at = now
        if ok:
            self.mark_healthy(now, pipeline=pipeline, queues=queues)
        else:
            self.mark_unhealthy(reason or "health check failed", now)


class HealthProbe:
    """Runs ``test_connection`` with a hard deadline, at most one probe in flight.

    A destination's own timeout should hold, but a hung driver must not stall
    the worker or ``stop()``: the probe runs in a daemon thread, and while a
    previous probe is still running no new one starts (no pile-up); it counts
    as a failed check. ``start`` several probes, then ``result`` each: they
    run side by side, so a slow destination does not delay the others' checks.
    """

    def __init__(self, destination: Destination, timeout: float = 5.0) -> None:
        self.destination = destination
        self.timeout = timeout
        self._lock = threading.Lock()
        self._inflight: threading.Thread | None = None

    def check(self, stop: threading.Event | None = None) -> tuple[bool, str]:
        """(healthy, reason); returns within ``timeout`` plus a little, or at once on stop."""
        return self.start().result(stop)

    def start(self) -> PendingCheck:
        """Begin a check in its own thread (or fail it at once if one is still running)."""
        with self._lock:
            if self._inflight is not None and self._inflight.is_alive():
                reason = f"previous health check still running after {self.timeout:.1f}s"
                return PendingCheck(self, None, reason)
            pending = PendingCheck(self, time.monotonic() + self.timeout + 0.5, "")
            thread = threading.Thread(
                target=pending.run, name=f"probe-{self.destination.destination_id}", daemon=True
            )
            self._inflight = thread
            thread.start()
            return pending


class PendingCheck:
    """One health check under way: its thread fills it, ``result`` waits for it."""

    def __init__(self, probe: HealthProbe, deadline: float | None, refused: str) -> None:
        self._probe = probe
        self._deadline = deadline  # None: refused at once with ``refused`` as the reason
        self._refused = refused
        self._done = threading.Event()
        self._ok = False
        self._error: str | None = None

    def run(self) -> None:
        try:
            self._ok = bool(self._probe.destination.test_connection(self._probe.timeout))
        except Exception as error:  # test_connection must not raise; be safe anyway
            self._error = f"{type(error).__name__}: {error}"
        finally:
            self._done.set()

    def result(self, stop: threading.Event | None = None) -> tuple[bool, str]:
        """(healthy, reason), by the check's deadline at the latest, or at once on stop."""
        if self._deadline is None:
            return False, self._refused
        while not self._done.wait(0.05):
            if time.monotonic() >= self._deadline or (stop is not None and stop.is_set()):
                return False, f"health check timed out after {self._probe.timeout:.1f}s"
        if self._error is not None:
            return False, self._error
        if self._ok:
            return True, ""
        destination = self._probe.destination
        return False, destination.last_health_error or "test_connection() returned False"
