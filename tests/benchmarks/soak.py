"""Soak: synthetic traffic through a real ``rosetta run`` into PostgreSQL, under random faults.

    python tests/benchmarks/soak.py --minutes N [--rate 200] [--seed 1] [--keep]
                                    [--backend rocksq|jetstream]

One run. A real PostgreSQL (embedded, started here) sits behind the fault
proxy (``tests/fault_proxy.py``); a ``rosetta run`` child process replicates
the synthetic source into it. For ``--minutes`` minutes, faults are drawn at
random, one at a time with a clear gap between them:

* PostgreSQL ``pg_ctl stop -m immediate``, restarted 1-5 s later;
* proxy latency (10-150 ms each way), resets (now, or mid-statement after a
  random number of bytes), a blackhole, each for 1-5 s;
* ``pg_terminate_backend`` of the engine's sessions, with the next COMMIT
  replies swallowed by the proxy (committed, the engine never hears);
* ``kill -9`` of the engine, restarted at once (first 60% of the window
  only, so that the last engine process lives long enough to measure);
* an idle-connection flood: 200 connections (more than the admin API's cap)
  opened to the engine's admin API on loopback and held past its timeout,
  then closed; the API must serve again right after;
* a queue directory deleted (``rm -rf``) while the engine runs, PostgreSQL
  stopped 1-5 s before and restarted 1 s after: one holding messages whose
  segments the engine has open (it must copy them back into a recreated
  directory, so ``soak_lost_events`` stays a real check), else an empty one.
  A non-empty queue whose files the engine does not hold open is never
  picked: deleting it is an operator deleting messages.

With ``--backend jetstream`` the queues live in a 3-node NATS cluster the
soak starts, nodes are killed too, and the engine is stopped with SIGTERM
once drained (``tests/benchmarks/soak_jetstream.py``).

The source produces ``rate`` events per second, ``0.9 * rate * window``
events in all. The synthetic source is rate-capped and cannot catch up time
the engine spent stalled (a blackhole holds a live write for write_timeout
plus its retries) or restarting, so faults go on past the window until the
engine has read the whole source (its acknowledged offset). Then every
fault is cleared, the engine drains and exits by itself (source exhausted,
queues empty), and the destination is reconciled against the source's
``expected_state``. Printed last:

* ``soak_lost_events``: expected rows missing, rows that should not exist,
  and rows with wrong values (target 0);
* ``soak_final_state_matches``: 1 when the tables equal the expected state
  and no message is left queued or parked (target 1);
* ``soak_rss_growth_pct``: RSS of the last engine process (from
  /proc/<pid>/status), from the end of its warm-up (its first 60 s, or a
  fifth of its life if shorter) to its last sample before the drain ended
  (target < 10);
* ``soak_drain_seconds_after_last_fault``: from clearing the last fault to
  the engine's exit after draining (target < 60).
"""

from __future__ import annotations

import argparse
import json
import os
import random
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
import urllib.parse
import urllib.request
from pathlib import Path

import psycopg2

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))

from compute.sources.synthetic_source import DEFAULT_TABLES, SyntheticSource  # noqa: E402
from tests.benchmarks.soak_jetstream import JetStreamSoak  # noqa: E402
from tests.fault_proxy import FaultProxy  # noqa: E402
from tests.faults.helpers import (  # noqa: E402
    create_tables,
    engine_env,
    queue_leftovers,
    write_pipelines,
)
from tests.pg_state import fetch_state  # noqa: E402
from tests.servers import PostgresCluster, PostgresServer  # noqa: E402

# The engine's working set (RocksDB memtables and block cache, connection
# buffers, modules imported on first use) fills during its first minute; a
# leak shows as growth after that. (15 s was used first: the first 10-minute
# run then showed 19.5% growth, all of it within ~80 s of start, then flat.)
WARMUP_SECONDS = 60.0
KEYS_PER_TABLE = 200


def rss_kib(pid: int) -> int | None:
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    except (OSError, ValueError):
        return None
    return None


