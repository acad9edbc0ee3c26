"""The recovery worker's writer thread: order, errors, restart after close."""

from __future__ import annotations

import threading
from concurrent.futures import Future

import pytest

from compute.errors import WriterThreadError
from compute.runtime.writer_thread import WriterThread


def test_calls_run_in_order_on_one_daemon_thread() -> None:
    writer = WriterThread("test-writer")
    seen: list[tuple[int, str, bool]] = []

    def note(i: int) -> int:
        thread = threading.current_thread()
        seen.append((i, thread.name, thread.daemon))
        return i * 10

    futures = [writer.submit(note, i) for i in range(20)]
    assert [f.result(timeout=5) for f in futures] == [i * 10 for i in range(20)]
    assert seen == [(i, "test-writer", True) for i in range(20)]
    writer.close()


def test_an_exception_reaches_the_waiting_caller() -> None:
    writer = WriterThread("test-writer")

    def fail() -> None:
        raise ConnectionResetError("server closed the connection")

    with pytest.raises(ConnectionResetError, match="server closed"):
        writer.submit(fail).result(timeout=5)
    assert writer.submit(lambda: "still working").result(timeout=5) == "still working"
    writer.close()


def test_close_lets_the_running_call_finish_and_a_later_submit_starts_anew() -> None:
    writer = WriterThread("test-writer")
    release = threading.Event()
    running = writer.submit(release.wait, 5)
    writer.close()  # never blocks, even with a call running
    release.set()
    assert running.result(timeout=5) is True
    assert writer.submit(lambda: 42).result(timeout=5) == 42
    writer.close()


def test_a_failure_of_the_thread_itself_reaches_the_waiting_pass(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """If the writer thread fails outside the call (here: starting the future),
    the pass waiting on the write gets an error instead of waiting for ever."""
    import compute.runtime.writer_thread as module

    class BrokenFuture(Future):  # type: ignore[type-arg]
        broken = [True]

        def set_running_or_notify_cancel(self) -> bool:
            if self.broken:
                self.broken.pop()
                raise RuntimeError("thread state lost")
            return super().set_running_or_notify_cancel()

    monkeypatch.setattr(module, "Future", BrokenFuture)
    writer = WriterThread("test-writer")
    with pytest.raises(WriterThreadError, match="thread state lost"):
        writer.submit(lambda: "never run").result(timeout=5)
    # The next write starts a new thread.
    assert writer.submit(lambda: "written").result(timeout=5) == "written"
    writer.close()
