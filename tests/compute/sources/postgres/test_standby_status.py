"""The standby status update message the source writes itself (protocol layout)."""

from __future__ import annotations

import struct

from compute.sources.postgres.standby_status import status_message


def test_status_message_layout_is_r_write_flush_apply_time_reply() -> None:
    message = status_message(write=0x2_0000_0010, flush=0x1_0000_0020, apply=5, now=946_684_801.5)
    kind, write, flush, apply, micros, reply = struct.unpack(">cQQQqB", message)
    assert (kind, write, flush, apply, reply) == (b"r", 0x2_0000_0010, 0x1_0000_0020, 5, 0)
    assert micros == 1_500_000  # microseconds since 2000-01-01 UTC
    assert len(message) == 34
