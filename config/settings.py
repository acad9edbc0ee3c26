"""Settings built once, from real environment variables over ``.env``.

Nothing else in Rosetta reads ``os.environ``: everything gets a frozen
``Settings`` from ``load_settings()``.
"""

from __future__ import annotations

import errno
import logging
import math
import os
import re
import tempfile
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from decimal import Decimal
from enum import StrEnum
from pathlib import Path
from typing import TypeVar

from dotenv import dotenv_values

from config.errors import ConfigError

logger = logging.getLogger(__name__)

T = TypeVar("T")

KIB = 1024
MIB = 1024 * KIB
GIB = 1024 * MIB


class WhenFull(StrEnum):
    """What the DLQ does when a capacity limit is reached."""

    BLOCK = "block"  # refuse with DLQFullError; the engine applies backpressure
    DROP_NEWEST = "drop_newest"  # explicit opt-in: drop the new events, counted and logged


@dataclass(frozen=True)
class DLQConfig:
    """Settings of the DLQ store and its recovery worker (``DLQ_*`` variables)."""

    base_path: Path = Path("./tmp/dlq")
    check_interval: float = 30.0
    batch_size: int = 100
    max_retries: int = 5
    backoff_base_ms: int = 1000
    backoff_max_ms: int = 60000
    max_queue_messages: int = 10_000_000
    max_queue_bytes: int = 10 * GIB
    min_free_disk_mb: int = 512
    when_full: WhenFull = WhenFull.BLOCK
    message_ttl: int = 0
    max_open_queues: int = 32
    # A change whose encoded DLQ message is larger is parked (kept, never replayed
    # automatically) instead of queued: one huge row must not stall its table.
    max_message_bytes: int = 16 * MIB
    # Seconds between walks of the base path for queues this process did not
    # create (listing queues answers from memory).
    rescan_interval: float = 60.0
    # A live write (with its in-place retries) still running after this long turns its
    # destination to store-and-forward: its events are queued, the source moves on.
    live_write_deadline_ms: int = 2000
    # Events a pipeline may have read but not yet delivered to every destination: how
    # far the other destinations may run ahead of a slow one (memory: ~1-2 KiB each).
    read_ahead_events: int = 20_000

    @property
    def min_free_disk_bytes(self) -> int:
        return self.min_free_disk_mb * MIB


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
    # Connections served at once; more are refused without a thread.
    max_connections: int = 32
    # Seconds a client may take to send a request, and to take each chunk of the answer.
    timeout: float = 10.0
    # The largest request body (an import upload).
    max_body_mb: int = 1024

    @property
    def max_body_bytes(self) -> int:
        return self.max_body_mb * MIB

    @property
    def is_loopback(self) -> bool:
        return self.host in LOOPBACK_HOSTS


@dataclass(frozen=True)
class AlertConfig:
    """Alert thresholds (``DLQ_ALERT_*``); each queue alert has a warning and a critical level."""

    queue_size: int = 1000  # warning above this many messages in one queue
    queue_size_critical: int = 10_000
    max_age: float = 3600.0  # warning when a queue's oldest message is older (seconds)
    max_age_critical: float = 86400.0
    unhealthy_seconds: float = 300.0  # a destination unhealthy for longer fires an alert
    disk_pct: float = 80.0  # DLQ filesystem usage above this percentage
    # Firing/resolved alerts are POSTed here as JSON. Webhook paths often hold a token
    # (Slack, PagerDuty): never shown by repr.
    webhook_url: str | None = field(default=None, repr=False)
    eval_interval: float = 10.0  # seconds between evaluations


@dataclass(frozen=True)
class Settings:
    """Everything Rosetta reads from its environment."""

    dlq: DLQConfig = DLQConfig()
    admin: AdminConfig = AdminConfig()
    alerts: AlertConfig = AlertConfig()
    # ROSETTA_PIPELINES_FILE: the TOML file defining pipelines (embedded default).
    pipelines_file: Path | None = None
    # CONFIG_DATABASE_URL: read pipelines from this PostgreSQL database instead.
    config_database_url: str | None = field(default=None, repr=False)
    # ROSETTA_STATE_PATH: where sources keep their acknowledged positions.
    state_path: Path = Path("./tmp/state")
    # The merged environment, for options that name a variable (``dsn_env``);
    # it may hold secrets, so it is never shown.
    environment: Mapping[str, str] = field(default_factory=dict, repr=False, compare=False)


