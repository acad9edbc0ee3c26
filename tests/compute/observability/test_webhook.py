"""Alert notifications reach a real local HTTP receiver: retried after a 500 and while the
receiver is down, given up after the last attempt, and never in the way of evaluation."""

from __future__ import annotations

import json
import logging
import socket
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest

from compute.dlq.manager import DLQManager
from compute.observability.alerts import AlertMonitor
from compute.observability.webhook import WebhookNotifier, redact_url
from compute.runtime.retry_policy import RetryPolicy
from config.alert_config import AlertConfig
from tests.builders import change, dlq_config
from tests.compute.observability.harness import (
    QUEUE,
    T0,
    Disk,
    drain,
    enqueue,
    sample,
    start_engine,
)
from tests.waiting import wait_until

FAST = RetryPolicy(max_retries=3, base_delay=0.01, max_delay=0.05)
WEBHOOK_LOGGER = "compute.observability.webhook"


class Receiver:
    """A local webhook receiver (stdlib http.server on a free port) the test scripts."""

    def __init__(self, port: int = 0) -> None:
        self.received: list[dict[str, Any]] = []
        self.requests = 0
        self.statuses: list[int] = []  # answers for the next requests; then 200
        self.release = threading.Event()
        self.release.set()  # cleared: requests block until set (a hung receiver)
        self.entered = threading.Event()
        self.lock = threading.Lock()
        receiver = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:  # noqa: N802 - http.server's naming
                body = self.rfile.read(int(self.headers["Content-Length"]))
                receiver.entered.set()
                receiver.release.wait(60)
                with receiver.lock:
                    receiver.requests += 1
                    status = receiver.statuses.pop(0) if receiver.statuses else 200
                    if status == 200:
                        assert self.headers["Content-Type"] == "application/json"
                        receiver.received.append(json.loads(body))
                self.send_response(status)
                self.end_headers()

            def log_message(self, format: str, *args: Any) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", port), Handler)
        self.server.daemon_threads = True
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()

    @property
    def url(self) -> str:
        host, port = self.server.server_address[:2]
        return f"http://{host}:{port}/hooks/secret-token?key=abc"

    def close(self) -> None:
        self.release.set()
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture
def receiver() -> Iterator[Receiver]:
    r = Receiver()
    yield r
    r.close()


@pytest.fixture
def dlq(tmp_path: Path) -> Iterator[DLQManager]:
    with DLQManager(dlq_config(tmp_path), background=False) as manager:
        yield manager


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def monitor_with(dlq: DLQManager, tmp_path: Path, notifier: WebhookNotifier) -> AlertMonitor:
    config = AlertConfig(queue_size=1, queue_size_critical=100, webhook_url=notifier.url)
    return AlertMonitor(
        config, dlq, base_path=tmp_path / "dlq", disk_usage=Disk(10), notifier=notifier
    )


def test_firing_and_resolution_are_posted_as_json(
    dlq: DLQManager, tmp_path: Path, receiver: Receiver
) -> None:
    notifier = WebhookNotifier(receiver.url, retry=FAST)
    monitor = monitor_with(dlq, tmp_path, notifier)
    notifier.start()  # only the sender: evaluation is driven here, with injected time
    try:
        enqueue(dlq, 3, T0)
        monitor.run_once(T0 + 1)
        drain(dlq, 3)
        monitor.run_once(T0 + 2)
        wait_until(lambda: len(receiver.received) == 2, 30, "len(receiver.received) == 2")
    finally:
        assert monitor.stop(timeout=30)
    firing, resolved = receiver.received
    alert_id = f"dlq_queue_size:{QUEUE}"
    assert firing["status"] == "firing" and resolved["status"] == "resolved"
    assert firing["id"] == resolved["id"] == alert_id
    assert firing["alert"] == "dlq_queue_size" and firing["severity"] == "warning"
    assert firing["value"] == 3 and firing["threshold"] == 1
    assert firing["labels"] == {"source": "1", "table": QUEUE.table, "destination": "2"}
    assert str(QUEUE) in firing["summary"]
    assert firing["since"] == "2027-01-15T08:00:01.000Z"
    assert resolved["resolved_at"] == "2027-01-15T08:00:02.000Z"
    assert "resolved_at" not in firing and firing["host"]
    assert notifier.status() == {
        "url": redact_url(receiver.url),
        "sent": 2,
        "failed": 0,
        "dropped": 0,
        "retries": 0,
        "pending": 0,
    }


def test_a_500_is_retried_until_delivered(
    receiver: Receiver, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG, logger=WEBHOOK_LOGGER)
    receiver.statuses = [500, 503]
    notifier = WebhookNotifier(receiver.url, retry=FAST)
    notifier.start()
    try:
        assert notifier.send({"id": "a:1", "status": "firing"})
        wait_until(lambda: notifier.stats.sent == 1, 30, "notifier.stats.sent == 1")
    finally:
        notifier.stop(timeout=30)
    assert receiver.requests == 3
    assert receiver.received == [{"id": "a:1", "status": "firing"}]
    assert notifier.stats.retries == 2 and notifier.stats.failed == 0
    retries = [r.getMessage() for r in caplog.records if "retrying" in r.getMessage()]
    assert len(retries) == 2 and "HTTP 500" in retries[0] and "HTTP 503" in retries[1]
    # The path and query of a webhook URL often hold a token: never logged.
    assert all("secret-token" not in r.getMessage() for r in caplog.records)
    assert all("key=abc" not in r.getMessage() for r in caplog.records)


