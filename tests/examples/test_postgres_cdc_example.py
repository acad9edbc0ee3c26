"""examples/postgres_cdc.py replicates a pgbench run through a destination outage, in under 60 s."""

from __future__ import annotations

import re
import subprocess
import sys
import time
from pathlib import Path

import pytest

from tests.rosetta_cli import ROOT, cli_env

EXAMPLE = ROOT / "examples" / "postgres_cdc.py"


@pytest.mark.timeout(180)
def test_example_replicates_pgbench_through_an_outage_exactly(tmp_path: Path) -> None:
    started = time.monotonic()
    result = subprocess.run(
        [sys.executable, str(EXAMPLE)],
        cwd=tmp_path,
        env=cli_env(),
        capture_output=True,
        text=True,
        timeout=170,
        check=False,
    )
    elapsed = time.monotonic() - started
    text = result.stdout + result.stderr
    assert result.returncode == 0, text[-4000:]
    assert "VERDICT: OK" in text
    for table in ("pgbench_accounts", "pgbench_branches", "pgbench_tellers", "pgbench_history"):
        assert re.search(rf"public\.{table}: \d+ rows, equal$", text, re.MULTILINE), text
    history = re.search(r"public\.pgbench_history: (\d+) rows", text)
    assert history is not None and int(history[1]) > 100, text  # appended, each once
    # The outage was real: changes waited in the DLQ, then were replayed.
    queued = [int(n) for n in re.findall(r"(\d+) queued in the DLQ", text)]
    assert queued and max(queued) > 0, text
    replayed = re.search(r"recovery: replayed=(\d+) parked=(\d+)", text)
    assert replayed is not None and int(replayed[1]) > 0 and replayed[2] == "0", text
    assert elapsed < 60, f"the example took {elapsed:.0f} s"
