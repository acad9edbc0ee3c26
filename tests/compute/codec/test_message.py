"""Tests of ``compute.codec.message``: exact round trips, failure context, and hostile bytes."""

from __future__ import annotations

import datetime as dt
import json
import math
import os
import random
import subprocess
import sys
import threading
import uuid
from decimal import Decimal
from typing import Any
from zoneinfo import ZoneInfo

import msgpack
import pytest
from hypothesis import example, given, settings
from hypothesis import strategies as st

from compute.codec.failure_context import FailureContext
from compute.codec.message import (
    FORMAT_VERSION,
    V2_FIRST_BYTE,
    DLQMessage,
    MessageDecoder,
    decode_message,
    encode_message,
    encode_messages,
)
from compute.codec.message_view import message_to_json
from compute.errors import MessageDecodeError, MessageEncodeError
from compute.queue_id import QueueId
from destinations.errors import FailureKind
from destinations.records import ChangeRecord, Operation, SourcePosition
from tests.compute.codec.format_samples import V2_SAMPLES, sample_messages
from tests.compute.value_strategies import any_row, any_value, same

QUEUE = QueueId("pg1", "public.users", "sf1")
T0 = 1_700_000_000.25


def make_message(
    *,
    op: Operation = Operation.UPDATE,
    key: dict[str, Any] | None = None,
    before: dict[str, Any] | None = None,
    after: dict[str, Any] | None = None,
    queue: QueueId = QUEUE,
    failure: FailureContext | None = None,
    commit_ts: float | None = T0 - 1,
) -> DLQMessage:
    key = {"id": 42} if key is None else key
    if after is None and op is not Operation.DELETE:
        after = {"id": 42, "name": "Ada", "email": "ada@example.com", "balance": Decimal("12.50")}
    record = ChangeRecord(
        table="public.users",
        op=op,
        key=key,
        after=after,
        position=SourcePosition(0x16B3748, 3),
        before=before,
        commit_ts=commit_ts,
    )
    failure = failure or FailureContext(
        error_class="UniqueViolation",
        message='duplicate key value violates unique constraint "users_email_key"',
        kind=FailureKind.PERMANENT,
        code="23505",
        attempts=1,
        first_failure_at=T0,
        last_failure_at=T0,
    )
    return DLQMessage.create(queue, record, failure, now=T0 + 0.5)


def round_trip(message: DLQMessage) -> DLQMessage:
    data = encode_message(message)
    assert data[0] == V2_FIRST_BYTE
    assert msgpack.unpackb(data, unicode_errors="surrogatepass", strict_map_key=False)[0] == 2
    return decode_message(data)


# --- round trips ------------------------------------------------------------------------------


@pytest.mark.parametrize("op", list(Operation))
def test_round_trip_every_operation(op: Operation) -> None:
    before = None if op in (Operation.INSERT, Operation.SNAPSHOT_READ) else {"id": 42, "n": 1}
    message = make_message(op=op, before=before)
    decoded = round_trip(message)
    assert decoded == message
    assert decoded.record.op is op
    assert message.encode() == encode_message(message)


