"""Group commit: the store's writes reach stable storage, one sync shared by every waiting writer.

rocksq has no sync option, so the store syncs RocksDB's files itself: an
``fsync`` on any descriptor of a file flushes that file's dirty pages, and a
file created, renamed or deleted needs its directory synced too. Each
segment written to is a ``SyncTarget``; every enqueue bumps a *generation*
and marks its segment dirty. A sync round takes every dirty segment and the
generation reached so far, syncs them, and then that generation is synced.

* ``always``: the writer waits for its generation; the first waiter with no
  round running leads one for everyone waiting (group commit), so concurrent
  enqueues cost one round per batch of writers, not one per change.
* ``interval``: a background thread runs a round every interval while
  something is dirty; callers that must not get ahead of the disk (the
  pipeline acknowledging a source position) wait for ``synced``.
* ``off``: nothing is synced; every generation counts as synced.
"""

from __future__ import annotations

import logging
import os
import threading
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from compute.errors import DLQStorageError
from config.dlq_config import FsyncMode

logger = logging.getLogger(__name__)

# RocksDB's lock file: never written, and only this process's lock.
_SKIP = frozenset({"LOCK"})
# Segments of one round synced side by side: concurrent fsyncs on one file
# system can share a journal commit, where one after another each waits for its own.
_PARALLEL_SYNCS = 8


def fsync_path(path: Path | str, *, directory: bool = False) -> None:
    """Flush the file or directory at ``path`` to stable storage; a missing one is skipped."""
    try:
        fd = os.open(path, os.O_RDONLY | (os.O_DIRECTORY if directory else 0))
    except (FileNotFoundError, NotADirectoryError):
        return  # deleted meanwhile (a retired segment, a rotated log): nothing to keep
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


class SyncTarget:
    """One segment directory's files, synced when they changed since the last sync.

    Nothing is held open between syncs: a file is opened for its ``fsync``
    and closed again, so a target costs no file descriptor and may outlive
    the segment's handle (or its directory) safely.
    """

    def __init__(self, path: Path, parents: list[Path] | None = None) -> None:
        self.path = path
        # Directories whose entries were created for this segment (the segment
        # directory in its queue directory, a new queue's directories): synced once.
        self.parents = list(parents or [])
        self._seen: dict[str, tuple[int, int, int]] = {}
        self._lock = threading.Lock()

    def sync(self) -> None:
        """Sync every file of the segment that changed, and the directory if names changed."""
        with self._lock:
            try:
                names = [n for n in os.listdir(self.path) if n not in _SKIP]
            except FileNotFoundError:
                return  # the segment was retired (fully acknowledged) meanwhile
            seen: dict[str, tuple[int, int, int]] = {}
            for name in names:
                try:
                    st = os.stat(self.path / name)
                except FileNotFoundError:
                    continue  # an obsolete log deleted by RocksDB meanwhile
                ident = (st.st_ino, st.st_size, st.st_mtime_ns)
                seen[name] = ident
                if self._seen.get(name) != ident:
                    fsync_path(self.path / name)
            if seen.keys() != self._seen.keys():
                fsync_path(self.path, directory=True)
            self._seen = seen
            while self.parents:
                fsync_path(self.parents[0], directory=True)
                del self.parents[0]


