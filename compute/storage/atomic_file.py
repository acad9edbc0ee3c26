"""Small files replaced whole: a crash leaves the old content or the new, never a mix.

Every side file the engine keeps (queue identity, segment counts, status,
attempts, tombstones, source offsets, the admin API's discovery file) is
written the same way: into a temporary file beside it, then renamed over it.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
from pathlib import Path
from typing import Any

# The temporary file ``write_atomic`` writes before its rename: ``.<name>.<pid>.tmp``.
_TEMPORARY = re.compile(r"^\.(.+)\.\d+\.tmp$")


def temporary_of(name: str) -> str | None:
    """The file that ``name``, a temporary file of ``write_atomic``, replaces (None if
    ``name`` is not one): it lives for one small write, or stays after a crash."""
    found = _TEMPORARY.match(name)
    return None if found is None else found.group(1)


def write_atomic(path: Path, data: bytes, *, durable: bool = False) -> None:
    """Replace ``path`` with ``data`` in one rename.

    ``durable`` also flushes the file and its directory to stable storage
    before returning (an OS crash then keeps the new content too). The
    temporary file is named after the process, so two processes pointed at
    one file by mistake never write into the same temporary file, and it is
    removed if anything fails.
    """
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    try:
        with open(tmp, "wb") as handle:
            handle.write(data)
            if durable:
                handle.flush()
                os.fsync(handle.fileno())
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            tmp.unlink()
        raise
    if durable:
        fsync_directory(path.parent)


def fsync_directory(directory: Path) -> None:
    """Flush ``directory``'s entries (a rename in it) to stable storage, where possible."""
    try:
        fd = os.open(directory, os.O_RDONLY)
    except OSError:
        return  # some platforms cannot open a directory; the rename is still atomic
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def json_bytes(data: Any, **options: Any) -> bytes:
    """``data`` as UTF-8 JSON; a lone surrogate (a queue name takes any str) has no
    UTF-8 form, so then every non-ASCII character is written as a ``\\u`` escape."""
    try:
        return json.dumps(data, ensure_ascii=False, **options).encode()
    except UnicodeEncodeError:
        return json.dumps(data, **options).encode()
