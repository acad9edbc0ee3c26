"""Which store keeps the DLQ (``DLQ_BACKEND``), and how to reach NATS JetStream (``DLQ_NATS_*``).

rocksq (local disk) is the embedded default. ``jetstream`` keeps every queue,
the manager's per-queue records, the sources' positions and the pipelines'
ownership leases in a replicated NATS JetStream cluster instead, so that a
machine can die without its queued changes and another engine can take its
pipelines over.
"""

from __future__ import annotations

import os
import socket
from collections.abc import Mapping
from dataclasses import dataclass, field
from enum import StrEnum
from pathlib import Path

from config.env_values import Variables, int_in, parse_group, seconds_in


class Backend(StrEnum):
    """Where the DLQ's queues live."""

    ROCKSQ = "rocksq"  # local disk under DLQ_BASE_PATH (the default)
    JETSTREAM = "jetstream"  # a NATS JetStream cluster, replicated


def default_engine_id() -> str:
    """``<host>-<pid>``: unique among the engines sharing a cluster unless set."""
    return f"{socket.gethostname()}-{os.getpid()}"


@dataclass(frozen=True)
class NatsConfig:
    """How the engine reaches JetStream; secrets are never shown (``repr=False``)."""

    urls: tuple[str, ...] = ("nats://127.0.0.1:4222",)
    replicas: int = 3
    # Streams and buckets are named <prefix>_<what>: two deployments sharing a
    # cluster keep apart with different prefixes.
    stream_prefix: str = "ROSETTA_DLQ"
    request_timeout: float = 5.0
    token: str | None = field(default=None, repr=False)
    user: str | None = field(default=None, repr=False)
    password: str | None = field(default=None, repr=False)
    creds_file: Path | None = None
    tls_ca_file: Path | None = None
    tls_cert_file: Path | None = None
    tls_key_file: Path | None = None
    # How long a pipeline's owner may go without renewing its lease before
    # another engine may take the pipeline (renewed every third of it).
    lease_ttl: float = 15.0
    engine_id: str = field(default_factory=default_engine_id)


def _urls(text: str) -> tuple[str, ...]:
    urls = tuple(u.strip() for u in text.split(",") if u.strip())
    if not urls or not all(u.startswith(("nats://", "tls://", "nats+tls://")) for u in urls):
        raise ValueError(text)
    return urls


def _prefix(text: str) -> str:
    text = text.strip()
    # A stream name may not hold whitespace, '.', '*', '>', path separators.
    if not text or len(text) > 32 or not all(c.isalnum() or c in "_-" for c in text):
        raise ValueError(text)
    return text


def _secret(text: str) -> str:
    if not text:
        raise ValueError("empty")
    return text


def _file(text: str) -> Path:
    path = Path(text.strip())
    if not path.is_file():
        raise ValueError(text)
    return path


def _engine_id(text: str) -> str:
    text = text.strip()
    if not text or len(text) > 100 or not all(c.isalnum() or c in "_-." for c in text):
        raise ValueError(text)
    return text


def _backend(text: str) -> Backend:
    return Backend(text.strip().lower())


BACKEND_VARIABLE: Variables = {
    "DLQ_BACKEND": ("backend", _backend, "one of: rocksq, jetstream"),
}

NATS_VARIABLES: Variables = {
    "DLQ_NATS_URLS": (
        "urls",
        _urls,
        "comma-separated server URLs, each nats://host:port or tls://host:port",
    ),
    "DLQ_NATS_REPLICAS": ("replicas", int_in(1, 5), "an integer from 1 to 5 (3 survives one node)"),
    "DLQ_NATS_STREAM_PREFIX": (
        "stream_prefix",
        _prefix,
        "1 to 32 letters, digits, '_' or '-'",
    ),
    "DLQ_NATS_TIMEOUT": (
        "request_timeout",
        seconds_in(0.1, 600),
        "seconds a JetStream request may take, a number from 0.1 to 600",
    ),
    "DLQ_NATS_TOKEN": ("token", _secret, "a non-empty token"),
    "DLQ_NATS_USER": ("user", _secret, "a non-empty user name"),
    "DLQ_NATS_PASSWORD": ("password", _secret, "a non-empty password"),
    "DLQ_NATS_CREDS_FILE": ("creds_file", _file, "the path of an existing .creds file"),
    "DLQ_NATS_TLS_CA_FILE": ("tls_ca_file", _file, "the path of an existing CA file (PEM)"),
    "DLQ_NATS_TLS_CERT_FILE": ("tls_cert_file", _file, "the path of an existing certificate (PEM)"),
    "DLQ_NATS_TLS_KEY_FILE": ("tls_key_file", _file, "the path of an existing key file (PEM)"),
    "DLQ_LEASE_TTL": (
        "lease_ttl",
        seconds_in(1, 3600),
        "seconds a pipeline's lease lasts without renewal, a number from 1 to 3600",
    ),
    "DLQ_ENGINE_ID": (
        "engine_id",
        _engine_id,
        "1 to 100 letters, digits, '_', '-' or '.', unique per engine",
    ),
}


def nats_values(source: Mapping[str, str], problems: list[str]) -> tuple[Backend, NatsConfig]:
    """``DLQ_BACKEND`` and the ``NatsConfig`` from ``source``; each problem goes to ``problems``."""
    backend = parse_group(source, BACKEND_VARIABLE, problems).get("backend", Backend.ROCKSQ)
    assert isinstance(backend, Backend)
    values = parse_group(source, NATS_VARIABLES, problems)
    if ("user" in values) != ("password" in values):
        problems.append("DLQ_NATS_USER and DLQ_NATS_PASSWORD must be set together")
    if ("tls_cert_file" in values) != ("tls_key_file" in values):
        problems.append("DLQ_NATS_TLS_CERT_FILE and DLQ_NATS_TLS_KEY_FILE must be set together")
    return backend, NatsConfig(**values)  # type: ignore[arg-type]
