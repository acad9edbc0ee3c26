"""Tests of ``JsonLinesSource``: parsing, rejects, resume, follow mode and streams."""

from __future__ import annotations

import json
import logging
import os
import tempfile
import time
from collections.abc import Iterable
from decimal import Decimal
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from compute.codec.failure_context import FailureContext
from compute.codec.message import DLQMessage, decode_message, encode_message
from compute.queue_id import QueueId
from compute.sources.base import SourceError
from compute.sources.jsonl_source import JsonLinesSource
from compute.sources.offset_store import OffsetStore
from destinations.records import ChangeRecord, Operation, SourcePosition
from tests.compute.value_strategies import same

Line = dict[str, Any] | str | bytes


def event(
    op: str = "c",
    *,
    after: dict[str, Any] | None = None,
    before: dict[str, Any] | None = None,
    table: str = "users",
    schema: str | None = "public",
    **source: Any,
) -> dict[str, Any]:
    if after is None and op in ("c", "u", "r"):
        after = {"id": 1, "name": "a"}
    source.setdefault("lsn", 100)
    src: dict[str, Any] = {"table": table, **source}
    if schema is not None:
        src["schema"] = schema
    return {"op": op, "before": before, "after": after, "source": src}


def keyed(op: str = "c", key: dict[str, Any] | None = None, **kwargs: Any) -> dict[str, Any]:
    doc = event(op, **kwargs)
    doc["key"] = key if key is not None else {"id": 1}
    return doc


def encode(line: Line) -> bytes:
    if isinstance(line, bytes):
        return line
    if isinstance(line, str):
        return line.encode()
    return json.dumps(line).encode()


def write(path: Path, lines: Iterable[Line], *, mode: str = "wb") -> None:
    with open(path, mode) as fh:
        for line in lines:
            fh.write(encode(line) + b"\n")


def drain(source: JsonLinesSource, max_events: int = 1000) -> list[ChangeRecord]:
    """Everything readable now: until exhausted, or a read that makes no progress."""
    records: list[ChangeRecord] = []
    token = None
    while not source.exhausted:
        batch = source.read(max_events)
        records.extend(batch.records)
        if not batch.records and batch.resume_token == token:
            break
        token = batch.resume_token
    return records


@pytest.fixture
def offsets(tmp_path: Path) -> OffsetStore:
    return OffsetStore(tmp_path / "offsets.json")


def one(tmp_path: Path, line: Line, **options: Any) -> tuple[list[ChangeRecord], JsonLinesSource]:
    path = tmp_path / "events.jsonl"
    write(path, [line])
    source = JsonLinesSource("src", path, None, **options)
    return drain(source), source


# --- parsing ----------------------------------------------------------------------------------


def test_insert_with_key_object(tmp_path: Path) -> None:
    line = keyed(
        "c", after={"id": 1, "name": "Ada", "score": 1.25}, lsn=10, ts_ms=1_700_000_000_000
    )
    (record,), _ = one(tmp_path, line)
    assert record == ChangeRecord(
        table="public.users",
        op=Operation.INSERT,
        key={"id": 1},
        after={"id": 1, "name": "Ada", "score": Decimal("1.25")},
        position=SourcePosition(10, 0),
        before=None,
        commit_ts=1_700_000_000.0,
    )
    assert record.after is not None and isinstance(
        record.after["score"], Decimal
    )  # exact, not a float


@pytest.mark.parametrize(
    ("code", "op"),
    [("c", Operation.INSERT), ("u", Operation.UPDATE), ("r", Operation.SNAPSHOT_READ)],
)
def test_row_ops_take_key_from_after(tmp_path: Path, code: str, op: Operation) -> None:
    before = {"id": 7, "name": "old"} if code == "u" else None
    line = event(code, after={"id": 7, "name": "new"}, before=before, lsn=5)
    (record,), _ = one(tmp_path, line, primary_keys={"public.users": ["id"]})
    assert record.op is op
    assert record.key == {"id": 7}
    assert record.after == {"id": 7, "name": "new"}
    assert record.before == before


