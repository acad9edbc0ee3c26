"""Session fixtures: a real PostgreSQL and a fakesnow server, started by the suite itself."""

from __future__ import annotations

import itertools
import os
from collections.abc import Callable, Iterator, Mapping
from pathlib import Path
from typing import Any

import psycopg2
import pytest
from psycopg2 import sql

from tests import servers
from tests.servers import PostgresCluster, PostgresServer
from tests.tmpfs import mounted_tmpfs

_schema_numbers = itertools.count(1)

# Long-running tests: every real-engine fault test under tests/faults/ (kill -9
# loops, the soak, servers stopped and black-holed), the benchmark smoke runs and
# the crash loops. `python -m pytest -m "not slow"` is the fast suite (under two
# minutes on 2 cores: about 1 min 15 s with the 3 pytest-xdist workers below);
# `python -m pytest` (CI) runs everything (about 11 minutes, under 20 minutes).
# Also the few tests elsewhere that run a whole engine for several seconds, and
# the Snowflake destination through fakesnow (seconds a test; the contract
# suite marks its Snowflake runs itself).
_SLOW = (
    "tests/faults/",
    "tests/destinations/snowflake/",
    "tests/examples/",
    "tests/compute/cli/test_cli_run.py",  # `rosetta run` child processes
    "tests/test_benchmark_scripts.py",
    "tests/compute/engine/test_crash_kill9.py",
    "tests/compute/engine/test_engine_postgres.py",
    "tests/compute/engine/test_shared_pipelines.py",  # two `rosetta run`, a NATS cluster
    "tests/compute/cli/test_cli_dlq.py::test_every_command_",
    "tests/compute/storage/test_disk_full_drain.py",
    "tests/compute/storage/test_kill_during_ack.py",
    # pgbench loads and `rosetta run` child processes against real servers
    "tests/compute/cli/test_cli_run_tables.py",
    "tests/compute/cli/test_cli_replay_priority.py",
    "tests/compute/cli/test_cli_run_held.py",
    "tests/compute/sources/postgres/test_replication_lag.py",
    "tests/compute/sources/postgres/test_initial_snapshot.py::test_changes_during_the_copy_",
    "tests/compute/sources/postgres/test_pg_source_ops.py::test_pgbench_replicates_",
    "tests/compute/admin/test_http_hardening.py::test_a_stalled_export_does_not_stop_replay",
    "tests/compute/cli/test_cli_dlq.py::test_offline_errors_are_one_line_with_documented_exit_codes",
    "tests/compute/storage/test_rocksq_store.py::test_open_handles_stay_capped_with_many_queues",
    # Backpressure held past the replication server's wal_sender_timeout on purpose.
    "tests/compute/sources/postgres/test_postgres_source.py::test_a_source_not_read_for_",
    "tests/compute/sources/postgres/test_postgres_source.py::test_pipeline_backpressure_",
    "tests/compute/sources/postgres/test_stream_reconnect.py",  # waits for keepalives
    # Initial copies cut and taken again, with changes running (14-20 s each)
    "tests/compute/sources/postgres/test_copy_interrupted.py::test_a_lost_copy_connection_",
    "tests/compute/sources/postgres/test_copy_interrupted.py::test_a_copy_stopped_midway_",
    "tests/compute/sources/postgres/test_copy_interrupted.py::test_a_source_server_restart_",
    # A logical-replication server of their own each (a server start, 1.5 s or more);
    # the fast suite keeps the stream's types and its TOAST, key-change, truncate and
    # new-column cases (test_real_stream, test_real_changes) and the unit tests.
    "tests/compute/sources/postgres/test_postgres_source.py",
    "tests/compute/sources/postgres/test_pg_source_ops.py",
    "tests/compute/sources/postgres/test_schema_evolution_cdc.py",
    "tests/compute/sources/postgres/test_initial_snapshot.py::test_existing_rows_",
    "tests/compute/sources/postgres/test_initial_snapshot.py::test_copied_rows_sort_",
    "tests/compute/sources/postgres/test_real_stream.py::test_the_session_options_",
    "tests/compute/sources/postgres/test_real_stream.py::test_text_of_a_latin1_",
    "tests/compute/sources/postgres/test_real_changes.py::test_an_unchanged_toast_column_",
    # `rosetta run` and CLI child processes, kill -9 of child processes
    "tests/config/test_config_database.py::test_engine_runs_pipelines_",
    "tests/compute/cli/test_cli_dlq.py::test_export_purge_import_",
    "tests/compute/dlq/test_operator_ops.py::test_kill_9_between_steps_",
    "tests/compute/storage/test_restart_counts.py::test_counts_are_exact_after_kill_9",
    "tests/compute/storage/test_restart_counts.py::test_repeated_restarts_",
    # Hundreds of queues and rounds, threads racing for seconds, timeouts waited out;
    # the damaged blocks near the start and the end (the middle stays in the fast suite).
    "tests/compute/storage/test_open_budget.py::test_active_queues_are_not_reopened_",
    "tests/compute/storage/test_drained_removal.py::test_concurrent_enqueues_lose_nothing_",
    "tests/compute/storage/test_corrupt_sst_blocks.py::test_damaged_data_block_found_at_load[0.1-",
    "tests/compute/storage/test_corrupt_sst_blocks.py::test_damaged_data_block_found_at_load[0.9-",
    "tests/compute/storage/test_corrupt_sst_blocks.py::test_damaged_data_block_found_by_a_later_read[0.1-",
    "tests/compute/storage/test_corrupt_sst_blocks.py::test_damaged_data_block_found_by_a_later_read[0.9-",
    "tests/destinations/contract/test_failures.py::test_health_check_false_within_its_timeout_when_"
    "the_server_never_answers[postgresql-",
    "tests/compute/engine/test_embedded.py::test_full_dlq_blocks_submit_",
    "tests/compute/storage/test_store_contract.py::test_concurrent_producers_and_one_reader",
    # Waiting out the status files' 1 s refresh, a destination slowed on purpose, a
    # destination server stopped and started
    "tests/compute/dlq/test_status_files.py::test_the_maintenance_thread_keeps_the_age_",
    "tests/compute/dlq/test_manager.py::test_status_file_refreshes_while_running",
    "tests/compute/delivery/test_lanes.py::test_a_slow_destination_keeps_the_source_moving_",
    "tests/compute/engine/test_pipeline_postgres.py::test_backpressure_in_an_outage_",
    # A 3-node NATS cluster started (about 4 s) and quorum round trips: the JetStream
    # backend's tests; the contract tests keep their rocksq runs in the fast suite.
    "tests/compute/storage/test_jetstream_",
    "tests/compute/engine/test_ownership.py",
    "tests/compute/cli/test_cli_owners.py",
)
# Parametrized over both stores: the JetStream runs are slow (see above).
_SLOW_PARAMETERS = "[jetstream"
# The heaviest tests (30 to 75 s each: a real engine, PostgreSQL servers, pgbench or
# NATS nodes, several cores' worth at once, and waits that have to outlast that load)
# run one after the other on one pytest-xdist worker, handed out first: never two of
# them side by side, and none is left to run alone at the end. The other workers take
# the rest meanwhile: the other slow tests spread evenly through the fast ones, so
# that the last tests handed out are short.
_HEAVY_LANE = (
    "tests/faults/test_pg_snapshot_kill9.py",
    "tests/faults/test_soak.py",
    "tests/faults/test_jetstream_node_faults.py",
    "tests/faults/test_table_holds_pg.py",
    "tests/faults/test_pg_cdc_fault_proof.py",
    "tests/faults/test_postgres_faults.py",
    "tests/faults/test_jetstream_kill9.py",
    "tests/compute/engine/test_engine_postgres.py::test_kill9_",
    "tests/examples/test_postgres_cdc_example.py",
    "tests/faults/test_pg_source_kill9.py",
)
HEAVY_LANE_GROUP = "heavy-lane"
# Of the other slow tests, these (10 to 30 s each) come first, so that the last tests
# handed out are short ones.
_LONG = (
    "tests/compute/storage/test_kill_during_ack.py",
    "tests/test_benchmark_scripts.py::test_bench_pipeline_",
    "tests/compute/engine/test_crash_kill9.py",
    "tests/compute/sources/postgres/test_pg_source_ops.py::test_pgbench_",
    "tests/compute/sources/postgres/test_initial_snapshot.py::test_changes_during_the_copy_",
    "tests/compute/cli/test_cli_dlq.py::test_every_command_",
    "tests/faults/",
    "tests/destinations/snowflake/test_outage.py",
    "tests/destinations/snowflake/test_position_guard.py::test_replays_",
    "tests/test_benchmark_scripts.py",
)
# Modules whose tests share a module-scoped 3-node NATS cluster (about 4 s to start):
# each runs on one pytest-xdist worker (``--dist loadgroup``), which starts it once.
_ONE_WORKER = (
    "tests/faults/test_jetstream_node_faults.py",  # in the heavy lane as well
    "tests/compute/storage/test_jetstream_leases.py",
    "tests/compute/engine/test_ownership.py",
    "tests/compute/engine/test_shared_pipelines.py",
    "tests/compute/cli/test_cli_owners.py",
)
_ROOT = Path(__file__).resolve().parents[1]


