"""DLQ_BACKEND and DLQ_NATS_*: defaults, accepted values, and one clear line per bad one."""

from __future__ import annotations

from pathlib import Path

import pytest

from config.errors import ConfigError
from config.nats_config import Backend
from config.settings import load_settings


def settings(env: dict[str, str], tmp_path: Path):
    return load_settings(env, dotenv_path=tmp_path / "absent.env")


def test_rocksq_is_the_default_and_jetstream_is_opt_in(tmp_path: Path) -> None:
    assert settings({}, tmp_path).dlq.backend is Backend.ROCKSQ
    chosen = settings(
        {
            "DLQ_BACKEND": "JetStream",
            "DLQ_NATS_URLS": "nats://a:4222, tls://b:4222",
            "DLQ_NATS_REPLICAS": "5",
            "DLQ_NATS_STREAM_PREFIX": "orders-eu",
            "DLQ_LEASE_TTL": "4.5",
            "DLQ_ENGINE_ID": "engine-a.eu",
        },
        tmp_path,
    ).dlq
    assert chosen.backend is Backend.JETSTREAM
    assert chosen.nats.urls == ("nats://a:4222", "tls://b:4222")
    assert (chosen.nats.replicas, chosen.nats.stream_prefix) == (5, "orders-eu")
    assert (chosen.nats.lease_ttl, chosen.nats.engine_id) == (4.5, "engine-a.eu")


def test_secrets_are_read_but_never_shown(tmp_path: Path) -> None:
    nats = settings(
        {"DLQ_NATS_TOKEN": "s3cr3t-token", "DLQ_NATS_USER": "u", "DLQ_NATS_PASSWORD": "pw-42"},
        tmp_path,
    ).dlq.nats
    assert (nats.token, nats.user, nats.password) == ("s3cr3t-token", "u", "pw-42")
    shown = repr(nats)
    assert "s3cr3t-token" not in shown and "pw-42" not in shown


def test_every_bad_value_is_named_with_what_is_accepted(tmp_path: Path) -> None:
    with pytest.raises(ConfigError) as raised:
        settings(
            {
                "DLQ_BACKEND": "kafka",
                "DLQ_NATS_URLS": "http://a:80",
                "DLQ_NATS_REPLICAS": "0",
                "DLQ_NATS_STREAM_PREFIX": "a.b",
                "DLQ_NATS_CREDS_FILE": str(tmp_path / "missing.creds"),
                "DLQ_NATS_USER": "only-user",
                "DLQ_LEASE_TTL": "0",
                "DLQ_ENGINE_ID": "has space",
            },
            tmp_path,
        )
    text = str(raised.value)
    for expected in (
        "DLQ_BACKEND='kafka' is invalid: expected one of: rocksq, jetstream",
        "DLQ_NATS_URLS='http://a:80' is invalid: expected comma-separated server URLs",
        "DLQ_NATS_REPLICAS='0' is invalid: expected an integer from 1 to 5",
        "DLQ_NATS_STREAM_PREFIX='a.b' is invalid",
        "DLQ_NATS_CREDS_FILE=",
        "DLQ_NATS_USER and DLQ_NATS_PASSWORD must be set together",
        "DLQ_LEASE_TTL='0' is invalid",
        "DLQ_ENGINE_ID='has space' is invalid",
    ):
        assert expected in text, (expected, text)


def test_nats_variables_are_not_reported_as_unknown(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    settings({"DLQ_NATS_URLS": "nats://a:1", "DLQ_BACKEND": "rocksq"}, tmp_path)
    assert "unknown setting" not in caplog.text
