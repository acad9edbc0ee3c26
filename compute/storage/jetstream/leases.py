"""Pipeline ownership leases and engine liveness in JetStream key-value buckets.

``<prefix>_LEASES`` holds one key per pipeline while an engine owns it; the
value names the engine and when it took the pipeline. Every change is
revision-checked by the servers: taking is a ``create`` (refused when the key
exists), renewing an ``update`` with the revision we last wrote (refused when
anyone else wrote since), releasing a ``delete`` with it. The bucket's TTL is
``DLQ_LEASE_TTL``: a lease not renewed within it is expired by the servers
and the next ``create`` takes it. No consensus of our own: JetStream's
replicated stream orders every write, and the revision check makes "two
owners" impossible on the servers' side (the fence, ``compute/runtime/fence.py``,
makes the old owner stop writing before its lease can expire).

``<prefix>_ENGINES`` holds one key per live engine (``DLQ_ENGINE_ID``), put
on every heartbeat with the same TTL, so each engine can count the live ones
and take its fair share: ceil(pipelines / live engines).
"""

from __future__ import annotations

import asyncio
import json
import logging
import math
import string
import time
from dataclasses import dataclass
from typing import Any

from compute.storage.jetstream.bridge import NatsBridge, StoreUnavailable, describe

logger = logging.getLogger(__name__)

# JetStream's "wrong last sequence": the key was written since the revision named.
WRONG_LAST_SEQUENCE = 10071

# JetStream keys allow letters, digits and -_=./ ; '.' separates tokens and
# '/' is read as a path by tools, so everything else is written as =XX.
_PLAIN = frozenset(string.ascii_letters + string.digits + "-_")


def kv_key(name: str) -> str:
    """``name`` as a valid key, reversibly (``name_of``)."""
    return "".join(c if c in _PLAIN else "".join(f"={b:02X}" for b in c.encode()) for c in name)


def name_of(key: str) -> str:
    """The name ``kv_key`` made ``key`` from."""
    out = bytearray()
    i = 0
    while i < len(key):
        if key[i] == "=":
            out.append(int(key[i + 1 : i + 3], 16))
            i += 3
        else:
            out += key[i].encode()
            i += 1
    return out.decode()


_NO_PEERS_YET = 10005  # JetStream's err_code: no suitable peers for placement


class LeaseLost(Exception):
    """The lease is no longer ours: another engine took it (the revision moved) or it expired."""


@dataclass(frozen=True)
class Lease:
    """A pipeline's lease as this engine last wrote it."""

    pipeline: str
    revision: int
    source_id: str  # the pipeline's source: its queues carry it, so operators see their owner
    # Monotonic instant until which this engine may write for the pipeline:
    # taken before the request was sent, + ttl - margin (see fence.py).
    valid_until: float


@dataclass(frozen=True)
class Owner:
    """Who holds a pipeline's lease, as the bucket says."""

    engine_id: str
    since: float  # wall-clock time the engine took the pipeline
    revision: int
    source_id: str = ""

    def to_json(self) -> dict[str, Any]:
        return {
            "engine": self.engine_id,
            "since": self.since,
            "revision": self.revision,
            "source_id": self.source_id,
        }


async def open_bucket(bridge: NatsBridge, name: str, ttl: float | None) -> Any:
    """The key-value bucket ``name`` (one value per key), created when missing.

    A cluster that has just formed may not know its peers yet ("no suitable
    peers for placement"): that is retried for up to the request timeout.
    """
    from nats.js.api import KeyValueConfig
    from nats.js.errors import APIError, BucketNotFoundError, NotFoundError

    try:
        return await bridge.js.key_value(name)
    except (BucketNotFoundError, NotFoundError):
        pass
    config = KeyValueConfig(bucket=name, history=1, ttl=ttl, replicas=bridge.config.replicas)
    deadline = time.monotonic() + bridge.config.request_timeout
    while True:
        try:
            return await bridge.js.create_key_value(config)
        except APIError as error:
            if error.err_code != _NO_PEERS_YET or time.monotonic() > deadline:
                raise
        await asyncio.sleep(0.2)


async def bucket_keys(bridge: NatsBridge, bucket: Any) -> list[str]:
    """Every key with a message in ``bucket`` (values and deletion markers alike)."""
    info = await bridge.js.stream_info(bucket._stream, subjects_filter=">")
    prefix = f"$KV.{bucket._name}."
    return [s[len(prefix) :] for s in (info.state.subjects or {}) if s.startswith(prefix)]


