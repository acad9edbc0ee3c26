"""Both QueueStore backends behind one face, for the contract tests that must hold on each.

``StoreBackend.open()`` makes a store on the backend's data (rocksq: a base
path; jetstream: a stream prefix of its own on the session cluster), and
``open()`` again after ``close()`` is the same data seen by a new process.
"""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path
from typing import Any

import pytest

from compute.storage.base import QueueLimits, QueueStore
from compute.storage.rocksq.store import RocksqStore
from config.dlq_config import DLQConfig
from config.nats_config import Backend
from tests.jetstream_stores import jetstream_store, nats_config, unique_prefix

BACKENDS = ("rocksq", "jetstream")


class StoreBackend:
    """The stores of one test on one backend; every store is closed at the end."""

    def __init__(self, name: str, base_path: Path, cluster: Any | None) -> None:
        self.name = name
        self.base_path = base_path
        self.cluster = cluster
        self.prefix = unique_prefix() if name == "jetstream" else ""
        self.opened: list[QueueStore] = []

    @property
    def jetstream(self) -> bool:
        return self.name == "jetstream"

    def open(self, limits: QueueLimits | None = None, **options: Any) -> QueueStore:
        """A store on this test's data; ``options`` go to the backend's constructor."""
        store: QueueStore
        if self.jetstream:
            store = jetstream_store(self.cluster, self.prefix, self.base_path, limits, **options)
        else:
            options.setdefault("segment_max_messages", 10)
            store = RocksqStore(self.base_path, limits, **options)
        self.opened.append(store)
        return store

    def dlq_config(self, config: DLQConfig) -> DLQConfig:
        """``config`` pointed at this backend (jetstream: the cluster and the prefix)."""
        if not self.jetstream:
            return config
        nats = nats_config(self.cluster, self.prefix)
        return replace(config, backend=Backend.JETSTREAM, nats=nats)

    def close(self) -> None:
        for store in self.opened:
            store.close()


def backend_fixture(request: pytest.FixtureRequest, tmp_path: Path) -> StoreBackend:
    """For a fixture parametrized over ``BACKENDS``: the cluster only when jetstream."""
    cluster = (
        request.getfixturevalue("nats_session_cluster") if request.param == "jetstream" else None
    )
    backend = StoreBackend(request.param, tmp_path / "dlq", cluster)
    request.addfinalizer(backend.close)
    return backend
