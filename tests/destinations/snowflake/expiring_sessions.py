"""Makes the local fakesnow server expire sessions the way Snowflake does."""

from __future__ import annotations

import contextlib
import importlib
from collections.abc import Iterator
from types import ModuleType
from typing import Any

import pytest


def _fakesnow_server() -> ModuleType:
    # The module, not fakesnow.server(): ``import fakesnow.server`` names both.
    return importlib.import_module("fakesnow.server")


class ExpiringSessions:
    """Makes fakesnow expire sessions the way Snowflake does.

    An expired session's query is answered with 390112 (session expired); the
    connector then asks to renew it, and the renewal is refused with 390114
    (authentication token expired): the connector raises that ProgrammingError.
    A fresh login always works, so the health check passes meanwhile.
    """

    def __init__(self) -> None:
        self.expired: set[str] = set()
        self.queries: dict[str, int] = {}
        # None: sessions live until expired; N: a new session expires after N queries.
        self.queries_per_session: int | None = None
        self.spared: set[str] = set()  # sessions opened before the limit was set

    def limit_queries(self, limit: int | None) -> None:
        self.queries_per_session = limit
        self.spared = self.current()

    @staticmethod
    def current() -> set[str]:
        return set(_fakesnow_server().sessions)

    def expire_since(self, before: set[str]) -> None:
        """Expire the sessions opened since ``before`` was taken."""
        self.expired.update(self.current() - before)


@contextlib.contextmanager
def expiring_sessions(monkeypatch: pytest.MonkeyPatch) -> Iterator[ExpiringSessions]:
    """Patch the fakesnow app in this process for the duration; yields the control."""
    from starlette.responses import JSONResponse
    from starlette.routing import Route

    server = _fakesnow_server()
    control = ExpiringSessions()
    original = server.to_conn

    def to_conn(token: str) -> Any:
        control.queries[token] = control.queries.get(token, 0) + 1
        limit = control.queries_per_session
        over = limit is not None and token not in control.spared and control.queries[token] > limit
        if token in control.expired or over:
            control.expired.add(token)
            raise server.ServerError(
                status_code=200, code="390112", message="Your session has expired."
            )
        return original(token)

    async def token_request(request: Any) -> JSONResponse:
        return JSONResponse(
            {
                "data": None,
                "code": "390114",
                "message": "Authentication token has expired.  The user must authenticate again.",
                "success": False,
            }
        )

    route = Route("/session/token-request", token_request, methods=["POST"])
    monkeypatch.setattr(server, "to_conn", to_conn)
    server.app.router.routes.append(route)
    try:
        yield control
    finally:
        server.app.router.routes.remove(route)
