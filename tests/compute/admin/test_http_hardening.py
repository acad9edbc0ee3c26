"""The admin API against hostile clients: web pages, idle floods, big or deep bodies, stalls.

A real ``Engine`` serves the API on loopback; clients are raw sockets or
``http.client`` so that every header is the test's choice.
"""

from __future__ import annotations

import fcntl
import http.client
import json
import logging
import os
import socket
import struct
import termios
import threading
import time
from collections.abc import Iterator
from dataclasses import replace
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import pytest

from compute.dlq.manager import DLQManager
from config.admin_config import AdminConfig
from tests.builders import dlq_config
from tests.compute.admin.test_http_api import (
    OTHER,
    QUEUE,
    Harness,
    call,
    message,
    start_engine,
)
from tests.waiting import wait_until

# Every route that changes the queues (POST).
WRITE_ROUTES = (
    "/dlq/reprocess",
    "/dlq/purge",
    "/dlq/messages/m001/discard",
    "/dlq/messages/m001/park",
    "/dlq/messages/m001/unpark",
)


def address(harness: Harness) -> tuple[str, int]:
    parts = urlsplit(harness.url)
    assert parts.hostname is not None and parts.port is not None
    return parts.hostname, parts.port


def raw(
    harness: Harness,
    method: str,
    path: str,
    body: bytes = b"",
    headers: dict[str, str] | None = None,
) -> tuple[int, Any]:
    """One request with exactly these headers (Host defaults to the server's address)."""
    host, port = address(harness)
    conn = http.client.HTTPConnection(host, port, timeout=30)
    try:
        conn.putrequest(method, path, skip_host=True, skip_accept_encoding=True)
        all_headers = {"Host": f"{host}:{port}", **(headers or {})}
        if body or method == "POST":
            all_headers.setdefault("Content-Length", str(len(body)))
        for name, value in all_headers.items():
            conn.putheader(name, value)
        conn.endheaders(body or None)
        response = conn.getresponse()
        data = response.read()
        try:
            return response.status, json.loads(data)
        except ValueError:
            return response.status, data.decode(errors="replace")
    finally:
        conn.close()


def on_disk(tmp_path: Path) -> int:
    """Messages of QUEUE and OTHER, read from disk after the engine stopped."""
    with DLQManager(dlq_config(tmp_path), background=False) as dlq:
        return dlq.count(QUEUE) + dlq.count(OTHER)


def leftovers(tmp_path: Path) -> list[str]:
    return sorted(p.name for p in (tmp_path / "dlq").glob(".*.jsonl"))


@pytest.fixture
def api(tmp_path: Path) -> Iterator[Harness]:
    harness = start_engine(tmp_path, AdminConfig(port=0))
    yield harness
    harness.engine.stop()


# ------------------------------------------------------------- 1. web pages


def test_a_web_page_cannot_purge_or_read_the_queues(tmp_path: Path) -> None:
    harness = start_engine(tmp_path, AdminConfig(port=0))
    host, port = address(harness)
    purge = json.dumps({"queue": str(QUEUE), "confirm": True}).encode()
    try:
        # A form-like POST from a page (text/plain needs no CORS preflight).
        status, body = raw(harness, "POST", "/dlq/purge", purge, {"Content-Type": "text/plain"})
        assert status == 415 and body["accepted"] == ["application/json"]
        assert "text/plain" in body["error"]
        # The same from the page's origin, with the right type, is refused for the origin.
        status, body = raw(
            harness,
            "POST",
            "/dlq/purge",
            purge,
            {"Content-Type": "application/json", "Origin": "http://evil.example"},
        )
        assert status == 403 and "Origin 'http://evil.example'" in body["error"]
        # DNS rebinding: the page's own host name now points at 127.0.0.1.
        export = f"/dlq/queues/{harness.q(QUEUE)}/export"
        for path in (export, "/dlq/stats", f"/dlq/queues/{harness.q(QUEUE)}/messages"):
            status, body = raw(harness, "GET", path, headers={"Host": f"evil.example:{port}"})
            assert status == 403, (path, body)
            assert f"127.0.0.1:{port}" in body["accepted"] and "m000" not in json.dumps(body)
            assert "ROSETTA_ADMIN_ALLOWED_HOSTS" in body["error"]
        status, body = raw(harness, "GET", export, headers={"Origin": "http://evil.example"})
        assert status == 403
        status, body = raw(harness, "GET", export, headers={"Sec-Fetch-Site": "cross-site"})
        assert status == 403 and body["accepted"] == ["same-origin", "none"]
        status, body = raw(
            harness, "POST", "/dlq/reprocess", b"{}", {"Sec-Fetch-Site": "same-site"}
        )
        assert status == 403
        status, body = raw(harness, "GET", "/dlq/stats", headers={"Host": ""})
        assert status == 403
        # What a user (curl, the CLI) sends still works.
        for name in (f"127.0.0.1:{port}", f"localhost:{port}", f"LOCALHOST:{port}"):
            assert raw(harness, "GET", "/dlq/stats", headers={"Host": name})[0] == 200
        status, _ = raw(
            harness,
            "GET",
            "/dlq/stats",
            headers={"Origin": f"http://127.0.0.1:{port}", "Sec-Fetch-Site": "same-origin"},
        )
        assert status == 200
    finally:
        harness.engine.stop()
    assert on_disk(tmp_path) == 8  # nothing was purged


