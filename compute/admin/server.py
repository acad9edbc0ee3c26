"""The engine's admin API: JSON over stdlib ``http.server`` on a supervised thread, started and stopped.

Binds 127.0.0.1 by default (``ROSETTA_ADMIN_ADDR``); who may call it is
checked in ``access.py``, connections are capped and timed in
``connection.py``, the routes are in ``queue_routes.py``,
``message_routes.py`` and ``transfer_routes.py``. On start it writes
``<DLQ_BASE_PATH>/admin.json`` (``discovery.py``) so that the CLI finds it.
"""

from __future__ import annotations

import logging
import threading
from pathlib import Path

from compute.admin.connection import AdminHTTPServer, AdminHTTPServer6, handler_class
from compute.admin.discovery import write_discovery
from compute.admin.message_routes import MessageRoutes
from compute.admin.operations import DLQOperations
from compute.admin.queue_routes import QueueRoutes
from compute.admin.routing import Router
from compute.admin.spool_files import remove_leftovers
from compute.admin.transfer_routes import TransferRoutes
from compute.errors import OperationError
from compute.runtime.supervisor import Supervisor
from config.settings import AdminConfig

logger = logging.getLogger(__name__)


class AdminServer:
    """The admin API on a supervised thread; ``start()`` binds, ``stop()`` shuts it down."""

    def __init__(self, ops: DLQOperations, config: AdminConfig) -> None:
        self.ops = ops
        self.config = config
        self.router = Router(config)
        self._server: AdminHTTPServer | None = None
        # The serve loop, restarted if anything escapes it (the engine reports it).
        self.supervisor: Supervisor | None = None
        self._stopping = threading.Event()
        self._discovery: Path | None = None
        QueueRoutes(ops).add_to(self.router)
        TransferRoutes(ops, config).add_to(self.router)
        MessageRoutes(ops).add_to(self.router)

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
        """Bind and serve on a supervised thread; returns the URL (port 0 picks one)."""
        remove_leftovers(Path(self.ops.settings.dlq.base_path))
        server_class = AdminHTTPServer6 if ":" in self.config.host else AdminHTTPServer
        try:
            server = server_class(
                (self.config.host, self.config.port),
                handler_class(self.router.dispatch, self.config.timeout),
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
        self.supervisor = Supervisor(
            "admin-api", lambda: server.serve_forever(poll_interval=0.2), self._stopping
        )
        self.supervisor.start()
        logger.info(
            "admin API listening: url=%s token_required=%s max_connections=%d timeout=%s",
            self.url,
            self.config.token is not None,
            self.config.max_connections,
            self.config.timeout,
        )
        return self.url

    def write_discovery(self, base_path: Path) -> Path:
        """Write ``<base>/admin.json`` for the CLI; removed by ``stop()``."""
        self._discovery = write_discovery(base_path, self.url, self.config.token is not None)
        return self._discovery

    def stop(self) -> None:
        self._stopping.set()
        if self._discovery is not None:
            self._discovery.unlink(missing_ok=True)
            self._discovery = None
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
            self._server = None
        if self.supervisor is not None:
            self.supervisor.join(5)
            self.supervisor = None
        logger.info("admin API stopped")
