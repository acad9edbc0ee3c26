"""Alert thresholds (``DLQ_ALERT_*`` variables): ``AlertConfig``, and how each variable is read."""

from __future__ import annotations

import math
import re
from collections.abc import Mapping
from dataclasses import dataclass, field

from config.env_values import SIZE_HELP, Variables, int_in, parse_group, seconds_in, size_in

GIB = 1024**3


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
    # A replicating source (PostgreSQL slot) behind by more than this many bytes of WAL
    # or seconds since the oldest unconfirmed commit: warning, then critical.
    source_lag_bytes: int = GIB
    source_lag_bytes_critical: int = 10 * GIB
    source_lag_seconds: float = 300.0
    source_lag_seconds_critical: float = 1800.0


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


ALERT_VARIABLES: Variables = {
    "DLQ_ALERT_QUEUE_SIZE": (
        "queue_size",
        int_in(1, 10**12),
        "messages in one queue before a warning, an integer from 1 to 1000000000000",
    ),
    "DLQ_ALERT_QUEUE_SIZE_CRITICAL": (
        "queue_size_critical",
        int_in(1, 10**12),
        "messages in one queue before a critical alert, an integer from 1 to 1000000000000, "
        "not below DLQ_ALERT_QUEUE_SIZE",
    ),
    "DLQ_ALERT_MAX_AGE": (
        "max_age",
        seconds_in(1, 10 * 365 * 86400),
        "seconds, a number from 1 to 315360000",
    ),
    "DLQ_ALERT_MAX_AGE_CRITICAL": (
        "max_age_critical",
        seconds_in(1, 10 * 365 * 86400),
        "seconds, a number from 1 to 315360000, not below DLQ_ALERT_MAX_AGE",
    ),
    "DLQ_ALERT_UNHEALTHY_SECONDS": (
        "unhealthy_seconds",
        seconds_in(0, 10 * 365 * 86400),
        "seconds, a number from 0 to 315360000",
    ),
    "DLQ_ALERT_DISK_PCT": ("disk_pct", _percent, "a percentage above 0 and at most 100"),
    "DLQ_ALERT_SOURCE_LAG_BYTES": (
        "source_lag_bytes",
        size_in(1, 2**62),
        f"bytes of source WAL behind before a warning, {SIZE_HELP}",
    ),
    "DLQ_ALERT_SOURCE_LAG_BYTES_CRITICAL": (
        "source_lag_bytes_critical",
        size_in(1, 2**62),
        f"bytes of source WAL behind before a critical alert, {SIZE_HELP}, not below "
        "DLQ_ALERT_SOURCE_LAG_BYTES",
    ),
    "DLQ_ALERT_SOURCE_LAG_SECONDS": (
        "source_lag_seconds",
        seconds_in(0.1, 10 * 365 * 86400),
        "seconds behind the source before a warning, a number from 0.1 to 315360000",
    ),
    "DLQ_ALERT_SOURCE_LAG_SECONDS_CRITICAL": (
        "source_lag_seconds_critical",
        seconds_in(0.1, 10 * 365 * 86400),
        "seconds behind the source before a critical alert, a number from 0.1 to 315360000, "
        "not below DLQ_ALERT_SOURCE_LAG_SECONDS",
    ),
    "DLQ_ALERT_WEBHOOK_URL": ("webhook_url", _webhook_url, "an http:// or https:// URL"),
    "DLQ_ALERT_EVAL_INTERVAL": (
        "eval_interval",
        seconds_in(0.05, 86400),
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
        ("DLQ_ALERT_SOURCE_LAG_BYTES", "DLQ_ALERT_SOURCE_LAG_BYTES_CRITICAL"),
        ("DLQ_ALERT_SOURCE_LAG_SECONDS", "DLQ_ALERT_SOURCE_LAG_SECONDS_CRITICAL"),
    ):
        warning_field = ALERT_VARIABLES[warning_name][0]
        critical_field = ALERT_VARIABLES[critical_name][0]
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


def alert_values(source: Mapping[str, str], problems: list[str]) -> dict[str, object]:
    """The ``AlertConfig`` fields set in ``source``, checked; each problem goes to ``problems``."""
    values = parse_group(source, ALERT_VARIABLES, problems)
    _check_alert_levels(source, values, problems)
    return values
