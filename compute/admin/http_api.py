"""The engine's admin HTTP API: JSON over stdlib ``http.server``, one route table.

Binds 127.0.0.1 by default (``ROSETTA_ADMIN_ADDR``). When a token is set
(``ROSETTA_ADMIN_TOKEN``, required off loopback) every request must carry
``Authorization: Bearer <token>``. Errors are JSON ``{"error": "..."}`` with
400 (bad body or query, naming the field), 401 (token), 404 (unknown route,
queue or message), 405, 409 (conflict), 507 (DLQ full) or 500 (never with a
traceback; the engine log has it). A new route is one ``add_route`` call.
"""

from __future__ import annotations

import hmac
import json
import logging
import os
import re
import socket
import tempfile
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, unquote, urlsplit

from compute.admin.operations import DLQOperations, parse_queue
from compute.errors import DLQConflictError, DLQFullError, NotFoundError, OperationError
from compute.queue_id import QueueId
from config.settings import AdminConfig

logger = logging.getLogger(__name__)

DISCOVERY_FILE = "admin.json"
MAX_JSON_BODY = 1024 * 1024
_CHUNK = 1024 * 1024


class BadRequest(Exception):
    """The request's body or query is wrong; the message names the field."""


@dataclass
class Request:
    method: str
    path: str
    params: dict[str, str]
    query: dict[str, list[str]]
    headers: Any
    _handler: BaseHTTPRequestHandler
    _body: dict[str, Any] | None = None

    def json(self) -> dict[str, Any]:
        """The JSON object body (``{}`` when empty); BadRequest otherwise."""
        if self._body is None:
            length = self._length()
            if length > MAX_JSON_BODY:
                raise BadRequest(f"body too large ({length} bytes, at most {MAX_JSON_BODY})")
            raw = self._handler.rfile.read(length) if length else b""
            if not raw.strip():
                self._body = {}
            else:
                try:
                    data = json.loads(raw)
                except (ValueError, UnicodeDecodeError) as error:
                    raise BadRequest(f"body is not JSON: {error}") from None
                if not isinstance(data, dict):
                    raise BadRequest("body must be a JSON object")
                self._body = data
        return self._body

    def body_to_file(self, directory: Path) -> Path:
        """Stream the raw body into a temporary file in ``directory``."""
        length = self._length()
        fd, name = tempfile.mkstemp(prefix=".import-", suffix=".jsonl", dir=directory)
        with os.fdopen(fd, "wb") as out:
            left = length
            while left > 0:
                chunk = self._handler.rfile.read(min(_CHUNK, left))
                if not chunk:
                    break
                out.write(chunk)
                left -= len(chunk)
        if left > 0:
            Path(name).unlink(missing_ok=True)
            raise BadRequest(f"body ended after {length - left} of {length} bytes")
        return Path(name)

    def _length(self) -> int:
        text = self.headers.get("Content-Length") or "0"
        try:
            length = int(text)
        except ValueError:
            raise BadRequest(f"bad Content-Length {text!r}") from None
        if length < 0:
            raise BadRequest(f"bad Content-Length {text!r}")
        return length

    def flag(self, name: str) -> bool:
        """A boolean query parameter (``true/false/1/0/yes/no``, absent = false)."""
        values = self.query.get(name)
        if not values:
            return False
        text = values[-1].strip().lower()
        if text in ("1", "true", "yes", ""):
            return True
        if text in ("0", "false", "no"):
            return False
        raise BadRequest(f"query parameter {name!r}={values[-1]!r}: expected true or false")

    def integer(self, name: str, default: int, low: int, high: int) -> int:
        values = self.query.get(name)
        if not values:
            return default
        try:
            value = int(values[-1])
        except ValueError:
            value = low - 1
        if not low <= value <= high:
            raise BadRequest(
                f"query parameter {name!r}={values[-1]!r}: expected an integer {low}..{high}"
            )
        return value


@dataclass
class Response:
    status: int = 200
    body: Any = None
    lines: Iterator[str] | None = None  # streamed as application/x-ndjson
    text: str | None = None  # text/plain (e.g. Prometheus metrics)
    content_type: str = "text/plain; version=0.0.4; charset=utf-8"
    headers: dict[str, str] = field(default_factory=dict)


Handler = Callable[[Request], Response]


@dataclass(frozen=True)
class Route:
    method: str
    pattern: re.Pattern[str]
    handler: Handler
    template: str


def body_field(body: dict[str, Any], name: str, kind: type, *, required: bool = False) -> Any:
    """``body[name]`` checked against ``kind``; BadRequest naming the field otherwise."""
    if name not in body or body[name] is None:
        if required:
            raise BadRequest(f"field {name!r} is required")
        return None
    value = body[name]
    if kind is not bool and isinstance(value, bool) or not isinstance(value, kind):
        raise BadRequest(f"field {name!r} must be a {kind.__name__}, got {json.dumps(value)}")
    return value


def _queue_arg(text: str, where: str) -> QueueId:
    try:
        return parse_queue(text)
    except ValueError as error:
        raise BadRequest(f"{where}: {error}") from None


