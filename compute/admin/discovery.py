"""``<DLQ_BASE_PATH>/admin.json``: how the CLI finds the running engine's admin API."""

from __future__ import annotations

import os
import time
from pathlib import Path
from typing import Any

from compute.admin.json_limits import MAX_BODY_DEPTH, loads
from compute.storage.atomic_file import json_bytes, write_atomic

DISCOVERY_FILE = "admin.json"


def write_discovery(base_path: Path, url: str, token_required: bool) -> Path:
    """Write ``<base>/admin.json`` (pid, url, whether a token is needed; never the token)."""
    path = Path(base_path) / DISCOVERY_FILE
    data = {
        "pid": os.getpid(),
        "url": url,
        "token_required": token_required,
        "started_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
    }
    write_atomic(path, json_bytes(data, indent=2) + b"\n")
    return path


def live_engine(base_path: Path) -> tuple[int, str] | None:
    """(pid, admin API url) when ``<base>/admin.json`` names a live process, else None."""
    info: dict[str, Any] | None = None
    try:
        info = loads((Path(base_path) / DISCOVERY_FILE).read_text(), MAX_BODY_DEPTH)
    except FileNotFoundError:
        info = None
    except (OSError, ValueError):
        info = None  # unreadable: treated as absent; the lock still protects the queues
    if isinstance(info, dict) and isinstance(info.get("pid"), int) and _pid_alive(info["pid"]):
        return int(info["pid"]), str(info.get("url", ""))
    return None


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True
