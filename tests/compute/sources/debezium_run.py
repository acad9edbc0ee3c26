"""Runs one Debezium fixture through the JSON-lines source into any destination, for the
PostgreSQL and Snowflake fixture tests alike."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

from compute.dlq.manager import DLQManager
from compute.engine.pipeline import Pipeline
from compute.queue_id import QueueId
from compute.sources.jsonl_event import parse_event
from compute.sources.jsonl_source import JsonLinesSource
from compute.sources.offset_store import OffsetStore
from destinations.base import Destination
from tests.builders import dlq_config
from tests.compute.sources.debezium_truth import Truth

FIXTURES = Path(__file__).parents[2] / "fixtures" / "debezium"
PLACEHOLDER = "__debezium_unavailable_value"


def one_line(fixture: str, topic: str | None = None) -> str:
    """The fixture as one JSON line; newlines between JSON tokens are only whitespace.

    With ``topic``: as ``kcat -J`` prints the message (the value as a JSON string).
    """
    line = (FIXTURES / fixture).read_text().strip().replace("\n", " ")
    if topic is None:
        return line
    message = {"topic": topic, "partition": 0, "offset": 0, "tstype": "create", "ts": 0}
    return json.dumps({**message, "key": None, "payload": line})


def table_of(line: str, truth: Truth) -> str:
    """The table the source names for this event (as the source parses it)."""
    if truth.topic is not None:  # <prefix>.<schema>.<table>
        return truth.topic.split(".", 1)[1]
    doc = json.loads(line)
    bare = doc.get("payload", doc)["source"].get("table", "")
    return parse_event(doc, {bare: truth.key}).table


def schemaless(truth: Truth) -> str:
    """The fixture's line with its schema dropped: the same payload, as a connector with
    ``value.converter.schemas.enable=false`` sends it."""
    return json.dumps(json.loads(one_line(truth.fixture))["payload"])


def assert_same(found: dict[str, Any], expected: dict[str, Any]) -> None:
    """Equal value AND equal type, column by column (Decimal('2.99') is not 2.99)."""
    assert set(found) == set(expected)
    for column, want in expected.items():
        got = found[column]
        assert got == want, f"{column}: {got!r} != {want!r}"
        assert type(got) is type(want), f"{column}: {type(got)} is not {type(want)}"


def run_fixture(
    tmp_path: Path, destination: Destination, line: str, table: str, truth: Truth
) -> list[str]:
    """Feeds the line through the JSON-lines source into ``destination``; returns the reasons
    of whatever was set aside (rejected by the source or parked by the destination)."""
    events = tmp_path / "events.jsonl"
    events.write_text(line + "\n")
    config = dlq_config(tmp_path)
    source = JsonLinesSource(
        "src", events, OffsetStore(tmp_path / "offsets.json"), primary_keys={table: truth.key}
    )
    with DLQManager(config, background=False) as dlq:
        pipeline = Pipeline("p", source, [destination], dlq, config, batch_size=10)
        try:
            while pipeline.step():
                pass
            assert source.exhausted
        finally:
            pipeline.close()
        parked = dlq.peek(QueueId("src", table, destination.destination_id).parked, 10)
    return [r.reason for r in source.rejected] + [m.failure.message for m in parked]


def assert_outcome(
    rows: list[dict[str, Any]],
    reasons: list[str],
    truth: Truth,
    spelled: Callable[[dict[str, Any]], dict[str, Any]] = dict,
) -> None:
    """The table holds the true row (or nothing after a delete), or, for a change that cannot
    be written exactly, exactly what it held, with the one reason set aside naming the fix.
    ``spelled`` turns a true row into the destination's spelling of it."""
    assert all(PLACEHOLDER not in str(v) for r in rows for v in r.values())
    if truth.parked is not None:
        assert len(reasons) == 1 and truth.parked in reasons[0], reasons
        assert rows == ([spelled(truth.before)] if truth.before else [])
        return
    assert reasons == [], reasons
    if truth.row is None:
        assert rows == []
    else:
        assert len(rows) == 1
        assert_same(rows[0], spelled(truth.row))
