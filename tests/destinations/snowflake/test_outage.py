"""Snowflake outages: detected within write_timeout, queued, delivered after; the console quiet.

The real connector talks to fakesnow through a fault proxy that either resets
every connection (a server that is down) or blackholes them (a network that
stopped answering).
"""

from __future__ import annotations

import io
import logging
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from compute.engine.embedded import DestinationSpec, open_delivery
from destinations.errors import DestinationTimeoutError
from destinations.snowflake.destination import SnowflakeDestination
from tests.builders import SOURCE_TABLE, dlq_config, engine_settings, upsert
from tests.destinations.snowflake.items_table import item_rows, items_schema
from tests.fault_proxy import FaultProxy
from tests.waiting import wait_until

pytestmark = pytest.mark.filterwarnings("ignore:Arrow output on a DB-API result:UserWarning")

DATABASE = "ROSETTA_OUTAGE"
WRITE_TIMEOUT = 6


@pytest.fixture
def schema(fakesnow_server: dict[str, Any]) -> Iterator[str]:
    with items_schema(fakesnow_server, DATABASE, "O") as name:
        yield name


@pytest.fixture
def proxy(fakesnow_server: dict[str, Any]) -> Iterator[FaultProxy]:
    with FaultProxy(fakesnow_server["host"], fakesnow_server["port"]) as started:
        yield started


def options(server: dict[str, Any], proxy: FaultProxy, schema: str) -> dict[str, Any]:
    # No network_timeout of the suite's: the destination derives it from write_timeout.
    base = {k: v for k, v in server.items() if k != "network_timeout"}
    return {
        **base,
        "port": proxy.port,
        "database": DATABASE,
        "schema": schema,
        "write_timeout": WRITE_TIMEOUT,
    }


def rows(server: dict[str, Any], schema: str) -> list[tuple[Any, ...]]:
    return item_rows(server, DATABASE, schema)


@pytest.fixture
def console() -> Iterator[io.StringIO]:
    """What ``rosetta run`` would print at INFO: the root logger's lines, as formatted there."""
    stream = io.StringIO()
    handler = logging.StreamHandler(stream)
    handler.setLevel(logging.INFO)
    handler.setFormatter(logging.Formatter("%(levelname)s %(name)s - %(message)s"))
    root = logging.getLogger()
    level = root.level
    root.addHandler(handler)
    root.setLevel(logging.INFO)
    try:
        yield stream
    finally:
        root.removeHandler(handler)
        root.setLevel(level)


@pytest.mark.timeout(120)
@pytest.mark.parametrize("fault", ["blackhole", "reset"])
def test_a_write_during_an_outage_fails_within_write_timeout_and_quietly(
    fakesnow_server: dict[str, Any],
    proxy: FaultProxy,
    schema: str,
    fault: str,
    console: io.StringIO,
    capfd: pytest.CaptureFixture[str],
) -> None:
    dest = SnowflakeDestination("5", "Snowflake-Out", **options(fakesnow_server, proxy, schema))
    try:
        dest.write_batch(SOURCE_TABLE, [upsert(1, {"name": "a"}, 1)])  # a session is kept
        getattr(proxy, fault)()
        started = time.monotonic()
        with pytest.raises(Exception) as failed:
            dest.write_batch(SOURCE_TABLE, [upsert(2, {"name": "b"}, 2)])
        took = time.monotonic() - started
        verdict = dest.classify_error(failed.value)
        assert verdict.is_transient and verdict.connection_lost, verdict
        assert took <= WRITE_TIMEOUT + 0.5, f"the write took {took:.1f}s"
        if fault == "blackhole":
            assert isinstance(failed.value, DestinationTimeoutError)
            assert f"write_timeout={WRITE_TIMEOUT}s used up" in str(failed.value)
        proxy.pass_through()
        proxy.reset_all()
        time.sleep(WRITE_TIMEOUT)  # the connector's statement timers have fired meanwhile
        dest.write_batch(SOURCE_TABLE, [upsert(2, {"name": "b"}, 2)])
    finally:
        dest.close()
    assert rows(fakesnow_server, schema) == [(1, "a"), (2, "b")]
    shown = console.getvalue()
    assert "snowflake.connector" not in shown and "Traceback" not in shown, shown
    assert "Traceback" not in capfd.readouterr().err  # no thread died on the console either


@pytest.mark.timeout(180)
def test_an_outage_queues_the_events_and_they_arrive_after_it(
    fakesnow_server: dict[str, Any],
    proxy: FaultProxy,
    schema: str,
    tmp_path: Path,
    console: io.StringIO,
) -> None:
    # The engine's own live-write deadline is far away: only write_timeout bounds the write.
    spec = DestinationSpec(
        "2",
        "Snowflake-Prod",
        "snowflake",
        {**options(fakesnow_server, proxy, schema), "live_write_deadline_ms": 600_000},
    )
    settings = engine_settings(dlq_config(tmp_path))
    changes = [upsert(i, {"name": f"n{i}"}, i) for i in range(1, 41)]
    with open_delivery(settings, [spec], source_id="src", retry="conservative") as delivery:
        delivery.submit(changes[:10])
        assert delivery.flush(30)
        proxy.blackhole()
        started = time.monotonic()
        delivery.submit(changes[10:25])
        # Queued after the engine's in-place attempts, each cut at write_timeout.
        assert delivery.flush(60), "the batch was never queued"
        assert time.monotonic() - started < 60
        status = delivery.status()
        assert status.queued_events > 0 and not status.drained
        proxy.pass_through()
        proxy.reset_all()
        delivery.submit(changes[25:])
        wait_until(lambda: delivery.status().drained, 90, "the DLQ to drain")
    assert rows(fakesnow_server, schema) == [(i, f"n{i}") for i in range(1, 41)]
    shown = console.getvalue()
    assert "snowflake.connector" not in shown and "Traceback" not in shown, shown
    failures = [line for line in shown.splitlines() if "Failed to write to destination" in line]
    assert failures and all("error=" in line for line in failures), shown
