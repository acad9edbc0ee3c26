"""Source positions (resume tokens) in the ``<prefix>_POSITIONS`` bucket, revision-checked.

With ``DLQ_BACKEND=jetstream`` a source's position lives in the cluster, not
in a file under ROSETTA_STATE_PATH, so that the engine that takes a pipeline
over resumes where the last owner stopped. One key per source id; every put
is an ``update`` with the revision this store last read or wrote: a put after
another engine wrote the same key fails loudly (``PositionConflict``) instead
of moving the position back. The pipeline's fence is asked first, so a
paused owner refuses even before anyone else has written.

A put JetStream does not answer (a node lost mid-request, no quorum, a
partition) is not an error of the pipeline: the stored position then lags
the acknowledged one, which only means more events read again after a
restart (delivery is at-least-once), never fewer. The put is retried by the
next one. Its outcome is unknown: it may have landed with its answer lost,
or land later (nats-py sends what it buffered once it reconnects), so when
the next update finds the key moved, a value we tried ourselves lets it go
again; anything else is another engine's (``PositionConflict``). Once an
update is answered, an older one can no longer land: it names a revision
that is gone.

Same interface as ``compute/sources/offset_store.py OffsetStore`` (get, put,
delete, all), which the sources use.
"""

from __future__ import annotations

import logging
import threading
from typing import Any

from compute.runtime.fence import NO_FENCE, Fence, Fenced
from compute.storage.jetstream.bridge import NatsBridge, StoreUnavailable, describe
from compute.storage.jetstream.leases import bucket_keys, kv_key, name_of, open_bucket

logger = logging.getLogger(__name__)


class PositionConflict(Fenced):
    """Another writer moved this source's position since we read it: we no longer own it."""


class PositionStore:
    """Resume tokens of sources, kept in JetStream; each write checked against the last revision."""

    def __init__(self, bridge: NatsBridge, *, fence: Fence = NO_FENCE) -> None:
        self.bridge = bridge
        self.fence = fence
        self.bucket = f"{bridge.config.stream_prefix}_POSITIONS"
        self._kv = bridge.run(open_bucket(bridge, self.bucket, None))
        self._lock = threading.Lock()
        # source id -> (token, revision) as last read or written; 0: no key yet
        self._known: dict[str, tuple[str | None, int]] = {}
        # source id -> tokens of puts left without an answer since the last answered one:
        # each may have landed, or may still land (a publish sent on reconnection)
        self._unsure: dict[str, set[str]] = {}

    def __repr__(self) -> str:
        return f"PositionStore({self.bucket!r})"

    def get(self, source_id: str) -> str | None:
        """The stored token of ``source_id`` (read from the cluster), or None."""
        with self._lock:
            return self._read(source_id)[0]

    def put(self, source_id: str, token: str) -> None:
        """Store ``token`` for ``source_id``; refused when fenced or taken.

        Replicated on return, unless JetStream did not answer: then it is left
        for the next put (logged once), the stored position lagging, not leading.
        """
        if not isinstance(token, str):
            raise TypeError(f"resume token must be a str, not {type(token).__name__}")
        with self._lock:
            try:
                current, revision = self._known.get(source_id) or self._read(source_id)
                if current == token:
                    return
                self.fence.check(f"position of source {source_id}")
                self._update(source_id, token, revision)
            except StoreUnavailable as error:
                tried = self._unsure.setdefault(source_id, set())
                if not tried:
                    logger.warning(
                        "source position not stored, JetStream unavailable; the next one "
                        "retries: source=%s position=%s error=%s",
                        source_id,
                        token,
                        error,
                    )
                tried.add(token)
                return
        if self._unsure.pop(source_id, None):
            logger.info("source position stored again: source=%s position=%s", source_id, token)

    def _update(self, source_id: str, token: str, revision: int) -> None:
        """``update`` naming ``revision``; when the key moved since, only a value this
        store tried without an answer (it landed late) lets the update go again."""
        from nats.js.errors import KeyWrongLastSequenceError

        ours = {self._known.get(source_id, (None, 0))[0], *self._unsure.get(source_id, ())}
        for attempt in (1, 2):
            try:
                revision = self.bridge.run(
                    self._kv.update(kv_key(source_id), token.encode(), last=revision)
                )
                break
            except KeyWrongLastSequenceError as error:
                found, revision = self._read(source_id)
                if attempt == 2 or found not in ours:
                    self._known.pop(source_id, None)
                    raise PositionConflict(
                        f"position of source {source_id} was written by another engine "
                        f"({describe(error)}; found {found!r}): not writing over it"
                    ) from error
        self._known[source_id] = (token, revision)

    def delete(self, source_id: str) -> None:
        """Forget ``source_id``'s position (it starts from the beginning next time)."""
        with self._lock:
            self.fence.check(f"position of source {source_id}")
            self.bridge.run(self._kv.purge(kv_key(source_id)))
            self._known.pop(source_id, None)

    def all(self) -> dict[str, str]:
        """Every stored token (read from the cluster)."""
        keys = self.bridge.run(bucket_keys(self.bridge, self._kv))
        found = {}
        with self._lock:
            for key in keys:
                token = self._read(name_of(key))[0]
                if token is not None:
                    found[name_of(key)] = token
        return found

    def _read(self, source_id: str) -> tuple[str | None, int]:
        from nats.js.errors import KeyNotFoundError

        try:
            entry: Any = self.bridge.run(self._kv.get(kv_key(source_id)))
        except KeyNotFoundError:
            # A purged key's marker keeps a revision: the next put must name it.
            known = (None, self._last_revision(source_id))
        else:
            known = (entry.value.decode(), entry.revision)
        self._known[source_id] = known
        return known

    def _last_revision(self, source_id: str) -> int:
        from nats.js.errors import NotFoundError

        subject = f"$KV.{self.bucket}.{kv_key(source_id)}"
        try:
            message = self.bridge.run(self.bridge.js.get_last_msg(f"KV_{self.bucket}", subject))
        except NotFoundError:
            return 0
        return int(message.seq)