class AdminServer:
    """The admin API on a daemon thread; ``start()`` binds, ``stop()`` shuts it down."""

    def __init__(self, ops: DLQOperations, config: AdminConfig) -> None:
        self.ops = ops
        self.config = config
        self.routes: list[Route] = []
        self._server: ThreadingHTTPServer | None = None
        self._thread: threading.Thread | None = None
        self._discovery: Path | None = None
        self._add_dlq_routes()

    # ------------------------------------------------------------- routes

    def add_route(self, method: str, template: str, handler: Handler) -> None:
        """Register ``handler`` for ``method`` and a path like ``/dlq/queues/{queue}/messages``.

        ``{queue}`` matches one or more path segments (a queue name holds ``/``,
        raw or as ``%2F``); any other ``{name}`` matches one segment.
        """
        regex = ""
        for part in re.split(r"(\{\w+\})", template):
            if part.startswith("{") and part.endswith("}"):
                name = part[1:-1]
                regex += f"(?P<{name}>.+)" if name == "queue" else f"(?P<{name}>[^/]+)"
            else:
                regex += re.escape(part)
        self.routes.append(Route(method, re.compile(f"^{regex}$"), handler, template))

    def _add_dlq_routes(self) -> None:
        ops = self.ops
        self.add_route("GET", "/health", self._health)
        self.add_route("GET", "/dlq/stats", lambda r: Response(body=ops.stats()))
        self.add_route("GET", "/dlq/queues", lambda r: Response(body={"queues": ops.queues()}))
        self.add_route("GET", "/dlq/queues/{queue}/messages", self._messages)
        self.add_route("GET", "/dlq/queues/{queue}/export", self._export)
        self.add_route("POST", "/dlq/reprocess", self._reprocess)
        self.add_route("POST", "/dlq/purge", self._purge)
        self.add_route("POST", "/dlq/import", self._import)
        self.add_route("GET", "/dlq/messages/{message_id}", self._find)
        self.add_route("POST", "/dlq/messages/{message_id}/discard", self._discard)
        self.add_route("POST", "/dlq/messages/{message_id}/park", self._park)
        self.add_route("POST", "/dlq/messages/{message_id}/unpark", self._unpark)

    def _health(self, request: Request) -> Response:
        body, status = self.ops.health()
        return Response(status, body)

    def _messages(self, request: Request) -> Response:
        queue = _queue_arg(request.params["queue"], "queue in path")
        limit = request.integer("limit", 20, 1, 10_000)
        return Response(body=self.ops.show(queue, limit=limit, parked=request.flag("parked")))

    def _export(self, request: Request) -> Response:
        queue = _queue_arg(request.params["queue"], "queue in path")
        lines = self.ops.export_lines(queue, parked=request.flag("parked"))
        first = next(lines)  # errors (unknown queue) surface before the 200 goes out
        return Response(lines=_chain(first, lines))

    def _reprocess(self, request: Request) -> Response:
        body = request.json()
        text = body_field(body, "queue", str)
        queue = _queue_arg(text, "field 'queue'") if text else None
        parked = bool(body_field(body, "parked", bool))
        dry_run = bool(body_field(body, "dry_run", bool))
        return Response(body=self.ops.replay(queue, parked=parked, dry_run=dry_run))

    def _purge(self, request: Request) -> Response:
        body = request.json()
        queue = _queue_arg(body_field(body, "queue", str, required=True), "field 'queue'")
        if body_field(body, "confirm", bool) is not True:
            raise BadRequest("field 'confirm' must be true: purge deletes every message for good")
        return Response(body=self.ops.purge(queue, parked=bool(body_field(body, "parked", bool))))

    def _import(self, request: Request) -> Response:
        directory = Path(self.ops.settings.dlq.base_path)
        path = request.body_to_file(directory)
        try:
            result = self.ops.import_from(path, skip_existing=request.flag("skip_existing"))
        except OperationError as error:  # the file is the request body: a bad body
            raise BadRequest(str(error)) from None
        finally:
            path.unlink(missing_ok=True)
        return Response(body=result)

    def _optional_queue(self, request: Request) -> QueueId | None:
        text = body_field(request.json(), "queue", str)
        return _queue_arg(text, "field 'queue'") if text else None

    def _find(self, request: Request) -> Response:
        from compute.dlq_message import message_to_json

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
        return Response(body=self.ops.discard(message_id, self._optional_queue(request)))

    def _park(self, request: Request) -> Response:
        message_id = request.params["message_id"]
        return Response(body=self.ops.park(message_id, self._optional_queue(request)))

    def _unpark(self, request: Request) -> Response:
        message_id = request.params["message_id"]
        return Response(body=self.ops.unpark(message_id, self._optional_queue(request)))

    # ------------------------------------------------------------- dispatch

    def dispatch(self, handler: BaseHTTPRequestHandler, method: str) -> Response:
        if self.config.token is not None:
            given = handler.headers.get("Authorization", "")
            expected = f"Bearer {self.config.token}"
            if not hmac.compare_digest(given.encode(), expected.encode()):
                return Response(
                    401,
                    {"error": "missing or wrong token: send 'Authorization: Bearer <token>'"},
                    headers={"WWW-Authenticate": "Bearer"},
                )
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
            return self._call(route, request)
        if allowed:
            return Response(405, {"error": f"{method} not allowed on {path}; use {allowed[0]}"})
        return Response(
            404,
            {
                "error": f"no route {method} {path}",
                "routes": [f"{r.method} {r.template}" for r in self.routes],
            },
        )

    def _call(self, route: Route, request: Request) -> Response:
        try:
            return route.handler(request)
        except BadRequest as error:
            return Response(400, {"error": str(error)})
        except NotFoundError as error:
            return Response(404, {"error": str(error)})
        except DLQConflictError as error:
            return Response(409, {"error": str(error)})
        except DLQFullError as error:
            return Response(507, {"error": str(error)})
        except (OperationError, ValueError) as error:
            return Response(400, {"error": str(error)})
        except Exception:
            logger.exception(
                "admin API request failed: method=%s path=%s", request.method, request.path
            )
            return Response(500, {"error": "internal error; the engine log has the details"})

    # ------------------------------------------------------------- lifecycle

    @property
    def url(self) -> str:
        assert self._server is not None
        host, port = self._server.server_address[:2]
        host = str(host)
        if host in ("0.0.0.0", ""):
            host = "127.0.0.1"
        elif host == "::":
            host = "::1"
        return f"http://[{host}]:{port}" if ":" in host else f"http://{host}:{port}"

    def start(self) -> str:
        """Bind and serve on a daemon thread; returns the URL (port 0 picks one)."""
        server_class = _Server6 if ":" in self.config.host else _Server
        try:
            server = server_class((self.config.host, self.config.port), _handler_for(self))
        except OSError as error:
            raise OperationError(
                f"admin API cannot listen on {self.config.host}:{self.config.port}: "
                f"{error.strerror}; set ROSETTA_ADMIN_ADDR to another HOST:PORT, "
                "HOST:0 for a free port, or off"
            ) from None
        self._server = server
        self._thread = threading.Thread(
            target=server.serve_forever,
            kwargs={"poll_interval": 0.2},
            name="admin-api",
            daemon=True,
        )
        self._thread.start()
        logger.info(
            "admin API listening: url=%s token_required=%s", self.url, self.config.token is not None
        )
        return self.url

    def write_discovery(self, base_path: Path) -> Path:
        """Write ``<base>/admin.json`` (pid, url, whether a token is needed; never the token)."""
        path = Path(base_path) / DISCOVERY_FILE
        data = {
            "pid": os.getpid(),
            "url": self.url,
            "token_required": self.config.token is not None,
            "started_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        }
        tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
        tmp.write_text(json.dumps(data, indent=2) + "\n")
        os.replace(tmp, path)
        self._discovery = path
        return path

    def stop(self) -> None:
        if self._discovery is not None:
            self._discovery.unlink(missing_ok=True)
            self._discovery = None
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
            self._server = None
        if self._thread is not None:
            self._thread.join(5)
            self._thread = None
        logger.info("admin API stopped")


class _Server(ThreadingHTTPServer):
    daemon_threads = True
    allow_reuse_address = True


class _Server6(_Server):
    address_family = socket.AF_INET6


def _chain(first: str, rest: Iterator[str]) -> Iterator[str]:
    yield first
    yield from rest


def _handler_for(api: AdminServer) -> type[BaseHTTPRequestHandler]:
    class AdminHandler(BaseHTTPRequestHandler):
        server_version = "rosetta-admin"

        def do_GET(self) -> None:  # noqa: N802 (http.server's naming)
            self._respond(api.dispatch(self, "GET"))

        def do_POST(self) -> None:  # noqa: N802
            self._respond(api.dispatch(self, "POST"))

        def _respond(self, response: Response) -> None:
            if response.lines is not None:
                self.send_response(response.status)
                self.send_header("Content-Type", "application/x-ndjson; charset=utf-8")
                self.send_header("Connection", "close")
                self.end_headers()
                try:
                    for line in response.lines:
                        self.wfile.write(line.encode("utf-8"))
                except Exception:  # the client sees a short stream; the header's count tells
                    logger.exception("admin API stream failed: path=%s", self.path)
                finally:
                    close = getattr(response.lines, "close", None)
                    if close is not None:
                        close()
                return
            if response.text is not None:
                payload = response.text.encode("utf-8")
                content_type = response.content_type
            else:
                payload = (json.dumps(response.body, indent=2, default=str) + "\n").encode()
                content_type = "application/json"
            self.send_response(response.status)
            self.send_header("Content-Type", content_type)
            self.send_header("Content-Length", str(len(payload)))
            for name, value in response.headers.items():
                self.send_header(name, value)
            self.end_headers()
            self.wfile.write(payload)

        def log_message(self, format: str, *args: Any) -> None:
            logger.debug("admin API: client=%s " + format, self.client_address[0], *args)

    return AdminHandler
