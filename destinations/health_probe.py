"""A connectivity check bounded by a timeout, with at most one check in flight."""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable

from config.redact import redact

logger = logging.getLogger(__name__)


class _Attempt:
    """The outcome of one probe run; filled in by the probe thread."""

    def __init__(self) -> None:
        self.done = threading.Event()
        self.ok = False
        self.error: BaseException | None = None


class HealthProbe:
    """Runs ``check(timeout)`` in a daemon thread and waits at most ``timeout`` for it.

    Drivers do not always honour their own timeouts (a server that accepts the
    TCP connection and then says nothing can hold a login for a minute), so the
    caller's bound is enforced by joining the thread. A check that overruns
    keeps running in the background; until it ends, later calls wait on that
    same check instead of starting another, so a dead server never piles up
    threads.
    """

    def __init__(
        self,
        check: Callable[[float], None],
        label: str,
        *,
        mask: Callable[[str], str] = redact,
    ) -> None:
        self._check = check
        self._label = label
        # Driver errors may quote the connection string: mask before logging or keeping.
        self._mask = mask
        self._lock = threading.Lock()
        self._thread: threading.Thread | None = None
        self._attempt = _Attempt()
        self.last_error: str | None = None

    @property
    def in_flight(self) -> bool:
        """True while a check thread is still running."""
        thread = self._thread
        return thread is not None and thread.is_alive()

    def run(self, timeout: float) -> bool:
        """True if the check passed within ``timeout`` seconds; never raises."""
        deadline = time.monotonic() + max(0.0, timeout)
        try:
            attempt = self._start_or_join(max(0.0, timeout))
            attempt.done.wait(max(0.0, deadline - time.monotonic()))
        except Exception:  # never let a health check raise; say why in the log
            logger.exception("health check could not run probe=%s", self._label)
            return False
        if not attempt.done.is_set():
            logger.debug("health check timed out probe=%s timeout=%.1fs", self._label, timeout)
            self.last_error = f"no answer within {timeout:.1f}s"
            return False
        self.last_error = None
        if attempt.error is not None:
            lines = str(attempt.error).strip().splitlines()
            first_line = self._mask(lines[0]) if lines else ""
            self.last_error = f"{type(attempt.error).__name__}: {first_line}"
            # Repeats every check interval during an outage; the transition
            # itself is logged once by the engine.
            logger.debug(
                "health check failed probe=%s error=%s: %s",
                self._label,
                type(attempt.error).__name__,
                first_line,
            )
        return attempt.ok

    def _start_or_join(self, timeout: float) -> _Attempt:
        with self._lock:
            if self.in_flight:
                return self._attempt
            attempt = _Attempt()
            thread = threading.Thread(
                target=self._run_check,
                args=(attempt, timeout),
                name=f"health-probe:{self._label}",
                daemon=True,
            )
            self._attempt = attempt
            self._thread = thread
            thread.start()
            return attempt

    def _run_check(self, attempt: _Attempt, timeout: float) -> None:
        try:
            self._check(timeout)
            attempt.ok = True
        except BaseException as exc:  # the thread must record every failure
            attempt.error = exc
        finally:
            attempt.done.set()
