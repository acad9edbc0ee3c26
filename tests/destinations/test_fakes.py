"""The scriptable FakeDestination that other tests drive failure paths with."""

from __future__ import annotations

import asyncio
import threading
import time

import pytest

from destinations.errors import (
    DestinationError,
    FailureKind,
    PermanentDestinationError,
    TransientDestinationError,
)
from destinations.records import Operation
from tests.builders import SOURCE_TABLE, delete, upsert
from tests.fakes import FakeDestination, Fault, SessionLostError


def test_applies_net_effect_by_key() -> None:
    fake = FakeDestination()
    batch = [
        upsert(1, {"name": "a", "qty": 1}, 1, op=Operation.INSERT),
        upsert(1, {"name": "b"}, 3),
        upsert(1, {"name": "ignored"}, 2),
        upsert(2, {"name": "x"}, 4),
        delete(2, 5),
    ]
    assert fake.write_batch(SOURCE_TABLE, batch) == 5
    assert fake.rows(SOURCE_TABLE) == {(1,): {"id": 1, "name": "b", "qty": 1}}
    assert fake.row(SOURCE_TABLE, 1) == {"id": 1, "name": "b", "qty": 1}
    assert fake.row(SOURCE_TABLE, {"id": 2}) is None
    assert [c.ok for c in fake.calls] == [True] and fake.applied == batch
    fake.write_batch(SOURCE_TABLE, batch)  # idempotent
    assert fake.rows(SOURCE_TABLE) == {(1,): {"id": 1, "name": "b", "qty": 1}}


def test_fail_next_transient_then_recovers() -> None:
    fake = FakeDestination()
    fake.fail_next(2)
    for _ in range(2):
        with pytest.raises(TransientDestinationError) as caught:
            fake.write_batch(SOURCE_TABLE, [upsert(1, {"name": "a"}, 1)])
        assert fake.classify_error(caught.value).kind is FailureKind.TRANSIENT
    assert fake.write_batch(SOURCE_TABLE, [upsert(1, {"name": "a"}, 1)]) == 1
    assert [c.ok for c in fake.calls] == [False, False, True]
    assert fake.rows(SOURCE_TABLE) == {(1,): {"id": 1, "name": "a"}}


@pytest.mark.parametrize(
    ("fault", "kind", "lost"),
    [
        (Fault.TRANSIENT, FailureKind.TRANSIENT, False),
        (Fault.PERMANENT, FailureKind.PERMANENT, False),
        (Fault.SESSION_LOST, FailureKind.TRANSIENT, True),
    ],
)
def test_scripted_faults_are_classified_as_the_real_destinations_classify_them(
    fault: Fault, kind: FailureKind, lost: bool
) -> None:
    fake = FakeDestination()
    fake.fail_keys([1], kind=fault)
    with pytest.raises(DestinationError) as caught:
        fake.write_batch(SOURCE_TABLE, [upsert(1, {"name": "a"}, 1)])
    verdict = fake.classify_error(caught.value)
    assert (verdict.kind, verdict.connection_lost, verdict.code) == (kind, lost, None)


def test_a_session_lost_while_idle_is_replaced_by_the_next_write() -> None:
    fake = FakeDestination()
    fake.lose_session()
    assert fake.write_batch(SOURCE_TABLE, [upsert(1, {"name": "a"}, 1)]) == 1
    assert fake.sessions_replaced == 1 and fake.row(SOURCE_TABLE, 1) == {"id": 1, "name": "a"}


def test_declared_tables_refuse_what_a_real_table_would() -> None:
    fake = FakeDestination(tables={SOURCE_TABLE: {"id": int, "name": str, "note": None}})
    fake.write_batch(SOURCE_TABLE, [upsert(1, {"name": "a", "note": object()}, 1)])
    refused = {
        "public.other": "does not exist",
        SOURCE_TABLE: "columns missing from target table public.items: colour",
    }
    for table, text in refused.items():
        with pytest.raises(PermanentDestinationError, match=text):
            fake.write_batch(table, [upsert(2, {"colour": "red"}, 2, table=table)])
    with pytest.raises(PermanentDestinationError, match="column name .* cannot hold 5"):
        fake.write_batch(SOURCE_TABLE, [upsert(3, {"name": 5}, 3)])
    assert list(fake.rows(SOURCE_TABLE)) == [(1,)]


