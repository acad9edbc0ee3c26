"""The DLQ store's settings (``DLQ_*`` variables): ``DLQConfig``, and how each variable is read."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from enum import StrEnum
from pathlib import Path

from config.env_values import (
    GIB,
    KIB,
    MIB,
    SIZE_HELP,
    Variables,
    directory_path,
    int_in,
    megabytes,
    parse_group,
    seconds_in,
    size_in,
)
from config.nats_config import Backend, NatsConfig


class WhenFull(StrEnum):
    """What the DLQ does when a capacity limit is reached."""

    BLOCK = "block"  # refuse with DLQFullError; the engine applies backpressure
    DROP_NEWEST = "drop_newest"  # explicit opt-in: drop the new events, counted and logged


class FsyncMode(StrEnum):
    """When the DLQ's writes reach stable storage (survive an OS crash or power cut)."""

    ALWAYS = "always"  # an enqueue returns after its writes are synced (group commit)
    INTERVAL = "interval"  # a background syncer; sources move only past synced writes
    OFF = "off"  # the OS writes back when it likes: a power cut can lose the last writes


@dataclass(frozen=True)
class DLQConfig:
    """Settings of the DLQ store and its recovery worker (``DLQ_*`` variables)."""

    base_path: Path = Path("./tmp/dlq")
    check_interval: float = 30.0
    # The first wait between probes of a destination that just failed; the wait
    # then grows with the outage (a fifth of it) up to ``check_interval``.
    check_interval_min: float = 1.0
    batch_size: int = 100
    max_retries: int = 5
    backoff_base_ms: int = 1000
    backoff_max_ms: int = 60000
    max_queue_messages: int = 10_000_000
    max_queue_bytes: int = 10 * GIB
    min_free_disk_mb: int = 512
    when_full: WhenFull = WhenFull.BLOCK
    message_ttl: int = 0
    # Queue segments kept open at once; None ("auto"): as many as the open-file
    # limit (raised to its hard limit at start) allows, up to 2048.
    max_open_queues: int | None = None
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
    # Seconds between a pipeline's progress lines (and deferred-event summaries); 0: none.
    progress_interval: float = 10.0
    # Interval: a source re-read after a power cut loses nothing (its position never
    # passed an unsynced write), at a small cost; see the README's "Durability".
    fsync: FsyncMode = FsyncMode.INTERVAL
    fsync_interval_ms: int = 200
    # DLQ_BACKEND: rocksq (local disk) or jetstream (NATS, replicated; DLQ_NATS_*).
    backend: Backend = Backend.ROCKSQ
    nats: NatsConfig = field(default_factory=NatsConfig)

    @property
    def min_free_disk_bytes(self) -> int:
        return self.min_free_disk_mb * MIB


def _when_full(text: str) -> WhenFull:
    return WhenFull(text.strip().lower())


def _fsync_mode(text: str) -> FsyncMode:
    return FsyncMode(text.strip().lower())


def _max_open_queues(text: str) -> int | None:
    """``auto`` (a budget from the open-file limit), or a count from 1 to 100000."""
    if text.strip().lower() == "auto":
        return None
    return int_in(1, 100_000)(text)


def _progress_interval(text: str) -> float:
    """0 (no progress lines), or seconds from 0.1 to 86400."""
    value = float(text.strip())
    return value if value == 0 else seconds_in(0.1, 86400)(text)


