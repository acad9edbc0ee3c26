"""A pipeline's fence: each write that matters asks it first; it refuses once the lease may be gone.

With pipelines shared between engines (``DLQ_BACKEND=jetstream``) a pipeline
is written by the engine holding its lease. The lease expires on the NATS
servers ``ttl`` seconds after its last renewal; the fence of the owning
engine closes earlier, ``margin`` seconds before the earliest instant the
servers could expire it: ``valid_until`` = (the monotonic time taken *before*
the renewal request was sent) + ttl - margin. The renewal reached the servers
after that instant, so their expiry comes later still.

Why that is safe against a paused process (SIGSTOP, a VM freeze, a long GC):
``time.monotonic()`` keeps counting while the process is stopped, so the
first check after it wakes sees the deadline passed and refuses, before
another engine could have taken the lease; the margin covers the one write
that passed its check just before the deadline and is still running. (A pause
that falls between a check and the write it allowed is the one case a
client-side fence cannot close; the margin bounds how stale such a write can
be, not whether it happens.) Without leases (rocksq) the fence never refuses.
"""

from __future__ import annotations

import math
import threading
import time
from collections.abc import Callable


class Fenced(Exception):
    """A write refused: this engine may no longer own the pipeline (lease expired or taken)."""


class Fence:
    """Whether this engine may still write for one pipeline; ``check`` before every write."""

    def __init__(self, pipeline: str, clock: Callable[[], float] = time.monotonic) -> None:
        self.pipeline = pipeline
        self._clock = clock
        self._lock = threading.Lock()
        self._valid_until = -math.inf  # closed until a lease opens it
        self._lost: str | None = None

    def extend(self, valid_until: float) -> None:
        """The lease was taken or renewed: writes may go until ``valid_until`` (monotonic)."""
        with self._lock:
            if self._lost is None:
                self._valid_until = max(self._valid_until, valid_until)

    def lose(self, reason: str) -> None:
        """The lease is gone (taken, released, expired): refuse every write from now on."""
        with self._lock:
            if self._lost is None:
                self._lost = reason
            self._valid_until = -math.inf

    @property
    def valid_until(self) -> float:
        return self._valid_until

    def refusal(self) -> str | None:
        """Why a write would be refused now, or None when it may go."""
        with self._lock:
            if self._lost is not None:
                return self._lost
            late = self._clock() - self._valid_until
            if late >= 0:
                return f"lease not renewed in time ({late:.1f} s past its fence)"
            return None

    def holds(self) -> bool:
        return self.refusal() is None

    def check(self, what: str) -> None:
        """Raise ``Fenced`` unless this engine may still write ``what`` for the pipeline."""
        reason = self.refusal()
        if reason is not None:
            raise Fenced(f"{what} refused for pipeline {self.pipeline}: {reason}")


class _NoFence(Fence):
    """The fence of an engine that owns every pipeline alone (rocksq): it never refuses."""

    def __init__(self) -> None:
        super().__init__("*")
        self._valid_until = math.inf

    def lose(self, reason: str) -> None:  # nothing to lose: no lease
        return

    def refusal(self) -> str | None:
        return None


NO_FENCE: Fence = _NoFence()