def test_round_trip_keeps_exact_types_of_every_supported_value() -> None:
    utc_plus_2 = dt.timezone(dt.timedelta(hours=2))
    row: dict[str, Any] = {
        "amount": Decimal("12345678901234567890.000000001"),
        "neg_zero": Decimal("-0.00"),
        "exp": Decimal("1.5E+30"),
        "naive": dt.datetime(2024, 2, 29, 23, 59, 59, 999999),
        "aware": dt.datetime(2024, 2, 29, 23, 59, 59, 123456, tzinfo=utc_plus_2),
        "utc": dt.datetime(1970, 1, 1, tzinfo=dt.UTC),
        "zone": dt.datetime(2024, 7, 1, 12, tzinfo=ZoneInfo("Europe/Amsterdam")),
        "lmt": dt.datetime(1900, 1, 1, tzinfo=ZoneInfo("Europe/Amsterdam")),  # +00:19:32
        "day": dt.date(1, 1, 1),
        "last_day": dt.date(9999, 12, 31),
        "clock": dt.time(12, 34, 56, 789),
        "clock_tz": dt.time(1, 2, 3, tzinfo=dt.timezone(dt.timedelta(hours=-5, minutes=-30))),
        "uid": uuid.UUID("12345678-1234-5678-1234-567812345678"),
        "blob": b"\x00\xff\x01binary",
        "empty_blob": b"",
        "nothing": None,
        "flag": True,
        "big": 2**63 - 1,
        "small": -(2**63),
        "ratio": 0.1,
        "text": "caf\u00e9 \u4e2d\u6587 \U0001f600 \x00 'quoted' \"dq\"",
        "nested": [1, [2, [3, {"deep": [Decimal("1.1"), dt.date(2020, 1, 1), None]}]], []],
        "json": {"a": {"b": ["c", 1, 2.5, None, True]}},
    }
    message = make_message(before=row, after=row)
    decoded = round_trip(message)
    assert decoded == message
    for name, value in row.items():
        got = decoded.record.after[name]  # type: ignore[index]
        assert type(got) is type(value), name
        assert got == value, name
    # Aware datetimes keep their offset, naive ones stay naive.
    assert decoded.record.after["aware"].utcoffset() == dt.timedelta(hours=2)  # type: ignore[index]
    assert decoded.record.after["naive"].tzinfo is None  # type: ignore[index]
    assert str(decoded.record.after["amount"]) == "12345678901234567890.000000001"  # type: ignore[index]
    assert str(decoded.record.after["neg_zero"]) == "-0.00"  # type: ignore[index]


def test_special_decimals_and_floats_round_trip() -> None:
    row = {
        "nan": Decimal("NaN"),
        "inf": Decimal("-Infinity"),
        "fnan": float("nan"),
        "finf": float("inf"),
    }
    after = round_trip(make_message(after=row)).record.after
    assert after is not None
    assert after["nan"].is_nan()
    assert after["inf"] == Decimal("-Infinity")
    assert math.isnan(after["fnan"])
    assert after["finf"] == float("inf")


def test_composite_key_keeps_column_order() -> None:
    key = {"tenant": "acme", "region": "eu", "id": 7, "day": dt.date(2024, 1, 2)}
    decoded = round_trip(make_message(key=key, after={**key, "v": 1}))
    assert list(decoded.record.key) == ["tenant", "region", "id", "day"]
    assert decoded.record.key_values == ("acme", "eu", 7, dt.date(2024, 1, 2))


def test_reverse_ordered_key_stays_reversed() -> None:
    key = {"z": 1, "a": 2}
    assert list(round_trip(make_message(key=key)).record.key) == ["z", "a"]


def test_unicode_queue_and_table_names_round_trip() -> None:
    queue = QueueId("src \U0001f600", 'sch\u00e9ma."Ta/ble"', "d\u00e9st")
    decoded = round_trip(make_message(queue=queue))
    assert decoded.queue == queue


def test_lone_surrogates_round_trip() -> None:
    """``queue_id`` accepts any table name, surrogates included; the message must carry it."""
    queue = QueueId("1", "bad\udc80name", "2")
    row = {"col\ud800": "value \udfff"}
    message = make_message(queue=queue, after=row)
    assert round_trip(message) == message


def test_nested_maps_with_non_string_keys_round_trip() -> None:
    """What ``encode_message`` accepts, ``decode_message`` reads back (else: quarantined)."""
    row = {"payload": {1: "one", None: "none", 2.5: ["x"]}}
    message = make_message(after=row)
    assert round_trip(message) == message


def test_commit_ts_none_and_integer_times() -> None:
    message = make_message(commit_ts=None)
    assert round_trip(message).record.commit_ts is None
    record = message.record
    failure = FailureContext("E", "m", first_failure_at=1, last_failure_at=2)
    message = DLQMessage("id", QUEUE, record, failure, 3)
    assert round_trip(message) == message


def test_tuples_and_sets_keep_their_types() -> None:
    after = {"t": (1, 2), "s": {3}, "f": frozenset({"x"}), "k": {(1, "a"): frozenset({(2,)})}}
    decoded = round_trip(make_message(after=after))
    assert decoded.record.after == after
    assert type(decoded.record.after["t"]) is tuple
    assert type(decoded.record.after["s"]) is set
    assert type(decoded.record.after["f"]) is frozenset


