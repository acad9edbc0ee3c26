"""Tests of ``config.settings.load_settings``: defaults, parsing, errors, ``.env`` precedence.

Every test passes ``env=`` and ``dotenv_path=`` explicitly (or controls the process
environment with ``monkeypatch``), so the real environment never leaks in.
"""

from __future__ import annotations

import dataclasses
import logging
from pathlib import Path

import pytest

from config import ConfigError, RosettaError, Settings, load_settings
from config.alert_config import ALERT_VARIABLES
from config.dlq_config import DLQ_VARIABLES, DLQConfig, FsyncMode, WhenFull
from config.env_values import GIB, KIB, MIB, parse_size

ALL_VARIABLES = [
    "DLQ_BASE_PATH",
    "DLQ_CHECK_INTERVAL",
    "DLQ_CHECK_INTERVAL_MIN",
    "DLQ_BATCH_SIZE",
    "DLQ_MAX_RETRIES",
    "DLQ_BACKOFF_BASE_MS",
    "DLQ_BACKOFF_MAX_MS",
    "DLQ_MAX_QUEUE_MESSAGES",
    "DLQ_MAX_QUEUE_BYTES",
    "DLQ_MIN_FREE_DISK_MB",
    "DLQ_WHEN_FULL",
    "DLQ_MESSAGE_TTL",
    "DLQ_MAX_OPEN_QUEUES",
    "DLQ_MAX_MESSAGE_BYTES",
    "DLQ_RESCAN_INTERVAL",
    "DLQ_LIVE_WRITE_DEADLINE_MS",
    "DLQ_READ_AHEAD_EVENTS",
    "DLQ_PROGRESS_INTERVAL",
    "DLQ_FSYNC",
    "DLQ_FSYNC_INTERVAL_MS",
]


@pytest.fixture
def no_dotenv(tmp_path: Path) -> Path:
    """A ``.env`` path that does not exist."""
    return tmp_path / "absent.env"


def load(env: dict[str, str], dotenv_path: Path) -> DLQConfig:
    return load_settings(env=env, dotenv_path=dotenv_path).dlq


def load_error(env: dict[str, str], dotenv_path: Path) -> ConfigError:
    with pytest.raises(ConfigError) as info:
        load_settings(env=env, dotenv_path=dotenv_path)
    return info.value


# --- defaults ---------------------------------------------------------------------------------


def test_defaults_when_nothing_is_set(no_dotenv: Path) -> None:
    settings = load_settings(env={}, dotenv_path=no_dotenv)
    assert settings == Settings()
    dlq = settings.dlq
    assert dlq == DLQConfig()
    assert dlq.base_path == Path("./tmp/dlq")
    assert dlq.check_interval == 30.0
    assert dlq.batch_size == 100
    assert dlq.max_retries == 5
    assert dlq.backoff_base_ms == 1000
    assert dlq.backoff_max_ms == 60000
    assert dlq.max_queue_messages == 10_000_000
    assert dlq.max_queue_bytes == 10 * GIB
    assert dlq.min_free_disk_mb == 512
    assert dlq.min_free_disk_bytes == 512 * MIB
    assert dlq.when_full is WhenFull.BLOCK
    assert dlq.message_ttl == 0
    assert dlq.max_open_queues is None  # auto: from the open-file limit
    assert dlq.max_message_bytes == 16 * MIB


def test_non_dlq_variables_are_ignored(no_dotenv: Path) -> None:
    env = {"PATH": "/usr/bin", "HOME": "/root", "DLQ": "x", "dlq_batch_size": "7"}
    assert load(env, no_dotenv) == DLQConfig()


# --- parsing of every variable ----------------------------------------------------------------

