"""Tests of ``SyntheticSource``: determinism, a valid history, expected state, resume, DDL."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from compute.sources.base import SourceError
from compute.sources.offset_store import OffsetStore
from compute.sources.synthetic_source import (
    DEFAULT_TABLES,
    SyntheticSource,
    create_table_sql,
    primary_key,
    table_columns,
)
from destinations.records import ChangeRecord, Operation

Model = dict[str, dict[tuple[Any, ...], dict[str, Any]]]


def read_all(source: SyntheticSource, batch: int = 97) -> list[ChangeRecord]:
    records: list[ChangeRecord] = []
    while not source.exhausted:
        records.extend(source.read(batch).records)
    return records


def apply(records: list[ChangeRecord], tables: tuple[str, ...] = DEFAULT_TABLES) -> Model:
    """Apply a history to a dict model, checking it is valid CDC as it goes."""
    model: Model = {t: {} for t in tables}
    for r in records:
        rows = model[r.table]
        key = r.key_values
        if r.op is Operation.INSERT:
            assert key not in rows, f"insert of existing key {r}"
        else:
            assert key in rows, f"{r.op.name} of missing key {r}"
            assert r.before == rows[key]  # before is the row as it was
        if r.op is Operation.DELETE:
            assert r.after is None
            del rows[key]
        else:
            assert r.after is not None
            assert tuple(r.after[c] for c in primary_key(r.table)) == key
            assert list(r.after) == list(table_columns(r.table))
            rows[key] = dict(r.after)
    return model


def test_same_seed_same_events_other_seed_other_events() -> None:
    a = read_all(SyntheticSource("s", None, total_events=500, seed=7))
    b = read_all(SyntheticSource("s", None, total_events=500, seed=7), batch=500)
    c = read_all(SyntheticSource("s", None, total_events=500, seed=8))
    assert a == b  # batch size does not matter either
    assert a != c
    assert len(a) == 500


def test_history_is_valid_and_positions_increase() -> None:
    records = read_all(SyntheticSource("s", None, total_events=3000, keys_per_table=20))
    apply(records)
    positions = [r.position for r in records]
    assert all(p < q for p, q in zip(positions, positions[1:], strict=False))
    commits: dict[int, list[int]] = {}
    for p in positions:
        commits.setdefault(p.commit, []).append(p.seq)
    assert all(seqs == list(range(len(seqs))) for seqs in commits.values())
    assert {len(s) for s in commits.values()} == {1, 2, 3, 4, 5}
    ops = {r.op for r in records}
    assert ops == {Operation.INSERT, Operation.UPDATE, Operation.DELETE}
    deletes = sum(r.op is Operation.DELETE for r in records) / len(records)
    assert 0.03 < deletes < 0.15
    assert all(r.commit_ts is not None for r in records)


def test_expected_state_matches_the_applied_history() -> None:
    source = SyntheticSource("s", None, total_events=2000, seed=3, keys_per_table=30)
    records = read_all(source)
    assert source.expected_state() == apply(records)
    assert source.expected_state(upto=777) == apply(records[:777])
    assert source.expected_state(upto=0) == {t: {} for t in DEFAULT_TABLES}
    state = source.expected_state()
    assert all(0 < len(rows) <= 30 for rows in state.values())
    assert all(len(key) == 2 for key in state["public.orders"])  # composite key


def test_restart_at_a_token_continues_identically(tmp_path: Path) -> None:
    reference = read_all(SyntheticSource("s", None, total_events=400, seed=5))
    offsets = OffsetStore(tmp_path / "offsets.json")
    first = SyntheticSource("s", offsets, total_events=400, seed=5)
    taken: list[ChangeRecord] = []
    for _ in range(3):
        batch = first.read(45)
        taken.extend(batch.records)
    first.acknowledge(batch.resume_token)
    assert batch.resume_token == "135"
    unacked = first.read(30).records  # read but never acknowledged
    assert taken + list(unacked) == reference[:165]

    second = SyntheticSource("s", OffsetStore(tmp_path / "offsets.json"), total_events=400, seed=5)
    assert second.position == 135
    assert read_all(second, batch=64) == reference[135:]


def test_resume_at_every_index_including_mid_transaction(tmp_path: Path) -> None:
    reference = read_all(SyntheticSource("s", None, total_events=40, seed=2))
    offsets = OffsetStore(tmp_path / "offsets.json")
    mid_transaction = 0
    for index in range(41):
        offsets.put("s", str(index))
        resumed = read_all(SyntheticSource("s", offsets, total_events=40, seed=2), batch=7)
        assert resumed == reference[index:]
        if 0 < index < 40 and resumed[0].position.seq > 0:
            mid_transaction += 1
    assert mid_transaction > 5


def test_token_validation(tmp_path: Path) -> None:
    offsets = OffsetStore(tmp_path / "offsets.json")
    source = SyntheticSource("s", offsets, total_events=10)
    source.read(3)
    with pytest.raises(SourceError, match="never read"):
        source.acknowledge("5")
    with pytest.raises(SourceError, match="bad synthetic resume token"):
        source.acknowledge("x")
    offsets.put("s", "11")
    with pytest.raises(SourceError, match="bad synthetic resume token"):
        SyntheticSource("s", offsets, total_events=10)


def test_exhausted_after_total_events_and_endless_without() -> None:
    source = SyntheticSource("s", None, total_events=5)
    assert len(source.read(100).records) == 5
    assert source.exhausted
    assert source.read(100).records == []
    assert SyntheticSource("s", None, total_events=0).exhausted
    endless = SyntheticSource("s", None, total_events=None)
    assert len(endless.read(50).records) == 50 and not endless.exhausted
    with pytest.raises(ValueError, match="upto"):
        endless.expected_state()


def test_throttle_follows_the_injected_clock() -> None:
    now = [100.0]
    source = SyntheticSource(
        "s", None, total_events=None, events_per_second=50, clock=lambda: now[0]
    )
    assert source.read(1000).records == []  # no time has passed
    now[0] += 0.1
    assert len(source.read(1000).records) == 5
    now[0] += 0.5
    assert len(source.read(10).records) == 10  # max_events still caps
    assert len(source.read(1000).records) == 15
    now[0] += 60  # a stalled reader catches up one second, not a minute
    assert len(source.read(10_000).records) == 50


@pytest.mark.parametrize(
    "kwargs",
    [
        {"tables": ()},
        {"tables": ("a", "a")},
        {"tables": "public.users"},
        {"total_events": -1},
        {"keys_per_table": 0},
        {"delete_ratio": 1.0},
        {"events_per_second": 0},
    ],
)
def test_bad_options_are_refused(kwargs: dict[str, Any]) -> None:
    options: dict[str, Any] = {"total_events": 10, **kwargs}
    with pytest.raises(ValueError):
        SyntheticSource("s", None, **options)


def test_generic_table_layout() -> None:
    source = SyntheticSource("s", None, total_events=50, tables=("inventory.widgets",))
    records = read_all(source)
    assert {r.table for r in records} == {"inventory.widgets"}
    apply(records, ("inventory.widgets",))
    assert primary_key("inventory.widgets") == ("id",)


def test_create_table_sql_text() -> None:
    text = create_table_sql("public.orders")
    assert text.startswith('CREATE TABLE IF NOT EXISTS "public"."orders" (')
    assert 'PRIMARY KEY ("customer_id", "order_no")' in text
    assert '"note" text,' in text and '"amount" numeric(14,2) NOT NULL' in text
    assert "_rosetta_commit" not in text
    guarded = create_table_sql("public.users", target="other.people", position_columns=True)
    assert '"other"."people"' in guarded
    assert '"_rosetta_commit" bigint' in guarded and '"_rosetta_seq" bigint' in guarded
    assert create_table_sql("plain").startswith('CREATE TABLE IF NOT EXISTS "plain" (')
    source = SyntheticSource("s", None, total_events=1)
    assert len(source.create_tables_sql()) == 3


def test_regenerating_many_events_is_fast_enough() -> None:
    """Restart replays the stream up to its token; 20k events must stay well under a second."""
    import time

    began = time.perf_counter()
    SyntheticSource("s", None, total_events=20_000).expected_state()
    assert time.perf_counter() - began < 2.0  # ~0.25 s measured on a slow 2-core machine


def test_postgres_round_trip_equals_expected_state(
    postgres_dsn: str, pg_conn: Any, pg_schema: str
) -> None:
    """The DDL runs on PostgreSQL and the generated values come back equal to expected_state."""
    import psycopg2.extras
    from psycopg2 import sql

    from destinations.postgresql.destination import PostgreSQLDestination

    source = SyntheticSource("s", None, total_events=1500, seed=11, keys_per_table=40)
    targets = {t: f"{pg_schema}.{t.rpartition('.')[2]}" for t in source.tables}
    with pg_conn.cursor() as cur:
        for table, target in targets.items():
            cur.execute(create_table_sql(table, target=target, position_columns=True))
    destination = PostgreSQLDestination(
        "d1", "pg", postgres_dsn, table_map=targets, position_guard=True, copy_threshold=50
    )
    try:
        while not source.exhausted:
            records = source.read(173).records
            for table in source.tables:
                mine = [r for r in records if r.table == table]
                if mine:
                    destination.write_batch(table, mine)
    finally:
        destination.close()

    psycopg2.extras.register_uuid(conn_or_curs=pg_conn)
    expected = source.expected_state()
    for table, target in targets.items():
        columns = table_columns(table)
        schema, name = target.split(".")
        with pg_conn.cursor() as cur:
            cur.execute(
                sql.SQL("SELECT {} FROM {}").format(
                    sql.SQL(", ").join(map(sql.Identifier, columns)), sql.Identifier(schema, name)
                )
            )
            got = {
                tuple(row[: len(primary_key(table))]): dict(zip(columns, row, strict=True))
                for row in cur.fetchall()
            }
        assert got == expected[table], table
