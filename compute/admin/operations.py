"""Every operator action on the DLQ, in one place, for the CLI and the admin HTTP API.

``DLQOperations`` works over a ``DLQManager``: inside the running engine
(the admin API calls it, with the engine's pipelines for health and replay
through their recovery workers) or, with the engine stopped, over the queue
directories opened directly by the CLI (replay then builds the destinations
from the pipelines config, as ``rosetta run`` does). Both modes run the same
code, so they behave the same. Every method returns plain JSON-able data.
"""

from __future__ import annotations

import contextlib
import json
import logging
import time
from collections.abc import Callable, Iterable, Iterator, Sequence
from contextlib import AbstractContextManager
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

from compute.codec.export_view import (
    header,
    message_from_line,
    message_to_line,
    parse_header,
)
from compute.admin.json_limits import MAX_LINE_DEPTH, JSONTooDeepError, loads
from compute.dlq.manager import DLQManager, _iso
from compute.codec.message import DLQMessage
from compute.codec.message_view import message_to_json
from compute.recovery.worker import DLQRecoveryWorker
from compute.errors import (
    DLQConflictError,
    OperationError,
    QueueNotFoundError,
)
from compute.delivery.event_handler import classify_or_transient
from compute.queue_id import QueueId
from compute.runtime.supervisor import CRASH_WINDOW
from config.settings import Settings

logger = logging.getLogger(__name__)

# The DLQ warning rule of the reference stats (seed 000): queued messages
# older than 24 hours make a destination, and the engine, "warning".
DLQ_WARNING_AGE = 24 * 3600.0
IMPORT_CHUNK = 500

Progress = Callable[[int], None]


def _no_progress(done: int) -> None:
    return None


class PipelineView(Protocol):
    """What operations need of a running pipeline (``compute.engine.pipeline.Pipeline``)."""

    name: str
    worker: DLQRecoveryWorker

    def status(self) -> dict[str, Any]: ...


@dataclass(frozen=True, slots=True)
class QueueRef:
    """A queue lane named by an operator."""

    queue: QueueId
    parked: bool = False

    @property
    def lane(self) -> QueueId:
        return self.queue.parked if self.parked else self.queue


def parse_queue(text: str) -> QueueId:
    """Operator input -> QueueId; ValueError with the accepted forms."""
    return QueueId.parse(text)


