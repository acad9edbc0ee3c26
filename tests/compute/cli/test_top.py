"""``rosetta top``: a fixed state drawn as the operator sees it, the rates from two samples,
``--once`` against a running engine, the live screen's keys and terminal, and the refusals."""

from __future__ import annotations

import json
import os
import pty
import signal
import subprocess
import termios
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from rich.console import Console

from compute.cli.top_sample import Sampler
from compute.cli.top_view import render, shorten
from config.admin_config import AdminConfig
from tests.builders import change
from tests.compute.observability.harness import Harness, start_engine
from tests.rosetta_cli import ROOT, cli_env, rosetta_command, run_rosetta
from tests.waiting import wait_until

DOWN_ERROR = (
    'OperationalError: connection to server at "10.0.0.7", port 5432 failed: Connection '
    "refused. Is the server running on that host and accepting TCP/IP connections?"
)
ALERT_SUMMARY = (
    "destination warehouse-pg (ID=2, pipeline orders) has been unhealthy for 4m12s, above "
    "the threshold of 4m0s (DLQ_ALERT_UNHEALTHY_SECONDS)"
)
SNAPSHOT: dict[str, Any] = {
    "engine": {
        "pid": 4242,
        "url": "http://127.0.0.1:8686",
        "status": "warning",
        "checked_at": "2026-12-02T01:30:00.000Z",
    },
    "rate_interval_seconds": 1.0,
    "pipelines": [
        {
            "name": "orders",
            "state": "running",
            "source_id": "1",
            "events": 125000,
            "events_per_second": 812.5,
            "rejected_events": 3,
            "skipped_events": 41,
            "source_lag": {
                "slot": "rosetta_1",
                "lag_bytes": 5 * 1024 * 1024,
                "lag_seconds": 252.5,
                "wal_status": "extended",
                "checked_at": 1_796_175_000.0,
                "error": None,
            },
            "detail": None,
        },
        {
            "name": "billing",
            "state": "backpressure",
            "source_id": "2",
            "events": 900,
            "events_per_second": 0.0,
            "rejected_events": 0,
            "skipped_events": 0,
            "source_lag": None,
            "detail": "DLQ full",
        },
    ],
    "destinations": [
        {
            "pipeline": "orders",
            "id": "2",
            "name": "warehouse-pg",
            "health": "down",
            "for_seconds": 252.0,
            "since": "2026-12-02T01:25:48.000Z",
            "last_error": DOWN_ERROR,
            "messages": 4210,
            "parked": 0,
        },
        {
            "pipeline": "billing",
            "id": "9",
            "name": "snowflake-prod",
            "health": "degraded",
            "for_seconds": 3600.0,
            "since": "2026-12-02T00:30:00.000Z",
            "last_error": None,
            "messages": 120,
            "parked": 7,
        },
    ],
    "queues": [
        {
            "queue": "source_2/table_public.invoices/dest_9",
            "messages": 120,
            "parked": 7,
            "oldest_age_seconds": 65.0,
            "bytes_on_disk": 40960,
            "damaged": False,
            "enqueue_per_second": 0.0,
            "replay_per_second": 40.0,
            "park_per_second": 1.5,
        },
        {
            "queue": "source_1/table_public.orders/dest_2",
            "messages": 4210,
            "parked": 0,
            "oldest_age_seconds": 251.0,
            "bytes_on_disk": 1843200,
            "damaged": False,
            "enqueue_per_second": 812.5,
            "replay_per_second": 0.0,
            "park_per_second": 0.0,
        },
    ],
    "alerts": [
        {
            "alert": "destination_unhealthy",
            "severity": "critical",
            "subject": "orders/2",
            "summary": ALERT_SUMMARY,
            "for_seconds": 12.0,
        }
    ],
    "disk": {"usage_percent": 41.5, "free_bytes": 12 * 1024**3},
}


def draw(snapshot: dict[str, Any], width: int = 120, **options: Any) -> str:
    console = Console(record=True, width=width)
    console.print(render(snapshot, width=width, **options))
    return console.export_text()


def cells_of(line: str) -> list[str]:
    line = line.strip()
    if not (line.startswith("│") and line.endswith("│")):
        return []
    return [c.strip() for c in line[1:-1].split("│")]


