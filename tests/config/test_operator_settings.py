"""Tests of the admin API and alert settings: ``ROSETTA_ADMIN_*`` and ``DLQ_ALERT_*``."""

from __future__ import annotations

from pathlib import Path

import pytest

from config import ConfigError, load_settings
from config.admin_config import AdminConfig
from config.alert_config import AlertConfig


def settings(env: dict[str, str], tmp_path: Path):  # type: ignore[no-untyped-def]
    return load_settings(env=env, dotenv_path=tmp_path / "absent.env")


def error_of(env: dict[str, str], tmp_path: Path) -> ConfigError:
    with pytest.raises(ConfigError) as info:
        settings(env, tmp_path)
    return info.value


def test_defaults(tmp_path: Path) -> None:
    loaded = settings({}, tmp_path)
    assert loaded.admin == AdminConfig(host="127.0.0.1", port=8686, enabled=True)
    assert loaded.admin.token is None
    # The thresholds of the seed: 1000 messages, 1 hour, 5 minutes unhealthy, 80% disk.
    assert loaded.alerts == AlertConfig()
    assert (loaded.alerts.queue_size, loaded.alerts.max_age) == (1000, 3600.0)
    assert (loaded.alerts.unhealthy_seconds, loaded.alerts.disk_pct) == (300.0, 80.0)
    assert loaded.alerts.webhook_url is None


@pytest.mark.parametrize(
    ("raw", "host", "port"),
    [
        ("127.0.0.1:0", "127.0.0.1", 0),
        ("localhost:9000", "localhost", 9000),
        ("[::1]:81", "::1", 81),
    ],
)
def test_admin_addr_on_loopback(raw: str, host: str, port: int, tmp_path: Path) -> None:
    admin = settings({"ROSETTA_ADMIN_ADDR": raw}, tmp_path).admin
    assert (admin.host, admin.port, admin.enabled, admin.is_loopback) == (host, port, True, True)


def test_admin_off(tmp_path: Path) -> None:
    assert settings({"ROSETTA_ADMIN_ADDR": "off"}, tmp_path).admin.enabled is False


@pytest.mark.parametrize("raw", ["x", "127.0.0.1", "127.0.0.1:99999", ":80", "host:-1", "a b:1"])
def test_bad_admin_addr_names_the_variable(raw: str, tmp_path: Path) -> None:
    problems = error_of({"ROSETTA_ADMIN_ADDR": raw}, tmp_path).problems
    assert problems == [
        f"ROSETTA_ADMIN_ADDR={raw!r} is invalid: expected HOST:PORT (port 0 to 65535, "
        "0 picks a free port), [IPv6]:PORT, or off"
    ]


def test_non_loopback_admin_needs_a_token(tmp_path: Path) -> None:
    problems = error_of({"ROSETTA_ADMIN_ADDR": "0.0.0.0:8686"}, tmp_path).problems
    assert len(problems) == 1 and "ROSETTA_ADMIN_TOKEN" in problems[0]
    admin = settings(
        {"ROSETTA_ADMIN_ADDR": "0.0.0.0:8686", "ROSETTA_ADMIN_TOKEN": "s3cret"}, tmp_path
    ).admin
    assert (admin.host, admin.token, admin.is_loopback) == ("0.0.0.0", "s3cret", False)
    assert "s3cret" not in repr(admin)


def test_admin_limits_and_allowed_hosts(tmp_path: Path) -> None:
    defaults = settings({}, tmp_path).admin
    assert (defaults.allowed_hosts, defaults.max_connections, defaults.timeout) == ((), 32, 10.0)
    assert defaults.max_body_bytes == 1024 * 1024 * 1024
    admin = settings(
        {
            "ROSETTA_ADMIN_ALLOWED_HOSTS": " Rosetta.Internal. , admin.example.com:443,,[::1]:8080",
            "ROSETTA_ADMIN_MAX_CONNECTIONS": "8",
            "ROSETTA_ADMIN_TIMEOUT": "2.5",
            "ROSETTA_ADMIN_MAX_BODY_MB": "2GiB",
        },
        tmp_path,
    ).admin
    assert admin.allowed_hosts == ("rosetta.internal", "admin.example.com:443", "[::1]:8080")
    assert (admin.max_connections, admin.timeout, admin.max_body_mb) == (8, 2.5, 2048)


def test_bad_admin_limits_name_the_variable(tmp_path: Path) -> None:
    problems = error_of(
        {
            "ROSETTA_ADMIN_ALLOWED_HOSTS": "good.example,bad host",
            "ROSETTA_ADMIN_MAX_CONNECTIONS": "0",
            "ROSETTA_ADMIN_TIMEOUT": "never",
            "ROSETTA_ADMIN_MAX_BODY_MB": "0",
        },
        tmp_path,
    ).problems
    assert [p.split("=")[0] for p in problems] == [
        "ROSETTA_ADMIN_ALLOWED_HOSTS",
        "ROSETTA_ADMIN_MAX_CONNECTIONS",
        "ROSETTA_ADMIN_TIMEOUT",
        "ROSETTA_ADMIN_MAX_BODY_MB",
    ]
    assert all("is invalid: expected" in p for p in problems)


