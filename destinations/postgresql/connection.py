"""How the PostgreSQL destination opens a connection: bounded login, keepalives, UTC."""

from __future__ import annotations

import math
from typing import Any

import psycopg2
from psycopg2.extensions import connection as PgConnection


def connect(dsn: str, timeout: float, statement_timeout: float | None) -> PgConnection:
    """A new connection to ``dsn``: login within ``timeout`` seconds, statements within
    ``statement_timeout`` (None: the server's own)."""
    options: dict[str, Any] = {
        # libpq takes whole seconds and treats anything below 2 as 2.
        "connect_timeout": max(2, math.ceil(timeout)),
        "application_name": "rosetta",
        # Notice a peer that vanished mid-write instead of waiting forever.
        "keepalives": 1,
        "keepalives_idle": 30,
        "keepalives_interval": 10,
        "keepalives_count": 3,
    }
    # A datetime or time without an offset written to a column with a time
    # zone means UTC, whatever the server's default zone is.
    settings = ["-c TimeZone=UTC"]
    if statement_timeout is not None:
        settings.append(f"-c statement_timeout={max(1, int(statement_timeout * 1000))}")
    options["options"] = " ".join(settings)
    return psycopg2.connect(dsn, **options)