def row_of(text: str, first: str) -> list[str]:
    """The cells of the table row whose first cell is ``first``."""
    for line in text.splitlines():
        cells = cells_of(line)
        if cells and cells[0] == first:
            return cells
    raise AssertionError(f"no row {first!r} in:\n{text}")


def test_a_fixed_state_shows_every_value_the_operator_needs() -> None:
    text = draw(SNAPSHOT)
    assert max(len(line) for line in text.splitlines()) <= 120
    assert "engine pid 4242" in text and "WARNING" in text
    assert "4,330 queued, 7 parked, 2 queue(s)" in text
    assert "disk 41.5% used, 12.0 GiB free" in text
    assert "alerts firing: 1" in text

    assert row_of(text, "orders") == ["orders", "running", "812", "125,000", "3", "41", ""]
    assert row_of(text, "billing")[:3] == ["billing", "backpressure", "0"]
    # the replicating source's slot, behind in time and in WAL; billing's source has no slot
    sources = text[text.index("Sources (replication lag)") : text.index("Destinations")]
    assert row_of(sources, "orders") == [
        "orders",
        "1",
        "rosetta_1",
        "4m12s",
        "5.0 MiB",
        "extended",
    ]
    assert "billing" not in sources
    assert row_of(text, "billing")[-1] == "DLQ full"

    pg = next(line for line in text.splitlines() if "warehouse-pg (2)" in line)
    cells = cells_of(pg)
    assert cells[2] == "down"
    assert cells[3].endswith("(4m12s)")  # since when: the local time, and for how long
    assert cells[4:6] == ["4,210", "0"]
    shown = cells[6]
    assert shown.endswith("…") and shown.startswith("OperationalError: connection")
    # cut at a word boundary: what is shown is whole words of the error
    assert DOWN_ERROR.startswith(shown[:-1]) and DOWN_ERROR[len(shown) - 1] == " "
    sf = next(line for line in text.splitlines() if "snowflake-prod (9)" in line)
    assert "degraded" in sf and "(1h00m)" in sf

    # the deepest queue first, with depth, parked, age, bytes and rates
    queues = [line for line in text.splitlines() if "/table_public." in line and "dest_" in line]
    assert "orders" in queues[0] and "invoices" in queues[1]
    assert row_of(text, "source_1/table_public.orders/dest_2") == [
        "source_1/table_public.orders/dest_2",
        "4,210",
        "0",
        "4m11s",
        "1.8 MiB",
        "812",
        "0",
        "0",
    ]
    assert row_of(text, "source_2/table_public.invoices/dest_9") == [
        "source_2/table_public.invoices/dest_9",
        "120",
        "7",
        "1m05s",
        "40.0 KiB",
        "0",
        "40.0",
        "1.5",
    ]

    alert = row_of(text, "critical")
    assert alert[1:4] == ["destination_unhealthy", "orders/2", "12.0s"]
    assert ALERT_SUMMARY.startswith(alert[4].rstrip("…"))


def test_many_queues_show_the_worst_and_count_the_rest() -> None:
    queues = [
        {"queue": f"source_1/table_t{i}/dest_2", "messages": i, "parked": 0} for i in range(10)
    ]
    text = draw({**SNAPSHOT, "queues": queues}, max_queues=3)
    assert "table_t9" in text and "table_t7" in text and "table_t6" not in text
    assert "... and 7 more queue(s), 1 of them empty" in text


def test_sources_show_only_when_one_replicates_and_say_an_unreadable_lag() -> None:
    plain = [{**p, "source_lag": None} for p in SNAPSHOT["pipelines"]]
    assert "Sources" not in draw({**SNAPSHOT, "pipelines": plain})  # JSON-lines: no slot
    unread = {
        "slot": "rosetta_1",
        "lag_bytes": None,
        "lag_seconds": 0.0,
        "wal_status": None,
        "checked_at": None,
        "error": "connection refused",
    }
    pipelines = [{**SNAPSHOT["pipelines"][0], "source_lag": unread}]
    text = draw({**SNAPSHOT, "pipelines": pipelines})
    assert row_of(text[text.index("Sources") :], "orders")[2:] == [
        "rosetta_1",
        "0.0s",
        "-",
        "unknown: connection refused",
    ]


def test_a_lost_engine_is_said_above_the_last_frame() -> None:
    text = draw(SNAPSHOT, problem="engine pid 4242 does not answer (retrying every 1s)")
    assert text.splitlines()[2] == "engine pid 4242 does not answer (retrying every 1s)"
    assert "warehouse-pg" in text


