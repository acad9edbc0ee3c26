"""Frames: one stored item per enqueue call; positions still count messages."""

from __future__ import annotations

import json
import os
import random
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from rocksq.blocking import MpmcQueue

from compute.storage.frames import (
    DAMAGED_PREFIX,
    MAX_FRAME_PAYLOADS,
    decode_frame,
    encode_frames,
    frame_count,
)
from compute.storage.rocksq.store import RocksqStore
from tests.compute.helpers import STORE_QUEUE, drain, items

Q = STORE_QUEUE


@given(st.lists(st.binary(max_size=3000), max_size=2500))
@settings(max_examples=60, deadline=None)
def test_frames_round_trip(payloads: list[bytes]) -> None:
    frames = encode_frames(payloads)
    assert sum(map(frame_count, frames)) == len(payloads)
    assert [p for f in frames for p in decode_frame(f)] == payloads
    assert all(frame_count(f) <= MAX_FRAME_PAYLOADS for f in frames)


def test_repetitive_batches_are_compressed() -> None:
    payloads = items(0, 100, size=300)
    (frame,) = encode_frames(payloads)
    assert len(frame) < sum(map(len, payloads)) / 3


def test_a_large_lone_payload_is_compressed_a_small_one_stored_as_is() -> None:
    # A message parked alone, with its failure's stack: compressed, a frame of one.
    small, large = b"\x9b" + b"s" * 500, b"\x9b" + b"stack " * 300
    assert encode_frames([small]) == [small]
    (frame,) = encode_frames([large])
    assert len(frame) < len(large) / 10 and decode_frame(frame) == [large]
    assert frame_count(frame) == 1
    # Nothing to gain: stored as is, no frame around it.
    noise = b"\x9b" + os.urandom(3000)
    assert encode_frames([noise]) == [noise]


@given(st.binary(max_size=2000))
def test_any_bytes_decode_to_their_counted_payloads(item: bytes) -> None:
    # Counting and reading must agree whatever the bytes, or positions drift.
    assert len(decode_frame(item)) == frame_count(item) >= 1


def test_a_damaged_compressed_frame_keeps_its_bytes_and_its_count() -> None:
    (frame,) = encode_frames(items(0, 50, size=300))
    damaged = bytearray(frame)
    damaged[len(damaged) // 2] ^= 0xFF
    payloads = decode_frame(bytes(damaged))
    assert len(payloads) == 50
    assert payloads[0] == DAMAGED_PREFIX + bytes(damaged)
    assert payloads[1:] == [b""] * 49


@pytest.mark.parametrize("cut", [1, 37, 99, 100, 137, 250])
def test_restart_inside_a_frame_resumes_at_the_first_unacked_message(
    tmp_path: Path, cut: int
) -> None:
    store = RocksqStore(tmp_path)
    for start in range(0, 300, 100):
        store.enqueue(Q, items(start, start + 100))
    done = 0
    while done < cut:
        lease = store.read(Q, min(64, cut - done))
        store.ack(lease)
        done += len(lease.payloads)
    store.close()
    store = RocksqStore(tmp_path)
    assert store.count(Q) == 300 - cut
    assert store.peek(Q, 3) == items(cut, min(cut + 3, 300))
    assert drain(store, batch=45) == items(cut, 300)
    store.close()


def test_partial_ack_inside_a_frame_then_release(tmp_path: Path) -> None:
    store = RocksqStore(tmp_path)
    store.enqueue(Q, items(0, 100))
    lease = store.read(Q, 30)
    store.ack(lease, 10)  # 10..29 go back to the head
    lease = store.read(Q, 50)
    assert lease.payloads == items(10, 60)
    store.release(lease)
    assert drain(store, batch=33) == items(10, 100)
    store.close()


def test_segments_rotate_by_messages(tmp_path: Path) -> None:
    store = RocksqStore(tmp_path, segment_max_messages=250)
    for start in range(0, 1000, 100):
        store.enqueue(Q, items(start, start + 100))
    assert store.stats(Q).segments == 4
    store.close()
    store = RocksqStore(tmp_path, segment_max_messages=250)
    assert store.count(Q) == 1000
    assert drain(store, batch=77) == items(0, 1000)
    assert store.stats(Q).segments == 0
    store.close()


def test_items_written_before_frames_are_read_one_payload_each(tmp_path: Path) -> None:
    """A queue written by the previous build (one item per message) stays readable,
    and new frames appended behind it come out after it, in order."""
    store = RocksqStore(tmp_path)
    store.enqueue(Q, [b"\x01seed"])  # creates the directory layout and a segment
    lease = store.read(Q, 1)
    store.ack(lease)
    store.close()
    cursor = json.loads((tmp_path / Q.relative_path / "cursor.json").read_text())
    segment = tmp_path / Q.relative_path / f"seg_{cursor['segment']:012d}"
    legacy = [b"\x01legacy-%03d" % i for i in range(25)]
    raw = MpmcQueue(str(segment), 0)
    for i in range(0, 25, 5):
        raw.add(legacy[i : i + 5])  # five items per call, as the old store did
    del raw
    store = RocksqStore(tmp_path)
    assert store.count(Q) == 25
    store.enqueue(Q, items(0, 10))
    lease = store.read(Q, 7)
    store.ack(lease)
    store.close()
    store = RocksqStore(tmp_path)
    assert drain(store, batch=4) == legacy[7:] + items(0, 10)
    store.close()


@pytest.mark.slow
def test_random_enqueue_read_ack_release_matches_a_model(tmp_path: Path) -> None:
    rng = random.Random(7)
    store = RocksqStore(tmp_path, segment_max_messages=120)
    model: list[bytes] = []
    next_id = 0
    for step in range(400):
        action = rng.random()
        if action < 0.45:
            n = rng.choice([1, 3, 50, 100, 130])
            batch = [os.urandom(4) + b"%06d" % (next_id + i) for i in range(n)]
            next_id += n
            store.enqueue(Q, batch)
            model.extend(batch)
        elif action < 0.9:
            lease = store.read(Q, rng.randint(1, 150))
            assert lease.payloads == model[: len(lease.payloads)]
            if not lease.payloads:
                continue
            if rng.random() < 0.3:
                store.release(lease)
            else:
                done = rng.randint(1, len(lease.payloads))
                store.ack(lease, done)
                del model[:done]
        else:
            store.close()
            store = RocksqStore(tmp_path, segment_max_messages=120)
        assert store.count(Q) == len(model), step
    assert drain(store, batch=64) == model
    store.close()
