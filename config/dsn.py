"""Checks a libpq connection string without connecting: what libpq would refuse in it."""

from __future__ import annotations

import psycopg2
from psycopg2.extensions import parse_dsn

from config.redact import first_line, redact

# Connection options libpq checks only when it connects (parsing accepts any
# text): checked up front so a typo is a start-up error, not a failed write.
_INTEGER_OPTIONS = (
    "connect_timeout",
    "keepalives",
    "keepalives_idle",
    "keepalives_interval",
    "keepalives_count",
    "tcp_user_timeout",
)
_CHOICE_OPTIONS = {
    "sslmode": ("disable", "allow", "prefer", "require", "verify-ca", "verify-full"),
    "gssencmode": ("disable", "prefer", "require"),
    "channel_binding": ("disable", "prefer", "require"),
}


def dsn_problem(dsn: str) -> str | None:
    """Why libpq would refuse ``dsn``, found without connecting; None when it looks fine.

    The answer never holds the password (libpq quotes a malformed URI whole).
    """
    if not isinstance(dsn, str):
        return f"expected a connection string, got {type(dsn).__name__}"
    if not dsn.strip():
        return "empty; expected a libpq connection string or postgresql:// URI"
    try:
        options = parse_dsn(dsn)
    except psycopg2.Error as error:
        return redact(first_line(error).removeprefix("invalid dsn: "))
    for port in options.get("port", "").split(","):
        if port.strip() and not (port.strip().isdigit() and 1 <= int(port) <= 65535):
            return f"port {port.strip()!r} is not a port number (1-65535)"
    for name in _INTEGER_OPTIONS:
        value = options.get(name, "").strip()
        if value and not value.lstrip("-").isdigit():
            return f"{name} {value!r} is not an integer"
    for name, choices in _CHOICE_OPTIONS.items():
        value = options.get(name)
        if value is not None and value not in choices:
            return f"{name} {value!r} is not one of {', '.join(choices)}"
    return None
