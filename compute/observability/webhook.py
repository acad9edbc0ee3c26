"""Alert notifications POSTed as JSON to a webhook, from their own thread, with retries.

The alert monitor only appends to a bounded in-memory queue, so an
evaluation never waits on the network. A sender thread posts one
notification at a time, in order (a resolution never overtakes its
firing), retrying transient failures (connection refused, timeouts,
HTTP 408/429/5xx) with exponential backoff, and gives up, logged, after a
fixed number of attempts. Notifications are a courtesy to the operator:
losing one never touches queued data, and no failure here stops the engine.
"""

from __future__ import annotations

import json
import logging
import random
import threading
import urllib.error
import urllib.parse
import urllib.request
from collections import deque
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

from compute.runtime.retry_policy import RetryPolicy
from compute.runtime.supervisor import Supervisor

logger = logging.getLogger(__name__)

# 5 attempts, waiting at most 0.5, 1, 2 and 4 s between them (jitter only shortens a wait).
DEFAULT_RETRY = RetryPolicy(max_retries=4, base_delay=0.5, max_delay=30.0)
DEFAULT_TIMEOUT = 5.0
DEFAULT_MAX_PENDING = 1000
# Client errors that a retry may cure; any other 4xx means the request itself is wrong.
RETRYABLE_STATUS = frozenset({408, 425, 429})

Poster = Callable[[str, bytes, float], int]


def redact_url(url: str) -> str:
    """``scheme://host:port`` only: webhook paths and queries often carry secret tokens."""
    parts = urllib.parse.urlsplit(url)
    host = parts.hostname or "?"
    if ":" in host:
        host = f"[{host}]"
    port = f":{parts.port}" if parts.port else ""
    return f"{parts.scheme}://{host}{port}"


def post_json(url: str, body: bytes, timeout: float) -> int:
    """POST ``body`` as JSON; returns the HTTP status, raises on network errors and >= 400."""
    request = urllib.request.Request(
        url,
        data=body,
        method="POST",
        headers={"Content-Type": "application/json", "User-Agent": "rosetta-dlq-alerts"},
    )
    with urllib.request.urlopen(request, timeout=timeout) as response:
        response.read()
        return int(response.status)


@dataclass
class WebhookStats:
    sent: int = 0
    failed: int = 0  # given up after the last attempt, or refused for good
    dropped: int = 0  # the pending queue was full
    retries: int = 0


class WebhookNotifier:
    """Sends alert notifications to one URL from a background thread."""

    def __init__(
        self,
        url: str,
        *,
        retry: RetryPolicy = DEFAULT_RETRY,
        timeout: float = DEFAULT_TIMEOUT,
        max_pending: int = DEFAULT_MAX_PENDING,
        poster: Poster = post_json,
    ) -> None:
        self.url = url
        self.retry = retry
        self.timeout = timeout
        self.max_pending = max_pending
        self._poster = poster
        self._pending: deque[Mapping[str, Any]] = deque()
        self._cond = threading.Condition()
        self._stop = threading.Event()
        self._busy = False
        self.supervisor = Supervisor("alert-webhook", self._loop, self._stop)
        self._rng = random.Random()
        self.stats = WebhookStats()

    @property
    def target(self) -> str:
        return redact_url(self.url)

    # ------------------------------------------------------------ lifecycle

    def start(self) -> None:
        if self.supervisor.is_alive():
            return
        self.supervisor.start()

    def stop(self, timeout: float = 5.0) -> bool:
        """Stop sending; notifications still pending are given up (and logged)."""
        self._stop.set()
        with self._cond:
            self._cond.notify_all()
        stopped = self.supervisor.join(timeout)
        with self._cond:
            left = len(self._pending)
            self._pending.clear()
        if left:
            logger.warning(
                "alert webhook stopped with notifications unsent: url=%s count=%d",
                self.target,
                left,
            )
        return stopped

    # ------------------------------------------------------------ sending

    def send(self, payload: Mapping[str, Any]) -> bool:
        """Queue ``payload`` for delivery; never blocks. False when it was dropped."""
        with self._cond:
            if self._stop.is_set() or len(self._pending) >= self.max_pending:
                self.stats.dropped += 1
                dropped = True
            else:
                self._pending.append(payload)
                self._cond.notify()
                dropped = False
        if dropped:
            logger.warning(
                "alert notification dropped, webhook queue full or stopped: url=%s alert=%s "
                "status=%s pending_limit=%d",
                self.target,
                payload.get("id"),
                payload.get("status"),
                self.max_pending,
            )
        return not dropped

    def pending(self) -> int:
        """Notifications not yet delivered or given up (the one in flight included)."""
        with self._cond:
            return len(self._pending) + (1 if self._busy else 0)

    def wait_idle(self, timeout: float) -> bool:
        """Wait until nothing is pending (for an orderly stop, and tests)."""
        with self._cond:
            return self._cond.wait_for(lambda: not self._pending and not self._busy, timeout)

    def _loop(self) -> None:
        while True:
            with self._cond:
                self._cond.wait_for(lambda: self._pending or self._stop.is_set())
                if self._stop.is_set():
                    return
                payload = self._pending.popleft()
                self._busy = True
            try:
                self._deliver(payload)
            except Exception:  # the sender must outlive any single failure
                logger.exception("alert webhook sender failed: url=%s", self.target)
            finally:
                with self._cond:
                    self._busy = False
                    self._cond.notify_all()

    def _deliver(self, payload: Mapping[str, Any]) -> None:
        body = json.dumps(payload, ensure_ascii=False).encode()
        attempts = self.retry.max_retries + 1
        error = ""
        for attempt in range(1, attempts + 1):
            try:
                self._poster(self.url, body, self.timeout)
            except urllib.error.HTTPError as exc:
                error = f"HTTP {exc.code} {exc.reason}"
                if exc.code < 500 and exc.code not in RETRYABLE_STATUS:
                    self._give_up(payload, attempt, f"{error} (not retried)")
                    return
            except Exception as exc:  # network errors, timeouts, bad URLs
                error = f"{type(exc).__name__}: {exc}"
            else:
                self.stats.sent += 1
                logger.debug(
                    "alert notification sent: url=%s alert=%s status=%s attempt=%d",
                    self.target,
                    payload.get("id"),
                    payload.get("status"),
                    attempt,
                )
                return
            if attempt >= attempts:
                break
            delay = self.retry.next_delay(attempt, self._rng)
            self.stats.retries += 1
            logger.warning(
                "alert webhook failed, retrying: url=%s alert=%s attempt=%d/%d retry_in=%.2fs "
                "error=%s",
                self.target,
                payload.get("id"),
                attempt,
                attempts,
                delay,
                error,
            )
            if self._stop.wait(delay):
                self._give_up(payload, attempt, f"{error} (stopping)")
                return
        self._give_up(payload, attempts, error)

    def _give_up(self, payload: Mapping[str, Any], attempts: int, error: str) -> None:
        self.stats.failed += 1
        logger.error(
            "alert webhook gave up: url=%s alert=%s status=%s attempts=%d error=%s",
            self.target,
            payload.get("id"),
            payload.get("status"),
            attempts,
            error,
        )

    def status(self) -> dict[str, Any]:
        return {
            "url": self.target,
            "sent": self.stats.sent,
            "failed": self.stats.failed,
            "dropped": self.stats.dropped,
            "retries": self.stats.retries,
            "pending": self.pending(),
        }