def test_alert_variables_parse(tmp_path: Path) -> None:
    alerts = settings(
        {
            "DLQ_ALERT_QUEUE_SIZE": "50",
            "DLQ_ALERT_QUEUE_SIZE_CRITICAL": "500",
            "DLQ_ALERT_MAX_AGE": "60",
            "DLQ_ALERT_MAX_AGE_CRITICAL": "600",
            "DLQ_ALERT_UNHEALTHY_SECONDS": "2.5",
            "DLQ_ALERT_DISK_PCT": "90%",
            "DLQ_ALERT_WEBHOOK_URL": "http://127.0.0.1:9/hook",
            "DLQ_ALERT_EVAL_INTERVAL": "0.5",
        },
        tmp_path,
    ).alerts
    assert alerts == AlertConfig(50, 500, 60.0, 600.0, 2.5, 90.0, "http://127.0.0.1:9/hook", 0.5)


@pytest.mark.parametrize(
    ("name", "raw"),
    [
        ("DLQ_ALERT_QUEUE_SIZE", ""),
        ("DLQ_ALERT_QUEUE_SIZE", "-1"),
        ("DLQ_ALERT_QUEUE_SIZE", "many"),
        ("DLQ_ALERT_QUEUE_SIZE_CRITICAL", "1e99"),
        ("DLQ_ALERT_MAX_AGE", "0"),
        ("DLQ_ALERT_MAX_AGE_CRITICAL", "nan"),
        ("DLQ_ALERT_UNHEALTHY_SECONDS", "-5"),
        ("DLQ_ALERT_DISK_PCT", "0"),
        ("DLQ_ALERT_DISK_PCT", "101"),
        ("DLQ_ALERT_WEBHOOK_URL", "ftp://host/x"),
        ("DLQ_ALERT_WEBHOOK_URL", "not a url"),
        ("DLQ_ALERT_EVAL_INTERVAL", "0"),
        ("DLQ_ALERT_SOURCE_LAG_BYTES", "0"),
        ("DLQ_ALERT_SOURCE_LAG_BYTES", "lots"),
        ("DLQ_ALERT_SOURCE_LAG_BYTES_CRITICAL", "5 parsecs"),
        ("DLQ_ALERT_SOURCE_LAG_SECONDS", "-1"),
        ("DLQ_ALERT_SOURCE_LAG_SECONDS_CRITICAL", "inf"),
    ],
)
def test_bad_alert_value_names_the_variable(name: str, raw: str, tmp_path: Path) -> None:
    problems = error_of({name: raw}, tmp_path).problems
    assert len(problems) == 1
    assert problems[0].startswith(f"{name}={raw!r} is invalid: expected ")


def test_critical_below_warning_is_refused(tmp_path: Path) -> None:
    problems = error_of(
        {"DLQ_ALERT_QUEUE_SIZE": "100", "DLQ_ALERT_QUEUE_SIZE_CRITICAL": "10"}, tmp_path
    ).problems
    assert problems == [
        "DLQ_ALERT_QUEUE_SIZE_CRITICAL='10' is below DLQ_ALERT_QUEUE_SIZE='100': "
        "the critical level must be at least the warning level"
    ]


def test_source_lag_thresholds_parse_sizes_and_seconds(tmp_path: Path) -> None:
    alerts = settings(
        {
            "DLQ_ALERT_SOURCE_LAG_BYTES": "64MiB",
            "DLQ_ALERT_SOURCE_LAG_BYTES_CRITICAL": "1GB",
            "DLQ_ALERT_SOURCE_LAG_SECONDS": "2.5",
        },
        tmp_path,
    ).alerts
    assert alerts.source_lag_bytes == 64 * 1024**2
    assert alerts.source_lag_bytes_critical == 1000**3
    assert alerts.source_lag_seconds == 2.5
    assert alerts.source_lag_seconds_critical == AlertConfig().source_lag_seconds_critical
    # An unset critical level follows a warning level set above its default.
    high = settings({"DLQ_ALERT_SOURCE_LAG_SECONDS": "7200"}, tmp_path).alerts
    assert high.source_lag_seconds_critical == 7200.0
    problems = error_of(
        {"DLQ_ALERT_SOURCE_LAG_BYTES": "2GiB", "DLQ_ALERT_SOURCE_LAG_BYTES_CRITICAL": "1GiB"},
        tmp_path,
    ).problems
    assert problems == [
        "DLQ_ALERT_SOURCE_LAG_BYTES_CRITICAL='1GiB' is below DLQ_ALERT_SOURCE_LAG_BYTES='2GiB': "
        "the critical level must be at least the warning level"
    ]


def test_unset_critical_follows_a_high_warning(tmp_path: Path) -> None:
    alerts = settings({"DLQ_ALERT_QUEUE_SIZE": "50000", "DLQ_ALERT_MAX_AGE": "100000"}, tmp_path)
    assert alerts.alerts.queue_size_critical == 50000
    assert alerts.alerts.max_age_critical == 100000.0


def test_alert_variables_are_not_unknown(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    settings({"DLQ_ALERT_QUEUE_SIZE": "5"}, tmp_path)
    assert "unknown setting" not in caplog.text
