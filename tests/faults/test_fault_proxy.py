"""The fault proxy itself, against an echo server: each mode does what the fault tests need."""

from __future__ import annotations

import contextlib
import socket
import threading
import time
from collections.abc import Iterator

import pytest

from tests.fault_proxy import COMMIT_QUERY, FaultProxy, fault_proxy
from tests.waiting import wait_until


class EchoServer:
    """Echoes every byte back; remembers what it received per connection."""

    def __init__(self) -> None:
        self.sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self.sock.bind(("127.0.0.1", 0))
        self.sock.listen(16)
        self.port = int(self.sock.getsockname()[1])
        self.received: list[bytearray] = []
        self.stop = threading.Event()
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self) -> None:
        while not self.stop.is_set():
            try:
                conn, _ = self.sock.accept()
            except OSError:
                return
            buffer = bytearray()
            self.received.append(buffer)
            threading.Thread(target=self._echo, args=(conn, buffer), daemon=True).start()

    @staticmethod
    def _echo(conn: socket.socket, buffer: bytearray) -> None:
        with conn:
            while True:
                try:
                    data = conn.recv(65536)
                except OSError:
                    return
                if not data:
                    return
                buffer.extend(data)
                with contextlib.suppress(OSError):
                    conn.sendall(data)

    def close(self) -> None:
        self.stop.set()
        self.sock.close()


@pytest.fixture
def echo() -> Iterator[EchoServer]:
    server = EchoServer()
    yield server
    server.close()


@pytest.fixture
def proxy(echo: EchoServer) -> Iterator[FaultProxy]:
    with fault_proxy("127.0.0.1", echo.port) as p:
        yield p


def connect(proxy: FaultProxy, timeout: float = 2.0) -> socket.socket:
    return socket.create_connection((proxy.host, proxy.port), timeout=timeout)


def recv_exactly(sock: socket.socket, n: int) -> bytes:
    data = b""
    while len(data) < n:
        chunk = sock.recv(n - len(data))
        if not chunk:
            break
        data += chunk
    return data


def test_pass_through_forwards_both_ways_and_forgets_closed_connections(
    proxy: FaultProxy,
) -> None:
    clients = [connect(proxy) for _ in range(3)]
    for i, client in enumerate(clients):
        client.sendall(b"hello %d" % i)
        assert recv_exactly(client, 7) == b"hello %d" % i
    wait_until(lambda: proxy.live_connections == 3, 5, "proxy.live_connections == 3")
    for client in clients:
        client.close()
    wait_until(lambda: proxy.live_connections == 0, 5, "proxy.live_connections == 0")
    wait_until(lambda: proxy.live_threads == 0, 5, "proxy.live_threads == 0")


def test_latency_delays_each_direction(proxy: FaultProxy) -> None:
    proxy.set_latency(150)
    with connect(proxy) as client:
        started = time.monotonic()
        client.sendall(b"ping")
        assert recv_exactly(client, 4) == b"ping"
        # A lower bound only: the proxy holds each chunk at least 150 ms per direction.
        assert time.monotonic() - started >= 0.3
    proxy.pass_through()


def test_reset_closes_open_connections_with_rst_and_refuses_new_ones(proxy: FaultProxy) -> None:
    client = connect(proxy)
    client.sendall(b"x")
    assert recv_exactly(client, 1) == b"x"
    proxy.reset()
    with pytest.raises(ConnectionResetError):
        client.recv(10)
    client.close()
    # A new connection is reset at once: the RST may even beat connect()'s return.
    with pytest.raises(ConnectionResetError):
        fresh = connect(proxy)
        try:
            fresh.sendall(b"y")
            fresh.recv(10)
        finally:
            fresh.close()
    wait_until(lambda: proxy.live_connections == 0, 5, "proxy.live_connections == 0")
    proxy.pass_through()
    with connect(proxy) as again:
        again.sendall(b"z")
        assert recv_exactly(again, 1) == b"z"


def test_reset_after_bytes_cuts_a_stream_mid_way(proxy: FaultProxy, echo: EchoServer) -> None:
    client = connect(proxy)
    client.sendall(b"ab")
    assert recv_exactly(client, 2) == b"ab"
    proxy.reset(after_bytes=5)
    with pytest.raises(ConnectionResetError):
        client.sendall(b"0123456789" * 10)
        while client.recv(100):
            pass
    client.close()
    wait_until(lambda: proxy.resets_mid_stream == 1, 5, "proxy.resets_mid_stream == 1")
    # The server saw the two bytes before the fault and exactly five after it.
    wait_until(
        lambda: bytes(echo.received[0]) == b"ab01234", 5, 'bytes(echo.received[0]) == b"ab01234"'
    )


def test_blackhole_accepts_and_never_answers_then_dead_connections_stay_dead(
    proxy: FaultProxy,
) -> None:
    established = connect(proxy, timeout=0.3)
    established.sendall(b"a")
    assert recv_exactly(established, 1) == b"a"
    proxy.blackhole()
    established.sendall(b"b")
    with pytest.raises(TimeoutError):
        established.recv(1)
    fresh = connect(proxy, timeout=0.3)
    fresh.sendall(b"c")
    with pytest.raises(TimeoutError):
        fresh.recv(1)
    proxy.pass_through()
    established.sendall(b"d")
    with pytest.raises(TimeoutError):
        established.recv(1)  # its stream has a hole: it stays dead
    with connect(proxy) as healthy:
        healthy.sendall(b"e")
        assert recv_exactly(healthy, 1) == b"e"
    established.close()
    fresh.close()
    wait_until(lambda: proxy.live_connections == 0, 5, "proxy.live_connections == 0")


def test_drop_after_commit_forwards_the_commit_and_swallows_the_reply(
    proxy: FaultProxy, echo: EchoServer
) -> None:
    proxy.drop_after_commit()
    with connect(proxy) as client:
        client.sendall(COMMIT_QUERY)
        with pytest.raises(ConnectionResetError):
            client.recv(100)
    wait_until(
        lambda: bytes(echo.received[0]) == COMMIT_QUERY,
        5,
        "bytes(echo.received[0]) == COMMIT_QUERY",
    )  # the server got it
    assert proxy.commits_dropped == 1
    with connect(proxy) as client:  # one-shot: the next COMMIT goes through
        client.sendall(COMMIT_QUERY)
        assert recv_exactly(client, len(COMMIT_QUERY)) == COMMIT_QUERY


def test_stop_closes_every_socket(echo: EchoServer) -> None:
    proxy = FaultProxy("127.0.0.1", echo.port).start()
    clients = [connect(proxy) for _ in range(4)]
    for client in clients:
        client.sendall(b"x")
        assert recv_exactly(client, 1) == b"x"
    proxy.stop()
    assert proxy.live_connections == 0
    for client in clients:
        with contextlib.suppress(ConnectionResetError):
            assert client.recv(1) == b""
        client.close()
    with pytest.raises(OSError):
        connect(proxy, timeout=0.5)
