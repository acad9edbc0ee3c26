"""``redact``: credentials never survive into an error text that is logged or stored."""

from __future__ import annotations

import pytest

from config.redact import MASK, redact

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