class Engine:
    """The ``rosetta run`` child: started, killed, restarted; RSS sampled every second."""

    def __init__(self, env: dict[str, str], log: Path) -> None:
        self.env = env
        self.log = log
        self.proc: subprocess.Popen[bytes] | None = None
        self.started_at = 0.0
        self.samples: list[tuple[float, int]] = []  # (seconds since start, RSS KiB)
        self.restarts = 0
        self.kills = 0
        self.bad_exits: list[int] = []
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._sampler = threading.Thread(target=self._sample, daemon=True)

    def start(self) -> None:
        with self._lock:
            self.proc = subprocess.Popen(
                [sys.executable, "-m", "compute.cli", "--log-level", "INFO", "run"],
                cwd=ROOT,
                env=self.env,
                stdin=subprocess.DEVNULL,
                stdout=self.log.open("ab"),
                stderr=subprocess.STDOUT,
            )
            self.started_at = time.monotonic()
            self.samples = []
        if not self._sampler.is_alive():
            self._sampler.start()

    def kill9(self) -> None:
        with self._lock:
            assert self.proc is not None
            self.proc.send_signal(signal.SIGKILL)
            self.proc.wait()
        self.kills += 1
        self.start()
        self.restarts += 1

    def keep_running(self) -> None:
        """Restart the engine if it failed; exit 0 means everything is read and drained."""
        assert self.proc is not None
        code = self.proc.poll()
        if code is None or code == 0:
            return
        self.bad_exits.append(code)
        self.start()
        self.restarts += 1

    def _sample(self) -> None:
        while not self._stop.wait(1.0):
            with self._lock:
                proc, started = self.proc, self.started_at
                if proc is None or proc.poll() is not None:
                    continue
                value = rss_kib(proc.pid)
                if value is not None:
                    self.samples.append((time.monotonic() - started, value))

    def stop_sampling(self) -> None:
        self._stop.set()

    def rss_curve(self) -> str:
        """RSS (MiB) at the start and each fifth of the last process's life: growth or plateau."""
        samples = list(self.samples)
        if not samples:
            return "-"
        life = samples[-1][0]
        marks = [next(v for t, v in samples if t >= life * q / 5) for q in range(6)]
        return " ".join(f"{v / 1024:.0f}" for v in marks) + f" (life {life:.0f}s)"

    def rss_growth_pct(self) -> float:
        samples = list(self.samples)
        if len(samples) < 2:
            return float("nan")
        life = samples[-1][0]
        warm = min(WARMUP_SECONDS, life / 5)
        base = next(v for t, v in samples if t >= warm)
        return 100.0 * (samples[-1][1] - base) / base


def source_position(work: Path) -> int:
    """The engine's acknowledged source position (0 when none yet)."""
    try:
        doc = json.loads((work / "state" / "offsets" / "source_1.json").read_text())
        return int(doc["offsets"]["1"])
    except (OSError, ValueError, KeyError, TypeError):
        return 0


def open_paths(pid: int) -> list[str]:
    """Where the process's file descriptors point (their targets, as the kernel names them)."""
    found = []
    try:
        for fd in os.listdir(f"/proc/{pid}/fd"):
            try:
                found.append(os.readlink(f"/proc/{pid}/fd/{fd}"))
            except OSError:
                continue
    except OSError:
        pass
    return found


def remove_queue_dir(dlq: Path, pid: int, rng: random.Random) -> tuple[Path | None, int]:
    """Delete a queue directory the engine can recover from; (which, its segment count).

    Preferred: one holding messages whose every segment the engine has open
    (RocksDB files under it), so the messages are still readable through the
    engine's handles; else an empty one; else none.
    """
    queues = sorted(dlq.glob("source_*/table_*/dest_*"))
    held = open_paths(pid)
    full, empty = [], []
    for queue in queues:
        segments = sorted(queue.glob("seg_*"))
        if not segments:
            empty.append(queue)
        elif all(any(p.startswith(f"{seg}/") for p in held) for seg in segments):
            full.append((queue, len(segments)))
    if full:
        queue, segments = rng.choice(full)
    elif empty:
        queue, segments = rng.choice(empty), 0
    else:
        return None, 0
    shutil.rmtree(queue, ignore_errors=True)
    return queue, segments


def terminate_sessions(dsn: str) -> int:
    conn = psycopg2.connect(dsn, connect_timeout=3)
    conn.autocommit = True
    try:
        with conn.cursor() as cur:
            cur.execute(
                "SELECT count(*) FILTER (WHERE pg_terminate_backend(pid)) FROM pg_stat_activity "
                "WHERE application_name = 'rosetta' AND pid <> pg_backend_pid()"
            )
            row = cur.fetchone()
            return int(row[0]) if row else 0
    finally:
        conn.close()


IDLE_FLOOD_CONNECTIONS = 200  # above ROSETTA_ADMIN_MAX_CONNECTIONS' default of 32
IDLE_FLOOD_SECONDS = 12.0  # past ROSETTA_ADMIN_TIMEOUT's default of 10: idle ones are cut


