"""Messages whose bytes, as earlier builds wrote them, are kept in ``data/``: they must still read.

``data/dlq_messages_v2.hex`` holds one message a line, encoded by the build
before integers outside 64 bits, tuples and sets got extension types (one
batch through ``encode_messages``, so lines 2-4 share their context blob).
"""

from __future__ import annotations

import datetime as dt
import uuid
from decimal import Decimal
from pathlib import Path

from compute.codec.failure_context import FailureContext
from compute.codec.message import DLQMessage
from compute.queue_id import QueueId
from destinations.errors import FailureKind
from destinations.records import ChangeRecord, Operation, SourcePosition

V2_SAMPLES = Path(__file__).parent / "data" / "dlq_messages_v2.hex"

_QUEUE = QueueId("pg1", "public.accounts", "sf1")
_FAILURE = FailureContext(
    "CheckViolation", 'new row violates check constraint "x"', FailureKind.PERMANENT, "23514",
    "Traceback ...", 2, 1_700_000_000.5, 1_700_000_060.25,
)  # fmt: skip


def sample_messages() -> list[DLQMessage]:
    """The messages behind ``data/dlq_messages_v2.hex``, in order."""
    utc2 = dt.timezone(dt.timedelta(hours=2))
    rows: list[tuple[Operation, dict[str, object], dict[str, object] | None]] = [
        (Operation.INSERT, {"id": 1}, {"id": 1, "balance": Decimal("12.50"), "note": None}),
        (
            Operation.UPDATE,
            {"id": -(2**63)},
            {
                "id": -(2**63),
                "big": 2**64 - 1,
                "f": float("inf"),
                "nan": Decimal("NaN"),
                "exp": Decimal("1E+999999"),
                "at": dt.datetime(9999, 12, 31, 23, 59, 59, 999999, tzinfo=utc2),
                "naive": dt.datetime(1, 1, 1),
                "day": dt.date(2024, 2, 29),
                "t": dt.time(23, 59, 59, 1, tzinfo=dt.UTC),
                "u": uuid.UUID(int=12345),
            },
        ),
        (Operation.DELETE, {"id": 3, "k": "b"}, None),
        (
            Operation.SNAPSHOT_READ,
            {"id": 4},
            {
                "id": 4,
                "raw": b"\x00\xff",
                "s": "lone \udc80 surrogate, ✓",
                "nested": {"a": [1, [2, {"b": None}]], 7: "int key", None: True, 1.5: False},
            },
        ),
    ]
    messages = []
    for index, (op, key, after) in enumerate(rows):
        before = {"id": key["id"], "old": True} if op is not Operation.INSERT else None
        record = ChangeRecord(
            "public.accounts", op, key, after, SourcePosition(0x16B3748 + index, index), before,
            None if index == 2 else 1_700_000_000.125,
        )  # fmt: skip
        messages.append(
            DLQMessage(f"{index:032x}", _QUEUE, record, _FAILURE, 1_700_000_100.0 + index)
        )
    return messages
