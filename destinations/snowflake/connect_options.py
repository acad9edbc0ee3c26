"""The Snowflake connector's connect arguments: one credential, timeouts bounded by a write.

A destination takes exactly one credential: a password, a private key (key-pair
authentication, optionally encrypted with a passphrase), an OAuth token, or an
``authenticator`` that needs none of these (an Okta URL, ``externalbrowser``).
A private key is read and decrypted here with ``cryptography`` at start-up, so
a wrong passphrase or a damaged key stops start-up naming the option, and the
connector is handed the unencrypted DER bytes its ``private_key`` takes.

The connector retries a failed request until its own ``network_timeout``
(default: forever), backing off up to 16 s between attempts, each attempt
waiting up to ``socket_timeout`` (default 60 s). ``Timeouts`` derives all three
from ``write_timeout`` so that a write during an outage fails within it.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from cryptography.hazmat.primitives import serialization

from config.errors import ConfigError

# What ``authenticator`` accepts besides an Okta URL (https://<org>.okta.com);
# the connector's names, case-insensitive.
AUTHENTICATORS = (
    "snowflake",  # password (the default with ``password``)
    "snowflake_jwt",  # key pair (the default with a private key)
    "oauth",  # OAuth access token (the default with ``token``)
    "programmatic_access_token",  # a programmatic access token in ``token``
    "externalbrowser",  # SSO through a browser: interactive, not for a service
    "username_password_mfa",
    "oauth_client_credentials",
    "workload_identity",
)
# These log in without a password, key or token of ours.
_NO_SECRET = frozenset(
    {"externalbrowser", "oauth_client_credentials", "workload_identity", "username_password_mfa"}
)
_TOKEN_AUTHENTICATORS = frozenset({"oauth", "programmatic_access_token"})

DEFAULT_WRITE_TIMEOUT = 60.0
DEFAULT_LOGIN_TIMEOUT = 30.0
_MAX_SOCKET_TIMEOUT = 60  # the connector's own default: one attempt never waits longer


def _positive(value: object) -> bool:
    return (
        isinstance(value, int | float)
        and not isinstance(value, bool)
        and math.isfinite(value)
        and value > 0
    )


def _whole(value: object) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and value >= 1


@dataclass(frozen=True, slots=True)
class Timeouts:
    """Seconds: the whole write, a login, one network attempt, the retry loop, the backoff cap."""

    write: float
    login: float
    socket: int
    network: int
    backoff_max: int
    # An explicit network_timeout also caps each statement's retries (fail fast).
    statement_cap: int | None = None

    @classmethod
    def of(
        cls,
        where: str,
        *,
        write_timeout: object,
        login_timeout: object,
        socket_timeout: object,
        network_timeout: object,
    ) -> Timeouts:
        """Checked and derived timeouts; a bad value is a ``ConfigError`` naming the option."""
        problems = [
            f"{where}: {name} must be a positive number of seconds, got {value!r}"
            for name, value in (("write_timeout", write_timeout), ("login_timeout", login_timeout))
            if not _positive(value)
        ]
        write = float(write_timeout) if _positive(write_timeout) else DEFAULT_WRITE_TIMEOUT  # type: ignore[arg-type]
        for name, value in (
            ("socket_timeout", socket_timeout),
            ("network_timeout", network_timeout),
        ):
            if value is not None and not (_whole(value) and int(value) <= write):  # type: ignore[call-overload]
                problems.append(
                    f"{where}: {name} must be a whole number of seconds from 1 to "
                    f"write_timeout ({write:g}), got {value!r}"
                )
        if problems:
            raise ConfigError(problems)
        # One attempt gets a sixth of the write (a blackholed server then
        # costs a few attempts, not the whole bound), at least 1 s, at most
        # the connector's default; the waits between attempts a quarter of that.
        socket = int(socket_timeout) if socket_timeout is not None else _sixth(write)  # type: ignore[call-overload]
        # Requests outside a statement (a cancel, a close) get one attempt's time.
        network = int(network_timeout) if network_timeout is not None else socket  # type: ignore[call-overload]
        timeouts = cls(
            write,
            float(login_timeout),  # type: ignore[arg-type]
            socket,
            max(1, network),
            max(1, socket // 4),
            int(network_timeout) if network_timeout is not None else None,  # type: ignore[call-overload]
        )
        if timeouts.retry_budget(write) is None:
            least = socket + timeouts.network + timeouts.backoff_max + 1
            raise ConfigError(
                [
                    f"{where}: write_timeout={write:g} leaves no time to retry a statement: "
                    f"set it to at least {least} (socket_timeout + network_timeout + "
                    "the wait between attempts + 1 s), or lower socket_timeout/network_timeout"
                ]
            )
        return timeouts

    def backoff_policy(self) -> Callable[[], Iterator[int]]:
        """The connector's waits between attempts: 1, 2, 4 ... seconds, capped, with jitter."""
        from snowflake.connector.backoff_policies import exponential_backoff

        return exponential_backoff(factor=2, base=1, cap=self.backoff_max, enable_jitter=True)

    def retry_budget(self, remaining: float) -> int | None:
        """Seconds the connector may keep retrying a request when ``remaining`` are left.

        Its retry loop checks the time only after an attempt fails and then
        sleeps and tries once more, so the last attempt and the sleep before
        it are kept out of the budget; and when the budget runs out, the
        connector cancels the statement with one more request (bounded by
        ``network``) and waits for it. None: too little time left to send
        the request and still end within it.
        """
        budget = math.floor(remaining - self.socket - self.backoff_max - self.network)
        if budget < 1:
            return None
        return budget if self.statement_cap is None else min(budget, self.statement_cap)


