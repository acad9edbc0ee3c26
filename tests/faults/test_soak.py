"""A 1-minute soak (``tests/benchmarks/soak.py``): every fault mixed at random, nothing lost."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]


@pytest.mark.timeout(900)
def test_one_minute_soak_loses_nothing() -> None:
    result = subprocess.run(
        [sys.executable, str(ROOT / "tests" / "benchmarks" / "soak.py"), "--minutes", "1"],
        cwd=ROOT,
        env={**os.environ, "PYTHONUNBUFFERED": "1"},
        stdin=subprocess.DEVNULL,
        capture_output=True,
        text=True,
        timeout=840,
        check=False,
    )
    output = result.stdout + result.stderr
    figures = dict(re.findall(r"^RESULT (\w+)=(\S+)$", result.stdout, re.MULTILINE))
    print(output[-3000:])
    assert set(figures) == {
        "soak_lost_events",
        "soak_final_state_matches",
        "soak_rss_growth_pct",
        "soak_drain_seconds_after_last_fault",
    }, output[-3000:]
    assert figures["soak_lost_events"] == "0", output[-3000:]
    assert figures["soak_final_state_matches"] == "1", output[-3000:]
    assert result.returncode == 0, output[-3000:]
