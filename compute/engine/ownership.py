"""Which pipelines this engine runs when engines share them: leases taken, kept, lost, released.

With ``DLQ_BACKEND=jetstream`` every engine reads the same pipelines file and
the engine starts none of them by itself. A thread (``ownership``) does, every
third of ``DLQ_LEASE_TTL``:

1. a heartbeat in ``<prefix>_ENGINES`` (how many engines are alive);
2. renews the lease of each pipeline it runs; a renewal refused (another
   engine wrote the lease: it expired and was taken) or a fence that closed
   (no renewal in time: the process was paused or cut off) stops the
   pipeline and drops it, logged at WARNING;
3. over its fair share (ceil(pipelines / live engines), e.g. after another
   engine joined) it hands one pipeline over: fence closed, pipeline stopped,
   lease deleted, so the other engine takes it on its next round;
4. under its fair share it takes pipelines nobody holds (never held, released,
   or expired), building a new Pipeline for each (a stopped one cannot start
   again), logged at INFO.

``stop()`` (the engine stopping) ends the thread; ``release_all()``, called
once the pipelines are stopped, deletes the leases so another engine takes
them at once instead of after the TTL. This is Kafka Connect's distributed
mode with the lease bucket in the place of its group coordinator.
"""

from __future__ import annotations

import logging
import threading
import time
import zlib
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

from compute.engine.pipeline import Pipeline, PipelineState
from compute.runtime.fence import Fence
from compute.runtime.supervisor import Supervisor
from compute.storage.jetstream.bridge import StoreUnavailable
from compute.storage.jetstream.leases import Lease, LeaseLost, Leases, Owner
from config.pipelines import PipelineSpec

logger = logging.getLogger(__name__)

# A pipeline that failed to build (its destination down at start, a table
# check) is not tried again by this engine before this many seconds.
BUILD_RETRY_DELAY = 10.0


@dataclass
class _Owned:
    spec: PipelineSpec
    lease: Lease
    fence: Fence
    since: float  # wall clock, kept in the lease's value on every renewal
    pipeline: Pipeline | None = None