def test_shorten_cuts_at_a_word_boundary() -> None:
    assert shorten("connection refused by peer", 40) == "connection refused by peer"
    assert shorten("connection refused by peer", 20) == "connection refused…"
    assert shorten("a\n  multi-line\ttext", 40) == "a multi-line text"
    assert shorten("x" * 30, 10) == "x" * 9 + "…"  # one long word: cut, still marked


LAG = {
    "slot": "rosetta_1",
    "lag_bytes": 4096,
    "lag_seconds": 0.0,
    "wal_status": "reserved",
    "checked_at": 1.0,
    "error": None,
}


class FakeAdmin:
    """The four answers the sampler reads, changed by the test between samples."""

    pid = 7
    url = "http://127.0.0.1:1"

    def __init__(self) -> None:
        self.events = 100
        self.enqueued = 10.0

    def health(self) -> dict[str, Any]:
        return {
            "status": "healthy",
            "checked_at": "2026-12-02T01:30:00.000Z",
            "pipelines": [
                {
                    "pipeline": "p",
                    "state": "running",
                    "source_id": "1",
                    "events": self.events,
                    "skipped_events": 2,
                    "source_lag": LAG,
                }
            ],
            "destinations": [
                {
                    "pipeline": "p",
                    "id": "2",
                    "name": "PG",
                    "health": "healthy",
                    "since": "2026-12-02T01:29:00.000Z",
                    "last_error": None,
                    "messages": 5,
                    "parked": 0,
                }
            ],
        }

    def read_json(self, path: str) -> Any:
        if path == "/alerts":
            return {"active": []}
        return {"queues": [{"queue": "source_1/table_t/dest_2", "messages": 5, "parked": 0}]}

    def read_text(self, path: str) -> str:
        labels = 'source="1",table="t",destination="2"'
        return (
            "# TYPE rosetta_dlq_messages_enqueued_total counter\n"
            f"rosetta_dlq_messages_enqueued_total{{{labels}}} {self.enqueued}\n"
            "# TYPE rosetta_dlq_disk_usage_ratio gauge\n"
            "rosetta_dlq_disk_usage_ratio 0.25\n"
        )


def test_rates_come_from_two_successive_samples() -> None:
    admin = FakeAdmin()
    now = [100.0]
    sampler = Sampler(admin, clock=lambda: now[0])
    first = sampler.sample()
    assert first["queues"][0]["enqueue_per_second"] is None  # nothing to compare with yet
    assert first["pipelines"][0]["events_per_second"] is None
    pipeline = first["pipelines"][0]
    assert (pipeline["source_id"], pipeline["skipped_events"]) == ("1", 2)
    assert pipeline["source_lag"] == LAG  # as /health says it
    admin.events, admin.enqueued, now[0] = 300, 60.0, 102.0
    second = sampler.sample()
    assert second["pipelines"][0]["events_per_second"] == 100.0
    queue = second["queues"][0]
    assert (queue["enqueue_per_second"], queue["replay_per_second"]) == (25.0, 0.0)
    assert second["destinations"][0]["health"] == "degraded"  # up, but 5 still queued
    assert second["destinations"][0]["for_seconds"] == 60.0
    assert second["disk"]["usage_percent"] == 25.0
    admin.enqueued, now[0] = 0.0, 103.0  # the engine restarted: counters start over
    assert sampler.sample()["queues"][0]["enqueue_per_second"] is None


# ------------------------------------------------------------------ against an engine


@pytest.fixture
def engine(tmp_path: Path) -> Iterator[Harness]:
    """A running engine with its admin API, destination down, 20 changes queued."""
    h = start_engine(tmp_path, admin=AdminConfig(port=0))
    try:
        h.dest.set_down(True)
        h.source.feed([change(i, i) for i in range(1, 21)])
        wait_until(lambda: h.source.acknowledged == 20, 30, "20 changes queued")
        yield h
    finally:
        h.engine.stop()


