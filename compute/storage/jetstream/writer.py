"""Appending to a queue's subject: its limits first, then one publish the quorum acknowledges.

One writer per queue: every publish names the subject sequence it expects
last, so a queue written by another engine meanwhile refuses it
(``QueueWrittenElsewhereError``), never a silent interleaving. A publish
whose answer is lost (no quorum, a timeout) is backpressure
(``store_unavailable``): its caller is told nothing was stored and sends
the batch again. The next publish on the queue expects the same sequence
with the same message id if it is the same batch, so JetStream's
deduplication answers "duplicate" when the lost one was stored after all;
a publish still in flight is waited for, never written around; and a
refused batch that landed late while the caller sent another one first is
deleted (a phantom: kept, it would be stored twice and out of order).
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
from compute.storage.jetstream.messages import StoredFrame
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
    bridge: NatsBridge,
    state: QueueState,
    body: messages.Body,
    tail: Callable[[QueueState], StoredFrame | None],
    delete: Callable[[QueueState, int], None],
) -> None:
    """Publish one message at the subject's tail, waiting for the quorum's ack.

    ``tail`` reads the subject's last message (after a refusal); ``delete``
    deletes one message of the subject by its stream sequence.
    """
    from nats.js import errors as js_errors

    while True:
        expected = state.last_seq if state.unsure_expected is None else state.unsure_expected
        end, bytes_end = state.end + body.count, state.bytes_end + len(body.data)
        digest = hashlib.blake2b(body.data, digest_size=12).hexdigest()
        msg_id = f"{hashlib.blake2b(state.subject.encode(), digest_size=6).hexdigest()}"
        msg_id += f"-{expected}-{digest}"
        if state.generation:
            msg_id += f"-g{state.generation}"
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
            state.unsure_ids.add(msg_id)
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
                last = tail(state)
                if unsure and _settle(state, last, expected, msg_id, delete):
                    if last is not None and last.msg_id == msg_id:
                        _answered(state, last.seq, last.end, last.bytes_end)
                        return  # this very batch, unanswered before, landed
                    continue  # a phantom was deleted: this batch takes its place
            except DLQStorageError as failed:
                raise DLQFullError(STORE_UNAVAILABLE, str(failed), state.queue) from None
            if last is None:
                state.last_seq = 0
            else:
                state.adopt(last)
            raise QueueWrittenElsewhereError(
                f"queue {state.queue} was written by another engine (expected subject "
                f"sequence {expected}); its state is read again, nothing of this batch "
                "was stored"
            ) from None
        if ack.seq > state.last_seq:  # a duplicate already read back needs nothing more
            _answered(state, ack.seq, end, bytes_end)
        else:
            _answered(state, state.last_seq, state.end, state.bytes_end)
        return


def _answered(state: QueueState, seq: int, end: int, bytes_end: int) -> None:
    """A publish was acknowledged: no earlier unanswered one can land any more."""
    state.last_seq, state.end, state.bytes_end = seq, end, bytes_end
    state.unsure_expected = None
    state.unsure_ids.clear()


def _settle(
    state: QueueState,
    last: StoredFrame | None,
    expected: int,
    msg_id: str,
    delete: Callable[[QueueState, int], None],
) -> bool:
    """After a refused publish while earlier ones went unanswered: True to go on.

    The subject's tail is ``last``. Unchanged: an unanswered publish may still
    be in flight (proposed, not yet committed), so wait for it to settle,
    never write around it. This very batch: it landed (True). Another batch
    published without an answer, which its caller was told is not stored and
    will send again: keeping it would store it twice and out of order, so it
    is deleted (True: this batch takes its place). Anything else (another
    engine's write): False.
    """
    if last is None or last.seq < expected:
        return False
    if last.seq == expected:
        raise DLQFullError(
            STORE_UNAVAILABLE,
            "an earlier publish is not settled yet (its answer was lost)",
            state.queue,
        )
    if last.msg_id == msg_id:
        return True
    if last.msg_id in state.unsure_ids:
        delete(state, last.seq)
        state.unsure_ids.discard(last.msg_id)
        state.generation += 1
        return True
    return False


def _stream_limit(error: Any) -> str:
    text = (getattr(error, "description", "") or "").lower()
    if "bytes" in text:
        return "stream_max_bytes"
    if "messages" in text:
        return "stream_max_messages"
    return "stream_resources"
