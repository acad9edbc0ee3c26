"""Runs an engine thread's loop and restarts it when an unexpected exception escapes it.

Every long-lived engine thread (a pipeline's reader loop, its delivery lanes,
its recovery worker, the DLQ maintenance thread, the alert monitor, the
webhook sender, the admin API's serve loop) handles the failures it knows
about itself. Anything else escaping its loop would end
the thread silently: events would stop being replayed (or alerts evaluated)
with nothing in status or ``/health``. The supervisor logs such a crash at
ERROR with its traceback, counts it, waits a capped exponential backoff
(``RetryPolicy``) on the loop's stop event (so ``stop()`` stays immediate) and
starts the loop again.

A thread is *crashing* when it crashed ``CRASH_LIMIT`` times within the last
``CRASH_WINDOW`` seconds, or when it ended for good on something that is not
an ``Exception``: ``/health`` is then ``critical``. Fewer recent crashes make
it ``warning``.

Not under it: the writer threads (``writer_thread.py``), whose loop hands
every exception to the waiting caller and which are started again on the
next write, and the one-shot threads of health probes and admin requests.
"""

from __future__ import annotations

import logging
import random
import threading
import time
from collections import deque
from collections.abc import Callable
from typing import Any

from compute.runtime.retry_policy import RetryPolicy

logger = logging.getLogger(__name__)

# Restart delays: 1 s, 2 s, 4 s, ... capped at 60 s (half of each drawn at random).
RESTART_POLICY = RetryPolicy(max_retries=0, base_delay=1.0, max_delay=60.0)
CRASH_LIMIT = 3
CRASH_WINDOW = 300.0


class Supervisor:
    """One daemon thread running ``loop()`` until it returns or ``stop`` is set.

    ``loop`` is the thread's own loop: it returns when ``stop`` is set (or its
    work is done). If it raises, the crash is logged, counted and the loop is
    started again after a backoff, unless ``stop`` is set meanwhile.
    """

    def __init__(
        self,
        name: str,
        loop: Callable[[], None],
        stop: threading.Event,
        *,
        policy: RetryPolicy | None = None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.name = name
        self._loop = loop
        self._stop = stop
        self._policy = policy or RESTART_POLICY
        self._clock = clock
        self._rng = random.Random()
        self._lock = threading.Lock()
        self._thread: threading.Thread | None = None
        self._crashes: deque[float] = deque()  # monotonic times, within CRASH_WINDOW
        self.restarts = 0
        self.last_error: str | None = None
        self.last_crash_at: float | None = None  # wall clock, for status
        self._backoff_until: float | None = None
        self._dead = False

    # ------------------------------------------------------------ lifecycle

    def start(self) -> None:
        if self._thread is not None:
            return
        self._thread = threading.Thread(target=self._run, name=self.name, daemon=True)
        self._thread.start()

    def join(self, timeout: float | None = None) -> bool:
        """Wait for the thread to end (set the stop event first); True if it did."""
        if self._thread is None:
            return True
        self._thread.join(timeout)
        return not self._thread.is_alive()

    def is_alive(self) -> bool:
        return self._thread is not None and self._thread.is_alive()

    def _run(self) -> None:
        while True:
            try:
                self._loop()
                return
            except Exception as error:
                if self._stop.is_set():  # a crash on the way out: nothing to restart
                    logger.debug("thread ended with an error while stopping: thread=%s", self.name)
                    return
                delay = self._crashed(error)
                logger.error(
                    "thread crashed, restarting: thread=%s restarts=%d retry_in=%.2fs error=%s",
                    self.name,
                    self.restarts,
                    delay,
                    self.last_error,
                    exc_info=True,
                )
            except BaseException as error:  # SystemExit and the like: not restartable
                with self._lock:
                    self._dead = True
                    self.last_error = f"{type(error).__name__}: {error}"
                logger.error(
                    "thread ended for good: thread=%s error=%s",
                    self.name,
                    self.last_error,
                    exc_info=True,
                )
                return
            if self._stop.wait(delay):
                return
            with self._lock:
                self._backoff_until = None

    def _crashed(self, error: Exception) -> float:
        now = self._clock()
        with self._lock:
            self.restarts += 1
            self.last_error = f"{type(error).__name__}: {error}"
            self.last_crash_at = time.time()
            while self._crashes and now - self._crashes[0] > CRASH_WINDOW:
                self._crashes.popleft()
            self._crashes.append(now)
            # Back off longer the more often it crashed lately (1 s after a lone crash).
            delay = self._policy.next_delay(len(self._crashes), self._rng)
            self._backoff_until = now + delay
        return delay

    def _recent(self, now: float) -> int:
        return sum(1 for at in self._crashes if now - at <= CRASH_WINDOW)

    # ------------------------------------------------------------ status

    @property
    def crashing(self) -> bool:
        """True when the thread keeps crashing (see the module docstring)."""
        with self._lock:
            return self._dead or self._recent(self._clock()) >= CRASH_LIMIT

    def status(self) -> dict[str, Any]:
        now = self._clock()
        with self._lock:
            recent = self._recent(now)
            if self._dead:
                state = "dead"
            elif self._backoff_until is not None and now < self._backoff_until:
                state = "restarting"
            elif self.is_alive():
                state = "running"
            else:
                state = "stopped"
            return {
                "thread": self.name,
                "state": state,
                "restarts": self.restarts,
                "recent_crashes": recent,
                "crashing": self._dead or recent >= CRASH_LIMIT,
                "last_error": self.last_error,
                "last_crash_at": self.last_crash_at,
            }
