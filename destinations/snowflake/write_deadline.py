"""A Snowflake write's deadline: each statement of a batch gets what is left of write_timeout.

The connector cannot be cut from another thread the way a PostgreSQL socket
can (its HTTP connections are pooled out of reach), so the bound is kept from
inside: every statement is sent with ``timeout=`` the seconds left, which both
stops the connector's retries and cancels a statement still running on the
server, and once the deadline has passed nothing more is sent and the write
fails as a lost session (``DestinationTimeoutError``).
"""

from __future__ import annotations

import contextlib
import threading
import time
from collections.abc import Iterator
from typing import Any

from snowflake.connector import errors as sf_errors
from snowflake.connector.cursor import SnowflakeCursor

from destinations.errors import DestinationTimeoutError
from destinations.snowflake.connect_options import Timeouts


class WriteDeadline:
    """The deadline of the write running on the current thread, if any."""

    def __init__(self, owner: object, timeouts: Timeouts) -> None:
        self._owner = owner
        self.timeouts = timeouts
        self._local = threading.local()

    @contextlib.contextmanager
    def bound(self) -> Iterator[None]:
        """The block is one write: ``write_timeout`` from now (nested blocks share it)."""
        if getattr(self._local, "at", None) is not None:
            yield
            return
        self._local.at = time.monotonic() + self.timeouts.write
        try:
            yield
        finally:
            self._local.at = None

    def remaining(self) -> float | None:
        """Seconds left of the current write; None outside a write."""
        at = getattr(self._local, "at", None)
        return None if at is None else at - time.monotonic()

    def retry_budget(self, what: str) -> int | None:
        """Seconds the connector may spend on the next request; raises once the time is up."""
        left = self.remaining()
        if left is None:
            return None
        budget = self.timeouts.retry_budget(left)
        if budget is None:
            # Not even one attempt and the wait before a retry would end in time.
            raise self.expired(what)
        return budget

    def expired(self, what: str) -> DestinationTimeoutError:
        return DestinationTimeoutError(
            f"{self._owner}: write_timeout={self.timeouts.write:g}s used up ({what}) without "
            "an answer from Snowflake; session dropped"
        )

    def passed(self) -> bool:
        left = self.remaining()
        return left is not None and left <= 0


class BoundedCursor(SnowflakeCursor):
    """A cursor whose statements share the current write's deadline."""

    deadline: WriteDeadline | None = None

    def execute(  # type: ignore[override]
        self, command: str, params: Any = None, *args: Any, **kwargs: Any
    ) -> Any:
        deadline = self.deadline
        if deadline is None or kwargs.get("timeout") is not None:
            return super().execute(command, params, *args, **kwargs)
        kwargs["timeout"] = deadline.retry_budget("before a statement")
        try:
            return super().execute(command, params, *args, **kwargs)
        except sf_errors.Error as error:
            if deadline.passed():
                raise deadline.expired("a statement") from error
            raise


def bounded_cursor(conn: Any, deadline: WriteDeadline) -> BoundedCursor:
    """A cursor of ``conn`` bound by ``deadline``."""
    cur: BoundedCursor = conn.cursor(BoundedCursor)
    cur.deadline = deadline
    return cur
