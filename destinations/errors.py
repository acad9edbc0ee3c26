"""Destination errors, split into transient (retry later) and permanent (park)."""

from __future__ import annotations

from dataclasses import dataclass
from enum import StrEnum

from config.errors import RosettaError
from destinations.records import ChangeRecord


class FailureKind(StrEnum):
    TRANSIENT = "transient"  # the destination may accept it later: retry, then queue
    PERMANENT = "permanent"  # it will never go in as is: park it with its context
    # Every change of the target table fails the same way until someone fixes
    # the table or the grant (missing table or column, no unique constraint for
    # the upsert, no privilege): hold the queue in order and retry, park nothing.
    TABLE = "table"


@dataclass(frozen=True, slots=True)
class ClassifiedError:
    """What a destination says about an exception raised by one of its writes."""

    kind: FailureKind
    error_class: str
    message: str
    code: str | None = None  # SQLSTATE, or the connector's errno
    # The session was lost (cut, refused, killed, server shutting down): the
    # failure says nothing about the events, so replay does not charge it
    # to their retry budget (it could otherwise park good events as poison).
    connection_lost: bool = False
    # The destination refused the engine's credentials (a changed password, a
    # removed role or grant to log in): nothing about the events, and retrying
    # in place cannot help; the destination is marked unhealthy with the
    # reason and replay resumes once a probe logs in again.
    authentication: bool = False

    @property
    def is_transient(self) -> bool:
        return self.kind is FailureKind.TRANSIENT


def append_only_refusal(record: ChangeRecord) -> str:
    """Why ``record``, an update or delete of an append-only table, is parked."""
    return (
        f"{record.op.name.lower()} of append-only table {record.table} at "
        f"{record.position}: an append-only table takes inserts only (its rows have "
        "no key to update or delete by); parked, the table is left as it was"
    )


class DestinationError(RosettaError):
    """A destination write or check failed."""


class TransientDestinationError(DestinationError):
    """The destination is unavailable for now; the same write may succeed later."""


class PermanentDestinationError(DestinationError):
    """The destination refuses this data; retrying the same write will not help."""


class TableLevelDestinationError(PermanentDestinationError):
    """The target table refuses every row the same way (e.g. a record column it lacks).

    Classified ``FailureKind.TABLE``: the queue is held in order and retried
    after the table is fixed, nothing is parked.
    """


class DestinationTimeoutError(TransientDestinationError):
    """The destination did not answer within the client-side deadline; the connection was cut."""
