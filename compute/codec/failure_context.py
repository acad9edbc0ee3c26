"""Why a change is in the DLQ: the failure context every DLQ message carries.

``from_exception`` and ``failed_again`` build it from a raised error, its
text and stack truncated and with credentials masked.
"""

from __future__ import annotations

import time
import traceback
from typing import NamedTuple

from config.redact import redact
from destinations.errors import ClassifiedError, FailureKind

MAX_ERROR_MESSAGE_CHARS = 2000
MAX_STACK_CHARS = 4000


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

    @classmethod
    def from_exception(
        cls,
        error: BaseException,
        classified: ClassifiedError | None = None,
        *,
        attempts: int = 1,
        now: float | None = None,
    ) -> FailureContext:
        """Capture ``error`` (with its truncated stack) as a failure context.

        Credentials in the message or the stack are masked: both are stored
        with every message and shown by the admin API and exports.
        """
        when = time.time() if now is None else now
        stack = "".join(traceback.format_exception(type(error), error, error.__traceback__))
        return cls(
            error_class=classified.error_class if classified else type(error).__name__,
            message=_truncate(
                redact(classified.message if classified else str(error)), MAX_ERROR_MESSAGE_CHARS
            ),
            kind=classified.kind if classified else FailureKind.TRANSIENT,
            code=classified.code if classified else None,
            stack=_truncate_stack(redact(stack)),
            attempts=attempts,
            first_failure_at=when,
            last_failure_at=when,
        )

    def failed_again(self, error: ClassifiedError, now: float) -> FailureContext:
        """The context after one more failed attempt."""
        return self._replace(
            error_class=error.error_class,
            message=_truncate(redact(error.message), MAX_ERROR_MESSAGE_CHARS),
            kind=error.kind,
            code=error.code,
            attempts=self.attempts + 1,
            last_failure_at=now,
        )


def _truncate(text: str, limit: int) -> str:
    return text if len(text) <= limit else text[: limit - 15] + "... [truncated]"


def _truncate_stack(stack: str) -> str:
    # The innermost frames say most; keep the tail.
    return stack if len(stack) <= MAX_STACK_CHARS else "[truncated] ..." + stack[-MAX_STACK_CHARS:]
