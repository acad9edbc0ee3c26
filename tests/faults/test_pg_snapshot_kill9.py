"""kill -9 of ``rosetta run`` in the middle of the initial copy, with pgbench running: exact after.

The source holds ``pgbench -i -s 3`` (300,000 accounts) and a few thousand
``pgbench_history`` rows; the destination has the same tables, empty.
``rosetta run`` creates the slot, copies the three keyed tables and
pgbench_history (no key: append-only) and streams, while ``pgbench -T`` runs
with four clients. It is killed with SIGKILL twice while the copy is under
way (destination partly filled), and started again: each start copies again
the tables not finished, and keeps the slot. A third kill comes right after
the copy is recorded as done, before the slot has moved far past the last
copy's snapshot. At the end the keyed tables equal the source and
pgbench_history holds the source's rows, each once: the recopied history
rows and the slot's inserts the copy already held were not written twice.
"""

from __future__ import annotations

import json
import signal
import subprocess
from collections import Counter
from pathlib import Path

import pytest

from tests.compute.sources.postgres.pg_source_helpers import LOGICAL, execute, query
from tests.faults.helpers import engine_env, start_engine
from tests.faults.test_pg_cdc_fault_proof import HISTORY, WITH_HISTORY
from tests.faults.test_pg_source_kill9 import (
    end_pgbench_under_traffic,
    normalised,
    pgbench,
    stop_bench_and_engine,
    table_state,
)
from tests.waiting import wait_until

SNAPSHOT_PIPELINES = WITH_HISTORY.replace('snapshot = "never"\n', "")


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
        subprocess.run(pgbench(server, "-i", "-s", "2", "-q"), check=True, capture_output=True)
    execute(
        target.dsn,
        "TRUNCATE pgbench_accounts, pgbench_branches, pgbench_tellers, pgbench_history",
        "ALTER TABLE pgbench_history ADD COLUMN _rosetta_commit bigint, "
        "ADD COLUMN _rosetta_seq bigint, ADD UNIQUE (_rosetta_commit, _rosetta_seq)",
    )
    # History rows for the copy to take (pgbench -i leaves the table empty).
    subprocess.run(pgbench(source, "-t", "1000", "-c", "4", "-n"), check=True, capture_output=True)
    assert "pgbench_history" in SNAPSHOT_PIPELINES.split("[[pipelines.destinations]]")[0]
    (tmp_path / "pipelines.toml").write_text(SNAPSHOT_PIPELINES)
    env = engine_env(tmp_path, target.dsn, TEST_SOURCE_DSN=source.dsn)
    log = tmp_path / "engine.log"
    # -T is only a bound: the traffic is ended after the last kill (end_pgbench_under_traffic),
    # and three copies of 200,000 accounts take a minute or more on a busy machine.
    bench = subprocess.Popen(
        pgbench(source, "-T", "300", "-c", "4", "-j", "2", "-n"),
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
        wait_until(
            lambda: copy_progress(tmp_path / "state").get("state") == "done",
            180,
            "the copy is recorded as done",
        )
        engine.send_signal(signal.SIGKILL)  # the slot may still be before the last snapshot
        engine.wait()
        engine = start_engine(env, log)
        end_pgbench_under_traffic(bench)  # it ran through the third kill
        expected = normalised(table_state(source.dsn))
        history = f"SELECT {HISTORY} FROM pgbench_history"
        wait_until(
            lambda: (
                normalised(table_state(target.dsn)) == expected
                and Counter(query(target.dsn, history)) == Counter(query(source.dsn, history))
            ),
            180,
            "every replicated pgbench table matches the source",
        )
    finally:
        stop_bench_and_engine(bench, engine)
    progress = copy_progress(tmp_path / "state")
    assert progress["state"] == "done" and "public.pgbench_history" in progress["recopied"]
    count = "SELECT count(*) FROM pgbench_history"
    assert query(target.dsn, count) == query(source.dsn, count)
    text = log.read_text()
    assert text.count("initial copy was interrupted, copying again") == 2
    assert "created replication slot with an exported snapshot" in text