VALID_CASES: list[tuple[str, str, str, object]] = [
    ("DLQ_BASE_PATH", "/var/lib/rosetta/dlq", "base_path", Path("/var/lib/rosetta/dlq")),
    ("DLQ_BASE_PATH", "  ./data dir/dlq  ", "base_path", Path("./data dir/dlq")),
    ("DLQ_BASE_PATH", "relative", "base_path", Path("relative")),
    ("DLQ_CHECK_INTERVAL", "5", "check_interval", 5.0),
    ("DLQ_CHECK_INTERVAL", "0.5", "check_interval", 0.5),
    ("DLQ_CHECK_INTERVAL", "0.05", "check_interval", 0.05),
    ("DLQ_CHECK_INTERVAL", "86400", "check_interval", 86400.0),
    ("DLQ_CHECK_INTERVAL", " 12 ", "check_interval", 12.0),
    ("DLQ_CHECK_INTERVAL_MIN", "0.05", "check_interval_min", 0.05),
    ("DLQ_CHECK_INTERVAL_MIN", "2.5", "check_interval_min", 2.5),
    ("DLQ_CHECK_INTERVAL_MIN", "30", "check_interval_min", 30.0),
    ("DLQ_BATCH_SIZE", "1", "batch_size", 1),
    ("DLQ_BATCH_SIZE", "500", "batch_size", 500),
    ("DLQ_BATCH_SIZE", "100000", "batch_size", 100_000),
    ("DLQ_BATCH_SIZE", " 250 ", "batch_size", 250),
    ("DLQ_BATCH_SIZE", "1_000", "batch_size", 1000),
    ("DLQ_MAX_RETRIES", "0", "max_retries", 0),
    ("DLQ_MAX_RETRIES", "10", "max_retries", 10),
    ("DLQ_MAX_RETRIES", "1000000", "max_retries", 1_000_000),
    ("DLQ_BACKOFF_BASE_MS", "1", "backoff_base_ms", 1),
    ("DLQ_BACKOFF_BASE_MS", "250", "backoff_base_ms", 250),
    ("DLQ_BACKOFF_BASE_MS", "60000", "backoff_base_ms", 60000),
    ("DLQ_BACKOFF_MAX_MS", "1000", "backoff_max_ms", 1000),
    ("DLQ_BACKOFF_MAX_MS", "300000", "backoff_max_ms", 300_000),
    ("DLQ_BACKOFF_MAX_MS", "86400000", "backoff_max_ms", 86_400_000),
    ("DLQ_MAX_QUEUE_MESSAGES", "1", "max_queue_messages", 1),
    ("DLQ_MAX_QUEUE_MESSAGES", "5000", "max_queue_messages", 5000),
    ("DLQ_MAX_QUEUE_MESSAGES", "1000000000000", "max_queue_messages", 10**12),
    ("DLQ_MAX_QUEUE_BYTES", "1048576", "max_queue_bytes", 1_048_576),
    ("DLQ_MAX_QUEUE_BYTES", "512MB", "max_queue_bytes", 512 * 1000**2),
    ("DLQ_MAX_QUEUE_BYTES", "512MiB", "max_queue_bytes", 512 * MIB),
    ("DLQ_MAX_QUEUE_BYTES", "10GiB", "max_queue_bytes", 10 * GIB),
    ("DLQ_MAX_QUEUE_BYTES", "10GB", "max_queue_bytes", 10 * 1000**3),
    ("DLQ_MAX_QUEUE_BYTES", "2.5GiB", "max_queue_bytes", 5 * GIB // 2),
    ("DLQ_MAX_QUEUE_BYTES", "4.1MB", "max_queue_bytes", 4_100_000),
    ("DLQ_MAX_QUEUE_BYTES", "1024KiB", "max_queue_bytes", 1024 * KIB),
    ("DLQ_MAX_QUEUE_BYTES", "2000kb", "max_queue_bytes", 2_000_000),
    ("DLQ_MAX_QUEUE_BYTES", "10 gib", "max_queue_bytes", 10 * GIB),
    ("DLQ_MAX_QUEUE_BYTES", "3G", "max_queue_bytes", 3 * 1000**3),
    ("DLQ_MAX_QUEUE_BYTES", "2000000B", "max_queue_bytes", 2_000_000),
    ("DLQ_MAX_QUEUE_BYTES", "1TiB", "max_queue_bytes", 1024 * GIB),
    ("DLQ_MAX_QUEUE_BYTES", "1MiB", "max_queue_bytes", MIB),
    ("DLQ_MAX_QUEUE_BYTES", "1024TiB", "max_queue_bytes", 1024**5),
    ("DLQ_MIN_FREE_DISK_MB", "0", "min_free_disk_mb", 0),
    ("DLQ_MIN_FREE_DISK_MB", "1024", "min_free_disk_mb", 1024),
    ("DLQ_MIN_FREE_DISK_MB", " 64 ", "min_free_disk_mb", 64),
    ("DLQ_MIN_FREE_DISK_MB", "2GiB", "min_free_disk_mb", 2048),
    ("DLQ_MIN_FREE_DISK_MB", "512MiB", "min_free_disk_mb", 512),
    # 512 MB (decimal) is 488.28 MiB: rounded up so the floor is never weaker than asked.
    ("DLQ_MIN_FREE_DISK_MB", "512MB", "min_free_disk_mb", 489),
    ("DLQ_MIN_FREE_DISK_MB", "1B", "min_free_disk_mb", 1),
    ("DLQ_WHEN_FULL", "block", "when_full", WhenFull.BLOCK),
    ("DLQ_WHEN_FULL", "drop_newest", "when_full", WhenFull.DROP_NEWEST),
    ("DLQ_WHEN_FULL", "DROP_NEWEST", "when_full", WhenFull.DROP_NEWEST),
    ("DLQ_WHEN_FULL", " Block ", "when_full", WhenFull.BLOCK),
    ("DLQ_MESSAGE_TTL", "0", "message_ttl", 0),
    ("DLQ_MESSAGE_TTL", "3600", "message_ttl", 3600),
    ("DLQ_MESSAGE_TTL", "315360000", "message_ttl", 315_360_000),
    ("DLQ_MAX_OPEN_QUEUES", "1", "max_open_queues", 1),
    ("DLQ_MAX_OPEN_QUEUES", "64", "max_open_queues", 64),
    ("DLQ_MAX_OPEN_QUEUES", "100000", "max_open_queues", 100_000),
    ("DLQ_MAX_OPEN_QUEUES", " Auto ", "max_open_queues", None),
    ("DLQ_MAX_MESSAGE_BYTES", "1KiB", "max_message_bytes", KIB),
    ("DLQ_MAX_MESSAGE_BYTES", "1048576", "max_message_bytes", MIB),
    ("DLQ_MAX_MESSAGE_BYTES", "64MiB", "max_message_bytes", 64 * MIB),
    ("DLQ_MAX_MESSAGE_BYTES", "1GiB", "max_message_bytes", GIB),
    ("DLQ_RESCAN_INTERVAL", "1", "rescan_interval", 1.0),
    ("DLQ_RESCAN_INTERVAL", "2.5", "rescan_interval", 2.5),
    ("DLQ_RESCAN_INTERVAL", "86400", "rescan_interval", 86400.0),
    ("DLQ_LIVE_WRITE_DEADLINE_MS", "10", "live_write_deadline_ms", 10),
    ("DLQ_LIVE_WRITE_DEADLINE_MS", "2_000", "live_write_deadline_ms", 2000),
    ("DLQ_LIVE_WRITE_DEADLINE_MS", "3600000", "live_write_deadline_ms", 3_600_000),
    ("DLQ_READ_AHEAD_EVENTS", "1", "read_ahead_events", 1),
    ("DLQ_READ_AHEAD_EVENTS", "10000000", "read_ahead_events", 10_000_000),
    ("DLQ_PROGRESS_INTERVAL", "0", "progress_interval", 0.0),
    ("DLQ_PROGRESS_INTERVAL", "0.1", "progress_interval", 0.1),
    ("DLQ_PROGRESS_INTERVAL", "30", "progress_interval", 30.0),
    ("DLQ_PROGRESS_INTERVAL", "86400", "progress_interval", 86400.0),
    ("DLQ_FSYNC", "always", "fsync", FsyncMode.ALWAYS),
    ("DLQ_FSYNC", " Interval ", "fsync", FsyncMode.INTERVAL),
    ("DLQ_FSYNC", "off", "fsync", FsyncMode.OFF),
    ("DLQ_FSYNC_INTERVAL_MS", "1", "fsync_interval_ms", 1),
    ("DLQ_FSYNC_INTERVAL_MS", "60000", "fsync_interval_ms", 60_000),
]


@pytest.mark.parametrize(("name", "raw", "field", "expected"), VALID_CASES)
def test_valid_value_is_parsed(
    name: str, raw: str, field: str, expected: object, no_dotenv: Path
) -> None:
    dlq = load({name: raw}, no_dotenv)
    value = getattr(dlq, field)
    assert value == expected
    assert type(value) is type(expected)
    # Only the variable given changes; everything else keeps its default (the
    # message limit follows a queue limit below it).
    others = {f.name for f in dataclasses.fields(DLQConfig)} - {field}
    if name == "DLQ_MAX_QUEUE_BYTES":
        others.discard("max_message_bytes")
        assert dlq.max_message_bytes == min(16 * MIB, value)
    for other in others:
        assert getattr(dlq, other) == getattr(DLQConfig(), other)


def test_valid_cases_cover_every_variable() -> None:
    assert {case[0] for case in VALID_CASES} == set(ALL_VARIABLES)


def test_large_backoff_base_with_matching_cap(no_dotenv: Path) -> None:
    dlq = load({"DLQ_BACKOFF_BASE_MS": "3600000", "DLQ_BACKOFF_MAX_MS": "86400000"}, no_dotenv)
    assert dlq.backoff_base_ms == 3_600_000
    assert dlq.backoff_max_ms == 86_400_000


FULL_ENV = {
    "DLQ_BASE_PATH": "/srv/dlq",
    "DLQ_CHECK_INTERVAL": "2.5",
    "DLQ_CHECK_INTERVAL_MIN": "0.5",
    "DLQ_BATCH_SIZE": "50",
    "DLQ_MAX_RETRIES": "3",
    "DLQ_BACKOFF_BASE_MS": "200",
    "DLQ_BACKOFF_MAX_MS": "2000",
    "DLQ_MAX_QUEUE_MESSAGES": "1000",
    "DLQ_MAX_QUEUE_BYTES": "2.5GiB",
    "DLQ_MIN_FREE_DISK_MB": "100",
    "DLQ_WHEN_FULL": "drop_newest",
    "DLQ_MESSAGE_TTL": "86400",
    "DLQ_MAX_OPEN_QUEUES": "16",
    "DLQ_MAX_MESSAGE_BYTES": "2MiB",
    "DLQ_RESCAN_INTERVAL": "300",
    "DLQ_LIVE_WRITE_DEADLINE_MS": "500",
    "DLQ_READ_AHEAD_EVENTS": "5000",
    "DLQ_PROGRESS_INTERVAL": "60",
    "DLQ_FSYNC": "always",
    "DLQ_FSYNC_INTERVAL_MS": "50",
}


def test_every_variable_at_once(no_dotenv: Path) -> None:
    env = dict(FULL_ENV)
    assert set(env) == set(ALL_VARIABLES)
    assert load(env, no_dotenv) == DLQConfig(
        base_path=Path("/srv/dlq"),
        check_interval=2.5,
        check_interval_min=0.5,
        batch_size=50,
        max_retries=3,
        backoff_base_ms=200,
        backoff_max_ms=2000,
        max_queue_messages=1000,
        max_queue_bytes=2684354560,
        min_free_disk_mb=100,
        when_full=WhenFull.DROP_NEWEST,
        message_ttl=86400,
        max_open_queues=16,
        max_message_bytes=2 * MIB,
        rescan_interval=300.0,
        live_write_deadline_ms=500,
        read_ahead_events=5000,
        progress_interval=60.0,
        fsync=FsyncMode.ALWAYS,
        fsync_interval_ms=50,
    )


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("1048576", 1_048_576),
        ("0", 0),
        ("512MB", 512_000_000),
        ("512mb", 512_000_000),
        ("512M", 512_000_000),
        ("512MiB", 536_870_912),
        ("10GiB", 10_737_418_240),
        ("2.5GiB", 2_684_354_560),
        ("1KB", 1000),
        ("1KiB", 1024),
        ("1k", 1000),
        ("1TB", 1000**4),
        ("1TiB", 1024**4),
        ("4.1MB", 4_100_000),
        ("0.5KiB", 512),
        (" 7 GB ", 7_000_000_000),
    ],
)
def test_parse_size(text: str, expected: int) -> None:
    """MB/GB are decimal (powers of 1000), MiB/GiB binary (powers of 1024)."""
    assert parse_size(text) == expected


