"""The admin API's connections: capped threads, a deadline per client, answers sent in pieces.

Connections are capped (``ROSETTA_ADMIN_MAX_CONNECTIONS``; more are refused
with 503 without a thread) and a client has ``ROSETTA_ADMIN_TIMEOUT``
seconds to send its request and to take each piece of the answer.
"""

from __future__ import annotations

import json
import logging
import os
import socket
import sys
import threading
import time
from collections.abc import Callable
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

from compute.admin.http_errors import refusal_body
from compute.admin.request import CHUNK
from compute.admin.response import Response
from config.settings import MIB

logger = logging.getLogger(__name__)

# Each send must finish within the timeout (sendall's timeout covers the whole
# call): small pieces keep the minimum rate asked of a slow client low.
_SEND_CHUNK = 64 * 1024
# After refusing a request whose body was not read, its rest is read (and
# dropped) for a moment, so the client gets the answer instead of a reset.
_LINGER_SECONDS = 1.0
_LINGER_BYTES = 4 * MIB
_BUSY_LOG_INTERVAL = 60.0

Dispatch = Callable[[BaseHTTPRequestHandler, str], Response]

_BUSY = (
    b"HTTP/1.0 503 Service Unavailable\r\nContent-Type: application/json\r\n"
    b"Connection: close\r\nRetry-After: 1\r\n\r\n"
    + json.dumps(
        refusal_body(
            503,
            "too many connections to the admin API (ROSETTA_ADMIN_MAX_CONNECTIONS); retry shortly",
        )
    ).encode()
    + b"\n"
)


class AdminHTTPServer(ThreadingHTTPServer):
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


class AdminHTTPServer6(AdminHTTPServer):
    address_family = socket.AF_INET6


def handler_class(dispatch: Dispatch, client_timeout: float) -> type[BaseHTTPRequestHandler]:
    """The request handler: each request answered with ``dispatch(handler, method)``."""

    class AdminHandler(BaseHTTPRequestHandler):
        server_version = "rosetta-admin"
        # Each read and each send on the socket must finish within this.
        timeout = client_timeout
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
                self._respond(dispatch(self, method))
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
                    chunk = self.rfile.read1(min(CHUNK, left))  # type: ignore[attr-defined]
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
