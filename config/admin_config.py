"""Where the admin HTTP API listens (``ROSETTA_ADMIN_*``): ``AdminConfig``, and how it is read."""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass, field

from config.env_values import MIB, Variables, int_in, megabytes, parse_group, seconds_in

LOOPBACK_HOSTS = frozenset({"127.0.0.1", "localhost", "::1"})


@dataclass(frozen=True)
class AdminConfig:
    """Where the engine's admin HTTP API listens (``ROSETTA_ADMIN_ADDR``/``_TOKEN``).

    ``port=0`` picks a free port; the engine writes the address it bound to
    ``<DLQ_BASE_PATH>/admin.json`` so the CLI can find it. ``enabled=False``
    (``ROSETTA_ADMIN_ADDR=off``) runs without the API.
    """

    host: str = "127.0.0.1"
    port: int = 8686
    enabled: bool = True
    # Required (checked on every request) when ``host`` is not a loopback address.
    token: str | None = field(default=None, repr=False)
    # Host names (``name`` or ``name:port``) accepted in the Host header besides the
    # listening address: anything else is refused, which defeats DNS rebinding.
    allowed_hosts: tuple[str, ...] = ()
    max_connections: int = 32  # served at once; more are refused without a thread
    # Seconds a client may take to send a request, and to take each chunk of the answer.
    timeout: float = 10.0
    max_body_mb: int = 1024  # the largest request body (an import upload)

    @property
    def max_body_bytes(self) -> int:
        return self.max_body_mb * MIB

    @property
    def is_loopback(self) -> bool:
        return self.host in LOOPBACK_HOSTS


ADMIN_ADDR_HELP = "HOST:PORT (port 0 to 65535, 0 picks a free port), [IPv6]:PORT, or off"


_HOST_NAME_RE = re.compile(r"^(?:[a-z0-9]([a-z0-9-]*[a-z0-9])?\.)*[a-z0-9]([a-z0-9-]*[a-z0-9])?$")


def _allowed_hosts(text: str) -> tuple[str, ...]:
    """``name[:port]`` or ``[ipv6][:port]``, comma-separated; lower-cased, trailing dot dropped."""
    hosts = []
    for entry in text.split(","):
        value = entry.strip().lower()
        if not value:
            continue
        match = re.fullmatch(r"(\[[0-9a-f:.]+\]|[^:\[\]]+)(?::(\d{1,5}))?", value)
        if match is None:
            raise ValueError(entry)
        name, port = match.group(1).rstrip("."), match.group(2)
        if not name.startswith("[") and not _HOST_NAME_RE.match(name):
            raise ValueError(entry)
        if port is not None and not 1 <= int(port) <= 65535:
            raise ValueError(entry)
        hosts.append(name if port is None else f"{name}:{int(port)}")
    return tuple(hosts)


_ADMIN_VARIABLES: Variables = {
    "ROSETTA_ADMIN_ALLOWED_HOSTS": (
        "allowed_hosts",
        _allowed_hosts,
        "comma-separated host names accepted in the Host header, each NAME (any port) "
        "or NAME:PORT, e.g. rosetta.internal,admin.example.com:443",
    ),
    "ROSETTA_ADMIN_MAX_CONNECTIONS": (
        "max_connections",
        int_in(1, 10_000),
        "an integer from 1 to 10000 (each connection holds a thread and a file descriptor)",
    ),
    "ROSETTA_ADMIN_TIMEOUT": (
        "timeout",
        seconds_in(0.1, 3600),
        "seconds, a number from 0.1 to 3600",
    ),
    "ROSETTA_ADMIN_MAX_BODY_MB": (
        "max_body_mb",
        megabytes,
        "a whole number of MiB, at least 1, or a size such as 2GiB",
    ),
}


def admin_config(source: Mapping[str, str], problems: list[str]) -> AdminConfig:
    limits = parse_group(source, _ADMIN_VARIABLES, problems)
    if limits.get("max_body_mb") == 0:
        del limits["max_body_mb"]
        problems.append(
            f"ROSETTA_ADMIN_MAX_BODY_MB={source['ROSETTA_ADMIN_MAX_BODY_MB']!r} is invalid: "
            f"expected {_ADMIN_VARIABLES['ROSETTA_ADMIN_MAX_BODY_MB'][2]}"
        )
    raw = source.get("ROSETTA_ADMIN_ADDR")
    token = source.get("ROSETTA_ADMIN_TOKEN", "").strip() or None
    if raw is None or not raw.strip():
        return AdminConfig(token=token, **limits)  # type: ignore[arg-type]
    text = raw.strip()
    if text.lower() in ("off", "none", "disabled"):
        return AdminConfig(enabled=False, token=token, **limits)  # type: ignore[arg-type]
    match = re.match(r"^(?:\[([0-9a-fA-F:.]+)\]|([^\s:\[\]]+)):(\d{1,5})$", text)
    port = int(match.group(3)) if match else -1
    if match is None or not 0 <= port <= 65535:
        problems.append(f"ROSETTA_ADMIN_ADDR={raw!r} is invalid: expected {ADMIN_ADDR_HELP}")
        return AdminConfig()
    config = AdminConfig(
        host=match.group(1) or match.group(2),
        port=port,
        token=token,
        **limits,  # type: ignore[arg-type]
    )
    if not config.is_loopback and token is None:
        problems.append(
            f"ROSETTA_ADMIN_ADDR={raw!r} is not a loopback address: set ROSETTA_ADMIN_TOKEN "
            "(every request must then carry it as 'Authorization: Bearer <token>')"
        )
    return config
