"""Tests of ``compute.queue_id``: safe, reversible directory names and the ``QueueId`` type."""

from __future__ import annotations

import copy
import dataclasses
import os
import pickle
import re
import subprocess
import sys
from pathlib import Path

import pytest
from hypothesis import HealthCheck, assume, example, given, settings
from hypothesis import strategies as st

from compute.queue_id import (
    DEST_PREFIX,
    MAX_COMPONENT,
    SOURCE_PREFIX,
    TABLE_PREFIX,
    QueueId,
    decode_name,
    encode_name,
)

_SAFE_COMPONENT = re.compile(r"[A-Za-z0-9_.%~-]+")
# Every Unicode category, surrogates (Cs) included: hypothesis leaves Cs out unless asked.
_ALL_CATEGORIES = ["L", "M", "N", "P", "S", "Z", "Cc", "Cf", "Cs", "Co", "Cn"]
_TRICKY = "a.Z/ \"'%~\\\x00\n\t\u00e9\u4e2d\U0001f600\ud83d\ude00\udc80\x7f-_"

any_char = st.one_of(st.characters(categories=_ALL_CATEGORIES), st.sampled_from(_TRICKY))
names = st.text(any_char, min_size=1, max_size=120)
# Long names around and beyond the cut (an escape is 3 chars, so 67+ non-safe chars cut).
# Built by repetition: drawing 300 characters one by one is slow on this machine.
long_names = st.builds(
    lambda unit, times, tail: (unit * times)[:300] + tail,
    st.text(any_char, min_size=1, max_size=6),
    st.integers(min_value=30, max_value=300),
    st.text(any_char, max_size=4),
)
any_name = st.one_of(names, long_names)

FAST = settings(max_examples=200, deadline=None)
FEW = settings(max_examples=100, deadline=None)


def assert_safe_component(component: str) -> None:
    assert component, "empty directory name"
    assert "/" not in component and "\x00" not in component
    assert component not in (".", "..")
    assert len(component.encode("utf-8")) <= 255
    assert _SAFE_COMPONENT.fullmatch(component), component


# --- examples ---------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("name", "encoded"),
    [
        ("users", "users"),
        ("public.users", "public.users"),
        ("Order_Items-2024", "Order_Items-2024"),
        ("a/b", "a%2Fb"),
        ("my table", "my%20table"),
        ('"Quoted"', "%22Quoted%22"),
        ("it's", "it%27s"),
        ("..", ".."),
        (".", "."),
        ("%41", "%2541"),
        ("%", "%25"),
        ("~", "%7E"),
        ("a~b", "a%7Eb"),
        ("caf\u00e9", "caf%C3%A9"),
        ("\u4e2d", "%E4%B8%AD"),
        ("\U0001f600", "%F0%9F%98%80"),
        ("\x00", "%00"),
        ("\udc80", "%ED%B2%80"),
        ("back\\slash", "back%5Cslash"),
        ("new\nline", "new%0Aline"),
    ],
)
def test_encode_examples(name: str, encoded: str) -> None:
    assert encode_name(name) == encoded
    assert decode_name(encoded) == name
    assert_safe_component(TABLE_PREFIX + encoded)


def test_surrogate_pair_and_real_emoji_stay_distinct() -> None:
    pair = "\ud83d\ude00"  # two lone surrogates, not the emoji they would form in UTF-16
    emoji = "\U0001f600"
    assert encode_name(pair) != encode_name(emoji)
    assert decode_name(encode_name(pair)) == pair
    assert decode_name(encode_name(emoji)) == emoji


def test_empty_name_is_refused() -> None:
    with pytest.raises(ValueError, match="empty"):
        encode_name("")


def test_name_exactly_at_the_limit_is_not_cut() -> None:
    name = "a" * MAX_COMPONENT
    assert encode_name(name) == name
    assert decode_name(name) == name


def test_long_name_is_cut_with_hash_and_does_not_decode() -> None:
    name = "a" * (MAX_COMPONENT + 1)
    encoded = encode_name(name)
    assert len(encoded) <= MAX_COMPONENT
    assert "~" in encoded
    assert encoded.startswith("a" * 100)
    assert decode_name(encoded) is None
    assert encode_name(name) == encoded  # deterministic
    assert encode_name("a" * (MAX_COMPONENT + 2)) != encoded


