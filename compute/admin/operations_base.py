"""What every operator action needs: the DLQ, the settings, the recovery workers, a queue held."""

from __future__ import annotations

import contextlib
import logging
import time
from collections.abc import Callable, Mapping, Sequence
from contextlib import AbstractContextManager
from typing import TYPE_CHECKING, Any, Protocol

from compute.dlq.manager import DLQManager
from compute.errors import DLQConflictError, QueueNotFoundError
from compute.queue_id import QueueId
from compute.recovery.worker import DLQRecoveryWorker
from config.nats_config import Backend
from config.pipelines import DEFAULT_PRIORITY
from config.settings import Settings

if TYPE_CHECKING:
    from compute.storage.jetstream.leases import Owner

logger = logging.getLogger(__name__)

Progress = Callable[[int], None]


def no_progress(done: int) -> None:
    return None


class PipelineView(Protocol):
    """What operations need of a running pipeline (``compute.engine.pipeline.Pipeline``)."""

    name: str
    worker: DLQRecoveryWorker

    def status(self) -> dict[str, Any]: ...


class OperationsBase:
    """The state the operator's actions share (see ``operations.py``)."""

    def __init__(
        self,
        dlq: DLQManager,
        settings: Settings,
        *,
        pipelines: Callable[[], Sequence[PipelineView]] | None = None,
        threads: Callable[[], Sequence[dict[str, Any]]] | None = None,
        mode: str = "offline",
        clock: Callable[[], float] = time.time,
        owners: Callable[[], Mapping[str, Owner]] | None = None,
    ) -> None:
        self.dlq = dlq
        # The running engine's view of the pipeline leases (jetstream); offline, read anew.
        self._owners = owners
        self.settings = settings
        self.mode = mode
        self._pipelines = pipelines
        # Status of the engine's own threads (DLQ maintenance, alert monitor,
        # webhook sender); the pipelines' threads come with their status.
        self._threads = threads
        self._clock = clock
        self._offline_workers: dict[str, DLQRecoveryWorker] | None = None

    @property
    def running(self) -> bool:
        return self._pipelines is not None

    def pipeline_owners(self) -> Mapping[str, Owner] | None:
        """Pipeline name -> owner engine when engines share pipelines (jetstream), else None."""
        if self.settings.dlq.backend is not Backend.JETSTREAM:
            return None
        if self._owners is not None:
            return self._owners()
        from compute.admin.owners import read_owners

        return read_owners(self.settings)

    def check_owner(self, queue: QueueId, owners: Mapping[str, Owner] | None | bool = True) -> None:
        """Refuse to change ``queue`` when another engine runs its pipeline (jetstream).

        Two engines replaying or editing one queue would deliver its changes
        twice and out of order (an older value landing after a newer one):
        only the engine holding the pipeline's lease may. The operator goes
        through that engine's admin API, or stops it (its lease is released).
        """
        if owners is True:  # not read by the caller: read them now
            owners = self.pipeline_owners()
        if not owners or owners is True:
            return  # rocksq (one engine per base path, locked), or nobody owns anything
        from compute.admin.owners import owners_by_source

        owner = owners_by_source(owners).get(queue.source_id)
        if owner is None:
            return
        if self.running and owner.engine_id == self.settings.dlq.nats.engine_id:
            return  # this engine runs it
        pipeline = next((name for name, o in owners.items() if o is owner), "?")
        raise DLQConflictError(
            f"queue {queue.main} belongs to pipeline {pipeline}, which engine "
            f"{owner.engine_id} runs: change it there (rosetta dlq with that engine's "
            "DLQ_BASE_PATH reaches its admin API), or stop that engine first"
        )

    def known(self, queue: QueueId) -> QueueId:
        queue = queue.main
        if queue not in self.dlq.list_queues() and queue not in self.dlq.list_queues(refresh=True):
            raise QueueNotFoundError(
                f"no queue {queue} under {self.settings.dlq.base_path} "
                "(`rosetta dlq queues` lists them)"
            )
        return queue

    def workers(self) -> list[DLQRecoveryWorker]:
        if self._pipelines is not None:
            return [p.worker for p in self._pipelines()]
        if self._offline_workers is None:
            self._offline_workers = {}
        return list(self._offline_workers.values())

    def worker_for(self, queue: QueueId, *, build: bool) -> DLQRecoveryWorker | None:
        for worker in self.workers():
            if worker.source_id == queue.source_id and queue.destination_id in worker.destinations:
                return worker
        if self._pipelines is not None or not build:
            return None
        return self._build_offline_worker(queue)

    def running_priority(self, queue: QueueId) -> int | None:
        """The replay priority of ``queue``'s table in the running engine (0 when no
        pipeline delivers it); None with the engine stopped (no pipeline is loaded)."""
        if not self.running:
            return None
        worker = self.worker_for(queue, build=False)
        return worker.priority_of(queue) if worker is not None else DEFAULT_PRIORITY

    def _build_offline_worker(self, queue: QueueId) -> DLQRecoveryWorker | None:
        """Offline: the pipeline delivering ``queue``, from the pipelines config."""
        from compute.delivery.health import DestinationHealth
        from config.pipeline_source import load_pipeline_specs
        from destinations.factory import build_destination

        for spec in load_pipeline_specs(self.settings):
            if str(spec.source.id) != queue.source_id:
                continue
            if not any(str(d.id) == queue.destination_id for d in spec.destinations):
                continue
            destinations = [build_destination(d) for d in spec.destinations]
            health = {d.destination_id: DestinationHealth(d) for d in destinations}
            worker = DLQRecoveryWorker(
                spec.name,
                spec.source.id,
                destinations,
                health,
                self.dlq,
                self.settings.dlq,
                priority=spec.priority,
            )
            assert self._offline_workers is not None
            self._offline_workers[spec.name] = worker
            return worker
        return None

    def exclusive(self, queue: QueueId, *, edits: bool = True) -> AbstractContextManager[Any]:
        """Keep the queue's recovery worker (if running) off while its queue is edited
        (``edits``: refused when another engine runs its pipeline) or read whole."""
        if edits:
            self.check_owner(queue)
        worker = self.worker_for(queue, build=False) if self.running else None
        return worker.exclusive() if worker is not None else contextlib.nullcontext()

    def close(self) -> None:
        """Close destinations built for offline replay."""
        for worker in (self._offline_workers or {}).values():
            for destination in worker.destinations.values():
                try:
                    destination.close()
                except Exception:
                    logger.exception("closing destination failed: destination=%s", destination)

    def destination_health(self) -> dict[tuple[str, str], dict[str, Any]]:
        """(source id, destination id) -> health snapshot, from running pipelines."""
        found: dict[tuple[str, str], dict[str, Any]] = {}
        for pipeline in self._pipelines() if self._pipelines is not None else []:
            status = pipeline.status()
            for d in status["destinations"]:
                found[(str(status["source_id"]), str(d["id"]))] = {
                    "pipeline": status["pipeline"],
                    "name": d["name"],
                    "health": d["health"],
                    "since": d["since"],
                    "last_error": d["last_error"],
                }
        return found
