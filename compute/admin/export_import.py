"""A lane to a JSONL export file and back: export streamed, import checked before any write."""

from __future__ import annotations

import json
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Any

from compute.admin.json_limits import MAX_LINE_DEPTH, JSONTooDeepError, loads
from compute.admin.operations_base import OperationsBase, Progress, no_progress
from compute.codec.export_view import (
    header,
    message_from_line,
    message_to_line,
    parse_header,
)
from compute.codec.message import DLQMessage
from compute.dlq.timestamps import iso
from compute.errors import DLQConflictError, OperationError
from compute.queue_id import QueueId

IMPORT_CHUNK = 500


class ExportImport(OperationsBase):
    """``export_lines``, ``export_to`` and ``import_from``."""

    def export_lines(self, queue: QueueId, *, parked: bool = False) -> Iterator[str]:
        """The export of a lane as JSON lines (header first), streamed.

        While the lines are produced the queue's worker is held off, so the
        header's count is exact (writers may append; those are not exported).
        """
        queue = self.known(queue)
        lane = queue.parked if parked else queue
        with self.exclusive(queue, edits=False):  # a read: another engine's queue too
            count = self.dlq.count(lane)
            yield _dumps(header(lane, count, iso(self._clock()) or ""))
            written = 0
            for message in self.dlq.iter_messages(lane):
                if written >= count:
                    break
                yield _dumps(message_to_line(message))
                written += 1

    def export_to(
        self, queue: QueueId, path: Path, *, parked: bool = False, progress: Progress = no_progress
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
        self, path: Path, *, skip_existing: bool = False, progress: Progress = no_progress
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
        with self.exclusive(queue), self.dlq.editing(queue):
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
