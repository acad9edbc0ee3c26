"""An unexpected error in the replication thread stops the source loudly, never silently."""

from __future__ import annotations

from typing import Any

import pytest

from compute.sources.postgres.stream import ReplicationStream, StreamError
from tests.waiting import wait_until


class _Connection:
    closed = False

    def close(self) -> None:
        self.closed = True


def test_a_bug_in_the_stream_thread_fails_take_with_its_cause(
    monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
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
    assert "replication stream failed: slot=slot error=KeyError" in caplog.text
    stream.stop()
