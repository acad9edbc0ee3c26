"""What only the JetStream store does: one writer per queue, stream limits, quorum loss, records.

The contract it shares with rocksq is test_store_contract.py. These run on
the session's 3-node cluster, each under a stream prefix of its own; the
quorum-loss test kills nodes, so it has a cluster of its own.
"""

from __future__ import annotations

import random
import time
from pathlib import Path
from typing import Any

import pytest

from compute.errors import STORE_UNAVAILABLE, DLQFullError, QueueWrittenElsewhereError
from compute.queue_id import QueueId
from compute.storage.jetstream.bridge import StoreUnavailable
from compute.storage.jetstream.naming import queue_subject, record_key, subject_queue, token
from compute.storage.jetstream.store import JetStreamStore
from tests.compute.helpers import STORE_QUEUE, drain, items
from tests.jetstream_stores import jetstream_store, unique_prefix
from tests.nats_cluster import NatsCluster, nats_cluster

Q = STORE_QUEUE
KEY_CHARACTERS = set("-/_=.abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789")


@pytest.fixture
def prefix() -> str:
    return unique_prefix()


@pytest.fixture
def open_store(nats_session_cluster: NatsCluster, prefix: str, tmp_path: Path):
    stores: list[JetStreamStore] = []

    def opener(base: str = "dlq", **options: object) -> JetStreamStore:
        store = jetstream_store(nats_session_cluster, prefix, tmp_path / base, **options)
        stores.append(store)
        return store

    yield opener
    for store in stores:
        store.close()


def test_subjects_and_keys_map_back_to_their_queue() -> None:
    names = ["a.b", "x" * 400, "schéma/täble", "%41", "~", " ", "..", "*", ">"]
    for name in names:
        for queue in (QueueId(name, name, name), QueueId("1", name, "2").parked):
            subject = queue_subject("P", queue)
            assert subject.count(".") == 5 and " " not in subject
            assert "*" not in subject and ">" not in subject
            assert subject_queue("P", subject) == queue
            key = record_key(queue, "attempts.json")
            assert set(key) <= set(
                "-/_=.abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789"
            )
    assert token("public.users") == "public%2Eusers"
    assert subject_queue("P", "P.q.a.b") is None
    assert subject_queue("P", "P.q.a.b.c.other") is None
    assert subject_queue("P", "P.q.%zz.b.c.main") is None


def test_another_writer_on_the_same_queue_is_refused_not_interleaved(open_store) -> None:
    first, second = open_store(), open_store()
    first.enqueue(Q, items(0, 3))
    second.enqueue(Q, items(3, 5))  # it loads the tail first: no conflict
    with pytest.raises(QueueWrittenElsewhereError, match="another engine"):
        first.enqueue(Q, items(5, 7))  # first still expects its own last message
    assert second.count(Q) == 5
    first.enqueue(Q, items(5, 7))  # the tail was read again: this one goes after it
    assert drain(second) == items(0, 7)


def test_a_full_stream_refuses_the_batch_and_names_the_limit(open_store) -> None:
    store = open_store(stream_max_messages=3)
    for i in range(3):
        store.enqueue(Q, items(i, i + 1))
    with pytest.raises(DLQFullError) as caught:
        store.enqueue(Q, items(3, 5))
    assert caught.value.limit == "stream_max_messages"
    assert store.count(Q) == 3
    store.ack(store.read(Q, 1))  # an ack frees room in the stream
    store.enqueue(Q, items(3, 5))
    assert drain(store) == [*items(1, 3), *items(3, 5)]


def test_a_stream_byte_limit_refuses_too(open_store) -> None:
    store = open_store(stream_max_bytes=4000)
    store.enqueue(Q, [b"a" * 100])
    with pytest.raises(DLQFullError) as caught:
        store.enqueue(Q, [random.Random(1).randbytes(5000)])  # incompressible
    assert caught.value.limit == "stream_max_bytes"
    assert drain(store) == [b"a" * 100]


def _lose_answers(store: JetStreamStore, *, landed: bool, publish_number: int = 1) -> None:
    """The ``publish_number``-th publish from now gets no answer: stored (``landed``) or not."""
    bridge = store._bridge
    real = bridge.run
    seen = 0

    def run(coroutine: Any, timeout: float | None = None) -> Any:
        nonlocal seen
        if getattr(coroutine, "__qualname__", "").endswith("publish"):
            seen += 1
            if seen == publish_number:
                del bridge.run  # back to the real one
                if landed:
                    real(coroutine, timeout)
                else:
                    coroutine.close()
                raise StoreUnavailable("no answer from JetStream within 2 s (dropped by the test)")
        return real(coroutine, timeout)

    bridge.run = run  # type: ignore[method-assign]


def _refused(store: JetStreamStore, batch: list[bytes]) -> None:
    with pytest.raises(DLQFullError) as caught:
        store.enqueue(Q, batch)
    assert caught.value.limit == STORE_UNAVAILABLE


