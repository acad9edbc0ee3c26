"""JetStream stores for the tests: each on the session cluster under a stream prefix of its own."""

from __future__ import annotations

import itertools
import os
from pathlib import Path
from typing import Any

from compute.storage.base import QueueLimits
from compute.storage.jetstream.store import JetStreamStore
from config.nats_config import NatsConfig
from tests.nats_cluster import NatsCluster

_numbers = itertools.count(1)


def unique_prefix() -> str:
    """A stream prefix no other test of this session (or a parallel one) uses."""
    return f"T{os.getpid()}_{next(_numbers)}"


def nats_config(cluster: NatsCluster, prefix: str, **overrides: Any) -> NatsConfig:
    values: dict[str, Any] = {
        "urls": tuple(cluster.urls),
        "stream_prefix": prefix,
        "request_timeout": 2.0,
        "replicas": 3,
        "engine_id": "test-engine",
    }
    values.update(overrides)
    return NatsConfig(**values)


def jetstream_store(
    cluster: NatsCluster,
    prefix: str,
    base_path: Path,
    limits: QueueLimits | None = None,
    **options: Any,
) -> JetStreamStore:
    timeout = options.pop("request_timeout", 2.0)
    return JetStreamStore(
        nats_config(cluster, prefix, request_timeout=timeout), base_path, limits, **options
    )
