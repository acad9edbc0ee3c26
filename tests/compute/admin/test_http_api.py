"""The admin HTTP API over real HTTP on loopback, served by a real ``Engine``."""

from __future__ import annotations

import json
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from dataclasses import replace
from pathlib import Path
from typing import Any
from urllib.parse import quote

import pytest

from compute.codec.failure_context import FailureContext
from compute.codec.message import DLQMessage
from compute.dlq.manager import DLQManager
from compute.engine.engine import Engine
from compute.engine.pipeline import Pipeline
from compute.errors import DLQStorageError
from compute.queue_id import QueueId
from compute.runtime.retry_policy import RetryPolicy
from config.admin_config import AdminConfig
from config.pipelines import DestinationSpec, PipelineSpec, SourceSpec
from config.settings import Settings
from tests.builders import change, dlq_config
from tests.compute.helpers import ListSource
from tests.fakes import FakeDestination
from tests.waiting import wait_until

QUEUE = QueueId("1", "public.accounts", "7")
OTHER = QueueId("1", "public.accounts", "8")


def call(
    url: str,
    method: str = "GET",
    body: Any = None,
    token: str | None = None,
    data: bytes | None = None,
    headers: dict[str, str] | None = None,
) -> tuple[int, Any]:
    headers = dict(headers or {})
    if token is not None:
        headers["Authorization"] = f"Bearer {token}"
    if body is not None:
        data = json.dumps(body).encode() if not isinstance(body, bytes) else body
        headers.setdefault("Content-Type", "application/json")
    elif data is not None:
        headers.setdefault("Content-Type", "application/x-ndjson")
    request = urllib.request.Request(url, data=data, method=method, headers=headers)
    try:
        with urllib.request.urlopen(request, timeout=30) as response:
            raw = response.read()
            status = response.status
    except urllib.error.HTTPError as error:
        raw, status = error.read(), error.code
    try:
        return status, json.loads(raw)
    except ValueError:
        return status, raw.decode()


def message(i: int, key: int, queue: QueueId = QUEUE) -> DLQMessage:
    return DLQMessage(
        f"m{i:03d}", queue, change(i, key), FailureContext("Boom", f"no {i}"), time.time()
    )


class Harness:
    def __init__(self, engine: Engine, destinations: dict[str, FakeDestination]) -> None:
        self.engine = engine
        self.destinations = destinations
        assert engine.admin is not None
        self.url = engine.admin.url

    def q(self, queue: QueueId) -> str:
        return quote(str(queue), safe="")


def start_engine(
    tmp_path: Path, admin: AdminConfig, *, preload: bool = True, source: ListSource | None = None
) -> Harness:
    config = dlq_config(tmp_path, check_interval=3600)
    if preload:
        with DLQManager(config, background=False) as dlq:
            dlq.enqueue(QUEUE, [message(i, i % 3) for i in range(6)])
            dlq.enqueue(OTHER, [message(100 + i, i, OTHER) for i in range(2)])
    destinations = {"7": FakeDestination("7", "Fake-7"), "8": FakeDestination("8", "Fake-8")}
    for d in destinations.values():
        d.set_down(True)  # nothing replays by itself: the tests trigger it

    def factory(spec: PipelineSpec, dlq: DLQManager) -> Pipeline:
        return Pipeline(
            spec.name,
            source or ListSource([]),
            list(destinations.values()),
            dlq,
            config,
            retry_policy=RetryPolicy.preset("conservative"),
            probe_timeout=2.0,
        )

    settings = Settings(dlq=config, admin=admin)
    spec = PipelineSpec(
        name="p",
        source=SourceSpec("1", "synthetic", {}),
        destinations=(DestinationSpec("7", "Fake-7", "postgresql", {}),),
    )
    engine = Engine(settings, [spec], pipeline_factory=factory)
    engine.start()
    return Harness(engine, destinations)


@pytest.fixture
def api(tmp_path: Path) -> Iterator[Harness]:
    harness = start_engine(tmp_path, AdminConfig(port=0))
    yield harness
    harness.engine.stop()


def test_engine_writes_admin_json_and_removes_it_on_stop(tmp_path: Path) -> None:
    harness = start_engine(tmp_path, AdminConfig(port=0), preload=False)
    info = json.loads((tmp_path / "dlq" / "admin.json").read_text())
    assert info["url"] == harness.url and info["token_required"] is False
    assert isinstance(info["pid"], int)
    assert call(harness.url + "/dlq/stats")[0] == 200
    harness.engine.stop()
    assert not (tmp_path / "dlq" / "admin.json").exists()
    with pytest.raises(urllib.error.URLError):
        urllib.request.urlopen(harness.url + "/dlq/stats", timeout=5)