def test_allowed_host_names_and_every_json_post_needs_its_content_type(tmp_path: Path) -> None:
    harness = start_engine(tmp_path, AdminConfig(port=0, allowed_hosts=("rosetta.internal",)))
    host, port = address(harness)
    try:
        for name in ("rosetta.internal", f"rosetta.internal:{port}", "Rosetta.Internal.:8080"):
            assert raw(harness, "GET", "/dlq/stats", headers={"Host": name})[0] == 200, name
        assert raw(harness, "GET", "/health", headers={"Host": "other.internal"})[0] == 403
        for path in WRITE_ROUTES:
            for headers in ({}, {"Content-Type": "application/x-www-form-urlencoded"}):
                status, body = raw(harness, "POST", path, b"{}", headers)
                assert status == 415 and body["accepted"] == ["application/json"], path
        status, body = raw(
            harness, "POST", "/dlq/import", b"x", {"Content-Type": "application/json"}
        )
        assert status == 415
        assert body["accepted"] == ["application/x-ndjson", "application/jsonl"]
        assert call(harness.url + "/dlq/stats")[1]["total_messages"] == 8
    finally:
        harness.engine.stop()


# ------------------------------------------------------------- 2. connection floods


def unread_bytes(sock: socket.socket) -> int:
    """Bytes received on ``sock`` that the test has not read yet."""
    return struct.unpack("i", fcntl.ioctl(sock.fileno(), termios.FIONREAD, b"\0" * 4))[0]


def fd_count() -> int:
    return len(os.listdir("/proc/self/fd"))


def test_idle_connection_flood_is_bounded_and_cut(tmp_path: Path) -> None:
    harness = start_engine(tmp_path, AdminConfig(port=0, max_connections=8, timeout=1.0))
    host, port = address(harness)
    idle: list[socket.socket] = []
    try:
        assert call(harness.url + "/dlq/stats")[0] == 200
        fds, threads = fd_count(), threading.active_count()
        for _ in range(50):
            idle.append(socket.create_connection((host, port), timeout=5))
        time.sleep(0.5)  # the server accepts (and refuses) them
        # 50 client sockets are this process's own; the server holds at most 8 more.
        assert fd_count() - fds <= 50 + 8 + 4
        assert threading.active_count() - threads <= 8 + 2
        # A slow-loris client (a header byte now and then) is cut too.
        loris = socket.create_connection((host, port), timeout=5)
        loris.sendall(b"GET /dlq/stats HTTP/1.1\r\n")

        # A real request gets through once the idle ones were cut (timeout 1 s).
        def stats_answer() -> bool:
            try:
                return call(harness.url + "/dlq/stats")[0] == 200
            except OSError:
                return False

        wait_until(stats_answer, 10, "a real request to get through", interval=0.2)
        started = time.monotonic()
        cut = False
        while time.monotonic() - started < 5:
            try:
                loris.sendall(b"X")
                loris.settimeout(0.3)
                if loris.recv(1024) == b"":
                    cut = True
                    break
            except TimeoutError:
                continue
            except OSError:
                cut = True
                break
        loris.close()
        assert cut, "a client trickling its headers was not cut"
        # The pipelines were not touched: the queue replays.
        harness.destinations["7"].set_down(False)
        status, body = call(harness.url + "/dlq/reprocess", "POST", {"queue": str(QUEUE)})
        assert status == 200 and body["replayed"] == 6
        assert harness.engine.pipelines[0].status()["state"] not in ("failed", "backpressure")
    finally:
        for s in idle:
            s.close()
        harness.engine.stop()