def test_delete_takes_key_from_before_and_has_no_after(tmp_path: Path) -> None:
    line = event("d", before={"id": 9, "name": "gone"}, after={"id": 9, "name": "ignored"})
    (record,), _ = one(tmp_path, line, primary_keys={"users": ["id"]})  # bare name also works
    assert record.op is Operation.DELETE
    assert record.key == {"id": 9}
    assert record.after is None
    assert record.before == {"id": 9, "name": "gone"}


def test_delete_with_key_and_no_before(tmp_path: Path) -> None:
    (record,), _ = one(tmp_path, keyed("d", key={"id": 3}, before=None, after=None))
    assert record.key == {"id": 3} and record.after is None and record.before is None


def test_payload_envelope_with_inner_or_outer_key(tmp_path: Path) -> None:
    path = tmp_path / "events.jsonl"
    inner = {"schema": {"type": "struct"}, "payload": keyed("c", key={"id": 1})}
    outer = {"payload": event("u", after={"id": 2, "name": "b"}), "key": {"id": 2}}
    connect_key = {
        "payload": event("c", after={"id": 3}),
        "key": {"schema": {}, "payload": {"id": 3}},
    }
    write(path, [inner, outer, connect_key])
    records = drain(JsonLinesSource("src", path, None))
    assert [(r.op, dict(r.key)) for r in records] == [
        (Operation.INSERT, {"id": 1}),
        (Operation.UPDATE, {"id": 2}),
        (Operation.INSERT, {"id": 3}),
    ]


def test_composite_keys_from_each_place(tmp_path: Path) -> None:
    path = tmp_path / "events.jsonl"
    row = {"tenant": "t1", "id": 5, "v": 1}
    write(
        path,
        [
            event("c", after=row, table="items", pk=["tenant", "id"]),
            event("c", after=row, table="items"),  # from the primary_keys option
            keyed("c", key={"tenant": "t1", "id": 5}, after=row, table="items"),
            event("d", before=row, table="items", pk="tenant,id"),
        ],
    )
    source = JsonLinesSource("src", path, None, primary_keys={"public.items": ("tenant", "id")})
    records = drain(source)
    assert [list(r.key.items()) for r in records] == [[("tenant", "t1"), ("id", 5)]] * 4
    assert records[0].key_values == ("t1", 5)


def test_table_name_without_schema(tmp_path: Path) -> None:
    (record,), _ = one(tmp_path, keyed(schema=None, table="audit"))
    assert record.table == "audit"


def test_positions_from_lsn_forms_and_sequences(tmp_path: Path) -> None:
    path = tmp_path / "events.jsonl"
    write(
        path,
        [
            keyed(lsn="0/16B3748"),  # PG LSN text
            keyed(lsn="1/0", lsn_commit="1/10"),  # lsn_commit wins
            keyed(lsn="1/8", lsn_commit="1/10"),  # same commit: implicit seq 1
            keyed(lsn="1/9", lsn_commit="1/10", sequence=7),  # explicit sequence
            keyed(lsn="2000", seq=3),  # decimal string, "seq" spelling
            keyed(lsn=2000),  # same commit: count 1
            # Debezium's string: commit = the last commit before it, seq = its own lsn
            keyed(lsn=2001, sequence='["2000","2001"]'),
        ],
    )
    records = drain(JsonLinesSource("src", path, None))
    assert [r.position for r in records] == [
        SourcePosition(0x16B3748, 0),
        SourcePosition((1 << 32) | 0x10, 0),
        SourcePosition((1 << 32) | 0x10, 1),
        SourcePosition((1 << 32) | 0x10, 7),
        SourcePosition(2000, 3),
        SourcePosition(2000, 1),
        SourcePosition(2000, 2001),
    ]