def test_fail_next_permanent() -> None:
    fake = FakeDestination()
    fake.fail_next(1, kind="permanent")
    with pytest.raises(PermanentDestinationError) as caught:
        fake.write_batch(SOURCE_TABLE, [upsert(1, {"name": "a"}, 1)])
    assert fake.classify_error(caught.value).kind is FailureKind.PERMANENT


def test_fail_keys_fails_whole_batch_permanently() -> None:
    fake = FakeDestination()
    fake.fail_keys([2, {"id": 3}])
    with pytest.raises(PermanentDestinationError, match=r"\(2,\)"):
        fake.write_batch(SOURCE_TABLE, [upsert(1, {"name": "a"}, 1), upsert(2, {"name": "b"}, 2)])
    assert fake.rows(SOURCE_TABLE) == {}  # all or nothing
    fake.write_batch(SOURCE_TABLE, [upsert(1, {"name": "a"}, 1)])
    with pytest.raises(PermanentDestinationError):
        fake.write_batch(SOURCE_TABLE, [delete(3, 3)])
    fake.clear_failures()
    fake.write_batch(SOURCE_TABLE, [upsert(2, {"name": "b"}, 4)])
    assert sorted(fake.rows(SOURCE_TABLE)) == [(1,), (2,)]
    assert len(fake.failed_calls()) == 2 and len(fake.successful_calls()) == 2


def test_fail_keys_can_be_limited_to_a_table_and_be_transient() -> None:
    fake = FakeDestination()
    fake.fail_keys([1], kind=FailureKind.TRANSIENT, table="public.other")
    fake.write_batch(SOURCE_TABLE, [upsert(1, {"name": "a"}, 1)])
    with pytest.raises(TransientDestinationError):
        fake.write_batch("public.other", [upsert(1, {"name": "a"}, 1, table="public.other")])


def test_set_down_fails_writes_as_lost_sessions_and_health_checks() -> None:
    fake = FakeDestination()
    assert fake.test_connection(0.1) is True
    fake.set_down(True)
    assert fake.test_connection(0.1) is False
    assert fake.last_health_error and "is down" in fake.last_health_error
    with pytest.raises(SessionLostError) as caught:
        fake.write_batch(SOURCE_TABLE, [upsert(1, {"name": "a"}, 1)])
    verdict = fake.classify_error(caught.value)
    assert verdict.kind is FailureKind.TRANSIENT and verdict.connection_lost
    fake.set_down(False)
    assert fake.test_connection(0.1) is True
    assert fake.write_batch(SOURCE_TABLE, [upsert(1, {"name": "a"}, 1)]) == 1
    assert fake.health_checks == 3


@pytest.mark.timeout(30)
def test_hang_test_connection_is_bounded_by_timeout() -> None:
    fake = FakeDestination()
    fake.hang_test_connection(10)
    start = time.monotonic()
    assert fake.test_connection(timeout=0.2) is False
    assert 0.15 < time.monotonic() - start < 1.0
    assert asyncio.run(fake.test_connection_async(timeout=0.2)) is False

    fake.hang_test_connection(0.1)  # slow but within the timeout
    assert fake.test_connection(timeout=1.0) is True


@pytest.mark.timeout(30)
def test_hang_can_ignore_the_timeout_and_be_released() -> None:
    fake = FakeDestination()
    fake.hang_test_connection(10, ignore_timeout=True)
    results: list[bool] = []
    checker = threading.Thread(target=lambda: results.append(fake.test_connection(0.1)))
    checker.start()
    time.sleep(0.3)
    assert checker.is_alive()  # still blocked past its own timeout
    fake.hang_test_connection(0)  # release
    checker.join(5)
    assert results == [True]


def test_close_and_str() -> None:
    fake = FakeDestination("2", "Snowflake-Prod")
    assert str(fake) == "Destination Snowflake-Prod (ID=2)"
    fake.close()
    assert fake.closed
