"""Classifies Snowflake connector errors: transient, row-level, table-level or a refused login."""

from __future__ import annotations

from collections.abc import Callable

from snowflake.connector import errors as sf_errors

from config.redact import first_line
from destinations.errors import (
    ClassifiedError,
    DestinationError,
    DestinationTimeoutError,
    FailureKind,
    PermanentDestinationError,
    TableLevelDestinationError,
)

# Connector errno values (snowflake.connector.errorcode) and server error codes.
_TRANSIENT_ERRNOS = frozenset(
    {
        250001,  # could not connect
        250002,  # connection closed
        250003,  # request failed (network)
        250005,  # server error
        251011,  # connection timeout
        251012,  # retryable code
        252007,  # failed to renew session
        603,  # internal error: processing aborted
        604,  # statement canceled
        625,  # warehouse/resource timeout
        630,  # statement reached its timeout
        390111,  # session no longer exists
        390112,  # session expired
        390113,  # master token not found
        390114,  # authentication token expired
        390115,  # master token invalid
    }
)
# Failures of the session rather than the statement: it could not be opened,
# was closed, or expired (and could not be renewed). Nothing in them is about
# the events, so replay does not charge them to their retry budget. A
# statement timeout (604, 630) is not among them: a statement that is slow for
# its data must still be charged, or it would be retried forever.
_SESSION_ERRNOS = frozenset(
    {
        250001,  # could not connect
        250002,  # connection is closed
        250003,  # request failed (network)
        251011,  # connection timeout during login
        251012,  # login retryable code
        252007,  # failed to renew session
        390111,  # session no longer exists
        390112,  # session expired
        390113,  # master token not found
        390114,  # authentication (master) token expired
        390115,  # master token invalid
    }
)
# Failures of the target, not of the row (hold the queue, park nothing):
# 002003 object does not exist or not authorized (a dropped table or schema, a
# revoked grant), 000904 invalid identifier (a dropped column), 003001
# insufficient privileges, 002043 object does not exist or operation cannot
# be performed (what the emulator, fakesnow, raises for a missing column).
_TABLE_ERRNOS = frozenset({2003, 904, 3001, 2043})
# The login was refused: 390100 incorrect username or password, 390101 user
# disabled, 390102 user temporarily locked, 390144 JWT token invalid, 390318
# OAuth access token expired; from the connector: 251005 no user, 251006 no
# password, 251008 invalid private key, 251010 JWT retry expired.
_AUTH_ERRNOS = frozenset({390100, 390101, 390102, 390144, 390318, 251005, 251006, 251008, 251010})
_SESSION_SQLSTATE_CLASSES = frozenset({"08"})  # connection exception (08001, 08003, ...)
_TRANSIENT_SQLSTATE_CLASSES = frozenset({"08", "40", "53", "57", "58"})
_PERMANENT_SQLSTATE_CLASSES = frozenset({"21", "22", "23", "42", "44", "0A"})


def classify(error: BaseException, mask: Callable[[str], str]) -> ClassifiedError:
    """Transient (retry later) or permanent (park); ``mask`` redacts the message."""
    errno = getattr(error, "errno", None)
    code = None
    if isinstance(error, sf_errors.Error) and errno is not None and errno != -1:
        code = f"{errno:06d}"
    refused = isinstance(error, sf_errors.Error) and errno in _AUTH_ERRNOS
    return ClassifiedError(
        FailureKind.TRANSIENT if refused else _kind_of(error),
        type(error).__name__,
        mask(first_line(error)),
        code,
        refused or connection_lost(error),
        refused,
    )


def _kind_of(error: BaseException) -> FailureKind:
    if isinstance(error, TableLevelDestinationError):
        return FailureKind.TABLE
    if isinstance(error, PermanentDestinationError):
        return FailureKind.PERMANENT
    if isinstance(error, DestinationError):
        return FailureKind.TRANSIENT
    if not isinstance(error, sf_errors.Error):
        return FailureKind.TRANSIENT  # network errors below the connector, unknowns
    errno = error.errno if isinstance(error.errno, int) else -1
    sqlstate = error.sqlstate if isinstance(error.sqlstate, str) else ""
    if errno in _TRANSIENT_ERRNOS or sqlstate[:2] in _TRANSIENT_SQLSTATE_CLASSES:
        return FailureKind.TRANSIENT
    if errno in _TABLE_ERRNOS:
        return FailureKind.TABLE
    if isinstance(error, sf_errors.IntegrityError | sf_errors.DataError):
        return FailureKind.PERMANENT
    if sqlstate[:2] in _PERMANENT_SQLSTATE_CLASSES:
        return FailureKind.PERMANENT
    if isinstance(error, sf_errors.ProgrammingError) and (
        1000 <= errno < 3000 or 100000 <= errno < 101000
    ):
        return FailureKind.PERMANENT  # SQL compilation (00xxxx) and data/DML (100xxx) errors
    # Network, HTTP 5xx/429, closed sessions, and anything unknown: retry
    # within the budget.
    return FailureKind.TRANSIENT


def connection_lost(error: BaseException) -> bool:
    """True when ``error`` is about the session (lost, closed, expired), not the statement."""
    if isinstance(error, sf_errors.Error):
        errno = error.errno if isinstance(error.errno, int) else -1
        sqlstate = error.sqlstate if isinstance(error.sqlstate, str) else ""
        return errno in _SESSION_ERRNOS or sqlstate[:2] in _SESSION_SQLSTATE_CLASSES
    # Below the connector: a reset, refused or aborted socket; or no answer
    # within write_timeout (the session is dropped).
    return isinstance(error, ConnectionError | DestinationTimeoutError)