def test_create_makes_unique_ids_and_uses_injected_time() -> None:
    a = make_message()
    b = make_message()
    assert a.message_id != b.message_id
    assert len(a.message_id) == 32
    assert a.enqueued_at == T0 + 0.5


def test_typical_narrow_row_is_compact() -> None:
    message = make_message(before={"id": 42, "name": "Ada", "email": "old@example.com"})
    size = len(encode_message(message))
    assert size < 400, size


def test_decode_reuses_a_matching_queue_object() -> None:
    message = make_message()
    data = encode_message(message)
    same = QueueId("pg1", "public.users", "sf1")
    assert same is not message.queue
    assert decode_message(data, same).queue is same
    other = QueueId("pg1", "public.orders", "sf1")
    decoded = decode_message(data, other)
    assert decoded.queue is not other
    assert decoded.queue == QUEUE


def test_decode_accepts_bytearray_and_memoryview() -> None:
    message = make_message()
    data = encode_message(message)
    assert decode_message(bytearray(data)) == message
    assert decode_message(memoryview(data)) == message


def test_encoding_is_the_same_for_equal_messages() -> None:
    a = make_message()
    b = DLQMessage(
        a.message_id,
        QueueId("pg1", "public.users", "sf1"),
        a.record,
        FailureContext(**{f: getattr(a.failure, f) for f in a.failure._fields}),
        a.enqueued_at,
    )
    assert encode_message(a) == encode_message(b)
    # Encoding a different queue or failure right after must not reuse stale parts.
    c = make_message(queue=QueueId("x", "y", "z"))
    d = make_message(failure=FailureContext("Other", "different"))
    assert decode_message(encode_message(c)).queue == QueueId("x", "y", "z")
    assert decode_message(encode_message(d)).failure.error_class == "Other"
    assert decode_message(encode_message(a)) == a


