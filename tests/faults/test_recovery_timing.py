"""Recovery on default settings: after a PostgreSQL outage, replay starts within 3 s of its return.

With the default ``DLQ_CHECK_INTERVAL=30`` a destination that just failed is
probed every second at first (``DLQ_CHECK_INTERVAL_MIN``), then every fifth
of the outage so far: after a 5 s outage replay must start within 3 s of the
server accepting connections again (not up to 30 s later), the recovery line
must give the outage as measured, and nothing is lost.
"""

from __future__ import annotations

import logging
import re
import threading
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import psycopg2
import pytest

from compute.dlq.manager import DLQManager
from compute.engine.pipeline import Pipeline
from compute.queue_id import QueueId
from compute.sources.synthetic_source import SyntheticSource
from config.dlq_config import DLQConfig
from destinations.base import PreparedBatch
from destinations.postgresql.destination import PostgreSQLDestination
from destinations.records import ChangeRecord
from tests.faults.helpers import assert_exact_state, create_tables
from tests.servers import PostgresServer
from tests.waiting import wait_until

OUTAGE = 5.0
RATE = 200.0  # events/s, so that events queue during the outage


class CommitTimes(PostgreSQLDestination):
    """Notes when each write committed and in which thread."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.commits: list[tuple[float, str]] = []

    def write_batch(self, table: str, records: Sequence[ChangeRecord]) -> int:
        applied = super().write_batch(table, records)
        self.commits.append((time.time(), threading.current_thread().name))
        return applied

    def write_prepared(self, batch: PreparedBatch) -> int:
        applied = super().write_prepared(batch)
        self.commits.append((time.time(), threading.current_thread().name))
        return applied

    def first_replay_after(self, moment: float) -> float | None:
        for when, thread in list(self.commits):
            if when >= moment and thread.startswith("dlq-recovery"):
                return when
        return None


def accepts_connections(dsn: str) -> bool:
    try:
        psycopg2.connect(dsn, connect_timeout=2).close()
    except psycopg2.OperationalError:
        return False
    return True


@pytest.mark.timeout(180)
def test_replay_starts_within_3s_of_the_return_on_default_settings(
    tmp_path: Path, postgres_server_factory, caplog: pytest.LogCaptureFixture
) -> None:
    server: PostgresServer = postgres_server_factory()
    source = SyntheticSource(
        "1", None, total_events=int(RATE * (OUTAGE + 8)), seed=5, events_per_second=RATE
    )
    create_tables(server.dsn, source)
    config = DLQConfig(base_path=tmp_path / "dlq", min_free_disk_mb=0)  # defaults otherwise
    assert config.check_interval == 30.0
    dlq = DLQManager(config)
    destination = CommitTimes("1", "PG", server.dsn)
    pipeline = Pipeline("p", source, [destination], dlq, config)
    queues = [QueueId("1", table, "1") for table in source.tables]
    caplog.set_level(logging.INFO, logger="compute.delivery.health")
    pipeline.start()
    try:
        wait_until(lambda: pipeline.handler.counters.written["1"] > 0, 30, "a first write")
        server.stop("immediate")
        stopped_at = time.time()
        wait_until(lambda: pipeline.handler.counters.queued["1"] > 0, 30, "events to queue")
        time.sleep(max(0.0, OUTAGE - (time.time() - stopped_at)))  # the outage itself
        server.start()
        wait_until(lambda: accepts_connections(server.dsn), 30, "the server to accept connections")
        back_at = time.time()
        wait_until(
            lambda: destination.first_replay_after(back_at) is not None, 30, "a replayed commit"
        )
        replay_start = destination.first_replay_after(back_at)
        assert replay_start is not None
        assert replay_start - back_at <= 3.0, f"replay began {replay_start - back_at:.2f}s late"
        wait_until(
            lambda: pipeline.finished.is_set() and not any(dlq.has_messages(q) for q in queues),
            60,
            "the source to finish and the queues to drain",
        )
    finally:
        pipeline.stop()
        pipeline.close()
        dlq.close()
    assert_exact_state(server.dsn, source)
    messages = [r.getMessage() for r in caplog.records]
    [line] = [m for m in messages if "is now HEALTHY: down for" in m]
    found = re.search(r"down for (\d+\.\d)s \(\+-(\d+\.\d)s\), replaying (\d+) queue", line)
    assert found is not None, line
    down, precision = float(found[1]), float(found[2])
    # dated from the first failed write (after the stop) to the first passing probe
    outage = back_at - stopped_at
    assert outage - 1.0 <= down <= outage + 3.0, line
    assert 0.0 < precision <= 3.0, line