@pytest.mark.parametrize("length", range(60, 75))
def test_cut_never_splits_an_escape(length: int) -> None:
    # Mixed one- and three-character pieces put escapes at every offset around the cut.
    name = ("x\u00e9" * length)[:length] + "\u4e2d" * 60
    encoded = encode_name(name)
    assert len(encoded) <= MAX_COMPONENT
    body, mark, digest = encoded.rpartition("~")
    assert mark and re.fullmatch(r"[0-9a-f]{16}", digest)
    assert re.fullmatch(r"(?:[A-Za-z0-9_.-]|%[0-9A-F]{2})*", body), body
    assert_safe_component(TABLE_PREFIX + encoded)


def test_very_long_names_sharing_a_long_prefix_stay_distinct() -> None:
    prefix = "schema.table_" * 40
    assert encode_name(prefix + "a") != encode_name(prefix + "b")
    assert encode_name(prefix) != encode_name(prefix + "a")


@pytest.mark.parametrize(
    "encoded",
    [
        "",
        "%",
        "%4",
        "%ZZ",
        "%2f",  # lower-case hex is not canonical
        "%41",  # 'A' is kept as is, never escaped
        "%2E",  # '.' is kept as is
        "%2E%2E",
        "a b",
        "a/b",
        "a~0123456789abcdef",
        "%C3",  # incomplete UTF-8
        "%FF",
        "%C0%AF",  # over-long UTF-8 for '/'
        "caf\u00e9",
        "\x00",
    ],
)
def test_decode_refuses_non_canonical_input(encoded: str) -> None:
    assert decode_name(encoded) is None


# --- properties -------------------------------------------------------------------------------


@FAST
@given(any_name)
@example("..")
@example(".")
@example("\x00")
@example("\ud800")
@example("/" * 500)
@example("%41")
def test_every_name_maps_to_one_safe_component(name: str) -> None:
    encoded = encode_name(name)
    for prefix in (SOURCE_PREFIX, TABLE_PREFIX, DEST_PREFIX):
        assert_safe_component(prefix + encoded)
    assert len(encoded) <= MAX_COMPONENT
    decoded = decode_name(encoded)
    if "~" in encoded:
        assert decoded is None  # cut: the full name lives in queue.json
    else:
        assert decoded == name


@FAST
@given(any_name, any_name)
def test_encoding_is_injective(a: str, b: str) -> None:
    assume(a != b)
    assert encode_name(a) != encode_name(b)


@FAST
@given(st.text(any_char, min_size=0, max_size=250), any_char, any_char)
def test_encoding_is_injective_for_near_identical_names(prefix: str, x: str, y: str) -> None:
    # Names differing in one trailing character, including past the cut.
    assume(x != y)
    assert encode_name(prefix + x) != encode_name(prefix + y)
    assert encode_name(prefix + x) != encode_name(prefix + x + y)


@FAST
@given(st.text(st.sampled_from("aZ09_-.%~/ %2E%41FFC3"), max_size=40))
def test_decode_never_raises_and_only_accepts_canonical(encoded: str) -> None:
    decoded = decode_name(encoded)
    if decoded is not None:
        assert encode_name(decoded) == encoded


@FAST
@given(st.text(any_char, max_size=60))
def test_decode_of_arbitrary_text_never_raises(text: str) -> None:
    decoded = decode_name(text)
    if decoded is not None:
        assert encode_name(decoded) == text


