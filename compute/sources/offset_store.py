"""Resume tokens of sources, one per source id, in a small JSON file replaced atomically.

The file looks like ``{"format": "rosetta-offsets", "version": 1, "offsets":
{"source_1": "1234"}}``. Each ``put`` writes a temporary file next to it and
renames it over the old one (``os.replace``), so a crash at any instant leaves
either the old file or the new one, never a mix. A file that does not parse
anyway (an OS crash without fsync, a hand edit) is refused loudly: restarting
from zero would silently re-apply the whole history.
"""

from __future__ import annotations

import json
import logging
import os
import threading
import time
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from compute.sources.base import SourceError
from compute.storage.atomic_file import write_atomic

logger = logging.getLogger(__name__)

_FORMAT = "rosetta-offsets"
_VERSION = 1


class OffsetStore:
    """Persists one resume token (a string) per source id.

    ``allow_reset=True`` turns a corrupt file into an ERROR log and an empty
    store (every source starts from the beginning; the bad file is kept aside
    as ``<name>.corrupt-<unix time>``); by default a corrupt file raises
    ``SourceError``. ``fsync=True`` also flushes the file and its directory to
    disk on each write (survives an OS crash); without it a process crash
    still loses nothing, an OS crash may lose the latest tokens (the sources
    then re-read a little, which idempotent destinations absorb).
    """

    def __init__(
        self, path: str | os.PathLike[str], *, allow_reset: bool = False, fsync: bool = False
    ) -> None:
        self.path = Path(path)
        self._fsync = fsync
        self._lock = threading.Lock()
        self._offsets: dict[str, str] = self._load(allow_reset)

    def __repr__(self) -> str:
        return f"OffsetStore({str(self.path)!r})"

    def get(self, source_id: str) -> str | None:
        """The stored token of ``source_id``, or None if it has none (start from the beginning)."""
        with self._lock:
            return self._offsets.get(source_id)

    def put(self, source_id: str, token: str) -> None:
        """Store ``token`` for ``source_id``; durable against a process crash on return."""
        if not isinstance(token, str):
            raise TypeError(f"resume token must be a str, not {type(token).__name__}")
        with self._lock:
            if self._offsets.get(source_id) == token:
                return
            offsets = dict(self._offsets)
            offsets[source_id] = token
            self._write(offsets)
            self._offsets = offsets

    def delete(self, source_id: str) -> None:
        """Forget ``source_id``'s token (it starts from the beginning next time)."""
        with self._lock:
            if source_id not in self._offsets:
                return
            offsets = dict(self._offsets)
            del offsets[source_id]
            self._write(offsets)
            self._offsets = offsets

    def all(self) -> dict[str, str]:
        """A copy of every stored token."""
        with self._lock:
            return dict(self._offsets)

    # --- file ------------------------------------------------------------------------------------

    def _load(self, allow_reset: bool) -> dict[str, str]:
        try:
            data = self.path.read_bytes()
        except FileNotFoundError:
            return {}
        except OSError as exc:
            raise SourceError(f"cannot read offset file {self.path}: {exc}") from exc
        try:
            return _parse(data)
        except ValueError as exc:
            problem = f"offset file {self.path} is corrupt: {exc}"
            if not allow_reset:
                raise SourceError(
                    f"{problem}; refusing to restart every source from the beginning. "
                    "Fix or remove the file, or allow a reset explicitly."
                ) from exc
            aside = self.path.with_name(f"{self.path.name}.corrupt-{int(time.time())}")
            try:
                os.replace(self.path, aside)
            except OSError as move_error:
                aside_text = f"(could not move it aside: {move_error})"
            else:
                aside_text = f"(kept as {aside})"
            logger.error(
                "offset file corrupt, every source restarts from the beginning file=%s %s "
                "reason=%s",
                self.path,
                aside_text,
                exc,
            )
            return {}

    def _write(self, offsets: Mapping[str, str]) -> None:
        body = json.dumps(
            {"format": _FORMAT, "version": _VERSION, "offsets": dict(offsets)},
            indent=1,
            sort_keys=True,
        ).encode()
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            write_atomic(self.path, body, durable=self._fsync)
        except OSError as exc:
            raise SourceError(f"cannot write offset file {self.path}: {exc}") from exc


def _parse(data: bytes) -> dict[str, str]:
    """Validated offsets from the file's bytes; ValueError says what is wrong."""
    if not data.strip():
        raise ValueError("file is empty")
    try:
        doc: Any = json.loads(data.decode("utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise ValueError(f"not valid JSON ({exc})") from None
    if not isinstance(doc, dict) or doc.get("format") != _FORMAT:
        raise ValueError(f"not a {_FORMAT} document")
    if doc.get("version") != _VERSION:
        raise ValueError(f"unsupported version {doc.get('version')!r} (this code reads {_VERSION})")
    offsets = doc.get("offsets")
    if not isinstance(offsets, dict):
        raise ValueError("'offsets' is not an object")
    for source_id, token in offsets.items():
        if not isinstance(token, str):
            raise ValueError(f"token of source {source_id!r} is not a string: {token!r}")
    return dict(offsets)