def test_encoding_from_many_threads_at_once() -> None:
    messages = [
        make_message(
            queue=QueueId("s", f"t{i % 7}", "d"), key={"id": i}, after={"id": i, "v": "x" * i}
        )
        for i in range(400)
    ]
    expected = [encode_message(m) for m in messages]
    results: dict[int, list[bytes]] = {}
    barrier = threading.Barrier(4)

    def worker(n: int) -> None:
        barrier.wait()
        results[n] = [encode_message(m) for m in messages]

    threads = [threading.Thread(target=worker, args=(n,)) for n in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert all(results[n] == expected for n in range(4))
    assert [decode_message(d) for d in expected] == messages


def test_one_message_alone_encodes_as_in_a_batch() -> None:
    """encode_messages of one message takes a path of its own: same bytes as a batch."""
    messages = [
        make_message(),
        make_message(op=Operation.DELETE, before={"id": 42}, commit_ts=None),
        make_message(key={"b": 2, "a": 1}, after={"a": 1, "b": 2, "t": [1, 2]}),
        make_message(queue=QueueId("1", "bad\udc80name", "2"), after={"col\ud800": "\udfff"}),
        make_message(failure=FailureContext("E", "m", code=None, attempts=0)),
    ]
    for message in messages:
        batch = encode_messages([message, message])[0]
        assert encode_messages([message]) == [batch]
        assert encode_message(message) == batch
        assert decode_message(batch) == message


def test_one_bad_message_alone_raises_value_error_naming_it() -> None:
    good = make_message()
    expected = encode_messages([good])
    message = make_message(after={"bad": object()})
    with pytest.raises(ValueError, match=message.message_id):
        encode_messages([message])
    assert encode_messages([good]) == expected  # nothing half-packed left behind


# --- encoding errors --------------------------------------------------------------------------


@pytest.mark.parametrize("value", [object(), complex(1, 2), dt.timedelta(seconds=1), Exception()])
def test_unsupported_value_raises_value_error_naming_the_message(value: object) -> None:
    message = make_message(after={"bad": value})
    with pytest.raises(ValueError, match=message.message_id):
        encode_message(message)


def test_a_failed_encoding_leaves_nothing_behind() -> None:
    """A half-packed bad message must not leak into the next encoding."""
    good = make_message()
    expected = encode_message(good)
    for bad in (object(), dt.timedelta(1), complex(1, 1)):
        with pytest.raises(ValueError):
            encode_message(make_message(after={"a": "x" * 100, "b": [1, 2, bad]}))
        assert encode_message(good) == expected
    assert decode_message(encode_message(good)) == good


def test_unsupported_value_in_key_raises_value_error() -> None:
    message = make_message(key={"id": object()})
    with pytest.raises(ValueError, match=message.message_id):
        encode_message(message)


# --- message_to_json --------------------------------------------------------------------------


def test_message_to_json_is_json_safe_and_readable() -> None:
    key = {"id": uuid.UUID(int=1), "day": dt.date(2024, 1, 2), "amt": Decimal("1.10"), "b": b"\x01"}
    message = make_message(op=Operation.SNAPSHOT_READ, key=key)
    view = message_to_json(message)
    text = json.dumps(view)
    assert json.loads(text) == view
    assert view["queue"] == "source_pg1/table_public.users/dest_sf1"
    assert view["op"] == "snapshot_read"
    assert view["key"] == {
        "id": "00000000-0000-0000-0000-000000000001",
        "day": "2024-01-02",
        "amt": "1.10",
        "b": "01",
    }
    assert view["position"] == "0/16B3748#3"
    assert view["error_kind"] == "permanent"
    assert view["error_code"] == "23505"
    assert view["attempts"] == 1
    assert view["message_id"] == message.message_id


# --- hostile bytes ----------------------------------------------------------------------------


def test_every_prefix_of_a_valid_message_is_refused() -> None:
    data = encode_message(make_message(before={"id": 42, "x": dt.datetime(2024, 1, 1)}))
    for end in range(len(data)):
        with pytest.raises(MessageDecodeError):
            decode_message(data[:end])


@pytest.mark.parametrize(
    "data",
    [
        b"",
        b"\x01",
        b"\x00",
        b"\x01\xc1",  # never-used msgpack byte
        b"\x01\x90",  # empty array
        b"\x01\xc0",  # nil
        b"garbage garbage",
        b"\x01" + b"\xff" * 64,
        b"\x01\xdd\xff\xff\xff\xff",  # array32 claiming 4G items
        b"\x01\xc9\xff\xff\xff\xff\x01",  # ext32 claiming 4 GB
        b"\x01" + b"\x91" * 5000 + b"\xc0",  # absurdly deep nesting
    ],
)
def test_garbage_is_refused(data: bytes) -> None:
    with pytest.raises(MessageDecodeError):
        decode_message(data)


@pytest.mark.parametrize("bad", [None, 123, "text", ["list"]])
def test_non_bytes_input_is_refused_with_the_typed_error(bad: object) -> None:
    with pytest.raises(MessageDecodeError):
        decode_message(bad)  # type: ignore[arg-type]


def test_trailing_bytes_are_refused() -> None:
    data = encode_message(make_message())
    with pytest.raises(MessageDecodeError):
        decode_message(data + b"\x00")


@pytest.mark.parametrize("first", [0, 2, 7, 0x9D, 255])
def test_unknown_format_names_the_byte_and_what_is_read(first: int) -> None:
    data = bytes([first]) + encode_message(make_message())[1:]
    with pytest.raises(MessageDecodeError, match=f"first byte {first:#04x}.*version 1.*version 2"):
        decode_message(data)


@pytest.mark.parametrize("version", [0, 1, 3, 99])
def test_a_future_version_in_the_version_2_layout_is_refused(version: int) -> None:
    fields = msgpack.unpackb(encode_message(make_message()))
    fields[0] = version
    with pytest.raises(MessageDecodeError, match="not a version-2 field array"):
        decode_message(msgpack.packb(fields, use_bin_type=True))


def _fields(message: DLQMessage) -> list[Any]:
    """The 22 fields of ``message`` in version-1 order (the flat view both formats share)."""
    v2 = msgpack.unpackb(
        encode_message(message), raw=False, ext_hook=msgpack.ExtType, strict_map_key=False
    )
    ctx = msgpack.unpackb(v2[10], raw=False)
    return [v2[1], *ctx[0:3], ctx[11], v2[2], ctx[12], *v2[3:9], *ctx[3:11], v2[9]]


def _pack_v2(f: list[Any]) -> bytes:
    """Version 2 from the flat view: the change's own fields, then the context blob."""
    context = msgpack.packb([*f[1:4], *f[13:21], f[4], f[6]], use_bin_type=True)
    return msgpack.packb([FORMAT_VERSION, f[0], f[5], *f[7:13], f[21], context], use_bin_type=True)


def _pack_v1(fields: Any) -> bytes:
    """Version 1, as earlier builds wrote it: a version byte, then the flat array."""
    return bytes([1]) + msgpack.packb(fields, use_bin_type=True)


_pack_fields = _pack_v2
PACKERS = [pytest.param(_pack_v2, id="v2"), pytest.param(_pack_v1, id="v1")]


@pytest.mark.parametrize(
    "shape",
    [
        {"a": 1},
        "a string",
        42,
        [],
        [None] * 22,
        ["x"] * 21,
        ["x"] * 23,
    ],
)
def test_valid_msgpack_of_the_wrong_shape_is_refused(shape: Any) -> None:
    for data in (_pack_v1(shape), msgpack.packb(shape), msgpack.packb([FORMAT_VERSION, shape])):
        with pytest.raises(MessageDecodeError):
            decode_message(data)


@pytest.mark.parametrize("pack", PACKERS)
def test_the_raw_fields_pack_back_to_the_same_message(pack: Any) -> None:
    message = make_message()
    assert decode_message(pack(_fields(message))) == message


def test_a_bad_context_blob_is_refused() -> None:
    fields = msgpack.unpackb(encode_message(make_message()))
    for context in (b"", b"\xc1", msgpack.packb([1, 2]), "text", None, msgpack.packb(["a"] * 11)):
        fields[10] = context
        with pytest.raises(MessageDecodeError):
            decode_message(msgpack.packb(fields, use_bin_type=True))


def test_messages_sharing_a_failure_share_one_decoded_context() -> None:
    failure = FailureContext("E", "boom", attempts=2, first_failure_at=1.0, last_failure_at=2.0)
    messages = [make_message(failure=failure) for _ in range(3)]
    encoded = encode_messages(messages)
    assert len({msgpack.unpackb(e)[10] for e in encoded}) == 1
    decoder = MessageDecoder()
    decoded = [decoder.decode(e) for e in encoded]
    assert decoded == messages
    assert decoded[0].failure is decoded[2].failure
    assert encoded == [encode_message(m) for m in messages]


def test_version_1_messages_from_earlier_builds_still_decode() -> None:
    message = make_message(before={"id": 42, "amt": Decimal("1.50")})
    flat = _fields(message)
    flat[8] = {"id": 42, "amt": msgpack.ExtType(1, b"1.50")}
    assert decode_message(_pack_v1(flat)) == message


_WRONG_VALUES: list[Any] = [None, 1, -1, 1.5, True, "s", "", b"b", [], ["x"], {}, {"k": 1}]


@pytest.mark.parametrize("pack", PACKERS)
@pytest.mark.parametrize("index", range(22))
def test_every_field_with_a_wrong_type_is_refused_or_accepted_cleanly(
    index: int, pack: Any
) -> None:
    message = make_message(before={"id": 42})
    for wrong in _WRONG_VALUES:
        fields = _fields(message)
        fields[index] = wrong
        try:
            decoded = decode_message(pack(fields))
        except MessageDecodeError:
            continue
        # Accepted: it must be a coherent message that encodes again, stably.
        again = encode_message(decoded)
        assert encode_message(decode_message(again)) == again


@pytest.mark.parametrize(
    ("index", "wrong"),
    [
        (0, None),  # message id
        (1, ""),  # empty source id
        (2, 5),  # table
        (5, "x"),  # unknown operation
        (6, ["id", "extra"]),  # key columns and values differ in length
        (6, [1]),  # key column not a string
        (8, [1, 2]),  # before image not a map
        (10, "0/16B3748"),  # position commit not an integer
        (11, 1.0),
        (10, True),
        (12, "now"),
        (15, "fatal"),  # unknown failure kind
        (16, 23505),  # code must be a string
        (18, 1.0),  # attempts
        (21, None),  # enqueued_at
    ],
)
@pytest.mark.parametrize("pack", PACKERS)
def test_specific_wrong_fields_are_refused(index: int, wrong: Any, pack: Any) -> None:
    fields = _fields(make_message())
    fields[index] = wrong
    with pytest.raises(MessageDecodeError):
        decode_message(pack(fields))


@pytest.mark.parametrize(
    "ext",
    [
        msgpack.ExtType(1, b"not a decimal"),
        msgpack.ExtType(1, b"\xff\xfe"),
        msgpack.ExtType(2, b"2024-13-45T99:00"),
        msgpack.ExtType(3, b""),
        msgpack.ExtType(4, b"25:00"),
        msgpack.ExtType(5, b"short"),
        msgpack.ExtType(99, b"future type"),
    ],
)
def test_bad_extension_values_are_refused(ext: msgpack.ExtType) -> None:
    fields = _fields(make_message())
    fields[9] = {"v": ext}
    with pytest.raises(MessageDecodeError):
        decode_message(_pack_fields(fields))


def _decodes_or_refuses(data: bytes) -> None:
    try:
        decoded = decode_message(data)
    except MessageDecodeError:
        return
    # Whatever is accepted is a coherent message that re-encodes stably.
    again = encode_message(decoded)
    assert encode_message(decode_message(again)) == again


_VALID = encode_message(
    make_message(
        before={"id": 42, "when": dt.datetime(2024, 1, 1), "amt": Decimal("1.5")},
        after={"id": 42, "when": dt.date(2024, 1, 1), "u": uuid.UUID(int=5), "t": dt.time(1)},
    )
)


@settings(max_examples=500, deadline=None)
@given(st.binary(max_size=400))
@example(b"")
@example(_VALID)
def test_arbitrary_bytes_decode_or_raise_the_typed_error(data: bytes) -> None:
    _decodes_or_refuses(data)


@settings(max_examples=300, deadline=None)
@given(st.binary(max_size=300))
def test_arbitrary_bytes_after_a_valid_version_byte(data: bytes) -> None:
    _decodes_or_refuses(bytes([1]) + data)
    _decodes_or_refuses(bytes([V2_FIRST_BYTE, FORMAT_VERSION]) + data)


@settings(max_examples=400, deadline=None)
@given(st.lists(st.tuples(st.integers(0, len(_VALID) - 1), st.integers(0, 255)), max_size=6))
def test_mutated_valid_messages_decode_or_raise_the_typed_error(
    flips: list[tuple[int, int]],
) -> None:
    data = bytearray(_VALID)
    for position, value in flips:
        data[position] = value
    _decodes_or_refuses(bytes(data))


@settings(max_examples=200, deadline=None)
@given(st.randoms(use_true_random=False), st.integers(1, len(_VALID) - 1))
def test_spliced_valid_messages_decode_or_raise_the_typed_error(
    rnd: random.Random, cut: int
) -> None:
    # Drop, duplicate, or insert a run of bytes somewhere inside.
    data = bytearray(_VALID)
    length = rnd.randint(1, 8)
    choice = rnd.randint(0, 2)
    if choice == 0:
        del data[cut : cut + length]
    elif choice == 1:
        data[cut:cut] = data[cut : cut + length]
    else:
        data[cut:cut] = rnd.randbytes(length)
    _decodes_or_refuses(bytes(data))


_scalars = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(-(2**63), 2**64 - 1),
    st.floats(allow_nan=False),
    st.text(max_size=10),
    st.binary(max_size=10),
)
_loose_values = st.recursive(
    _scalars,
    lambda inner: st.one_of(
        st.lists(inner, max_size=3), st.dictionaries(st.text(max_size=5), inner, max_size=3)
    ),
    max_leaves=6,
)


