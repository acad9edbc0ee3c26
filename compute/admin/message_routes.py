"""The admin API's message routes: find one message by id, discard, park or unpark it."""

from __future__ import annotations

from compute.admin.http_errors import BadRequest
from compute.admin.operations import DLQOperations
from compute.admin.request import Request, body_field
from compute.admin.response import Response
from compute.admin.routing import Router
from compute.codec.message import message_to_json


class MessageRoutes:
    """``/dlq/messages/{message_id}`` and its ``discard``, ``park`` and ``unpark`` actions."""

    def __init__(self, ops: DLQOperations) -> None:
        self.ops = ops

    def add_to(self, router: Router) -> None:
        router.add_route("GET", "/dlq/messages/{message_id}", self._find)
        router.add_route("POST", "/dlq/messages/{message_id}/discard", self._discard)
        router.add_route("POST", "/dlq/messages/{message_id}/park", self._park)
        router.add_route("POST", "/dlq/messages/{message_id}/unpark", self._unpark)

    def _find(self, request: Request) -> Response:
        lane, message = self.ops.dlq.locate(request.params["message_id"])
        return Response(
            body={
                "queue": str(lane.main),
                "lane": lane.lane or "main",
                "message": message_to_json(message),
            }
        )

    def _discard(self, request: Request) -> Response:
        if body_field(request.json(), "confirm", bool) is not True:
            raise BadRequest("field 'confirm' must be true: discard deletes the message for good")
        message_id = request.params["message_id"]
        return Response(body=self.ops.discard(message_id, request.optional_queue()))

    def _park(self, request: Request) -> Response:
        message_id = request.params["message_id"]
        return Response(body=self.ops.park(message_id, request.optional_queue()))

    def _unpark(self, request: Request) -> Response:
        message_id = request.params["message_id"]
        return Response(body=self.ops.unpark(message_id, request.optional_queue()))