def idle_connection_flood(work: Path) -> str:
    """Open many idle connections to the engine's admin API, hold them, close them.

    Loopback only, a bounded count, all closed at the end. The engine must
    refuse those over its cap without a thread and cut the idle ones, with
    its pipelines untouched; then a real request must be served again.
    """
    try:
        url = json.loads((work / "dlq" / "admin.json").read_text())["url"]
    except (OSError, ValueError, KeyError, TypeError):
        return "skipped (no admin.json)"
    parts = urllib.parse.urlsplit(url)
    host, port = parts.hostname, parts.port
    if host not in ("127.0.0.1", "::1", "localhost") or port is None:
        return f"skipped (not loopback: {url})"
    sockets: list[socket.socket] = []
    try:
        for _ in range(IDLE_FLOOD_CONNECTIONS):
            try:
                sockets.append(socket.create_connection((host, port), timeout=2))
            except OSError:
                break
        time.sleep(IDLE_FLOOD_SECONDS)
    finally:
        for s in sockets:
            s.close()
    deadline = time.monotonic() + 15
    while time.monotonic() < deadline:
        try:
            with urllib.request.urlopen(url + "/dlq/stats", timeout=5) as response:
                return f"opened={len(sockets)} served_after={response.status}"
        except OSError:
            time.sleep(0.2)
    return f"opened={len(sockets)} served_after=none"


