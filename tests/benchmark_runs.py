"""Run a benchmark script (tests/benchmarks/) as a child process, for the tests that check it."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


@dataclass(frozen=True)
class ScriptRun:
    returncode: int
    figures: dict[str, str]  # its ``RESULT name=value`` lines
    tail: str  # the end of its output, for assertion messages


def run_benchmark(name: str, *args: str, timeout: float = 300) -> ScriptRun:
    result = subprocess.run(
        [sys.executable, str(ROOT / "tests" / "benchmarks" / name), *args],
        cwd=ROOT,
        env={**os.environ, "PYTHONUNBUFFERED": "1"},
        stdin=subprocess.DEVNULL,
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
    )
    figures = dict(re.findall(r"^RESULT (\w+)=(\S+)$", result.stdout, re.MULTILINE))
    return ScriptRun(result.returncode, figures, (result.stdout + result.stderr)[-3000:])
