"""The thread a PostgreSQL reader (the initial copy, the stream) runs in; its reconnect policy."""

from __future__ import annotations

import threading
from abc import ABC, abstractmethod
from typing import Any

import psycopg2

from compute.runtime.retry_policy import RetryPolicy

# A lost connection is tried again after 0.5 s, doubling up to 30 s, for as
# long as the source runs: a source server restart must not stop the source.
RECONNECT = RetryPolicy(max_retries=1_000_000, base_delay=0.5, max_delay=30.0)


class ReaderThread(ABC):
    """A daemon thread running ``_run``, with the lock its buffer is guarded by.

    ``stop`` sets ``_stop`` and wakes whoever waits on ``_lock`` (the thread
    waiting for room in its buffer), so the thread ends within one wait.
    """

    def __init__(self, thread_name: str) -> None:
        self.thread_name = thread_name
        self._lock = threading.Condition()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def _start_thread(self) -> None:
        self._thread = threading.Thread(target=self._run, name=self.thread_name, daemon=True)
        self._thread.start()

    def stop(self, timeout: float = 5.0) -> None:
        self._stop.set()
        with self._lock:
            self._lock.notify_all()
        if self._thread is not None:
            self._thread.join(timeout)

    @abstractmethod
    def _run(self) -> None:
        """The thread's whole work; it returns once ``_stop`` is set."""


def first_line(error: BaseException) -> str:
    """The first line of ``error``'s message (psycopg2's run over several), or its type."""
    text = str(error).strip()
    return text.splitlines()[0] if text else type(error).__name__


def close_quietly(conn: Any) -> None:
    """Close ``conn`` (None: nothing); a connection already broken may fail to: no matter."""
    if conn is not None:
        try:
            conn.close()
        except psycopg2.Error:
            pass
