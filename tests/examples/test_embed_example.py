"""examples/embed_in_your_pipeline.py runs, rides out a PostgreSQL outage, every row arrives."""

from __future__ import annotations

import importlib.util
import re
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path
from types import ModuleType
from typing import Any

import psycopg2
import pytest

from tests.rosetta_cli import ROOT, cli_env
from tests.servers import PostgresServer
from tests.waiting import OutputLines, wait_until

EXAMPLE = ROOT / "examples" / "embed_in_your_pipeline.py"


def load_example() -> ModuleType:
    spec = importlib.util.spec_from_file_location("embed_in_your_pipeline", EXAMPLE)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def progress(output: OutputLines, field: str) -> int:
    """The latest ``field=N`` of the example's ``progress:`` lines (0 before the first)."""
    found = re.findall(rf"^progress: .*\b{field}=(\d+)", output.text, re.MULTILINE)
    return int(found[-1]) if found else 0


def start_example(cwd: Path, *args: str) -> tuple[subprocess.Popen[str], OutputLines]:
    process = subprocess.Popen(
        [sys.executable, str(EXAMPLE), *args],
        cwd=cwd,
        env=cli_env(),
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    assert process.stdout is not None
    return process, OutputLines(process.stdout)


def finish(process: subprocess.Popen[str], output: OutputLines) -> str:
    """Wait for the example to end; asserts exit code 0; all it printed."""
    try:
        assert process.wait(180) == 0, output.finish(10)
    finally:
        process.kill()
        process.wait()
    return output.finish(10)


def table_rows(dsn: str, table: str, columns: str) -> dict[int, dict[str, Any]]:
    conn = psycopg2.connect(dsn)
    try:
        with conn.cursor() as cur:
            cur.execute(f"SELECT {columns} FROM {table}")
            names = [c.strip() for c in columns.split(",")]
            return {row[0]: dict(zip(names, row, strict=True)) for row in cur.fetchall()}
    finally:
        conn.close()


def test_example_rides_out_an_outage_of_your_server(
    tmp_path: Path, postgres_server_factory: Callable[..., PostgresServer]
) -> None:
    server = postgres_server_factory()
    events, rate = 2000, 500
    process, output = start_example(
        tmp_path, "--dsn", server.dsn, "--events", str(events), "--rate", str(rate)
    )
    try:
        wait_until(lambda: progress(output, "fed") >= 400, 60, "400 changes fed")
        server.stop("immediate")
        # the loop goes on: what the server cannot take is queued, and counts as safe
        wait_until(lambda: progress(output, "queued") > 0, 60, "a progress line with queued > 0")
        server.start()
    except AssertionError as error:
        process.kill()
        raise AssertionError(f"{error}; it printed:\n{output.text[-3000:]}") from None
    text = finish(process, output)
    assert "VERDICT: OK - every row arrived, in order" in text
    upstream = load_example().Upstream(events, rate)
    assert re.search(rf"upstream confirmed {re.escape(str(upstream.changes[-1].position))},", text)
    expected = upstream.final_rows()
    orders = "rosetta_embed_demo.orders"
    customers = "rosetta_embed_demo.customers"
    assert table_rows(server.dsn, orders, "id, customer_id, status, total") == expected[orders]
    assert table_rows(server.dsn, customers, "id, name, email") == expected[customers]
    assert len(expected[orders]) > 100


@pytest.mark.slow
def test_example_runs_on_its_own(tmp_path: Path) -> None:
    """``python examples/embed_in_your_pipeline.py``, as the README shows it (its own server)."""
    process, output = start_example(tmp_path, "--events", "1500", "--outage", "2")
    text = finish(process, output)
    assert "outage: PostgreSQL is back" in text
    assert re.search(r"^rows: table=rosetta_embed_demo.orders .* equal=True$", text, re.MULTILINE)
    assert "VERDICT: OK" in text
    assert list(tmp_path.glob("tmp/embed-*/dlq"))  # the DLQ is kept for inspection
