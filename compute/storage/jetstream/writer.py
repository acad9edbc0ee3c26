"""Appending to a queue's subject: its limits first, then one publish the quorum acknowledges.

One writer per queue: every publish names the subject sequence it expects
last, so a queue written by another engine meanwhile refuses it
(``QueueWrittenElsewhereError``), never a silent interleaving. A publish
whose answer is lost (no quorum, a timeout) is backpressure
(``store_unavailable``); the next publish on the queue expects the same
sequence with the same message id if it is the same batch, so JetStream's
deduplication answers "duplicate" when the lost one was stored after all,
and a publish still in flight is waited for, never written around.
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable
from typing import Any

from compute.errors import (
    STORE_UNAVAILABLE,
    DLQFullError,
    DLQStorageError,
    QueueWrittenElsewhereError,
)
from compute.storage.base import QueueLimits
from compute.storage.jetstream import messages
from compute.storage.jetstream.bridge import NatsBridge, StoreUnavailable, describe, is_refusal
from compute.storage.jetstream.state import QueueState

# "wrong last sequence: N", and the same without N (a clustered stream's
# leader checking against publishes still in flight).
WRONG_LAST_SEQUENCE = (10071, 10164)


def check_limits(limits: QueueLimits, state: QueueState, count: int, size: int) -> None:
    """Refuse (``DLQFullError``) a batch the queue's limits have no room for."""
    if limits.max_messages and state.count + count > limits.max_messages:
        raise DLQFullError(
            "max_queue_messages",
            f"{state.count} + {count} messages over DLQ_MAX_QUEUE_MESSAGES ({limits.max_messages})",
            state.queue,
        )
    stored = state.bytes_end - state.acked_bytes
    if limits.max_bytes and stored + size > limits.max_bytes:
        raise DLQFullError(
            "max_queue_bytes",
            f"{stored} + {size} bytes over DLQ_MAX_QUEUE_BYTES ({limits.max_bytes})",
            state.queue,
        )


def publish(
    bridge: NatsBridge, state: QueueState, body: messages.Body, reload: Callable[[QueueState], None]
) -> None:
    """Publish one message at the subject's tail, waiting for the quorum's ack.

    ``reload`` reads the subject's tail again into ``state`` (after a refusal).
    """
    from nats.js import errors as js_errors

    retried = False
    while True:
        expected = state.last_seq if state.unsure_expected is None else state.unsure_expected
        end, bytes_end = state.end + body.count, state.bytes_end + len(body.data)
        digest = hashlib.blake2b(body.data, digest_size=12).hexdigest()
        msg_id = f"{hashlib.blake2b(state.subject.encode(), digest_size=6).hexdigest()}"
        msg_id += f"-{expected}-{digest}"
        headers = {
            messages.EXPECTED_LAST_SUBJECT_SEQUENCE: str(expected),
            messages.MSG_ID: msg_id,
            messages.COUNT: str(body.count),
            messages.END: str(end),
            messages.BYTES_END: str(bytes_end),
        }
        if body.frames > 1:
            headers[messages.FRAMES] = str(body.frames)
        publish = bridge.js.publish(
            state.subject, body.data, timeout=bridge.config.request_timeout, headers=headers
        )
        try:
            ack = bridge.run(publish)
        except StoreUnavailable as error:
            state.unsure_expected = expected
            raise DLQFullError(STORE_UNAVAILABLE, str(error), state.queue) from error
        except js_errors.APIError as error:
            if is_refusal(error):
                raise DLQFullError(_stream_limit(error), describe(error), state.queue) from None
            unsure = state.unsure_expected is not None
            if getattr(error, "err_code", None) not in WRONG_LAST_SEQUENCE:
                if unsure:  # e.g. "duplicate message id is in process": not settled yet
                    raise DLQFullError(STORE_UNAVAILABLE, describe(error), state.queue) from None
                raise DLQStorageError(f"enqueue {state.queue}: {describe(error)}") from error
            try:
                reload(state)
            except DLQStorageError as failed:
                raise DLQFullError(STORE_UNAVAILABLE, str(failed), state.queue) from None
            if unsure:
                if state.last_seq == expected:
                    # Our unanswered publish may still be in flight (proposed, not
                    # yet committed): wait for it to settle, never write around it.
                    raise DLQFullError(
                        STORE_UNAVAILABLE,
                        f"an earlier publish is not settled yet: {describe(error)}",
                        state.queue,
                    ) from None
                state.unsure_expected = None
                if not retried:
                    retried = True  # the unanswered publish landed: this batch goes after
                    continue
            raise QueueWrittenElsewhereError(
                f"queue {state.queue} was written by another engine (expected subject "
                f"sequence {expected}); its state is read again, nothing of this batch "
                "was stored"
            ) from None
        state.unsure_expected = None
        if ack.seq > state.last_seq:  # a duplicate already read back needs nothing more
            state.last_seq, state.end, state.bytes_end = ack.seq, end, bytes_end
        return


def _stream_limit(error: Any) -> str:
    text = (getattr(error, "description", "") or "").lower()
    if "bytes" in text:
        return "stream_max_bytes"
    if "messages" in text:
        return "stream_max_messages"
    return "stream_resources"
