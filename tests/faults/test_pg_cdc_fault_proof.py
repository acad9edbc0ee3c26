"""The full fault proof of the PostgreSQL source: every fault at once during pgbench, nothing lost.

While pgbench runs on the source (four clients, in 15 s segments), in an
order drawn from a seeded random generator:

* ``rosetta run`` is killed with SIGKILL five times at random moments, once
  of them while the destination is down (changes sit in the DLQ then);
* the destination is stopped with ``pg_ctl stop -m immediate`` three times
  (twice on its own, once with the kill above) and started again;
* the source server is restarted once (``-m immediate``; pgbench is ended
  for it and started again).

At every kill, with pgbench paused and the destination up, the destination
plus the DLQ plus the slot's remaining changes must equal the source for the
three keyed tables: the slot's ``confirmed_flush_lsn`` never ran ahead of
what the destination or the DLQ holds. At the end the keyed tables equal the
source, pgbench_history (no key, replicated append-only) holds the source's
rows as a multiset with none twice, nothing is parked, and ``rosetta run``
stops with exit code 0 (its run summary says 7 when anything waits for an
operator).
"""

from __future__ import annotations

import os
import random
import re
import signal
import subprocess
import time
from collections import Counter
from pathlib import Path

import pytest

from compute.dlq.manager import DLQManager
from config.dlq_config import DLQConfig
from tests.faults.helpers import engine_env, start_engine
from tests.faults.test_pg_source_kill9 import (
    PIPELINES,
    check_confirmed_not_ahead,
    stop_engine,
    wait_replicated,
)
from tests.pgbench_cdc import LOGICAL, fetch, pgbench, pgbench_command, run_sql
from tests.servers import PostgresServer
from tests.waiting import wait_until

FAULTS = ["kill"] * 4 + ["kill_in_outage", "outage", "outage", "source_restart"]
# The kill -9 test's pipeline, with pgbench_history (no key) replicated append-only.
WITH_HISTORY = PIPELINES.replace(
    "batch_size = 500\n", 'batch_size = 500\nappend_only = ["public.pgbench_history"]\n'
).replace('"public.pgbench_tellers"]', '"public.pgbench_tellers", "public.pgbench_history"]')
HISTORY = "tid, bid, aid, delta, mtime, filler"


class Bench:
    """pgbench's default script on the source, in segments started again as they end."""

    def __init__(self, source: PostgresServer) -> None:
        self.source = source
        self.process: subprocess.Popen[bytes] | None = None
        self.segments = 0

    def keep_running(self) -> None:
        if self.process is None or self.process.poll() is not None:
            self.process = subprocess.Popen(
                pgbench_command(self.source, "-T", "15", "-c", "4", "-j", "2", "-n"),
                stdout=subprocess.DEVNULL,
                stderr=subprocess.DEVNULL,
            )
            self.segments += 1

    def signal(self, number: int) -> None:
        if self.process is not None and self.process.poll() is None:
            os.kill(self.process.pid, number)

    def end(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.kill()
            self.process.wait()

    def finish(self) -> int:
        assert self.process is not None
        return self.process.wait(timeout=60)


def parked_total(dlq_path: Path) -> int:
    with DLQManager(DLQConfig(base_path=dlq_path, min_free_disk_mb=0), background=False) as dlq:
        return sum(dlq.parked_count(q) for q in dlq.list_queues())


@pytest.mark.timeout(600)
def test_kills_destination_outages_and_a_source_restart_during_pgbench_lose_nothing(
    tmp_path: Path, postgres_server_factory
) -> None:
    rng = random.Random(1414)
    faults = list(FAULTS)
    rng.shuffle(faults)
    source = postgres_server_factory(LOGICAL)
    target = postgres_server_factory()
    for server in (source, target):
        pgbench(server, "-i", "-s", "1", "-q")
    # An append-only target table stores each insert's source position, unique.
    run_sql(
        target.dsn,
        "ALTER TABLE pgbench_history ADD COLUMN _rosetta_commit bigint, "
        "ADD COLUMN _rosetta_seq bigint, ADD UNIQUE (_rosetta_commit, _rosetta_seq)",
    )
    assert "pgbench_history" in WITH_HISTORY.split("[[pipelines.destinations]]")[0]
    (tmp_path / "pipelines.toml").write_text(WITH_HISTORY)
    env = engine_env(tmp_path, target.dsn, TEST_SOURCE_DSN=source.dsn)
    log = tmp_path / "engine.log"
    dlq_path = tmp_path / "dlq"
    engine = start_engine(env, log)
    wait_until(lambda: "replication started" in log.read_text(), 30, "replication started")
    bench = Bench(source)
    in_flight_at_kills: list[int] = []

    def kill_and_check(outage: bool) -> subprocess.Popen[bytes]:
        if outage:
            target.stop("immediate")
            time.sleep(rng.uniform(1.0, 3.0))
        engine.send_signal(signal.SIGKILL)
        engine.wait()
        if outage:
            target.start()
        bench.signal(signal.SIGSTOP)
        try:
            time.sleep(0.5)  # commits already sent finish
            in_flight_at_kills.append(check_confirmed_not_ahead(source, target, dlq_path))
        finally:
            bench.signal(signal.SIGCONT)
        return start_engine(env, log)

    try:
        for fault in faults:
            bench.keep_running()
            time.sleep(rng.uniform(1.0, 4.0))
            if fault in ("kill", "kill_in_outage"):
                engine = kill_and_check(outage=fault == "kill_in_outage")
            elif fault == "outage":
                target.stop("immediate")
                time.sleep(rng.uniform(2.0, 4.0))
                target.start()
            else:
                bench.end()
                source.restart("immediate")
        bench.keep_running()
        assert bench.finish() == 0, "the last pgbench segment failed"
        wait_replicated(source, target)
        history = f"SELECT {HISTORY} FROM pgbench_history"
        wait_until(
            lambda: Counter(fetch(target.dsn, history)) == Counter(fetch(source.dsn, history)),
            60,
            "pgbench_history holds the source's rows, each once",
        )
    finally:
        bench.end()
        code = stop_engine(engine)
    text = log.read_text()
    print(
        f"faults={faults} pgbench segments={bench.segments} in flight at kills={in_flight_at_kills}"
    )
    assert len(in_flight_at_kills) == 5
    assert sum(in_flight_at_kills) > 0, "no kill landed while changes were in flight"
    assert code == 0, f"rosetta run ended with {code}: {text[-2000:]}"
    summary = re.findall(r"run summary: .*", text)
    assert summary and "parked=0" in summary[-1] and "rejected=0" in summary[-1], summary
    assert parked_total(dlq_path) == 0
    assert fetch(target.dsn, "SELECT count(*) FROM pgbench_history")[0][0] > 100
    # The faults were real: the source's restart broke the stream, the outages queued changes.
    assert "replication connection lost, reconnecting" in text
    assert "replication stream stopped" not in text
    assert "Enqueued to DLQ" in text
