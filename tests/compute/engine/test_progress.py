"""The pipeline's progress line and deferred summaries: what an operator reads every interval."""

from __future__ import annotations

import json
import logging
import re
from pathlib import Path

import pytest

from compute.dlq.manager import DLQManager
from compute.engine.pipeline import Pipeline
from compute.queue_id import QueueId
from compute.runtime.retry_policy import RetryPolicy
from compute.sources.jsonl_source import JsonLinesSource
from config.errors import ConfigError
from config.settings import load_settings
from tests.builders import TABLE, change, dlq_config
from tests.compute.helpers import ListSource
from tests.fakes import FakeDestination
from tests.waiting import wait_until

NO_RETRY = RetryPolicy(max_retries=0, base_delay=0.001, max_delay=0.001)
T0 = 1_700_000_000.0


class Clock:
    def __init__(self) -> None:
        self.now = T0

    def __call__(self) -> float:
        return self.now


def lines(caplog: pytest.LogCaptureFixture, prefix: str = "") -> list[str]:
    """The reporter's lines starting with ``prefix`` since the last call."""
    found = [
        r.getMessage()
        for r in caplog.records
        if r.name == "compute.engine.progress" and r.getMessage().startswith(prefix)
    ]
    caplog.clear()
    return found


def test_progress_line_and_deferred_summary_every_interval(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    clock = Clock()
    # committed at the source half a second before the pipeline reads them
    history = [change(i, i % 7)._replace(commit_ts=T0 - 0.5) for i in range(1, 61)]
    dest = FakeDestination("2", "PG")
    cfg = dlq_config(tmp_path)
    queue = QueueId("1", TABLE, "2")
    with DLQManager(cfg, background=False) as dlq:
        pipeline = Pipeline(
            "orders", ListSource(history), [dest], dlq, cfg, batch_size=10,
            retry_policy=NO_RETRY, clock=clock,
        )  # fmt: skip
        caplog.set_level(logging.INFO)
        pipeline.progress.report()  # where the first interval starts
        assert lines(caplog, "progress") == []
        assert pipeline.step() and pipeline.step()
        clock.now += 10
        pipeline.progress.report()
        assert lines(caplog) == [
            "progress pipeline=orders in=2/s read=20 written=20 queued=0 replayed=0 parked=0 "
            "dropped=0 rejected=0 skipped=0 backlog=0 position=0/14#0 lag=0.5s"
        ]

        # an outage: the first batch fails and is queued, the next ones wait behind it
        dest.set_down(True)
        for _ in range(4):
            assert pipeline.step()
        clock.now += 10
        pipeline.progress.report()
        assert lines(caplog) == [
            "progress pipeline=orders in=4/s read=40 written=0 queued=40 replayed=0 parked=0 "
            "dropped=0 rejected=0 skipped=0 backlog=40 position=0/3C#0 lag=10.5s",
            f"deferred pipeline=orders queue={queue} events=40 since_last=10.0s "
            "destination_health=unhealthy",
        ]
        clock.now += 5
        pipeline.progress.report()  # nothing deferred since: no deferred line
        assert lines(caplog) == [
            "progress pipeline=orders in=0/s read=0 written=0 queued=0 replayed=0 parked=0 "
            "dropped=0 rejected=0 skipped=0 backlog=40 position=0/3C#0 lag=10.5s"
        ]

        dest.set_down(False)
        pipeline.worker.run_once(clock.now)
        clock.now += 10
        pipeline.progress.report()
        assert lines(caplog, "progress") == [
            "progress pipeline=orders in=0/s read=0 written=0 queued=0 replayed=40 parked=0 "
            "dropped=0 rejected=0 skipped=0 backlog=0 position=0/3C#0 lag=10.5s"
        ]


def test_a_running_pipeline_logs_progress_every_interval(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    history = [change(i, i % 7) for i in range(1, 101)]
    dest = FakeDestination("2", "PG")
    cfg = dlq_config(tmp_path, progress_interval=0.1)
    caplog.set_level(logging.INFO, logger="compute.engine.progress")
    with DLQManager(cfg) as dlq:
        pipeline = Pipeline("p", ListSource(history), [dest], dlq, cfg, batch_size=10)
        pipeline.start()
        try:

            def progress() -> list[logging.LogRecord]:
                return [r for r in caplog.records if r.getMessage().startswith("progress ")]

            def counted(field: str) -> int:
                return sum(
                    int(re.search(rf" {field}=(\d+)", r.getMessage())[1]) for r in progress()
                )

            # the lines' counts (since the line before) add up to the whole run
            wait_until(lambda: counted("written") == 100, 20, "progress lines adding to 100")
            wait_until(lambda: len(progress()) >= 3, 20, "three progress lines")
        finally:
            pipeline.stop()
    assert counted("read") == 100 and counted("queued") == 0
    assert all(r.getMessage().startswith("progress pipeline=p in=") for r in progress())
    assert all(" position=0/64#0 lag=-" in r.getMessage() for r in progress()[-1:])
    gaps = [b.created - a.created for a, b in zip(progress(), progress()[1:], strict=False)]
    assert all(gap >= 0.09 for gap in gaps), gaps  # one per interval, not more


def test_progress_interval_zero_starts_no_progress_thread(tmp_path: Path) -> None:
    cfg = dlq_config(tmp_path, progress_interval=0)
    with DLQManager(cfg, background=False) as dlq:
        pipeline = Pipeline("p", ListSource([]), [FakeDestination("2", "PG")], dlq, cfg)
        pipeline.start()
        try:
            names = [t["thread"] for t in pipeline.status()["threads"]]
            assert "pipeline-p-progress" not in names
            assert not pipeline.progress.supervisor.is_alive()
        finally:
            pipeline.stop()


def test_rejected_and_skipped_events_count_all_not_the_last_kept(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    path = tmp_path / "events.jsonl"
    good = {"op": "c", "after": {"id": 1}, "key": {"id": 1}, "source": {"table": "t", "lsn": 5}}
    # 7 malformed lines (rejected); 3 tombstones and 2 empty lines (skipped: no change)
    path.write_text("{bad\n" * 7 + "null\n" * 3 + "\n\n" + json.dumps(good) + "\n")
    source = JsonLinesSource("1", path, None, max_rejected=2)
    cfg = dlq_config(tmp_path)
    with DLQManager(cfg, background=False) as dlq:
        pipeline = Pipeline("p", source, [FakeDestination("2", "PG")], dlq, cfg, batch_size=10)
        pipeline.progress.report()
        while pipeline.step():
            pass
        assert len(source.rejected) == 2  # only the last ones are kept...
        assert pipeline.status()["rejected_events"] == 7  # ...but all are counted
        assert pipeline.status()["skipped_events"] == 5
        caplog.set_level(logging.INFO)
        pipeline.progress.report()
    [line] = lines(caplog, "progress")
    assert " read=1 written=1 " in line and " rejected=7 skipped=5 " in line


@pytest.mark.parametrize("raw", ["-1", "0.05", "86401", "10s", "nan"])
def test_bad_progress_interval_is_one_clear_config_error(tmp_path: Path, raw: str) -> None:
    with pytest.raises(ConfigError) as info:
        load_settings(env={"DLQ_PROGRESS_INTERVAL": raw}, dotenv_path=tmp_path / "absent.env")
    assert info.value.problems == [
        f"DLQ_PROGRESS_INTERVAL={raw!r} is invalid: expected seconds between a pipeline's "
        "progress lines, 0 (off) or a number from 0.1 to 86400"
    ]
