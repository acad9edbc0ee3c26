"""A credential in a destination's error text never reaches a parked message, the API or the log."""

from __future__ import annotations

import json
import logging
import urllib.request
from collections.abc import Sequence
from pathlib import Path
from urllib.parse import quote

import pytest

from compute.delivery.failures import capture_failure, failed_again
from compute.dlq.manager import DLQManager
from compute.engine.engine import Engine
from compute.engine.pipeline import Pipeline
from compute.queue_id import QueueId
from compute.runtime.retry_policy import RetryPolicy
from config.admin_config import AdminConfig
from config.pipelines import DestinationSpec, PipelineSpec, SourceSpec
from config.settings import Settings
from destinations.errors import ClassifiedError, FailureKind, PermanentDestinationError
from destinations.records import ChangeRecord
from tests.builders import TABLE, change, dlq_config
from tests.compute.helpers import ListSource
from tests.fakes import FakeDestination
from tests.waiting import wait_until

SECRET = "s3cret"
# What libpq says about a malformed URI: it quotes the URI, password included.
LEAKY = (
    'invalid dsn: end of string reached when looking for matching "]" in IPv6 host '
    f'address in URI: "postgresql://user:{SECRET}@[::1/db" (host=x password={SECRET})'
)


def _raised(text: str) -> PermanentDestinationError:
    try:
        raise PermanentDestinationError(text)
    except PermanentDestinationError as error:
        return error


def test_failure_context_masks_the_message_and_the_stack() -> None:
    error = _raised(LEAKY)
    for context in (
        capture_failure(error, now=1.0),
        capture_failure(
            error, ClassifiedError(FailureKind.PERMANENT, "ProgrammingError", LEAKY), now=1.0
        ),
    ):
        assert SECRET not in context.message and SECRET not in context.stack
        assert "postgresql://user:***@[::1/db" in context.message
        assert "password=***" in context.stack
    again = failed_again(
        context, ClassifiedError(FailureKind.TRANSIENT, "OperationalError", LEAKY), now=2.0
    )
    assert SECRET not in again.message and again.attempts == 2


class LeakyDestination(FakeDestination):
    """Refuses every write with an error whose text quotes a connection string."""

    def write_batch(self, table: str, records: Sequence[ChangeRecord]) -> int:
        raise PermanentDestinationError(LEAKY)


def test_parked_error_shown_by_the_admin_api_and_export_is_masked(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    config = dlq_config(tmp_path, check_interval=3600)
    destination = LeakyDestination("7", "Leaky")
    events = [change(i, i) for i in range(3)]

    def factory(spec: PipelineSpec, dlq: DLQManager) -> Pipeline:
        return Pipeline(
            spec.name,
            ListSource(events),
            [destination],
            dlq,
            config,
            retry_policy=RetryPolicy.preset("conservative"),
            probe_timeout=2.0,
        )

    spec = PipelineSpec(
        name="p",
        source=SourceSpec("1", "synthetic", {}),
        destinations=(DestinationSpec("7", "Leaky", "fake", {}),),
    )
    engine = Engine(
        Settings(dlq=config, admin=AdminConfig(port=0)), [spec], pipeline_factory=factory
    )
    queue = QueueId("1", TABLE, "7")
    with caplog.at_level(logging.DEBUG):
        engine.start()
        try:
            assert engine.dlq is not None and engine.admin is not None
            dlq = engine.dlq
            wait_until(lambda: dlq.parked_count(queue) == len(events), 60, "events parked")
            url = engine.admin.url + f"/dlq/queues/{quote(str(queue), safe='')}"
            with urllib.request.urlopen(url + "/messages?parked=true", timeout=30) as response:
                shown = response.read().decode()
            with urllib.request.urlopen(url + "/export?parked=true", timeout=30) as response:
                exported = response.read().decode()
        finally:
            engine.stop()
    messages = json.loads(shown)["messages"]
    assert len(messages) == len(events)
    assert "postgresql://user:***@[::1/db" in shown  # what failed stays readable
    lines = [json.loads(line) for line in exported.splitlines()[1:]]
    assert len(lines) == len(events) and "password=***" in lines[0]["failure"]["stack"]
    assert SECRET not in shown
    assert SECRET not in exported
    assert SECRET not in caplog.text


def test_health_reasons_are_masked(caplog: pytest.LogCaptureFixture) -> None:
    from compute.delivery.health import DestinationHealth

    health = DestinationHealth(FakeDestination("7", "Leaky"))
    with caplog.at_level(logging.INFO):
        health.mark_unhealthy(f"ProgrammingError: {LEAKY}", now=1.0)
    last_error = health.snapshot().last_error
    assert last_error is not None and "password=***" in last_error
    assert SECRET not in last_error
    assert SECRET not in caplog.text
