"""A destination that writes through one kept driver session, replaced once when it went stale."""

from __future__ import annotations

import logging
import threading
from abc import abstractmethod
from collections.abc import Callable
from typing import Generic, Protocol, TypeVar, final

from config.redact import first_line
from destinations.base import ProbedDestination

logger = logging.getLogger(__name__)

T = TypeVar("T")


class Session(Protocol):
    """What the framework needs of a driver's connection."""

    def close(self) -> None: ...


S = TypeVar("S", bound=Session)


class SessionDestination(ProbedDestination, Generic[S]):
    """A destination whose writes share one driver session, opened on first use.

    Hooks a driver implements:

    * ``_open_session()``: connect a new session for writes (and forget what
      the old one cached);
    * ``_is_open(session)``: whether the driver still considers it open;
    * ``_is_stale(error)``: whether a write's ``error`` may only mean that the
      kept session died while idle.

    A write's own failure handling drops a broken session (``self._session =
    None``); ``_write_once_more`` then retries on a fresh one.
    """

    # How log lines name a session: "stale connection replaced ...".
    _session_noun = "connection"
    # What closing a session may raise (logged, then ignored: it is dropped anyway).
    _close_errors: tuple[type[Exception], ...] = ()

    def __init__(self, destination_id: str, name: str) -> None:
        super().__init__(destination_id, name)
        self._session: S | None = None
        self._lock = threading.Lock()  # one write (or close) at a time on the session

    @abstractmethod
    def _open_session(self) -> S:
        """Connect a new session for writes; reset what the previous one cached."""

    @abstractmethod
    def _is_open(self, session: S) -> bool:
        """True while the driver considers ``session`` open."""

    @abstractmethod
    def _is_stale(self, error: Exception) -> bool:
        """True when ``error`` may only mean the kept session died while idle."""

    @final
    def _current_session(self) -> S:
        """The kept session, opened afresh when there is none or it closed."""
        if self._session is None or not self._is_open(self._session):
            self._session = self._open_session()
        return self._session

    @final
    def _write_once_more(self, table: str, write: Callable[[], T]) -> T:
        """``write()`` under the lock; once more when the kept session turned out stale.

        Only when the session was kept from an earlier write, the failure is
        one ``_is_stale`` accepts, and the write dropped the session.
        """
        with self._lock:
            reused = self._session is not None and self._is_open(self._session)
            try:
                return write()
            except Exception as exc:
                if not (reused and self._session is None and self._is_stale(exc)):
                    raise
                # The kept session died while idle (server restart, network
                # blip, idle timeout or expiry, a dropped NAT entry that leaves
                # it mute). The batch was not committed, or if the commit raced
                # the failure, replaying it is harmless (idempotent), so try
                # once more on a fresh session.
                logger.info(
                    "stale %s replaced destination=%s table=%s error=%s",
                    self._session_noun,
                    self,
                    table,
                    self.redact(first_line(exc)),
                )
                return write()

    @final
    def _drop_session(self) -> None:
        """Close and forget the kept session; the caller holds the lock."""
        session, self._session = self._session, None
        if session is not None and self._is_open(session):
            try:
                session.close()
            except self._close_errors:
                logger.debug("close failed destination=%s", self, exc_info=True)

    def close(self) -> None:
        """Close the kept session; the destination may not be used afterwards."""
        with self._lock:
            self._drop_session()
