"""ConnectionWatchdog: a blocked call is cut at its deadline, a finished one never is."""

from __future__ import annotations

import socket
import threading

from destinations.connection_watchdog import ConnectionWatchdog, shutdown_socket


def test_a_blocked_recv_is_woken_by_shutdown_of_its_socket() -> None:
    left, right = socket.socketpair()
    watchdog = ConnectionWatchdog("test")
    got: list[bytes] = []
    with watchdog.watch(0.2, lambda: shutdown_socket(left.fileno())) as fired:
        reader = threading.Thread(target=lambda: got.append(left.recv(10)), daemon=True)
        reader.start()
        reader.join(10)
        assert not reader.is_alive()
        assert fired()
    assert got == [b""]  # woken with end-of-stream, descriptor still owned by its socket
    assert left.fileno() != -1
    assert watchdog.fired == 1
    watchdog.close()
    left.close()
    right.close()


def test_a_call_that_ends_in_time_is_never_aborted_and_none_means_no_deadline() -> None:
    watchdog = ConnectionWatchdog("test")
    aborted = threading.Event()
    for _ in range(50):
        with watchdog.watch(0.05, aborted.set) as fired:
            pass
        assert not fired()
    with watchdog.watch(None, aborted.set) as fired:
        pass
    assert not aborted.wait(0.2)
    assert watchdog.fired == 0
    watchdog.close()