@pytest.mark.parametrize(
    "text",
    ["", " ", "MB", "-1", "-5MB", "1e3", "1e400", "10XB", "10 G i B", "1.2.3GB", ".5GB", "1PB"],
)
def test_parse_size_rejects(text: str) -> None:
    with pytest.raises(ValueError):
        parse_size(text)


# --- invalid values ---------------------------------------------------------------------------

HUGE = "9" * 400
HUGER = "9" * 5000  # longer than Python's int-from-str digit limit

# variable -> (bad values, a fragment of the "what is accepted" text)
INVALID_CASES: dict[str, tuple[list[str], str]] = {
    "DLQ_BASE_PATH": (
        # A negative or non-numeric value is a valid relative path name; absurd
        # ones are those no filesystem takes.
        ["", "   ", "a\x00b", "x" * 256, "/tmp/" + "a/" * 2100, HUGER],
        "non-empty directory path",
    ),
    "DLQ_CHECK_INTERVAL": (
        ["", " ", "-1", "0", "0.01", "abc", "30s", "1e400", "-1e400", "inf", "nan", "86401", HUGE],
        "a number from 0.05 to 86400",
    ),
    "DLQ_CHECK_INTERVAL_MIN": (
        ["", " ", "-1", "0", "0.01", "abc", "1s", "1e400", "inf", "nan", "86401", HUGE],
        "a number from 0.05 to 86400, not above DLQ_CHECK_INTERVAL",
    ),
    "DLQ_BATCH_SIZE": (
        ["", "0", "-5", "abc", "1.5", "1e3", "1e400", "100001", HUGE, HUGER, "0x10"],
        "an integer from 1 to 100000",
    ),
    "DLQ_MAX_RETRIES": (
        ["", "-1", "many", "2.0", "1e400", "1000001", HUGE],
        "an integer from 0 to 1000000",
    ),
    "DLQ_BACKOFF_BASE_MS": (
        ["", "0", "-100", "1s", "soon", "0.5", "1e400", "3600001", HUGE],
        "an integer from 1 to 3600000",
    ),
    "DLQ_BACKOFF_MAX_MS": (
        ["", "0", "-1", "x", "1.5", "1e400", "86400001", HUGE],
        "an integer from 1 to 86400000",
    ),
    "DLQ_MAX_QUEUE_MESSAGES": (
        ["", "0", "-1", "ten", "1e400", "1000000000001", HUGE, HUGER],
        "an integer from 1 to 1000000000000",
    ),
    "DLQ_MAX_QUEUE_BYTES": (
        [
            "",
            "0",
            "-1",
            "-1GiB",
            "1e400",
            HUGE,
            HUGER,
            "10XB",
            "GiB",
            "1.5.5GB",
            "10 GiB extra",
            "1024KB",  # 1,024,000 bytes: below the 1MiB minimum
            "1048575",
            "1025TiB",
            "1PiB",
        ],
        "at least 1MiB",
    ),
    "DLQ_MIN_FREE_DISK_MB": (
        ["", "-1", "-1GiB", "512.5", "lots", "1e400", HUGE, HUGER, "1073741825", "2PB", "5 MBs"],
        "a whole number of MiB",
    ),
    "DLQ_WHEN_FULL": (
        ["", "drop", "drop_oldest", "block,drop_newest", "1", "-1", "blocking", HUGE],
        "one of: block, drop_newest",
    ),
    "DLQ_MESSAGE_TTL": (
        ["", "-1", "1.5", "forever", "1e400", "315360001", HUGE],
        "from 0 (never expire) to 315360000",
    ),
    "DLQ_MAX_OPEN_QUEUES": (
        ["", "0", "-1", "100001", "1e400", "many", "automatic", HUGE],
        "auto (as many as the open-file limit allows, up to 2048), or an integer from 1 to 100000",
    ),
    "DLQ_MAX_MESSAGE_BYTES": (
        ["", "0", "-1", "-1MiB", "big", "1e400", "1023", "1.5GiB", "2TiB", HUGE, HUGER],
        "from 1KiB to 1GiB",
    ),
    "DLQ_RESCAN_INTERVAL": (
        ["", "0", "0.5", "-1", "86401", "nan", "inf", "often", HUGE],
        "a number from 1 to 86400",
    ),
    "DLQ_LIVE_WRITE_DEADLINE_MS": (
        ["", "0", "9", "-1", "1.5", "3600001", "2s", "nan", HUGE],
        "an integer from 10 to 3600000",
    ),
    "DLQ_READ_AHEAD_EVENTS": (
        ["", "0", "-1", "1.5", "10000001", "lots", "1e400", HUGE],
        "an integer from 1 to 10000000",
    ),
    "DLQ_PROGRESS_INTERVAL": (
        ["", "-1", "0.05", "86401", "nan", "inf", "10s", "often", HUGE],
        "0 (off) or a number from 0.1 to 86400",
    ),
    "DLQ_FSYNC": (["", "-1", "sometimes", "on", "true", HUGE], "one of: always, interval, off"),
    "DLQ_FSYNC_INTERVAL_MS": (
        ["", "0", "-1", "1.5", "60001", "200ms", "nan", HUGE],
        "an integer from 1 to 60000",
    ),
}