@settings(max_examples=200, deadline=None)
@given(st.data())
def test_valid_shape_with_arbitrary_field_values(data: st.DataObject) -> None:
    fields = _fields(make_message())
    for index in data.draw(st.lists(st.integers(0, 21), min_size=1, max_size=4)):
        fields[index] = data.draw(_loose_values)
    _decodes_or_refuses(_pack_v2(fields))
    _decodes_or_refuses(_pack_v1(fields))


# --- round trip property ----------------------------------------------------------------------


def _fixed_offset(seconds: int) -> dt.tzinfo:
    return dt.timezone(dt.timedelta(seconds=seconds))


_row_values = st.recursive(
    st.one_of(
        st.none(),
        st.booleans(),
        st.integers(-(2**63), 2**64 - 1),
        st.floats(allow_nan=False),
        st.text(st.characters(categories=["L", "N", "P", "S", "Z", "Cc", "Cs"]), max_size=8),
        st.binary(max_size=8),
        st.decimals(allow_nan=False, places=None),
        st.datetimes(),
        # Whole-second offsets: CPython 3.11's fromisoformat drops an offset of only
        # microseconds (+00:00:00.000001); no real time zone has one.
        st.datetimes(timezones=st.integers(-86399, 86399).map(_fixed_offset)),
        st.dates(),
        st.times(),
        st.uuids(),
    ),
    lambda inner: st.one_of(
        st.lists(inner, max_size=3), st.dictionaries(st.text(max_size=4), inner, max_size=3)
    ),
    max_leaves=8,
)
_rows = st.dictionaries(st.text(min_size=1, max_size=6), _row_values, max_size=5)


