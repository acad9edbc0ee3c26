"""Snowflake credentials: key pair (encrypted or not), OAuth token, password; exactly one.

fakesnow accepts any credential, so what the connector is given is checked
by wrapping ``snowflake.connector.connect`` (the real one still runs), and a
key-pair write goes end to end through the real connector.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import snowflake.connector
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import rsa

from config.errors import ConfigError
from destinations.snowflake.destination import SnowflakeDestination
from tests.builders import SOURCE_TABLE, upsert
from tests.destinations.snowflake.items_table import item_rows, items_schema

pytestmark = pytest.mark.filterwarnings("ignore:Arrow output on a DB-API result:UserWarning")

DATABASE = "ROSETTA_KEYS"
PASSPHRASE = "correct horse battery"


@pytest.fixture(scope="module")
def rsa_key() -> rsa.RSAPrivateKey:
    return rsa.generate_private_key(public_exponent=65537, key_size=2048)


def pem(key: rsa.RSAPrivateKey, passphrase: str | None) -> str:
    encryption = (
        serialization.BestAvailableEncryption(passphrase.encode())
        if passphrase
        else serialization.NoEncryption()
    )
    return key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, encryption
    ).decode()


def der(key: rsa.RSAPrivateKey) -> bytes:
    return key.private_bytes(
        serialization.Encoding.DER,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )


@pytest.fixture
def connects(monkeypatch: pytest.MonkeyPatch) -> Iterator[list[dict[str, Any]]]:
    """The arguments of every ``snowflake.connector.connect`` call (the real connect runs)."""
    calls: list[dict[str, Any]] = []
    real = snowflake.connector.connect

    def recording(**kwargs: Any) -> Any:
        calls.append(kwargs)
        return real(**kwargs)

    monkeypatch.setattr(snowflake.connector, "connect", recording)
    yield calls


@pytest.fixture
def server_without_password(fakesnow_server: dict[str, Any]) -> dict[str, Any]:
    options = dict(fakesnow_server)
    del options["password"]
    return options


@pytest.fixture
def schema(fakesnow_server: dict[str, Any]) -> Iterator[str]:
    with items_schema(fakesnow_server, DATABASE, "K") as name:
        yield name


def rows(server: dict[str, Any], schema: str) -> list[tuple[Any, ...]]:
    return item_rows(server, DATABASE, schema)


def test_an_encrypted_key_pair_writes_and_the_connector_gets_the_key_not_a_password(
    server_without_password: dict[str, Any],
    fakesnow_server: dict[str, Any],
    schema: str,
    rsa_key: rsa.RSAPrivateKey,
    connects: list[dict[str, Any]],
) -> None:
    text = pem(rsa_key, PASSPHRASE)
    dest = SnowflakeDestination(
        "7",
        "Snowflake-Keys",
        database=DATABASE,
        schema=schema,
        private_key=text,
        private_key_passphrase=PASSPHRASE,
        **server_without_password,
    )
    try:
        dest.write_batch(SOURCE_TABLE, [upsert(1, {"name": "a"}, 1), upsert(2, {"name": "b"}, 2)])
    finally:
        dest.close()
    [given] = connects  # the destination's one session
    assert rows(fakesnow_server, schema) == [(1, "a"), (2, "b")]
    assert given["private_key"] == der(rsa_key)  # decrypted, as DER bytes
    assert given["authenticator"] == "SNOWFLAKE_JWT"
    assert "password" not in given and "token" not in given
    for secret in (PASSPHRASE, text):
        assert secret not in repr(dest) and secret not in str(dest)


def test_a_key_file_is_read_and_decrypted(
    server_without_password: dict[str, Any],
    schema: str,
    rsa_key: rsa.RSAPrivateKey,
    connects: list[dict[str, Any]],
    tmp_path: Path,
) -> None:
    key_file = tmp_path / "rsa_key.p8"
    key_file.write_text(pem(rsa_key, PASSPHRASE))
    dest = SnowflakeDestination(
        "7",
        "Snowflake-Keys",
        database=DATABASE,
        schema=schema,
        private_key_file=str(key_file),
        private_key_passphrase=PASSPHRASE,
        **server_without_password,
    )
    try:
        assert dest.test_connection(timeout=10.0) is True
    finally:
        dest.close()
    assert connects[-1]["private_key"] == der(rsa_key)
    assert "password" not in connects[-1]


def test_a_token_means_oauth(
    server_without_password: dict[str, Any], schema: str, connects: list[dict[str, Any]]
) -> None:
    dest = SnowflakeDestination(
        "7",
        "Snowflake-OAuth",
        database=DATABASE,
        schema=schema,
        token="oauth-access-token-1",
        **server_without_password,
    )
    try:
        assert dest.test_connection(timeout=10.0) is True
    finally:
        dest.close()
    given = connects[-1]
    assert (given["authenticator"], given["token"]) == ("oauth", "oauth-access-token-1")
    assert "password" not in given and "private_key" not in given


def make(**options: Any) -> Callable[[], SnowflakeDestination]:
    base = {"account": "acme", "user": "loader", "database": "D", "schema": "S"}
    return lambda: SnowflakeDestination("3", "Snowflake-Bad", **{**base, **options})


@pytest.mark.parametrize(
    ("options", "expected"),
    [
        ({}, "destination Snowflake-Bad (ID=3): no credential set: set exactly one of password"),
        (
            {"password": "pw-1234", "token": "tok-1234"},
            "several credentials set (password, token)",
        ),
        ({"private_key": "not a key"}, "private_key: not a PEM private key"),
        ({"private_key_file": "/nonexistent/key.p8"}, "private_key_file /nonexistent/key.p8: "),
        ({"password": "pw-1234", "private_key_passphrase": "x"}, "without private_key"),
        ({"password": "pw-1234", "authenticator": "kerberos"}, "authenticator 'kerberos' is not"),
        ({"password": "pw-1234", "write_timeout": 0}, "write_timeout must be a positive number"),
        (
            {"password": "pw-1234", "write_timeout": 10, "socket_timeout": 30},
            "socket_timeout must be a whole number of seconds from 1 to write_timeout (10)",
        ),
    ],
)
def test_bad_credentials_and_timeouts_stop_start_up_naming_the_option(
    options: dict[str, Any], expected: str
) -> None:
    with pytest.raises(ConfigError) as refused:
        make(**options)()
    assert expected in str(refused.value)
    assert "pw-1234" not in str(refused.value) and "tok-1234" not in str(refused.value)


def test_a_wrong_or_missing_passphrase_is_named(rsa_key: rsa.RSAPrivateKey) -> None:
    encrypted = pem(rsa_key, PASSPHRASE)
    with pytest.raises(ConfigError, match="private_key: the key is encrypted: set private_key_"):
        make(private_key=encrypted)()
    with pytest.raises(ConfigError, match="private_key: not a PEM private key that the pass"):
        make(private_key=encrypted, private_key_passphrase="wrong")()
    with pytest.raises(ConfigError, match="is not encrypted: remove private_key_passphrase"):
        make(private_key=pem(rsa_key, None), private_key_passphrase=PASSPHRASE)()
