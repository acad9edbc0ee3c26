"""A failed write's stack as a DLQ message stores it: the innermost frames, one line per cause.

Python's own traceback of a destination error runs to 4 KB: absolute paths,
a line of carets under each call, and every frame again for each chained
exception (a row isolated after its batch failed repeats the batch's whole
stack). Every queued and parked change carries its failure's stack, so this
keeps what an operator acts on: the innermost ``MAX_STACK_FRAMES`` frames of
the error itself (the writer thread down to the driver call), paths relative
to the import root (``destinations/postgresql/apply.py``,
``psycopg2/extras.py``), the error's own line, and one line per chained
exception with its innermost frame::

    Traceback (most recent call last; innermost 8 of 13 frames):
      File "compute/runtime/writer_thread.py", line 70, in _run
        result = call(*args)
      ...
      File "psycopg2/extras.py", line 1299, in execute_values
        cur.execute(b''.join(parts))
    psycopg2.errors.NotNullViolation: null value in column "email" ...
    while handling: psycopg2.errors.NotNullViolation: ... (psycopg2/extras.py, line 1299)

At most ``MAX_STACK_CHARS`` characters: outer frames give way first.
"""

from __future__ import annotations

import functools
import os
import sys
import traceback
from collections.abc import Iterator

MAX_STACK_FRAMES = 8
MAX_STACK_CHARS = 1500
# Chained exceptions listed (``raise ... from``, or raised while handling another).
MAX_CHAINED = 3
# One source line, the error's text, a chained exception's first line, at most.
_MAX_SOURCE_CHARS = 160
_MAX_EXCEPTION_CHARS = 300
_MAX_CAUSE_CHARS = 160
_TRUNCATED = "... [truncated]"


def short_stack(error: BaseException) -> str:
    """``error``'s stack, short (see the module docstring); credentials are not masked here.

    Within ``MAX_STACK_CHARS``, outer frames give way first: the innermost
    frame, the error's line and its causes' lines are always there.
    """
    tail = [exception_line(error)]
    for how, chained in _chain(error):
        inner = traceback.extract_tb(chained.__traceback__)[-1:]
        where = f" ({short_path(inner[0].filename)}, line {inner[0].lineno})" if inner else ""
        tail.append(f"{how}: {exception_line(chained, first_line=True)}{where}")
    frames = traceback.extract_tb(error.__traceback__)
    budget = MAX_STACK_CHARS - sum(len(line) + 1 for line in tail) - 60  # the header
    kept: list[str] = []
    for frame in reversed(frames[-MAX_STACK_FRAMES:]):
        text = f'  File "{short_path(frame.filename)}", line {frame.lineno}, in {frame.name}'
        source = (frame.line or "").strip()
        if source:
            text += "\n    " + _clip(source, _MAX_SOURCE_CHARS)
        budget -= len(text) + 1
        if budget < 0 and kept:
            break
        kept.append(text)
    shown = f"; innermost {len(kept)} of {len(frames)} frames" if len(kept) < len(frames) else ""
    text = "\n".join([f"Traceback (most recent call last{shown}):", *reversed(kept), *tail])
    return text if len(text) <= MAX_STACK_CHARS else _clip(text, MAX_STACK_CHARS)


def exception_line(error: BaseException, *, first_line: bool = False) -> str:
    """``Class: text`` as Python prints it (module-qualified), clipped to a few hundred chars."""
    text = "".join(traceback.format_exception_only(type(error), error)).strip()
    if first_line:
        text = text.partition("\n")[0]
    return _clip(text, _MAX_CAUSE_CHARS if first_line else _MAX_EXCEPTION_CHARS)


def _chain(error: BaseException) -> Iterator[tuple[str, BaseException]]:
    seen = {id(error)}
    current = error
    for _ in range(MAX_CHAINED):
        if current.__cause__ is not None:
            how, current = "caused by", current.__cause__
        elif current.__context__ is not None and not current.__suppress_context__:
            how, current = "while handling", current.__context__
        else:
            return
        if id(current) in seen:
            return
        seen.add(id(current))
        yield how, current


@functools.lru_cache(maxsize=512)
def short_path(filename: str) -> str:
    """``filename`` relative to the longest import root (``sys.path`` entry) holding it."""
    for root in _import_roots():
        if filename.startswith(root):
            return filename[len(root) :]
    return filename


def _import_roots() -> list[str]:
    roots = {os.path.join(os.path.abspath(entry or os.curdir), "") for entry in sys.path}
    return sorted(roots, key=len, reverse=True)


def _clip(text: str, limit: int) -> str:
    return text if len(text) <= limit else text[: limit - len(_TRUNCATED)] + _TRUNCATED