@settings(max_examples=150, deadline=None)
@given(
    st.sampled_from(list(Operation)),
    st.dictionaries(st.text(min_size=1, max_size=6), _row_values, min_size=1, max_size=3),
    st.one_of(st.none(), _rows),
    st.one_of(st.none(), _rows),
)
@example(Operation.INSERT, {"k\udc80": "v\ud800"}, None, {"a": ["\udfff", {"n": b"\x00"}]})
def test_round_trip_property(
    op: Operation, key: dict[str, Any], before: dict[str, Any] | None, after: dict[str, Any] | None
) -> None:
    record = ChangeRecord("s.t", op, key, after, SourcePosition(2**64 - 1, 0), before, None)
    message = DLQMessage.create(QUEUE, record, FailureContext("E", "m"), now=T0)
    decoded = round_trip(message)
    assert decoded == message
    assert list(decoded.record.key) == list(key)


# --- format compatibility ---------------------------------------------------------------------


def test_messages_written_by_the_previous_build_still_decode_and_encode_thesame() -> None:
    """Bytes from the encoder before the big-integer and collection extensions (data/)."""
    stored = [bytes.fromhex(line) for line in V2_SAMPLES.read_text().split()]
    expected = sample_messages()
    assert len(stored) == len(expected)
    decoded = MessageDecoder().decode_many(stored)
    assert [encode_message(m) for m in decoded] == stored  # same values, to the bit
    # repr: exact types and values (Decimal('NaN') is not equal to itself).
    assert repr(decoded) == repr(expected)
    # The same messages encoded now are the same bytes: the format did not move.
    assert encode_messages(expected[:1]) + encode_messages(expected[1:]) == stored