def test_invalid_cases_cover_every_variable() -> None:
    assert set(INVALID_CASES) == set(ALL_VARIABLES)
    assert set(ALL_VARIABLES) == set(DLQ_VARIABLES)


# Alert thresholds are DLQ_* variables too (config.alert_config.ALERT_VARIABLES).
ALERT_INVALID_CASES: dict[str, tuple[list[str], str]] = {
    "DLQ_ALERT_QUEUE_SIZE": (["", "0", "-1", "lots", "1.5", HUGE, HUGER], "from 1 to"),
    "DLQ_ALERT_QUEUE_SIZE_CRITICAL": (["", "0", "-1", "lots", HUGE], "from 1 to"),
    "DLQ_ALERT_MAX_AGE": (["", "0", "-1", "1h", "nan", "inf", HUGE], "from 1 to 315360000"),
    "DLQ_ALERT_MAX_AGE_CRITICAL": (["", "-1", "1d", "day", "1e400", HUGE], "from 1 to 315360000"),
    "DLQ_ALERT_UNHEALTHY_SECONDS": (["", "-1", "5m", "long", "-inf", HUGE], "from 0 to 315360000"),
    "DLQ_ALERT_DISK_PCT": (["", "0", "-1", "most", "101", "1e400", HUGE], "a percentage"),
    "DLQ_ALERT_WEBHOOK_URL": (
        [
            "",
            "-1",
            "hooks",
            "ftp://x/y",
            "http://",
            "http://a b/",
            "http://h/\x00",
            "https://h/" + "a" * 3000,
        ],
        "an http:// or https:// URL",
    ),
    "DLQ_ALERT_EVAL_INTERVAL": (["", "0", "-1", "often", "86401", HUGE], "from 0.05 to 86400"),
    "DLQ_ALERT_SOURCE_LAG_BYTES": (["", "0", "-1", "lots", "1 parsec", HUGE], "a size such as"),
    "DLQ_ALERT_SOURCE_LAG_BYTES_CRITICAL": (["", "0", "-1", "much", HUGE], "a size such as"),
    "DLQ_ALERT_SOURCE_LAG_SECONDS": (
        ["", "0", "-1", "5m", "nan", HUGE],
        "from 0.1 to 315360000",
    ),
    "DLQ_ALERT_SOURCE_LAG_SECONDS_CRITICAL": (
        ["", "-1", "1h", "inf", HUGE],
        "from 0.1 to 315360000",
    ),
}


