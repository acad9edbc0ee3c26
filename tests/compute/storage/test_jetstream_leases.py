"""Pipeline leases, engine liveness and source positions against a real 3-node JetStream cluster."""

from __future__ import annotations

import itertools
import time
from collections.abc import Iterator

import pytest

from compute.runtime.fence import Fence, Fenced
from compute.storage.jetstream.bridge import NatsBridge
from compute.storage.jetstream.leases import LeaseLost, Leases, kv_key, name_of
from compute.storage.jetstream.positions import PositionConflict, PositionStore
from config.nats_config import NatsConfig
from tests.nats_cluster import NatsCluster, nats_cluster

TTL = 2.0
_prefixes = itertools.count()


@pytest.fixture(scope="module")
def cluster() -> Iterator[NatsCluster]:
    with nats_cluster() as started:
        yield started


@pytest.fixture
def connect(cluster: NatsCluster) -> Iterator[object]:
    """``connect(engine_id)`` -> a bridge to the cluster; every test gets its own buckets."""
    prefix = f"T{next(_prefixes)}_{int(time.time() * 1000) % 10**8}"
    bridges: list[NatsBridge] = []

    def make(engine_id: str) -> NatsBridge:
        config = NatsConfig(
            urls=tuple(cluster.urls), stream_prefix=prefix, lease_ttl=TTL, engine_id=engine_id
        )
        bridge = NatsBridge(config)
        bridges.append(bridge)
        return bridge

    yield make
    for bridge in bridges:
        bridge.close()


def test_keys_are_valid_and_reversible() -> None:
    for name in ("orders", "a.b c/d*é", "x=y", "-_"):
        key = kv_key(name)
        assert all(c.isalnum() or c in "-_=" for c in key)
        assert name_of(key) == name


def test_acquire_is_exclusive_and_the_owner_is_readable(connect) -> None:
    a, b = Leases(connect("engine-a")), Leases(connect("engine-b"))
    lease = a.acquire("orders")
    assert lease is not None
    assert b.acquire("orders") is None
    owner = b.owner("orders")
    assert owner is not None and owner.engine_id == "engine-a"
    assert set(b.owners()) == {"orders"}
    assert b.owner("payments") is None


def test_renewal_keeps_the_lease_past_the_ttl(connect) -> None:
    a, b = Leases(connect("engine-a")), Leases(connect("engine-b"))
    lease = a.acquire("orders")
    assert lease is not None
    since = time.time()
    deadline = time.monotonic() + TTL * 2
    while time.monotonic() < deadline:
        renewed = a.renew(lease, since)
        assert renewed.revision > lease.revision
        assert renewed.valid_until > lease.valid_until
        lease = renewed
        assert b.acquire("orders") is None
        time.sleep(a.renew_every)
    # the fence's deadline is before the servers' expiry: ttl - margin after the request
    assert lease.valid_until - time.monotonic() <= TTL - a.margin


def test_an_expired_lease_is_taken_by_another_and_the_old_owner_cannot_renew(connect) -> None:
    a, b = Leases(connect("engine-a")), Leases(connect("engine-b"))
    lease = a.acquire("orders")
    assert lease is not None
    fence = Fence("orders")
    fence.extend(lease.valid_until)
    assert fence.holds()
    taken = None
    deadline = time.monotonic() + TTL * 3
    while taken is None and time.monotonic() < deadline:
        taken = b.acquire("orders")
        if taken is None:
            time.sleep(0.1)
    assert taken is not None, "the lease did not expire within three TTLs"
    # the old owner's fence closed before the servers expired its lease
    assert not fence.holds()
    with pytest.raises(Fenced, match="not renewed in time"):
        fence.check("write")
    with pytest.raises(LeaseLost):
        a.renew(lease, time.time())
    owner = a.owner("orders")
    assert owner is not None and owner.engine_id == "engine-b"


def test_release_lets_another_engine_take_at_once(connect) -> None:
    a, b = Leases(connect("engine-a")), Leases(connect("engine-b"))
    lease = a.acquire("orders")
    assert lease is not None
    assert a.release(lease)
    assert b.acquire("orders") is not None
    assert not a.release(lease), "a stale release must not delete another engine's lease"
    assert b.owner("orders").engine_id == "engine-b"


def test_fair_share_with_two_engines_and_four_pipelines(connect) -> None:
    a, b = Leases(connect("engine-a")), Leases(connect("engine-b"))
    pipelines = ["p1", "p2", "p3", "p4"]
    a.heartbeat()
    assert a.fair_share(len(pipelines)) == 4  # alone: everything
    b.heartbeat()
    assert a.live_engines() == ["engine-a", "engine-b"]
    assert a.fair_share(len(pipelines)) == b.fair_share(len(pipelines)) == 2
    taken = {"engine-a": [], "engine-b": []}
    for engine in (a, b):
        for name in pipelines:
            if len(taken[engine.engine_id]) < engine.fair_share(len(pipelines)):
                if engine.acquire(name) is not None:
                    taken[engine.engine_id].append(name)
    assert len(taken["engine-a"]) == len(taken["engine-b"]) == 2
    assert set(taken["engine-a"]).isdisjoint(taken["engine-b"])
    assert {n: o.engine_id for n, o in a.owners().items()} == {
        n: e for e, names in taken.items() for n in names
    }
    b.leave()
    assert a.live_engines() == ["engine-a"]
    assert a.fair_share(3) == 3