# ------------------------------------------------------------- 3. uploads


def export_bytes(harness: Harness) -> bytes:
    status, text = raw(harness, "GET", f"/dlq/queues/{harness.q(QUEUE)}/export")
    assert status == 200
    return str(text).encode()


def test_import_body_limits_and_temporary_files(tmp_path: Path) -> None:
    harness = start_engine(tmp_path, AdminConfig(port=0, max_body_mb=1, timeout=1.0))
    host, port = address(harness)
    ndjson = {"Content-Type": "application/x-ndjson"}
    try:
        good = export_bytes(harness)
        # Declared too large: refused before reading, naming the limit.
        status, body = raw(harness, "POST", "/dlq/import", b"x" * (2 << 20), ndjson)
        assert status == 413 and "ROSETTA_ADMIN_MAX_BODY_MB" in body["error"]
        assert body["limit_bytes"] == 1 << 20
        # Chunked: no length to check first, refused.
        status, body = raw(
            harness, "POST", "/dlq/import", b"", {**ndjson, "Transfer-Encoding": "chunked"}
        )
        assert status == 411 and "Content-Length" in body["error"]
        # Reset mid-upload, and stalled mid-upload (cut after the timeout).
        for reset in (True, False):
            s = socket.create_connection((host, port), timeout=5)
            s.sendall(
                f"POST /dlq/import HTTP/1.1\r\nHost: {host}:{port}\r\n"
                f"Content-Type: application/x-ndjson\r\nContent-Length: {900_000}\r\n\r\n".encode()
                + good
            )
            wait_until(lambda: leftovers(tmp_path), 10, "the upload to reach its part file")
            if reset:
                s.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
                s.close()
            wait_until(lambda: not leftovers(tmp_path), 5, f"the part file removed (reset={reset})")
            s.close()
        # A bad file (400), an internal error (500), the disk floor (507): no file left.
        status, body = raw(harness, "POST", "/dlq/import", b"{nope\n", ndjson)
        assert status == 400 and leftovers(tmp_path) == []
        assert harness.engine.admin is not None
        ops = harness.engine.admin.ops
        settings = ops.settings
        ops.settings = replace(settings, dlq=replace(settings.dlq, min_free_disk_mb=1 << 40))
        status, body = raw(harness, "POST", "/dlq/import", good, ndjson)
        assert status == 507 and "DLQ_MIN_FREE_DISK_MB" in body["error"]
        ops.settings = settings
        real = ops.import_from

        def broken(path: Path, **kwargs: Any) -> Any:
            raise RuntimeError("secret internals")

        ops.import_from = broken  # type: ignore[method-assign]
        status, body = raw(harness, "POST", "/dlq/import", good, ndjson)
        assert status == 500 and "secret" not in json.dumps(body)
        ops.import_from = real  # type: ignore[method-assign]
        assert leftovers(tmp_path) == []
        # And the upload that fits goes through, leaving nothing behind.
        call(harness.url + "/dlq/purge", "POST", {"queue": str(QUEUE), "confirm": True})
        status, body = raw(harness, "POST", "/dlq/import", good, ndjson)
        assert status == 200 and body["imported"] == 6 and leftovers(tmp_path) == []
    finally:
        harness.engine.stop()


def test_leftover_uploads_are_removed_at_start(tmp_path: Path) -> None:
    base = tmp_path / "dlq"
    base.mkdir()
    (base / ".import-killed.jsonl").write_text("x")
    (base / ".export-killed.jsonl").write_text("x")
    harness = start_engine(tmp_path, AdminConfig(port=0), preload=False)
    try:
        assert leftovers(tmp_path) == []
    finally:
        harness.engine.stop()


# ------------------------------------------------------------- 4. deep JSON


def nested(depth: int) -> str:
    return "[" * depth + "]" * depth