# --- every value a source can produce ---------------------------------------------------------


@settings(max_examples=200, deadline=None)
@given(
    st.sampled_from(list(Operation)),
    st.dictionaries(st.text(min_size=1, max_size=6), any_value, min_size=1, max_size=3),
    st.one_of(st.none(), any_row),
    st.one_of(st.none(), any_row),
    st.integers(min_value=0),
    st.integers(min_value=0),
    st.one_of(st.none(), st.floats()),
)
@example(Operation.UPDATE, {"id": 10**25}, None, {"id": 10**25, "n": -(10**40)}, 2**64, 0, None)
@example(Operation.INSERT, {"id": 1}, None, {"d": Decimal("-sNaN12")}, 2**200, 2**70, math.nan)
def test_every_value_round_trips_exactly(
    op: Operation,
    key: dict[str, Any],
    before: dict[str, Any] | None,
    after: dict[str, Any] | None,
    commit: int,
    seq: int,
    commit_ts: float | None,
) -> None:
    """Ints of any size (values, keys, positions), NaNs, extreme dates, non-str keys, sets..."""
    record = ChangeRecord("s.t", op, key, after, SourcePosition(commit, seq), before, commit_ts)
    message = DLQMessage.create(QUEUE, record, FailureContext("E", "m"), now=T0)
    data = encode_message(message)
    decoded = decode_message(data)
    assert same(decoded, message)
    assert encode_messages([message, message]) == [data, data]
    assert same(decode_message(encode_message(decoded)), message)