def test_disabled_admin_api_starts_nothing(tmp_path: Path) -> None:
    harness_engine = Engine(
        Settings(dlq=dlq_config(tmp_path), admin=AdminConfig(enabled=False)), []
    )
    harness_engine.start()
    try:
        assert harness_engine.admin is None
        assert not (tmp_path / "dlq" / "admin.json").exists()
    finally:
        harness_engine.stop()


def test_queues_stats_and_messages(api: Harness) -> None:
    status, body = call(api.url + "/dlq/queues")
    assert status == 200
    rows = {r["queue"]: r for r in body["queues"]}
    assert rows[str(QUEUE)]["messages"] == 6
    assert rows[str(QUEUE)]["destination_health"] in ("unknown", "unhealthy")
    status, stats = call(api.url + "/dlq/stats")
    assert status == 200
    assert stats["total_messages"] == 8
    assert stats["destinations"]["7"]["total_messages"] == 6
    assert stats["recovery_enabled"] is True
    assert stats["oldest_message_age_seconds"] is not None
    status, shown = call(api.url + f"/dlq/queues/{api.q(QUEUE)}/messages?limit=2")
    assert status == 200
    assert [m["message_id"] for m in shown["messages"]] == ["m000", "m001"]
    assert shown["total"] == 6
    assert shown["messages"][0]["error_class"] == "Boom"
    # The raw form with slashes works too (curl users type it).
    status, shown = call(api.url + f"/dlq/queues/{QUEUE}/messages?limit=1")
    assert status == 200 and len(shown["messages"]) == 1


def test_errors_are_json_with_the_right_status(api: Harness) -> None:
    status, body = call(api.url + f"/dlq/queues/{api.q(QueueId('9', 'x', '9'))}/messages")
    assert status == 404 and "no queue source_9/table_x/dest_9" in body["error"]
    assert body["error_type"] == "queue_not_found"
    status, body = call(api.url + f"/dlq/queues/{api.q(QUEUE)}/messages?limit=zero")
    assert status == 400 and "'limit'" in body["error"]
    status, body = call(api.url + "/dlq/nothing")
    assert status == 404 and "GET /dlq/stats" in body["routes"]
    assert body["error_type"] == "no_route"
    status, body = call(api.url + "/dlq/stats", "POST", {})
    assert status == 405
    status, body = call(api.url + "/dlq/purge", "POST", b"{not json")
    assert status == 400 and "not JSON" in body["error"]
    assert body["error_type"] == "bad_request"
    status, body = call(api.url + "/dlq/purge", "POST", {"queue": str(QUEUE)})
    assert status == 400 and "'confirm'" in body["error"]
    status, body = call(api.url + "/dlq/purge", "POST", {"queue": 5, "confirm": True})
    assert status == 400 and "'queue'" in body["error"]
    status, body = call(api.url + "/dlq/reprocess", "POST", {"parked": "yes"})
    assert status == 400 and "'parked'" in body["error"]
    status, body = call(api.url + "/dlq/messages/nope/park", "POST", {})
    assert status == 404 and "nope" in body["error"]
    assert body["error_type"] == "message_not_found"
    status, body = call(api.url + "/dlq/messages/m001/discard", "POST", {})
    assert status == 400 and "'confirm'" in body["error"]
    # Nothing above changed the queue.
    assert call(api.url + "/dlq/stats")[1]["total_messages"] == 8


def test_internal_errors_never_leak_a_traceback(api: Harness) -> None:
    def broken() -> Any:
        raise RuntimeError("secret internals")

    assert api.engine.admin is not None
    api.engine.admin.ops.stats = broken  # type: ignore[method-assign]
    status, body = call(api.url + "/dlq/stats")
    assert status == 500 and body["error_type"] == "internal"
    assert "secret" not in json.dumps(body) and "Traceback" not in json.dumps(body)


def test_purge_reprocess_and_message_actions(api: Harness) -> None:
    status, body = call(api.url + "/dlq/purge", "POST", {"queue": str(OTHER), "confirm": True})
    assert status == 200 and body["removed"] == 2
    # Destination down: the replay fails, nothing is lost.
    status, body = call(api.url + "/dlq/reprocess", "POST", {"queue": str(QUEUE)})
    assert status == 200 and body["replayed"] == 0 and body["failed"] == 6
    # Park m001 (key 1), discard m002.
    status, body = call(api.url + "/dlq/messages/m001/park", "POST", {})
    assert status == 200 and body["parked"] is True
    assert call(api.url + "/dlq/messages/m001/park", "POST", {})[0] == 409
    status, body = call(api.url + "/dlq/messages/m002/discard", "POST", {"confirm": True})
    assert status == 200 and body["discarded_from"] == ["main"]
    status, found = call(api.url + "/dlq/messages/m001")
    assert status == 200 and found["lane"] == "parked"
    api.destinations["7"].set_down(False)
    status, body = call(api.url + "/dlq/reprocess", "POST", {"queue": str(QUEUE)})
    assert status == 200
    # m000, m003, m005 replay; m004 (key 1) is held behind the parked m001.
    assert body["replayed"] == 3 and body["parked"] == 1 and body["failed"] == 0
    applied = [r.position.commit for r in api.destinations["7"].applied]
    assert applied == [0, 3, 5]
    status, body = call(api.url + "/dlq/messages/m001/unpark", "POST", {})
    assert status == 200 and body["moved"] == ["m001", "m004"]
    status, body = call(api.url + "/dlq/reprocess", "POST", {})
    assert status == 200 and body["replayed"] == 2
    applied = [r.position.commit for r in api.destinations["7"].applied]
    assert applied == [0, 3, 5, 1, 4]
    assert call(api.url + "/dlq/stats")[1]["total_messages"] == 0


