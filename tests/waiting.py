"""Waiting in tests: poll a condition until a deadline, and fail naming what did not happen."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import IO

POLL_INTERVAL = 0.02


def wait_until(
    condition: Callable[[], object], timeout: float, what: str, *, interval: float = POLL_INTERVAL
) -> None:
    """Poll ``condition`` until it is true; fail naming ``what`` after ``timeout`` seconds.

    A deadline, not a timing: under load it waits longer, on an idle machine it
    returns as soon as the condition holds.
    """
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout:g}s waiting for {what}")
        time.sleep(interval)


def wait_for_log_line(log: Path, text: str, timeout: float, *, count: int = 1) -> None:
    """Wait until the file ``log`` holds ``text`` at least ``count`` times."""
    wait_until(
        lambda: log.exists() and log.read_text(errors="replace").count(text) >= count,
        timeout,
        f"{text!r} {count}x in {log.name}",
    )


class OutputLines:
    """The text a child process prints to a pipe, read by a thread as it comes, to wait on.

    Take it instead of ``communicate()``: call ``wait_for`` while the process runs,
    then ``finish`` for all of its output once it ended.
    """

    def __init__(self, stream: IO[str]) -> None:
        self._lines: list[str] = []
        self._lock = threading.Lock()
        self._thread = threading.Thread(target=self._read, args=(stream,), daemon=True)
        self._thread.start()

    def _read(self, stream: IO[str]) -> None:
        for line in stream:
            with self._lock:
                self._lines.append(line)
        stream.close()

    @property
    def text(self) -> str:
        """Everything printed so far."""
        with self._lock:
            return "".join(self._lines)

    def wait_for(self, text: str, timeout: float) -> None:
        """Wait until the process printed ``text``."""
        try:
            wait_until(lambda: text in self.text, timeout, f"the process to print {text!r}")
        except AssertionError as error:
            raise AssertionError(f"{error}; it printed, last:\n{self.text[-3000:]}") from None

    def finish(self, timeout: float) -> str:
        """All the output, once the process closed its end of the pipe (it ended)."""
        self._thread.join(timeout)
        if self._thread.is_alive():
            raise AssertionError(f"the process still held its output open after {timeout:g}s")
        return self.text