class Ownership:
    """Takes this engine's fair share of ``specs`` and keeps their leases while it runs them.

    ``build(spec, fence)`` makes and starts a Pipeline whose writes ask
    ``fence``; ``retire(pipeline)`` stops and closes one; ``changed(pipelines)``
    is told the pipelines now running, each time the set changes.
    """

    def __init__(
        self,
        leases: Leases,
        specs: Sequence[PipelineSpec],
        *,
        build: Callable[[PipelineSpec, Fence], Pipeline],
        retire: Callable[[Pipeline], None],
        changed: Callable[[list[Pipeline]], None],
    ) -> None:
        self.leases = leases
        self.engine_id = leases.engine_id
        # Each engine tries the free pipelines in its own order, so that two
        # engines starting together rarely race for the same lease.
        self.specs = sorted(specs, key=lambda s: zlib.crc32(f"{self.engine_id}/{s.name}".encode()))
        self._build = build
        self._retire = retire
        self._changed = changed
        self._owned: dict[str, _Owned] = {}
        self._lock = threading.Lock()  # guards _owned against status readers
        self._stop = threading.Event()
        self._not_before: dict[str, float] = {}  # pipeline -> monotonic time it may be taken
        self._handovers: list[threading.Thread] = []
        self.owners: dict[str, Owner] = {}  # as last read, for status
        self.supervisor = Supervisor("ownership", self._loop, self._stop)
        self._unavailable = False
        self._closing = False
        self._round_lock = threading.Lock()  # closing() waits out a round taking a pipeline

    # ------------------------------------------------------------ lifecycle

    def start(self) -> None:
        self.supervisor.start()

    def closing(self) -> None:
        """The engine is stopping its pipelines: renew on, take and hand over nothing more."""
        self._closing = True
        with self._round_lock:
            pass  # a round under way has finished: the engine's list is complete

    def stop(self, timeout: float = 10.0) -> None:
        """End the thread; the pipelines keep running until the engine stops them."""
        self._stop.set()
        self.supervisor.join(timeout)
        for thread in self._handovers:
            thread.join(timeout)

    def release_all(self) -> None:
        """Delete every lease held (the pipelines are stopped): others take them at once."""
        with self._lock:
            owned, self._owned = list(self._owned.values()), {}
        for item in owned:
            item.fence.lose("engine stopped")
            if self.leases.release(item.lease):
                logger.info(
                    "pipeline released: pipeline=%s engine=%s", item.spec.name, self.engine_id
                )
        self.leases.leave()

    def pipelines(self) -> list[Pipeline]:
        with self._lock:
            return [o.pipeline for o in self._owned.values() if o.pipeline is not None]

    def status(self) -> dict[str, Any]:
        return {
            "engine": self.engine_id,
            "lease_ttl": self.leases.ttl,
            "owned": sorted(self._owned),
            "owners": {name: owner.to_json() for name, owner in sorted(self.owners.items())},
        }

    # ------------------------------------------------------------ the round

    def _loop(self) -> None:
        while not self._stop.is_set():
            started = time.monotonic()
            self.round()
            self._stop.wait(max(0.05, self.leases.renew_every - (time.monotonic() - started)))

    def round(self) -> None:
        """One heartbeat, renewal, hand-over and take round (the thread's body; tests call it)."""
        with self._round_lock:
            self._round()

    def _round(self) -> None:
        try:
            self.leases.heartbeat()
            self._renew_all()
            if self._stop.is_set() or self._closing:
                return
            self.owners = self.leases.owners()
            share = self.leases.fair_share(len(self.specs))
            if len(self._owned) > share:
                self._hand_over(share)
            elif len(self._owned) < share:
                self._take(share)
        except StoreUnavailable as error:
            # Leases are not renewed meanwhile: the fences close by themselves.
            if not self._unavailable:
                logger.warning("ownership round: JetStream unavailable: %s", error)
            self._unavailable = True
            self._drop_unfenced()
            return
        if self._unavailable:
            logger.info("ownership round: JetStream answers again")
            self._unavailable = False

    def _renew_all(self) -> None:
        for name, item in list(self._owned.items()):
            pipeline = item.pipeline
            if pipeline is not None and pipeline.state is PipelineState.FENCED:
                self._drop(name, pipeline.stats.last_error or "a write was refused", release=True)
                continue
            if not item.fence.holds():
                self._drop(name, item.fence.refusal() or "fence closed", release=True)
                continue
            try:
                item.lease = self.leases.renew(item.lease, item.since)
            except LeaseLost as error:
                self._drop(name, str(error), release=False)
                continue
            item.fence.extend(item.lease.valid_until)

    def _drop_unfenced(self) -> None:
        for name, item in list(self._owned.items()):
            if not item.fence.holds():
                self._drop(name, item.fence.refusal() or "fence closed", release=True)

    def _drop(self, name: str, reason: str, *, release: bool) -> None:
        """Lost: the fence is closed at once, the pipeline stopped off this thread."""
        with self._lock:
            item = self._owned.pop(name)
        item.fence.lose(reason)
        logger.warning(
            "pipeline lease lost, pipeline stopped: pipeline=%s engine=%s reason=%s",
            name,
            self.engine_id,
            reason,
        )
        self._publish()
        self._stop_off_thread(item, release=release)

    def _hand_over(self, share: int) -> None:
        name = sorted(self._owned)[-1]
        with self._lock:
            item = self._owned.pop(name)
        # The fence stays open while the pipeline stops (the lease is still ours
        # until it is deleted): its last delivered batch is acknowledged, and the
        # next owner does not apply it again.
        logger.info(
            "pipeline handed over (over the fair share of %d): pipeline=%s engine=%s",
            share,
            name,
            self.engine_id,
        )
        self._publish()
        self._stop_off_thread(item, release=True)

    def _stop_off_thread(self, item: _Owned, *, release: bool) -> None:
        """Stop the pipeline (seconds) without holding up the other leases' renewals."""

        def stop() -> None:
            if item.pipeline is not None:
                self._retire(item.pipeline)
            item.fence.lose("handed over to another engine")  # closed already when lost
            # Deleted only once it is stopped: the next owner starts after our last write.
            if release and self.leases.release(item.lease):
                logger.info(
                    "pipeline released: pipeline=%s engine=%s", item.spec.name, self.engine_id
                )

        # Lost or handed over: left to the others for one TTL, so that an engine
        # just paused or cut off does not grab it straight back.
        self._not_before[item.spec.name] = time.monotonic() + self.leases.ttl
        thread = threading.Thread(target=stop, name=f"handover-{item.spec.name}", daemon=True)
        self._handovers = [t for t in self._handovers if t.is_alive()] + [thread]
        thread.start()

    def _take(self, share: int) -> None:
        now = time.monotonic()
        for spec in self.specs:
            if len(self._owned) >= share or self._stop.is_set():
                return
            if spec.name in self._owned or spec.name in self.owners:
                continue
            if now < self._not_before.get(spec.name, -1.0):
                continue
            lease = self.leases.acquire(spec.name, spec.source.id)
            if lease is None:
                continue  # another engine was quicker
            fence = Fence(spec.name)
            fence.extend(lease.valid_until)
            item = _Owned(spec, lease, fence, time.time())
            try:
                item.pipeline = self._build(spec, fence)
            except Exception as error:  # noqa: BLE001 - one pipeline's trouble, the others go on
                fence.lose("failed to start")
                self.leases.release(lease)
                self._not_before[spec.name] = now + BUILD_RETRY_DELAY
                logger.error(
                    "pipeline taken but failed to start, released: pipeline=%s engine=%s "
                    "error=%s: %s",
                    spec.name,
                    self.engine_id,
                    type(error).__name__,
                    error,
                )
                continue
            try:
                # A slow build may have outlasted the fence: renewed, the lease reopens it.
                item.lease = self.leases.renew(lease, item.since)
                fence.extend(item.lease.valid_until)
            except LeaseLost as error:
                fence.lose(str(error))
                self._retire(item.pipeline)
                continue
            with self._lock:
                self._owned[spec.name] = item
            logger.info(
                "pipeline taken: pipeline=%s engine=%s revision=%d",
                spec.name,
                self.engine_id,
                lease.revision,
            )
            self._publish()
            # Building took time (connections, table checks): renew every lease
            # now, this one too, before its fence closes.
            self._renew_all()

    def _publish(self) -> None:
        self._changed(self.pipelines())
