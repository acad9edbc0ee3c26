"""The ``source_replication_lag`` alert rule: a replicating source's slot too far behind."""

from __future__ import annotations

from collections.abc import Callable, Iterable

from compute.observability.alert_model import Finding, Severity, alert_level, duration
from compute.sources.base import ReplicationLag
from config.alert_config import AlertConfig

SOURCE_LAG = "source_replication_lag"
# A slot whose WAL the server is about to remove (unreserved) or removed (lost):
# the changes it still needs are (about to be) gone, whatever the lag figures say.
LOSING_WAL = ("unreserved", "lost")

# (pipeline, source id, lag) of every source that replicates from a WAL.
SourceLags = Callable[[], Iterable[tuple[str, str, ReplicationLag]]]


def source_lag_findings(
    config: AlertConfig,
    lags: Iterable[tuple[str, str, ReplicationLag]],
    unknown: set[str],
    errors: list[str],
) -> list[Finding]:
    """One finding per source behind by more than a threshold (bytes, seconds) or losing WAL.

    When the bytes could not be read (or not yet), that source's alert is
    marked unknown (it stays as it was unless the seconds alone decide) and the
    reason goes to ``errors``.
    """
    found: list[Finding] = []
    for pipeline, source_id, lag in lags:
        subject = f"{pipeline}/{lag.slot}"
        labels = {"pipeline": pipeline, "source": source_id, "slot": lag.slot}
        # (severity, what it says, value, threshold), most severe first once sorted.
        reasons: list[tuple[Severity, str, float, float]] = []
        if lag.wal_status in LOSING_WAL:
            reasons.append(
                (
                    Severity.CRITICAL,
                    f"its wal_status is {lag.wal_status}: the source removes WAL it still needs",
                    float(lag.lag_bytes or 0),
                    0.0,
                )
            )
        # (value, warning, critical, variable, what the value says, how a threshold reads)
        measures: list[tuple[float, float, float, str, str, Callable[[float], str]]] = []
        if lag.lag_bytes is None:
            unknown.add(f"{SOURCE_LAG}:{subject}")
            if lag.error is not None:  # None: not read yet (the engine is starting)
                errors.append(f"source lag of {subject}: {lag.error}")
        else:
            measures.append(
                (
                    lag.lag_bytes,
                    config.source_lag_bytes,
                    config.source_lag_bytes_critical,
                    "DLQ_ALERT_SOURCE_LAG_BYTES",
                    f"it is {lag.lag_bytes} bytes of WAL behind",
                    lambda n: f"{n:.0f} bytes",
                )
            )
        measures.append(
            (
                lag.lag_seconds,
                config.source_lag_seconds,
                config.source_lag_seconds_critical,
                "DLQ_ALERT_SOURCE_LAG_SECONDS",
                f"its oldest unconfirmed change committed {duration(lag.lag_seconds)} ago",
                duration,
            )
        )
        for value, warning, critical, variable, says, shown in measures:
            level = alert_level(value, warning, critical, variable)
            if level is not None:
                severity, threshold, name = level
                text = f"{says}, above the {severity} threshold of {shown(threshold)} ({name})"
                reasons.append((severity, text, float(value), threshold))
        if not reasons:
            continue
        reasons.sort(key=lambda r: r[0] is not Severity.CRITICAL)
        severity, _, value, threshold = reasons[0]
        found.append(
            Finding(
                SOURCE_LAG,
                subject,
                severity,
                f"source {source_id} (pipeline {pipeline}, slot {lag.slot}) is behind: "
                + "; ".join(r[1] for r in reasons),
                value,
                threshold,
                labels,
            )
        )
    return found
