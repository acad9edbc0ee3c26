"""A small TCP fault proxy for tests: latency, resets and blackholes between two real peers.

``FaultProxy(target_host, target_port)`` listens on 127.0.0.1 (a free port)
and forwards every accepted connection to the target, two threads per
connection (one per direction). The mode can be switched at any time:

* ``pass_through()``: forward as is;
* ``set_latency(ms)``: hold each chunk ``ms`` milliseconds before forwarding,
  in each direction;
* ``reset(after_bytes=None)``: close connections with a TCP RST (SO_LINGER 0).
  Without ``after_bytes`` every open connection is reset now and new ones are
  reset as soon as they are accepted; with it, each connection is reset once
  it has forwarded ``after_bytes`` more bytes from the client (mid-statement);
* ``blackhole()``: accept, read and discard, never answer; also for the
  connections already open. A connection that was blackholed stays dead
  after the mode changes (its byte stream has a hole in it), as a peer
  behind a dropped NAT entry would; only its client can close it;
* ``drop_after_commit(times=1)``: forward the next ``times`` ``COMMIT``
  queries (PostgreSQL simple-query protocol) to the server, wait for the
  server's reply, throw the reply away and reset the client: the transaction
  is committed but the client never learns it.

``live_connections`` counts accepted connections not yet closed, so that a
test can assert that nothing piles up; ``stop()`` closes every socket.
"""

from __future__ import annotations

import contextlib
import logging
import socket
import struct
import threading
from collections.abc import Iterator
from enum import StrEnum

logger = logging.getLogger(__name__)

_CHUNK = 65536
# A PostgreSQL simple Query message carrying exactly "COMMIT": type 'Q',
# int32 length (4 + 7), the NUL-terminated text. psycopg2 sends commit() so.
COMMIT_QUERY = b"Q" + struct.pack("!i", 4 + len(b"COMMIT\x00")) + b"COMMIT\x00"


class Mode(StrEnum):
    PASS = "pass"
    LATENCY = "latency"
    RESET = "reset"
    BLACKHOLE = "blackhole"


def _rst_close(sock: socket.socket) -> None:
    """Close ``sock`` with a RST instead of a FIN (SO_LINGER on, timeout 0)."""
    with contextlib.suppress(OSError):
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    # A pump thread blocked in recv() holds the kernel socket, so close() alone
    # would neither wake it nor send the RST. SHUT_RD wakes it without sending a
    # FIN; the RST goes out when the last reference is gone.
    with contextlib.suppress(OSError):
        sock.shutdown(socket.SHUT_RD)
    with contextlib.suppress(OSError):
        sock.close()


class _Connection:
    """One proxied connection: client socket, upstream socket, two pump threads."""

    def __init__(self, proxy: FaultProxy, client: socket.socket, number: int) -> None:
        self.proxy = proxy
        self.client = client
        self.upstream: socket.socket | None = None
        self.number = number
        self.lock = threading.Lock()
        self.closed = False
        self.dead = False  # blackholed once: never forwards again
        self.sent_from_client = 0  # bytes forwarded client -> server since the last reset mode
        self.drop_reply = False  # a COMMIT went through: swallow the reply, then reset
        self.threads: list[threading.Thread] = []

    def start(self) -> None:
        threading.Thread(
            target=self._run, name=f"fault-proxy-conn-{self.number}", daemon=True
        ).start()

    def _run(self) -> None:
        proxy = self.proxy
        mode = proxy.mode
        if mode is Mode.RESET and proxy.reset_after is None:
            self.close(rst=True)
            return
        if mode is Mode.BLACKHOLE:
            self.dead = True
        else:
            try:
                self.upstream = socket.create_connection(proxy.target, timeout=5)
                self.upstream.settimeout(None)
            except OSError:
                self.close(rst=True)  # target down: the client sees a reset, like a refusal
                return
        forward = threading.Thread(
            target=self._pump, args=(True,), name=f"fault-proxy-c2s-{self.number}", daemon=True
        )
        self.threads.append(forward)
        forward.start()
        if self.upstream is not None:
            backward = threading.Thread(
                target=self._pump,
                args=(False,),
                name=f"fault-proxy-s2c-{self.number}",
                daemon=True,
            )
            self.threads.append(backward)
            backward.start()

    def _pump(self, from_client: bool) -> None:
        source = self.client if from_client else self.upstream
        assert source is not None
        try:
            while not self.closed:
                try:
                    data = source.recv(_CHUNK)
                except OSError:
                    break
                if not data:
                    break
                if not self._forward(from_client, data):
                    break
        finally:
            # One side ended: end the other one too (a FIN, unless a fault chose RST).
            self.close(rst=False)

    def _forward(self, from_client: bool, data: bytes) -> bool:
        """Forward (or not) one chunk; False ends this connection."""
        proxy = self.proxy
        mode = proxy.mode
        if mode is Mode.BLACKHOLE:
            self.dead = True
        if self.dead:
            return True  # read and discard, never answer
        if mode is Mode.RESET:
            if proxy.reset_after is None:
                self.close(rst=True)
                return False
            if from_client:
                room = proxy.reset_after - self.sent_from_client
                if len(data) >= room:
                    self._send(self.upstream, data[: max(0, room)])
                    proxy.resets_mid_stream += 1
                    self.close(rst=True)
                    return False
                self.sent_from_client += len(data)
        if mode is Mode.LATENCY and proxy.stopping.wait(proxy.latency_ms / 1000.0):
            return False
        if from_client:
            if COMMIT_QUERY in data and proxy.take_commit_drop():
                self.drop_reply = True
            return self._send(self.upstream, data)
        if self.drop_reply:
            # The server answered the COMMIT: it is durable. The client never hears.
            proxy.commits_dropped += 1
            self.close(rst=True)
            return False
        return self._send(self.client, data)

    @staticmethod
    def _send(sock: socket.socket | None, data: bytes) -> bool:
        if sock is None:
            return False
        try:
            sock.sendall(data)
        except OSError:
            return False
        return True

    def close(self, rst: bool) -> None:
        with self.lock:
            if self.closed:
                return
            self.closed = True
        for sock in (self.client, self.upstream):
            if sock is None:
                continue
            if rst:
                _rst_close(sock)
            else:
                with contextlib.suppress(OSError):
                    sock.shutdown(socket.SHUT_RDWR)
                with contextlib.suppress(OSError):
                    sock.close()
        self.proxy.forget(self)


