"""Replay on an operator's demand: a queue (or all) now and in order; the parked lane when asked."""

from __future__ import annotations

import logging
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

from compute.admin.operations_base import OperationsBase, Progress, no_progress
from compute.delivery.failures import classify_or_transient
from compute.dlq.manager import DLQManager
from compute.dlq.timestamps import iso
from compute.errors import DLQConflictError
from compute.queue_id import QueueId
from compute.recovery.worker import DLQRecoveryWorker
from config.pipelines import DEFAULT_PRIORITY

if TYPE_CHECKING:
    from compute.storage.jetstream.leases import Owner

logger = logging.getLogger(__name__)


class ReplayActions(OperationsBase):
    """``replay``: the main lane through the queue's recovery worker, the parked lane here."""

    def replay(
        self,
        queue: QueueId | None = None,
        *,
        parked: bool = False,
        dry_run: bool = False,
        progress: Progress = no_progress,
    ) -> dict[str, Any]:
        """Replay one queue, or all, now and in order; parked lanes only with ``parked``."""
        targets = [self.known(queue)] if queue is not None else self.dlq.list_queues()
        if not dry_run:
            if queue is not None:
                self.check_owner(targets[0])
            else:  # all: only those nobody else runs
                owners = self.pipeline_owners()
                targets = [t for t in targets if self._runs_here(t, owners)]
        if queue is None:
            # Higher priority first, as the recovery worker orders a pass.
            targets.sort(key=lambda t: -self._priority_of(t, parked, dry_run))
        results = []
        for target in targets:
            lane = target.parked if parked else target
            waiting = self.dlq.count(lane)
            if not waiting and queue is None:
                continue
            worker = self.worker_for(target, build=not dry_run)
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
            elif parked and (refusal := superseded_refusal(self.dlq, target)):
                # Replaying them would undo the truncate: an operator drops them first.
                entry["error"] = refusal
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
                    hold = self.dlq.holds.of(target)
                    if entry["failed"] and hold is not None:
                        # The table refused the batch: the operator must fix it, not retry.
                        entry["error"] = (
                            f"held: the target table refuses every change: {hold.cause}"
                        )
                        entry["held"] = hold.to_json(self._clock())
            # What a failed replay left, and why: the CLI says whether the
            # destination is down (the messages wait for it) or something else failed.
            entry["remaining"] = self.dlq.count(lane)
            entry["destination_health"] = (
                worker.health[target.destination_id].snapshot().state.value
                if worker is not None and target.destination_id in worker.health
                else "unknown"
            )
            results.append(entry)
        return replay_summary(results, dry_run, self.mode)

    def _runs_here(self, queue: QueueId, owners: Mapping[str, Owner] | None) -> bool:
        try:
            self.check_owner(queue, owners)
        except DLQConflictError as refused:
            logger.info("replay skipped: %s", refused)
            return False
        return True

    def _priority_of(self, queue: QueueId, parked: bool, dry_run: bool) -> int:
        """The replay priority of ``queue``'s table in its pipeline (0 when none delivers it)."""
        waiting = bool(self.dlq.count(queue.parked if parked else queue))
        worker = self.worker_for(queue, build=waiting and not dry_run)
        return worker.priority_of(queue) if worker is not None else DEFAULT_PRIORITY

    def _replay_parked(
        self, worker: DLQRecoveryWorker, queue: QueueId, progress: Progress
    ) -> dict[str, Any]:
        """Write the parked lane to the destination in order: acked (and keys
        released) on success; on failure it stays parked with the error recorded."""
        destination = worker.destinations[queue.destination_id]
        # The destination's own batch size (its ``batch_size`` option), as replay uses.
        size = destination.max_batch_size or self.settings.dlq.batch_size
        done: dict[str, Any] = {"replayed": 0, "failed": 0, "error": None}
        with worker.exclusive():
            while True:
                lease = self.dlq.read_batch(queue.parked, size)
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
                    self.dlq.truncates_applied(queue, [m.record for m in lease.messages])
                    self.dlq.ack(lease)
                done["replayed"] += len(lease.messages)
                progress(len(lease.messages))
        if done["replayed"]:
            logger.info("parked messages replayed: queue=%s count=%d", queue, done["replayed"])
        return done


def superseded_refusal(dlq: DLQManager, queue: QueueId) -> str | None:
    """Why the parked lane of ``queue`` may not be replayed, or None when it may."""
    count = dlq.superseded_count(queue)
    truncate = dlq.applied_truncate(queue)
    if not count or truncate is None:
        return None
    # Under 300 characters: a table cell shows that much of an error.
    return (
        f"{count} parked change(s) older than the truncate of {queue.table} at "
        f"{truncate.position} ({iso(truncate.applied_at)}): replaying them would bring back "
        "truncated rows. Drop them (marked SUPERSEDED by `dlq show --parked`) with `rosetta "
        "dlq discard ID --confirm`, or `purge --parked` if all are; then replay the rest"
    )


def replay_summary(results: list[dict[str, Any]], dry_run: bool, mode: str) -> dict[str, Any]:
    """A replay's answer: the rows of its queues and their totals."""
    return {
        "dry_run": dry_run,
        "queues": results,
        "replayed": sum(r["replayed"] for r in results),
        "failed": sum(r["failed"] for r in results),
        "parked": sum(r["parked"] for r in results),
        "mode": mode,
    }
