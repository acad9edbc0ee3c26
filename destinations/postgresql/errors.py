"""Classifies psycopg2 errors: transient, row-level, table-level or a refused login."""

from __future__ import annotations

from collections.abc import Callable

import psycopg2

from config.redact import first_line
from destinations.errors import (
    ClassifiedError,
    DestinationError,
    FailureKind,
    PermanentDestinationError,
    TableLevelDestinationError,
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
# Failures of the target, not of the row: every change of the table fails the
# same way until someone fixes the table or the grant, so the queue is held in
# order (nothing parked) and retried. 42P01 undefined table, 42703 undefined
# column, 42P10 no unique or exclusion constraint matching ON CONFLICT, 42501
# insufficient privilege, 3F000 invalid schema; also 42704 undefined object
# (a type or sequence the target's columns or defaults use, dropped) and 42809
# wrong object type (the target is now a view or a sequence): both are about
# the target's definition, whatever the row holds. Other 42xxx codes (syntax,
# datatype mismatch, ambiguous column, ...) stay row-level: a value can cause them.
_TABLE_CODES = frozenset({"42P01", "42703", "42P10", "42501", "3F000", "42704", "42809"})
# The server refused the login: 28P01 invalid password, 28000 invalid
# authorization (no pg_hba.conf entry, no such role, cannot log in).
_AUTH_CLASSES = frozenset({"28"})
# libpq reports a refused login without a SQLSTATE: recognised by its text.
_AUTH_TEXTS = (
    "password authentication failed",
    "no pg_hba.conf entry",
    "authentication failed",
    "is not permitted to log in",
    "password is required",
    "password must be supplied",
)


def classify(error: BaseException, mask: Callable[[str], str]) -> ClassifiedError:
    """Transient (retry later), row-level (park) or table-level (hold), by SQLSTATE;
    a refused login is transient and says so. ``mask`` redacts the text."""
    code = getattr(error, "pgcode", None)
    message = mask(first_line(error))
    refused = _login_refused(error)
    if refused:
        kind = FailureKind.TRANSIENT
    else:
        kind = _kind_of(error)
    lost = refused or _connection_lost(error)
    return ClassifiedError(kind, type(error).__name__, message, code, lost, refused)


def _login_refused(error: BaseException) -> bool:
    code = getattr(error, "pgcode", None)
    if isinstance(error, psycopg2.Error) and code:
        return code[:2] in _AUTH_CLASSES
    if isinstance(error, psycopg2.OperationalError):
        text = str(error)
        return any(part in text for part in _AUTH_TEXTS)
    return False


def _kind_of(error: BaseException) -> FailureKind:
    if isinstance(error, TableLevelDestinationError):
        return FailureKind.TABLE
    if isinstance(error, PermanentDestinationError):
        return FailureKind.PERMANENT
    if isinstance(error, TransientDestinationError | DestinationError):
        return FailureKind.TRANSIENT
    code = getattr(error, "pgcode", None)
    if isinstance(error, psycopg2.Error) and code:
        if code in _TRANSIENT_CODES or code[:2] in _TRANSIENT_CLASSES:
            return FailureKind.TRANSIENT
        if code in _TABLE_CODES:
            return FailureKind.TABLE
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
