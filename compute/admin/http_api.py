"""The engine's admin HTTP API: JSON over stdlib ``http.server``, one route table.

Binds 127.0.0.1 by default (``ROSETTA_ADMIN_ADDR``). When a token is set
(``ROSETTA_ADMIN_TOKEN``, required off loopback) every request must carry
``Authorization: Bearer <token>``. It is not for browsers: a request whose
Host is not the listening address (or a name in
``ROSETTA_ADMIN_ALLOWED_HOSTS``), or that a browser marks cross-site
(``Origin``, ``Sec-Fetch-Site``), is refused with 403, so a web page can
neither post to it nor read it through DNS rebinding; a POST must carry its
route's content type (415). Connections are capped
(``ROSETTA_ADMIN_MAX_CONNECTIONS``; more are refused without a thread) and a
client has ``ROSETTA_ADMIN_TIMEOUT`` seconds to send its request and to take
each piece of the answer. Errors are JSON ``{"error": "..."}`` with 400 (bad
body or query, naming the field), 401 (token), 403, 404 (unknown route,
queue or message), 405, 409 (conflict), 411, 413 (body too large), 415,
507 (DLQ or disk full) or 500 (never with a traceback; the engine log has
it). A new route is one ``add_route`` call.
"""

from __future__ import annotations

import hmac
import ipaddress
import json
import logging
import os
import re
import shutil
import socket
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, unquote, urlsplit

from compute.admin.json_limits import MAX_BODY_DEPTH, loads
from compute.admin.operations import DLQOperations, parse_queue
from compute.errors import DLQConflictError, DLQFullError, NotFoundError, OperationError
from compute.queue_id import QueueId
from compute.storage.atomic_file import json_bytes, write_atomic
from config.admin_config import AdminConfig
from config.env_values import MIB

logger = logging.getLogger(__name__)

DISCOVERY_FILE = "admin.json"
MAX_JSON_BODY = 1024 * 1024
JSON_CONTENT_TYPE = "application/json"
# The import body is the export file: JSON lines. Both common names are accepted.
IMPORT_CONTENT_TYPE = "application/x-ndjson"
IMPORT_CONTENT_TYPES = (IMPORT_CONTENT_TYPE, "application/jsonl")
_CHUNK = 1024 * 1024
# Each send must finish within the timeout (sendall's timeout covers the whole
# call): small pieces keep the minimum rate asked of a slow client low.
_SEND_CHUNK = 64 * 1024
# Free disk is re-checked after this much of an export was spooled.
_ROOM_CHECK_BYTES = 8 * MIB
# Temporary files in DLQ_BASE_PATH: removed when their request ends, and at start-up
# (left by a kill -9).
_UPLOAD_PREFIX = ".import-"
_SPOOL_PREFIX = ".export-"
# After refusing a request whose body was not read, its rest is read (and
# dropped) for a moment, so the client gets the answer instead of a reset.
_LINGER_SECONDS = 1.0
_LINGER_BYTES = 4 * MIB
_BUSY_LOG_INTERVAL = 60.0


class HTTPError(Exception):
    """A request refused with ``status``; the message (and ``extra``) go into the JSON body."""

    status = 400

    def __init__(self, message: str, *, status: int | None = None, **extra: Any) -> None:
        super().__init__(message)
        if status is not None:
            self.status = status
        self.extra = extra