class Leases:
    """Take, renew, release and read pipeline leases for one engine (``engine_id``)."""

    def __init__(
        self, bridge: NatsBridge, *, engine_id: str | None = None, margin: float | None = None
    ) -> None:
        config = bridge.config
        self.bridge = bridge
        self.engine_id = engine_id or config.engine_id
        self.ttl = config.lease_ttl
        # A quarter of the TTL: three renewals per TTL leave one late renewal
        # room, and the margin must outlast the longest write allowed just
        # before the fence closes (see fence.py).
        self.margin = self.ttl / 4 if margin is None else margin
        self.renew_every = self.ttl / 3
        prefix = config.stream_prefix
        self._leases = bridge.run(open_bucket(bridge, f"{prefix}_LEASES", self.ttl))
        self._engines = bridge.run(open_bucket(bridge, f"{prefix}_ENGINES", self.ttl))

    # ------------------------------------------------------------ leases

    def acquire(self, pipeline: str, source_id: str = "") -> Lease | None:
        """Take ``pipeline`` if nobody holds it (or its lease expired); None when someone does."""
        from nats.js.errors import APIError, KeyWrongLastSequenceError

        started = time.monotonic()
        value = self._value(time.time(), source_id)
        try:
            revision = self.bridge.run(self._leases.create(kv_key(pipeline), value))
        except KeyWrongLastSequenceError:
            return None
        except APIError as error:
            # Taking an expired lease, nats-py's create retries the update at the
            # revision it read; another engine writing in between comes back as a
            # plain BadRequestError (seen in a suite run): someone else took it.
            if getattr(error, "err_code", None) == WRONG_LAST_SEQUENCE:
                return None
            raise
        return Lease(pipeline, revision, source_id, self._valid_until(started))

    def renew(self, lease: Lease, since: float) -> Lease:
        """``lease`` renewed for another TTL; ``LeaseLost`` when someone else wrote it since.

        ``StoreUnavailable`` (no quorum, no answer) leaves the lease as it was:
        the caller keeps trying until its fence closes.
        """
        from nats.js.errors import APIError, KeyNotFoundError, KeyWrongLastSequenceError

        started = time.monotonic()
        try:
            revision = self.bridge.run(
                self._leases.update(
                    kv_key(lease.pipeline), self._value(since, lease.source_id), last=lease.revision
                )
            )
        except (KeyWrongLastSequenceError, KeyNotFoundError) as error:
            raise LeaseLost(f"lease of {lease.pipeline} lost: {describe(error)}") from error
        except APIError as error:
            if getattr(error, "err_code", None) != WRONG_LAST_SEQUENCE:
                raise
            raise LeaseLost(f"lease of {lease.pipeline} lost: {describe(error)}") from error
        return Lease(lease.pipeline, revision, lease.source_id, self._valid_until(started))

    def release(self, lease: Lease) -> bool:
        """Give ``lease`` up now, so another engine can take the pipeline at once.

        False when it was no longer ours (nothing deleted) or JetStream did not answer
        (the lease then expires by itself within the TTL).
        """
        from nats.js.errors import APIError, KeyValueError

        try:
            self.bridge.run(self._leases.delete(kv_key(lease.pipeline), last=lease.revision))
        # A wrong revision comes back as a plain BadRequestError (err_code 10071) from delete
        except (APIError, KeyValueError, StoreUnavailable) as error:
            logger.debug("lease release failed: pipeline=%s error=%s", lease.pipeline, error)
            return False
        return True

    def owner(self, pipeline: str) -> Owner | None:
        """Who holds ``pipeline`` now; None when nobody does."""
        from nats.js.errors import KeyNotFoundError

        try:
            entry = self.bridge.run(self._leases.get(kv_key(pipeline)))
        except KeyNotFoundError:
            return None
        return _owner(entry.value, entry.revision)

    def owners(self) -> dict[str, Owner]:
        """Every held lease: pipeline name -> owner."""
        found = {}
        for key in self._keys(self._leases):
            owner = self.owner(name_of(key))
            if owner is not None:
                found[name_of(key)] = owner
        return found

    # ----------------------------------------------------------- engines

    def heartbeat(self) -> None:
        """Say this engine is alive for another TTL."""
        body = json.dumps({"engine": self.engine_id, "at": time.time()}).encode()
        self.bridge.run(self._engines.put(kv_key(self.engine_id), body))

    def leave(self) -> None:
        """This engine is stopping: the others stop counting it at once."""
        try:
            self.bridge.run(self._engines.delete(kv_key(self.engine_id)))
        except Exception as error:  # noqa: BLE001 - it expires by itself within the TTL
            logger.debug("engine key delete failed: %s", error)

    def live_engines(self) -> list[str]:
        """The engines whose heartbeat is younger than the TTL (a stopped one's key is deleted)."""
        from nats.js.errors import KeyNotFoundError

        live = []
        for key in self._keys(self._engines):
            try:
                self.bridge.run(self._engines.get(key))
            except KeyNotFoundError:  # deleted by ``leave``: its marker stays until the TTL
                continue
            live.append(name_of(key))
        return sorted(live)

    def fair_share(self, pipelines: int) -> int:
        """How many of ``pipelines`` this engine should own: ceil(pipelines / live engines)."""
        engines = set(self.live_engines()) | {self.engine_id}
        return math.ceil(pipelines / len(engines))

    # ----------------------------------------------------------- private

    def _value(self, since: float, source_id: str) -> bytes:
        value = {"engine": self.engine_id, "since": since, "renewed": time.time()}
        return json.dumps(value | {"source": source_id}).encode()

    def _valid_until(self, started: float) -> float:
        return started + self.ttl - self.margin

    def _keys(self, bucket: Any) -> list[str]:
        """The bucket's keys holding a value (a deleted key's marker may be among them).

        Read from the stream's subject counts, one request: nats-py's ``keys()``
        runs a consumer and can end before it has seen every key.
        """
        return self.bridge.run(bucket_keys(self.bridge, bucket))


def _owner(value: bytes | None, revision: int) -> Owner | None:
    try:
        doc = json.loads(value or b"")
        return Owner(str(doc["engine"]), float(doc["since"]), revision, str(doc.get("source", "")))
    except (ValueError, KeyError, TypeError):
        return None
