"""How a failed write is classified and recorded, shared by live delivery and replay.

Both paths decide from the same things: the kind a destination gives a
failure (never raising, unclassified meaning transient), the failure context
a change stores (built here from the raised error: text truncated, stack cut
to its innermost frames by ``short_stack.py``, credentials masked), and the
context a change gets when it is parked behind an earlier parked change of
its key or for being too large to queue, and of changes queued untried
(store-and-forward, an open circuit, a live write past its deadline).
"""

from __future__ import annotations

import time
from dataclasses import replace

from compute.codec.failure_context import FailureContext
from compute.codec.message import DLQMessage
from compute.delivery.short_stack import short_stack
from config.redact import redact
from destinations.base import Destination
from destinations.errors import ClassifiedError, FailureKind, append_only_refusal
from destinations.records import ChangeRecord

# What a stored failure keeps of an error's text: enough to act on, bounded
# because every queued change carries one (its stack: ``short_stack``).
MAX_ERROR_MESSAGE_CHARS = 2000


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


def held_behind_failure(now: float, own: FailureContext | None = None) -> FailureContext:
    """Context for a change parked because an earlier change to its key is parked.

    A change that had failed on its own (``own``, from its queued message)
    keeps that history: its attempts, first failure, stack, and its last
    error named in the text, so an operator sees both reasons.
    """
    held = FailureContext(
        error_class="HeldBehindParkedChange",
        message="an earlier change to this key is parked; this one waits behind it",
        kind=FailureKind.PERMANENT,
        attempts=0,
        first_failure_at=now,
        last_failure_at=now,
    )
    if own is None or not own.attempts:
        return held
    return held._replace(
        message=_truncate(
            f"{held.message} (its own last failure: {own.error_class}: {own.message})",
            MAX_ERROR_MESSAGE_CHARS,
        ),
        stack=own.stack,
        attempts=own.attempts,
        first_failure_at=own.first_failure_at or now,
    )


def deferred_failure(reason: str, now: float) -> FailureContext:
    """Context for events queued without being tried (store-and-forward, open circuit)."""
    return FailureContext(
        error_class="Deferred",
        message=reason,
        kind=FailureKind.TRANSIENT,
        attempts=0,
        first_failure_at=now,
        last_failure_at=now,
    )


def deadline_failure(destination: Destination, deadline: float, now: float) -> FailureContext:
    """Context for events queued because their live write passed its deadline."""
    return FailureContext(
        error_class="LiveWriteDeadline",
        message=(
            f"the write to {destination.name} did not finish within "
            f"{deadline * 1000:.0f} ms (live_write_deadline_ms): queued; the write still "
            "in flight is settled against the queue when it ends"
        ),
        kind=FailureKind.TRANSIENT,
        attempts=0,
        first_failure_at=now,
        last_failure_at=now,
    )


def append_only_failure(record: ChangeRecord, now: float) -> FailureContext:
    """Context of an update or delete parked because its table is append-only."""
    return FailureContext(
        error_class="AppendOnlyTable",
        message=append_only_refusal(record),
        kind=FailureKind.PERMANENT,
        attempts=0,
        first_failure_at=now,
        last_failure_at=now,
    )


def too_large_failure(size: int, limit: int, cause: FailureContext, now: float) -> FailureContext:
    """Context of a change parked because its DLQ message is over ``DLQ_MAX_MESSAGE_BYTES``."""
    return FailureContext(
        error_class="MessageTooLarge",
        message=(
            f"change of {size} bytes (encoded) is over DLQ_MAX_MESSAGE_BYTES ({limit} bytes): "
            f"parked instead of queued; it was being queued after {cause.error_class}: "
            f"{cause.message}"
        ),
        kind=FailureKind.PERMANENT,
        code=cause.code,
        attempts=cause.attempts,
        first_failure_at=cause.first_failure_at or now,
        last_failure_at=now,
    )


def capture_failure(
    error: BaseException,
    classified: ClassifiedError | None = None,
    *,
    attempts: int = 1,
    now: float | None = None,
) -> FailureContext:
    """Capture ``error`` (with its innermost frames) as a failure context.

    Credentials in the message or the stack are masked: both are stored
    with every message and shown by the admin API and exports.
    """
    when = time.time() if now is None else now
    return FailureContext(
        error_class=classified.error_class if classified else type(error).__name__,
        message=_truncate(
            redact(classified.message if classified else str(error)), MAX_ERROR_MESSAGE_CHARS
        ),
        kind=classified.kind if classified else FailureKind.TRANSIENT,
        code=classified.code if classified else None,
        stack=redact(short_stack(error)),
        attempts=attempts,
        first_failure_at=when,
        last_failure_at=when,
    )


def failed_again(context: FailureContext, error: ClassifiedError, now: float) -> FailureContext:
    """``context`` after one more failed attempt (first failure and stack kept)."""
    return context._replace(
        error_class=error.error_class,
        message=_truncate(redact(error.message), MAX_ERROR_MESSAGE_CHARS),
        kind=error.kind,
        code=error.code,
        attempts=context.attempts + 1,
        last_failure_at=now,
    )


def with_failure(
    message: DLQMessage, failure: FailureContext, attempts: int | None = None
) -> DLQMessage:
    """``message`` with ``failure`` (its attempts raised to ``attempts`` when given)."""
    if attempts is not None:
        failure = failure._replace(attempts=max(attempts, failure.attempts))
    return message._replace(failure=failure)


def _truncate(text: str, limit: int) -> str:
    return text if len(text) <= limit else text[: limit - 15] + "... [truncated]"
