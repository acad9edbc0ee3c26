"""The source position a pipeline acknowledges never runs ahead of the DLQ's writes on disk.

With ``DLQ_FSYNC=always`` or ``interval``, at every acknowledgement of a
source position no file of the DLQ's segments holds a page not yet on stable
storage (``cachestat``), and the offset file written for it is synced too;
with ``off`` the same check finds unsynced pages (so it can fail).
"""

from __future__ import annotations

from pathlib import Path

import pytest

from compute.dlq.manager import DLQManager
from compute.engine.pipeline import Pipeline
from compute.runtime.retry_policy import RetryPolicy
from compute.sources.offset_store import OffsetStore
from compute.sources.synthetic_source import SyntheticSource
from config.dlq_config import FsyncMode
from tests.builders import dlq_config
from tests.fakes import FakeDestination
from tests.page_cache import require_cachestat, unsynced_files, unsynced_pages
from tests.waiting import wait_until

EVENTS = 600
BATCH = 50


@pytest.mark.parametrize("mode", list(FsyncMode), ids=str)
def test_acknowledged_positions_never_pass_unsynced_dlq_pages(
    tmp_path: Path, mode: FsyncMode
) -> None:
    require_cachestat(tmp_path)
    # One batch in the lanes at a time: at its acknowledgement, the DLQ holds
    # only that batch's writes and those before it.
    cfg = dlq_config(tmp_path, fsync=mode, fsync_interval_ms=100, read_ahead_events=BATCH)
    offsets_path = tmp_path / "offsets.json"
    offsets = OffsetStore(offsets_path, fsync=mode is not FsyncMode.OFF)
    source = SyntheticSource("1", offsets, total_events=EVENTS, seed=3)
    destination = FakeDestination("2", "PG")
    destination.set_down(True)  # every batch goes to the DLQ
    seen_at_ack: list[dict[str, int]] = []
    offset_pages: list[int] = []
    acknowledge = source.acknowledge

    def checked_acknowledge(token: str) -> None:
        seen_at_ack.append(
            {k: v for k, v in unsynced_files(cfg.base_path).items() if "seg_" in k}
        )
        acknowledge(token)
        offset_pages.append(unsynced_pages(offsets_path))

    source.acknowledge = checked_acknowledge  # type: ignore[method-assign]
    with DLQManager(cfg, background=False) as dlq:
        pipeline = Pipeline(
            "p", source, [destination], dlq, cfg, batch_size=BATCH,
            retry_policy=RetryPolicy(max_retries=0, base_delay=0.001, max_delay=0.001),
        )  # fmt: skip
        pipeline.start()
        try:
            wait_until(lambda: pipeline.stats.events >= EVENTS, 60, "every event acknowledged")
        finally:
            pipeline.stop()
        queued = sum(dlq.count(q) for q in dlq.list_queues())
    assert queued == EVENTS
    assert len(seen_at_ack) >= EVENTS // BATCH
    if mode is FsyncMode.OFF:
        assert any(seen_at_ack), "off: the check found nothing unsynced, so it proves nothing"
        return
    assert [s for s in seen_at_ack if s] == []
    assert offset_pages and set(offset_pages) == {0}