class DLQOperations:
    """The operator's actions on the DLQ (see the module docstring)."""

    def __init__(
        self,
        dlq: DLQManager,
        settings: Settings,
        *,
        pipelines: Callable[[], Sequence[PipelineView]] | None = None,
        threads: Callable[[], Sequence[dict[str, Any]]] | None = None,
        mode: str = "offline",
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.dlq = dlq
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

    # ------------------------------------------------------------- helpers

    def _known(self, queue: QueueId) -> QueueId:
        queue = queue.main
        if queue not in self.dlq.list_queues() and queue not in self.dlq.list_queues(refresh=True):
            raise QueueNotFoundError(
                f"no queue {queue} under {self.settings.dlq.base_path} "
                "(`rosetta dlq queues` lists them)"
            )
        return queue

    def _workers(self) -> list[DLQRecoveryWorker]:
        if self._pipelines is not None:
            return [p.worker for p in self._pipelines()]
        if self._offline_workers is None:
            self._offline_workers = {}
        return list(self._offline_workers.values())

    def _worker_for(self, queue: QueueId, *, build: bool) -> DLQRecoveryWorker | None:
        for worker in self._workers():
            if worker.source_id == queue.source_id and queue.destination_id in worker.destinations:
                return worker
        if self._pipelines is not None or not build:
            return None
        return self._build_offline_worker(queue)

    def _build_offline_worker(self, queue: QueueId) -> DLQRecoveryWorker | None:
        """Offline: the pipeline delivering ``queue``, from the pipelines config."""
        from compute.engine.engine import load_pipeline_specs
        from compute.engine.factories import build_destination
        from compute.delivery.health import DestinationHealth

        for spec in load_pipeline_specs(self.settings):
            if str(spec.source.id) != queue.source_id:
                continue
            if not any(str(d.id) == queue.destination_id for d in spec.destinations):
                continue
            destinations = [build_destination(d) for d in spec.destinations]
            health = {d.destination_id: DestinationHealth(d) for d in destinations}
            worker = DLQRecoveryWorker(
                spec.name, spec.source.id, destinations, health, self.dlq, self.settings.dlq
            )
            assert self._offline_workers is not None
            self._offline_workers[spec.name] = worker
            return worker
        return None

    def _exclusive(self, queue: QueueId) -> AbstractContextManager[Any]:
        """Keep the queue's recovery worker (if running) off while its queue is edited."""
        worker = self._worker_for(queue, build=False) if self.running else None
        return worker.exclusive() if worker is not None else contextlib.nullcontext()

    def close(self) -> None:
        """Close destinations built for offline replay."""
        for worker in (self._offline_workers or {}).values():
            for destination in worker.destinations.values():
                try:
                    destination.close()
                except Exception:
                    logger.exception("closing destination failed: destination=%s", destination)

    def _destination_health(self) -> dict[tuple[str, str], dict[str, Any]]:
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

    # ------------------------------------------------------------- reading

    def queues(self) -> list[dict[str, Any]]:
        """One row per queue: counts, bytes, oldest age and destination health."""
        now = self._clock()
        health = self._destination_health()
        rows = []
        # An operator asking sees queues made since the last scan too.
        for queue in self.dlq.list_queues(refresh=True):
            row = self.dlq.status(queue).to_json(now)
            dest = health.get((queue.source_id, queue.destination_id))
            row["destination_health"] = (
                dest["health"] if dest else ("unknown" if self.running else "engine stopped")
            )
            row["damaged"] = False
            rows.append(row)
        # Damaged queue directories set aside (this run or earlier): their
        # messages are not replayed until an operator deals with the files.
        for entry in self.dlq.set_aside_directories():
            try:
                queue = QueueId.parse(entry["queue"])
                names = {
                    "source_id": queue.source_id,
                    "table": queue.table,
                    "destination_id": queue.destination_id,
                }
            except ValueError:
                names = {"source_id": "?", "table": entry["queue"], "destination_id": "?"}
            rows.append(
                {
                    "queue": entry["queue"],
                    **names,
                    "messages": None,
                    "parked": None,
                    "bytes_on_disk": None,
                    "oldest_age_seconds": None,
                    "destination_health": "-",
                    "damaged": True,
                    "moved_to": entry["moved_to"],
                    "reason": entry["reason"],
                }
            )
        return rows

    def show(self, queue: QueueId, *, limit: int = 20, parked: bool = False) -> dict[str, Any]:
        """Peek at up to ``limit`` messages from the head of a lane, removing nothing."""
        if limit < 1:
            raise ValueError("limit must be at least 1")
        queue = self._known(queue)
        lane = queue.parked if parked else queue
        now = self._clock()
        messages = []
        for m in self.dlq.peek(lane, limit):
            row = message_to_json(m)
            row["attempts"] = self.dlq.attempts_of(lane, m)
            row["age_seconds"] = round(max(0.0, now - m.enqueued_at), 3)
            row["first_failure_at"] = _iso(m.failure.first_failure_at)
            row["last_failure_at"] = _iso(m.failure.last_failure_at)
            row["enqueued_at"] = _iso(m.enqueued_at)
            messages.append(row)
        return {
            "queue": str(queue),
            "lane": "parked" if parked else "main",
            "total": self.dlq.count(lane),
            "messages": messages,
        }

    def stats(self) -> dict[str, Any]:
        """Totals per destination and overall, as the reference ``get_dlq_stats``."""
        now = self._clock()
        workers = self._workers() if self.running else []
        last_runs = [w.stats.last_run_at for w in workers if w.stats.last_run_at is not None]
        per_dest: dict[str, dict[str, Any]] = {}
        total = parked = 0
        oldest: float | None = None
        queues = self.dlq.list_queues(refresh=True)
        for queue in queues:
            status = self.dlq.status(queue)
            entry = per_dest.setdefault(
                queue.destination_id,
                {"total_messages": 0, "parked_messages": 0, "queues": 0, "_oldest": None},
            )
            entry["total_messages"] += status.messages
            entry["parked_messages"] += status.parked
            entry["queues"] += 1
            if status.oldest_enqueued_at is not None:
                if entry["_oldest"] is None or status.oldest_enqueued_at < entry["_oldest"]:
                    entry["_oldest"] = status.oldest_enqueued_at
                if oldest is None or status.oldest_enqueued_at < oldest:
                    oldest = status.oldest_enqueued_at
            total += status.messages
            parked += status.parked
        last = _iso(max(last_runs)) if last_runs else None
        for destination_id, entry in per_dest.items():
            first = entry.pop("_oldest")
            entry["oldest_message_age_seconds"] = _age(now, first)
            entry["recovery_enabled"] = self.running and any(
                destination_id in w.destinations for w in workers
            )
            entry["last_recovery_attempt"] = _iso(
                max(
                    (
                        w.stats.last_run_at
                        for w in workers
                        if destination_id in w.destinations and w.stats.last_run_at
                    ),
                    default=None,
                )
            )
        return {
            "total_messages": total,
            "parked_messages": parked,
            "oldest_message_age_seconds": _age(now, oldest),
            "recovery_enabled": self.running and bool(workers),
            "last_recovery_attempt": last,
            "queues": len(queues),
            "destinations": dict(sorted(per_dest.items())),
            "mode": self.mode,
        }

    def health(self) -> tuple[dict[str, Any], int]:
        """Overall and per-destination health, and the HTTP status to answer with.

        ``critical`` (503): a pipeline FAILED, or is in backpressure because the
        DLQ is full: events are not flowing and nothing absorbs them; or an
        engine thread keeps crashing (``compute/runtime/supervisor.py``: 3 crashes
        within 5 minutes, or it ended for good).
        ``warning`` (200): a destination is unhealthy (the DLQ absorbs the
        outage; a 503 would make an orchestrator restart a healthy engine),
        queued messages are older than 24 h, messages are parked, a
        damaged queue was set aside, or a thread crashed and was restarted
        within the last 5 minutes. ``healthy`` (200) otherwise.
        """
        now = self._clock()
        reasons: list[str] = []
        pipelines = []
        threads: list[dict[str, Any]] = list(self._threads()) if self._threads else []
        critical = False
        for pipeline in self._pipelines() if self._pipelines is not None else []:
            status = pipeline.status()
            threads.extend(status.get("threads", []))
            pipelines.append(
                {
                    "pipeline": status["pipeline"],
                    "state": status["state"],
                    "backpressure_reason": status["backpressure_reason"],
                    "last_error": status["last_error"],
                }
            )
            if status["state"] in ("failed", "backpressure"):
                critical = True
                detail = status["last_error"] or status["backpressure_reason"] or ""
                reasons.append(f"pipeline {status['pipeline']} is {status['state']}: {detail}")
        queues = {q: self.dlq.status(q) for q in self.dlq.list_queues()}
        destinations = []
        warning = False
        for (source_id, destination_id), dest in sorted(self._destination_health().items()):
            mine = [
                s
                for q, s in queues.items()
                if (q.source_id, q.destination_id) == (source_id, destination_id)
            ]
            messages = sum(s.messages for s in mine)
            parked = sum(s.parked for s in mine)
            oldest = min(
                (s.oldest_enqueued_at for s in mine if s.oldest_enqueued_at is not None),
                default=None,
            )
            age = _age(now, oldest)
            why = []
            if dest["health"] == "unhealthy":
                why.append(f"destination unhealthy: {dest['last_error']}")
            if age is not None and age > DLQ_WARNING_AGE:
                why.append(f"DLQ messages older than 24h (oldest {age:.0f}s)")
            if parked:
                why.append(f"{parked} parked message(s) wait for an operator")
            warning = warning or bool(why)
            reasons.extend(f"destination {dest['name']} ({destination_id}): {w}" for w in why)
            destinations.append(
                {
                    "id": destination_id,
                    "name": dest["name"],
                    "pipeline": dest["pipeline"],
                    "source_id": source_id,
                    "status": "warning" if why else "healthy",
                    "health": dest["health"],
                    "last_error": dest["last_error"],
                    "messages": messages,
                    "parked": parked,
                    "oldest_message_age_seconds": age,
                    "reasons": why,
                }
            )
        damaged = self.dlq.damaged_queues()
        if damaged:
            warning = True
            reasons.append(f"{len(damaged)} damaged queue directory(ies) set aside")
        for thread in threads:
            if thread["crashing"]:
                critical = True
                reasons.append(
                    f"thread {thread['thread']} keeps crashing ({thread['state']}, "
                    f"{thread['recent_crashes']} crash(es) in {CRASH_WINDOW:.0f}s): "
                    f"{thread['last_error']}"
                )
            elif thread["recent_crashes"]:
                warning = True
                reasons.append(
                    f"thread {thread['thread']} crashed and was restarted "
                    f"({thread['restarts']} restart(s)): {thread['last_error']}"
                )
        overall = "critical" if critical else "warning" if warning else "healthy"
        body = {
            "status": overall,
            "checked_at": _iso(now),
            "reasons": reasons,
            "pipelines": pipelines,
            "destinations": destinations,
            "threads": threads,
            "dlq": self.stats(),
            "damaged_queues": damaged,
        }
        return body, 503 if critical else 200

    # ------------------------------------------------------------- replay

    def replay(
        self,
        queue: QueueId | None = None,
        *,
        parked: bool = False,
        dry_run: bool = False,
        progress: Progress = _no_progress,
    ) -> dict[str, Any]:
        """Replay one queue, or all, now and in order; parked lanes only with ``parked``."""
        targets = [self._known(queue)] if queue is not None else self.dlq.list_queues()
        results = []
        for target in targets:
            lane = target.parked if parked else target
            waiting = self.dlq.count(lane)
            if not waiting and queue is None:
                continue
            worker = self._worker_for(target, build=not dry_run)
            entry: dict[str, Any] = {
                "queue": str(target),
                "lane": "parked" if parked else "main",
                "messages": waiting,
                "replayed": 0,
                "failed": 0,
                "parked": 0,
                "expired": 0,
                "error": None,
            }
            if worker is None and not dry_run:
                entry["error"] = (
                    f"no pipeline delivers {target} (source {target.source_id}, "
                    f"destination {target.destination_id}); check the pipelines config"
                )
                entry["failed"] = waiting
            elif not dry_run and waiting:
                assert worker is not None
                if parked:
                    entry.update(self._replay_parked(worker, target, progress))
                else:
                    for result in worker.replay_now(target):
                        entry["replayed"] += result.replayed
                        entry["failed"] += result.failed
                        entry["parked"] += result.parked
                        entry["expired"] += result.expired
                        progress(result.replayed + result.parked + result.expired)
                    if self.dlq.count(lane) and not entry["failed"]:
                        snapshot = worker.health[target.destination_id].snapshot()
                        if snapshot.state.value != "healthy":
                            entry["error"] = f"destination unhealthy: {snapshot.last_error}"
                            entry["failed"] = self.dlq.count(lane)
            results.append(entry)
        return {
            "dry_run": dry_run,
            "queues": results,
            "replayed": sum(r["replayed"] for r in results),
            "failed": sum(r["failed"] for r in results),
            "parked": sum(r["parked"] for r in results),
            "mode": self.mode,
        }

    def _replay_parked(
        self, worker: DLQRecoveryWorker, queue: QueueId, progress: Progress
    ) -> dict[str, Any]:
        """Write the parked lane to the destination in order: acked (and keys
        released) on success; on failure it stays parked with the error recorded."""
        destination = worker.destinations[queue.destination_id]
        done: dict[str, Any] = {"replayed": 0, "failed": 0, "error": None}
        with worker.exclusive():
            while True:
                lease = self.dlq.read_batch(queue.parked, self.settings.dlq.batch_size)
                with lease:  # given back unless acknowledged, whatever fails
                    if lease.is_empty:
                        break
                    if not lease.messages:
                        self.dlq.ack(lease)
                        continue
                    try:
                        destination.write_batch(queue.table, [m.record for m in lease.messages])
                    except Exception as error:
                        classified = classify_or_transient(destination, error)
                        text = f"{classified.error_class}: {classified.message}"
                        self.dlq.record_error(queue, f"parked replay failed: {text}")
                        self.dlq.record_failed_attempt(queue.parked, lease.messages)
                        done["failed"] = self.dlq.count(queue.parked)
                        done["error"] = text
                        logger.warning("parked replay failed: queue=%s error=%s", queue, text)
                        break
                    self.dlq.ack(lease)
                done["replayed"] += len(lease.messages)
                progress(len(lease.messages))
        if done["replayed"]:
            logger.info("parked messages replayed: queue=%s count=%d", queue, done["replayed"])
        return done

    # ------------------------------------------------------------- removing

    def purge(self, queue: QueueId, *, parked: bool = False) -> dict[str, Any]:
        queue = self._known(queue)
        lane = queue.parked if parked else queue
        with self._exclusive(queue):
            removed = self.dlq.purge(lane)
        return {"queue": str(queue), "lane": "parked" if parked else "main", "removed": removed}

    def _message_queue(self, message_id: str, queue: QueueId | None) -> QueueId:
        if queue is not None:
            return self._known(queue)
        return self.dlq.locate(message_id)[0].main

    def discard(self, message_id: str, queue: QueueId | None = None) -> dict[str, Any]:
        target = self._message_queue(message_id, queue)
        with self._exclusive(target):
            lanes = self.dlq.discard_message(target, message_id)
        return {
            "message_id": message_id,
            "queue": str(target),
            "discarded_from": [lane.lane or "main" for lane in lanes],
        }

    def park(self, message_id: str, queue: QueueId | None = None) -> dict[str, Any]:
        target = self._message_queue(message_id, queue)
        with self._exclusive(target):
            message = self.dlq.park_message(target, message_id)
        return {"message_id": message.message_id, "queue": str(target), "parked": True}

    def unpark(self, message_id: str, queue: QueueId | None = None) -> dict[str, Any]:
        target = self._message_queue(message_id, queue)
        with self._exclusive(target):
            moved = self.dlq.unpark_message(target, message_id)
        return {
            "message_id": message_id,
            "queue": str(target),
            "moved": [m.message_id for m in moved],
        }

    # ------------------------------------------------------------- export/import

    def export_lines(self, queue: QueueId, *, parked: bool = False) -> Iterator[str]:
        """The export of a lane as JSON lines (header first), streamed.

        While the lines are produced the queue's worker is held off, so the
        header's count is exact (writers may append; those are not exported).
        """
        queue = self._known(queue)
        lane = queue.parked if parked else queue
        with self._exclusive(queue):
            count = self.dlq.count(lane)
            yield _dumps(header(lane, count, _iso(self._clock()) or ""))
            written = 0
            for message in self.dlq.iter_messages(lane):
                if written >= count:
                    break
                yield _dumps(message_to_line(message))
                written += 1

    def export_to(
        self, queue: QueueId, path: Path, *, parked: bool = False, progress: Progress = _no_progress
    ) -> dict[str, Any]:
        tmp = path.with_name(path.name + ".partial")
        count = 0
        with tmp.open("w", encoding="utf-8") as out:
            for index, line in enumerate(self.export_lines(queue, parked=parked)):
                out.write(line)
                if index:
                    count += 1
                    progress(1)
        tmp.replace(path)
        return {
            "queue": str(queue.main),
            "lane": "parked" if parked else "main",
            "exported": count,
            "file": str(path),
        }

    def import_from(
        self, path: Path, *, skip_existing: bool = False, progress: Progress = _no_progress
    ) -> dict[str, Any]:
        """Validate the whole file (nothing written on any error), then enqueue in order.

        Refuses ids already in the target queue unless ``skip_existing``;
        re-running an interrupted import with ``skip_existing`` completes it
        without duplicates.
        """
        lane, messages = _validate_file(path)
        queue = lane.main
        ids = set(messages)
        # Live appends to the queue wait until the import is in: its messages
        # stay together, in file order.
        with self._exclusive(queue), self.dlq.editing(queue):
            existing = self.dlq.existing_ids(queue, ids)
            if existing and not skip_existing:
                sample = ", ".join(sorted(existing)[:5])
                raise DLQConflictError(
                    f"{len(existing)} message id(s) of {path.name} are already in {queue} "
                    f"(e.g. {sample}); use --skip-existing to import only the others"
                )
            imported = skipped = 0
            batch: list[DLQMessage] = []
            for message in _read_messages(path, lane):
                if message.message_id in existing:
                    skipped += 1
                    continue
                batch.append(message)
                if len(batch) >= IMPORT_CHUNK:
                    imported += self._import_batch(lane, batch)
                    progress(len(batch))
                    batch = []
            if batch:
                imported += self._import_batch(lane, batch)
                progress(len(batch))
        return {
            "queue": str(queue),
            "lane": "parked" if lane.lane else "main",
            "imported": imported,
            "skipped_existing": skipped,
        }

    def _import_batch(self, lane: QueueId, batch: list[DLQMessage]) -> int:
        if lane.lane:
            self.dlq.park(lane.main, batch)
            return len(batch)
        result = self.dlq.enqueue(lane, batch)
        if result.dropped:
            raise OperationError(
                f"the DLQ is full: {result.dropped} message(s) not imported "
                "(DLQ_WHEN_FULL=drop_newest); re-run with --skip-existing once there is room"
            )
        return result.accepted


def _validate_file(path: Path) -> tuple[QueueId, list[str]]:
    """Check every line of an export file; returns (lane, message ids in order)."""
    lane: QueueId | None = None
    expected = 0
    ids: list[str] = []
    seen: set[str] = set()
    try:
        with path.open(encoding="utf-8") as handle:
            for number, line in enumerate(handle, start=1):
                where = f"{path.name} line {number}"
                if not line.strip():
                    raise OperationError(f"{where}: empty line")
                try:
                    data = loads(line, MAX_LINE_DEPTH)
                except JSONTooDeepError as error:
                    raise OperationError(f"{where}: {error}") from None
                except json.JSONDecodeError as error:
                    raise OperationError(f"{where}: not JSON: {error.msg}") from None
                try:
                    if lane is None:
                        lane, expected = parse_header(data)
                        continue
                    message = message_from_line(data, lane)
                except ValueError as error:
                    raise OperationError(f"{where}: {error}") from None
                if message.message_id in seen:
                    raise OperationError(f"{where}: duplicate message id {message.message_id}")
                seen.add(message.message_id)
                ids.append(message.message_id)
    except UnicodeDecodeError as error:
        raise OperationError(f"{path.name}: not UTF-8 text: {error.reason}") from None
    except OSError as error:
        raise OperationError(f"cannot read {path}: {error.strerror}") from None
    if lane is None:
        raise OperationError(f"{path.name}: empty file (expected a header line)")
    if len(ids) != expected:
        raise OperationError(
            f"{path.name}: header says {expected} message(s), the file holds {len(ids)} "
            "(truncated or edited?)"
        )
    return lane, ids


def _read_messages(path: Path, lane: QueueId) -> Iterable[DLQMessage]:
    with path.open(encoding="utf-8") as handle:
        next(handle)
        for line in handle:
            yield message_from_line(loads(line, MAX_LINE_DEPTH), lane)


def _dumps(data: dict[str, Any]) -> str:
    text = json.dumps(data, ensure_ascii=False, allow_nan=False)
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:  # lone surrogates: only escapes can carry them
        text = json.dumps(data, ensure_ascii=True, allow_nan=False)
    return text + "\n"


def _age(now: float, when: float | None) -> float | None:
    return None if when is None else round(max(0.0, now - when), 3)