def _is_negative(raw: str) -> bool:
    return raw.strip().startswith("-")


def _is_non_numeric(raw: str) -> bool:
    return any(ch.isalpha() for ch in raw) and not raw[:1].isdigit() and not _is_negative(raw)


@pytest.mark.parametrize("cases", [INVALID_CASES, ALERT_INVALID_CASES], ids=["dlq", "alerts"])
def test_every_variable_is_tried_empty_negative_non_numeric_and_absurd(
    cases: dict[str, tuple[list[str], str]],
) -> None:
    """The issue's four kinds of bad value, for every DLQ_* variable there is."""
    assert set(INVALID_CASES) | set(ALERT_INVALID_CASES) == set(DLQ_VARIABLES) | set(
        ALERT_VARIABLES
    )
    for name, (values, _accepted) in cases.items():
        assert "" in values, name
        assert any(len(v) >= 256 for v in values), name  # absurd
        if name == "DLQ_BASE_PATH":
            continue  # "-1" and "abc" are fine directory names
        assert any(_is_negative(v) for v in values), name
        assert any(_is_non_numeric(v) for v in values), name


@pytest.mark.parametrize(
    ("name", "raw", "accepted"),
    [
        pytest.param(name, raw, accepted, id=f"{name}={raw[:20]!r}")
        for name, (values, accepted) in ALERT_INVALID_CASES.items()
        for raw in values
    ],
)
def test_invalid_alert_value_is_reported(
    name: str, raw: str, accepted: str, no_dotenv: Path
) -> None:
    error = load_error({name: raw}, no_dotenv)
    assert len(error.problems) == 1, error.problems
    problem = error.problems[0]
    assert problem.startswith(f"{name}={raw!r} is invalid: expected ")
    assert accepted in problem


