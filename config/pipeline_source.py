"""Where the pipelines come from: the TOML file, or the config database when one is set."""

from __future__ import annotations

from config.errors import ConfigError
from config.pipelines import PipelineSpec, load_pipelines_file
from config.settings import Settings


def load_pipeline_specs(settings: Settings) -> list[PipelineSpec]:
    """Pipelines from ``ROSETTA_PIPELINES_FILE``, or the config database when configured."""
    if settings.config_database_url:
        # Imported only here: the config database reader needs psycopg2.
        from config.config_database import read_pipeline_config

        return read_pipeline_config(settings.config_database_url, settings.environment)
    if settings.pipelines_file is None:
        raise ConfigError(
            [
                "no pipelines defined: set ROSETTA_PIPELINES_FILE to a TOML file "
                '(README, "Running the engine") or CONFIG_DATABASE_URL to a config database'
            ]
        )
    return load_pipelines_file(settings.pipelines_file, settings.environment)
