"""The admin API's own refusals (bad body, too large, wrong type...) and their JSON bodies."""

from __future__ import annotations

from typing import Any

# The ``error_type`` of each refusal the HTTP layer makes itself, by status;
# errors the operations raise take theirs from compute/error_codes.py.
REFUSAL_TYPES = {
    400: "bad_request",
    401: "unauthorized",
    403: "forbidden",
    404: "no_route",
    405: "method_not_allowed",
    411: "length_required",
    413: "body_too_large",
    415: "unsupported_media_type",
    503: "busy",
    507: "disk_full",
}


def refusal_body(status: int, message: str, **extra: Any) -> dict[str, Any]:
    """The JSON body of a refusal: its message, its ``error_type``, then ``extra``."""
    return {"error": message, "error_type": REFUSAL_TYPES[status], **extra}


class HTTPError(Exception):
    """A request refused with ``status``; the message (and ``extra``) go into the JSON body."""

    status = 400

    def __init__(self, message: str, *, status: int | None = None, **extra: Any) -> None:
        super().__init__(message)
        if status is not None:
            self.status = status
        self.extra = extra

    def body(self) -> dict[str, Any]:
        return refusal_body(self.status, str(self), **self.extra)


class BadRequest(HTTPError):
    """The request's body or query is wrong; the message names the field."""
