"""The benchmark scripts run end to end on tiny sizes and print every figure they promise.

Not a performance test (figures are never asserted here): it keeps the
scripts, which the README's figures come from, from breaking unnoticed.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


def run_script(name: str, *args: str) -> dict[str, str]:
    result = subprocess.run(
        [sys.executable, str(ROOT / "tests" / "benchmarks" / name), *args],
        cwd=ROOT,
        env={**os.environ, "PYTHONUNBUFFERED": "1"},
        stdin=subprocess.DEVNULL,
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )
    output = (result.stdout + result.stderr)[-3000:]
    assert result.returncode == 0, output
    return dict(re.findall(r"^RESULT (\w+)=(\S+)$", result.stdout, re.MULTILINE))


@pytest.mark.timeout(360)
def test_bench_dlq_prints_its_figures() -> None:
    figures = run_script("bench_dlq.py", "--messages", "2000", "--rounds", "1", "--queues", "40")
    assert {
        "enqueue_batch_ratio",
        "enqueue_single_ratio",
        "mpmc_add_single_vs_raw_push_single",
        "drain_ratio",
        "vs_persist_queue_drain",
        "fds_1000_queues",
    } <= set(figures)
    assert all(float(v) > 0 for v in figures.values()), figures


@pytest.mark.timeout(360)
def test_bench_pipeline_prints_its_figures() -> None:
    figures = run_script(
        "bench_pipeline.py",
        *("--replay-events", "3000", "--replay-batch", "500", "--replay-rounds", "1"),
        *("--overhead-events", "2000", "--overhead-rounds", "1", "--batch-size", "200"),
        *("--recovery-rounds", "1", "--keys", "500"),
    )
    assert {"replay_vs_copy_upsert", "dlq_overhead_ratio", "recovery_start_seconds"} <= set(figures)
    assert all(float(v) > 0 for v in figures.values()), figures


@pytest.mark.timeout(360)
def test_bench_destinations_prints_its_figures() -> None:
    figures = run_script(
        "bench_destinations.py", "--rows", "2000", "--snowflake-rows", "200", "--repeat", "1"
    )
    assert {
        "pg_apply_vs_copy_upsert",
        "pg_apply_vs_execute_values",
        "snowflake_rows_per_statement",
    } <= set(figures)
    assert all(float(v) > 0 for v in figures.values()), figures
