"""Names in JetStream: a queue's subject and its records' keys, both reversible to the queue.

Each part of a queue's name is written with the same escape as its directory
(``compute/queue_id.py``: letters, digits, ``_`` and ``-`` as they are, every
other UTF-8 byte as ``%XX``), with two differences a subject needs: ``.``
is escaped too (it separates subject tokens), and a long name is never cut
(a subject has no 255-byte limit, and a cut name could not be read back
from the stream by ``rescan``). Key-value keys allow ``[-/_=.a-zA-Z0-9]``
only, so a key writes the same tokens with ``=`` instead of ``%``.
"""

from __future__ import annotations

from compute.queue_id import PARKED_LANE, QueueId

_SAFE = frozenset("abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789_-")
# A subject token may not be empty: the queue itself is the lane "main".
MAIN_LANE_TOKEN = "main"
_LANE_TOKENS = {"": MAIN_LANE_TOKEN, PARKED_LANE: PARKED_LANE}
_LANES_BY_TOKEN = {token: lane for lane, token in _LANE_TOKENS.items()}


def queues_stream(prefix: str) -> str:
    """The stream holding every queue's frames."""
    return f"{prefix}_QUEUES"


def records_bucket(prefix: str) -> str:
    """The key-value bucket holding the queues' records."""
    return f"{prefix}_RECORDS"


def queue_subjects(prefix: str) -> str:
    """The wildcard of every queue subject (the stream's subjects)."""
    return f"{prefix}.q.>"


def token(name: str) -> str:
    """``name`` as one subject token: safe characters kept, every other byte ``%XX``."""
    if not name:
        raise ValueError("a queue name component must not be empty")
    return "".join(
        ch if ch in _SAFE else "".join(f"%{b:02X}" for b in ch.encode("utf-8", "surrogatepass"))
        for ch in name
    )


def untoken(text: str) -> str | None:
    """Reverse ``token``; None if ``text`` is not one of its results."""
    raw = bytearray()
    i = 0
    try:
        while i < len(text):
            ch = text[i]
            if ch == "%":
                hex_digits = text[i + 1 : i + 3]
                if len(hex_digits) != 2 or hex_digits != hex_digits.upper():
                    return None
                raw.append(int(hex_digits, 16))
                i += 3
            elif ch in _SAFE:
                raw.append(ord(ch))
                i += 1
            else:
                return None
        name = raw.decode("utf-8", "surrogatepass")
    except (ValueError, UnicodeDecodeError):
        return None
    return name if name and token(name) == text else None


def _queue_tokens(queue: QueueId) -> str:
    return ".".join(
        (
            token(queue.source_id),
            token(queue.table),
            token(queue.destination_id),
            _LANE_TOKENS[queue.lane],
        )
    )


def queue_subject(prefix: str, queue: QueueId) -> str:
    """``<prefix>.q.<source>.<table>.<destination>.<lane>``: one subject per queue lane."""
    return f"{prefix}.q.{_queue_tokens(queue)}"


def subject_queue(prefix: str, subject: str) -> QueueId | None:
    """The queue lane of ``subject``; None for a subject that names no queue."""
    parts = subject.split(".")
    if len(parts) != 6 or parts[0] != prefix or parts[1] != "q":
        return None
    names = [untoken(part) for part in parts[2:5]]
    lane = _LANES_BY_TOKEN.get(parts[5])
    if lane is None or any(name is None for name in names):
        return None
    source, table, destination = names
    assert source is not None and table is not None and destination is not None
    return QueueId(source, table, destination, lane)


def record_key(queue: QueueId, name: str) -> str:
    """The key of ``queue``'s record ``name`` in the records bucket."""
    return f"{_queue_tokens(queue)}.{token(name)}".replace("%", "=")