def _name(item: pytest.Item) -> str:
    path = Path(str(item.path)).resolve().relative_to(_ROOT).as_posix()
    return path + item.nodeid[len(item.nodeid.split("::")[0]) :]


def _spread(items: list[pytest.Item], among: list[pytest.Item]) -> list[pytest.Item]:
    """``items`` placed at even intervals through ``among``; both keep their order."""
    step = len(among) / (len(items) + 1)
    keyed = [(float(i), item) for i, item in enumerate(among)]
    keyed += [((k + 1) * step - 0.5, item) for k, item in enumerate(items)]
    return [item for _, item in sorted(keyed, key=lambda pair: pair[0])]


# tryfirst: pytest-xdist reads the xdist_group marks in its own hook of this name.
@pytest.hookimpl(tryfirst=True)
def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    heavy: list[pytest.Item] = []
    long: list[pytest.Item] = []
    slow: list[pytest.Item] = []
    fast: list[pytest.Item] = []
    for item in items:
        name = _name(item)
        is_slow = name.startswith(_SLOW) or _SLOW_PARAMETERS in name
        if is_slow:
            item.add_marker(pytest.mark.slow)
        if name.startswith(_HEAVY_LANE):
            item.add_marker(pytest.mark.xdist_group(HEAVY_LANE_GROUP))
            heavy.append(item)
        else:
            if name.startswith(_ONE_WORKER):
                item.add_marker(pytest.mark.xdist_group(name.split("::")[0]))
            (long if name.startswith(_LONG) else slow if is_slow else fast).append(item)
    # Order only: what runs, and how (fixtures, marks), does not depend on it.
    items[:] = heavy + _spread(long + slow, fast)


