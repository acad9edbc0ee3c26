"""``rosetta`` (``python -m compute.cli``) as a child process of a test, running this checkout."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


# A terminal size the test process may carry in its environment: GNU readline, once
# imported (pytest imports it), sets COLUMNS=80 and LINES=24 in its process's
# environment although nothing is a terminal, and a pytest-xdist worker started from
# that process inherits them. ``rosetta`` rightly sizes its tables by an exported
# COLUMNS; the tests read what a pipe gets by default, so they never pass one on.
TERMINAL_SIZE = ("COLUMNS", "LINES")


def cli_env(**values: str) -> dict[str, str]:
    """This environment without Rosetta's own settings or a terminal size, this checkout
    first on the path."""
    env = {
        k: v
        for k, v in os.environ.items()
        if not k.startswith(("DLQ_", "ROSETTA_"))
        and k != "CONFIG_DATABASE_URL"
        and k not in TERMINAL_SIZE
    }
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")]))
    return env | values


def rosetta_command(*args: str) -> list[str]:
    return [sys.executable, "-m", "compute.cli", *args]


def run_rosetta(
    env: dict[str, str], *args: str, timeout: float = 120
) -> subprocess.CompletedProcess[str]:
    """``rosetta <args>`` to its end; stdout and stderr captured as text."""
    return subprocess.run(
        rosetta_command(*args),
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=timeout,
    )


def start_rosetta(env: dict[str, str], *args: str) -> subprocess.Popen[str]:
    """``rosetta <args>`` started; stdout and stderr together in one text pipe."""
    return subprocess.Popen(
        rosetta_command(*args),
        cwd=ROOT,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