def test_parked_replay_acks_on_success_and_keeps_on_failure(api: Harness) -> None:
    for i in (0, 1):
        assert call(api.url + f"/dlq/messages/m00{i}/park", "POST", {})[0] == 200
    status, body = call(api.url + "/dlq/reprocess", "POST", {"queue": str(QUEUE), "parked": True})
    assert status == 200 and body["failed"] == 2 and body["replayed"] == 0
    status, shown = call(api.url + f"/dlq/queues/{api.q(QUEUE)}/messages?parked=true")
    assert [m["message_id"] for m in shown["messages"]] == ["m000", "m001"]
    assert shown["messages"][0]["attempts"] >= 2  # the failure was recorded
    api.destinations["7"].set_down(False)
    status, body = call(api.url + "/dlq/reprocess", "POST", {"queue": str(QUEUE), "parked": True})
    assert status == 200 and body["replayed"] == 2
    assert [r.position.commit for r in api.destinations["7"].applied] == [0, 1]
    assert api.engine.dlq is not None
    assert api.engine.dlq.parked_count(QUEUE) == 0
    assert not api.engine.dlq.parked_keys(QUEUE)  # keys released


def test_export_and_import_over_http(api: Harness, tmp_path: Path) -> None:
    request = urllib.request.urlopen(api.url + f"/dlq/queues/{api.q(QUEUE)}/export", timeout=30)
    lines = request.read().decode().splitlines()
    header = json.loads(lines[0])
    assert header["count"] == 6 and len(lines) == 7
    assert call(api.url + "/dlq/purge", "POST", {"queue": str(QUEUE), "confirm": True})[0] == 200
    data = ("\n".join(lines) + "\n").encode()
    status, body = call(api.url + "/dlq/import", "POST", data=data)
    assert status == 200 and body["imported"] == 6
    status, body = call(api.url + "/dlq/import", "POST", data=data)
    assert status == 409 and "--skip-existing" in body["error"]
    assert body["error_type"] == "conflict"
    status, body = call(api.url + "/dlq/import?skip_existing=true", "POST", data=data)
    assert status == 200 and body["imported"] == 0 and body["skipped_existing"] == 6
    broken = ("\n".join(lines[:3] + ['{"message_id": 1}'] + lines[4:]) + "\n").encode()
    status, body = call(api.url + "/dlq/import?skip_existing=true", "POST", data=broken)
    assert status == 400 and "line 4" in body["error"]
    status, shown = call(api.url + f"/dlq/queues/{api.q(QUEUE)}/messages?limit=100")
    assert [m["message_id"] for m in shown["messages"]] == [f"m{i:03d}" for i in range(6)]


def destination_health(harness: Harness, destination_id: str) -> str | None:
    body = call(harness.url + "/health")[1]
    health: str | None = {d["id"]: d for d in body["destinations"]}.get(destination_id, {}).get(
        "health"
    )
    return health


def test_health_warning_on_outage_and_critical_on_failed_pipeline(tmp_path: Path) -> None:
    class Exploding(ListSource):
        def read(self, max_events: int) -> Any:
            raise RuntimeError("source broke")

    harness = start_engine(tmp_path / "a", AdminConfig(port=0))
    try:
        # The first recovery pass probes the (down) destination.
        wait_until(
            lambda: destination_health(harness, "7") == "unhealthy",
            30,
            "destination 7 to show unhealthy",
        )
        status, body = call(harness.url + "/health")
        dests = {d["id"]: d for d in body["destinations"]}
        assert status == 200 and body["status"] == "warning"
        assert dests["7"]["status"] == "warning" and dests["7"]["messages"] == 6
        assert any("unhealthy" in r for r in body["reasons"])
    finally:
        harness.engine.stop()
    harness = start_engine(tmp_path / "b", AdminConfig(port=0), source=Exploding([]))
    try:
        wait_until(lambda: call(harness.url + "/health")[0] == 503, 30, "/health to answer 503")
        status, body = call(harness.url + "/health")
        assert status == 503 and body["status"] == "critical"
        assert "pipeline p is failed" in " ".join(body["reasons"])
    finally:
        harness.engine.stop()