class BadRequest(HTTPError):
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
    max_body: int = MAX_JSON_BODY  # for body_to_file (the import upload)

    def json(self) -> dict[str, Any]:
        """The JSON object body (``{}`` when empty); BadRequest otherwise."""
        if self._body is None:
            length = self.length(MAX_JSON_BODY)
            raw = self._read_exactly(length)
            if not raw.strip():
                self._body = {}
            else:
                try:
                    data = loads(raw, MAX_BODY_DEPTH)
                except (ValueError, UnicodeDecodeError) as error:
                    raise BadRequest(f"body is not JSON: {error}") from None
                if not isinstance(data, dict):
                    raise BadRequest("body must be a JSON object")
                self._body = data
        return self._body

    def _read_exactly(self, length: int) -> bytes:
        return b"".join(self._body_chunks(length))

    def _body_chunks(self, length: int) -> Iterator[bytes]:
        """The body's ``length`` bytes in chunks, never more; BadRequest if it ends early."""
        left = length
        while left > 0:
            chunk = self._handler.rfile.read(min(_CHUNK, left))
            if not chunk:
                raise BadRequest(f"body ended after {length - left} of {length} bytes")
            yield chunk
            left -= len(chunk)
        _body_read(self._handler)

    def body_to_file(self, directory: Path, floor_bytes: int) -> Path:
        """Stream the raw body into a temporary file in ``directory``.

        Refused (507) when it would leave less than ``floor_bytes`` free there;
        at most ``length()`` bytes are read, whatever the client sends. The file
        is removed on every failure (short body, disconnect, timeout, disk).
        """
        length = self.length(self.max_body, "ROSETTA_ADMIN_MAX_BODY_MB")
        ensure_room(directory, length, floor_bytes, "the upload")
        fd, name = tempfile.mkstemp(prefix=_UPLOAD_PREFIX, suffix=".jsonl", dir=directory)
        path = Path(name)
        try:
            with os.fdopen(fd, "wb") as out:
                for chunk in self._body_chunks(length):
                    out.write(chunk)
        except OSError as error:  # a timeout or reset mid-upload, or the disk
            path.unlink(missing_ok=True)
            if isinstance(error, TimeoutError | ConnectionError):
                raise BadRequest(f"the upload stopped: {error}") from None
            raise HTTPError(
                f"cannot store the upload under {directory}: {error.strerror}", status=507
            ) from None
        except BaseException:
            path.unlink(missing_ok=True)
            raise
        return path

    def length(self, limit: int, setting: str | None = None) -> int:
        """Content-Length, checked against ``limit`` (set by ``setting``) before any read."""
        if self.headers.get("Transfer-Encoding"):
            raise HTTPError(
                "chunked request bodies are not supported: send Content-Length", status=411
            )
        text = self.headers.get("Content-Length") or "0"
        try:
            length = int(text)
        except ValueError:
            raise BadRequest(f"bad Content-Length {text!r}") from None
        if length < 0:
            raise BadRequest(f"bad Content-Length {text!r}")
        if length > limit:
            raise HTTPError(
                f"body too large ({length} bytes, at most {limit}"
                + (f" set by {setting})" if setting else ")"),
                status=413,
                limit_bytes=limit,
            )
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


def _body_read(handler: BaseHTTPRequestHandler) -> None:
    handler.body_pending = False  # type: ignore[attr-defined]


def ensure_room(directory: Path, size: int, floor_bytes: int, what: str) -> None:
    """Refuse (507) when writing ``size`` bytes would take ``directory``'s free
    space below ``floor_bytes`` (DLQ_MIN_FREE_DISK_MB): the DLQ's enqueues need it."""
    try:
        free = shutil.disk_usage(directory).free
    except OSError as error:
        raise HTTPError(f"cannot check free disk under {directory}: {error.strerror}") from None
    if free - size < floor_bytes:
        raise HTTPError(
            f"not enough free disk under {directory} for {what}: {size // MIB} MiB needed, "
            f"{free // MIB} MiB free, {floor_bytes // MIB} MiB kept free for the DLQ "
            "(DLQ_MIN_FREE_DISK_MB); free some space and retry",
            status=507,
        )


@dataclass
class Response:
    status: int = 200
    body: Any = None
    file: Path | None = None  # sent as application/x-ndjson, then removed
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
    # Media types a POST body must declare; a JSON route's body is read and
    # checked before its handler runs.
    content_types: tuple[str, ...] = ()

    @property
    def takes_json(self) -> bool:
        return self.content_types == (JSON_CONTENT_TYPE,)


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


def _split_host(text: str) -> tuple[str, int | None]:
    """``name[:port]`` or ``[v6][:port]`` -> (lower-case name, port or None); ValueError."""
    value = text.strip().lower()
    match = re.fullmatch(r"(\[[0-9a-f:.]+\]|[^:\[\]/@\s]+)(?::(\d{1,5}))?", value)
    if match is None:
        raise ValueError(text)
    return match.group(1).rstrip("."), int(match.group(2)) if match.group(2) else None


def _host_form(address: str) -> str:
    """An IP address as it appears in a Host header (IPv6 in brackets, mapped v4 unwrapped)."""
    ip = ipaddress.ip_address(address.split("%", 1)[0])
    if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is not None:
        ip = ip.ipv4_mapped
    return f"[{ip}]" if ip.version == 6 else str(ip)


