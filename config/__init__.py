"""Typed settings for Rosetta, read from environment variables and ``.env``."""

from config.dlq_config import DLQConfig, WhenFull
from config.errors import ConfigError, RosettaError
from config.settings import Settings, get_config, load_settings, reset_config

__all__ = [
    "ConfigError",
    "DLQConfig",
    "RosettaError",
    "Settings",
    "WhenFull",
    "get_config",
    "load_settings",
    "reset_config",
]
