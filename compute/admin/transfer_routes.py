"""The admin API's export and import routes: a queue's JSONL file out or in, via a spool file."""

from __future__ import annotations

from pathlib import Path

from compute.admin.http_errors import BadRequest
from compute.admin.operations import DLQOperations
from compute.admin.request import IMPORT_CONTENT_TYPES, Request
from compute.admin.response import Response
from compute.admin.routing import Router
from compute.admin.spool_files import ROOM_CHECK_BYTES, SPOOL_PREFIX, ensure_room, temp_file
from compute.errors import OperationError
from config.settings import AdminConfig


class TransferRoutes:
    """``GET /dlq/queues/{queue}/export`` and ``POST /dlq/import``."""

    def __init__(self, ops: DLQOperations, config: AdminConfig) -> None:
        self.ops = ops
        self.config = config

    def add_to(self, router: Router) -> None:
        router.add_route("GET", "/dlq/queues/{queue}/export", self._export)
        router.add_route("POST", "/dlq/import", self._import, IMPORT_CONTENT_TYPES)

    def _work_dir(self) -> Path:
        return Path(self.ops.settings.dlq.base_path)

    def _export(self, request: Request) -> Response:
        """Spool the export to a file, then send the file.

        The queue's worker is held off while the export is read (so the
        header's count is exact), but never while a client takes the bytes:
        a client that stops reading must not stop replay.
        """
        queue = request.queue_param()
        directory = self._work_dir()
        floor = self.ops.settings.dlq.min_free_disk_bytes
        ensure_room(directory, 0, floor, "the export")
        with temp_file(directory, SPOOL_PREFIX, "w", "spool the export") as (path, out):
            checked = 0
            for line in self.ops.export_lines(queue, parked=request.flag("parked")):
                out.write(line)
                checked += len(line)
                if checked >= ROOM_CHECK_BYTES:
                    ensure_room(directory, checked, floor, "the export")
                    checked = 0
        return Response(file=path)

    def _import(self, request: Request) -> Response:
        request.max_body = self.config.max_body_bytes
        floor = self.ops.settings.dlq.min_free_disk_bytes
        path = request.body_to_file(self._work_dir(), floor)
        try:
            result = self.ops.import_from(path, skip_existing=request.flag("skip_existing"))
        except OperationError as error:  # the file is the request body: a bad body
            raise BadRequest(str(error)) from None
        finally:
            path.unlink(missing_ok=True)
        return Response(body=result)
