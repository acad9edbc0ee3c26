"""Why a change is in the DLQ: the failure context every DLQ message carries (a plain value).

Building one from a raised error (text and stack truncated, credentials
masked) is the delivery side's job: ``compute/delivery/failures.py``.
"""

from __future__ import annotations

from typing import NamedTuple

from destinations.errors import FailureKind


class FailureContext(NamedTuple):
    """Why a change is in the DLQ, and how often it has failed (an immutable value)."""

    error_class: str
    message: str
    kind: FailureKind = FailureKind.TRANSIENT
    code: str | None = None  # SQLSTATE or connector errno, when known
    stack: str = ""
    attempts: int = 1
    first_failure_at: float = 0.0
    last_failure_at: float = 0.0