class FaultProxy:
    """A threaded TCP proxy on 127.0.0.1:``port`` to ``target_host:target_port``."""

    def __init__(self, target_host: str, target_port: int) -> None:
        self.target = (target_host, target_port)
        self.host = "127.0.0.1"
        self.mode = Mode.PASS
        self.latency_ms = 0.0
        self.reset_after: int | None = None
        self.stopping = threading.Event()
        self.accepted = 0
        self.resets_mid_stream = 0
        self.commits_dropped = 0
        self._commit_drops = 0
        self._lock = threading.Lock()
        self._connections: set[_Connection] = set()
        self._listener = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        self._listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self._listener.bind((self.host, 0))
        self._listener.listen(128)
        self.port = int(self._listener.getsockname()[1])
        self._thread = threading.Thread(target=self._accept_loop, name="fault-proxy", daemon=True)

    # ------------------------------------------------------------ lifecycle

    def start(self) -> FaultProxy:
        self._thread.start()
        return self

    def stop(self) -> None:
        """Stop accepting and close every socket (clients see a reset)."""
        self.stopping.set()
        with contextlib.suppress(OSError):
            self._listener.shutdown(socket.SHUT_RDWR)
        with contextlib.suppress(OSError):
            self._listener.close()
        self._thread.join(timeout=5)
        self.reset_all()

    def __enter__(self) -> FaultProxy:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def dsn_for(self, dsn: str) -> str:
        """``dsn`` (a libpq keyword DSN with host= and port=) pointed at this proxy."""
        parts = [p for p in dsn.split() if not p.startswith(("host=", "port=", "hostaddr="))]
        return " ".join([f"host={self.host}", f"port={self.port}", *parts])

    # ------------------------------------------------------------ modes

    def pass_through(self) -> None:
        with self._lock:
            self.mode, self.latency_ms, self.reset_after = Mode.PASS, 0.0, None

    def set_latency(self, ms: float) -> None:
        with self._lock:
            self.mode, self.latency_ms, self.reset_after = Mode.LATENCY, float(ms), None

    def reset(self, after_bytes: int | None = None) -> None:
        """Reset connections now (``after_bytes=None``) or after that many more client bytes."""
        with self._lock:
            for conn in self._connections:
                conn.sent_from_client = 0
            self.reset_after = after_bytes
            self.mode = Mode.RESET
        if after_bytes is None:
            self.reset_all()

    def blackhole(self) -> None:
        with self._lock:
            self.mode, self.latency_ms, self.reset_after = Mode.BLACKHOLE, 0.0, None
            for conn in self._connections:
                conn.dead = True

    def drop_after_commit(self, times: int = 1) -> None:
        """Swallow the server's reply to the next ``times`` COMMITs and reset those clients."""
        with self._lock:
            self._commit_drops += times

    def clear(self) -> None:
        """Pass-through, and no COMMIT reply pending to be swallowed."""
        with self._lock:
            self.mode, self.latency_ms, self.reset_after = Mode.PASS, 0.0, None
            self._commit_drops = 0

    def take_commit_drop(self) -> bool:
        with self._lock:
            if self._commit_drops <= 0:
                return False
            self._commit_drops -= 1
            return True

    def reset_all(self) -> None:
        """Close every open connection with a RST now."""
        for conn in self._snapshot():
            conn.close(rst=True)

    # ------------------------------------------------------------ observation

    @property
    def live_connections(self) -> int:
        with self._lock:
            return len(self._connections)

    @property
    def live_threads(self) -> int:
        """Pump threads of this proxy still running."""
        return sum(t.is_alive() for c in self._snapshot() for t in c.threads)

    def forget(self, conn: _Connection) -> None:
        with self._lock:
            self._connections.discard(conn)

    def _snapshot(self) -> list[_Connection]:
        with self._lock:
            return list(self._connections)

    def _accept_loop(self) -> None:
        while not self.stopping.is_set():
            try:
                client, _ = self._listener.accept()
            except OSError:
                if self.stopping.is_set():
                    return
                continue
            with self._lock:
                self.accepted += 1
                conn = _Connection(self, client, self.accepted)
                self._connections.add(conn)
            conn.start()


@contextlib.contextmanager
def fault_proxy(target_host: str, target_port: int) -> Iterator[FaultProxy]:
    """A started ``FaultProxy``; stopped (every socket closed) on exit."""
    proxy = FaultProxy(target_host, target_port).start()
    try:
        yield proxy
    finally:
        proxy.stop()
