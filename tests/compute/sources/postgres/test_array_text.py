"""Any nested list of ints, text and NULLs, printed by PostgreSQL, parses back to itself."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import psycopg2
import pytest
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

from compute.sources.postgres.pg_types import converter
from destinations.postgresql.value_check import array_literal

INT_ARRAY, TEXT_ARRAY = 1007, 1009

# Any text PostgreSQL stores (no NUL, no lone surrogates), weighted towards what
# the array format quotes.
texts = st.one_of(
    st.text(st.characters(exclude_characters="\x00", exclude_categories=["Cs"]), max_size=8),
    st.sampled_from(["", "NULL", "null", " ", "a b", '"', "\\", "{", "}", ",", "{1,2}", "\t\n"]),
)
ints = st.integers(-(2**31), 2**31 - 1)


@st.composite
def arrays(draw: st.DrawFn) -> tuple[str, list[Any]]:
    """(element type, a rectangular nested list): PostgreSQL arrays are rectangular."""
    kind = draw(st.sampled_from(["int", "text"]))
    elements = st.none() | (ints if kind == "int" else texts)
    shape = draw(st.lists(st.integers(1, 3), min_size=1, max_size=3))

    def fill(dims: list[int]) -> list[Any]:
        if len(dims) == 1:
            return [draw(elements) for _ in range(dims[0])]
        return [fill(dims[1:]) for _ in range(dims[0])]

    return kind, fill(shape)


@pytest.fixture(scope="module")
def conn(postgres_dsn: str) -> Iterator[Any]:
    connection = psycopg2.connect(postgres_dsn)
    connection.autocommit = True
    yield connection
    connection.close()


@settings(
    max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(arrays())
@example(("text", [["NULL", None], ['"', "\\"]]))
@example(("int", [None]))
@example(("text", ["'", "a'b"]))
@example(("text", ["\x1f", "\xa0x\xa0", "\u2003"]))  # printed unquoted: not array spaces
def test_postgres_array_text_parses_back_and_writes_back(
    conn: Any, array: tuple[str, list[Any]]
) -> None:
    kind, items = array
    with conn.cursor() as cur:
        cur.execute(f"SELECT %s::{kind}[]::text", (items,))
        (printed,) = cur.fetchone()
    parse = converter(INT_ARRAY if kind == "int" else TEXT_ARRAY)
    assert parse is not None
    assert parse(printed) == items
    # And the destination's literal of the parsed list is the same array again.
    with conn.cursor() as cur:
        cur.execute(f"SELECT %s::{kind}[]::text", (array_literal(parse(printed)),))
        assert cur.fetchone() == (printed,)


def test_an_empty_array_is_an_empty_list(conn: Any) -> None:
    with conn.cursor() as cur:
        cur.execute("SELECT '{}'::int[]::text, ARRAY[[]]::int[]::text")
        assert [converter(INT_ARRAY)(t) for t in cur.fetchone()] == [[], []]  # type: ignore[misc]
