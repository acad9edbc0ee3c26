"""The admin API's queue routes: health, stats, the queue list, peeking, replay and purge."""

from __future__ import annotations

from compute.admin.http_errors import BadRequest
from compute.admin.operations import DLQOperations
from compute.admin.request import Request, body_field, queue_arg
from compute.admin.response import Response
from compute.admin.routing import Router


class QueueRoutes:
    """``/health`` and ``/dlq/stats``, ``/dlq/queues...``, ``/dlq/reprocess``, ``/dlq/purge``."""

    def __init__(self, ops: DLQOperations) -> None:
        self.ops = ops

    def add_to(self, router: Router) -> None:
        ops = self.ops
        router.add_route("GET", "/health", self._health)
        router.add_route("GET", "/dlq/stats", lambda r: Response(body=ops.stats()))
        router.add_route("GET", "/dlq/queues", lambda r: Response(body={"queues": ops.queues()}))
        router.add_route("GET", "/dlq/queues/{queue}/messages", self._messages)
        router.add_route("POST", "/dlq/reprocess", self._reprocess)
        router.add_route("POST", "/dlq/purge", self._purge)

    def _health(self, request: Request) -> Response:
        body, status = self.ops.health()
        return Response(status, body)

    def _messages(self, request: Request) -> Response:
        queue = request.queue_param()
        limit = request.integer("limit", 20, 1, 10_000)
        return Response(body=self.ops.show(queue, limit=limit, parked=request.flag("parked")))

    def _reprocess(self, request: Request) -> Response:
        body = request.json()
        queue = request.optional_queue()
        parked = bool(body_field(body, "parked", bool))
        dry_run = bool(body_field(body, "dry_run", bool))
        return Response(body=self.ops.replay(queue, parked=parked, dry_run=dry_run))

    def _purge(self, request: Request) -> Response:
        body = request.json()
        queue = queue_arg(body_field(body, "queue", str, required=True), "field 'queue'")
        if body_field(body, "confirm", bool) is not True:
            raise BadRequest("field 'confirm' must be true: purge deletes every message for good")
        return Response(body=self.ops.purge(queue, parked=bool(body_field(body, "parked", bool))))