def pytest_xdist_auto_num_workers(config: pytest.Config) -> int:
    """``-n auto`` (pyproject.toml): one worker more than the usable cores, at most 4.

    Much of the suite waits (on servers, child processes, timeouts): on 2 cores three
    workers keep both busy (the whole suite in about 11 minutes, against 17 with two);
    more than 4 is untried (each worker starts its own servers, and the timing-bound
    tests are made for a 2-core machine). PYTEST_XDIST_AUTO_NUM_WORKERS overrides it.
    """
    forced = os.environ.get("PYTEST_XDIST_AUTO_NUM_WORKERS", "")
    if forced.isdigit():
        return int(forced)
    return max(1, min(4, len(os.sched_getaffinity(0)) + 1))


@pytest.fixture(scope="session")
def postgres_cluster() -> Iterator[PostgresCluster]:
    """Makes extra PostgreSQL servers (for outage tests, special settings)."""
    cluster = PostgresCluster()
    yield cluster
    cluster.close()


@pytest.fixture(scope="session")
def postgres_dsn(postgres_cluster: PostgresCluster) -> str:
    """DSN of the shared session server; ``ROSETTA_TEST_POSTGRES_DSN`` overrides it."""
    external = os.environ.get("ROSETTA_TEST_POSTGRES_DSN")
    if external:
        return external
    return postgres_cluster.new_server().dsn


@pytest.fixture
def postgres_server_factory(
    postgres_cluster: PostgresCluster,
) -> Iterator[Callable[..., PostgresServer]]:
    """``factory(settings=None)`` -> a dedicated, started server this test may stop and start.

    Always an embedded server (even with ``ROSETTA_TEST_POSTGRES_DSN``), removed after the test.
    """
    made: list[PostgresServer] = []

    def make(settings: Mapping[str, str] | None = None) -> PostgresServer:
        server = postgres_cluster.new_server(settings)
        made.append(server)
        return server

    yield make
    for server in made:
        server.destroy()


@pytest.fixture
def pg_schema(postgres_dsn: str) -> Iterator[str]:
    """A fresh, empty schema for one test; dropped afterwards."""
    name = f"t{os.getpid()}_{next(_schema_numbers)}"
    conn = psycopg2.connect(postgres_dsn)
    conn.autocommit = True
    with conn.cursor() as cur:
        cur.execute(sql.SQL("CREATE SCHEMA {}").format(sql.Identifier(name)))
    try:
        yield name
    finally:
        with conn.cursor() as cur:
            cur.execute(sql.SQL("DROP SCHEMA {} CASCADE").format(sql.Identifier(name)))
        conn.close()


@pytest.fixture
def pg_conn(postgres_dsn: str) -> Iterator[Any]:
    """An autocommit psycopg2 connection to the session server, for setup and checks."""
    conn = psycopg2.connect(postgres_dsn)
    conn.autocommit = True
    yield conn
    conn.close()


@pytest.fixture(scope="session")
def fakesnow_server() -> Iterator[dict[str, Any]]:
    """Connection kwargs for a local fakesnow server (real connector, DuckDB behind it)."""
    with servers.fakesnow_server() as kwargs:
        yield kwargs


@pytest.fixture
def small_disk_size() -> str:
    """The size of ``small_disk``; a test module overrides this fixture for another size."""
    return "16m"


@pytest.fixture
def small_disk(tmp_path: Path, small_disk_size: str) -> Iterator[Path]:
    """A small tmpfs of the test's own, to fill up (the suite runs as root, as CI does)."""
    with mounted_tmpfs(tmp_path / "small", f"size={small_disk_size}") as mount_point:
        yield mount_point


@pytest.fixture(scope="session")
def nats_session_cluster() -> Iterator[Any]:
    """One 3-node JetStream cluster for the whole session (about 5 s to start).

    Tests keep apart by a stream prefix of their own (``tests/jetstream_stores.py``).
    A missing nats-server fails the test that needs it: it is never skipped.
    """
    from tests.nats_cluster import nats_cluster

    with nats_cluster() as cluster:
        yield cluster
