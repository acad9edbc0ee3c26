"""The destination contract, failures: how each is classified, what lands, health and close."""

from __future__ import annotations

import threading
import time

import pytest

from destinations.errors import FailureKind
from destinations.records import Operation
from tests.builders import SOURCE_TABLE, delete, upsert
from tests.destinations.contract.backends import Backend, code_matches, raised_by
from tests.waiting import wait_until

pytestmark = pytest.mark.filterwarnings("ignore:Arrow output on a DB-API result:UserWarning")

PERMANENT = FailureKind.PERMANENT
TRANSIENT = FailureKind.TRANSIENT


def names(backend: Backend) -> list[str | None]:
    return [r["name"] for r in backend.rows()]


def test_a_rejected_row_fails_its_whole_batch_as_permanent_naming_the_value(
    backend: Backend,
) -> None:
    dest = backend.destination()
    dest.write_batch(SOURCE_TABLE, [upsert(1, {"name": "kept", "qty": 1}, 1)])
    batch = [upsert(2, {"name": "fine", "qty": 2}, 2), upsert(3, {"name": "bad", "qty": "lots"}, 3)]
    verdict = dest.classify_error(raised_by(lambda: dest.write_batch(SOURCE_TABLE, batch)))
    assert verdict.kind is PERMANENT and not verdict.connection_lost
    assert "lots" in verdict.message
    assert code_matches(verdict.code, backend.expected.rejected_code), verdict
    assert names(backend) == ["kept"]  # all of the batch or none of it
    # The destination is usable again right after.
    assert dest.write_batch(SOURCE_TABLE, batch[:1]) == 1
    assert names(backend) == ["kept", "fine"]


def test_a_record_column_missing_from_the_target_is_table_level(backend: Backend) -> None:
    dest = backend.destination()
    batch = [upsert(1, {"name": "a", "qty": 1}, 1), upsert(2, {"name": "b", "colour": "red"}, 2)]
    verdict = dest.classify_error(raised_by(lambda: dest.write_batch(SOURCE_TABLE, batch)))
    assert verdict.kind is FailureKind.TABLE and not verdict.connection_lost
    assert "colour" in verdict.message
    assert backend.rows() == []


def test_a_key_column_missing_from_the_target_is_table_level(backend: Backend) -> None:
    dest = backend.destination()
    verdict = dest.classify_error(
        raised_by(lambda: dest.write_batch(SOURCE_TABLE, [delete({"uid": 1}, 1)]))
    )
    assert verdict.kind is FailureKind.TABLE and "uid" in verdict.message


def test_an_upsert_without_a_row_image_is_permanent(backend: Backend) -> None:
    dest = backend.destination()
    record = upsert(1, {"name": "a"}, 1)._replace(op=Operation.UPDATE, after=None)
    verdict = dest.classify_error(raised_by(lambda: dest.write_batch(SOURCE_TABLE, [record])))
    assert verdict.kind is PERMANENT and "without a row image" in verdict.message


def test_a_missing_table_is_table_level(backend: Backend) -> None:
    dest = backend.destination()
    record = upsert(1, {"name": "a"}, 1, table="public.no_such_table")
    error = raised_by(lambda: dest.write_batch("public.no_such_table", [record]))
    verdict = dest.classify_error(error)
    assert verdict.kind is FailureKind.TABLE and not verdict.connection_lost
    assert verdict.code == backend.expected.missing_table_code
    assert "no_such_table" in verdict.message.lower()


def test_a_value_the_driver_cannot_send(backend: Backend) -> None:
    """PostgreSQL (and the fake) refuse it for good; Snowflake's verdict is transient."""
    dest = backend.destination()
    batch = [upsert(1, {"name": object(), "qty": 1}, 1)]
    verdict = dest.classify_error(raised_by(lambda: dest.write_batch(SOURCE_TABLE, batch)))
    assert verdict.kind is backend.expected.unsendable_kind
    assert "object" in verdict.message and not verdict.connection_lost
    assert backend.rows() == []


def test_unknown_errors_are_transient_and_charged_to_the_events(backend: Backend) -> None:
    dest = backend.destination()
    verdict = dest.classify_error(RuntimeError("something odd"))
    assert (verdict.kind, verdict.error_class, verdict.message) == (
        TRANSIENT,
        "RuntimeError",
        "something odd",
    )
    assert verdict.code is None and not verdict.connection_lost