def test_backwards_commit_is_warned_once(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    path = tmp_path / "events.jsonl"
    write(path, [keyed(lsn=300), keyed(lsn=200), keyed(lsn=100)])
    with caplog.at_level(logging.WARNING, logger="compute.sources.jsonl_source"):
        records = drain(JsonLinesSource("src", path, None))
    assert len(records) == 3  # still delivered: the warning is advice, not a reject
    warnings = [r.getMessage() for r in caplog.records if "backwards" in r.getMessage()]
    assert len(warnings) == 1 and "lsn_commit" in warnings[0]


def test_blank_lines_bom_and_crlf(tmp_path: Path) -> None:
    path = tmp_path / "events.jsonl"
    path.write_bytes(
        b"\xef\xbb\xbf" + encode(keyed(lsn=1)) + b"\r\n\n   \n" + encode(keyed(lsn=2)) + b"\r\n"
    )
    source = JsonLinesSource("src", path, None)
    assert [r.position.commit for r in drain(source)] == [1, 2]
    assert source.rejected == ()


def test_final_line_without_newline_is_read_when_not_following(tmp_path: Path) -> None:
    path = tmp_path / "events.jsonl"
    path.write_bytes(encode(keyed(lsn=1)) + b"\n" + encode(keyed(lsn=2)))
    source = JsonLinesSource("src", path, None)
    assert [r.position.commit for r in drain(source)] == [1, 2]
    assert source.exhausted


# --- malformed lines --------------------------------------------------------------------------

BAD_LINES: list[Any] = [  # (line, reason) or pytest.param(line, reason)
    ("{not json", "bad JSON"),
    # cut off: the column on the line as written, not after its newline
    ('{"op": "c", "x": 1', "bad JSON: Expecting ',' delimiter at column 19"),
    (b'{"op": "c", "after": {"id": "\xff\xfe"}}', "not UTF-8"),
    ("[1, 2, 3]", "not a JSON object but an array"),
    ("42", "not a JSON object but a number"),
    ('{"payload": "x"}', "'payload' is a string"),
    (
        json.dumps({"before": None, "after": {"id": 1}, "source": {"table": "t", "lsn": 1}}),
        "missing 'op'",
    ),
    (keyed("x"), 'unknown op "x"'),
    (keyed("t"), 'unknown op "t"'),
    (json.dumps({"op": "c", "after": {"id": 1}, "key": {"id": 1}}), "'source' is missing"),
    (json.dumps({"op": "c", "after": {"id": 1}, "source": "pg"}), "'source' is a string"),
    ({**keyed("c"), "after": None}, "op 'c' without an 'after' row"),
    ({**keyed("u"), "after": None}, "op 'u' without an 'after' row"),
    ({**keyed("c"), "after": [1]}, "'after' is an array"),
    ({**keyed("d"), "before": "row"}, "'before' is a string"),
    (keyed(table=""), "'source.table' must be a non-empty string"),
    (keyed(schema=5), "'source.schema' must be a string"),
    (keyed(lsn=True), "'source.lsn' is not a position: true ("),  # JSON's spelling
    (keyed(lsn="zz/1x"), "'source.lsn' is not a position"),
    (keyed(lsn=-1), "'source.lsn' is not a position"),
    (keyed(lsn=None), "no position"),
    (keyed(seq=-1), "'source.seq' must be a non-negative integer"),
    (keyed(ts_ms="yesterday"), "'source.ts_ms' must be a number"),
    (keyed(key={}), "'key' must be a non-empty object"),
    (keyed(key={"id": None}), "primary key column 'id' is null"),
    (keyed(key={"id": [1]}), "not a scalar"),
    (
        event("c", table="audit_log"),
        "no primary key for table public.audit_log: give a 'key' object or configure primary_keys",
    ),
    (event("c", pk=["missing"]), "primary key column 'missing' missing from 'after'"),
    (event("c", pk=[1]), "'source.pk' must be a list of column names"),
    (event("d", pk=["id"]), "without 'key' or 'before'"),
    ("x" * 400, "line longer than 200 bytes"),
    pytest.param(
        keyed(after={"id": 1, "doc": json.loads("[" * 199 + "]" * 199)}),
        "nested deeper than 200",
        id="nested-201",
    ),
    pytest.param(
        '{"op": "c", "x": ' + "[" * 2000 + "]" * 2000 + "}",
        "nested deeper than 200",
        id="nested-2001",
    ),
    pytest.param(
        '{"op": "c", "after": {"id": 1' + "0" * 5000 + "}}",
        "bad JSON: Exceeds the limit",
        id="int-of-5001-digits",
    ),
    pytest.param(keyed(ts_ms=10**400), "'source.ts_ms' is out of range", id="ts-ms-huge"),
]


@pytest.mark.parametrize(("bad", "reason"), BAD_LINES)
def test_each_malformed_line_is_set_aside_with_line_and_reason(
    tmp_path: Path, caplog: pytest.LogCaptureFixture, bad: Line, reason: str
) -> None:
    path = tmp_path / "events.jsonl"
    write(path, [keyed(lsn=1), bad, keyed(lsn=3)])
    source = JsonLinesSource(
        "src", path, None, max_line_bytes=200 if reason.startswith("line longer") else 1 << 20
    )
    with caplog.at_level(logging.WARNING, logger="compute.sources.jsonl_source"):
        records = drain(source)
    assert [r.position.commit for r in records] == [1, 3]  # the rest flows
    (rejected,) = source.rejected
    assert rejected.where == "events.jsonl line 2"
    assert reason in rejected.reason
    assert source.rejected_count == 1
    (log,) = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert "source=src" in log and "line=2" in log and f"reason={rejected.reason}" in log


def test_rejected_file_keeps_every_rejected_line(tmp_path: Path) -> None:
    path = tmp_path / "events.jsonl"
    bad_bytes = b'{"op": "\xff"}'
    write(path, ["{oops", keyed(lsn=1), bad_bytes])
    rejected_path = tmp_path / "rejected.jsonl"
    source = JsonLinesSource("src", path, None, rejected_path=rejected_path)
    assert len(drain(source)) == 1
    entries = [json.loads(line) for line in rejected_path.read_text().splitlines()]
    assert [(e["line"], e["source"]) for e in entries] == [(1, "src"), (3, "src")]
    assert entries[0]["raw"] == "{oops"
    assert entries[0]["offset"] == 0
    assert entries[1]["raw"] == '{"op": "\\xff"}'  # undecodable bytes kept visible
    assert entries[1]["file"] == str(path)


def test_rejected_list_is_bounded_and_logging_is_throttled(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    path = tmp_path / "events.jsonl"
    write(path, ["{bad"] * 250 + [keyed(lsn=1)])
    source = JsonLinesSource("src", path, None, max_rejected=10)
    with caplog.at_level(logging.WARNING, logger="compute.sources.jsonl_source"):
        records = drain(source, max_events=10)
    assert len(records) == 1
    assert source.rejected_count == 250
    assert len(source.rejected) == 10
    assert source.rejected[-1].where == "events.jsonl line 250"
    assert len(caplog.records) == 100  # the first 100, then one in a thousand


def test_read_respects_max_events(tmp_path: Path) -> None:
    path = tmp_path / "events.jsonl"
    write(path, [keyed(lsn=i) for i in range(1, 26)])
    source = JsonLinesSource("src", path, None)
    sizes = []
    while not source.exhausted:
        sizes.append(len(source.read(10).records))
    assert sizes == [10, 10, 5]
    with pytest.raises(ValueError):
        source.read(0)


# --- resume -----------------------------------------------------------------------------------


def test_resume_after_acknowledge_rereads_unacknowledged(
    tmp_path: Path, offsets: OffsetStore
) -> None:
    path = tmp_path / "events.jsonl"
    write(path, [keyed(lsn=i) for i in range(1, 11)])
    first = JsonLinesSource("src", path, offsets)
    batch1 = first.read(4)
    first.acknowledge(batch1.resume_token)
    batch2 = first.read(3)  # read, never acknowledged: the engine crashed
    assert [r.position.commit for r in batch2.records] == [5, 6, 7]
    first.close()

    second = JsonLinesSource("src", path, OffsetStore(tmp_path / "offsets.json"))
    assert [r.position.commit for r in drain(second)] == [5, 6, 7, 8, 9, 10]
    assert second.exhausted


def test_resume_keeps_line_numbers_and_implicit_sequence(
    tmp_path: Path, offsets: OffsetStore
) -> None:
    path = tmp_path / "events.jsonl"
    # One transaction of four changes without explicit seq, then a bad line.
    write(path, [keyed(lsn_commit=50, key={"id": i}) for i in range(4)] + ["{bad"])
    first = JsonLinesSource("src", path, offsets)
    reference = [r.position for r in drain(first)]
    assert reference == [SourcePosition(50, s) for s in range(4)]

    again = JsonLinesSource("src", path, offsets)
    again.acknowledge(again.read(2).resume_token)  # mid-transaction
    resumed = JsonLinesSource("src", path, offsets)
    assert [r.position for r in drain(resumed)] == reference[2:]
    assert resumed.rejected[0].where == "events.jsonl line 5"


def test_offset_only_token_counts_lines(tmp_path: Path) -> None:
    path = tmp_path / "events.jsonl"
    write(path, [keyed(lsn=1), keyed(lsn=2), "{bad"])
    store = OffsetStore(tmp_path / "offsets.json")
    store.put("src", str(len(encode(keyed(lsn=1))) + 1))
    source = JsonLinesSource("src", path, store)
    assert [r.position.commit for r in drain(source)] == [2]
    assert source.rejected[0].where == "events.jsonl line 3"


def test_resume_past_end_or_mid_line_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "events.jsonl"
    write(path, [keyed(lsn=1)])
    size = path.stat().st_size
    store = OffsetStore(tmp_path / "offsets.json")
    store.put("src", str(size + 10))
    with pytest.raises(SourceError, match="past the end of the file"):
        JsonLinesSource("src", path, store)
    store.put("src", "3")
    with pytest.raises(SourceError, match="not at a line boundary"):
        JsonLinesSource("src", path, store)


def test_bad_tokens_are_refused(tmp_path: Path, offsets: OffsetStore) -> None:
    path = tmp_path / "events.jsonl"
    write(path, [keyed(lsn=1), keyed(lsn=2)])
    source = JsonLinesSource("src", path, offsets)
    batch = source.read(1)
    with pytest.raises(SourceError, match="not a JSON-lines resume token"):
        source.acknowledge("garbage")
    with pytest.raises(SourceError, match="past what was read"):
        source.acknowledge(str(path.stat().st_size))
    source.acknowledge(batch.resume_token)
    offsets.put("src", "x:y")
    with pytest.raises(SourceError, match="not a JSON-lines resume token"):
        JsonLinesSource("src", path, offsets)


def test_missing_file_without_follow_is_an_error(tmp_path: Path) -> None:
    with pytest.raises(SourceError, match="not found"):
        JsonLinesSource("src", tmp_path / "nope.jsonl", None)


# --- follow mode ------------------------------------------------------------------------------


def test_follow_leaves_a_partial_line_until_complete(tmp_path: Path, offsets: OffsetStore) -> None:
    path = tmp_path / "events.jsonl"
    full = encode(keyed(lsn=1)) + b"\n"
    second = encode(keyed(lsn=2))
    path.write_bytes(full + second[:10])
    source = JsonLinesSource("src", path, offsets, follow=True)
    batch = source.read(10)
    assert [r.position.commit for r in batch.records] == [1]
    assert source.read(10).records == []
    assert not source.exhausted
    source.acknowledge(batch.resume_token)
    with open(path, "ab") as fh:
        fh.write(second[10:])  # complete, but no newline yet
    assert source.read(10).records == []
    with open(path, "ab") as fh:
        fh.write(b"\n")
    assert [r.position.commit for r in source.read(10).records] == [2]
    assert source.rejected == ()
    assert not source.exhausted  # following never ends
    # The stored token sits before the partial line: a restart reads it whole.
    restarted = JsonLinesSource("src", path, offsets, follow=True)
    assert [r.position.commit for r in restarted.read(10).records] == [2]


def test_follow_waits_for_the_file_to_appear(tmp_path: Path) -> None:
    path = tmp_path / "later.jsonl"
    source = JsonLinesSource("src", path, None, follow=True)
    assert source.read(10).records == []
    write(path, [keyed(lsn=1)])
    assert [r.position.commit for r in source.read(10).records] == [1]


def test_follow_detects_truncation(tmp_path: Path) -> None:
    path = tmp_path / "events.jsonl"
    write(path, [keyed(lsn=1), keyed(lsn=2)])
    source = JsonLinesSource("src", path, None, follow=True)
    assert len(source.read(10).records) == 2
    path.write_bytes(b"")
    with pytest.raises(SourceError, match="truncated or replaced"):
        source.read(10)


# --- streams ----------------------------------------------------------------------------------


def test_stream_reads_until_eof_and_never_stores_offsets(
    tmp_path: Path, offsets: OffsetStore
) -> None:
    read_fd, write_fd = os.pipe()
    with open(read_fd, "rb") as reader:
        source = JsonLinesSource("src", reader, offsets)
        with open(write_fd, "wb") as writer:
            writer.write(encode(keyed(lsn=1)) + b"\n{bad\n")
            writer.flush()
            records: list[ChangeRecord] = []
            deadline = time.monotonic() + 5
            while not records and time.monotonic() < deadline:
                records.extend(source.read(10).records)
            assert not source.exhausted  # the pipe is still open
            writer.write(encode(keyed(lsn=2)))  # last line without newline, then EOF
        batch = None
        while not source.exhausted and time.monotonic() < deadline:
            batch = source.read(10)
            records.extend(batch.records)
        assert source.exhausted
        assert [r.position.commit for r in records] == [1, 2]
        assert [r.where for r in source.rejected] == [f"{source.name} line 2"]
        assert batch is not None
        source.acknowledge(batch.resume_token)
        assert offsets.get("src") is None  # a pipe cannot be re-read: nothing to resume
        source.close()


def test_dash_means_stdin(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    import io
    import sys

    class FakeStdin:
        buffer = io.BytesIO(encode(keyed(lsn=4)) + b"\n")

    monkeypatch.setattr(sys, "stdin", FakeStdin)
    source = JsonLinesSource("src", "-", None)
    assert source.name == "stdin"
    deadline = time.monotonic() + 5
    records: list[ChangeRecord] = []
    while not source.exhausted and time.monotonic() < deadline:
        records.extend(source.read(10).records)
    assert [r.position.commit for r in records] == [4]


def test_values_of_any_size_and_nesting_up_to_the_limit_are_kept_exactly(tmp_path: Path) -> None:
    doc = json.loads("[" * 198 + "]" * 198)  # with the envelope: 200 levels, the limit
    line = keyed(
        key={"id": 10**25},
        after={"id": 10**25, "neg": -(2**64), "doc": doc, "s": "\udc80", "f": 1e400},
        lsn=2**63 - 1,  # the largest a bigint position column holds
        seq=2**63 - 1,
    )
    records, source = one(tmp_path, line)
    assert not source.rejected
    (record,) = records
    assert record.key == {"id": 10**25}
    assert record.after is not None
    assert record.after["neg"] == -(2**64) and record.after["doc"] == doc
    assert record.after["s"] == "\udc80"  # stored exactly by the DLQ (never re-encoded here)
    assert record.position == SourcePosition(2**63 - 1, 2**63 - 1)
    for field, value in (("lsn", 2**63), ("lsn_commit", 2**64), ("seq", 2**70)):
        _, refused = one(tmp_path, keyed(**{"lsn": 1, field: value}))
        (rejected,) = refused.rejected
        assert rejected.reason == f"'source.{field}' {value} does not fit a 63-bit position"


_json_values = st.recursive(
    st.one_of(
        st.none(),
        st.booleans(),
        st.integers(),  # any size
        st.integers(min_value=2**63, max_value=10**100).flatmap(lambda n: st.sampled_from([n, -n])),
        st.floats(),  # NaN and Infinity: Python's JSON reads and writes them
        st.text(st.characters(categories=["L", "N", "P", "S", "Z", "Cc", "Cs"]), max_size=8),
    ),
    lambda inner: st.one_of(
        st.lists(inner, max_size=3), st.dictionaries(st.text(max_size=4), inner, max_size=3)
    ),
    max_leaves=10,
)


@settings(max_examples=100, deadline=None)
@given(
    key=st.one_of(st.integers(), st.text(min_size=1, max_size=5)),
    after=st.dictionaries(st.text(min_size=1, max_size=5), _json_values, max_size=4),
    lsn=st.integers(min_value=0, max_value=2**63 - 1),
)
def test_every_event_the_source_accepts_is_stored_exactly_by_the_dlq(
    key: Any, after: dict[str, Any], lsn: int
) -> None:
    """What a JSON line can carry, the source accepts, the DLQ stores and gives back."""
    line = keyed(key={"id": key}, after={**after, "id": key}, lsn=lsn)
    with tempfile.TemporaryDirectory() as directory:
        records, source = one(Path(directory), line)
        source.close()
    assert not source.rejected
    (record,) = records
    message = DLQMessage.create(QueueId("s", record.table, "d"), record, FailureContext("E", "m"))
    assert same(decode_message(encode_message(message)), message)