_BATCH_QUEUES = (QUEUE, QueueId("pg", "public.users", "sf"), QueueId("pg", "t\udc80", "wh"))
_BATCH_FAILURES = (
    FailureContext("E", "m"),
    FailureContext("E", "m", attempts=2),
    FailureContext("OperationalError", "connection refused", code="08006"),
)


@settings(max_examples=100, deadline=None)
@given(
    st.lists(
        st.tuples(
            st.integers(0, len(_BATCH_QUEUES) - 1),
            st.integers(0, len(_BATCH_FAILURES) - 1),
            st.sampled_from(["s.t", "s.u", "s.t\ud800"]),
            st.sampled_from([("id",), ("a", "b"), ("b", "a")]),
            st.booleans(),  # a fresh but equal failure object, not the shared one
            st.sampled_from([(), ("big",)]),  # unchanged columns
        ),
        min_size=2,
        max_size=12,
    )
)
def test_a_mixed_batch_encodes_to_the_bytes_of_each_message_alone(
    specs: list[tuple[int, int, str, tuple[str, ...], bool, tuple[str, ...]]],
) -> None:
    """Runs of messages sharing a context share one blob; any change of context starts anew."""
    messages = []
    for number, (queue, failure, table, columns, copied, unchanged) in enumerate(specs):
        shared = _BATCH_FAILURES[failure]
        failure_context = FailureContext(*shared) if copied else shared
        key = {column: number for column in columns}
        record = ChangeRecord(
            table,
            Operation.UPDATE,
            key,
            {**key, "v": number},
            SourcePosition(number, 0),
            None,
            None,
            unchanged,
        )
        messages.append(DLQMessage.create(_BATCH_QUEUES[queue], record, failure_context, now=T0))
    encoded = encode_messages(messages)
    assert encoded == [encode_message(m) for m in messages]
    assert MessageDecoder().decode_many(encoded) == messages


def test_a_value_nested_too_deeply_raises_the_typed_error_naming_the_message() -> None:
    deep: list[Any] = []
    for _ in range(2000):
        deep = [deep]
    message = make_message(after={"id": 42, "doc": deep})
    with pytest.raises(MessageEncodeError, match=f"{message.message_id}.*nested too deeply"):
        encode_messages([message])
    with pytest.raises(MessageEncodeError, match="nested too deeply"):
        encode_messages([make_message(), message])


@pytest.mark.parametrize(
    "ext",
    [msgpack.ExtType(6, b""), msgpack.ExtType(7, b"\x01"), msgpack.ExtType(8, b"\x91\x90")],
)
def test_bad_new_extension_values_are_refused(ext: msgpack.ExtType) -> None:
    fields = _fields(make_message())
    fields[9] = {"v": ext}
    with pytest.raises(MessageDecodeError):
        decode_message(_pack_fields(fields))


# --- the format depends on ChangeRecord's field order ------------------------------------------

_REORDER = """
import sys
from typing import Any, NamedTuple
import destinations.records as records

class ChangeRecord(NamedTuple):  # before and after swapped
    table: str
    op: records.Operation
    key: Any
    before: Any
    position: records.SourcePosition
    after: Any = None
    commit_ts: Any = None

records.ChangeRecord = ChangeRecord
try:
    import compute.codec.message
except ImportError as error:
    print(error)
    sys.exit(3)
"""


def test_reordering_change_record_fields_fails_at_import_naming_the_fix() -> None:
    """Messages are packed by field position: a reorder would swap before and after on disk."""
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(sys.path)}
    done = subprocess.run(
        [sys.executable, "-c", _REORDER], capture_output=True, text=True, env=env, timeout=60
    )
    assert done.returncode == 3, done.stdout + done.stderr
    assert "ChangeRecord's fields changed" in done.stdout
    assert "update compute/codec/message.py" in done.stdout
