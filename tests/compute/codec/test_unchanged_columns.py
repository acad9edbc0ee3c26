"""Tests of the unchanged columns (version 3) and the truncate operation in DLQ messages."""

from __future__ import annotations

import json

import msgpack
import pytest

from compute.codec.export_view import message_from_line, message_to_line
from compute.codec.failure_context import FailureContext
from compute.codec.message import (
    V2_FIRST_BYTE,
    V3_FIRST_BYTE,
    DLQMessage,
    MessageDecoder,
    decode_message,
    encode_message,
    encode_messages,
)
from compute.codec.message_view import message_to_json
from compute.errors import MessageDecodeError
from compute.queue_id import QueueId
from destinations.records import ChangeRecord, Operation, SourcePosition

QUEUE = QueueId("pg1", "public.docs", "pg2")
T0 = 1_700_000_000.25


def _message(unchanged: tuple[str, ...] = ("body",)) -> DLQMessage:
    record = ChangeRecord(
        "public.docs",
        Operation.UPDATE,
        {"id": 2},
        {"id": 2, "title": "t"},
        SourcePosition(0x16B3748, 1),
        {"id": 1},
        T0,
        unchanged,
    )
    return DLQMessage.create(QUEUE, record, FailureContext("E", "m"), now=T0)


def test_unchanged_columns_round_trip_as_version_3() -> None:
    message = _message(("body", "notes"))
    data = encode_message(message)
    assert data[0] == V3_FIRST_BYTE
    assert msgpack.unpackb(data)[0] == 3
    decoded = decode_message(data)
    assert decoded == message
    assert decoded.record.unchanged == ("body", "notes")
    assert decoded.record.moved_from == {"id": 1}


def test_a_change_without_unchanged_columns_is_still_version_2() -> None:
    """The build before reads every change that has none."""
    data = encode_message(_message(()))
    assert data[0] == V2_FIRST_BYTE
    assert decode_message(data).record.unchanged == ()


def test_batches_mix_both_versions_and_decode_in_order() -> None:
    messages = [_message(()), _message(("body",)), _message(()), _message(("a", "b"))]
    encoded = encode_messages(messages)
    assert [d[0] for d in encoded] == [V2_FIRST_BYTE, V3_FIRST_BYTE, V2_FIRST_BYTE, V3_FIRST_BYTE]
    assert MessageDecoder(QUEUE).decode_many(encoded) == messages
    assert encoded == [encode_message(m) for m in messages]


@pytest.mark.parametrize("bad", [[], "body", [1], None, ["ok", 2]])
def test_bad_unchanged_columns_are_refused(bad: object) -> None:
    fields = msgpack.unpackb(encode_message(_message()))
    fields[10] = bad
    with pytest.raises(MessageDecodeError, match="unchanged"):
        decode_message(msgpack.packb(fields, use_bin_type=True))


def test_version_3_with_the_wrong_length_is_refused() -> None:
    fields = msgpack.unpackb(encode_message(_message()))
    fields[0] = 2
    with pytest.raises(MessageDecodeError, match="not a version-3 field array"):
        decode_message(msgpack.packb(fields, use_bin_type=True))


def test_show_and_export_name_the_unchanged_columns() -> None:
    message = _message(("body",))
    assert message_to_json(message)["unchanged"] == ["body"]
    line = json.loads(json.dumps(message_to_line(message)))
    assert line["record"]["unchanged"] == ["body"]
    assert message_from_line(line, QUEUE) == message
    assert "unchanged" not in message_to_line(_message(()))["record"]


def test_a_truncate_round_trips() -> None:
    record = ChangeRecord("public.docs", Operation.TRUNCATE, {}, None, SourcePosition(9, 0))
    message = DLQMessage.create(QUEUE, record, FailureContext("E", "m"), now=T0)
    assert decode_message(encode_message(message)) == message
    assert message_to_json(message)["op"] == "truncate"
