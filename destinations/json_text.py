"""JSON text of a value bound for a JSON column (json, jsonb, VARIANT), every number exact.

``json.dumps(value, default=str)`` writes a ``Decimal`` inside an object or an
array as a quoted string: ``{"price": 1.50}`` from the JSON-lines source (whose
fractional numbers are Decimals, to keep them exact) would land as
``{"price": "1.50"}``, a different JSON value, without an error. Here a
Decimal is written as the number it is, with every digit; other values the
JSON module does not know (dates, UUIDs) keep their text form.
"""

from __future__ import annotations

import json
from decimal import Decimal
from typing import Any


def json_text(value: Any) -> str:
    """``value`` as JSON text; Decimals (at any depth) as exact JSON numbers."""
    try:
        # The usual case: nothing the json module does not know, at C speed.
        return json.dumps(value)
    except TypeError:
        return "".join(_parts(value))


def _parts(value: Any) -> Any:
    if isinstance(value, Decimal):
        # str() of a finite Decimal is a valid JSON number ("1.50", "-0", "1E+3");
        # NaN and Infinity are not JSON, as for floats: the column refuses them.
        yield str(value)
    elif isinstance(value, dict):
        yield "{"
        for i, (key, item) in enumerate(value.items()):
            if i:
                yield ", "
            # The keys as json.dumps writes them (str, numbers, booleans, null).
            yield json.dumps({key: None})[1:-7]
            yield ": "
            yield from _parts(item)
        yield "}"
    elif isinstance(value, list | tuple):
        yield "["
        for i, item in enumerate(value):
            if i:
                yield ", "
            yield from _parts(item)
        yield "]"
    else:
        yield json.dumps(value, default=str)
