"""Two `rosetta run` processes share four pipelines through leases; a paused one is fenced.

Both engines read the same pipelines file (four JSON-lines sources followed,
one PostgreSQL destination) against the same 3-node NATS cluster, each with
its own DLQ and state directories and engine id. Each engine writes as its
own PostgreSQL role, and a trigger on every destination table records which
role wrote each row and when: that is how the test proves that engine A,
stopped (SIGSTOP) past the lease TTL and continued (SIGCONT) after B took its
pipelines over, wrote nothing more, even though its followed files grew
while it was stopped.
"""

from __future__ import annotations

import json
import signal
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import psycopg2
import pytest

from compute.storage.jetstream.bridge import NatsBridge
from compute.storage.jetstream.leases import Leases
from config.nats_config import NatsConfig
from tests.nats_cluster import NatsCluster, nats_cluster
from tests.rosetta_cli import cli_env, start_rosetta
from tests.waiting import OutputLines, wait_until

TTL = 3.0
PIPELINES = [f"p{i}" for i in range(1, 5)]


@pytest.fixture(scope="module")
def cluster() -> Iterator[NatsCluster]:
    with nats_cluster() as started:
        yield started


def _sql(dsn: str, *statements: str) -> list[tuple]:
    conn = psycopg2.connect(dsn)
    conn.autocommit = True
    try:
        with conn.cursor() as cur:
            rows: list[tuple] = []
            for statement in statements:
                cur.execute(statement)
                rows = cur.fetchall() if cur.description else []
            return rows
    finally:
        conn.close()


def _prepare_database(dsn: str) -> None:
    statements = [
        "CREATE ROLE engine_a LOGIN SUPERUSER",
        "CREATE ROLE engine_b LOGIN SUPERUSER",
        "CREATE TABLE writes (writer text, tbl text, id int, at timestamptz)",
        """CREATE FUNCTION record_writer() RETURNS trigger LANGUAGE plpgsql AS $$
           BEGIN
             INSERT INTO writes VALUES (current_user, TG_TABLE_NAME, NEW.id, clock_timestamp());
             RETURN NEW;
           END $$""",
    ]
    for i in range(1, 5):
        statements += [
            f"CREATE TABLE t{i} (id int PRIMARY KEY, v int)",
            f"CREATE TRIGGER t{i}_writer AFTER INSERT OR UPDATE ON t{i} "
            "FOR EACH ROW EXECUTE FUNCTION record_writer()",
        ]
    _sql(dsn, *statements)


def _append(path: Path, table: str, ids: range) -> None:
    with path.open("a") as out:
        for n in ids:
            source = {"schema": "public", "table": table, "lsn": n, "pk": ["id"]}
            event = {"op": "c", "before": None, "after": {"id": n, "v": n * 10}, "source": source}
            out.write(json.dumps(event) + "\n")


def _append_all(tmp_path: Path, ids: range) -> None:
    for i in range(1, 5):
        _append(tmp_path / f"t{i}.jsonl", f"t{i}", ids)


def _pipelines_file(tmp_path: Path) -> Path:
    lines = []
    for i, name in enumerate(PIPELINES, start=1):
        lines += [
            "[[pipelines]]",
            f'name = "{name}"',
            "[pipelines.source]",
            f'id = "{i}"',
            'type = "jsonl"',
            f'path = "{tmp_path / f"t{i}.jsonl"}"',
            "follow = true",
            "[[pipelines.destinations]]",
            'id = "1"',
            'name = "PG"',
            'type = "postgresql"',
            'dsn_env = "DEST_DSN"',
        ]
    path = tmp_path / "pipelines.toml"
    path.write_text("\n".join(lines) + "\n")
    return path


def _each_table_has(dsn: str, count: int) -> bool:
    return all(_sql(dsn, f"SELECT count(*) FROM t{i}")[0][0] == count for i in range(1, 5))


