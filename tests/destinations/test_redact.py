"""Destinations mask their configured credentials in every error text they hand out."""

from __future__ import annotations

import pytest

from config.redact import MASK

SECRET = "s3cret"


def test_postgresql_refuses_a_malformed_dsn_and_masks_its_password_in_errors() -> None:
    import psycopg2

    from config.errors import ConfigError
    from destinations.postgresql.destination import PostgreSQLDestination

    with pytest.raises(ConfigError) as caught:
        PostgreSQLDestination("1", "PG", "postgresql://user:s3cret@[::1/db")
    assert str(caught.value).startswith("destination PG (ID=1): dsn: invalid DSN: ")
    assert SECRET not in str(caught.value)
    dest = PostgreSQLDestination("1", "PG", "host=127.0.0.1 port=1 password=s3cret-pw")
    verdict = dest.classify_error(psycopg2.OperationalError("server said: s3cret-pw is wrong"))
    assert verdict.message == f"server said: {MASK} is wrong"
    assert dest.test_connection(timeout=2.0) is False
    assert dest.last_health_error is not None and "s3cret-pw" not in dest.last_health_error
    dest.close()


def test_snowflake_masks_its_password_in_errors() -> None:
    from snowflake.connector import errors as sf_errors

    from destinations.snowflake.destination import SnowflakeDestination

    dest = SnowflakeDestination(
        "2", "SF", account="a", user="u", password="s3cret-pw", database="D", schema="S"
    )
    error = sf_errors.ProgrammingError(msg="rejected s3cret-pw for u", errno=390100)
    assert "s3cret-pw" not in dest.classify_error(error).message
    assert MASK in dest.classify_error(error).message
