"""The ``backend`` fixture: every contract test runs once per destination (and PostgreSQL path)."""

from __future__ import annotations

import contextlib
import itertools
import uuid
from collections.abc import Iterator
from typing import Any

import pytest

from tests.destinations.contract.backends import (
    PG_VARIANTS,
    SF_DATABASE,
    Backend,
    FakeBackend,
    PostgreSQLBackend,
    SnowflakeBackend,
)
from tests.destinations.snowflake.expiring_sessions import expiring_sessions

# Snowflake (fakesnow) takes seconds a test: it runs in the full suite, not the fast one.
BACKENDS = [
    "fake",
    *(f"postgresql-{v}" for v in PG_VARIANTS),
    pytest.param("snowflake", marks=pytest.mark.slow),
]
_numbers = itertools.count(1)


@pytest.fixture(scope="session")
def sf_contract_admin(fakesnow_server: dict[str, Any]) -> Iterator[Any]:
    import snowflake.connector

    conn = snowflake.connector.connect(**fakesnow_server)
    conn.cursor().execute(f"CREATE DATABASE IF NOT EXISTS {SF_DATABASE}")
    yield conn
    conn.close()


@pytest.fixture(params=BACKENDS)
def backend(request: pytest.FixtureRequest) -> Iterator[Backend]:
    """A backend for this test; only the servers it needs are started."""
    name: str = request.param
    made: Backend
    with contextlib.ExitStack() as stack:
        if name == "fake":
            made = FakeBackend()
        elif name.startswith("postgresql-"):
            made = PostgreSQLBackend(
                name.removeprefix("postgresql-"),
                request.getfixturevalue("postgres_dsn"),
                request.getfixturevalue("pg_conn"),
                request.getfixturevalue("pg_schema"),
            )
        else:
            admin = request.getfixturevalue("sf_contract_admin")
            schema = f"C{next(_numbers)}_{uuid.uuid4().hex[:6].upper()}"
            admin.cursor().execute(f"CREATE SCHEMA {SF_DATABASE}.{schema}")
            sessions = stack.enter_context(
                expiring_sessions(request.getfixturevalue("monkeypatch"))
            )
            made = SnowflakeBackend(
                request.getfixturevalue("fakesnow_server"), admin, schema, sessions
            )
        stack.callback(made.close)
        yield made
