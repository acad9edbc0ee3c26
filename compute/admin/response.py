"""What an admin API route answers: a JSON body, a text body or a file to send."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any


@dataclass
class Response:
    status: int = 200
    body: Any = None
    file: Path | None = None  # sent as application/x-ndjson, then removed
    text: str | None = None  # text/plain (e.g. Prometheus metrics)
    content_type: str = "text/plain; version=0.0.4; charset=utf-8"
    headers: dict[str, str] = field(default_factory=dict)