# Snowflake: the connector's statement-timeout thread tries to cancel the
# failed query during the outage and dies with the same connection error.
@pytest.mark.filterwarnings("ignore::pytest.PytestUnhandledThreadExceptionWarning")
def test_a_write_during_an_outage_is_transient_and_a_lost_connection(backend: Backend) -> None:
    dest = backend.destination()
    dest.write_batch(SOURCE_TABLE, [upsert(1, {"name": "before", "qty": 1}, 1)])
    with backend.outage():
        error = raised_by(
            lambda: dest.write_batch(SOURCE_TABLE, [upsert(2, {"name": "during", "qty": 2}, 2)])
        )
        verdict = dest.classify_error(error)
        assert verdict.kind is TRANSIENT and verdict.connection_lost, verdict
        assert verdict.code == backend.expected.outage_code
        start = time.monotonic()
        assert dest.test_connection(timeout=1.0) is False
        assert time.monotonic() - start < 1.5
        assert dest.last_health_error
    wait_until(lambda: dest.test_connection(timeout=5.0), 20, "the destination to answer again")
    assert dest.last_health_error is None
    dest.write_batch(SOURCE_TABLE, [upsert(2, {"name": "after", "qty": 2}, 3)])
    assert names(backend) == ["before", "after"]


def test_a_session_lost_while_idle_is_replaced_and_the_batch_goes_in(backend: Backend) -> None:
    dest = backend.destination()
    dest.write_batch(SOURCE_TABLE, [upsert(1, {"name": "before", "qty": 1}, 1)])
    backend.lose_idle_session()
    assert dest.write_batch(SOURCE_TABLE, [upsert(2, {"name": "after", "qty": 2}, 2)]) == 1
    assert names(backend) == ["before", "after"]


@pytest.mark.timeout(120)
def test_a_session_lost_under_the_write_is_transient_and_not_the_events_fault(
    backend: Backend,
) -> None:
    dest = backend.destination()
    dest.write_batch(SOURCE_TABLE, [upsert(1, {"name": "before", "qty": 1}, 1)])
    batch = [upsert(2, {"name": "lost", "qty": 2}, 2)]
    verdict = dest.classify_error(backend.write_losing_sessions(dest, batch))
    assert verdict.kind is TRANSIENT and verdict.connection_lost, verdict
    assert verdict.code == backend.expected.lost_session_code
    assert names(backend) == ["before"]
    assert dest.write_batch(SOURCE_TABLE, batch) == 1
    assert names(backend) == ["before", "lost"]


def test_health_check_true_when_up(backend: Backend) -> None:
    import asyncio

    dest = backend.destination()
    assert dest.test_connection(timeout=10.0) is True
    assert asyncio.run(dest.test_connection_async(timeout=10.0)) is True
    assert dest.last_health_error is None


@pytest.mark.timeout(60)
def test_health_check_false_within_its_timeout_when_the_server_never_answers(
    backend: Backend,
) -> None:
    dest = backend.destination()
    with backend.unresponsive():
        start = time.monotonic()
        assert dest.test_connection(timeout=0.5) is False
        assert time.monotonic() - start < 1.0
        # repeated checks while the first one still hangs: no thread pile-up
        for _ in range(5):
            t0 = time.monotonic()
            assert dest.test_connection(timeout=0.2) is False
            assert time.monotonic() - t0 < 0.6
        probes = [t for t in threading.enumerate() if t.name.startswith("health-probe:")]
        assert len(probes) <= 1
    wait_until(lambda: dest.test_connection(timeout=5.0), 20, "the destination to answer again")


def test_close_releases_the_connections_and_may_be_repeated(backend: Backend) -> None:
    dest = backend.destination()
    dest.write_batch(SOURCE_TABLE, [upsert(1, {"name": "a", "qty": 1}, 1)])
    assert dest.test_connection(timeout=10.0) is True
    dest.close()
    dest.close()
    wait_until(backend.connections_closed, 10, "the destination's connections to close")
    assert names(backend) == ["a"]