@settings(
    max_examples=200, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(any_name)
@example("..")
@example(".")
@example("\udc80\ud800")
@example("\U0001f600" * 80)
def test_encoded_name_is_a_real_directory(tmp_path: Path, name: str) -> None:
    directory = tmp_path / (TABLE_PREFIX + encode_name(name))
    directory.mkdir(exist_ok=True)
    try:
        assert directory.is_dir()
        assert directory.parent == tmp_path  # one component: nothing escaped upwards
        assert (TABLE_PREFIX + encode_name(name)) in os.listdir(tmp_path)
    finally:
        directory.rmdir()


@settings(
    max_examples=100, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(names, any_name, names)
def test_queue_path_is_created_and_found_again(
    tmp_path: Path, source: str, table: str, dest: str
) -> None:
    queue = QueueId(source, table, dest)
    path = tmp_path / queue.relative_path
    path.mkdir(parents=True, exist_ok=True)
    found = path.relative_to(tmp_path).parts
    assert len(found) == 3
    parsed = QueueId.from_relative_path((found[0], found[1], found[2]))
    cut = any("~" in part for part in found)
    assert parsed == (None if cut else queue)
    for level in (path, path.parent, path.parent.parent):
        level.rmdir()


# --- QueueId ----------------------------------------------------------------------------------


def test_queue_id_relative_path_and_str() -> None:
    q = QueueId("pg1", "public.my table", "sf/2")
    assert q.relative_path.parts == ("source_pg1", "table_public.my%20table", "dest_sf%2F2")
    assert str(q) == "source_pg1/table_public.my table/dest_sf/2"
    assert QueueId.from_relative_path(("source_pg1", "table_public.my%20table", "dest_sf%2F2")) == q


@pytest.mark.parametrize("field", ["source_id", "table", "destination_id"])
@pytest.mark.parametrize("bad", ["", None, 1, b"users"])
def test_queue_id_refuses_empty_or_non_string_parts(field: str, bad: object) -> None:
    parts: dict[str, object] = {"source_id": "1", "table": "users", "destination_id": "2"}
    parts[field] = bad
    with pytest.raises(ValueError, match=field):
        QueueId(**parts)  # type: ignore[arg-type]


def test_queue_id_is_a_hashable_ordered_value() -> None:
    a = QueueId("1", "a", "2")
    assert a == QueueId("1", "a", "2")
    assert len({a, QueueId("1", "a", "2"), QueueId("1", "b", "2")}) == 2
    assert sorted([QueueId("2", "a", "1"), QueueId("1", "b", "2"), a]) == [
        a,
        QueueId("1", "b", "2"),
        QueueId("2", "a", "1"),
    ]
    with pytest.raises(AttributeError):
        a.table = "b"  # type: ignore[misc]


_VALUE_CASES = [
    QueueId("1", "public.users", "2"),
    QueueId("1", "public.users", "2", "parked"),
    QueueId("src \U0001f600", "bad\udc80name", "d\u00e9st"),
]


@pytest.mark.parametrize("queue", _VALUE_CASES)
def test_cached_hash_keeps_queue_id_an_exact_value(queue: QueueId) -> None:
    """QueueId caches its hash: hash, equality, dicts, pickling and copies are unchanged."""
    fields = (queue.source_id, queue.table, queue.destination_id, queue.lane)
    # The value the generated dataclass __hash__ gave, and equal ids hash alike.
    assert hash(queue) == hash(fields)
    twin = QueueId(*fields)
    assert twin == queue and twin is not queue and hash(twin) == hash(queue)
    assert {queue: 1}[twin] == 1 and twin in {queue}
    other = dataclasses.replace(queue, destination_id="other")
    assert other != queue and hash(other) == hash((*fields[:2], "other", fields[3]))
    assert dataclasses.replace(queue) == queue and hash(dataclasses.replace(queue)) == hash(queue)
    # The cache is no field: fields, asdict, repr and ordering see the four names only.
    assert [f.name for f in dataclasses.fields(queue)] == [
        "source_id",
        "table",
        "destination_id",
        "lane",
    ]
    assert dataclasses.asdict(queue) == dict(
        zip(("source_id", "table", "destination_id", "lane"), fields, strict=True)
    )
    assert repr(queue) == (
        f"QueueId(source_id={fields[0]!r}, table={fields[1]!r}, "
        f"destination_id={fields[2]!r}, lane={fields[3]!r})"
    )
    assert not queue < twin and not queue > twin
    for protocol in range(pickle.HIGHEST_PROTOCOL + 1):
        back = pickle.loads(pickle.dumps(queue, protocol))
        assert back == queue and hash(back) == hash(queue) and {queue: 1}[back] == 1
    for duplicate in (copy.copy(queue), copy.deepcopy(queue)):
        assert duplicate == queue and hash(duplicate) == hash(queue)
    # A pickle's state is the four names, as before the cache (str hashes differ
    # between processes, so a pickled hash would be wrong); such a state loads.
    assert queue.__getstate__() == list(fields)
    loaded = QueueId.__new__(QueueId)
    loaded.__setstate__(list(fields))
    assert loaded == queue and hash(loaded) == hash(queue)
    with pytest.raises(AttributeError):
        queue.lane = "parked"  # type: ignore[misc]


def test_a_pickled_queue_id_hashes_right_in_another_process(tmp_path: Path) -> None:
    """str hashes are salted per process: the cache is rebuilt on unpickling."""
    queue = QueueId("1", "public.users", "2")
    code = (
        "import pickle, sys; q = pickle.loads(sys.stdin.buffer.read()); "
        "assert hash(q) == hash((q.source_id, q.table, q.destination_id, q.lane)); "
        "assert q in {q.__class__(q.source_id, q.table, q.destination_id)}"
    )
    # The child imports this very code (sys.path), under another hash salt.
    env = {**os.environ, "PYTHONHASHSEED": "12345", "PYTHONPATH": os.pathsep.join(sys.path)}
    done = subprocess.run(
        [sys.executable, "-c", code], input=pickle.dumps(queue), env=env, check=False
    )
    assert done.returncode == 0


@FEW
@given(names, any_name, names)
def test_relative_path_round_trip(source: str, table: str, dest: str) -> None:
    q = QueueId(source, table, dest)
    parts = q.relative_path.parts
    assert len(parts) == 3
    for part in parts:
        assert_safe_component(part)
    expected = None if any("~" in part for part in parts) else q
    assert QueueId.from_relative_path((parts[0], parts[1], parts[2])) == expected


@pytest.mark.parametrize(
    "parts",
    [
        ("table_a", "table_b", "dest_c"),
        ("source_a", "source_b", "dest_c"),
        ("source_a", "table_b", "table_c"),
        ("source_", "table_b", "dest_c"),
        ("source_a", "table_", "dest_c"),
        ("source_a", "table_b c", "dest_c"),
        ("source_a", "table_%2e", "dest_c"),
        ("source_a", "table_" + "x" * 183 + "~0123456789abcdef", "dest_c"),
        ("source_a", "table_b", "dest_.~"),
        ("lost+found", "table_b", "dest_c"),
    ],
)
def test_from_relative_path_refuses_foreign_directories(parts: tuple[str, str, str]) -> None:
    assert QueueId.from_relative_path(parts) is None


def test_from_relative_path_needs_three_parts() -> None:
    with pytest.raises(ValueError):
        QueueId.from_relative_path(("source_a", "table_b"))  # type: ignore[arg-type]


# --- parse (operator input) -------------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("source_1/table_users/dest_2", QueueId("1", "users", "2")),
        ("1/users/2", QueueId("1", "users", "2")),
        ("  source_1/table_public.users/dest_2/  ", QueueId("1", "public.users", "2")),
        ("/1/public.users/2/", QueueId("1", "public.users", "2")),
        ("pg/a/b/c/sf", QueueId("pg", "a/b/c", "sf")),
        ("source_pg/table_my table/dest_sf", QueueId("pg", "my table", "sf")),
        ("1/caf\u00e9/2", QueueId("1", "caf\u00e9", "2")),
    ],
)
def test_parse_operator_input(text: str, expected: QueueId) -> None:
    assert QueueId.parse(text) == expected


@pytest.mark.parametrize(
    "text",
    ["", "   ", "users", "1/users", "/1/users/", "1//2", "source_/table_x/dest_2", "1/x/dest_"],
)
def test_parse_refuses_incomplete_input(text: str) -> None:
    with pytest.raises(ValueError):
        QueueId.parse(text)


@FEW
@given(
    st.text(st.characters(exclude_characters="/"), min_size=1, max_size=20),
    any_name,
    st.text(st.characters(exclude_characters="/"), min_size=1, max_size=20),
)
def test_parse_reads_back_str(source: str, table: str, dest: str) -> None:
    # Operator input is stripped of surrounding blanks, so ids with them are out of scope.
    assume(source == source.strip() and dest == dest.strip())
    q = QueueId(source, table, dest)
    assert QueueId.parse(str(q)) == q