def _sixth(write: float) -> int:
    return max(1, min(_MAX_SOCKET_TIMEOUT, int(write // 6)))


def credential_options(
    where: str,
    *,
    password: str | None,
    private_key: str | bytes | None,
    private_key_file: str | None,
    private_key_passphrase: str | None,
    token: str | None,
    authenticator: str | None,
) -> dict[str, Any]:
    """The connector arguments for the one credential configured; ``ConfigError`` otherwise."""
    kinds = [
        name
        for name, value in (
            ("password", password),
            ("private_key", private_key),
            ("private_key_file", private_key_file),
            ("token", token),
        )
        if value
    ]
    auth = authenticator.lower() if authenticator else None
    accepted = (
        "set exactly one of password (password_env), private_key_file, private_key "
        "(private_key_env) or token (token_env), or an authenticator that needs none "
        "(externalbrowser, an Okta URL)"
    )
    if auth is not None and auth not in AUTHENTICATORS and not auth.startswith("https://"):
        raise ConfigError(
            [
                f"{where}: authenticator {authenticator!r} is not one of "
                f"{', '.join(AUTHENTICATORS)} or an Okta URL (https://<org>.okta.com)"
            ]
        )
    if len(kinds) > 1:
        raise ConfigError([f"{where}: several credentials set ({', '.join(kinds)}): {accepted}"])
    if not kinds and auth not in _NO_SECRET and not (auth or "").startswith("https://"):
        raise ConfigError([f"{where}: no credential set: {accepted}"])
    if private_key_passphrase and not (private_key or private_key_file):
        raise ConfigError(
            [f"{where}: private_key_passphrase is set without private_key or private_key_file"]
        )
    options: dict[str, Any] = {}
    if auth is not None:
        options["authenticator"] = authenticator
    if password:
        options["password"] = password
    elif private_key or private_key_file:
        options["private_key"] = private_key_der(
            where, private_key, private_key_file, private_key_passphrase
        )
        options["authenticator"] = "SNOWFLAKE_JWT"
    elif token:
        options["token"] = token
        if auth not in _TOKEN_AUTHENTICATORS:
            options["authenticator"] = "oauth"
    return options


def private_key_der(
    where: str,
    private_key: str | bytes | None,
    private_key_file: str | None,
    passphrase: str | None,
) -> bytes:
    """The unencrypted PKCS#8 DER bytes of a PEM private key (text or file), decrypted."""
    if private_key_file:
        option = "private_key_file"
        try:
            pem = Path(private_key_file).expanduser().read_bytes()
        except OSError as error:
            raise ConfigError(
                [f"{where}: private_key_file {private_key_file}: cannot read it: {error.strerror}"]
            ) from None
    else:
        option = "private_key"
        pem = private_key.encode() if isinstance(private_key, str) else (private_key or b"")
    secret = passphrase.encode() if passphrase else None
    try:
        key = serialization.load_pem_private_key(pem.strip() + b"\n", password=secret)
    except TypeError:
        # cryptography: "Password was not given but private key is encrypted" or the reverse.
        need = (
            "is encrypted: set private_key_passphrase_env"
            if secret is None
            else ("is not encrypted: remove private_key_passphrase_env")
        )
        raise ConfigError([f"{where}: {option}: the key {need}"]) from None
    except ValueError:
        raise ConfigError(
            [
                f"{where}: {option}: not a PEM private key that the passphrase opens "
                "(expected -----BEGIN PRIVATE KEY----- or -----BEGIN ENCRYPTED PRIVATE KEY-----, "
                "e.g. from openssl genrsa / openssl pkcs8 -topk8)"
            ]
        ) from None
    return key.private_bytes(
        encoding=serialization.Encoding.DER,
        format=serialization.PrivateFormat.PKCS8,
        encryption_algorithm=serialization.NoEncryption(),
    )
