"""Engine threads under a supervisor: a crash is logged, counted, shown and the loop restarted."""

from __future__ import annotations

import json
import logging
import threading
import time
import urllib.error
import urllib.request
from pathlib import Path

import pytest

import compute.runtime.supervisor as supervisor_module
from compute.admin.operations import DLQOperations
from compute.codec.failure_context import FailureContext
from compute.codec.message import DLQMessage
from compute.dlq.manager import DLQManager
from compute.engine.engine import Engine
from compute.engine.pipeline import Pipeline
from compute.observability.metrics import DLQMetrics
from compute.queue_id import QueueId
from compute.recovery.replay import QueueBackoff
from compute.runtime.retry_policy import RetryPolicy
from compute.runtime.supervisor import Supervisor
from config.admin_config import AdminConfig
from config.settings import Settings
from tests.builders import TABLE, change, dlq_config
from tests.compute.helpers import ListSource, apply_model
from tests.fakes import FakeDestination
from tests.waiting import wait_until

QUEUE = QueueId("1", TABLE, "2")
FAILURE = FailureContext("OperationalError", "connection refused", code="08006")
CRASH = "dictionary changed size during iteration"


@pytest.fixture(autouse=True)
def quick_restarts(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(
        supervisor_module, "RESTART_POLICY", RetryPolicy(0, base_delay=0.01, max_delay=0.05)
    )


def make_pipeline(tmp_path: Path) -> tuple[Pipeline, DLQManager, FakeDestination]:
    config = dlq_config(tmp_path, check_interval=0.2)
    dlq = DLQManager(config, background=False)
    dest = FakeDestination("2", "PG")
    pipeline = Pipeline("p", ListSource([]), [dest], dlq, config, probe_timeout=0.5)
    return pipeline, dlq, dest


def enqueue(dlq: DLQManager, records: list) -> None:  # type: ignore[type-arg]
    dlq.enqueue(QUEUE, [DLQMessage.create(QUEUE, r, FAILURE) for r in records])


def health(pipeline: Pipeline, dlq: DLQManager) -> tuple[dict, int]:  # type: ignore[type-arg]
    ops = DLQOperations(dlq, Settings(dlq=dlq.config), pipelines=lambda: [pipeline])
    return ops.health()


def metrics_text(pipeline: Pipeline, dlq: DLQManager) -> str:
    metrics = DLQMetrics(
        dlq, base_path=dlq.config.base_path, threads=pipeline.supervisors, process_metrics=False
    )
    return metrics.render()[0].decode()


def test_a_crash_outside_the_recovery_pass_restarts_the_worker_and_replay_goes_on(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    pipeline, dlq, dest = make_pipeline(tmp_path)
    first = [change(i, i) for i in range(1, 6)]
    enqueue(dlq, first)
    crashed = threading.Event()
    real = pipeline.worker._seconds_to_next_due

    def crash_once() -> float:  # called by the loop once per pass, outside its try
        if not crashed.is_set():
            crashed.set()
            raise RuntimeError(CRASH)
        return real()

    monkeypatch.setattr(pipeline.worker, "_seconds_to_next_due", crash_once)
    caplog.set_level(logging.ERROR)
    pipeline.start()
    try:
        assert crashed.wait(20)
        second = [change(i, i % 3) for i in range(6, 12)]
        enqueue(dlq, second)
        pipeline.worker.wake()
        # The restarted thread replays what was queued after the crash.
        wait_until(
            lambda: dest.rows(TABLE) == apply_model(first + second)[TABLE],
            20,
            "dest.rows(TABLE) == apply_model(first + second)[TABLE]",
        )
        wait_until(lambda: not dlq.has_messages(QUEUE), 20, "not dlq.has_messages(QUEUE)")
        [record] = [r for r in caplog.records if r.name == "compute.runtime.supervisor"]
        assert record.levelno == logging.ERROR and record.exc_info is not None
        assert "thread crashed, restarting: thread=dlq-recovery-p" in record.getMessage()
        assert "Traceback" in caplog.text and CRASH in caplog.text
        assert 'rosetta_thread_restarts_total{thread="dlq-recovery-p"} 1.0' in metrics_text(
            pipeline, dlq
        )
        [thread] = [t for t in pipeline.status()["threads"] if t["thread"] == "dlq-recovery-p"]
        assert thread["restarts"] == 1 and thread["state"] == "running"
        body, code = health(pipeline, dlq)
        assert code == 200 and body["status"] == "warning"
        assert (
            f"thread dlq-recovery-p crashed and was restarted (1 restart(s)): RuntimeError: {CRASH}"
            in body["reasons"]
        )
    finally:
        pipeline.stop(5)
        dlq.close()


def test_a_thread_that_keeps_crashing_makes_health_critical_and_stops_at_once(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    pipeline, dlq, _dest = make_pipeline(tmp_path)

    def always() -> float:
        raise RuntimeError(CRASH)

    monkeypatch.setattr(pipeline.worker, "_seconds_to_next_due", always)
    pipeline.start()
    try:
        wait_until(
            lambda: pipeline.worker.supervisor.crashing, 20, "pipeline.worker.supervisor.crashing"
        )
        body, code = health(pipeline, dlq)
        assert code == 503 and body["status"] == "critical"
        assert any(
            r.startswith("thread dlq-recovery-p keeps crashing") and CRASH in r
            for r in body["reasons"]
        )
        assert 'rosetta_thread_crashing{thread="dlq-recovery-p"} 1.0' in metrics_text(pipeline, dlq)
    finally:
        started = time.monotonic()
        pipeline.stop(5)
        assert not pipeline.worker.supervisor.is_alive()
        assert time.monotonic() - started < 3
        dlq.close()


def test_stop_is_immediate_during_a_restart_backoff() -> None:
    stop = threading.Event()
    crashed = threading.Event()

    def loop() -> None:
        crashed.set()
        raise RuntimeError("boom")

    supervisor = Supervisor("t", loop, stop, policy=RetryPolicy(0, base_delay=60, max_delay=60))
    supervisor.start()
    assert crashed.wait(10)
    wait_until(
        lambda: supervisor.status()["state"] == "restarting",
        5,
        'supervisor.status()["state"] == "restarting"',
    )
    stop.set()
    assert supervisor.join(2)
    assert supervisor.restarts == 1


def test_replay_now_changing_the_queue_map_while_the_loop_schedules_its_next_pass(
    tmp_path: Path,
) -> None:
    """The loop's scheduler iterates the per-queue states while an operator's
    replay_now (the admin thread) adds one: no "dictionary changed size"."""
    pipeline, dlq, dest = make_pipeline(tmp_path)
    worker = pipeline.worker
    other = QueueId("1", "public.other", "2")
    records = [change(i, i, table="public.other") for i in range(1, 4)]
    dlq.enqueue(other, [DLQMessage.create(other, r, FAILURE) for r in records])
    done = threading.Event()
    replayed: list[int] = []

    def operator() -> None:
        replayed.extend(r.replayed for r in worker.replay_now(other))
        done.set()

    class Scheduled(QueueBackoff):
        @property  # type: ignore[override]
        def retry_at(self) -> float:
            # The loop is reading this entry: the operator replays now.
            if not done.is_set() and not thread.is_alive():
                thread.start()
                done.wait(0.5)  # on a fixed build it waits for the loop's lock
            return 0.0

        @retry_at.setter
        def retry_at(self, value: float) -> None:
            pass

    thread = threading.Thread(target=operator)
    worker.replay.backoff[QUEUE] = Scheduled()
    try:
        delay = worker._seconds_to_next_due()
        thread.join(10)
        assert 0 < delay <= worker.config.check_interval
        assert replayed == [3]
        assert dest.rows("public.other") == apply_model(records)["public.other"]
    finally:
        worker.stop()
        dlq.close()


def test_a_crash_of_the_admin_api_serve_loop_is_restarted_and_shown_like_the_others(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    settings = Settings(dlq=dlq_config(tmp_path), admin=AdminConfig(port=0))
    engine = Engine(settings, [])
    engine.start()
    try:
        assert engine.admin is not None
        url = engine.admin.url
        server = engine.admin._server
        crashed = threading.Event()
        real = server.service_actions

        def crash_once() -> None:  # called by the serve loop every poll interval
            if not crashed.is_set():
                crashed.set()
                raise RuntimeError(CRASH)
            real()

        caplog.set_level(logging.ERROR)
        monkeypatch.setattr(server, "service_actions", crash_once)
        assert crashed.wait(20)

        def admin_thread() -> dict:  # type: ignore[type-arg]
            [thread] = [t for t in engine.status()["threads"] if t["thread"] == "admin-api"]
            return thread

        wait_until(
            lambda: admin_thread()["state"] == "running", 20, 'admin_thread()["state"] == "running"'
        )
        assert admin_thread()["restarts"] == 1
        [record] = [r for r in caplog.records if r.name == "compute.runtime.supervisor"]
        assert "thread crashed, restarting: thread=admin-api" in record.getMessage()
        assert record.exc_info is not None and CRASH in caplog.text
        assert engine.metrics is not None
        assert 'rosetta_thread_restarts_total{thread="admin-api"} 1.0' in (
            engine.metrics.render()[0].decode()
        )
        # The restarted loop serves again, and its own /health names the crash.
        try:
            with urllib.request.urlopen(url + "/health", timeout=10) as response:
                status, body = response.status, json.load(response)
        except urllib.error.HTTPError as error:
            status, body = error.code, json.load(error)
        assert status == 200 and body["status"] == "warning"
        assert any(
            r.startswith("thread admin-api crashed and was restarted") for r in body["reasons"]
        )
    finally:
        engine.stop()
    assert engine.admin is None