DLQ_VARIABLES: Variables = {
    "DLQ_BASE_PATH": (
        "base_path",
        directory_path,
        "a non-empty directory path (at most 4096 bytes, each name at most 255, no NUL)",
    ),
    "DLQ_CHECK_INTERVAL": (
        "check_interval",
        seconds_in(0.05, 86400),
        "seconds between health checks, a number from 0.05 to 86400",
    ),
    "DLQ_CHECK_INTERVAL_MIN": (
        "check_interval_min",
        seconds_in(0.05, 86400),
        "seconds before the first health check of a destination that just failed, "
        "a number from 0.05 to 86400, not above DLQ_CHECK_INTERVAL",
    ),
    "DLQ_BATCH_SIZE": ("batch_size", int_in(1, 100_000), "an integer from 1 to 100000"),
    "DLQ_MAX_RETRIES": ("max_retries", int_in(0, 1_000_000), "an integer from 0 to 1000000"),
    "DLQ_BACKOFF_BASE_MS": (
        "backoff_base_ms",
        int_in(1, 3_600_000),
        "milliseconds, an integer from 1 to 3600000",
    ),
    "DLQ_BACKOFF_MAX_MS": (
        "backoff_max_ms",
        int_in(1, 86_400_000),
        "milliseconds, an integer from 1 to 86400000, not below DLQ_BACKOFF_BASE_MS",
    ),
    "DLQ_MAX_QUEUE_MESSAGES": (
        "max_queue_messages",
        int_in(1, 10**12),
        "an integer from 1 to 1000000000000",
    ),
    "DLQ_MAX_QUEUE_BYTES": (
        "max_queue_bytes",
        size_in(1 * MIB, 1024**5),
        f"{SIZE_HELP}, at least 1MiB",
    ),
    "DLQ_MIN_FREE_DISK_MB": (
        "min_free_disk_mb",
        megabytes,
        "a whole number of MiB (0 disables the floor) or a size such as 2GiB",
    ),
    "DLQ_WHEN_FULL": ("when_full", _when_full, "one of: block, drop_newest"),
    "DLQ_MESSAGE_TTL": (
        "message_ttl",
        int_in(0, 10 * 365 * 86400),
        "seconds, an integer from 0 (never expire) to 315360000",
    ),
    "DLQ_MAX_OPEN_QUEUES": (
        "max_open_queues",
        _max_open_queues,
        "auto (as many as the open-file limit allows, up to 2048), or an integer from 1 "
        "to 100000 (each open queue segment holds about 9 file descriptors and 0.5 MB)",
    ),
    "DLQ_MAX_MESSAGE_BYTES": (
        "max_message_bytes",
        size_in(1 * KIB, 1 * GIB),
        f"{SIZE_HELP}, from 1KiB to 1GiB, not above DLQ_MAX_QUEUE_BYTES",
    ),
    "DLQ_RESCAN_INTERVAL": (
        "rescan_interval",
        seconds_in(1, 86400),
        "seconds between scans of DLQ_BASE_PATH for new queue directories, "
        "a number from 1 to 86400",
    ),
    "DLQ_LIVE_WRITE_DEADLINE_MS": (
        "live_write_deadline_ms",
        int_in(10, 3_600_000),
        "milliseconds a live write and its retries may take before its events are queued, "
        "an integer from 10 to 3600000",
    ),
    "DLQ_READ_AHEAD_EVENTS": (
        "read_ahead_events",
        int_in(1, 10_000_000),
        "events read but not yet delivered to every destination, an integer from 1 to 10000000",
    ),
    "DLQ_PROGRESS_INTERVAL": (
        "progress_interval",
        _progress_interval,
        "seconds between a pipeline's progress lines, 0 (off) or a number from 0.1 to 86400",
    ),
    "DLQ_FSYNC": ("fsync", _fsync_mode, "one of: always, interval, off"),
    "DLQ_FSYNC_INTERVAL_MS": (
        "fsync_interval_ms",
        int_in(1, 60_000),
        "milliseconds between syncs of the DLQ's writes with DLQ_FSYNC=interval, "
        "an integer from 1 to 60000",
    ),
}


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


def _check_probe_spacing(
    source: Mapping[str, str], values: dict[str, object], problems: list[str]
) -> None:
    """A first wait between probes set above the longest is refused.

    Unset, it is 1 s or ``DLQ_CHECK_INTERVAL`` if that is shorter (the worker
    never waits longer than ``DLQ_CHECK_INTERVAL``).
    """
    if "DLQ_CHECK_INTERVAL_MIN" not in source:
        return
    if "DLQ_CHECK_INTERVAL" in source and "check_interval" not in values:
        return  # reported as invalid already
    longest = values.get("check_interval", DLQConfig.check_interval)
    assert isinstance(longest, float)
    first = values.get("check_interval_min")
    if isinstance(first, float) and first > longest:
        given = source.get("DLQ_CHECK_INTERVAL")
        longest_text = repr(given) if given is not None else f"{longest:g} (the default)"
        problems.append(
            f"DLQ_CHECK_INTERVAL_MIN={source['DLQ_CHECK_INTERVAL_MIN']!r} is above "
            f"DLQ_CHECK_INTERVAL={longest_text}: the first wait between health checks "
            "cannot be longer than the longest"
        )


def dlq_values(source: Mapping[str, str], problems: list[str]) -> dict[str, object]:
    """The ``DLQConfig`` fields set in ``source``, checked; each problem goes to ``problems``."""
    values = parse_group(source, DLQ_VARIABLES, problems)
    base = values.get("backoff_base_ms", DLQConfig.backoff_base_ms)
    cap = values.get("backoff_max_ms", DLQConfig.backoff_max_ms)
    # Compare only values the operator actually gave (or defaults): a bad base must not be
    # replaced by the default and then reported as a second, misleading problem.
    both_valid = all(
        name not in source or field in values
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
    _check_message_limit(source, values, problems)
    _check_probe_spacing(source, values, problems)
    return values
