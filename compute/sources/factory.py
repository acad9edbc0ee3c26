"""Builds a source from its spec (imports a source's module only when used)."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

from compute.sources.base import Source
from compute.sources.offset_store import OffsetStore
from compute.storage.jetstream.positions import PositionStore
from config.errors import ConfigError
from config.pipelines import SourceSpec


def build_source(
    spec: SourceSpec,
    state_path: Path,
    *,
    append_only: Sequence[str] = (),
    fsync: bool = False,
    positions: PositionStore | None = None,
) -> Source:
    """The source ``spec`` describes, resuming from its offsets under ``state_path``.

    ``append_only``: the pipeline's tables whose changes carry no key.
    ``fsync``: each offset written is synced to disk (DLQ_FSYNC always or interval).
    ``positions``: with DLQ_BACKEND=jetstream, the cluster's positions bucket
    instead of the file, so that the next owner of the pipeline resumes there.
    """
    offsets: Any = positions or OffsetStore(
        Path(state_path) / "offsets" / f"source_{spec.id}.json", fsync=fsync
    )
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
            return JsonLinesSource(spec.id, path, offsets, append_only=append_only, **options)
        if spec.type == "postgresql":
            # The slot is the offset store: its confirmed_flush_lsn is the resume point;
            # the offset file keeps only how far the initial copy got.
            from compute.sources.postgres_source import PostgresSource

            dsn = options.pop("dsn")
            if "tables" in options:
                options["tables"] = tuple(options["tables"])
            return PostgresSource(spec.id, dsn, offsets=offsets, append_only=append_only, **options)
    except (TypeError, ValueError) as error:
        raise ConfigError([f"source {spec.id} ({spec.type}): bad option: {error}"]) from None
    raise ConfigError([f"source {spec.id}: unknown type {spec.type!r}"])
