"""The engine: builds pipelines from settings, runs them, and stops them cleanly."""

from __future__ import annotations

import logging
import signal
import threading
from collections.abc import Callable, Sequence
from types import FrameType
from typing import TYPE_CHECKING, Any

from compute.delivery.health import HealthSnapshot
from compute.dlq.manager import DLQManager
from compute.engine.pipeline import Pipeline, PipelineState
from compute.engine.run_summary import RunSummary, summarize
from compute.engine.table_check import table_problems
from compute.error_codes import EXIT_FAILED, EXIT_NEEDS_OPERATOR, EXIT_OK
from compute.errors import DLQStorageError
from compute.observability.alerts import AlertMonitor
from compute.observability.metrics import DLQMetrics
from compute.observability.source_metrics import PipelineFlow
from compute.runtime.fence import NO_FENCE, Fence
from compute.runtime.retry_policy import RetryPolicy
from compute.runtime.supervisor import Supervisor
from compute.sources.base import ReplicationLag
from compute.sources.factory import build_source
from config.dlq_config import FsyncMode
from config.errors import ConfigError
from config.nats_config import Backend
from config.pipelines import PipelineSpec
from config.settings import Settings
from destinations.factory import build_destination, check_destinations

if TYPE_CHECKING:
    from compute.admin.server import AdminServer
    from compute.engine.ownership import Ownership
    from compute.storage.jetstream.bridge import NatsBridge

logger = logging.getLogger(__name__)