def test_two_engines_share_pipelines_and_a_paused_one_writes_nothing_after_the_takeover(
    tmp_path: Path, cluster: NatsCluster, postgres_server_factory
) -> None:
    server = postgres_server_factory()
    _prepare_database(server.dsn)
    _append_all(tmp_path, range(1, 51))
    pipelines = _pipelines_file(tmp_path)
    prefix = f"SHARED{int(time.time()) % 10**6}"
    assert "user=postgres" in server.dsn

    def engine_env(name: str) -> dict[str, str]:
        return cli_env(
            DLQ_BASE_PATH=str(tmp_path / name / "dlq"),
            ROSETTA_STATE_PATH=str(tmp_path / name / "state"),
            ROSETTA_ADMIN_ADDR="127.0.0.1:0",
            ROSETTA_PIPELINES_FILE=str(pipelines),
            DEST_DSN=server.dsn.replace("user=postgres", f"user={name}"),
            DLQ_MIN_FREE_DISK_MB="0",
            DLQ_BACKEND="jetstream",
            DLQ_NATS_URLS=cluster.url_list,
            DLQ_NATS_STREAM_PREFIX=prefix,
            DLQ_LEASE_TTL=str(TTL),
            DLQ_ENGINE_ID=name,
        )

    bridge = NatsBridge(NatsConfig(urls=tuple(cluster.urls), stream_prefix=prefix, lease_ttl=TTL))
    leases = Leases(bridge, engine_id="observer")

    def owners() -> dict[str, str]:
        return {name: owner.engine_id for name, owner in leases.owners().items()}

    def shared_fairly() -> bool:
        held = list(owners().values())
        return len(held) == 4 and held.count("engine_a") == held.count("engine_b") == 2

    engines: list[subprocess.Popen[str]] = []
    try:
        a = start_rosetta(engine_env("engine_a"), "run")
        engines.append(a)
        b = start_rosetta(engine_env("engine_b"), "run")
        engines.append(b)
        a_out, b_out = OutputLines(a.stdout), OutputLines(b.stdout)
        wait_until(shared_fairly, 60, "two pipelines each")
        wait_until(lambda: _each_table_has(server.dsn, 50), 60, "50 rows in each table")
        a_had = sorted(n for n, e in owners().items() if e == "engine_a")

        a.send_signal(signal.SIGSTOP)
        [(stopped_at,)] = _sql(server.dsn, "SELECT clock_timestamp()")
        _append_all(tmp_path, range(51, 101))  # A's followed files grow while it is stopped
        wait_until(
            lambda: owners() == dict.fromkeys(PIPELINES, "engine_b"),
            TTL * 5,
            "engine B to take A's pipelines",
        )
        for name in a_had:
            b_out.wait_for(f"pipeline taken: pipeline={name} engine=engine_b", 10)
        wait_until(lambda: _each_table_has(server.dsn, 100), 60, "100 rows in each table")

        a.send_signal(signal.SIGCONT)
        for name in a_had:
            a_out.wait_for(f"pipeline lease lost, pipeline stopped: pipeline={name}", 20)
        [(fenced_at,)] = _sql(server.dsn, "SELECT clock_timestamp()")
        _append_all(tmp_path, range(101, 121))
        wait_until(lambda: _each_table_has(server.dsn, 120), 60, "120 rows in each table")
        # Back, A counts again: B hands two pipelines over (Kafka Connect's rebalance),
        # and A resumes them from the positions B left in the cluster.
        wait_until(shared_fairly, TTL * 5, "two pipelines each again")

        late = _sql(
            server.dsn,
            "SELECT tbl, id, at FROM writes WHERE writer = 'engine_a' "
            f"AND at >= '{stopped_at}' AND (at < '{fenced_at}' OR id BETWEEN 51 AND 100)",
        )
        assert late == [], f"engine A wrote after it was stopped and fenced: {late[:5]}"
        for i in range(1, 5):
            rows = _sql(server.dsn, f"SELECT id, v FROM t{i} ORDER BY id")
            assert rows == [(n, n * 10) for n in range(1, 121)], f"t{i}"
        writers = dict(_sql(server.dsn, "SELECT writer, count(*) FROM writes GROUP BY writer"))
        assert set(writers) == {"engine_a", "engine_b"}

        # A clean stop releases the leases at once: the other engine takes them within a round.
        b.send_signal(signal.SIGTERM)
        assert b.wait(30) == 0, b_out.finish(10)[-3000:]
        released = time.monotonic()
        wait_until(lambda: owners() == dict.fromkeys(PIPELINES, "engine_a"), TTL * 3, "A: all")
        assert time.monotonic() - released < TTL, "taken after the TTL, not at once"
        a.send_signal(signal.SIGTERM)
        assert a.wait(30) == 0, a_out.finish(10)[-3000:]
        assert owners() == {}
        a_log = a_out.finish(10)
        assert "Traceback" not in a_log, a_log[-3000:]
    finally:
        for engine in engines:
            if engine.poll() is None:
                engine.send_signal(signal.SIGCONT)
                engine.kill()
                engine.wait(10)
        bridge.close()