def test_positions_put_get_all_and_delete(connect) -> None:
    store = PositionStore(connect("engine-a"))
    assert store.get("1") is None
    store.put("1", "100")
    store.put("1", "200")
    store.put("2", "7")
    assert PositionStore(connect("engine-b")).get("1") == "200"
    assert store.all() == {"1": "200", "2": "7"}
    store.delete("2")
    assert store.all() == {"1": "200"}
    store.put("2", "8")  # after a delete, the next put starts the key again
    assert PositionStore(connect("engine-c")).get("2") == "8"


def test_a_position_written_by_another_engine_fails_our_put_loudly(connect) -> None:
    ours, theirs = PositionStore(connect("engine-a")), PositionStore(connect("engine-b"))
    ours.put("1", "100")
    assert theirs.get("1") == "100"
    theirs.put("1", "150")
    with pytest.raises(PositionConflict, match="written by another engine"):
        ours.put("1", "120")
    assert theirs.get("1") == "150"  # not moved back


def test_a_closed_fence_refuses_a_position_put(connect) -> None:
    fence = Fence("orders")
    fence.extend(time.monotonic() + 60)
    store = PositionStore(connect("engine-a"), fence=fence)
    store.put("1", "100")
    fence.lose("lease taken by engine-b")
    with pytest.raises(Fenced, match="lease taken"):
        store.put("1", "200")
    assert PositionStore(connect("engine-b")).get("1") == "100"


def _next_update_unanswered(store: PositionStore, *, landed: bool) -> None:
    """The store's next position update gets no answer, after it was applied or before."""
    import nats.errors

    real = store._kv.update

    async def unanswered(*args: object, **kwargs: object) -> int:
        store._kv.update = real  # type: ignore[method-assign]
        if landed:
            await real(*args, **kwargs)  # type: ignore[arg-type]
        raise nats.errors.TimeoutError

    store._kv.update = unanswered  # type: ignore[method-assign]


@pytest.mark.parametrize("landed", [True, False], ids=["landed", "lost"])
def test_an_unanswered_position_put_is_retried_by_the_next_never_a_pipeline_error(
    connect, landed: bool
) -> None:
    store, other = PositionStore(connect("engine-a")), PositionStore(connect("engine-b"))
    store.put("1", "100")
    _next_update_unanswered(store, landed=landed)
    store.put("1", "200")  # no error: a node died mid-request, the pipeline goes on
    assert other.get("1") == ("200" if landed else "100")  # never ahead of what was acked
    store.put("1", "300")  # its revision settled by reading: no false conflict
    assert other.get("1") == "300"


def test_an_unanswered_put_that_lands_late_is_ours_not_a_conflict(connect) -> None:
    store, late = PositionStore(connect("engine-a")), PositionStore(connect("engine-a-late"))
    store.put("1", "100")
    _next_update_unanswered(store, landed=False)
    store.put("1", "200")
    late.get("1")
    real = store._kv.update

    async def landing_first(*args: object, **kwargs: object) -> int:
        store._kv.update = real  # type: ignore[method-assign]
        late.put("1", "200")  # the unanswered publish, sent on reconnection, lands now
        return await real(*args, **kwargs)  # type: ignore[arg-type]

    store._kv.update = landing_first  # type: ignore[method-assign]
    store.put("1", "300")
    assert late.get("1") == "300"


def test_after_an_unanswered_put_another_engines_position_still_fails_ours(connect) -> None:
    ours, theirs = PositionStore(connect("engine-a")), PositionStore(connect("engine-b"))
    ours.put("1", "100")
    _next_update_unanswered(ours, landed=False)
    ours.put("1", "200")
    theirs.get("1")
    theirs.put("1", "150")
    with pytest.raises(PositionConflict, match="written by another engine"):
        ours.put("1", "300")
    assert theirs.get("1") == "150"


def test_a_race_nats_py_passes_through_unwrapped_is_a_lost_race_not_a_crash() -> None:
    """Unit test of an error path (seen once in a suite run): nats-py's KV create, retrying
    at the revision it read, lets another writer's win through as a plain BadRequestError."""
    from types import SimpleNamespace

    from nats.js.errors import BadRequestError

    from compute.storage.jetstream.leases import Lease, LeaseLost, Leases

    def refuse(coroutine: object) -> None:
        coroutine.close()  # type: ignore[attr-defined]
        raise BadRequestError(code=400, err_code=10071, description="wrong last sequence: 1")

    leases = Leases.__new__(Leases)
    leases.bridge = SimpleNamespace(run=refuse)  # type: ignore[assignment]
    leases.engine_id, leases.ttl, leases.margin = "engine-b", 3.0, 0.75
    leases._leases = SimpleNamespace(  # type: ignore[attr-defined]
        create=lambda *a, **k: _never(), update=lambda *a, **k: _never()
    )
    assert leases.acquire("orders") is None
    with pytest.raises(LeaseLost, match="lease of orders lost"):
        leases.renew(Lease("orders", 1, "", 0.0), since=0.0)


async def _never() -> None:
    raise AssertionError("not awaited")
