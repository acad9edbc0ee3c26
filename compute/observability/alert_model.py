"""What an alert rule finds and reports: severities, findings, alerts and their changes."""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from enum import StrEnum
from typing import Any


class Severity(StrEnum):
    WARNING = "warning"
    CRITICAL = "critical"


@dataclass(frozen=True)
class Finding:
    """What one rule found about one subject in one evaluation."""

    rule: str
    subject: str
    severity: Severity
    summary: str
    value: float
    threshold: float
    labels: dict[str, str] = field(default_factory=dict)

    @property
    def id(self) -> str:
        return f"{self.rule}:{self.subject}"


@dataclass(frozen=True)
class Alert(Finding):
    """One firing (or resolved) alert."""

    since: float = field(kw_only=True)  # when it started firing (a change of severity keeps it)
    resolved_at: float | None = None

    def to_json(self) -> dict[str, Any]:
        data: dict[str, Any] = {
            "id": self.id,
            "alert": self.rule,
            "subject": self.subject,
            "severity": self.severity.value,
            "summary": self.summary,
            "value": number(self.value),
            "threshold": number(self.threshold),
            "since": iso(self.since),
            "labels": dict(self.labels),
        }
        if self.resolved_at is not None:
            data["resolved_at"] = iso(self.resolved_at)
        return data


@dataclass(frozen=True)
class AlertEvent:
    """A change an evaluation found: ``firing`` (new or new severity) or ``resolved``."""

    status: str
    alert: Alert
    previous_severity: Severity | None = None

    def payload(self, host: str) -> dict[str, Any]:
        data = {"status": self.status, **self.alert.to_json(), "host": host}
        if self.previous_severity is not None:
            data["previous_severity"] = self.previous_severity.value
        return data


def alert_level(
    value: float, warning: float, critical: float, variable: str
) -> tuple[Severity, float, str] | None:
    """The severity ``value`` reaches, its threshold and the variable that sets it."""
    if value > critical:
        return Severity.CRITICAL, critical, f"{variable}_CRITICAL"
    if value > warning:
        return Severity.WARNING, warning, variable
    return None


def number(value: float) -> float | int:
    return int(value) if float(value).is_integer() else round(value, 3)


def duration(seconds: float) -> str:
    """``90`` -> ``1m30s``; ``3600`` -> ``1h``; ``4.25`` -> ``4.2s``."""
    if seconds < 60:
        return f"{seconds:.1f}s"
    whole = int(seconds)
    days, rest = divmod(whole, 86400)
    hours, rest = divmod(rest, 3600)
    minutes, secs = divmod(rest, 60)
    parts = [(days, "d"), (hours, "h"), (minutes, "m"), (secs, "s")]
    return "".join(f"{n}{unit}" for n, unit in parts if n) or "0s"


def iso(when: float | None) -> str | None:
    if when is None:
        return None
    return time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(when)) + f".{int(when % 1 * 1000):03d}Z"
