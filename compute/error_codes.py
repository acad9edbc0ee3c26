"""The one table from an error to the CLI's exit code, the admin API's HTTP status and its name.

The admin API answers an error with its ``error_type`` (the name below); the
CLI rebuilds the same exception from that name and exits with the code below,
whether the error was raised in this process or in the engine. The README's
exit-code and HTTP tables describe this table.
"""

from __future__ import annotations

from dataclasses import dataclass

from compute.errors import (
    DestinationUnavailableError,
    DLQConflictError,
    DLQFullError,
    EngineUnreachableError,
    MessageNotFoundError,
    NotFoundError,
    OperationError,
    QueueNotFoundError,
    UsageError,
)
from config.errors import ConfigError, RosettaError

EXIT_OK = 0
EXIT_FAILED = 1  # runtime error, a failed pipeline, or an operation that failed
EXIT_CONFIG = 2  # configuration or usage error
EXIT_NOT_FOUND = 3  # no such queue, message or DLQ directory
EXIT_UNREACHABLE = 4  # the engine holds the queues but its admin API does not answer
EXIT_CONFLICT = 5  # the operation contradicts the queue's state (e.g. ids already present)
EXIT_DESTINATION_DOWN = 6  # a replay found its destination unreachable: nothing lost, retry later
# ``rosetta run`` ended with changes waiting for an operator: parked ones, or events its
# sources rejected; nothing is lost, everything is on disk.
EXIT_NEEDS_OPERATOR = 7


@dataclass(frozen=True, slots=True)
class ErrorCode:
    """How one kind of error shows: exit code, HTTP status and stable machine name."""

    error: type[Exception]
    name: str
    exit_code: int
    http_status: int


# First match wins: a subclass stands before its bases.
ERROR_CODES: tuple[ErrorCode, ...] = (
    ErrorCode(EngineUnreachableError, "engine_unreachable", EXIT_UNREACHABLE, 400),
    ErrorCode(DestinationUnavailableError, "destination_unavailable", EXIT_DESTINATION_DOWN, 503),
    ErrorCode(QueueNotFoundError, "queue_not_found", EXIT_NOT_FOUND, 404),
    ErrorCode(MessageNotFoundError, "message_not_found", EXIT_NOT_FOUND, 404),
    ErrorCode(NotFoundError, "not_found", EXIT_NOT_FOUND, 404),
    ErrorCode(DLQConflictError, "conflict", EXIT_CONFLICT, 409),
    ErrorCode(DLQFullError, "dlq_full", EXIT_FAILED, 507),
    ErrorCode(UsageError, "usage", EXIT_CONFIG, 400),
    ErrorCode(OperationError, "operation_failed", EXIT_FAILED, 400),
    # The admin API answers a 500 as ``internal`` with a generic text (the
    # engine log has the error), whatever the row's name.
    ErrorCode(ConfigError, "config", EXIT_CONFIG, 500),
    # A value the request carried that the operation cannot take.
    ErrorCode(ValueError, "invalid_value", EXIT_FAILED, 400),
)
# Every other exception: a bug, or trouble no row names.
UNEXPECTED = ErrorCode(Exception, "internal", EXIT_FAILED, 500)


def error_code(error: Exception) -> ErrorCode:
    """The table's row for ``error``."""
    for code in ERROR_CODES:
        if isinstance(error, code.error):
            return code
    return UNEXPECTED


def error_from_name(name: object, message: str) -> RosettaError:
    """The error an admin API answer names in ``error_type``, rebuilt around its message.

    Kinds that carry more than a message (DLQ full, a bad value), the HTTP
    layer's own refusals and unknown names come back as ``OperationError``:
    their exit code is the same (``EXIT_FAILED``).
    """
    for code in ERROR_CODES:
        if code.name == name and _takes_a_message(code.error):
            error = code.error(message)
            assert isinstance(error, RosettaError)
            return error
    return OperationError(message)


def _takes_a_message(kind: type[Exception]) -> bool:
    return issubclass(kind, RosettaError) and kind.__init__ is RosettaError.__init__
