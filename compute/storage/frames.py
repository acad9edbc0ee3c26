"""Frames: how a store packs a batch of payloads into one stored item (rocksq, JetStream).

Why: rocksq copies each item into Rust byte by byte (about 20 ns a byte on
our test machine), so the cost of an enqueue is mostly the bytes written.
One enqueue call becomes one frame, compressed when that is worth it: DLQ
batches repeat the same failure, columns and table in every message, so a
frame of 100 messages shrinks several times (so does a large lone message).
Reading gets cheaper too: one item read brings a whole batch.

Layout of an item::

    0xF0 | count (uint32 LE) | msgpack array of ``count`` payloads (bin)
    0xF1 | count (uint32 LE) | zlib(msgpack array of ``count`` payloads)

The count sits outside the compressed part, so counting a segment at
start-up reads no payload. zlib's checksum catches a damaged compressed
frame. An item with any other first byte is one payload, as is: a lone
payload enqueued by itself, or an item written before frames existed (DLQ
messages never start with 0xF0 or 0xF1).
"""

from __future__ import annotations

import struct
import zlib

import msgpack

PLAIN = 0xF0
COMPRESSED = 0xF1
_HEADER = struct.Struct("<BI")
HEADER_SIZE = _HEADER.size
# Frames above this raw size are compressed; below it zlib rarely pays for itself.
COMPRESS_MIN_BYTES = 1024
# One frame holds at most this many payloads or (about) this many raw bytes, so
# a huge enqueue becomes several items instead of one giant RocksDB value.
MAX_FRAME_PAYLOADS = 1000
MAX_FRAME_BYTES = 1024 * 1024
# A damaged frame still yields ``count`` payloads (the store's accounting is in
# messages): the first carries the raw item after this prefix, the others are
# empty. No message format starts with byte 0, so each is quarantined on decode.
DAMAGED_PREFIX = b"\x00damaged-frame:"


def encode_frames(payloads: list[bytes]) -> list[bytes]:
    """The items that store ``payloads``, in order (usually exactly one).

    A lone payload that cannot be mistaken for a frame is stored as is: a
    frame would only add bytes and time to the most expensive enqueue there
    is (one rocksq write per message). One of ``COMPRESS_MIN_BYTES`` or more
    (a change parked alone, its failure's stack with it) becomes a
    compressed frame of one when that is smaller.
    """
    if len(payloads) == 1 and (not payloads[0] or payloads[0][0] not in (PLAIN, COMPRESSED)):
        if len(payloads[0]) < COMPRESS_MIN_BYTES:
            return payloads
        frame = _encode_frame(payloads)
        return [frame] if frame[0] == COMPRESSED else payloads
    items = []
    start = 0
    total = len(payloads)
    while start < total:
        end = start
        size = 0
        while end < total and end - start < MAX_FRAME_PAYLOADS:
            size += len(payloads[end])
            end += 1
            if size >= MAX_FRAME_BYTES:
                break
        items.append(_encode_frame(payloads[start:end] if start or end < total else payloads))
        start = end
    return items


def _encode_frame(payloads: list[bytes]) -> bytes:
    body = msgpack.packb(payloads, use_bin_type=True)
    if len(body) >= COMPRESS_MIN_BYTES:
        packed = zlib.compress(body, 1)
        if len(packed) < len(body):
            return _HEADER.pack(COMPRESSED, len(payloads)) + packed
    return _HEADER.pack(PLAIN, len(payloads)) + body


def _frame_header(item: bytes) -> tuple[int, int] | None:
    """``(kind, count)`` of a frame; None for a pre-frame item (one payload, as is).

    A count outside 1..MAX_FRAME_PAYLOADS was never written: the header is
    damaged, and the item is then one (undecodable) payload, so that counting
    and reading agree and a flipped bit cannot conjure millions of messages.
    """
    if len(item) < HEADER_SIZE or item[0] not in (PLAIN, COMPRESSED):
        return None
    kind, count = _HEADER.unpack_from(item)
    if not 1 <= count <= MAX_FRAME_PAYLOADS:
        return None
    return kind, count


def frame_count(item: bytes) -> int:
    """How many payloads ``item`` holds, without decoding them."""
    header = _frame_header(item)
    return 1 if header is None else header[1]


def decode_frame(item: bytes) -> list[bytes]:
    """The payloads in ``item``; a damaged frame yields placeholders (see above)."""
    header = _frame_header(item)
    if header is None:
        return [item]
    kind, count = header
    try:
        body: bytes | memoryview = memoryview(item)[HEADER_SIZE:]
        if kind == COMPRESSED:
            body = zlib.decompress(body)
        payloads = msgpack.unpackb(body, raw=False)
        # Payloads of another type than bytes (only from a damaged plain frame)
        # are refused by the message decoder, one by one.
        if type(payloads) is not list or len(payloads) != count:
            raise ValueError("not a list of payloads of the counted length")
        return payloads
    except Exception:  # zlib, msgpack and our check: all mean a damaged frame
        return [DAMAGED_PREFIX + bytes(item)] + [b""] * (count - 1)


def decode_after(items: list[bytes], skip: int, into: list[bytes]) -> int:
    """Append the payloads of ``items`` to ``into``, leaving out their first ``skip``.

    Whole frames within ``skip`` are passed over by their headers, undecoded.
    Returns what is left of ``skip`` for the items that follow.
    """
    for item in items:
        if skip <= 0:
            into.extend(decode_frame(item))
            continue
        count = frame_count(item)
        if count <= skip:
            skip -= count
        else:
            into.extend(decode_frame(item)[skip:])
            skip = 0
    return skip
