"""The admin API's route table and dispatch: a request to its handler, an error to its JSON answer.

Errors are JSON ``{"error": "...", "error_type": "..."}``: the HTTP layer's
own refusals (400 bad body or query, naming the field; 401; 403; 404 unknown
route; 405; 411; 413; 415) and the operations' errors with the status and
name ``compute/error_codes.py`` gives them (404 unknown queue or message,
409 conflict, 507 DLQ full, ...); a 500 never carries a traceback (the
engine log has it). A new route is one ``add_route`` call.
"""

from __future__ import annotations

import logging
import re
from collections.abc import Callable
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler
from urllib.parse import parse_qs, unquote, urlsplit

from compute.admin.access import AccessCheck
from compute.admin.connection import AdminHTTPServer
from compute.admin.http_errors import HTTPError, refusal_body
from compute.admin.request import JSON_CONTENT_TYPE, Request
from compute.admin.response import Response
from compute.error_codes import UNEXPECTED, error_code
from config.settings import AdminConfig

logger = logging.getLogger(__name__)

Handler = Callable[[Request], Response]


@dataclass(frozen=True)
class Route:
    method: str
    pattern: re.Pattern[str]
    handler: Handler
    template: str
    # Media types a POST body must declare; a JSON route's body is read and
    # checked before its handler runs.
    content_types: tuple[str, ...] = ()

    @property
    def takes_json(self) -> bool:
        return self.content_types == (JSON_CONTENT_TYPE,)


class Router:
    """The routes, and the checks every request passes before its handler runs."""

    def __init__(self, config: AdminConfig) -> None:
        self.routes: list[Route] = []
        self._access = AccessCheck(config)

    def add_route(
        self,
        method: str,
        template: str,
        handler: Handler,
        content_types: tuple[str, ...] | None = None,
    ) -> None:
        """Register ``handler`` for ``method`` and a path like ``/dlq/queues/{queue}/messages``.

        ``{queue}`` matches one or more path segments (a queue name holds ``/``,
        raw or as ``%2F``); any other ``{name}`` matches one segment. A POST
        takes a JSON body (``Content-Type: application/json``) unless
        ``content_types`` names others.
        """
        regex = ""
        for part in re.split(r"(\{\w+\})", template):
            if part.startswith("{") and part.endswith("}"):
                name = part[1:-1]
                regex += f"(?P<{name}>.+)" if name == "queue" else f"(?P<{name}>[^/]+)"
            else:
                regex += re.escape(part)
        if content_types is None:
            content_types = (JSON_CONTENT_TYPE,) if method == "POST" else ()
        self.routes.append(
            Route(method, re.compile(f"^{regex}$"), handler, template, content_types)
        )

    @staticmethod
    def _check_content_type(route: Route, request: Request) -> None:
        if not route.content_types:
            return
        given = request.headers.get("Content-Type") or ""
        media = given.split(";", 1)[0].strip().lower()
        if media not in route.content_types:
            shown = f"Content-Type {given!r}" if given else "no Content-Type"
            raise HTTPError(
                f"{shown} on {route.method} {route.template}: "
                f"send Content-Type: {' or '.join(route.content_types)}",
                status=415,
                accepted=list(route.content_types),
            )

    def dispatch(self, handler: BaseHTTPRequestHandler, method: str) -> Response:
        refused = self._access.refusal(handler)
        if refused is not None:
            return refused
        parts = urlsplit(handler.path)
        path = parts.path.rstrip("/") or "/"
        allowed = []
        for route in self.routes:
            match = route.pattern.match(path)
            if match is None:
                continue
            if route.method != method:
                allowed.append(route.method)
                continue
            request = Request(
                method,
                path,
                {k: unquote(v) for k, v in match.groupdict().items()},
                parse_qs(parts.query, keep_blank_values=True),
                handler.headers,
                handler,
            )
            return self._call(route, request, handler)
        if allowed:
            return Response(
                405, refusal_body(405, f"{method} not allowed on {path}; use {allowed[0]}")
            )
        return Response(
            404,
            refusal_body(
                404,
                f"no route {method} {path}",
                routes=[f"{r.method} {r.template}" for r in self.routes],
            ),
        )

    def _call(self, route: Route, request: Request, handler: BaseHTTPRequestHandler) -> Response:
        try:
            self._check_content_type(route, request)
            if route.takes_json:
                request.json()  # within the client's deadline, before any work
            server = handler.server
            if isinstance(server, AdminHTTPServer):
                server.disarm(handler.connection)  # from here on the engine works, not the client
            return route.handler(request)
        except HTTPError as error:
            return Response(error.status, error.body())
        except Exception as error:
            code = error_code(error)
            if code.http_status != 500:
                return Response(code.http_status, {"error": str(error), "error_type": code.name})
            logger.exception(
                "admin API request failed: method=%s path=%s", request.method, request.path
            )
            return Response(
                500,
                {
                    "error": "internal error; the engine log has the details",
                    "error_type": UNEXPECTED.name,
                },
            )