def run(minutes: float, rate: float, seed: int, keep: bool, backend: str = "rocksq") -> int:
    rng = random.Random(seed)
    window = minutes * 60.0
    events = max(1000, int(rate * window * 0.9))
    work = Path(tempfile.mkdtemp(prefix="rosetta-soak-"))
    work.chmod(0o755)
    (work / "pg").mkdir()
    js = JetStreamSoak(work) if backend == "jetstream" else None
    cluster = PostgresCluster(work / "pg")
    server: PostgresServer = cluster.new_server()
    proxy = FaultProxy(server.host, server.port).start()
    source = SyntheticSource(
        "1", None, total_events=events, seed=seed, keys_per_table=KEYS_PER_TABLE
    )
    create_tables(server.dsn, source)
    write_pipelines(
        work / "pipelines.toml",
        events=events,
        rate=rate,
        seed=seed,
        keys=KEYS_PER_TABLE,
        batch_size=100,
        destination_options="connect_timeout = 2\nwrite_timeout = 5",
    )
    env = engine_env(
        work,
        proxy.dsn_for(server.dsn),
        DLQ_CHECK_INTERVAL="1",
        DLQ_BACKOFF_BASE_MS="100",
        DLQ_BACKOFF_MAX_MS="2000",
        DLQ_BATCH_SIZE="100",
        **(js.engine_settings() if js else {}),
    )
    position = js.source_position if js else lambda: source_position(work)
    log = work / "engine.log"
    engine = Engine(env, log)
    counts: dict[str, int] = {}
    print(f"soak: {minutes:g} min, {events} events at {rate:g}/s, {backend}, {work}", flush=True)
    try:
        engine.start()
        started = last_fault_ended = time.monotonic()
        # Faults go on for the window and, past it, until the source is fully
        # read: the synthetic source is rate-capped and cannot catch up the time
        # the engine spent stalled or restarting, so its tail is traffic, not drain.
        hard_stop = 2 * window + 600
        while True:
            engine.keep_running()
            time.sleep(rng.uniform(1.0, 3.0))  # a clear gap between faults
            elapsed = time.monotonic() - started
            if elapsed >= hard_stop or (elapsed >= window and position() >= events):
                break
            faults = [
                "pg_stop",
                "latency",
                "reset_mid",
                "reset",
                "blackhole",
                "terminate",
                "queue_dir_removed",
                "idle_flood",
            ]
            if elapsed < 0.6 * window:
                faults.append("kill9")
            if js:
                faults = js.faults(faults)
            fault = rng.choice(faults)
            hold = rng.uniform(1.0, 5.0)
            counts[fault] = counts.get(fault, 0) + 1
            if elapsed >= window:
                counts["after_window"] = counts.get("after_window", 0) + 1
            print(f"  t={elapsed:6.1f}s fault={fault} hold={hold:.1f}s", flush=True)
            if fault == "pg_stop":
                server.stop("immediate")
                time.sleep(hold)
                server.start()
            elif fault == "latency":
                proxy.set_latency(rng.uniform(10, 150))
                time.sleep(hold)
            elif fault == "reset_mid":
                proxy.reset(after_bytes=rng.randint(1, 20000))
                time.sleep(hold)
            elif fault == "reset":
                proxy.reset()
                time.sleep(min(hold, 1.0))
            elif fault == "blackhole":
                proxy.blackhole()
                time.sleep(hold)
            elif fault == "terminate":
                proxy.drop_after_commit(2)
                terminate_sessions(server.dsn)
                time.sleep(min(hold, 1.0))
            elif fault == "kill9":
                engine.kill9()
            elif fault == "nats_kill9" and js:
                print(f"    {js.kill_node(rng, hold)}", flush=True)
            elif fault == "idle_flood":
                print(f"    idle_flood: {idle_connection_flood(work)}", flush=True)
            elif fault == "queue_dir_removed" and engine.proc is not None:
                before = log.read_text(errors="replace").count("removed or moved away")
                # With PostgreSQL down, events pile up in the queues: the removed
                # directory then holds messages the engine must copy back.
                server.stop("immediate")
                time.sleep(hold)
                removed, segments = remove_queue_dir(work / "dlq", engine.proc.pid, rng)
                print(f"    removed {removed} (segments={segments})", flush=True)
                time.sleep(1.0)  # more events for it, into the deleted files
                server.start()
                if segments:
                    # Until the engine has copied the messages back, a kill -9
                    # would lose them with the deleted files: wait for its ERROR line.
                    deadline = time.monotonic() + hold + 30
                    while time.monotonic() < deadline:
                        if log.read_text(errors="replace").count("removed or moved away") > before:
                            break
                        time.sleep(0.1)
                    else:
                        print("    the engine did not report the removal", flush=True)
                        counts["queue_dir_removed_unnoticed"] = (
                            counts.get("queue_dir_removed_unnoticed", 0) + 1
                        )
            proxy.pass_through()
            last_fault_ended = time.monotonic()
        # Clear every fault, then wait for the engine to drain and exit by itself.
        proxy.clear()
        if not server.is_running():
            server.start()
        # The drain counts from the end of the last fault, not from this
        # final clear: the engine may have drained in the gap after it.
        cleared = last_fault_ended
        drain_deadline = cleared + 600
        while True:
            assert engine.proc is not None
            code = engine.proc.poll()
            if code == 0:
                break
            if code is not None:
                engine.bad_exits.append(code)
                engine.start()
            elif js and js.drained(events, server.dsn, source):  # it runs on: stop it
                code = js.stop_engine(engine.proc)
                if code != 0:
                    engine.bad_exits.append(code)
                break
            if time.monotonic() > drain_deadline:
                print("soak: the engine did not drain within 600 s", flush=True)
                break
            time.sleep(0.1)
        drain_seconds = time.monotonic() - cleared
        engine.stop_sampling()
        expected = source.expected_state()
        actual = fetch_state(server.dsn, DEFAULT_TABLES)
        lost = 0
        for table in DEFAULT_TABLES:
            want, got = expected.get(table, {}), actual.get(table, {})
            lost += len(want.keys() - got.keys()) + len(got.keys() - want.keys())
            lost += sum(1 for k in want.keys() & got.keys() if want[k] != got[k])
        queued, parked = js.leftovers() if js else queue_leftovers(work / "dlq")
        text = log.read_text(errors="replace")
        matches = int(lost == 0 and not queued and not parked)
        print(
            f"soak: faults={dict(sorted(counts.items()))} kills={engine.kills} "
            f"restarts={engine.restarts} bad_exits={engine.bad_exits} "
            f"node_kills={js.node_kills if js else 0} "
            f"proxy_commits_dropped={proxy.commits_dropped} "
            f"proxy_mid_stream_resets={proxy.resets_mid_stream} "
            f"queued={queued} parked={parked} tracebacks={text.count('Traceback')} "
            f"rows={sum(len(v) for v in expected.values())}",
            flush=True,
        )
        print(f"soak: engine RSS MiB over its life: {engine.rss_curve()}", flush=True)
        print(f"RESULT soak_lost_events={lost}")
        print(f"RESULT soak_final_state_matches={matches}")
        print(f"RESULT soak_rss_growth_pct={engine.rss_growth_pct():.1f}")
        print(f"RESULT soak_drain_seconds_after_last_fault={drain_seconds:.1f}")
        return 0 if matches else 1
    finally:
        engine.stop_sampling()
        if engine.proc is not None and engine.proc.poll() is None:
            engine.proc.kill()
            engine.proc.wait()
        proxy.stop()
        cluster.close()
        if js:
            js.close()
        if keep:
            print(f"soak: kept {work}")
        else:
            shutil.rmtree(work, ignore_errors=True)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--minutes", type=float, required=True, help="length of the fault window")
    parser.add_argument("--rate", type=float, default=200.0, help="source events per second")
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--keep", action="store_true", help="keep the work dir (logs, DLQ)")
    parser.add_argument("--backend", choices=["rocksq", "jetstream"], default="rocksq")
    args = parser.parse_args()
    if args.minutes <= 0:
        parser.error(f"--minutes {args.minutes}: expected a positive number of minutes")
    if args.rate <= 0:
        parser.error(f"--rate {args.rate}: expected a positive number of events per second")
    os.environ.setdefault("PYTHONUNBUFFERED", "1")
    return run(args.minutes, args.rate, args.seed, args.keep, args.backend)


if __name__ == "__main__":
    sys.exit(main())
