"""Timestamps as operators read them: ISO 8601 UTC with milliseconds."""

from __future__ import annotations

import time


def iso(when: float | None) -> str | None:
    """``when`` (seconds since the epoch) as ``2026-12-01T10:00:00.123Z``; None stays None."""
    if when is None:
        return None
    return time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(when)) + f".{int(when % 1 * 1000):03d}Z"