def test_a_publish_whose_answer_was_lost_is_never_stored_twice(open_store) -> None:
    store = open_store()
    store.enqueue(Q, items(0, 2))
    _lose_answers(store, landed=True)
    _refused(store, items(2, 4))  # stored, but the caller cannot know
    assert store.count(Q) == 2  # not accepted: not counted, not read
    lease = store.read(Q, 10)
    assert lease.payloads == items(0, 2)
    store.release(lease)
    store.enqueue(Q, items(2, 4))  # the pipeline sends the same batch again
    assert store.count(Q) == 4
    assert drain(open_store("other")) == items(0, 4)


def test_a_refused_batch_that_landed_late_is_deleted_not_kept_out_of_order(open_store) -> None:
    """Its caller was told it is not stored and sends it again, after another batch."""
    store = open_store()
    store.enqueue(Q, items(0, 2))
    _lose_answers(store, landed=True)
    _refused(store, items(2, 4))
    store.enqueue(Q, items(4, 5))  # another batch first (a caller that moved on)
    store.enqueue(Q, items(2, 4))  # then the refused one again
    assert store.count(Q) == 5
    # In the order the enqueues were accepted, each once: the late copy is gone.
    assert drain(open_store("other")) == items(0, 2) + items(4, 5) + items(2, 4)


def test_a_batch_sent_again_after_its_late_copy_was_deleted_is_stored(open_store) -> None:
    """JetStream remembers a deleted message's id: the same batch again must not be
    answered "duplicate" (and lost)."""
    store = open_store()
    store.enqueue(Q, items(0, 2))
    _lose_answers(store, landed=True)
    _refused(store, items(2, 4))
    # The next batch deletes the late copy, then its own publish goes unanswered, unsent.
    _lose_answers(store, landed=False, publish_number=2)
    _refused(store, items(4, 5))
    store.enqueue(Q, items(2, 4))  # the same bytes at the same expected sequence as before
    store.enqueue(Q, items(4, 5))
    assert store.count(Q) == 5
    assert drain(open_store("other")) == items(0, 5)


def test_queues_and_records_survive_losing_the_machine(open_store) -> None:
    store = open_store("machine-a")
    store.enqueue(Q, items(0, 6))
    store.ack(store.read(Q, 2))
    assert store.save_record(Q, "attempts.json", b'{"m": 3}')
    store.close()
    other = open_store("machine-b")  # an empty local directory: only the cluster knows
    assert other.list_queues() == [Q]
    assert other.load_record(Q, "attempts.json") == b'{"m": 3}'
    assert drain(other) == items(2, 6)


def test_enqueue_is_one_message_per_batch(open_store, nats_session_cluster: NatsCluster) -> None:
    store = open_store()
    store.enqueue(Q, items(0, 500))
    store.enqueue(Q, items(500, 3500))  # three frames, still one message
    info = store._bridge.run(store._bridge.js.stream_info(store.stream))
    assert info.state.messages == 2
    assert store.count(Q) == 3500
    assert drain(store, batch=700) == items(0, 3500)


def test_quorum_loss_is_backpressure_and_nothing_is_lost_or_doubled(tmp_path: Path) -> None:
    with nats_cluster() as cluster:
        store = jetstream_store(cluster, unique_prefix(), tmp_path, request_timeout=1.0)
        try:
            store.enqueue(Q, items(0, 5))
            cluster.nodes[1].kill()
            cluster.nodes[2].kill()
            started = time.monotonic()
            refused = 0
            for start in range(5, 9, 2):
                with pytest.raises(DLQFullError) as caught:
                    store.enqueue(Q, items(start, start + 2))
                assert caught.value.limit == STORE_UNAVAILABLE
                refused += 1
            # Within the timeout each (1 s request, 2 s the bridge's wait at most).
            assert time.monotonic() - started < refused * 2.5 + 1
            cluster.nodes[1].start()
            cluster.nodes[2].start()
            deadline = time.monotonic() + 30
            while True:  # the pipeline's backpressure: the same batch again until it goes
                try:
                    store.enqueue(Q, items(5, 7))
                    break
                except DLQFullError as error:
                    assert error.limit == STORE_UNAVAILABLE
                    assert time.monotonic() < deadline, "JetStream did not come back"
                    time.sleep(0.2)
            store.enqueue(Q, items(7, 9))
            assert drain(store) == items(0, 9)
        finally:
            store.close()


def test_an_engine_taking_a_pipeline_over_reads_its_queues_afresh(open_store) -> None:
    """B cached a queue while A owned its pipeline; A appended and acked; B takes it over."""
    a, b = open_store("a"), open_store("b")
    a.enqueue(Q, items(0, 10))
    assert b.count(Q) == 10  # B's status refresh loaded it while A owned it
    a.enqueue(Q, items(10, 15))
    a.ack(a.read(Q, 4))  # A replayed part of it
    other = QueueId("1", "public.orders", "2")
    a.enqueue(other, items(0, 3))  # and made a queue B has never seen
    b.refresh_source(Q.source_id)
    assert b.count(Q) == 11
    assert other in b.list_queues()
    assert drain(b) == items(4, 15)  # nothing A acked comes back, nothing is skipped
    b.enqueue(Q, items(15, 17))  # B writes after A's last append, not around it
    assert drain(b) == items(15, 17)
