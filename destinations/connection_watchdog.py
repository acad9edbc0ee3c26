"""A deadline for blocking driver calls: cut the connection when a call overruns.

A server (or a proxy, or a NAT box) that accepted the connection and then
stopped answering holds a blocking driver call forever: the server-side
``statement_timeout`` never fires because the server never sees the
statement, and TCP keepalives stay quiet while the peer's kernel keeps
acknowledging. The only bound the client can enforce is to cut the socket
from another thread; the blocked call then fails at once with a connection
error, which is transient (the write is retried or queued, never lost).
"""

from __future__ import annotations

import contextlib
import itertools
import logging
import os
import socket
import threading
import time
from collections.abc import Callable, Iterator

logger = logging.getLogger(__name__)


def shutdown_socket(fileno: int) -> None:
    """Shut down the socket behind ``fileno`` (both directions) without closing the fd.

    ``shutdown`` acts on the socket, not on the descriptor, so doing it on a
    duplicate wakes a thread blocked on the original; the driver keeps
    ownership of its descriptor and closes it itself.
    """
    duplicate = os.dup(fileno)
    try:
        sock = socket.socket(fileno=duplicate)
    except OSError:
        os.close(duplicate)
        raise
    try:
        sock.shutdown(socket.SHUT_RDWR)
    finally:
        sock.close()


class ConnectionWatchdog:
    """Runs ``abort()`` for every watched call still running at its deadline.

    One daemon thread, started on first use, serves any number of concurrent
    calls. ``abort`` runs under the watchdog's lock and a call is disarmed
    under the same lock when it ends, so an abort never runs after its call
    has left ``watch()`` (the driver may have closed or reused the socket by
    then).
    """

    def __init__(self, label: str) -> None:
        self._label = label
        self._cond = threading.Condition()
        self._armed: dict[int, tuple[float, Callable[[], None]]] = {}
        self._tokens = itertools.count(1)
        self._thread: threading.Thread | None = None
        self._closed = False
        self.fired = 0  # calls cut so far

    @contextlib.contextmanager
    def watch(
        self, timeout: float | None, abort: Callable[[], None]
    ) -> Iterator[Callable[[], bool]]:
        """Watch the block's call; yields ``fired()``, True once ``abort`` ran for it."""
        if timeout is None:
            yield lambda: False
            return
        fired = threading.Event()

        def cut() -> None:
            fired.set()
            abort()

        with self._cond:
            token = next(self._tokens)
            self._armed[token] = (time.monotonic() + max(0.0, timeout), cut)
            self._ensure_thread()
            self._cond.notify()
        try:
            yield fired.is_set
        finally:
            with self._cond:
                self._armed.pop(token, None)

    def close(self) -> None:
        with self._cond:
            self._closed = True
            self._armed.clear()
            self._cond.notify()

    def _ensure_thread(self) -> None:
        if self._thread is None or not self._thread.is_alive():
            self._closed = False
            self._thread = threading.Thread(
                target=self._run, name=f"watchdog:{self._label}", daemon=True
            )
            self._thread.start()

    def _run(self) -> None:
        with self._cond:
            while not self._closed:
                if not self._armed:
                    self._cond.wait()
                    continue
                now = time.monotonic()
                token, (deadline, cut) = min(self._armed.items(), key=lambda item: item[1][0])
                if deadline > now:
                    self._cond.wait(deadline - now)
                    continue
                del self._armed[token]
                self.fired += 1
                try:
                    cut()
                except Exception:  # the call may have ended on its own meanwhile
                    logger.debug("watchdog abort failed watchdog=%s", self._label, exc_info=True)