def test_dlq_older_than_24h_is_a_warning(tmp_path: Path) -> None:
    harness = start_engine(tmp_path, AdminConfig(port=0), preload=False)
    try:
        assert harness.engine.dlq is not None
        old = message(1, 1)._replace(enqueued_at=time.time() - 25 * 3600)
        harness.engine.dlq.enqueue(QUEUE, [old])
        harness.destinations["7"].set_down(False)
        harness.engine.pipelines[0].health["7"].mark_healthy()
        status, body = call(harness.url + "/health")
        assert status == 200 and body["status"] == "warning"
        assert any("older than 24h" in r for r in body["reasons"])
        assert harness.engine.admin is not None
    finally:
        harness.engine.stop()


def test_token_required_off_loopback(tmp_path: Path) -> None:
    harness = start_engine(tmp_path, AdminConfig(host="0.0.0.0", port=0, token="s3cret"))
    try:
        info = json.loads((tmp_path / "dlq" / "admin.json").read_text())
        assert info["token_required"] is True and "s3cret" not in json.dumps(info)
        for path, method, body in (
            ("/dlq/stats", "GET", None),
            ("/health", "GET", None),
            ("/dlq/purge", "POST", {"queue": str(QUEUE), "confirm": True}),
        ):
            assert call(harness.url + path, method, body)[0] == 401
            assert call(harness.url + path, method, body, token="wrong")[0] == 401
        status, stats = call(harness.url + "/dlq/stats", token="s3cret")
        assert status == 200 and stats["total_messages"] == 8  # nothing was purged
    finally:
        harness.engine.stop()


def test_port_in_use_is_a_clear_error(tmp_path: Path) -> None:
    first = start_engine(tmp_path / "a", AdminConfig(port=0), preload=False)
    try:
        port = int(first.url.rsplit(":", 1)[1])
        settings = Settings(dlq=dlq_config(tmp_path / "b"), admin=AdminConfig(port=port))
        engine = Engine(replace(settings), [])
        with pytest.raises(Exception, match="admin API cannot listen on 127.0.0.1"):
            engine.start()
        engine.stop()
    finally:
        first.engine.stop()


def _samples(text: str) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    from prometheus_client.parser import text_string_to_metric_families

    return {
        (s.name, tuple(sorted(s.labels.items()))): s.value
        for family in text_string_to_metric_families(text)
        for s in family.samples
    }


def test_metrics_and_alerts_are_served_and_move_with_a_replay(api: Harness) -> None:
    labels = (("destination", "7"), ("source", "1"), ("table", "public.accounts"))
    status, text = call(api.url + "/metrics")
    assert status == 200
    before = _samples(text)
    assert before[("rosetta_dlq_queue_messages", labels)] == 6
    assert before.get(("rosetta_dlq_messages_replayed_total", labels), 0) == 0
    api.destinations["7"].set_down(False)
    status, body = call(api.url + "/dlq/reprocess", "POST", {"queue": str(QUEUE)})
    assert status == 200 and body["replayed"] == 6
    after = _samples(call(api.url + "/metrics")[1])
    assert after[("rosetta_dlq_messages_replayed_total", labels)] == 6
    assert after[("rosetta_dlq_queue_messages", labels)] == 0
    status, alerts = call(api.url + "/alerts")
    assert status == 200
    assert isinstance(alerts["active"], list)


def test_metrics_need_the_token_off_loopback(tmp_path: Path) -> None:
    harness = start_engine(tmp_path, AdminConfig(host="0.0.0.0", port=0, token="s3cret"))
    try:
        url = harness.url.replace("0.0.0.0", "127.0.0.1")
        assert call(url + "/metrics")[0] == 401
        assert call(url + "/alerts", token="wrong")[0] == 401
        status, text = call(url + "/metrics", token="s3cret")
        assert status == 200 and "rosetta_dlq_queue_messages" in text
    finally:
        harness.engine.stop()


def test_health_answers_when_the_store_cannot_count_its_queues(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    harness = start_engine(tmp_path, AdminConfig(port=0))
    try:
        dlq = harness.engine.dlq
        assert dlq is not None

        def no_quorum(queue: QueueId) -> Any:
            raise DLQStorageError(f"read {queue}: JetStream unavailable (no quorum)")

        monkeypatch.setattr(dlq, "status", no_quorum)
        status, body = call(harness.url + "/health")
        assert status in (200, 503), body
        assert body["status"] in ("warning", "critical")
        assert any("cannot be read" in r and "no quorum" in r for r in body["reasons"]), body
        assert "no quorum" in body["dlq"]["error"]
    finally:
        harness.engine.stop()
