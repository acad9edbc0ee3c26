"""One enqueue as one JetStream message: its frames, and the headers that count it.

The body is what the rocksq store writes as one item (``compute/storage/frames.py``):
usually one frame. A batch ``encode_frames`` splits (over 1000 payloads or
1 MiB) keeps every frame in the same message, each behind its length, so
that the batch is still stored all or none.

Headers make a queue countable without reading a payload: ``Rosetta-Count``
is the message's payload count, ``Rosetta-End`` the queue's payloads written
up to and including it, ``Rosetta-Bytes-End`` the same in bytes. The first
and the last message of a subject then give the queue's length: two reads
at load, however long the queue.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass
from typing import Any

from compute.storage.frames import decode_frame, encode_frames, frame_count

COUNT = "Rosetta-Count"
END = "Rosetta-End"
BYTES_END = "Rosetta-Bytes-End"
# Present only when the body holds several length-prefixed frames.
FRAMES = "Rosetta-Frames"
MSG_ID = "Nats-Msg-Id"
EXPECTED_LAST_SUBJECT_SEQUENCE = "Nats-Expected-Last-Subject-Sequence"
_LENGTH = struct.Struct("<I")


@dataclass(frozen=True, slots=True)
class Body:
    """What one publish carries: the bytes, how many payloads, how many frames."""

    data: bytes
    count: int
    frames: int


@dataclass(frozen=True, slots=True)
class StoredFrame:
    """A message read back: its stream sequence and the queue positions it covers."""

    seq: int
    start: int  # queue position of its first payload
    end: int  # queue position after its last payload
    bytes_end: int
    msg_id: str
    data: bytes
    frames: int

    @property
    def bytes_start(self) -> int:
        return self.bytes_end - len(self.data)

    def payloads(self) -> list[bytes]:
        """The payloads it holds, in order (a damaged frame as placeholders, see frames.py)."""
        if self.frames <= 1:
            return decode_frame(self.data)
        out: list[bytes] = []
        view = memoryview(self.data)
        offset = 0
        while offset + _LENGTH.size <= len(view):
            (length,) = _LENGTH.unpack_from(view, offset)
            offset += _LENGTH.size
            out.extend(decode_frame(bytes(view[offset : offset + length])))
            offset += length
        return out


def bodies(payloads: list[bytes], max_bytes: int) -> list[Body]:
    """The messages that store ``payloads``: one, unless it would be over ``max_bytes``.

    Over the server's ``max_payload`` a batch goes as several messages, each
    frame whole (a single frame over it cannot be stored at all: the caller
    refuses it).
    """
    frames = encode_frames(payloads)
    if len(frames) == 1:
        return [Body(frames[0], len(payloads), 1)]
    counts = [frame_count(frame) for frame in frames]
    out: list[Body] = []
    group: list[bytes] = []
    group_count = 0
    size = 0
    for frame, count in zip(frames, counts, strict=True):
        if group and size + _LENGTH.size + len(frame) > max_bytes:
            out.append(_joined(group, group_count))
            group, group_count, size = [], 0, 0
        group.append(frame)
        group_count += count
        size += _LENGTH.size + len(frame)
    out.append(_joined(group, group_count))
    return out


def _joined(frames: list[bytes], count: int) -> Body:
    if len(frames) == 1:
        return Body(frames[0], count, 1)
    data = b"".join(_LENGTH.pack(len(frame)) + frame for frame in frames)
    return Body(data, count, len(frames))


def stored_frame(raw: Any) -> StoredFrame:
    """A ``RawStreamMsg`` of ``js.get_msg`` as a ``StoredFrame``.

    A message without our headers (written by hand) counts as one payload,
    its raw bytes, which the DLQ quarantines when it cannot decode them.
    """
    headers = raw.headers or {}
    data = raw.data or b""
    try:
        count = int(headers[COUNT])
        end = int(headers[END])
        bytes_end = int(headers[BYTES_END])
        frames = int(headers.get(FRAMES, 1))
    except (KeyError, ValueError):
        return StoredFrame(raw.seq, 0, 1, len(data), "", data, 1)
    return StoredFrame(raw.seq, end - count, end, bytes_end, headers.get(MSG_ID, ""), data, frames)