def test_a_receiver_that_is_down_is_retried_then_given_up(
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.INFO, logger=WEBHOOK_LOGGER)
    notifier = WebhookNotifier(f"http://127.0.0.1:{free_port()}/hook", retry=FAST, timeout=2)
    notifier.start()
    try:
        notifier.send({"id": "a:1", "status": "firing"})
        notifier.send({"id": "a:1", "status": "resolved"})
        wait_until(lambda: notifier.stats.failed == 2, 30, "notifier.stats.failed == 2")
    finally:
        notifier.stop(timeout=30)
    gave_up = [r for r in caplog.records if "gave up" in r.getMessage()]
    assert [r.levelno for r in gave_up] == [logging.ERROR, logging.ERROR]
    assert "status=firing attempts=4" in gave_up[0].getMessage()
    assert "status=resolved attempts=4" in gave_up[1].getMessage()
    assert notifier.stats.retries == 6 and notifier.stats.sent == 0


def test_a_receiver_that_comes_back_gets_the_notification(tmp_path: Path) -> None:
    port = free_port()
    retry = RetryPolicy(max_retries=50, base_delay=0.02, max_delay=0.05)
    notifier = WebhookNotifier(f"http://127.0.0.1:{port}/hook", retry=retry, timeout=2)
    notifier.start()
    try:
        notifier.send({"id": "a:1", "status": "firing"})
        wait_until(
            lambda: notifier.stats.retries >= 2, 30, "notifier.stats.retries >= 2"
        )  # refused while down
        late = Receiver(port)
        try:
            wait_until(lambda: notifier.stats.sent == 1, 30, "notifier.stats.sent == 1")
            assert late.received == [{"id": "a:1", "status": "firing"}]
        finally:
            late.close()
    finally:
        notifier.stop(timeout=30)


def test_a_client_error_is_not_retried(
    receiver: Receiver, caplog: pytest.LogCaptureFixture
) -> None:
    receiver.statuses = [400]
    notifier = WebhookNotifier(receiver.url, retry=FAST)
    notifier.start()
    try:
        notifier.send({"id": "a:1", "status": "firing"})
        wait_until(lambda: notifier.stats.failed == 1, 30, "notifier.stats.failed == 1")
    finally:
        notifier.stop(timeout=30)
    assert receiver.requests == 1
    [line] = [r.getMessage() for r in caplog.records if "gave up" in r.getMessage()]
    assert "HTTP 400" in line and "not retried" in line


def test_a_hung_receiver_never_blocks_evaluation(
    dlq: DLQManager, tmp_path: Path, receiver: Receiver, caplog: pytest.LogCaptureFixture
) -> None:
    receiver.release.clear()  # the receiver accepts and never answers
    notifier = WebhookNotifier(receiver.url, retry=FAST, timeout=30, max_pending=2)
    monitor = monitor_with(dlq, tmp_path, notifier)
    notifier.start()
    try:
        enqueue(dlq, 3, T0)
        monitor.run_once(T0 + 1)  # firing: taken by the sender, which hangs
        assert receiver.entered.wait(30)
        done = threading.Event()

        def evaluate() -> None:
            for step in range(2, 8):  # resolve, fire, resolve, ... while the sender hangs
                if step % 2 == 0:
                    drain(dlq, 3)
                else:
                    enqueue(dlq, 3, T0)
                assert len(monitor.run_once(T0 + step)) == 1
            done.set()

        thread = threading.Thread(target=evaluate, daemon=True)
        thread.start()
        assert done.wait(30), "evaluation waited on the webhook"
        assert notifier.pending() == 3  # one in flight + a bounded queue of 2
        assert notifier.stats.dropped == 4
        dropped = [r for r in caplog.records if "notification dropped" in r.getMessage()]
        assert len(dropped) == 4
    finally:
        receiver.release.set()
        notifier.stop(timeout=30)


def test_redact_url_keeps_scheme_host_and_port() -> None:
    assert redact_url("https://hooks.example.com/services/T000/B000/XXXX") == (
        "https://hooks.example.com"
    )
    assert redact_url("http://[::1]:9000/x?token=1") == "http://[::1]:9000"


def test_engine_alert_reaches_snapshot_metric_and_webhook(
    tmp_path: Path, receiver: Receiver
) -> None:
    alerts = AlertConfig(
        queue_size=5, queue_size_critical=50, eval_interval=0.05, webhook_url=receiver.url
    )
    h = start_engine(tmp_path, alerts=alerts)
    try:
        h.dest.set_down(True)
        h.source.feed([change(i, i) for i in range(1, 21)])
        wait_until(lambda: len(receiver.received) == 1, 30, "len(receiver.received) == 1")
        [firing] = receiver.received
        assert firing["status"] == "firing" and firing["id"] == f"dlq_queue_size:{QUEUE}"
        assert h.engine.alerts is not None
        [active] = h.engine.alerts.snapshot()["active"]
        assert active["id"] == firing["id"]
        samples = h.scrape()
        assert sample(samples, "rosetta_alerts_firing", alert="dlq_queue_size", severity="warning")
        h.dest.set_down(False)
        wait_until(lambda: len(receiver.received) == 2, 30, "len(receiver.received) == 2")
        assert receiver.received[1]["status"] == "resolved"
        assert h.engine.alerts.snapshot()["active"] == []
    finally:
        h.engine.stop()
    assert h.engine.alerts.notifier is not None
    assert h.engine.alerts.notifier.stats.sent == 2


def test_the_webhook_url_is_not_in_the_settings_repr(tmp_path: Path) -> None:
    from config.settings import load_settings

    url = "https://hooks.example.com/services/T000/B000/s3cr3tT0ken"
    settings = load_settings({"DLQ_ALERT_WEBHOOK_URL": url}, dotenv_path=tmp_path / "absent.env")
    assert settings.alerts.webhook_url == url
    assert "s3cr3tT0ken" not in repr(settings)
