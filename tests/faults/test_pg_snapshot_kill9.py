"""kill -9 of ``rosetta run`` in the middle of the initial copy, with pgbench running: exact after.

The source holds ``pgbench -i -s 3`` (300,000 accounts); the destination has
the same tables, empty. ``rosetta run`` creates the slot, copies the three
keyed tables and streams, while ``pgbench -T`` runs with four clients. It is
killed with SIGKILL twice while the copy is under way (destination partly
filled), and started again: each start copies again the tables not finished,
and keeps the slot. At the end every replicated table equals the source.
"""

from __future__ import annotations

import json
import signal
import subprocess
from pathlib import Path

import pytest

from tests.compute.sources.postgres.pg_source_helpers import LOGICAL, execute, query
from tests.faults.helpers import engine_env, start_engine
from tests.faults.test_pg_source_kill9 import (
    PIPELINES,
    normalised,
    pgbench,
    stop_bench_and_engine,
    table_state,
)
from tests.waiting import wait_until

SNAPSHOT_PIPELINES = PIPELINES.replace('snapshot = "never"\n', "")


def copy_progress(state: Path) -> dict[str, object]:
    path = state / "offsets" / "source_1.json"
    if not path.exists():
        return {}
    token = json.loads(path.read_text())["offsets"].get("1.snapshot")
    return json.loads(token) if token else {}


@pytest.mark.timeout(400)
def test_kill9_during_the_initial_copy_then_restart_is_exact(
    tmp_path: Path, postgres_server_factory
) -> None:
    source = postgres_server_factory(LOGICAL)
    target = postgres_server_factory()
    for server in (source, target):
        subprocess.run(pgbench(server, "-i", "-s", "3", "-q"), check=True, capture_output=True)
    execute(target.dsn, "TRUNCATE pgbench_accounts, pgbench_branches, pgbench_tellers")
    (tmp_path / "pipelines.toml").write_text(SNAPSHOT_PIPELINES)
    env = engine_env(tmp_path, target.dsn, TEST_SOURCE_DSN=source.dsn)
    log = tmp_path / "engine.log"
    bench = subprocess.Popen(
        pgbench(source, "-T", "30", "-c", "4", "-j", "2", "-n"),
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    engine = start_engine(env, log)
    try:
        for kill, rows in enumerate((40_000, 120_000)):
            wait_until(
                lambda r=rows: (
                    query(target.dsn, "SELECT count(*) FROM pgbench_accounts")[0][0] >= r
                ),
                120,
                f"the copy wrote {rows} accounts",
            )
            progress = copy_progress(tmp_path / "state")
            assert progress.get("state") == "copying", progress
            engine.send_signal(signal.SIGKILL)
            engine.wait()
            slots = query(
                source.dsn, "SELECT slot_name FROM pg_replication_slots WHERE NOT temporary"
            )
            assert slots == [("rosetta_1",)], f"kill {kill}: the slot is kept"
            engine = start_engine(env, log)
        assert bench.wait(timeout=120) == 0
        expected = normalised(table_state(source.dsn))
        wait_until(
            lambda: normalised(table_state(target.dsn)) == expected,
            180,
            "every replicated pgbench table matches the source",
        )
        wait_until(
            lambda: copy_progress(tmp_path / "state").get("state") == "done",
            30,
            "the copy is recorded as done",
        )
    finally:
        stop_bench_and_engine(bench, engine)
    text = log.read_text()
    assert text.count("initial copy was interrupted, copying again") == 2
    assert "created replication slot with an exported snapshot" in text
