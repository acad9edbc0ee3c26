"""Hypothesis strategies for every value a change can carry, and an exact comparison."""

from __future__ import annotations

import datetime as dt
import math
from decimal import Decimal
from typing import Any

from hypothesis import strategies as st


def fixed_offset(seconds: int) -> dt.tzinfo:
    # Whole seconds: CPython 3.11's fromisoformat drops an offset of only microseconds.
    return dt.timezone(dt.timedelta(seconds=seconds))


_any_scalar = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(),  # any size and sign
    st.integers(min_value=2**63).flatmap(lambda n: st.sampled_from([n, -n, n**3])),
    st.floats(),  # NaN and infinities included
    st.text(st.characters(categories=["L", "N", "P", "S", "Z", "Cc", "Cs"]), max_size=8),
    st.binary(max_size=8),
    st.decimals(places=None),  # NaN, sNaN, Infinity included
    st.tuples(st.integers(0, 1), st.integers(0, 10**30), st.integers(-(10**12), 10**12)).map(
        lambda t: Decimal((t[0], tuple(int(c) for c in str(t[1])), t[2]))
    ),  # exponents far beyond a float's
    # ``fold`` is not stored: it is not part of the ISO text every destination receives.
    st.datetimes(min_value=dt.datetime(1, 1, 1), max_value=dt.datetime(9999, 12, 31, 23, 59)).map(
        lambda d: d.replace(fold=0)
    ),
    st.datetimes(timezones=st.integers(-86399, 86399).map(fixed_offset)).map(
        lambda d: d.replace(fold=0)
    ),
    st.dates(),
    st.times().map(lambda t: t.replace(fold=0)),
    st.times(timezones=st.integers(-86399, 86399).map(fixed_offset)).map(
        lambda t: t.replace(fold=0)
    ),
    st.uuids(),
)
_hashable = st.one_of(
    st.none(), st.booleans(), st.integers(), st.text(max_size=4), st.binary(max_size=4),
    st.decimals(allow_nan=False), st.uuids(), st.tuples(st.integers(), st.text(max_size=2)),
)  # fmt: skip
any_value = st.recursive(
    _any_scalar,
    lambda inner: st.one_of(
        st.lists(inner, max_size=3),
        st.dictionaries(st.text(max_size=4), inner, max_size=3),
        st.dictionaries(_hashable, inner, max_size=3),  # keys that are not strings
        st.tuples(inner, inner),
        st.frozensets(_hashable, max_size=3),
        st.sets(_hashable, max_size=3),
    ),
    max_leaves=10,
)
any_row = st.dictionaries(st.text(min_size=1, max_size=6), any_value, max_size=5)


def same(a: Any, b: Any) -> bool:
    """Equal and of the same type all the way down; NaN matches NaN, -0.0 only -0.0."""
    if type(a) is not type(b):
        return False
    if isinstance(a, float):
        return (math.isnan(a) and math.isnan(b)) or (a == b and str(a) == str(b))
    if isinstance(a, Decimal):
        return str(a) == str(b)
    if isinstance(a, dict):
        return len(a) == len(b) and all(
            same(ka, kb) and same(va, vb)
            for (ka, va), (kb, vb) in zip(a.items(), b.items(), strict=True)
        )
    if isinstance(a, list | tuple):
        return len(a) == len(b) and all(same(x, y) for x, y in zip(a, b, strict=True))
    if isinstance(a, dt.datetime | dt.time):
        return a == b and a.isoformat() == b.isoformat()
    return bool(a == b)
