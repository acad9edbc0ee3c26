"""The one table from errors to exit codes, HTTP statuses and names, and the rebuild from a name."""

from __future__ import annotations

import pytest

from compute.admin.http_errors import REFUSAL_TYPES
from compute.error_codes import (
    ERROR_CODES,
    EXIT_CONFIG,
    EXIT_CONFLICT,
    EXIT_DESTINATION_DOWN,
    EXIT_FAILED,
    EXIT_NOT_FOUND,
    EXIT_UNREACHABLE,
    UNEXPECTED,
    error_code,
    error_from_name,
)
from compute.errors import (
    DestinationUnavailableError,
    DLQConflictError,
    DLQFullError,
    DLQStorageError,
    EngineUnreachableError,
    MessageEncodeError,
    MessageNotFoundError,
    OperationError,
    QueueNotFoundError,
    UsageError,
)
from config.errors import ConfigError


def test_names_are_unique_and_no_row_hides_a_later_one() -> None:
    names = [code.name for code in ERROR_CODES] + [UNEXPECTED.name]
    names += list(REFUSAL_TYPES.values())
    assert len(names) == len(set(names))
    for i, earlier in enumerate(ERROR_CODES):
        for later in ERROR_CODES[i + 1 :]:
            assert not issubclass(later.error, earlier.error), (earlier.name, later.name)


@pytest.mark.parametrize(
    ("error", "exit_code", "status"),
    [
        (EngineUnreachableError("x"), EXIT_UNREACHABLE, 400),
        (DestinationUnavailableError("x"), EXIT_DESTINATION_DOWN, 503),
        (QueueNotFoundError("x"), EXIT_NOT_FOUND, 404),
        (MessageNotFoundError("x"), EXIT_NOT_FOUND, 404),
        (DLQConflictError("x"), EXIT_CONFLICT, 409),
        (DLQFullError("max_queue_messages", "x"), EXIT_FAILED, 507),
        (UsageError("x"), EXIT_CONFIG, 400),
        (OperationError("x"), EXIT_FAILED, 400),
        (ConfigError(["x"]), EXIT_CONFIG, 500),
        (MessageEncodeError("m1", "x"), EXIT_FAILED, 400),
        (DLQStorageError("x"), EXIT_FAILED, 500),
        (RuntimeError("x"), EXIT_FAILED, 500),
    ],
)
def test_each_error_has_its_documented_exit_code_and_status(
    error: Exception, exit_code: int, status: int
) -> None:
    code = error_code(error)
    assert (code.exit_code, code.http_status) == (exit_code, status)


def test_a_name_rebuilds_its_class_or_one_with_the_same_exit_code() -> None:
    for code in ERROR_CODES:
        if code.http_status == 500:
            continue  # answered as "internal": never named over HTTP
        rebuilt = error_from_name(code.name, "the text")
        assert str(rebuilt) == "the text"
        assert error_code(rebuilt).exit_code == code.exit_code
        if type(rebuilt) is not code.error:
            assert type(rebuilt) is OperationError
    for other in [*REFUSAL_TYPES.values(), UNEXPECTED.name, None, "from-a-newer-engine"]:
        assert type(error_from_name(other, "x")) is OperationError
