"""Typed settings for Rosetta, read from environment variables and ``.env``."""

from config.errors import ConfigError, RosettaError
from config.settings import DLQConfig, Settings, WhenFull, load_settings

__all__ = ["ConfigError", "DLQConfig", "RosettaError", "Settings", "WhenFull", "load_settings"]