class Engine:
    """Initializes the DLQ manager, one pipeline (with its recovery worker) per spec.

    ``stop()`` (also on SIGTERM/SIGINT under ``run_forever``) stops pipelines
    first, so no new events arrive, then their workers, then closes the
    queues: a batch in flight is either finished or left unacknowledged, and
    comes back after a restart.
    """

    def __init__(
        self,
        settings: Settings,
        specs: Sequence[PipelineSpec],
        *,
        pipeline_factory: Callable[[PipelineSpec, DLQManager], Pipeline] | None = None,
    ) -> None:
        self.settings = settings
        self.specs = list(specs)
        # Before anything opens or logs: a malformed DSN is a config error,
        # not a failure of every write.
        check_destinations(self.specs)
        self.dlq: DLQManager | None = None
        self.pipelines: list[Pipeline] = []
        self.metrics: DLQMetrics | None = None
        self.alerts: AlertMonitor | None = None
        self._pipeline_factory = pipeline_factory or self._build_pipeline
        self._stopping = threading.Event()
        self.admin: AdminServer | None = None
        self.summary: RunSummary | None = None  # set by stop()
        # DLQ_BACKEND=jetstream: pipelines shared with other engines through leases.
        self.bridge: NatsBridge | None = None
        self.ownership: Ownership | None = None

    def _build_pipeline(
        self, spec: PipelineSpec, dlq: DLQManager, fence: Fence = NO_FENCE
    ) -> Pipeline:
        positions = None
        if self.bridge is not None:
            from compute.storage.jetstream.positions import PositionStore

            positions = PositionStore(self.bridge, fence=fence)
        source = build_source(
            spec.source,
            self.settings.state_path,
            append_only=spec.append_only,
            fsync=self.settings.dlq.fsync is not FsyncMode.OFF,
            positions=positions,
        )
        destinations = [build_destination(d) for d in spec.destinations]
        return Pipeline(
            spec.name,
            source,
            destinations,
            dlq,
            self.settings.dlq,
            retry_policy=RetryPolicy.preset(spec.retry),
            batch_size=spec.batch_size,
            priority=spec.priority,
            fence=fence,
        )

    def start(self) -> None:
        self.dlq = DLQManager(self.settings.dlq)
        try:
            if self.settings.dlq.backend is Backend.JETSTREAM:
                self._share_pipelines()  # the ownership thread builds them
            else:
                for spec in self.specs:
                    self.pipelines.append(self._pipeline_factory(spec, self.dlq))
                self._check_tables()
        except Exception:
            for pipeline in self.pipelines:
                pipeline.close()
            self.pipelines = []
            self.dlq.close()
            if self.bridge is not None:
                self.bridge.close()
            raise
        existing = self.dlq.refresh_all_status()
        if existing:
            logger.info("DLQ queues found on disk: count=%d", existing)
        self._start_observability(self.dlq)
        for pipeline in self.pipelines:
            pipeline.start()
        if self.ownership is not None:
            self.ownership.start()
        if self.settings.admin.enabled:
            # After the pipelines, so its imports do not delay the first events;
            # if it cannot listen, everything is stopped cleanly (nothing lost).
            try:
                self._start_admin()
            except Exception:
                self.stop()
                raise

    def _check_tables(self) -> None:
        """Refuse to start, one line per table, when a known table cannot be written."""
        problems = []
        for spec, pipeline in zip(self.specs, self.pipelines, strict=True):
            problems += self._table_problems(spec, pipeline)
        if problems:
            raise ConfigError(problems)

    @staticmethod
    def _table_problems(spec: PipelineSpec, pipeline: Pipeline) -> list[str]:
        for destination in pipeline.destinations:
            destination.append_only |= frozenset(spec.append_only)
        return table_problems(spec, pipeline.source, pipeline.destinations)

    def _share_pipelines(self) -> None:
        """Connect to JetStream; the ownership thread takes this engine's share of the pipelines."""
        from compute.engine.ownership import Ownership
        from compute.storage.jetstream.bridge import NatsBridge, StoreUnavailable
        from compute.storage.jetstream.leases import Leases

        try:
            self.bridge = NatsBridge(self.settings.dlq.nats)
            leases = Leases(self.bridge)
        except StoreUnavailable as error:
            # One line, not a traceback: the operator fixes DLQ_NATS_URLS or the cluster.
            raise DLQStorageError(f"pipelines are shared through JetStream: {error}") from None
        self.ownership = Ownership(
            leases,
            self.specs,
            build=self._start_owned,
            retire=self._retire,
            changed=self._owned_changed,
        )

    def _start_owned(self, spec: PipelineSpec, fence: Fence) -> Pipeline:
        """A new pipeline for ``spec`` (this engine took its lease), checked and started."""
        assert self.dlq is not None
        # Another engine may have run it until now: its queues are read afresh.
        self.dlq.refresh_source(spec.source.id)
        pipeline = self._build_pipeline(spec, self.dlq, fence)
        try:
            problems = self._table_problems(spec, pipeline)
            if problems:
                raise ConfigError(problems)
            if self.metrics is not None:
                pipeline.handler.observer = pipeline.worker.observer = self.metrics
            pipeline.start()
        except Exception:
            pipeline.close()
            raise
        return pipeline

    def _retire(self, pipeline: Pipeline) -> None:
        pipeline.stop()
        pipeline.close()

    def _owned_changed(self, pipelines: list[Pipeline]) -> None:
        self.pipelines = pipelines  # replaced whole: readers iterate the list they got

    def _start_admin(self) -> None:
        """The admin API, and ``<DLQ_BASE_PATH>/admin.json`` so the CLI can find it."""
        from compute.admin.operations import DLQOperations
        from compute.admin.server import AdminServer

        assert self.dlq is not None
        ownership = self.ownership
        ops = DLQOperations(
            self.dlq,
            self.settings,
            pipelines=lambda: list(self.pipelines),
            threads=lambda: [s.status() for s in self._engine_supervisors()],
            mode="online",
            owners=None if ownership is None else lambda: ownership.owners,
        )
        self.admin = AdminServer(ops, self.settings.admin)
        self._add_observability_routes(self.admin)
        self.admin.start()
        self.admin.write_discovery(self.settings.dlq.base_path)

    def _add_observability_routes(self, admin: AdminServer) -> None:
        """``GET /metrics`` (Prometheus text format) and ``GET /alerts`` (the monitor's state)."""
        from compute.admin.response import Response

        metrics, alerts = self.metrics, self.alerts
        assert metrics is not None and alerts is not None

        def render_metrics(request: object) -> Response:
            body, content_type = metrics.render()
            return Response(text=body.decode("utf-8"), content_type=content_type)

        admin.router.add_route("GET", "/metrics", render_metrics)
        admin.router.add_route("GET", "/alerts", lambda request: Response(body=alerts.snapshot()))

    def _start_observability(self, dlq: DLQManager) -> None:
        """Metrics and the alert monitor; the observer is set before any pipeline runs.

        Events are counted through an observer object the handler and the
        worker call once per batch (not hooks inside DLQManager, whose hot
        paths stay untouched); everything else is read at scrape time.
        """
        base_path = self.settings.dlq.base_path
        self.metrics = DLQMetrics(
            dlq,
            base_path=base_path,
            destinations=self._health_snapshots,
            pipelines=self._backpressure,
            threads=self.supervisors,
            flows=self._flows,
        )
        for pipeline in self.pipelines:
            pipeline.handler.observer = self.metrics
            pipeline.worker.observer = self.metrics
        self.alerts = AlertMonitor(
            self.settings.alerts,
            dlq,
            base_path=base_path,
            destinations=self._health_snapshots,
            sources=self._source_lags,
        )
        self.metrics.alerts = self.alerts
        self.alerts.start()

    def supervisors(self) -> list[Supervisor]:
        """Every supervised engine thread: the pipelines' and the engine's own (DLQ
        maintenance, alert monitor and webhook, admin API)."""
        return [s for p in self.pipelines for s in p.supervisors()] + self._engine_supervisors()

    def _engine_supervisors(self) -> list[Supervisor]:
        found: list[Supervisor] = []
        if self.dlq is not None and self.dlq.maintenance is not None:
            found.append(self.dlq.maintenance)
        if self.alerts is not None:
            found += self.alerts.supervisors()
        if self.admin is not None and self.admin.supervisor is not None:
            found.append(self.admin.supervisor)
        return found

    def _health_snapshots(self) -> list[tuple[str, HealthSnapshot]]:
        return [(p.name, h.snapshot()) for p in self.pipelines for h in p.health.values()]

    def _flows(self) -> list[PipelineFlow]:
        return [
            PipelineFlow(
                p.name,
                p.source.source_id,
                p.stats.events,
                p.event_rate.rate(p.stats.events),
                p.source.replication_lag(),
            )
            for p in self.pipelines
        ]

    def _source_lags(self) -> list[tuple[str, str, ReplicationLag]]:
        found = []
        for p in self.pipelines:
            lag = p.source.replication_lag()
            if lag is not None:
                found.append((p.name, p.source.source_id, lag))
        return found

    def _backpressure(self) -> dict[str, bool]:
        return {p.name: p.state is PipelineState.BACKPRESSURE for p in self.pipelines}

    def stop(self, timeout: float = 10.0) -> None:
        if self._stopping.is_set():
            return
        self._stopping.set()
        if self.admin is not None:
            self.admin.stop()
            self.admin = None
        # The monitor reads the DLQ: stop it before the queues close.
        if self.alerts is not None:
            self.alerts.stop(timeout)
        if self.ownership is not None:
            self.ownership.closing()  # renews on while the pipelines stop; takes nothing
        for pipeline in self.pipelines:
            pipeline.stop(timeout)
        if self.ownership is not None:
            # Once nothing writes: another engine takes them at once, not after the TTL.
            self.ownership.stop(timeout)
            self.ownership.release_all()
        # Before the queues close: it counts what is still parked in them.
        self.summary = summarize(self.pipelines, self.dlq)
        for pipeline in self.pipelines:
            pipeline.close()
        if self.metrics is not None:
            self.metrics.close()  # scrapes after this leave the closed queues out
        if self.dlq is not None:
            self.dlq.close()
        if self.bridge is not None:
            self.bridge.close()
        logger.info("engine stopped")

    def run_forever(self) -> int:
        """Run until SIGTERM or SIGINT (or every finite source is done), then stop cleanly.

        Logs the run's summary line last. Returns 0; 1 when a pipeline
        failed (the process should exit non-zero so that its supervisor
        notices and restarts it; whatever was queued stays on disk for the
        next run); 7 when the run ended with changes waiting for an operator
        (parked changes still parked, events the source rejected, or queues
        held until their target table is fixed).
        """
        requested = threading.Event()

        def on_signal(signum: int, frame: FrameType | None) -> None:
            logger.info("signal received, stopping: signal=%s", signal.Signals(signum).name)
            requested.set()

        previous = {s: signal.signal(s, on_signal) for s in (signal.SIGTERM, signal.SIGINT)}
        failed: list[str] = []
        try:
            self.start()
            while not requested.wait(0.5):
                failed = [p.name for p in self.pipelines if p.state is PipelineState.FAILED]
                if failed:
                    logger.error(
                        "pipeline failed, stopping the engine: pipelines=%s", ",".join(failed)
                    )
                    break
                # Shared pipelines are never done: another engine may hand one over.
                pipelines = [] if self.ownership is not None else self.pipelines
                if pipelines and all(p.finished.is_set() for p in pipelines):
                    if not any(self._queued(p) for p in self.pipelines):
                        logger.info("all sources exhausted and every DLQ queue drained")
                        break
                    # A held queue waits for someone to fix its table: it does not
                    # keep a finished run alive (the summary names it, exit 7).
                    if not any(self._queued(p, unheld=True) for p in self.pipelines):
                        logger.warning("all sources exhausted; only held queues are left")
                        break
        finally:
            self.stop()
            for signum, handler in previous.items():
                signal.signal(signum, handler)
        summary = self.summary or RunSummary()
        if failed:
            logger.info("%s", summary.line())
            return EXIT_FAILED
        if summary.needs_operator:
            logger.warning(
                "%s: changes wait for an operator (rosetta dlq list; the source's "
                "rejected events; a held queue's table to fix), exiting with %d",
                summary.line(),
                EXIT_NEEDS_OPERATOR,
            )
            return EXIT_NEEDS_OPERATOR
        logger.info("%s", summary.line())
        return EXIT_OK

    def _queued(self, pipeline: Pipeline, *, unheld: bool = False) -> bool:
        """True when a queue of ``pipeline`` holds messages (``unheld``: one not held)."""
        assert self.dlq is not None
        held = self.dlq.holds.all() if unheld else {}
        return any(self.dlq.has_messages(q) for q in pipeline.worker.queues() if q not in held)

    def status(self) -> dict[str, Any]:
        damaged = self.dlq.damaged_queues() if self.dlq is not None else []
        return {
            "pipelines": [p.status() for p in self.pipelines],
            "threads": [s.status() for s in self._engine_supervisors()],
            "damaged_queues": damaged,
            "ownership": None if self.ownership is None else self.ownership.status(),
        }
