"""The assembler's direct read of row changes from bytes gives what parsing them first gives."""

from __future__ import annotations

import struct
from typing import Any

from hypothesis import given, settings
from hypothesis import strategies as st

from compute.sources.postgres.pgoutput import UNCHANGED, PgOutputError, parse_message
from compute.sources.postgres.transactions import TransactionAssembler, TransactionError
from tests.compute.sources.postgres.test_pgoutput import cstr

INT4, INT8, TEXT, NUMERIC, BOOL, FLOAT8, DATE, INT4_ARRAY, UNKNOWN = (
    23, 20, 25, 1700, 16, 701, 1082, 1007, 99999,
)  # fmt: skip
TYPES = (INT4, INT8, TEXT, NUMERIC, BOOL, FLOAT8, DATE, INT4_ARRAY, UNKNOWN)
# Valid text, text the converters refuse, and text int() reads from str but not from bytes.
TEXTS = [
    "1", "-42", "9223372036854775807", " 12 ", "1_0", "\u0661\u0662", "\x1c7", "x", "",
    "1.50", "NaN", "-Infinity", "1e+30", "t", "f", "2024-02-29", "0099-01-01", "infinity",
    "{1,NULL,3}", "{", "é", "\U0001f600",
]  # fmt: skip
MAIN, OTHER, AUDIT = 16400, 16401, 16402
NAMES = {MAIN: "items", OTHER: "other", AUDIT: "audit"}


def relation(relation_id: int, types: list[int], keys: list[bool]) -> bytes:
    out = b"R" + struct.pack(">I", relation_id) + cstr("public") + cstr(NAMES[relation_id])
    out += b"d" + struct.pack(">h", len(types))
    for index, (oid, key) in enumerate(zip(types, keys, strict=True)):
        out += struct.pack(">b", 1 if key else 0) + cstr(f"c{index}") + struct.pack(">Ii", oid, -1)
    return out


def field(value: Any) -> bytes:
    if value is None:
        return b"n"
    if value is UNCHANGED:
        return b"u"
    if isinstance(value, bytes):  # a raw, possibly malformed, field
        return value
    raw = value.encode()
    return b"t" + struct.pack(">i", len(raw)) + raw


values = st.one_of(
    st.sampled_from(TEXTS),
    st.none(),
    st.just(UNCHANGED),
    st.sampled_from([b"b\0\0\0\1x", b"t\xff\xff\xff\xfe1", b"t\0\0\0\x09", b"z", b"t\0\0\0\1\xff"]),
)


@st.composite
def tuples(draw: st.DrawFn, width: int) -> bytes:
    count = draw(st.sampled_from([width, width, width, width - 1, width + 1]))
    body = struct.pack(">h", count) + b"".join(field(draw(values)) for _ in range(max(count, 0)))
    if draw(st.integers(0, 9)) == 0:
        body = body[: draw(st.integers(0, len(body)))]  # cut short
    return body


@st.composite
def change(draw: st.DrawFn, widths: dict[int, int]) -> bytes:
    relation_id = draw(st.sampled_from([MAIN, OTHER, AUDIT, 77]))
    width = widths.get(relation_id, 2)
    kind = draw(st.sampled_from([b"I", b"U", b"D"]))
    head = kind + struct.pack(">I", relation_id)
    old = draw(st.sampled_from([b"N", b"K", b"O", b"X"]))
    if kind == b"I" or old == b"X":
        return head + draw(st.sampled_from([b"N", b"X"])) + draw(tuples(width))
    if kind == b"D":
        return head + old + draw(tuples(width))
    if old == b"N":
        return head + b"N" + draw(tuples(width))
    return head + old + draw(tuples(width)) + b"N" + draw(tuples(width))


BEGIN = b"B" + struct.pack(">QqI", 0x1_0000_0100, 849_499_481_137_249, 7)
COMMIT = b"C" + struct.pack(">BQQq", 0, 0x1_0000_0100, 0x1_0000_0180, 849_499_481_137_249)


def outcome(assembler: TransactionAssembler, message: bytes, fast: bool) -> str:
    """What feeding ``message`` gave, as text (NaN values compare unequal to themselves)."""
    try:
        if fast:
            return repr(assembler.feed_bytes(message))
        return repr(assembler.feed(parse_message(message)))
    except (PgOutputError, TransactionError) as error:
        return f"{type(error).__name__}: {error}"


@settings(max_examples=400, deadline=None)
@given(st.data())
def test_direct_reads_equal_parsed_reads_for_any_change(data: st.DataObject) -> None:
    shapes, widths = [], {}
    for relation_id in (MAIN, OTHER, AUDIT):
        types = data.draw(st.lists(st.sampled_from(TYPES), min_size=1, max_size=4))
        keys = data.draw(st.lists(st.booleans(), min_size=len(types), max_size=len(types)))
        shapes.append(relation(relation_id, types, keys))
        widths[relation_id] = len(types)
    begin = [BEGIN] if data.draw(st.integers(0, 9)) else []  # sometimes a change outside one
    messages = [*shapes, *begin, *data.draw(st.lists(change(widths), max_size=8)), COMMIT]
    options = {"tables": ("public.items", "public.audit"), "append_only": ("audit",)}
    fast, exact = TransactionAssembler(**options), TransactionAssembler(**options)
    for message in messages:
        assert outcome(fast, message, True) == outcome(exact, message, False)
        assert fast.rejected_count == exact.rejected_count
        assert repr(list(fast.rejected)) == repr(list(exact.rejected))
