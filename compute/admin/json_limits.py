"""JSON parsing with a nesting limit, for everything the admin side reads from outside.

Python's ``json`` recurses once per nesting level and raises ``RecursionError``
(not ``ValueError``) on deep input; anything that later walks the value
recursively can hit the same wall. ``loads`` turns both into a ``ValueError``
naming the limit, so a hostile body or import line is a clear 400 or a
named line, never a crash.
"""

from __future__ import annotations

import json
from typing import Any

# Request bodies of the admin API are flat objects; a few levels are plenty.
MAX_BODY_DEPTH = 32
# Export lines carry row images (JSON columns nest); 500 leaves room for them
# and stays well under Python's recursion limit (1000) for the parser and untag.
MAX_LINE_DEPTH = 500


class JSONTooDeepError(ValueError):
    """The JSON text nests arrays/objects more deeply than allowed."""


def loads(text: str | bytes, max_depth: int) -> Any:
    """``json.loads(text)``; ``JSONTooDeepError`` past ``max_depth`` levels,
    ``json.JSONDecodeError``/``UnicodeDecodeError`` for bad text as usual."""
    try:
        value = json.loads(text)
    except RecursionError:
        raise JSONTooDeepError(
            f"JSON nested too deeply (more than {max_depth} levels of arrays/objects)"
        ) from None
    _check_depth(value, max_depth)
    return value


def _check_depth(value: Any, max_depth: int) -> None:
    """Raise ``JSONTooDeepError`` if ``value`` nests deeper than ``max_depth`` (no recursion)."""
    if not isinstance(value, dict | list):
        return
    stack: list[tuple[Any, int]] = [(value, 1)]
    while stack:
        current, depth = stack.pop()
        if depth > max_depth:
            raise JSONTooDeepError(
                f"JSON nested too deeply (more than {max_depth} levels of arrays/objects)"
            )
        children = current.values() if isinstance(current, dict) else current
        stack.extend((c, depth + 1) for c in children if isinstance(c, dict | list))