_SIZE_UNITS = {
    "": 1,
    "b": 1,
    "k": 1000,
    "kb": 1000,
    "kib": KIB,
    "m": 1000**2,
    "mb": 1000**2,
    "mib": MIB,
    "g": 1000**3,
    "gb": 1000**3,
    "gib": GIB,
    "t": 1000**4,
    "tb": 1000**4,
    "tib": 1024 * GIB,
}
_SIZE_RE = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*([a-zA-Z]*)\s*$")
SIZE_HELP = (
    "a size such as 1048576, 512MB, 512MiB or 10GiB (units B, KB, KiB, MB, MiB, GB, GiB, TB, TiB)"
)


def parse_size(text: str) -> int:
    """Parse ``512MB`` / ``10GiB`` / ``1048576`` into bytes; ValueError if malformed."""
    match = _SIZE_RE.match(text)
    if not match:
        raise ValueError(text)
    number, unit = match.groups()
    factor = _SIZE_UNITS.get(unit.lower())
    if factor is None:
        raise ValueError(text)
    # Decimal, not float: float("4.1") * 1000**2 is 4099999.9999999995, which int() truncates.
    return int(Decimal(number) * factor)


def _int_in(low: int, high: int) -> Callable[[str], int]:
    def parse(text: str) -> int:
        value = int(text.strip().replace("_", ""))
        if not low <= value <= high:
            raise ValueError(text)
        return value

    return parse


def _seconds_in(low: float, high: float) -> Callable[[str], float]:
    def parse(text: str) -> float:
        value = float(text.strip())
        if not math.isfinite(value) or not low <= value <= high:
            raise ValueError(text)
        return value

    return parse


def _size_in(low: int, high: int) -> Callable[[str], int]:
    def parse(text: str) -> int:
        value = parse_size(text)
        if not low <= value <= high:
            raise ValueError(text)
        return value

    return parse