def test_message_limit_above_the_queue_limit_is_rejected(no_dotenv: Path) -> None:
    env = {"DLQ_MAX_QUEUE_BYTES": "8MiB", "DLQ_MAX_MESSAGE_BYTES": "9MiB"}
    [problem] = load_error(env, no_dotenv).problems
    assert "DLQ_MAX_MESSAGE_BYTES='9MiB' is above DLQ_MAX_QUEUE_BYTES='8MiB'" in problem


def test_first_probe_wait_above_the_check_interval_is_rejected(no_dotenv: Path) -> None:
    env = {"DLQ_CHECK_INTERVAL": "5", "DLQ_CHECK_INTERVAL_MIN": "6"}
    [problem] = load_error(env, no_dotenv).problems
    assert problem == (
        "DLQ_CHECK_INTERVAL_MIN='6' is above DLQ_CHECK_INTERVAL='5': the first wait between "
        "health checks cannot be longer than the longest"
    )
    [problem] = load_error({"DLQ_CHECK_INTERVAL_MIN": "60"}, no_dotenv).problems
    assert "DLQ_CHECK_INTERVAL_MIN='60' is above DLQ_CHECK_INTERVAL=30 (the default)" in problem
    # equal is fine (a fixed interval, the behaviour before the backoff), and a bad
    # interval is reported once, not compared
    assert load({"DLQ_CHECK_INTERVAL_MIN": "30"}, no_dotenv).check_interval_min == 30.0
    error = load_error({"DLQ_CHECK_INTERVAL": "x", "DLQ_CHECK_INTERVAL_MIN": "6"}, no_dotenv)
    assert len(error.problems) == 1 and error.problems[0].startswith("DLQ_CHECK_INTERVAL='x'")


def test_message_limit_follows_a_small_queue_limit(no_dotenv: Path) -> None:
    dlq = load({"DLQ_MAX_QUEUE_BYTES": "4MiB"}, no_dotenv)
    assert dlq.max_message_bytes == 4 * MIB
    assert load({"DLQ_MAX_QUEUE_BYTES": "1GiB"}, no_dotenv).max_message_bytes == 16 * MIB


@pytest.mark.parametrize(
    ("name", "raw", "accepted"),
    [
        pytest.param(name, raw, accepted, id=f"{name}={raw[:20]!r}")
        for name, (values, accepted) in INVALID_CASES.items()
        for raw in values
    ],
)
def test_invalid_value_is_reported(name: str, raw: str, accepted: str, no_dotenv: Path) -> None:
    error = load_error({name: raw}, no_dotenv)
    assert isinstance(error, RosettaError)
    assert len(error.problems) == 1, error.problems
    problem = error.problems[0]
    assert str(error) == problem
    assert name in problem
    assert repr(raw) in problem  # the bad value, quoted so an empty one is visible
    assert "expected" in problem
    assert accepted in problem


def test_size_variable_error_lists_units(no_dotenv: Path) -> None:
    problem = load_error({"DLQ_MAX_QUEUE_BYTES": "lots"}, no_dotenv).problems[0]
    for example in ("512MB", "10GiB", "1048576"):
        assert example in problem


def test_all_bad_variables_are_reported_at_once(no_dotenv: Path) -> None:
    env = {
        "DLQ_BATCH_SIZE": "zero",
        "DLQ_CHECK_INTERVAL": "-3",
        "DLQ_MAX_QUEUE_BYTES": "10XB",
        "DLQ_WHEN_FULL": "explode",
        "DLQ_MESSAGE_TTL": "1e400",
        "DLQ_MAX_RETRIES": "7",  # valid: must not be reported
    }
    error = load_error(env, no_dotenv)
    assert len(error.problems) == 5
    text = str(error)
    assert text.startswith("5 invalid settings:")
    for name, raw in env.items():
        if name == "DLQ_MAX_RETRIES":
            assert name not in text
            continue
        assert sum(name in p for p in error.problems) == 1
        assert f"{name}={raw!r}" in text


def test_every_variable_bad_at_once(no_dotenv: Path) -> None:
    env = {name: "" for name in ALL_VARIABLES}
    error = load_error(env, no_dotenv)
    assert len(error.problems) == len(ALL_VARIABLES)
    for name in ALL_VARIABLES:
        assert any(p.startswith(f"{name}=''") for p in error.problems)


def test_problems_is_a_copy() -> None:
    source = ["A=1 is invalid"]
    error = ConfigError(source)
    source.append("B=2 is invalid")
    assert error.problems == ["A=1 is invalid"]


# --- backoff base versus cap ------------------------------------------------------------------


