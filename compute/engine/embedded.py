"""The embedding API: deliver changes your own Python program reads, learn what is safe to ack.

    from compute.engine.embedded import ChangeRecord, DestinationSpec, open_delivery
    from config.settings import load_settings

    with open_delivery(load_settings(), [DestinationSpec("1", "PG", "postgresql",
                       {"dsn": dsn})], source_id="orders-db") as delivery:
        for changes in upstream:            # your reader, in source order
            delivery.submit(changes)        # blocks only under backpressure
            upstream.ack(delivery.safe_position())

Everything here is the engine's own machinery (``Engine``, ``Pipeline``, the
delivery lanes, the DLQ and its recovery worker) driven by your batches
instead of a configured source. The names this module exports are the stable
API: ``open_delivery``, ``Delivery`` (``submit``, ``safe_position``,
``flush``, ``status``, ``close``), ``Ticket``, ``DeliveryStatus``,
``DeliveryStoppedError`` and, for convenience, ``ChangeRecord``,
``Operation``, ``SourcePosition``, ``DestinationSpec`` and ``Destination``.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Sequence
from dataclasses import dataclass
from types import TracebackType
from typing import Any

from compute.dlq.manager import DLQManager
from compute.engine.caller_source import CallerSource, DeliveryStoppedError, Ticket
from compute.engine.engine import Engine
from compute.engine.pipeline import Pipeline, PipelineState
from compute.runtime.retry_policy import RetryPolicy
from config.errors import ConfigError
from config.pipelines import DestinationSpec, PipelineSpec, SourceSpec
from config.settings import Settings, prepare_directory
from destinations.base import Destination
from destinations.factory import build_destination
from destinations.records import ChangeRecord, Operation, SourcePosition

__all__ = [
    "ChangeRecord",
    "Delivery",
    "DeliveryStatus",
    "DeliveryStoppedError",
    "Destination",
    "DestinationSpec",
    "Operation",
    "SourcePosition",
    "Ticket",
    "open_delivery",
]

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class DeliveryStatus:
    """A snapshot of one delivery, for your logs and health checks."""

    state: str  # running, backpressure, failed or closed
    submitted_events: int  # handed to submit() since open
    safe_events: int  # of those, written or durably queued for every destination
    safe_position: SourcePosition | None  # what safe_position() returns
    queued_events: int  # waiting in this delivery's DLQ queues (any run's); at close once closed
    parked_events: int  # set aside for an operator (`rosetta dlq`), see the README
    destinations: dict[str, str]  # destination id -> healthy, unhealthy or unknown
    error: str | None  # why it failed, or what the DLQ refused (backpressure)
    detail: dict[str, Any]  # the pipeline's status as the admin API shows it

    @property
    def drained(self) -> bool:
        """Everything submitted is safe and nothing waits in the DLQ: all of it is written."""
        return self.safe_events == self.submitted_events and self.queued_events == 0


def open_delivery(
    settings: Settings,
    destinations: Sequence[DestinationSpec | Destination],
    *,
    source_id: str,
    name: str = "embedded",
    batch_size: int = 500,
    retry: str = "aggressive",
) -> Delivery:
    """Open the DLQ under ``DLQ_BASE_PATH``, the destinations and their lanes; start delivering.

    ``settings`` comes from ``config.settings.load_settings()`` (the ``DLQ_*``
    and ``ROSETTA_ADMIN_*`` variables, as ``rosetta run`` reads them; the admin
    API, metrics and alerts run as they do there). ``destinations`` are
    ``DestinationSpec`` (built as a pipelines file's would be) or objects
    implementing ``Destination``; the delivery closes them at ``close()``.
    ``source_id`` names your source in the queues, ``<source>/<table>/<destination>``:
    keep it the same across restarts so that what a run left queued is
    replayed by the next. ``batch_size`` caps one destination write (events);
    ``retry`` is a preset (``aggressive``, ``conservative``, ``default``).
    Raises ``ConfigError`` for a bad setting, before anything starts.
    """
    source_id = str(source_id).strip()
    problems = []
    if not source_id or "/" in source_id:
        problems.append(f"source_id must be a non-empty name without '/', got {source_id!r}")
    if not 1 <= batch_size <= 100_000:
        problems.append(f"batch_size must be an integer from 1 to 100000, got {batch_size!r}")
    if retry not in RetryPolicy.PRESET_NAMES:
        presets = ", ".join(RetryPolicy.PRESET_NAMES)
        problems.append(f"retry must be one of {presets}, got {retry!r}")
    ids = [d.id if isinstance(d, DestinationSpec) else d.destination_id for d in destinations]
    if not ids:
        problems.append("destinations: at least one is needed")
    if len(set(ids)) != len(ids):
        problems.append(f"destination ids must be unique, got {', '.join(ids)}")
    if problems:
        raise ConfigError(problems)
    prepare_directory(settings.dlq.base_path, "DLQ_BASE_PATH")
    return Delivery(settings, list(destinations), source_id, name, batch_size, retry)


class Delivery:
    """Delivers submitted changes to every destination, through the DLQ when one fails.

    Guarantees, per destination: at-least-once (a change may be written twice
    after a crash, never lost once safe; writes are idempotent by primary key);
    changes of one table are written in submit order; a destination that is
    down or slow never holds the others. Threads: ``submit`` from one thread at
    a time (your reader); everything else from any thread.
    """

    def __init__(
        self,
        settings: Settings,
        destinations: list[DestinationSpec | Destination],
        source_id: str,
        name: str,
        batch_size: int,
        retry: str,
    ) -> None:
        self.name = name
        self._source = CallerSource(source_id, batch_size)
        self._destinations = destinations
        self._retry = retry
        self._batch_size = batch_size
        self._submit_lock = threading.Lock()
        self._closed = threading.Event()
        self._closing = threading.Lock()  # status() waits for close() to finish
        self._last_counts = (0, 0)  # queued, parked: what status() shows once closed
        specs = tuple(d for d in destinations if isinstance(d, DestinationSpec))
        spec = PipelineSpec(name, SourceSpec(source_id, "embedded"), specs, batch_size, retry)
        self._engine = Engine(settings, [spec], pipeline_factory=self._build_pipeline)
        self._engine.start()
        self._pipeline = self._engine.pipelines[0]
        self._source.on_offer = self._pipeline.wake

    def _build_pipeline(self, spec: PipelineSpec, dlq: DLQManager) -> Pipeline:
        built = [
            build_destination(d) if isinstance(d, DestinationSpec) else d
            for d in self._destinations
        ]
        return Pipeline(
            self.name,
            self._source,
            built,
            dlq,
            self._engine.settings.dlq,
            retry_policy=RetryPolicy.preset(self._retry),
            batch_size=self._batch_size,
        )

    # ------------------------------------------------------------------ the API

    def submit(self, changes: Sequence[ChangeRecord], *, timeout: float | None = None) -> Ticket:
        """Hand over a batch of changes, in source order; returns its ``Ticket``.

        Returns at once while the destinations keep up. Blocks while about
        ``DLQ_READ_AHEAD_EVENTS`` events wait for delivery, or while the DLQ
        refuses writes (full: ``DLQ_MAX_QUEUE_*``, ``DLQ_MIN_FREE_DISK_MB``)
        until the recovery worker frees room: backpressure, never a drop
        (unless ``DLQ_WHEN_FULL=drop_newest``). After ``timeout`` seconds it
        raises ``TimeoutError`` with nothing of the batch taken (submit it
        again). Raises ``DeliveryStoppedError`` once closed or failed.
        """
        deadline = None if timeout is None else time.monotonic() + timeout
        with self._submit_lock:
            return self._source.offer(changes, deadline, self._stopped_reason)

    def safe_position(self) -> SourcePosition | None:
        """The position of the last change such that it and every change submitted before it
        (all tables) is written or durably queued for every destination: what you may
        acknowledge to your source. None until the first change is safe; never moves back."""
        return self._source.safe_position

    def flush(self, timeout: float | None = None) -> bool:
        """Wait until everything submitted so far is safe; False if ``timeout`` passed first.

        Raises ``DeliveryStoppedError`` if the delivery failed meanwhile.
        """
        ticket = self._source.last_ticket
        if ticket is None:
            return True
        deadline = None if timeout is None else time.monotonic() + timeout
        while not ticket.wait(0.2):
            if self._pipeline.state is PipelineState.FAILED:
                raise DeliveryStoppedError(self._stopped_reason() or "failed")
            if deadline is not None and time.monotonic() >= deadline:
                return False
        return True

    def status(self) -> DeliveryStatus:
        """Counts, health and the safe position now (reads memory only; cheap)."""
        pipeline = self._pipeline
        detail = pipeline.status()
        with self._closing:
            queued, parked = self._last_counts
            dlq = self._engine.dlq
            if dlq is not None and not self._closed.is_set():
                queued = parked = 0
                for queue in pipeline.worker.queues():
                    queued += dlq.count(queue)
                    parked += dlq.parked_count(queue)
        state = "closed" if self._closed.is_set() else pipeline.state.value
        return DeliveryStatus(
            state=state,
            submitted_events=self._source.submitted_events,
            safe_events=self._source.safe_events,
            safe_position=self._source.safe_position,
            queued_events=queued,
            parked_events=parked,
            destinations={d["id"]: d["health"] for d in detail["destinations"]},
            error=detail["last_error"] or detail["backpressure_reason"],
            detail=detail,
        )

    def close(self, timeout: float = 30.0) -> None:
        """Stop: wait up to ``timeout`` s for what was submitted to be safe, then stop the lanes
        and the recovery worker, close the destinations and the DLQ. Nothing is lost: what is
        queued stays on disk for the next ``open_delivery`` with this ``DLQ_BASE_PATH`` and
        ``source_id``; what was not safe was not acknowledged. Idempotent."""
        if self._closed.is_set():
            return
        flushed = False
        try:
            if self._pipeline.state is not PipelineState.FAILED:
                flushed = self.flush(timeout)
        except DeliveryStoppedError:
            pass
        last = self.status()
        with self._closing:
            self._closed.set()
            self._source.wake_waiters()
            self._engine.stop(timeout)
            self._last_counts = (last.queued_events, last.parked_events)
        unsafe = self._source.submitted_events - self._source.safe_events
        logger.info(
            "embedded delivery closed: pipeline=%s safe_position=%s not_safe_events=%d flushed=%s",
            self.name,
            self._source.safe_position,
            unsafe,
            flushed,
        )

    def __enter__(self) -> Delivery:
        return self

    def __exit__(
        self,
        kind: type[BaseException] | None,
        error: BaseException | None,
        trace: TracebackType | None,
    ) -> None:
        self.close()

    # ---------------------------------------------------------------- internals

    def _stopped_reason(self) -> str | None:
        if self._closed.is_set():
            return f"delivery {self.name} is closed"
        if self._pipeline.state is PipelineState.FAILED:
            return f"delivery {self.name} failed: {self._pipeline.stats.last_error}"
        return None
