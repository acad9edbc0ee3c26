"""A real in-process Engine over a FakeDestination, fed by the test, and a /metrics parser."""

from __future__ import annotations

import threading
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from prometheus_client.parser import text_string_to_metric_families

from compute.codec.message import DLQMessage
from compute.delivery.event_handler import deferred_failure
from compute.dlq.manager import DLQManager
from compute.engine.engine import Engine
from compute.engine.pipeline import Pipeline
from compute.queue_id import QueueId
from compute.runtime.retry_policy import RetryPolicy
from compute.sources.base import RejectedEvent, Source, SourceBatch
from config.admin_config import AdminConfig
from config.alert_config import AlertConfig
from config.pipelines import PipelineSpec, SourceSpec
from config.settings import Settings
from destinations.records import ChangeRecord
from tests.builders import TABLE, change, dlq_config
from tests.fakes import FakeDestination
from tests.waiting import wait_until

# One in-place retry of a live write, so retry counts are exact.
ONE_RETRY = RetryPolicy(max_retries=1, base_delay=0.001, max_delay=0.001)
QUEUE = QueueId("1", TABLE, "2")
LABELS = {"source": "1", "table": TABLE, "destination": "2"}


class FeedSource(Source):
    """An endless source the test appends to; remembers what was acknowledged."""

    def __init__(self, source_id: str = "1") -> None:
        super().__init__(source_id)
        self._lock = threading.Lock()
        self.records: list[ChangeRecord] = []
        self.next_index = 0
        self.acknowledged = 0

    def feed(self, records: Sequence[ChangeRecord]) -> None:
        with self._lock:
            self.records.extend(records)

    def read(self, max_events: int) -> SourceBatch:
        with self._lock:
            batch = self.records[self.next_index : self.next_index + max_events]
            self.next_index += len(batch)
            return SourceBatch(batch, str(self.next_index))

    def acknowledge(self, resume_token: str) -> None:
        self.acknowledged = int(resume_token)

    @property
    def exhausted(self) -> bool:
        return False

    @property
    def rejected(self) -> Sequence[RejectedEvent]:
        return ()


@dataclass
class Harness:
    engine: Engine
    source: FeedSource
    dest: FakeDestination
    skew: list[float] = field(default_factory=lambda: [0.0])

    @property
    def pipeline(self) -> Pipeline:
        return self.engine.pipelines[0]

    def scrape(self) -> dict[tuple[str, frozenset[tuple[str, str]]], float]:
        """Every sample of ``GET /metrics``, parsed with the official text-format parser."""
        assert self.engine.metrics is not None
        body, content_type = self.engine.metrics.render()
        assert content_type.startswith("text/plain; version=")
        return parse(body.decode())


def parse(text: str) -> dict[tuple[str, frozenset[tuple[str, str]]], float]:
    samples: dict[tuple[str, frozenset[tuple[str, str]]], float] = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            samples[(sample.name, frozenset(sample.labels.items()))] = sample.value
    return samples


def sample(
    samples: dict[tuple[str, frozenset[tuple[str, str]]], float], metric: str, /, **labels: str
) -> float | None:
    """The value of one sample, None when the series is absent."""
    return samples.get((metric, frozenset(labels.items())))


def start_engine(
    tmp_path: Path,
    *,
    alerts: AlertConfig | None = None,
    admin: AdminConfig | None = None,
    batch_size: int = 10,
    **dlq_overrides: Any,
) -> Harness:
    """A started Engine with one pipeline: FeedSource "1" -> FakeDestination "2" (the admin
    API off unless ``admin`` says otherwise)."""
    cfg = dlq_config(tmp_path, **dlq_overrides)
    settings = Settings(
        dlq=cfg,
        admin=admin or AdminConfig(enabled=False),
        alerts=alerts or AlertConfig(),
        state_path=tmp_path / "state",
    )
    source = FeedSource()
    dest = FakeDestination("2", "PG")
    skew = [0.0]

    def clock() -> float:
        return time.time() + skew[0]

    def factory(spec: PipelineSpec, dlq: Any) -> Pipeline:
        return Pipeline(
            spec.name,
            source,
            [dest],
            dlq,
            cfg,
            batch_size=batch_size,
            retry_policy=ONE_RETRY,
            probe_timeout=1.0,
            clock=clock,
        )

    spec = PipelineSpec("p", SourceSpec("1", "feed"), ())
    engine = Engine(settings, [spec], pipeline_factory=factory)
    engine.start()
    return Harness(engine, source, dest, skew)


T0 = 1_800_000_000.0


class Disk:
    """An injected ``shutil.disk_usage`` whose usage the test sets."""

    def __init__(self, percent: float, total: int = 1000 * 1024**2) -> None:
        self.total = total
        self.percent = percent

    def __call__(self, path: Path) -> tuple[int, int, int]:
        used = int(self.total * self.percent / 100)
        return self.total, used, self.total - used


def enqueue(dlq: DLQManager, count: int, at: float, queue: QueueId = QUEUE) -> None:
    failure = deferred_failure("destination down", at)
    messages = [
        DLQMessage.create(queue, change(i, i, table=queue.table), failure, now=at)
        for i in range(count)
    ]
    assert dlq.enqueue(queue, messages).accepted == count


def drain(dlq: DLQManager, count: int, queue: QueueId = QUEUE) -> None:
    lease = dlq.read_batch(queue, count)
    assert len(lease) == count
    dlq.ack(lease)


def wait_sample(h: Harness, metric: str, expected: float, **labels: str) -> None:
    """Wait until a scrape shows ``expected``: counters move just after the queue does
    (the worker counts a batch once it is acknowledged)."""
    wait_until(
        lambda: sample(h.scrape(), metric, **labels) == expected,
        30,
        f"{metric}{labels} to reach {expected:g}",
    )


def exported_metric_names(tmp_path: Path) -> set[str]:
    """Every metric name a running engine exports, as a PromQL query may name it: with a
    queue, a down destination and a drop, so every labelled family has series; a
    counter also as ``<name>_total``, a histogram as ``_bucket``, ``_sum``, ``_count``."""
    from config.dlq_config import WhenFull

    h = start_engine(tmp_path, when_full=WhenFull.DROP_NEWEST, max_queue_messages=5)
    try:
        h.dest.set_down(True)
        h.source.feed([change(i, i) for i in range(1, 21)])
        wait_until(lambda: h.source.acknowledged == 20, 30, "h.source.acknowledged == 20")
        assert h.engine.metrics is not None
        text = h.engine.metrics.render()[0].decode()
    finally:
        h.engine.stop()
    names: set[str] = set()
    for family in text_string_to_metric_families(text):
        names.add(family.name)
        if family.type == "counter":
            names.add(f"{family.name}_total")
        if family.type == "histogram":
            names.update(f"{family.name}{suffix}" for suffix in ("_bucket", "_sum", "_count"))
        names.update(s.name for s in family.samples)
    return names