@pytest.mark.parametrize(
    ("env", "cap", "base"),
    [
        ({"DLQ_BACKOFF_BASE_MS": "5000", "DLQ_BACKOFF_MAX_MS": "4999"}, 4999, 5000),
        ({"DLQ_BACKOFF_MAX_MS": "500"}, 500, 1000),  # below the default base
        ({"DLQ_BACKOFF_BASE_MS": "120000"}, 60000, 120000),  # above the default cap
    ],
)
def test_backoff_cap_below_base_is_rejected(
    env: dict[str, str], cap: int, base: int, no_dotenv: Path
) -> None:
    error = load_error(env, no_dotenv)
    assert len(error.problems) == 1
    problem = error.problems[0]
    assert f"DLQ_BACKOFF_MAX_MS={cap}" in problem
    assert f"DLQ_BACKOFF_BASE_MS={base}" in problem
    assert "at least" in problem


def test_backoff_cap_equal_to_base_is_accepted(no_dotenv: Path) -> None:
    dlq = load({"DLQ_BACKOFF_BASE_MS": "2000", "DLQ_BACKOFF_MAX_MS": "2000"}, no_dotenv)
    assert dlq.backoff_base_ms == dlq.backoff_max_ms == 2000


def test_backoff_cap_problem_joins_other_problems(no_dotenv: Path) -> None:
    env = {"DLQ_BACKOFF_BASE_MS": "900", "DLQ_BACKOFF_MAX_MS": "100", "DLQ_BATCH_SIZE": "-1"}
    error = load_error(env, no_dotenv)
    assert len(error.problems) == 2
    assert any("DLQ_BATCH_SIZE" in p for p in error.problems)
    assert any(
        "DLQ_BACKOFF_MAX_MS=100 is below DLQ_BACKOFF_BASE_MS=900" in p for p in error.problems
    )


@pytest.mark.parametrize(
    "env",
    [
        {"DLQ_BACKOFF_BASE_MS": "abc", "DLQ_BACKOFF_MAX_MS": "500"},
        {"DLQ_BACKOFF_BASE_MS": "120000", "DLQ_BACKOFF_MAX_MS": "-1"},
    ],
)
def test_bad_backoff_value_is_not_compared_against_a_default(
    env: dict[str, str], no_dotenv: Path
) -> None:
    """Regression: a bad base used to be replaced by the default 1000 and then reported
    again as "DLQ_BACKOFF_MAX_MS=500 is below DLQ_BACKOFF_BASE_MS=1000"."""
    error = load_error(env, no_dotenv)
    assert len(error.problems) == 1, error.problems
    assert "is below" not in str(error)


# --- .env precedence --------------------------------------------------------------------------


def write_env(path: Path, text: str) -> Path:
    path.write_text(text, encoding="utf-8")
    return path


def test_dotenv_alone_applies(tmp_path: Path) -> None:
    dotenv = write_env(
        tmp_path / "settings.env",
        "# Rosetta DLQ\n"
        "DLQ_BATCH_SIZE=250\n"
        'DLQ_BASE_PATH="/data/rosetta dlq"\n'
        "export DLQ_WHEN_FULL=drop_newest\n"
        "DLQ_MAX_QUEUE_BYTES='512MB'  # inline comment\n",
    )
    dlq = load({}, dotenv)
    assert dlq.batch_size == 250
    assert dlq.base_path == Path("/data/rosetta dlq")
    assert dlq.when_full is WhenFull.DROP_NEWEST
    assert dlq.max_queue_bytes == 512_000_000
    assert dlq.max_retries == 5  # not in the file: default


def test_real_env_wins_over_dotenv(tmp_path: Path) -> None:
    dotenv = write_env(tmp_path / ".env", "DLQ_BATCH_SIZE=250\nDLQ_MAX_RETRIES=9\n")
    dlq = load({"DLQ_BATCH_SIZE": "300"}, dotenv)
    assert dlq.batch_size == 300  # env wins
    assert dlq.max_retries == 9  # .env still applies where env is silent


def test_valid_env_value_hides_a_bad_dotenv_value(tmp_path: Path) -> None:
    dotenv = write_env(tmp_path / ".env", "DLQ_BATCH_SIZE=lots\n")
    assert load({"DLQ_BATCH_SIZE": "10"}, dotenv).batch_size == 10


def test_bad_env_value_wins_over_good_dotenv_value(tmp_path: Path) -> None:
    dotenv = write_env(tmp_path / ".env", "DLQ_BATCH_SIZE=10\n")
    error = load_error({"DLQ_BATCH_SIZE": "0"}, dotenv)
    assert error.problems == [error.problems[0]]
    assert "DLQ_BATCH_SIZE='0'" in error.problems[0]


def test_bad_dotenv_value_is_reported(tmp_path: Path) -> None:
    dotenv = write_env(tmp_path / ".env", "DLQ_WHEN_FULL=sometimes\nDLQ_BATCH_SIZE=\n")
    error = load_error({}, dotenv)
    assert len(error.problems) == 2
    assert any("DLQ_WHEN_FULL='sometimes'" in p for p in error.problems)
    assert any("DLQ_BATCH_SIZE=''" in p for p in error.problems)


