"""The benchmark scripts run end to end on tiny sizes and print every figure they promise.

Not a performance test (figures are never asserted here): it keeps the
scripts, which the README's figures come from, from breaking unnoticed.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.benchmark_runs import run_benchmark


def run_script(name: str, *args: str) -> dict[str, str]:
    run = run_benchmark(name, *args)
    assert run.returncode == 0, run.tail
    return run.figures


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
        "fds_1000_queues_max_open_32",
    } <= set(figures)
    assert all(float(v) > 0 for v in figures.values()), figures


@pytest.mark.timeout(360)
def test_bench_dlq_on_jetstream_prints_its_figures() -> None:
    figures = run_script(
        "bench_dlq.py", "--backend", "jetstream", "--messages", "1000", "--rounds", "1"
    )
    assert {
        "jetstream_enqueue_ratio",
        "jetstream_enqueue_ratio_vs_stored_bytes",
        "jetstream_drain_ratio",
        "jetstream_enqueue_changes_per_s",
        "rocksq_enqueue_changes_per_s",
        "jetstream_sync_always_vs_default",
    } <= set(figures)
    assert all(float(v) > 0 for v in figures.values()), figures


@pytest.mark.timeout(360)
def test_bench_pipeline_prints_its_figures() -> None:
    figures = run_script(
        "bench_pipeline.py",
        *("--replay-events", "3000", "--replay-batch", "500", "--replay-rounds", "1"),
        *("--overhead-events", "2000", "--overhead-rounds", "1", "--batch-size", "200"),
        *("--recovery-rounds", "1", "--keys", "500"),
        *("--recovery-default-rounds", "1", "--default-outage", "3"),
        *("--isolation-rounds", "1", "--isolation-seconds", "3", "--isolation-rate", "500"),
    )
    assert {
        "replay_vs_copy_upsert",
        "dlq_overhead_ratio",
        "recovery_start_seconds",
        "recovery_start_default_seconds",
        "isolation_other_destination_ratio",
        "isolation_max_gap_seconds",
    } <= set(figures)
    assert all(float(v) > 0 for v in figures.values()), figures


@pytest.mark.timeout(360)
def test_bench_destinations_prints_its_figures() -> None:
    figures = run_script(
        *("bench_destinations.py", "--rows", "2000", "--snowflake-rows", "200", "--repeat", "1"),
        *("--snowflake-staged-rows", "2000"),
    )
    assert {
        "pg_apply_vs_copy_upsert",
        "pg_apply_vs_execute_values",
        "snowflake_rows_per_statement",
        "snowflake_statements_per_100k_rows",
        "snowflake_bytes_sent_per_row",
        "snowflake_bytes_sent_per_row_values",
    } <= set(figures)
    assert all(float(v) > 0 for v in figures.values()), figures


@pytest.mark.timeout(360)
def test_bench_parked_prints_its_figures() -> None:
    figures = run_script("bench_parked.py", "--messages", "300", "--batch", "100")
    assert {"parked_bytes_per_message", "queued_bytes_per_message", "stack_chars"} <= set(figures)
    assert figures["parked_messages"] == figures["queued_messages"] == "300", figures


@pytest.mark.timeout(360)
def test_bench_scale_prints_its_figures() -> None:
    figures = run_script(
        "bench_scale.py",
        *("--queues", "30", "--long", "20000", "--rounds", "1"),
        *("--restarts", "2", "--bytes-messages", "2000"),
    )
    assert {
        "many_queues_enqueue_ratio",
        "status_1000_queues_seconds",
        "writer_rss_mb_3m",
        "restart_first_replay_seconds_3m",
        "restart_first_replay_seconds_3m_after_kill",
        "bytes_per_message_random",
        "bytes_per_message_repetitive",
        "drained_disk_bytes",
        "empty_base_disk_bytes",
        "files_after_restarts",
    } <= set(figures)
    assert all(float(v) > 0 for v in figures.values()), figures


@pytest.mark.timeout(360)
def test_bench_cdc_prints_its_figures() -> None:
    figures = run_script(
        "bench_cdc.py",
        *("--scale", "1", "--changes", "3000", "--batch-size", "500"),
        *("--lag-rate", "50", "--lag-seconds", "3"),
    )
    assert {
        "cdc_catchup_vs_native_subscription",
        "cdc_vs_pg_recvlogical",
        "cdc_p99_lag_ms",
        "cdc_engine_changes_per_second",
        "cdc_source_alone_changes_per_second",
        "cdc_source_alone_cpu_us_per_change",
    } <= set(figures)
    assert all(float(v) > 0 for v in figures.values()), figures


@pytest.mark.timeout(360)
def test_bench_pg_decode_prints_its_figures(tmp_path: Path) -> None:
    capture = tmp_path / "slot.pickle"
    arguments = ("--scale", "1", "--changes", "900", "--repeat", "1", "--capture", str(capture))
    figures = run_script("bench_pg_decode.py", *arguments)
    assert {
        "pg_decode_assemble_changes_per_second",
        "pg_decode_assemble_cpu_us_per_change",
        "pg_decode_stream_changes_per_second",
        "pg_decode_stream_cpu_us_per_change",
    } <= set(figures)
    assert all(float(v) > 0 for v in figures.values()), figures
    assert capture.exists()
    again = run_script("bench_pg_decode.py", *arguments)  # from the captured bytes
    assert set(again) == set(figures)
