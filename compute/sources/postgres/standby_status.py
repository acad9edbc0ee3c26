"""Sends the replication stream's standby status update itself, confirming only a safe position.

psycopg2's ``send_feedback`` cannot be trusted with the flush position: when a
keepalive arrives and the last flush it was given is at or past the start of
the last message received, psycopg2 moves ``flush`` to the keepalive's
``wal_end`` on its own. With concurrent transactions a change's LSN is often
below the commit LSN of an earlier, already received transaction, so that
rule confirms whole transactions nobody has delivered yet, and a crash loses
them. So the engine never gives psycopg2 a flush position (psycopg2 keeps
sending ``0``, which the server ignores for the slot) and writes the status
update message (protocol "Standby status update", ``'r'``) on the same libpq
connection itself, through the libpq that psycopg2 is linked against.

psycopg2 still answers a keepalive that asks for a reply with its own flush
position. That is 0 (ignored by the server), or a keepalive's ``wal_end``
taken before the first data message of the connection (psycopg2 moves it only
while no data has come). The stream therefore always resumes from its
confirmed position (stream.py): the server then sends every unconfirmed
transaction before such a keepalive can pass it.
"""

from __future__ import annotations

import ctypes
import struct
import time
from pathlib import Path
from typing import Any

# Microseconds between the Unix epoch and PostgreSQL's (2000-01-01 UTC).
_PG_EPOCH_UNIX_SECONDS = 946_684_800
_STATUS = struct.Struct(">cQQQqB")  # 'r', write, flush, apply, client time, reply requested

_libpq: ctypes.CDLL | None = None


class StandbyStatusError(RuntimeError):
    """The status update could not be sent (the connection is gone) or libpq was not found."""


def _find_libpq() -> ctypes.CDLL:
    """The libpq psycopg2 uses (its bundled copy in a wheel), already loaded in this process.

    A PGconn must only be handed to the very library that made it, so the
    library is found among the process's mappings rather than by name.
    """
    global _libpq
    if _libpq is not None:
        return _libpq
    import psycopg2  # noqa: F401 - loads the extension and its libpq

    candidates: list[str] = []
    for line in Path("/proc/self/maps").read_text().splitlines():
        path = line.split(maxsplit=5)[-1] if line.count(" ") >= 5 else ""
        name = Path(path).name
        if name.startswith("libpq") and ".so" in name and path not in candidates:
            candidates.append(path)
    # A wheel's bundled copy (psycopg2_binary.libs) is the one psycopg2 links.
    candidates.sort(key=lambda p: "psycopg2" not in p)
    if not candidates:
        raise StandbyStatusError(
            "libpq is not loaded in this process (psycopg2 is expected to load it); cannot "
            "send standby status updates"
        )
    lib = ctypes.CDLL(candidates[0])
    lib.PQputCopyData.argtypes = [ctypes.c_void_p, ctypes.c_char_p, ctypes.c_int]
    lib.PQputCopyData.restype = ctypes.c_int
    lib.PQflush.argtypes = [ctypes.c_void_p]
    lib.PQflush.restype = ctypes.c_int
    _libpq = lib
    return lib


def status_message(write: int, flush: int, apply: int, now: float, reply: bool = False) -> bytes:
    """The standby status update message for these positions, at Unix time ``now``."""
    micros = int((now - _PG_EPOCH_UNIX_SECONDS) * 1_000_000)
    return _STATUS.pack(b"r", write, flush, apply, micros, 1 if reply else 0)


class StandbyStatus:
    """Writes standby status updates on one psycopg2 replication connection."""

    def __init__(self, connection: Any) -> None:
        self._connection = connection
        self._lib = _find_libpq()

    def send(self, write: int, flush: int, apply: int | None = None) -> None:
        """Tell the server ``flush`` (and everything before it) is safe; ``write`` was received."""
        if self._connection.closed:
            raise StandbyStatusError("the replication connection is closed")
        message = status_message(write, flush, flush if apply is None else apply, time.time())
        pgconn = self._connection.pgconn_ptr
        if self._lib.PQputCopyData(pgconn, message, len(message)) != 1:
            raise StandbyStatusError("libpq refused the standby status update (connection lost)")
        if self._lib.PQflush(pgconn) != 0:
            raise StandbyStatusError("could not flush the standby status update (connection lost)")
