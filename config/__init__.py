"""Typed settings for Rosetta, read from environment variables and ``.env``."""

from config.dlq_config import DLQConfig, WhenFull
from config.errors import ConfigError, RosettaError
from config.settings import Settings, load_settings

__all__ = ["ConfigError", "DLQConfig", "RosettaError", "Settings", "WhenFull", "load_settings"]