class AdminServer:
    """The admin API on a daemon thread; ``start()`` binds, ``stop()`` shuts it down."""

    def __init__(self, ops: DLQOperations, config: AdminConfig) -> None:
        self.ops = ops
        self.config = config
        self.routes: list[Route] = []
        self._server: _Server | None = None
        self._thread: threading.Thread | None = None
        self._discovery: Path | None = None
        self._add_dlq_routes()

    # ------------------------------------------------------------- routes

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

    def _add_dlq_routes(self) -> None:
        ops = self.ops
        self.add_route("GET", "/health", self._health)
        self.add_route("GET", "/dlq/stats", lambda r: Response(body=ops.stats()))
        self.add_route("GET", "/dlq/queues", lambda r: Response(body={"queues": ops.queues()}))
        self.add_route("GET", "/dlq/queues/{queue}/messages", self._messages)
        self.add_route("GET", "/dlq/queues/{queue}/export", self._export)
        self.add_route("POST", "/dlq/reprocess", self._reprocess)
        self.add_route("POST", "/dlq/purge", self._purge)
        self.add_route("POST", "/dlq/import", self._import, IMPORT_CONTENT_TYPES)
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
        """Spool the export to a file, then send the file.

        The queue's worker is held off while the export is read (so the
        header's count is exact), but never while a client takes the bytes:
        a client that stops reading must not stop replay.
        """
        queue = _queue_arg(request.params["queue"], "queue in path")
        directory = self._work_dir()
        floor = self.ops.settings.dlq.min_free_disk_bytes
        ensure_room(directory, 0, floor, "the export")
        fd, name = tempfile.mkstemp(prefix=_SPOOL_PREFIX, suffix=".jsonl", dir=directory)
        path = Path(name)
        try:
            with os.fdopen(fd, "w", encoding="utf-8") as out:
                checked = 0
                for line in self.ops.export_lines(queue, parked=request.flag("parked")):
                    out.write(line)
                    checked += len(line)
                    if checked >= _ROOM_CHECK_BYTES:
                        ensure_room(directory, checked, floor, "the export")
                        checked = 0
        except OSError as error:
            path.unlink(missing_ok=True)
            raise HTTPError(
                f"cannot spool the export under {directory}: {error.strerror}", status=507
            ) from None
        except BaseException:
            path.unlink(missing_ok=True)
            raise
        return Response(file=path)

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

    def _work_dir(self) -> Path:
        return Path(self.ops.settings.dlq.base_path)

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

    def _optional_queue(self, request: Request) -> QueueId | None:
        text = body_field(request.json(), "queue", str)
        return _queue_arg(text, "field 'queue'") if text else None

    def _find(self, request: Request) -> Response:
        from compute.codec.message_view import message_to_json

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

    # ------------------------------------------------------------- checks

    def _accepted_hosts(self, handler: BaseHTTPRequestHandler) -> list[str]:
        """Host header values this connection may carry: the address it reached
        (and the loopback names, on loopback), the configured host, and
        ``ROSETTA_ADMIN_ALLOWED_HOSTS``."""
        local = handler.connection.getsockname()
        port = int(local[1])
        names = [_host_form(str(local[0]))]
        if ipaddress.ip_address(names[0].strip("[]")).is_loopback:
            names += ["localhost", "127.0.0.1", "[::1]"]
        host = self.config.host.lower()
        if host not in ("0.0.0.0", "::", ""):
            names.append(f"[{host}]" if ":" in host else host)
        accepted = list(dict.fromkeys(f"{name}:{port}" for name in names))
        return accepted + list(self.config.allowed_hosts)

    def _check_site(self, handler: BaseHTTPRequestHandler) -> Response | None:
        """403 unless the request names this server as its host and is not cross-site.

        A browser sends whatever a web page asks to loopback, and a host name
        rebound to 127.0.0.1 makes it same-origin; Host, Origin and
        Sec-Fetch-Site are set by the browser, not by the page.
        """
        hosts = handler.headers.get_all("Host") or []
        accepted = self._accepted_hosts(handler)
        given = hosts[0] if len(hosts) == 1 else None
        ok = False
        if given is not None:
            try:
                name, port = _split_host(given)
            except ValueError:
                pass
            else:
                port = 80 if port is None else port
                for entry in accepted:
                    entry_name, entry_port = _split_host(entry)
                    if name == entry_name and entry_port in (None, port):
                        ok = True
                        break
        if not ok:
            shown = "no Host header" if not hosts else f"Host {', '.join(hosts)!r}"
            return Response(
                403,
                {
                    "error": f"{shown} is not this server: expected one of "
                    f"{', '.join(accepted)}; add other names to ROSETTA_ADMIN_ALLOWED_HOSTS",
                    "accepted": accepted,
                },
            )
        assert given is not None
        origin = handler.headers.get("Origin")
        own = [f"http://{given.strip().lower()}", f"https://{given.strip().lower()}"]
        if origin is not None and origin.strip().lower().rstrip("/") not in own:
            return Response(
                403,
                {
                    "error": f"cross-site request refused: Origin {origin!r} is not this "
                    f"server's ({own[0]}); the admin API does not serve web pages",
                    "accepted": own,
                },
            )
        fetch_site = handler.headers.get("Sec-Fetch-Site")
        if fetch_site is not None and fetch_site.strip().lower() not in ("same-origin", "none"):
            return Response(
                403,
                {
                    "error": f"cross-site request refused: Sec-Fetch-Site {fetch_site!r}; "
                    "the admin API does not serve web pages",
                    "accepted": ["same-origin", "none"],
                },
            )
        return None

    def _check_token(self, handler: BaseHTTPRequestHandler) -> Response | None:
        if self.config.token is None:
            return None
        given = handler.headers.get("Authorization", "")
        expected = f"Bearer {self.config.token}"
        if hmac.compare_digest(given.encode(), expected.encode()):
            return None
        return Response(
            401,
            {"error": "missing or wrong token: send 'Authorization: Bearer <token>'"},
            headers={"WWW-Authenticate": "Bearer"},
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

    # ------------------------------------------------------------- dispatch

    def dispatch(self, handler: BaseHTTPRequestHandler, method: str) -> Response:
        refused = self._check_site(handler) or self._check_token(handler)
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
            return Response(405, {"error": f"{method} not allowed on {path}; use {allowed[0]}"})
        return Response(
            404,
            {
                "error": f"no route {method} {path}",
                "routes": [f"{r.method} {r.template}" for r in self.routes],
            },
        )

    def _call(self, route: Route, request: Request, handler: BaseHTTPRequestHandler) -> Response:
        try:
            self._check_content_type(route, request)
            if route.takes_json:
                request.json()  # within the client's deadline, before any work
            server = handler.server
            if isinstance(server, _Server):
                server.disarm(handler.connection)  # from here on the engine works, not the client
            return route.handler(request)
        except HTTPError as error:
            return Response(error.status, {"error": str(error), **error.extra})
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
        self._remove_leftovers()
        server_class = _Server6 if ":" in self.config.host else _Server
        try:
            server = server_class(
                (self.config.host, self.config.port),
                _handler_for(self),
                max_connections=self.config.max_connections,
                client_timeout=self.config.timeout,
            )
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
            "admin API listening: url=%s token_required=%s max_connections=%d timeout=%s",
            self.url,
            self.config.token is not None,
            self.config.max_connections,
            self.config.timeout,
        )
        return self.url

    def _remove_leftovers(self) -> None:
        """Uploads and export spools of an engine killed mid-request hold disk for nothing."""
        directory = self._work_dir()
        for prefix in (_UPLOAD_PREFIX, _SPOOL_PREFIX):
            for path in directory.glob(f"{prefix}*.jsonl"):
                try:
                    path.unlink()
                    logger.info("admin API leftover removed: file=%s", path)
                except OSError as error:
                    logger.warning(
                        "admin API leftover not removed: file=%s error=%s", path, error.strerror
                    )

    def write_discovery(self, base_path: Path) -> Path:
        """Write ``<base>/admin.json`` (pid, url, whether a token is needed; never the token)."""
        path = Path(base_path) / DISCOVERY_FILE
        data = {
            "pid": os.getpid(),
            "url": self.url,
            "token_required": self.config.token is not None,
            "started_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        }
        write_atomic(path, json_bytes(data, indent=2) + b"\n")
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


_BUSY = (
    b"HTTP/1.0 503 Service Unavailable\r\nContent-Type: application/json\r\n"
    b"Connection: close\r\nRetry-After: 1\r\n\r\n"
    b'{"error": "too many connections to the admin API (ROSETTA_ADMIN_MAX_CONNECTIONS); '
    b'retry shortly"}\n'
)


class _Server(ThreadingHTTPServer):
    """Threads per connection, but at most ``max_connections`` of them, and a
    client that does not send its request within ``client_timeout`` is cut."""

    daemon_threads = True
    allow_reuse_address = True
    # The kernel holds connections beyond this until they are accepted (and refused).
    request_queue_size = 128

    def __init__(
        self,
        address: tuple[str, int],
        handler: type[BaseHTTPRequestHandler],
        *,
        max_connections: int,
        client_timeout: float,
    ) -> None:
        self.max_connections = max_connections
        self.client_timeout = client_timeout
        self._lock = threading.Lock()
        # open connection -> monotonic deadline for its request (None: being served)
        self._open: dict[socket.socket, float | None] = {}
        self._refused = 0
        self._busy_logged_at = -_BUSY_LOG_INTERVAL
        super().__init__(address, handler)

    def process_request(self, request: Any, client_address: Any) -> None:
        with self._lock:
            full = len(self._open) >= self.max_connections
            if not full:
                self._open[request] = time.monotonic() + self.client_timeout
        if full:
            self._refuse(request)
            return
        super().process_request(request, client_address)

    def _refuse(self, request: socket.socket) -> None:
        """Answer 503 if the socket takes it at once, and close: no thread, no wait."""
        try:
            request.setblocking(False)
            request.send(_BUSY)
        except OSError:
            pass
        finally:
            request.close()
        self._refused += 1
        now = time.monotonic()
        if now - self._busy_logged_at >= _BUSY_LOG_INTERVAL:
            self._busy_logged_at = now
            logger.warning(
                "admin API connection refused: open=%d max_connections=%d refused_total=%d "
                "(ROSETTA_ADMIN_MAX_CONNECTIONS)",
                len(self._open),
                self.max_connections,
                self._refused,
            )

    def disarm(self, request: socket.socket) -> None:
        with self._lock:
            if request in self._open:
                self._open[request] = None

    def service_actions(self) -> None:
        """Called by the serve loop (every poll interval): cut clients past their deadline."""
        now = time.monotonic()
        with self._lock:
            for request, deadline in self._open.items():
                if deadline is not None and deadline <= now:
                    self._open[request] = None
                    try:  # under the lock: the socket is not closed yet
                        request.shutdown(socket.SHUT_RDWR)
                    except OSError:
                        pass
                    logger.debug("admin API client cut: no request within %ss", self.client_timeout)

    def shutdown_request(self, request: Any) -> None:
        with self._lock:
            self._open.pop(request, None)
        super().shutdown_request(request)

    def handle_error(self, request: Any, client_address: Any) -> None:
        """Never a traceback on stderr: network trouble at DEBUG, the rest at ERROR."""
        error = sys.exc_info()[1]
        if isinstance(error, OSError):
            logger.debug("admin API connection ended: client=%s error=%s", client_address, error)
        else:
            logger.error("admin API connection failed: client=%s", client_address, exc_info=True)


class _Server6(_Server):
    address_family = socket.AF_INET6


def _handler_for(api: AdminServer) -> type[BaseHTTPRequestHandler]:
    class AdminHandler(BaseHTTPRequestHandler):
        server_version = "rosetta-admin"
        # Each read and each send on the socket must finish within this.
        timeout = api.config.timeout
        body_pending = False

        def do_GET(self) -> None:  # noqa: N802 (http.server's naming)
            self._handle("GET")

        def do_POST(self) -> None:  # noqa: N802
            self._handle("POST")

        def _handle(self, method: str) -> None:
            self.body_pending = bool(
                self.headers.get("Transfer-Encoding")
                or (self.headers.get("Content-Length") or "0").strip() not in ("0", "")
            )
            try:
                self._respond(api.dispatch(self, method))
            finally:
                if self.body_pending:
                    self._linger()

        def _linger(self) -> None:
            """Read (and drop) the unread body for a moment after answering, so
            that closing does not reset the connection before the client reads."""
            try:
                self.wfile.flush()
                self.connection.shutdown(socket.SHUT_WR)
                self.connection.settimeout(_LINGER_SECONDS)
                left = _LINGER_BYTES
                deadline = time.monotonic() + _LINGER_SECONDS
                while left > 0 and time.monotonic() < deadline:
                    chunk = self.rfile.read1(min(_CHUNK, left))  # type: ignore[attr-defined]
                    if not chunk:
                        break
                    left -= len(chunk)
            except OSError:
                pass

        def _respond(self, response: Response) -> None:
            if response.file is not None:
                self._send_file(response)
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

        def _send_file(self, response: Response) -> None:
            assert response.file is not None
            try:
                with response.file.open("rb") as source:
                    size = os.fstat(source.fileno()).st_size
                    self.send_response(response.status)
                    self.send_header("Content-Type", "application/x-ndjson; charset=utf-8")
                    self.send_header("Content-Length", str(size))
                    self.send_header("Connection", "close")
                    self.end_headers()
                    while chunk := source.read(_SEND_CHUNK):
                        self.wfile.write(chunk)
            except OSError as error:  # the client stalled or left; the length tells it
                logger.warning(
                    "admin API answer not fully sent: client=%s path=%s error=%s",
                    self.client_address[0],
                    self.path,
                    error,
                )
            finally:
                response.file.unlink(missing_ok=True)

        def log_message(self, format: str, *args: Any) -> None:
            logger.debug("admin API: client=%s " + format, self.client_address[0], *args)

    return AdminHandler
