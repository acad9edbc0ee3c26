"""Classifies psycopg2 errors: transient or permanent, and whether the session was lost."""

from __future__ import annotations

from collections.abc import Callable

import psycopg2

from config.redact import first_line
from destinations.errors import (
    ClassifiedError,
    DestinationError,
    FailureKind,
    PermanentDestinationError,
    TransientDestinationError,
)

# SQLSTATE classes and codes (https://www.postgresql.org/docs/current/errcodes-appendix.html).
_TRANSIENT_CLASSES = frozenset({"08", "53", "57", "58"})
_TRANSIENT_CODES = frozenset({"40001", "40P01", "40003", "55P03", "55006"})
_PERMANENT_CLASSES = frozenset({"21", "22", "23", "42", "44", "0A", "2F", "P0", "40"})
# Errors about the session rather than the statement: connection exceptions,
# a killed backend (pg_terminate_backend, 57P01), a server crash or shutdown,
# a server still starting, no connection slots left.
_CONNECTION_CLASSES = frozenset({"08"})
_CONNECTION_CODES = frozenset({"57P01", "57P02", "57P03", "57P05", "53300"})


def classify(error: BaseException, mask: Callable[[str], str]) -> ClassifiedError:
    """Transient (retry later) or permanent (park), by SQLSTATE class; ``mask`` redacts the text."""
    kind = _kind_of(error)
    code = getattr(error, "pgcode", None)
    message = mask(first_line(error))
    return ClassifiedError(kind, type(error).__name__, message, code, _connection_lost(error))


def _kind_of(error: BaseException) -> FailureKind:
    if isinstance(error, PermanentDestinationError):
        return FailureKind.PERMANENT
    if isinstance(error, TransientDestinationError | DestinationError):
        return FailureKind.TRANSIENT
    code = getattr(error, "pgcode", None)
    if isinstance(error, psycopg2.Error) and code:
        if code in _TRANSIENT_CODES or code[:2] in _TRANSIENT_CLASSES:
            return FailureKind.TRANSIENT
        if code[:2] in _PERMANENT_CLASSES:
            return FailureKind.PERMANENT
        return FailureKind.TRANSIENT  # unknown: retry within the budget
    if isinstance(error, psycopg2.OperationalError | psycopg2.InterfaceError):
        return FailureKind.TRANSIENT  # lost or refused connection (libpq sets no SQLSTATE)
    if isinstance(error, psycopg2.DataError | psycopg2.IntegrityError | psycopg2.ProgrammingError):
        return FailureKind.PERMANENT  # client-side, e.g. a value psycopg2 cannot adapt
    if isinstance(error, ValueError):
        # psycopg2 refusing to send a value ("A string literal cannot contain NUL",
        # text that does not encode): the same change fails the same way every time.
        return FailureKind.PERMANENT
    return FailureKind.TRANSIENT


def _connection_lost(error: BaseException) -> bool:
    """True when ``error`` is about the session (lost, refused, killed), not the statement."""
    code = getattr(error, "pgcode", None)
    if isinstance(error, psycopg2.Error) and code:
        return code in _CONNECTION_CODES or code[:2] in _CONNECTION_CLASSES
    # libpq sets no SQLSTATE when the socket itself failed (reset, refused,
    # closed mid-statement, login timed out). A write cut by write_timeout is
    # not in this set: a statement that is slow for its data must still be
    # charged, or it would be retried forever.
    return isinstance(error, psycopg2.OperationalError | psycopg2.InterfaceError)
