"""A loopback TCP proxy that counts what a client sends to a server: bytes and HTTP requests."""

from __future__ import annotations

import socket
import threading


class CountingProxy:
    """Forwards 127.0.0.1:``port`` to ``target``; counts client-to-server bytes and requests.

    ``requests`` counts occurrences of ``marker`` (an HTTP request line
    prefix) in the client's stream, so each statement the Snowflake connector
    sends (``POST /queries/v1/query-request``) counts once, whatever its size.
    """

    def __init__(self, target: tuple[str, int], marker: bytes = b"POST /queries/") -> None:
        self.target = target
        self.marker = marker
        self.bytes_sent = 0
        self.requests = 0
        self._lock = threading.Lock()
        self._listener = socket.create_server(("127.0.0.1", 0))
        self.port: int = self._listener.getsockname()[1]
        self._stopped = threading.Event()
        self._thread = threading.Thread(target=self._accept, name="counting-proxy", daemon=True)
        self._thread.start()

    def snapshot(self) -> tuple[int, int]:
        """(bytes sent, requests) so far."""
        with self._lock:
            return self.bytes_sent, self.requests

    def close(self) -> None:
        self._stopped.set()
        self._listener.close()
        self._thread.join(timeout=2)

    def _accept(self) -> None:
        while not self._stopped.is_set():
            try:
                client, _ = self._listener.accept()
            except OSError:
                return  # closed
            server = socket.create_connection(self.target)
            threading.Thread(target=self._pump, args=(client, server, True), daemon=True).start()
            threading.Thread(target=self._pump, args=(server, client, False), daemon=True).start()

    def _pump(self, source: socket.socket, sink: socket.socket, upstream: bool) -> None:
        tail = b""  # the end of the last chunk: a marker may straddle two chunks
        try:
            while chunk := source.recv(65536):
                if upstream:
                    window = tail + chunk
                    with self._lock:
                        self.bytes_sent += len(chunk)
                        self.requests += window.count(self.marker)
                    tail = window[-(len(self.marker) - 1) :]
                sink.sendall(chunk)
        except OSError:
            pass  # either side went away: the other is shut down below
        finally:
            for sock in (source, sink):
                try:
                    sock.shutdown(socket.SHUT_RDWR)
                except OSError:
                    pass
