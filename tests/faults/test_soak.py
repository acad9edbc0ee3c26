"""A 1-minute soak (``tests/benchmarks/soak.py``): every fault mixed at random, nothing lost."""

from __future__ import annotations

import pytest

from tests.benchmark_runs import run_benchmark


@pytest.mark.timeout(900)
def test_one_minute_soak_loses_nothing() -> None:
    run = run_benchmark("soak.py", "--minutes", "1", timeout=840)
    figures, output = run.figures, run.tail
    print(output)
    assert set(figures) == {
        "soak_lost_events",
        "soak_final_state_matches",
        "soak_rss_growth_pct",
        "soak_drain_seconds_after_last_fault",
    }, output
    assert figures["soak_lost_events"] == "0", output
    assert figures["soak_final_state_matches"] == "1", output
    assert run.returncode == 0, output
