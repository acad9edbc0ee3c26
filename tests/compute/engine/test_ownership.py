"""The ownership round against a real cluster, engines driven by hand: share, loss, hand-over."""

from __future__ import annotations

import itertools
import time
from collections.abc import Iterator
from dataclasses import dataclass, field

import pytest

from compute.engine.ownership import Ownership
from compute.engine.pipeline import PipelineState
from compute.runtime.fence import Fence
from compute.storage.jetstream.bridge import NatsBridge
from compute.storage.jetstream.leases import Leases
from config.nats_config import NatsConfig
from config.pipelines import PipelineSpec, SourceSpec
from tests.nats_cluster import NatsCluster, nats_cluster

TTL = 2.0
_prefixes = itertools.count()


@dataclass
class _Stats:
    last_error: str | None = None


@dataclass
class FakePipeline:
    """What the ownership round reads of a pipeline: its name, state, fence and last error."""

    name: str
    fence: Fence
    state: PipelineState = PipelineState.RUNNING
    stats: _Stats = field(default_factory=_Stats)
    retired: bool = False


class Engine:
    """An engine reduced to its ownership: the pipelines it runs, built and retired by hand."""

    def __init__(self, bridge: NatsBridge, engine_id: str, specs: list[PipelineSpec]) -> None:
        self.running: list[FakePipeline] = []
        self.retired: list[FakePipeline] = []
        self.ownership = Ownership(
            Leases(bridge, engine_id=engine_id),
            specs,
            build=self.build,
            retire=self.retire,
            changed=lambda pipelines: setattr(self, "running", pipelines),
        )

    def build(self, spec: PipelineSpec, fence: Fence) -> FakePipeline:
        return FakePipeline(spec.name, fence)

    def retire(self, pipeline: FakePipeline) -> None:
        pipeline.retired = True
        self.retired.append(pipeline)

    def names(self) -> set[str]:
        return {p.name for p in self.running}

    def settle(self) -> None:
        """Wait for the hand-over threads (stop, then release) of this engine."""
        for thread in self.ownership._handovers:
            thread.join(10)


@pytest.fixture(scope="module")
def cluster() -> Iterator[NatsCluster]:
    with nats_cluster() as started:
        yield started


@pytest.fixture
def engines(cluster: NatsCluster) -> Iterator[object]:
    prefix = f"OWN{next(_prefixes)}_{int(time.time() * 1000) % 10**8}"
    specs = [PipelineSpec(f"p{i}", SourceSpec(str(i), "synthetic", {}), ()) for i in range(1, 5)]
    bridges: list[NatsBridge] = []

    def make(engine_id: str) -> Engine:
        config = NatsConfig(urls=tuple(cluster.urls), stream_prefix=prefix, lease_ttl=TTL)
        bridge = NatsBridge(config)
        bridges.append(bridge)
        return Engine(bridge, engine_id, specs)

    yield make
    for bridge in bridges:
        bridge.close()


def test_two_engines_end_with_two_pipelines_each(engines) -> None:
    a, b = engines("a"), engines("b")
    a.ownership.round()
    assert len(a.names()) == 4  # alone: everything
    b.ownership.round()  # b counts two engines now, but everything is held
    assert b.names() == set()
    a.ownership.round()  # over its share of 2: hands one over per round
    a.ownership.round()
    a.settle()
    b.ownership.round()
    assert len(a.names()) == len(b.names()) == 2
    assert a.names().isdisjoint(b.names())
    assert all(p.retired and not p.fence.holds() for p in a.retired)


def test_a_lost_lease_closes_the_fence_before_another_engine_takes_it(engines) -> None:
    a, b = engines("a"), engines("b")
    a.ownership.round()
    b.ownership.round()
    held = {p.name: p for p in a.running}
    # a "pauses": no round for longer than the TTL; b takes what expires
    deadline = time.monotonic() + TTL * 4
    while len(b.names()) < 4 and time.monotonic() < deadline:
        b.ownership.round()
        if b.names() & set(held):
            # the instant b holds one of a's pipelines, a's fence for it is closed
            assert not any(held[n].fence.holds() for n in b.names() & set(held))
        time.sleep(0.2)
    assert b.names() == {"p1", "p2", "p3", "p4"}
    a.ownership.round()  # a continues: its renewals are refused
    a.settle()
    assert a.names() == set()
    assert all(p.retired for p in held.values())
    assert all("lease" in (p.fence.refusal() or "") for p in held.values())


def test_a_fenced_pipeline_is_dropped_and_released_at_once(engines) -> None:
    a, b = engines("a"), engines("b")
    a.ownership.round()
    victim = a.running[0]
    victim.state = PipelineState.FENCED
    victim.stats.last_error = "position of source 1 was written by another engine"
    a.ownership.round()
    a.settle()
    assert victim.retired and victim.name not in a.names()
    b.ownership.round()
    assert victim.name in b.names()  # released: taken without waiting for the TTL


def test_a_clean_stop_releases_every_lease(engines) -> None:
    a, b = engines("a"), engines("b")
    a.ownership.round()
    a.ownership.closing()
    a.ownership.round()  # closing: renews, takes nothing
    a.ownership.stop()
    a.ownership.release_all()
    assert all(not p.fence.holds() for p in a.running)
    b.ownership.round()
    assert b.names() == {"p1", "p2", "p3", "p4"}