def _megabytes(text: str) -> int:
    """A whole number of MiB, or a size with a unit rounded up to whole MiB."""
    match = _SIZE_RE.match(text)
    if match and not match.group(2):
        # Unitless means MiB and must be whole: "512.5" was once read as 512 bytes (1 MiB).
        value = int(match.group(1))
    else:
        value = -(-parse_size(text) // MIB)
    if not 0 <= value <= 1024 * 1024 * 1024:
        raise ValueError(text)
    return value


# Linux limits: PATH_MAX and NAME_MAX, in bytes.
_MAX_PATH_BYTES = 4096
_MAX_NAME_BYTES = 255


def _path(text: str) -> Path:
    value = text.strip()
    if not value or "\x00" in value:
        raise ValueError(text)
    encoded = value.encode("utf-8", "surrogateescape")
    if len(encoded) > _MAX_PATH_BYTES:
        raise ValueError(text)
    if any(len(part) > _MAX_NAME_BYTES for part in encoded.split(b"/")):
        raise ValueError(text)
    return Path(value)


def _when_full(text: str) -> WhenFull:
    return WhenFull(text.strip().lower())


# variable -> (DLQConfig field, parser, what is accepted)
_DLQ_VARIABLES: dict[str, tuple[str, Callable[[str], object], str]] = {
    "DLQ_BASE_PATH": (
        "base_path",
        _path,
        "a non-empty directory path (at most 4096 bytes, each name at most 255, no NUL)",
    ),
    "DLQ_CHECK_INTERVAL": (
        "check_interval",
        _seconds_in(0.05, 86400),
        "seconds between health checks, a number from 0.05 to 86400",
    ),
    "DLQ_BATCH_SIZE": ("batch_size", _int_in(1, 100_000), "an integer from 1 to 100000"),
    "DLQ_MAX_RETRIES": ("max_retries", _int_in(0, 1_000_000), "an integer from 0 to 1000000"),
    "DLQ_BACKOFF_BASE_MS": (
        "backoff_base_ms",
        _int_in(1, 3_600_000),
        "milliseconds, an integer from 1 to 3600000",
    ),
    "DLQ_BACKOFF_MAX_MS": (
        "backoff_max_ms",
        _int_in(1, 86_400_000),
        "milliseconds, an integer from 1 to 86400000, not below DLQ_BACKOFF_BASE_MS",
    ),
    "DLQ_MAX_QUEUE_MESSAGES": (
        "max_queue_messages",
        _int_in(1, 10**12),
        "an integer from 1 to 1000000000000",
    ),
    "DLQ_MAX_QUEUE_BYTES": (
        "max_queue_bytes",
        _size_in(1 * MIB, 1024**5),
        f"{SIZE_HELP}, at least 1MiB",
    ),
    "DLQ_MIN_FREE_DISK_MB": (
        "min_free_disk_mb",
        _megabytes,
        "a whole number of MiB (0 disables the floor) or a size such as 2GiB",
    ),
    "DLQ_WHEN_FULL": ("when_full", _when_full, "one of: block, drop_newest"),
    "DLQ_MESSAGE_TTL": (
        "message_ttl",
        _int_in(0, 10 * 365 * 86400),
        "seconds, an integer from 0 (never expire) to 315360000",
    ),
    "DLQ_MAX_OPEN_QUEUES": (
        "max_open_queues",
        _int_in(1, 10_000),
        "an integer from 1 to 10000 (each open queue holds about 6 file descriptors)",
    ),
    "DLQ_MAX_MESSAGE_BYTES": (
        "max_message_bytes",
        _size_in(1 * KIB, 1 * GIB),
        f"{SIZE_HELP}, from 1KiB to 1GiB, not above DLQ_MAX_QUEUE_BYTES",
    ),
    "DLQ_RESCAN_INTERVAL": (
        "rescan_interval",
        _seconds_in(1, 86400),
        "seconds between scans of DLQ_BASE_PATH for new queue directories, "
        "a number from 1 to 86400",
    ),
    "DLQ_LIVE_WRITE_DEADLINE_MS": (
        "live_write_deadline_ms",
        _int_in(10, 3_600_000),
        "milliseconds a live write and its retries may take before its events are queued, "
        "an integer from 10 to 3600000",
    ),
    "DLQ_READ_AHEAD_EVENTS": (
        "read_ahead_events",
        _int_in(1, 10_000_000),
        "events read but not yet delivered to every destination, an integer from 1 to 10000000",
    ),
}


def _webhook_url(text: str) -> str:
    value = text.strip()
    # Printable ASCII only (percent-encode the rest), and a length servers accept.
    if len(value) > 2048 or not re.fullmatch(r"https?://[!-.0-~]+(/[!-~]*)?", value):
        raise ValueError(text)
    return value


def _percent(text: str) -> float:
    value = float(text.strip().rstrip("%"))
    if not math.isfinite(value) or not 0 < value <= 100:
        raise ValueError(text)
    return value


_ALERT_VARIABLES: dict[str, tuple[str, Callable[[str], object], str]] = {
    "DLQ_ALERT_QUEUE_SIZE": (
        "queue_size",
        _int_in(1, 10**12),
        "messages in one queue before a warning, an integer from 1 to 1000000000000",
    ),
    "DLQ_ALERT_QUEUE_SIZE_CRITICAL": (
        "queue_size_critical",
        _int_in(1, 10**12),
        "messages in one queue before a critical alert, an integer from 1 to 1000000000000, "
        "not below DLQ_ALERT_QUEUE_SIZE",
    ),
    "DLQ_ALERT_MAX_AGE": (
        "max_age",
        _seconds_in(1, 10 * 365 * 86400),
        "seconds, a number from 1 to 315360000",
    ),
    "DLQ_ALERT_MAX_AGE_CRITICAL": (
        "max_age_critical",
        _seconds_in(1, 10 * 365 * 86400),
        "seconds, a number from 1 to 315360000, not below DLQ_ALERT_MAX_AGE",
    ),
    "DLQ_ALERT_UNHEALTHY_SECONDS": (
        "unhealthy_seconds",
        _seconds_in(0, 10 * 365 * 86400),
        "seconds, a number from 0 to 315360000",
    ),
    "DLQ_ALERT_DISK_PCT": ("disk_pct", _percent, "a percentage above 0 and at most 100"),
    "DLQ_ALERT_WEBHOOK_URL": ("webhook_url", _webhook_url, "an http:// or https:// URL"),
    "DLQ_ALERT_EVAL_INTERVAL": (
        "eval_interval",
        _seconds_in(0.05, 86400),
        "seconds between alert evaluations, a number from 0.05 to 86400",
    ),
}


def _check_alert_levels(
    source: Mapping[str, str], values: dict[str, object], problems: list[str]
) -> None:
    """A critical level below its warning level is an error when both were given;
    an unset critical level follows a warning level set above its default."""
    for warning_name, critical_name in (
        ("DLQ_ALERT_QUEUE_SIZE", "DLQ_ALERT_QUEUE_SIZE_CRITICAL"),
        ("DLQ_ALERT_MAX_AGE", "DLQ_ALERT_MAX_AGE_CRITICAL"),
    ):
        warning_field = _ALERT_VARIABLES[warning_name][0]
        critical_field = _ALERT_VARIABLES[critical_name][0]
        if warning_field not in values:
            continue  # default warning level, or reported as invalid
        warning = values[warning_field]
        if critical_field not in values:
            if critical_name not in source:
                default = getattr(AlertConfig, critical_field)
                values[critical_field] = max(default, warning)  # type: ignore[call-overload]
            continue
        critical = values[critical_field]
        if critical < warning:  # type: ignore[operator]
            problems.append(
                f"{critical_name}={source[critical_name]!r} is below {warning_name}="
                f"{source[warning_name]!r}: the critical level must be at least the warning level"
            )


def _check_message_limit(
    source: Mapping[str, str], values: dict[str, object], problems: list[str]
) -> None:
    """A message limit above the queue limit could never be met; an unset one follows it."""
    if "max_queue_bytes" not in values:
        return  # default queue limit (10GiB, above any message limit), or reported as invalid
    queue_bytes = values["max_queue_bytes"]
    assert isinstance(queue_bytes, int)
    if "DLQ_MAX_MESSAGE_BYTES" not in source:
        values["max_message_bytes"] = min(DLQConfig.max_message_bytes, queue_bytes)
        return
    message_bytes = values.get("max_message_bytes")
    if isinstance(message_bytes, int) and message_bytes > queue_bytes:
        problems.append(
            f"DLQ_MAX_MESSAGE_BYTES={source['DLQ_MAX_MESSAGE_BYTES']!r} is above "
            f"DLQ_MAX_QUEUE_BYTES={source['DLQ_MAX_QUEUE_BYTES']!r}: such a message could "
            "never be queued"
        )


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


# variable -> (AdminConfig field, parser, what is accepted)
_ADMIN_VARIABLES: dict[str, tuple[str, Callable[[str], object], str]] = {
    "ROSETTA_ADMIN_ALLOWED_HOSTS": (
        "allowed_hosts",
        _allowed_hosts,
        "comma-separated host names accepted in the Host header, each NAME (any port) "
        "or NAME:PORT, e.g. rosetta.internal,admin.example.com:443",
    ),
    "ROSETTA_ADMIN_MAX_CONNECTIONS": (
        "max_connections",
        _int_in(1, 10_000),
        "an integer from 1 to 10000 (each connection holds a thread and a file descriptor)",
    ),
    "ROSETTA_ADMIN_TIMEOUT": (
        "timeout",
        _seconds_in(0.1, 3600),
        "seconds, a number from 0.1 to 3600",
    ),
    "ROSETTA_ADMIN_MAX_BODY_MB": (
        "max_body_mb",
        _megabytes,
        "a whole number of MiB, at least 1, or a size such as 2GiB",
    ),
}


def _admin_config(source: Mapping[str, str], problems: list[str]) -> AdminConfig:
    limits = _parse_group(source, _ADMIN_VARIABLES, problems)
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


def _parse_group(
    source: Mapping[str, str],
    variables: Mapping[str, tuple[str, Callable[[str], object], str]],
    problems: list[str],
) -> dict[str, object]:
    values: dict[str, object] = {}
    for name, (field_name, parser, accepted) in variables.items():
        raw = source.get(name)
        if raw is None:
            continue
        try:
            values[field_name] = parser(raw)
        except (ValueError, TypeError, OverflowError):
            problems.append(f"{name}={raw!r} is invalid: expected {accepted}")
    return values


def load_settings(
    env: Mapping[str, str] | None = None,
    dotenv_path: str | os.PathLike[str] | None = None,
) -> Settings:
    """Build ``Settings`` from ``env`` (default: the process environment) over ``.env``.

    ``dotenv_path`` defaults to ``./.env`` when that file exists. Real environment
    variables win over ``.env``. Every invalid variable is reported in one ``ConfigError``.
    """
    environment = dict(os.environ if env is None else env)
    path = Path(dotenv_path) if dotenv_path is not None else Path(".env")
    from_file: dict[str, str] = {}
    if path.is_file():
        from_file = {k: v for k, v in dotenv_values(path).items() if v is not None}
    elif dotenv_path is not None and path.exists():
        raise ConfigError([f"dotenv path {str(path)!r} is not a regular file"])
    source = {**from_file, **environment}

    problems: list[str] = []
    dlq_values = _parse_group(source, _DLQ_VARIABLES, problems)
    base = dlq_values.get("backoff_base_ms", DLQConfig.backoff_base_ms)
    cap = dlq_values.get("backoff_max_ms", DLQConfig.backoff_max_ms)
    # Compare only values the operator actually gave (or defaults): a bad base must not be
    # replaced by the default and then reported as a second, misleading problem.
    both_valid = all(
        name not in source or field in dlq_values
        for name, field in (
            ("DLQ_BACKOFF_BASE_MS", "backoff_base_ms"),
            ("DLQ_BACKOFF_MAX_MS", "backoff_max_ms"),
        )
    )
    if both_valid and isinstance(base, int) and isinstance(cap, int) and cap < base:
        problems.append(
            f"DLQ_BACKOFF_MAX_MS={cap} is below DLQ_BACKOFF_BASE_MS={base}: "
            "the cap must be at least the base delay"
        )
    _check_message_limit(source, dlq_values, problems)
    alert_values = _parse_group(source, _ALERT_VARIABLES, problems)
    _check_alert_levels(source, alert_values, problems)
    admin = _admin_config(source, problems)
    if problems:
        raise ConfigError(problems)

    known = {**_DLQ_VARIABLES, **_ALERT_VARIABLES}
    unknown = sorted(k for k in source if k.startswith("DLQ_") and k not in known)
    for name in unknown:
        logger.warning(
            "unknown setting ignored: variable=%s known=%s", name, ",".join(sorted(known))
        )
    pipelines_file = source.get("ROSETTA_PIPELINES_FILE", "").strip()
    state_path = source.get("ROSETTA_STATE_PATH", "").strip()
    database_url = source.get("CONFIG_DATABASE_URL", "").strip()
    return Settings(
        dlq=DLQConfig(**dlq_values),  # type: ignore[arg-type]
        admin=admin,
        alerts=AlertConfig(**alert_values),  # type: ignore[arg-type]
        pipelines_file=Path(pipelines_file) if pipelines_file else None,
        config_database_url=database_url or None,
        state_path=Path(state_path) if state_path else Settings.state_path,
        environment=source,
    )


def prepare_directory(path: Path, variable: str) -> None:
    """Create ``path`` if need be and prove it writable, or raise ``ConfigError`` naming it.

    Run once at start-up, so that an unusable ``DLQ_BASE_PATH`` is a one-line
    configuration error instead of a storage failure deep in the first enqueue.
    """
    where = f"{variable}={str(path)!r}"
    try:
        path.mkdir(parents=True, exist_ok=True)
    except FileExistsError:
        raise ConfigError([f"{where} is not a directory"]) from None
    except OSError as error:
        raise ConfigError([f"{where}: cannot create the directory: {error.strerror}"]) from None
    if not path.is_dir():
        raise ConfigError([f"{where} is not a directory"])
    try:
        fd, probe = tempfile.mkstemp(prefix=".rosetta-write-test-", dir=path)
        try:
            os.write(fd, b"x")
        finally:
            os.close(fd)
            os.unlink(probe)
    except OSError as error:
        if error.errno in (errno.ENOSPC, errno.EDQUOT):
            # Writable, but full: the store starts anyway and drains its queues
            # with the room it keeps for that; enqueues are refused meanwhile.
            return
        raise ConfigError([f"{where}: the directory is not writable: {error.strerror}"]) from None