class GroupCommit:
    """Generations of writes and what is synced of them; see the module docstring."""

    def __init__(self, mode: FsyncMode, interval: float) -> None:
        self.mode = mode
        self.interval = interval
        self._cond = threading.Condition()
        self._written = 0
        self._synced = 0
        self._dirty: dict[int, SyncTarget] = {}
        self._syncing = False
        self.rounds = 0  # sync rounds run (each syncs every segment dirty at its start)
        # Generations (after, upto] whose round failed, with the error: their waiters raise.
        self._failed: list[tuple[int, int, str]] = []
        self._listeners: list[Callable[[], None]] = []
        self._stop = threading.Event()
        self._pending = threading.Event()
        self._thread: threading.Thread | None = None
        self._pool: ThreadPoolExecutor | None = None  # made at the first round of several
        if mode is FsyncMode.INTERVAL:
            self._thread = threading.Thread(target=self._run, name="dlq-fsync", daemon=True)
            self._thread.start()

    # ------------------------------------------------------------- writers

    def note(self, target: SyncTarget) -> int:
        """Record a write into ``target``'s files; the generation to wait for."""
        if self.mode is FsyncMode.OFF:
            return 0
        with self._cond:
            self._written += 1
            self._dirty[id(target)] = target
            generation = self._written
        if self.mode is FsyncMode.INTERVAL:
            self._pending.set()
        return generation

    def wait(self, generation: int) -> None:
        """Return once ``generation`` is synced, leading a round if none runs (``always``)."""
        if self.mode is FsyncMode.OFF:
            return
        with self._cond:
            while self._synced < generation:
                if self.mode is FsyncMode.ALWAYS and not self._syncing:
                    self._round()
                else:
                    self._cond.wait()
            for after, upto, error in self._failed:
                if after < generation <= upto:
                    raise DLQStorageError(f"syncing the DLQ's writes to disk failed: {error}")

    def sync_now(self, target: SyncTarget | None = None) -> None:
        """Sync everything written so far (``target``'s files at least) before returning.

        Before a segment's counts are recorded, or an acknowledged segment is
        deleted: neither may reach the disk ahead of the writes it describes.
        """
        if self.mode is FsyncMode.OFF:
            return
        if target is not None:
            with self._cond:
                self._dirty[id(target)] = target
                self._written += 1
        with self._cond:
            generation = self._written
        if self.mode is FsyncMode.ALWAYS:
            self.wait(generation)
            return
        with self._cond:  # interval: run a round now rather than wait for the thread
            while self._synced < generation:
                if self._syncing:
                    self._cond.wait()
                elif (error := self._round()) is not None:
                    raise DLQStorageError(f"syncing the DLQ's writes to disk failed: {error}")

    # -------------------------------------------------------------- readers

    @property
    def written(self) -> int:
        """The generation of the latest write (0 with ``off``: nothing to wait for)."""
        with self._cond:
            return self._written

    @property
    def synced(self) -> int:
        with self._cond:
            return self._synced

    def is_synced(self, generation: int) -> bool:
        with self._cond:
            return self._synced >= generation

    def add_listener(self, listener: Callable[[], None]) -> None:
        """Call ``listener`` (no arguments, never blocking) after each round."""
        with self._cond:
            self._listeners.append(listener)

    def remove_listener(self, listener: Callable[[], None]) -> None:
        with self._cond:
            if listener in self._listeners:
                self._listeners.remove(listener)

    # --------------------------------------------------------------- rounds

    def _round(self) -> str | None:
        """Sync every dirty target; the error if one failed.

        Called, and returns, holding ``_cond`` (released while syncing).
        """
        self._syncing = True
        self.rounds += 1
        after, upto = self._synced, self._written
        targets, self._dirty = list(self._dirty.values()), {}
        error: OSError | None = None
        self._cond.release()
        try:
            for target, failure in self._sync_all(targets):
                if failure is not None:
                    error = failure
                    logger.error("DLQ fsync failed: path=%s error=%s", target.path, failure)
        finally:
            self._cond.acquire()
            self._syncing = False
        if error is not None:
            if self.mode is FsyncMode.INTERVAL:
                # Not synced: nothing past these writes is acknowledged; tried again
                # next interval (the pipeline holds the source position meanwhile).
                for target in targets:
                    self._dirty.setdefault(id(target), target)
                self._pending.set()
                self._cond.notify_all()
                return str(error)
            self._failed = [*self._failed[-15:], (after, upto, str(error))]
        self._synced = max(self._synced, upto)
        self._cond.notify_all()
        listeners = list(self._listeners)
        self._cond.release()
        try:
            for listener in listeners:
                listener()
        finally:
            self._cond.acquire()
        return None if error is None else str(error)

    def _sync_all(self, targets: list[SyncTarget]) -> list[tuple[SyncTarget, OSError | None]]:
        """Sync ``targets``, several at once when there are several; each with its error."""

        def sync(target: SyncTarget) -> tuple[SyncTarget, OSError | None]:
            try:
                target.sync()
            except OSError as failure:
                return target, failure
            return target, None

        if len(targets) < 2:
            return [sync(target) for target in targets]
        if self._pool is None:
            self._pool = ThreadPoolExecutor(_PARALLEL_SYNCS, thread_name_prefix="dlq-fsync")
        return list(self._pool.map(sync, targets))

    def _run(self) -> None:
        while not self._stop.is_set():
            self._pending.wait()
            if self._stop.wait(self.interval):
                break
            self._pending.clear()
            with self._cond:
                if self._dirty and not self._syncing:
                    self._round()
                if self._dirty:
                    self._pending.set()

    def close(self) -> None:
        """Stop the background syncer after a last round of what is still dirty."""
        self._stop.set()
        self._pending.set()
        if self._thread is not None:
            self._thread.join(5.0)
        if self.mode is not FsyncMode.OFF:
            with self._cond:
                while self._syncing:
                    self._cond.wait()
                if self._dirty:
                    self._round()
        if self._pool is not None:
            self._pool.shutdown(wait=True)
