"""How a failed write is classified, shared by live delivery and replay.

Both paths decide from the same two things: the kind a destination gives a
failure (never raising, unclassified meaning transient), and the failure
context a change gets when it is parked behind an earlier parked change of
its key.
"""

from __future__ import annotations

from dataclasses import replace

from compute.codec.message import FailureContext
from config.redact import redact
from destinations.base import Destination
from destinations.errors import ClassifiedError, FailureKind


def classify_or_transient(destination: Destination, error: BaseException) -> ClassifiedError:
    """``destination.classify_error`` that never raises: unclassified means transient.

    Its message is logged, stored and shown, so credentials in it are masked
    here too, whatever the destination did (only on the failure path).
    """
    try:
        classified = destination.classify_error(error)
    except Exception:
        classified = ClassifiedError(FailureKind.TRANSIENT, type(error).__name__, str(error))
    return replace(classified, message=redact(classified.message))


def held_behind_failure(now: float) -> FailureContext:
    """Context for a change parked because an earlier change to its key is parked."""
    return FailureContext(
        error_class="HeldBehindParkedChange",
        message="an earlier change to this key is parked; this one waits behind it",
        kind=FailureKind.PERMANENT,
        attempts=0,
        first_failure_at=now,
        last_failure_at=now,
    )
