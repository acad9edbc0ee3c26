"""Build sources and destinations from their specs (imports drivers only when used)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from compute.sources.base import Source
from compute.sources.offset_store import OffsetStore
from config.errors import ConfigError
from config.pipelines import DestinationSpec, SourceSpec
from destinations.base import Destination


def build_source(spec: SourceSpec, state_path: Path) -> Source:
    """The source ``spec`` describes, resuming from its offsets under ``state_path``."""
    offsets = OffsetStore(Path(state_path) / "offsets" / f"source_{spec.id}.json")
    options = dict(spec.options)
    try:
        if spec.type == "synthetic":
            from compute.sources.synthetic_source import SyntheticSource

            if "tables" in options:
                options["tables"] = tuple(options["tables"])
            return SyntheticSource(spec.id, offsets, **options)
        if spec.type == "jsonl":
            from compute.sources.jsonl_source import JsonLinesSource

            path = options.pop("path")
            return JsonLinesSource(spec.id, path, offsets, **options)
    except TypeError as error:
        raise ConfigError([f"source {spec.id} ({spec.type}): bad option: {error}"]) from None
    raise ConfigError([f"source {spec.id}: unknown type {spec.type!r}"])


def build_destination(spec: DestinationSpec) -> Destination:
    options: dict[str, Any] = dict(spec.options)
    try:
        if spec.type == "postgresql":
            from destinations.postgresql import PostgreSQLDestination

            dsn = options.pop("dsn")
            return PostgreSQLDestination(spec.id, spec.name, dsn, **options)
        if spec.type == "snowflake":
            from destinations.snowflake.destination import SnowflakeDestination

            return SnowflakeDestination(spec.id, spec.name, **options)
    except TypeError as error:
        raise ConfigError([f"destination {spec.id} ({spec.type}): bad option: {error}"]) from None
    raise ConfigError([f"destination {spec.id}: unknown type {spec.type!r}"])
