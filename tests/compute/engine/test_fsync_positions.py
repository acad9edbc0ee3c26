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
        seen_at_ack.append({k: v for k, v in unsynced_files(cfg.base_path).items() if "seg_" in k})
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


def test_one_sync_round_lets_every_batch_delivered_before_it_go(tmp_path: Path) -> None:
    """DLQ_FSYNC=interval (200 ms), two pipelines sharing the DLQ, both destinations down:
    2,000 events each in batches of 10 go to the DLQ, at most 10 batches in each
    pipeline's lanes. Each sync round must release every batch delivered before it. Were
    a batch's generation read only when it reached the head, the other pipeline's writes
    would make every batch wait for a round of its own: a batch per 200 ms, 40 s here."""
    cfg = dlq_config(
        tmp_path, fsync=FsyncMode.INTERVAL, fsync_interval_ms=200, read_ahead_events=100
    )
    with DLQManager(cfg, background=False) as dlq:
        pipelines = []
        for n in (1, 2):
            destination = FakeDestination(str(n + 10), f"PG{n}")
            destination.set_down(True)
            pipelines.append(
                Pipeline(
                    f"p{n}",
                    SyntheticSource(str(n), None, total_events=2000, seed=n),
                    [destination],
                    dlq,
                    cfg,
                    batch_size=10,
                    retry_policy=RetryPolicy(max_retries=0, base_delay=0.001, max_delay=0.001),
                )
            )
        for pipeline in pipelines:
            pipeline.start()
        try:
            wait_until(
                lambda: all(p.stats.events >= 2000 for p in pipelines),
                20,
                "every event of both pipelines acknowledged",
            )
        finally:
            for pipeline in pipelines:
                pipeline.stop()
        assert sum(dlq.count(q) for q in dlq.list_queues()) == 4000
