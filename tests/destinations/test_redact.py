"""``redact``: credentials never survive into an error text that is logged or stored."""

from __future__ import annotations

import pytest

from destinations.redact import MASK, redact

SECRET = "s3cret"


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        # libpq quoting a malformed URI
        (
            'invalid dsn: missing "]" in URI: "postgresql://user:s3cret@[::1/db"',
            'invalid dsn: missing "]" in URI: "postgresql://user:***@[::1/db"',
        ),
        ("postgresql://user:s3cret@host/db?x=1", "postgresql://user:***@host/db?x=1"),
        ("postgres://u:pa@s3cret@host/db", "postgres://u:***@host/db"),  # an unescaped @
        ("snowflake://u:s3cret@acct/db", "snowflake://u:***@acct/db"),
        # keyword DSNs, plain, spaced, quoted, escaped, unterminated
        ("host=x password=s3cret dbname", "host=x password=*** dbname"),
        ("host=x password = s3cret port=5", "host=x password = *** port=5"),
        ("host=x password='s3 cret' dbname=d", "host=x password=*** dbname=d"),
        ("host=x password='s3\\'cret' dbname=d", "host=x password=*** dbname=d"),
        ("host=x password='s3 cret", "host=x password=***"),
        ("sslpassword=s3cret host=x", "sslpassword=*** host=x"),
        ("PASSWORD=s3cret", "PASSWORD=***"),
        # URI query parameters
        (
            "postgresql://h/db?password=s3cret&sslmode=require",
            "postgresql://h/db?password=***&sslmode=require",
        ),
        # JSON, Python reprs, YAML-ish, SQL
        ('{"password": "s3cret", "user": "bob"}', '{"password": ***, "user": "bob"}'),
        ("{'token': 's3cret'}", "{'token': ***}"),
        ("private_key: s3cret", "private_key: ***"),
        ("private_key_passphrase=s3cret", "private_key_passphrase=***"),
        ("api_key=s3cret client_secret=s3cret", "api_key=*** client_secret=***"),
        ("ALTER USER bob PASSWORD 's3cret'", "ALTER USER bob PASSWORD ***"),
        (
            "key -----BEGIN PRIVATE KEY-----\nMIIs3cret\n-----END PRIVATE KEY----- end",
            "key *** end",
        ),
    ],
)
def test_masks_every_credential_form(text: str, expected: str) -> None:
    assert redact(text) == expected
    assert SECRET not in redact(text)


@pytest.mark.parametrize(
    "text",
    [
        'password authentication failed for user "bob"',
        "postgresql://host:5432/db",
        "postgresql://bob@host/db",
        "password_env=DEST_DSN names a variable, not a secret",
        'connection to server at "127.0.0.1", port 1 failed: Connection refused',
    ],
)
def test_leaves_ordinary_text_alone(text: str) -> None:
    assert redact(text) == text


def test_known_secrets_are_masked_wherever_they_appear() -> None:
    assert redact("login failed, tried s3cret-pw as is", ["s3cret-pw"]) == (
        f"login failed, tried {MASK} as is"
    )
    # too short to mask literally without masking ordinary words; patterns still apply
    assert redact("a password=abc b", ["abc", None]) == "a password=*** b"
    assert redact("abc", ["abc"]) == "abc"


# ---------------------------------------------------------------- at the destination boundary


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
