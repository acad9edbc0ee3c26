"""A daemon thread that runs one destination write at a time, for live delivery and replay.

Why: a replay batch spends most of its time in two places, decoding the DLQ
messages (Python, holds the GIL) and waiting for the destination to commit
(network I/O, the GIL released). Writing batch N here while the worker reads
and decodes batch N+1 overlaps the two.

Not ``concurrent.futures.ThreadPoolExecutor``: its threads are joined at
interpreter exit, so a hung write would hold the process open; the worker's
own thread is a daemon for the same reason.
"""

from __future__ import annotations

import queue
import threading
from collections.abc import Callable
from concurrent.futures import Future
from typing import Any, TypeVar

from compute.errors import WriterThreadError

_T = TypeVar("_T")

_Job = tuple[Future[Any], Callable[..., Any], tuple[Any, ...]]


class WriterThread:
    """Runs submitted calls in order on one daemon thread, started on first use."""

    def __init__(self, name: str) -> None:
        self.name = name
        # Each thread has its own job queue: after close(), a job submitted to
        # a new thread can never be taken by the old one.
        self._jobs: queue.SimpleQueue[_Job | None] = queue.SimpleQueue()
        self._thread: threading.Thread | None = None
        self._lock = threading.Lock()

    def submit(self, call: Callable[..., _T], *args: Any) -> Future[_T]:
        """Run ``call(*args)`` on the thread; its result or exception lands in the future."""
        future: Future[_T] = Future()
        with self._lock:
            if self._thread is None or not self._thread.is_alive():
                self._jobs = queue.SimpleQueue()
                self._thread = threading.Thread(
                    target=self._run, args=(self._jobs,), name=self.name, daemon=True
                )
                self._thread.start()
            self._jobs.put((future, call, args))
        return future

    def close(self) -> None:
        """Let the thread end after the job it runs (if any); it never blocks."""
        with self._lock:
            if self._thread is not None:
                self._jobs.put(None)
                self._thread = None

    @staticmethod
    def _run(jobs: queue.SimpleQueue[_Job | None]) -> None:
        while True:
            job = jobs.get()
            if job is None:
                return
            future, call, args = job
            try:
                if not future.set_running_or_notify_cancel():
                    continue
                try:
                    result = call(*args)
                except BaseException as error:  # handed to the waiting worker, which decides
                    future.set_exception(error)
                else:
                    future.set_result(result)
            except BaseException as error:
                # The thread's own step failed, not the call: the pass waiting
                # on this future gets the error instead of waiting for ever,
                # and the thread goes on with the next write.
                if not future.done():
                    future.set_exception(WriterThreadError(f"writer thread failed: {error!r}"))
