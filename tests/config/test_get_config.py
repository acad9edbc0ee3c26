"""``from config import get_config``: the settings of ``load_settings``, read once per process."""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

import pytest

from config import ConfigError, get_config, load_settings, reset_config


@pytest.fixture(autouse=True)
def clean_environment(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    """No Rosetta variable from the real environment, no ``.env`` but the test's own, and
    nothing loaded before or kept after."""
    for name in list(os.environ):
        if name.startswith(("DLQ_", "ROSETTA_")) or name == "CONFIG_DATABASE_URL":
            monkeypatch.delenv(name)
    monkeypatch.chdir(tmp_path)
    reset_config()
    yield
    reset_config()


def test_values_from_the_environment_and_dotenv_read_once(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    (tmp_path / ".env").write_text("DLQ_BATCH_SIZE=250\nDLQ_CHECK_INTERVAL=5\n")
    monkeypatch.setenv("DLQ_BASE_PATH", str(tmp_path / "queues"))
    monkeypatch.setenv("DLQ_CHECK_INTERVAL", "12.5")  # the real variable wins over .env
    config = get_config()
    assert config.dlq.base_path == tmp_path / "queues"
    assert config.dlq.check_interval == 12.5
    assert config.dlq.batch_size == 250
    assert config == load_settings()  # the same typed settings
    # Read once: a later change of the environment is not seen...
    monkeypatch.setenv("DLQ_BATCH_SIZE", "7")
    assert get_config() is config
    # ...until the loaded settings are forgotten.
    reset_config()
    assert get_config().dlq.batch_size == 7


def test_a_bad_value_is_the_same_error_as_load_settings_and_is_not_kept(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("DLQ_BATCH_SIZE", "lots")
    with pytest.raises(ConfigError) as expected:
        load_settings()
    with pytest.raises(ConfigError) as caught:
        get_config()
    assert str(caught.value) == str(expected.value)
    assert str(caught.value).startswith("DLQ_BATCH_SIZE='lots' is invalid")
    monkeypatch.setenv("DLQ_BATCH_SIZE", "300")
    assert get_config().dlq.batch_size == 300  # the failure was not kept


def test_defaults() -> None:
    config = get_config()
    assert (config.dlq.base_path, config.dlq.check_interval, config.dlq.batch_size) == (
        Path("./tmp/dlq"),
        30.0,
        100,
    )