def test_once_shows_the_running_engines_queue(engine: Harness, tmp_path: Path) -> None:
    env = cli_env(DLQ_BASE_PATH=str(tmp_path / "dlq"))
    result = run_rosetta(env, "top", "--once", "--interval", "0.2")
    assert result.returncode == 0, result.stderr
    assert row_of(result.stdout, "source_1/table_public.accounts/dest_2")[1:3] == ["20", "0"]
    assert "PG (2)" in result.stdout and "down" in result.stdout
    assert f"engine pid {os.getpid()}" in result.stdout

    data = json.loads(run_rosetta(env, "top", "--once", "--json", "--interval", "0.2").stdout)
    [queue] = data["queues"]
    assert (queue["queue"], queue["messages"]) == ("source_1/table_public.accounts/dest_2", 20)
    assert queue["enqueue_per_second"] == 0.0  # measured: nothing new between the samples
    assert data["destinations"][0]["health"] == "down"
    assert data["pipelines"][0]["events"] == 20


def one_error_line(result: subprocess.CompletedProcess[str]) -> str:
    assert "Traceback" not in result.stderr
    assert result.stdout == ""
    [line] = result.stderr.splitlines()
    return line


def test_offline_says_why_and_exits_4(tmp_path: Path) -> None:
    (tmp_path / "dlq").mkdir()
    result = run_rosetta(cli_env(DLQ_BASE_PATH=str(tmp_path / "dlq")), "top", "--once")
    assert result.returncode == 4
    line = one_error_line(result)
    assert line.startswith("rosetta: no running engine: ")
    assert "admin.json is missing or names a process that has ended" in line

    result = run_rosetta(cli_env(DLQ_BASE_PATH=str(tmp_path / "nowhere")), "top", "--once")
    assert result.returncode == 4
    assert "does not exist (set DLQ_BASE_PATH" in one_error_line(result)


def test_an_engine_whose_api_does_not_answer_exits_4(tmp_path: Path) -> None:
    base = tmp_path / "dlq"
    base.mkdir()
    # a live pid (this test's), but nothing listens on the port it names
    (base / "admin.json").write_text(json.dumps({"pid": os.getpid(), "url": "http://127.0.0.1:9"}))
    result = run_rosetta(cli_env(DLQ_BASE_PATH=str(base)), "top", "--once")
    assert result.returncode == 4
    assert "admin API at http://127.0.0.1:9 does not answer" in one_error_line(result)


@pytest.mark.parametrize(
    ("args", "expected"),
    [
        (("--interval", "0"), "--interval '0': expected seconds from 0.1 to 3600"),
        (("--interval", "soon"), "--interval 'soon': expected seconds from 0.1 to 3600"),
        ((), "stdout is not a terminal"),
        (("--json",), "--json needs --once"),
    ],
)
def test_bad_usage_is_one_line_and_exit_2(
    tmp_path: Path, args: tuple[str, ...], expected: str
) -> None:
    result = run_rosetta(cli_env(DLQ_BASE_PATH=str(tmp_path)), "top", *args)
    assert result.returncode == 2
    assert expected in one_error_line(result)


def run_on_a_terminal(tmp_path: Path, stop: Callable[[subprocess.Popen[bytes], int], None]) -> int:
    """``rosetta top`` on a pseudo-terminal; ``stop`` ends it once the queue is on screen.
    Returns the exit code; the terminal's mode must be as it was before."""
    master, slave = pty.openpty()
    before = termios.tcgetattr(slave)
    env = cli_env(DLQ_BASE_PATH=str(tmp_path / "dlq"), COLUMNS="120", LINES="40")
    child = subprocess.Popen(
        rosetta_command("top", "--interval", "0.2"),
        stdin=slave,
        stdout=slave,
        stderr=slave,
        cwd=ROOT,
        env=env,
    )
    screen = bytearray()

    def shows_the_queue() -> bool:
        import select

        while select.select([master], [], [], 0)[0]:
            screen.extend(os.read(master, 65536))
        return b"table_public.accounts" in screen

    try:
        wait_until(shows_the_queue, 60, "the queue on the live screen")
        stop(child, master)
        code = child.wait(30)
        assert termios.tcgetattr(slave) == before, "terminal mode not restored"
        return code
    finally:
        if child.poll() is None:
            child.kill()
            child.wait()
        os.close(master)
        os.close(slave)


def test_q_quits_the_live_view_and_restores_the_terminal(engine: Harness, tmp_path: Path) -> None:
    assert run_on_a_terminal(tmp_path, lambda child, master: os.write(master, b"q")) == 0


def test_ctrl_c_quits_too(engine: Harness, tmp_path: Path) -> None:
    code = run_on_a_terminal(tmp_path, lambda child, master: child.send_signal(signal.SIGINT))
    assert code == 0
