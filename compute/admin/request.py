"""One admin API request: its path parameters, query and body, read within the limits."""

from __future__ import annotations

import json
from collections.abc import Iterator
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler
from pathlib import Path
from typing import Any

from compute.admin.http_errors import BadRequest, HTTPError
from compute.admin.json_limits import MAX_BODY_DEPTH, loads
from compute.admin.spool_files import UPLOAD_PREFIX, ensure_room, temp_file
from compute.queue_id import QueueId

MAX_JSON_BODY = 1024 * 1024
JSON_CONTENT_TYPE = "application/json"
# The import body is the export file: JSON lines. Both common names are accepted.
IMPORT_CONTENT_TYPE = "application/x-ndjson"
IMPORT_CONTENT_TYPES = (IMPORT_CONTENT_TYPE, "application/jsonl")
CHUNK = 1024 * 1024


@dataclass
class Request:
    method: str
    path: str
    params: dict[str, str]
    query: dict[str, list[str]]
    headers: Any
    _handler: BaseHTTPRequestHandler
    _body: dict[str, Any] | None = None
    max_body: int = MAX_JSON_BODY  # for body_to_file (the import upload)

    def json(self) -> dict[str, Any]:
        """The JSON object body (``{}`` when empty); BadRequest otherwise."""
        if self._body is None:
            length = self.length(MAX_JSON_BODY)
            raw = self._read_exactly(length)
            if not raw.strip():
                self._body = {}
            else:
                try:
                    data = loads(raw, MAX_BODY_DEPTH)
                except (ValueError, UnicodeDecodeError) as error:
                    raise BadRequest(f"body is not JSON: {error}") from None
                if not isinstance(data, dict):
                    raise BadRequest("body must be a JSON object")
                self._body = data
        return self._body

    def _read_exactly(self, length: int) -> bytes:
        return b"".join(self._body_chunks(length))

    def _body_chunks(self, length: int) -> Iterator[bytes]:
        """The body's ``length`` bytes in chunks, never more; BadRequest if it ends early."""
        left = length
        while left > 0:
            chunk = self._handler.rfile.read(min(CHUNK, left))
            if not chunk:
                raise BadRequest(f"body ended after {length - left} of {length} bytes")
            yield chunk
            left -= len(chunk)
        self._handler.body_pending = False  # type: ignore[attr-defined]

    def body_to_file(self, directory: Path, floor_bytes: int) -> Path:
        """Stream the raw body into a temporary file in ``directory``.

        Refused (507) when it would leave less than ``floor_bytes`` free there;
        at most ``length()`` bytes are read, whatever the client sends. The file
        is removed on every failure (short body, disconnect, timeout, disk).
        """
        length = self.length(self.max_body, "ROSETTA_ADMIN_MAX_BODY_MB")
        ensure_room(directory, length, floor_bytes, "the upload")
        with temp_file(directory, UPLOAD_PREFIX, "wb", "store the upload") as (path, out):
            try:
                for chunk in self._body_chunks(length):
                    out.write(chunk)
            except (TimeoutError, ConnectionError) as error:  # the client stalled or left
                raise BadRequest(f"the upload stopped: {error}") from None
        return path

    def length(self, limit: int, setting: str | None = None) -> int:
        """Content-Length, checked against ``limit`` (set by ``setting``) before any read."""
        if self.headers.get("Transfer-Encoding"):
            raise HTTPError(
                "chunked request bodies are not supported: send Content-Length", status=411
            )
        text = self.headers.get("Content-Length") or "0"
        try:
            length = int(text)
        except ValueError:
            raise BadRequest(f"bad Content-Length {text!r}") from None
        if length < 0:
            raise BadRequest(f"bad Content-Length {text!r}")
        if length > limit:
            raise HTTPError(
                f"body too large ({length} bytes, at most {limit}"
                + (f" set by {setting})" if setting else ")"),
                status=413,
                limit_bytes=limit,
            )
        return length

    def flag(self, name: str) -> bool:
        """A boolean query parameter (``true/false/1/0/yes/no``, absent = false)."""
        values = self.query.get(name)
        if not values:
            return False
        text = values[-1].strip().lower()
        if text in ("1", "true", "yes", ""):
            return True
        if text in ("0", "false", "no"):
            return False
        raise BadRequest(f"query parameter {name!r}={values[-1]!r}: expected true or false")

    def integer(self, name: str, default: int, low: int, high: int) -> int:
        values = self.query.get(name)
        if not values:
            return default
        try:
            value = int(values[-1])
        except ValueError:
            value = low - 1
        if not low <= value <= high:
            raise BadRequest(
                f"query parameter {name!r}={values[-1]!r}: expected an integer {low}..{high}"
            )
        return value

    def queue_param(self) -> QueueId:
        """The ``{queue}`` of the path."""
        return queue_arg(self.params["queue"], "queue in path")

    def optional_queue(self) -> QueueId | None:
        """The body's optional ``queue`` field."""
        text = body_field(self.json(), "queue", str)
        return queue_arg(text, "field 'queue'") if text else None


def body_field(body: dict[str, Any], name: str, kind: type, *, required: bool = False) -> Any:
    """``body[name]`` checked against ``kind``; BadRequest naming the field otherwise."""
    if name not in body or body[name] is None:
        if required:
            raise BadRequest(f"field {name!r} is required")
        return None
    value = body[name]
    if kind is not bool and isinstance(value, bool) or not isinstance(value, kind):
        raise BadRequest(f"field {name!r} must be a {kind.__name__}, got {json.dumps(value)}")
    return value


def queue_arg(text: str, where: str) -> QueueId:
    try:
        return QueueId.parse(text)
    except ValueError as error:
        raise BadRequest(f"{where}: {error}") from None
