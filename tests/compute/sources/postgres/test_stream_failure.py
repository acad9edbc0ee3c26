"""An unexpected error in the replication thread stops the source loudly, never silently."""

from __future__ import annotations

import logging
from typing import Any

import pytest

from compute.sources.postgres.stream import ReplicationStream, StreamError
from tests.waiting import wait_until


class _Connection:
    closed = False

    def close(self) -> None:
        self.closed = True


class _Lines(logging.Handler):
    def __init__(self) -> None:
        super().__init__(logging.ERROR)
        self.lines: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.lines.append(record.getMessage())


def test_a_bug_in_the_stream_thread_fails_take_with_its_cause(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # Straight on the module's logger: other tests may stop propagation to the root.
    logger = logging.getLogger("compute.sources.postgres.stream")
    lines = _Lines()
    logger.addHandler(lines)
    monkeypatch.setattr(logger, "disabled", False)
    stream = ReplicationStream("dbname=unused", "slot", "pub")

    def connect() -> tuple[Any, Any]:
        return _Connection(), object()

    def broken(conn: Any, cursor: Any) -> None:
        raise KeyError("relation 16384 not in the cache")

    monkeypatch.setattr(stream, "_connect", connect)
    monkeypatch.setattr(stream, "_stream", broken)
    stream.start()
    wait_until(lambda: stream.error is not None, 5, "the stream thread recorded its failure")
    with pytest.raises(StreamError, match="relation 16384 not in the cache"):
        stream.take(10)
    assert any("replication stream failed: slot=slot error=KeyError" in m for m in lines.lines)
    stream.stop()
    logger.removeHandler(lines)