def test_dotenv_key_without_value_is_ignored(tmp_path: Path) -> None:
    dotenv = write_env(tmp_path / ".env", "DLQ_BATCH_SIZE\n")
    assert load({}, dotenv).batch_size == 100


def test_missing_dotenv_is_fine(tmp_path: Path) -> None:
    assert load({"DLQ_BATCH_SIZE": "42"}, tmp_path / "missing.env").batch_size == 42
    assert load({}, tmp_path / "missing.env") == DLQConfig()


def test_dotenv_path_that_is_a_directory_is_an_error(tmp_path: Path) -> None:
    error = load_error({}, tmp_path)
    assert str(tmp_path) in str(error)
    assert "not a regular file" in str(error)


def test_default_dotenv_is_dot_env_in_working_directory(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    write_env(tmp_path / ".env", "DLQ_BATCH_SIZE=77\n")
    monkeypatch.chdir(tmp_path)
    assert load_settings(env={}).dlq.batch_size == 77
    assert load_settings(env={"DLQ_BATCH_SIZE": "78"}).dlq.batch_size == 78


def test_default_env_is_the_process_environment(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import os

    for name in [n for n in os.environ if n.startswith("DLQ_")]:
        monkeypatch.delenv(name)
    monkeypatch.setenv("DLQ_MAX_RETRIES", "8")
    write_env(tmp_path / ".env", "DLQ_MAX_RETRIES=2\nDLQ_BATCH_SIZE=64\n")
    settings = load_settings(dotenv_path=tmp_path / ".env")
    assert settings.dlq.max_retries == 8
    assert settings.dlq.batch_size == 64


# --- unknown variables ------------------------------------------------------------------------


def test_unknown_dlq_variable_logs_a_warning(
    no_dotenv: Path, caplog: pytest.LogCaptureFixture
) -> None:
    with caplog.at_level(logging.WARNING, logger="config.settings"):
        dlq = load({"DLQ_BATCH_SIZ": "5", "DLQ_BATCH_SIZE": "6", "OTHER": "x"}, no_dotenv)
    assert dlq.batch_size == 6
    warnings = [r for r in caplog.records if r.levelno == logging.WARNING]
    assert len(warnings) == 1
    message = warnings[0].getMessage()
    assert "DLQ_BATCH_SIZ" in message
    assert "variable=DLQ_BATCH_SIZ " in message
    assert warnings[0].name == "config.settings"


def test_unknown_dlq_variable_in_dotenv_logs_a_warning(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    dotenv = write_env(tmp_path / ".env", "DLQ_TTL=60\nDLQ_MESSAGE_TTL=60\n")
    with caplog.at_level(logging.WARNING, logger="config.settings"):
        assert load({}, dotenv).message_ttl == 60
    messages = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert len(messages) == 1
    assert "variable=DLQ_TTL " in messages[0]


def test_known_variables_do_not_warn(no_dotenv: Path, caplog: pytest.LogCaptureFixture) -> None:
    with caplog.at_level(logging.WARNING, logger="config.settings"):
        load(FULL_ENV, no_dotenv)
        load({}, no_dotenv)
    assert [r for r in caplog.records if r.levelno >= logging.WARNING] == []


def test_each_unknown_variable_is_named(no_dotenv: Path, caplog: pytest.LogCaptureFixture) -> None:
    with caplog.at_level(logging.WARNING, logger="config.settings"):
        load({"DLQ_FOO": "1", "DLQ_BAR": "2"}, no_dotenv)
    text = "\n".join(r.getMessage() for r in caplog.records)
    assert "variable=DLQ_FOO" in text
    assert "variable=DLQ_BAR" in text


# --- immutability ------------------------------------------------------------------------------


def test_dlq_config_is_frozen(no_dotenv: Path) -> None:
    dlq = load({}, no_dotenv)
    with pytest.raises(dataclasses.FrozenInstanceError):
        dlq.batch_size = 1  # type: ignore[misc]
    with pytest.raises(dataclasses.FrozenInstanceError):
        dlq.base_path = Path("/elsewhere")  # type: ignore[misc]
    assert dlq.batch_size == 100


def test_settings_is_frozen(no_dotenv: Path) -> None:
    settings = load_settings(env={}, dotenv_path=no_dotenv)
    with pytest.raises(dataclasses.FrozenInstanceError):
        settings.dlq = DLQConfig(batch_size=1)  # type: ignore[misc]


def test_configs_are_values(no_dotenv: Path) -> None:
    first = load({"DLQ_BATCH_SIZE": "9"}, no_dotenv)
    second = load({"DLQ_BATCH_SIZE": "9"}, no_dotenv)
    assert first == second
    assert hash(first) == hash(second)
    assert dataclasses.replace(first, batch_size=10).batch_size == 10
    assert first.batch_size == 9


def test_env_mapping_is_not_modified(tmp_path: Path) -> None:
    dotenv = write_env(tmp_path / ".env", "DLQ_MAX_RETRIES=3\n")
    env = {"DLQ_BATCH_SIZE": "9"}
    load(env, dotenv)
    assert env == {"DLQ_BATCH_SIZE": "9"}
