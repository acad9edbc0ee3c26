"""Hostile change events through the JSON-lines source and the pipeline, into a real PostgreSQL.

Each bad event is rejected by the source or parked by the pipeline with an
error that says what is wrong, and the events after it still arrive.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

from psycopg2 import sql

from compute.dlq.manager import DLQManager
from compute.engine.pipeline import Pipeline, PipelineState
from compute.queue_id import QueueId
from compute.runtime.retry_policy import RetryPolicy
from compute.sources.jsonl_source import JsonLinesSource
from destinations.postgresql.destination import PostgreSQLDestination
from tests.builders import dlq_config
from tests.waiting import wait_until

NO_RETRY = RetryPolicy(max_retries=0, base_delay=0.01, max_delay=0.01)


def event(
    schema: str, table: str, key: Any, after: dict[str, Any] | None, lsn: int, **kw: Any
) -> str:
    doc: dict[str, Any] = {
        "op": "u",
        "after": after,
        "source": {"schema": schema, "table": table, "lsn": lsn, **kw.pop("source", {})},
    }
    if key is not None:
        doc["key"] = key
    doc.update(kw)
    return json.dumps(doc)


def rows(conn: Any, schema: str, table: str) -> dict[int, Any]:
    with conn.cursor() as cur:
        cur.execute(sql.SQL("SELECT id, v FROM {}").format(sql.Identifier(schema, table)))
        return dict(cur.fetchall())


EMOJI_RTL = "עברית_\u202e😀"  # Hebrew, a right-to-left override and an emoji: a valid PG name


def test_hostile_events_are_rejected_or_parked_and_later_events_arrive(
    tmp_path: Path, postgres_dsn: str, pg_schema: str, pg_conn: Any
) -> None:
    s = pg_schema
    with pg_conn.cursor() as cur:
        for table in ("items", EMOJI_RTL):
            cur.execute(
                sql.SQL("CREATE TABLE {} (id integer PRIMARY KEY, v integer)").format(
                    sql.Identifier(s, table)
                )
            )
        cur.execute(
            sql.SQL("CREATE TABLE {} (id integer PRIMARY KEY, v text)").format(
                sql.Identifier(s, "notes")
            )
        )
    lines = [
        event(s, "items", {"id": 1}, {"id": 1, "v": 10}, 1),
        # missing primary key: no key, no source.pk, none configured
        event(s, "items", None, {"id": 9, "v": 9}, 2),
        # primary key column named but missing from the row
        event(s, "items", None, {"v": 9}, 3, source={"pk": ["id"]}),
        # null primary key
        event(s, "items", {"id": None}, {"id": None, "v": 9}, 4),
        # wrong type for the destination column: parked by PostgreSQL's 22P02
        event(s, "items", {"id": 2}, {"id": 2, "v": "twenty"}, 5),
        # a later change to the parked key waits behind it
        event(s, "items", {"id": 2}, {"id": 2, "v": 21}, 6),
        # a NUL inside a text value: PostgreSQL text cannot hold it
        event(s, "notes", {"id": 1}, {"id": 1, "v": "a\u0000b"}, 7),
        # table names: NUL, a lone surrogate (not UTF-8), path tricks, very long
        event(s, "it\u0000ems", {"id": 3}, {"id": 3, "v": 3}, 8),
        event(s, "it\udc80ems", {"id": 3}, {"id": 3, "v": 3}, 9),
        event(s, "../../../etc", {"id": 3}, {"id": 3, "v": 3}, 10),
        event(s, "a/b\\c", {"id": 3}, {"id": 3, "v": 3}, 11),
        event(s, "x" * 300, {"id": 3}, {"id": 3, "v": 3}, 12),
        # a right-to-left, emoji table name that exists: it must simply work
        event(s, EMOJI_RTL, {"id": 5}, {"id": 5, "v": 50}, 13),
        event(s, "items", {"id": 3}, {"id": 3, "v": 30}, 14),
        event(s, "notes", {"id": 2}, {"id": 2, "v": "fine"}, 15),
    ]
    path = tmp_path / "events.jsonl"
    with open(path, "wb") as out:
        for line in lines[:7]:
            out.write(line.encode("utf-8", "surrogatepass") + b"\n")
        out.write(b'{"op": "u", "after": {"id": 4, "v": "\xff\xfe"}}\n')  # not UTF-8
        for line in lines[7:]:
            out.write(line.encode("utf-8", "surrogatepass") + b"\n")
    config = dlq_config(tmp_path)
    source = JsonLinesSource("1", path, None, rejected_path=tmp_path / "rejected.jsonl")
    destination = PostgreSQLDestination("1", "PG", postgres_dsn)
    with DLQManager(config, background=False) as dlq:
        pipeline = Pipeline(
            # one event per batch: a batch's net effect would let the later change
            # to key 2 supersede the bad one before PostgreSQL sees it
            "p",
            source,
            [destination],
            dlq,
            config,
            batch_size=1,
            retry_policy=NO_RETRY,
        )
        while pipeline.step():
            pass
        assert pipeline.state is not PipelineState.FAILED
        assert source.exhausted

        # later good events arrived, in every table
        assert rows(pg_conn, s, "items") == {1: 10, 3: 30}
        assert rows(pg_conn, s, "notes") == {2: "fine"}
        assert rows(pg_conn, s, EMOJI_RTL) == {5: 50}

        # rejected by the source, each with what is wrong
        reasons = [r.reason for r in source.rejected]
        assert any(f"no primary key for table {s}.items" in r for r in reasons)
        assert "primary key column 'id' missing from 'after'" in reasons
        assert "primary key column 'id' is null in 'key'" in reasons
        assert any(r.startswith("not UTF-8") for r in reasons)
        assert any("'source.table' contains a NUL character" in r for r in reasons)
        assert any("'source.table' is not valid Unicode" in r for r in reasons)
        assert len(reasons) == 6
        assert len((tmp_path / "rejected.jsonl").read_text().splitlines()) == 6

        # parked by the pipeline, with the destination's reason
        items = QueueId("1", f"{s}.items", "1")
        parked = dlq.peek(items.parked, 10)
        assert [(m.record.key["id"], m.failure.error_class) for m in parked] == [
            (2, "InvalidTextRepresentation"),
            (2, "HeldBehindParkedChange"),
        ]
        assert parked[0].failure.code == "22P02"
        assert "twenty" in parked[0].failure.message
        [nul_value] = dlq.peek(QueueId("1", f"{s}.notes", "1").parked, 10)
        assert "NUL" in nul_value.failure.message
        missing_tables = [
            QueueId("1", f"{s}.{t}", "1") for t in ("../../../etc", "a/b\\c", "x" * 300)
        ]
        for queue in missing_tables:
            # a missing table fails every change the same way: held in order, not parked
            [missing] = dlq.peek(queue, 10)
            assert missing.failure.code == "42P01", missing.failure  # undefined table
            assert missing.record.table == queue.table
            assert not dlq.parked_count(queue)
            hold = dlq.holds.of(queue)
            assert hold is not None and hold.code == "42P01"
        # nothing else is left queued, the destination was never taken for down
        assert not any(
            dlq.has_messages(q) for q in dlq.list_queues() if not q.lane and q not in missing_tables
        )
        assert all(h.snapshot().state.value == "healthy" for h in pipeline.health.values())
        # every queue directory stayed inside the base path, one level per part
        base = Path(config.base_path).resolve()
        for queue in dlq.list_queues():
            where = (base / queue.relative_path).resolve()
            assert where.is_relative_to(base)
            assert len(where.relative_to(base).parts) == (4 if queue.lane else 3)
        assert sorted(os.listdir(base.parent)) == sorted(["dlq", "events.jsonl", "rejected.jsonl"])
        pipeline.close()


def test_row_over_the_message_limit_is_parked_whole_naming_limit_and_size(
    tmp_path: Path, postgres_server_factory: Any
) -> None:
    server = postgres_server_factory()
    import psycopg2

    conn = psycopg2.connect(server.dsn)
    conn.autocommit = True
    with conn.cursor() as cur:
        cur.execute("CREATE TABLE public.docs (id integer PRIMARY KEY, v text)")
    conn.close()
    huge = "x" * 200_000
    lines = [
        event("public", "docs", {"id": 1}, {"id": 1, "v": "small"}, 1),
        event("public", "docs", {"id": 2}, {"id": 2, "v": huge}, 2),
        event("public", "docs", {"id": 2}, {"id": 2, "v": "after the huge one"}, 3),
        event("public", "docs", {"id": 3}, {"id": 3, "v": "also small"}, 4),
    ]
    path = tmp_path / "events.jsonl"
    path.write_text("".join(line + "\n" for line in lines))
    limit = 64 * 1024
    config = dlq_config(tmp_path, max_message_bytes=limit, check_interval=0.2)
    destination = PostgreSQLDestination("1", "PG", server.dsn, connect_timeout=1)
    dlq = DLQManager(config)
    source = JsonLinesSource("1", path, None)
    pipeline = Pipeline(
        "p",
        source,
        [destination],
        dlq,
        config,
        batch_size=10,
        retry_policy=NO_RETRY,
        probe_timeout=1,
    )
    queue = QueueId("1", "public.docs", "1")
    server.stop("immediate")  # an outage: the batch goes to the DLQ
    try:
        while pipeline.step():
            pass
        assert dlq.store.count(queue) == 2  # the two small ones, never part of the huge one
        parked = dlq.peek(queue.parked, 10)
        assert [m.record.key["id"] for m in parked] == [2, 2]
        too_large = parked[0].failure
        assert too_large.error_class == "MessageTooLarge"
        assert f"over DLQ_MAX_MESSAGE_BYTES ({limit} bytes)" in too_large.message
        size = int(too_large.message.split("change of ")[1].split(" bytes")[0])
        assert size > 200_000
        assert parked[0].record.after == {"id": 2, "v": huge}  # kept whole
        assert parked[1].failure.error_class == "HeldBehindParkedChange"

        server.start()
        pipeline.worker.start()
        wait_until(lambda: not dlq.has_messages(queue), 60, "not dlq.has_messages(queue)")
        conn = psycopg2.connect(server.dsn)
        with conn.cursor() as cur:
            cur.execute("SELECT id, v FROM public.docs ORDER BY id")
            assert cur.fetchall() == [(1, "small"), (3, "also small")]
        conn.close()
    finally:
        pipeline.stop(5)
        pipeline.close()
        dlq.close()


def test_enqueue_refuses_a_batch_with_an_oversized_message_storing_nothing(
    tmp_path: Path,
) -> None:
    from compute.codec.failure_context import FailureContext
    from compute.codec.message import DLQMessage
    from compute.errors import MessageTooLargeError
    from tests.builders import change

    queue = QueueId("1", "public.docs", "1")
    failure = FailureContext("OperationalError", "down")
    with DLQManager(dlq_config(tmp_path, max_message_bytes=4096), background=False) as dlq:
        batch = [
            DLQMessage.create(queue, change(1, 1, table=queue.table), failure),
            DLQMessage.create(queue, change(2, 2, table=queue.table, blob="y" * 5000), failure),
        ]
        try:
            dlq.enqueue(queue, batch)
        except MessageTooLargeError as error:
            assert error.message_id == batch[1].message_id
            assert error.limit == 4096 and error.size > 5000
            assert f"is {error.size} bytes, over DLQ_MAX_MESSAGE_BYTES (4096 bytes)" in str(error)
        else:
            raise AssertionError("an oversized message was accepted")
        assert dlq.store.count(queue) == 0  # all or nothing
        dlq.enqueue(queue, batch[:1])
        assert dlq.store.count(queue) == 1