def test_deeply_nested_json_is_a_400_on_every_route(api: Harness) -> None:
    json_headers = {"Content-Type": "application/json"}
    for depth in (40, 100_000):
        body = ('{"queue": ' + nested(depth) + ', "confirm": true}').encode()
        for path in WRITE_ROUTES:
            status, answer = raw(api, "POST", path, body, json_headers)
            assert status == 400, (path, depth, answer)
            assert "nested too deeply" in answer["error"]
    lines = export_bytes(api).decode().splitlines()
    for depth in (600, 100_000):
        row = json.loads(lines[1])
        row["record"]["after"] = {"doc": "@"}
        line = json.dumps(row).replace('"@"', nested(depth))
        data = f"{lines[0]}\n{line}\n".encode()
        status, answer = raw(
            api, "POST", "/dlq/import", data, {"Content-Type": "application/x-ndjson"}
        )
        assert status == 400 and "line 2" in answer["error"]
        assert "nested too deeply" in answer["error"]
    assert call(api.url + "/dlq/stats")[1]["total_messages"] == 8


def test_offline_import_of_a_deeply_nested_file_is_one_line(tmp_path: Path) -> None:
    from tests.compute.cli.test_cli_dlq import Q, base_env, fails, fill_queue, ok_json

    fill_queue(tmp_path, 2)
    env = base_env(tmp_path)
    out = tmp_path / "ok.jsonl"
    ok_json(env, "export", Q, "--out", str(out))
    lines = out.read_text().splitlines()
    deep = tmp_path / "deep.jsonl"
    deep.write_text(f"{lines[0]}\n{nested(100_000)}\n{lines[2]}\n")
    error = fails(env, 1, "import", str(deep))
    assert "deep.jsonl line 2: JSON nested too deeply" in error


# ------------------------------------------------------------- 5. stalled export


def test_a_stalled_export_does_not_stop_replay(tmp_path: Path) -> None:
    config = dlq_config(tmp_path, check_interval=3600, batch_size=1000)
    padding = "p" * 400
    with DLQManager(config, background=False) as dlq:
        for start in range(0, 30_000, 1000):
            batch = []
            for i in range(start, start + 1000):
                m = message(i, i)
                batch.append(m._replace(failure=m.failure._replace(message=padding)))
            dlq.enqueue(QUEUE, batch)
    # A long server timeout: only a lock not held while sending lets the replay through.
    harness = start_engine(tmp_path, AdminConfig(port=0, timeout=120), preload=False)
    host, port = address(harness)
    stalled = socket.socket()
    try:
        stalled.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
        stalled.connect((host, port))
        stalled.sendall(
            f"GET /dlq/queues/{harness.q(QUEUE)}/export HTTP/1.1\r\n"
            f"Host: {host}:{port}\r\n\r\n".encode()
        )
        # The export is under way (its first KiB waits unread); this client reads nothing more.
        wait_until(lambda: unread_bytes(stalled) >= 1024, 30, "the export to start sending")
        harness.destinations["7"].set_down(False)
        worker = harness.engine.pipelines[0].worker
        done: list[Any] = []
        replay = threading.Thread(target=lambda: done.append(worker.replay_now(QUEUE)))
        replay.start()
        replay.join(60)
        assert done, "replay_now waited on a client that stopped reading an export"
        assert sum(r.replayed for r in done[0]) == 30_000
        assert harness.engine.dlq is not None and harness.engine.dlq.count(QUEUE) == 0
    finally:
        stalled.close()
        harness.engine.stop()


# ------------------------------------------------------------- 500s


def test_a_500_logs_the_traceback_and_sends_none(
    api: Harness, caplog: pytest.LogCaptureFixture
) -> None:
    def broken() -> Any:
        raise RuntimeError("secret internals")

    assert api.engine.admin is not None
    api.engine.admin.ops.stats = broken  # type: ignore[method-assign]
    with caplog.at_level(logging.ERROR, logger="compute.admin.routing"):
        status, body = call(api.url + "/dlq/stats")
    assert status == 500 and "secret" not in json.dumps(body)
    errors = [r for r in caplog.records if r.levelno == logging.ERROR]
    assert errors and errors[0].exc_info is not None
    assert "path=/dlq/stats" in errors[0].getMessage()
