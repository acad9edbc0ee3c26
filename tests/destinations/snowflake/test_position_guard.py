"""The position guard on Snowflake, against fakesnow through the real connector.

Out-of-order replays never move a row backwards (an older update, an older
insert after a delete or after a truncate), duplicates are no-ops, rows
written before the guard count as oldest, and the INSERT and the staged
(PUT + COPY) paths end with the same tables, side tables included.
"""

from __future__ import annotations

import random
from collections.abc import Callable
from typing import Any

import pytest

from destinations.errors import FailureKind, TableLevelDestinationError
from destinations.records import ChangeRecord, Operation, SourcePosition
from destinations.snowflake.destination import SnowflakeDestination
from tests.builders import delete, upsert
from tests.destinations.snowflake import test_destination as shared

pytestmark = pytest.mark.filterwarnings("ignore:Arrow output on a DB-API result:UserWarning")

DATABASE, run, counted_statements = shared.DATABASE, shared.run, shared.counted_statements
sf_admin, sf_schema, make_destination = shared.sf_admin, shared.sf_schema, shared.make_destination

SRC = "public.src"
GUARDED = "ID INT, NAME VARCHAR, QTY INT, _ROSETTA_COMMIT NUMBER(19,0), _ROSETTA_SEQ NUMBER(19,0)"
PATHS = {"values": 10**9, "staged": 1}


def truncate(commit: int, seq: int = 0) -> ChangeRecord:
    return ChangeRecord(SRC, Operation.TRUNCATE, {}, None, SourcePosition(commit, seq))


def up(key: int, name: str, commit: int, seq: int = 0) -> ChangeRecord:
    return upsert(key, {"name": name, "qty": commit}, commit, seq, table=SRC)


def rm(key: int, commit: int, seq: int = 0) -> ChangeRecord:
    return delete(key, commit, seq, table=SRC)


def guarded(
    sf_admin: Any,
    sf_schema: str,
    make_destination: Callable[..., SnowflakeDestination],
    path: str,
    table: str = "T",
    definitions: str = GUARDED,
) -> SnowflakeDestination:
    run(sf_admin, f'CREATE TABLE {DATABASE}.{sf_schema}."{table}" ({definitions})')
    return make_destination(
        sf_schema, table_map={SRC: table}, stage_threshold_rows=PATHS[path], position_guard=True
    )


def rows(sf_admin: Any, sf_schema: str, table: str = "T") -> list[tuple[Any, ...]]:
    return run(sf_admin, f"SELECT * FROM {DATABASE}.{sf_schema}.{table} ORDER BY 1")


def tombstones(sf_admin: Any, sf_schema: str, table: str = "T") -> list[tuple[Any, ...]]:
    return rows(sf_admin, sf_schema, f'"{table}__ROSETTA_TOMBSTONES"')


@pytest.fixture(params=sorted(PATHS))
def path(request: pytest.FixtureRequest) -> str:
    return str(request.param)


def test_an_older_update_never_overwrites_a_newer_row(
    sf_admin: Any, sf_schema: str, make_destination: Callable[..., SnowflakeDestination], path: str
) -> None:
    dest = guarded(sf_admin, sf_schema, make_destination, path)
    dest.write_batch(SRC, [up(1, "new", 20), up(2, "two", 5, 3)])
    dest.write_batch(SRC, [up(1, "old", 10), up(2, "older seq", 5, 2), up(3, "three", 7)])
    assert rows(sf_admin, sf_schema) == [
        (1, "new", 20, 20, 0),
        (2, "two", 5, 5, 3),
        (3, "three", 7, 7, 0),
    ]
    dest.write_batch(SRC, [up(1, "newer", 20, 1), up(2, "newer commit", 6)])
    assert rows(sf_admin, sf_schema)[:2] == [(1, "newer", 20, 20, 1), (2, "newer commit", 6, 6, 0)]


def test_an_older_insert_after_a_delete_does_not_resurrect_the_row(
    sf_admin: Any, sf_schema: str, make_destination: Callable[..., SnowflakeDestination], path: str
) -> None:
    dest = guarded(sf_admin, sf_schema, make_destination, path)
    dest.write_batch(SRC, [up(1, "a", 10), up(2, "b", 10, 1)])
    dest.write_batch(SRC, [rm(1, 20), rm(3, 21)])  # 3 never existed: a tombstone all the same
    assert rows(sf_admin, sf_schema) == [(2, "b", 10, 10, 1)]
    assert tombstones(sf_admin, sf_schema) == [(1, 20, 0), (3, 21, 0)]

    dest.write_batch(SRC, [up(1, "replayed", 15), up(3, "replayed", 21), rm(2, 9)])
    assert rows(sf_admin, sf_schema) == [(2, "b", 10, 10, 1)]  # the older delete left 2 alone
    assert tombstones(sf_admin, sf_schema) == [(1, 20, 0), (3, 21, 0)]
    dest.write_batch(SRC, [rm(1, 18)])  # an older delete leaves the newer tombstone
    assert tombstones(sf_admin, sf_schema) == [(1, 20, 0), (3, 21, 0)]

    dest.write_batch(SRC, [up(1, "back", 30)])  # newer: the row comes back, its tombstone goes
    assert rows(sf_admin, sf_schema) == [(1, "back", 30, 30, 0), (2, "b", 10, 10, 1)]
    assert tombstones(sf_admin, sf_schema) == [(3, 21, 0)]


def test_an_older_insert_after_a_truncate_stays_out(
    sf_admin: Any, sf_schema: str, make_destination: Callable[..., SnowflakeDestination], path: str
) -> None:
    dest = guarded(sf_admin, sf_schema, make_destination, path)
    dest.write_batch(SRC, [up(1, "a", 5), up(2, "b", 6), rm(3, 7)])
    dest.write_batch(SRC, [truncate(10)])
    assert rows(sf_admin, sf_schema) == []
    assert tombstones(sf_admin, sf_schema) == []  # the watermark refuses all they did
    marks = rows(sf_admin, sf_schema, "_ROSETTA_TRUNCATES")
    assert [m[:3] for m in marks] == [("T", 10, 0)]

    dest.write_batch(SRC, [up(1, "replayed", 5), up(4, "before", 9), rm(2, 8)])
    assert rows(sf_admin, sf_schema) == []
    assert tombstones(sf_admin, sf_schema) == []
    dest.write_batch(SRC, [up(4, "after", 12), truncate(10)])  # a truncate delivered again
    assert rows(sf_admin, sf_schema) == [(4, "after", 12, 12, 0)]


def test_an_older_truncate_arriving_late_spares_the_newer_rows(
    sf_admin: Any, sf_schema: str, make_destination: Callable[..., SnowflakeDestination], path: str
) -> None:
    dest = guarded(sf_admin, sf_schema, make_destination, path)
    dest.write_batch(SRC, [up(1, "old", 5), up(2, "new", 20)])
    run(sf_admin, f"INSERT INTO {DATABASE}.{sf_schema}.T (ID, NAME) VALUES (3, 'unguarded')")
    dest.write_batch(SRC, [truncate(10)])
    assert rows(sf_admin, sf_schema) == [(2, "new", 20, 20, 0)]
    dest.write_batch(SRC, [truncate(8)])  # older than the mark: skipped
    assert rows(sf_admin, sf_schema) == [(2, "new", 20, 20, 0)]
    marks = rows(sf_admin, sf_schema, "_ROSETTA_TRUNCATES")
    assert [m[:3] for m in marks] == [("T", 10, 0)]


def test_duplicates_are_no_ops_and_rows_without_a_position_count_as_oldest(
    sf_admin: Any, sf_schema: str, make_destination: Callable[..., SnowflakeDestination], path: str
) -> None:
    dest = guarded(sf_admin, sf_schema, make_destination, path)
    run(
        sf_admin,
        f"INSERT INTO {DATABASE}.{sf_schema}.T (ID, NAME, QTY) "
        "VALUES (1, 'pre-guard', 0), (2, 'pre-guard', 0)",
    )
    batch = [up(1, "guarded", 1), rm(2, 2), up(3, "c", 3), rm(9, 4)]
    dest.write_batch(SRC, batch)
    first = (rows(sf_admin, sf_schema), tombstones(sf_admin, sf_schema))
    assert first == ([(1, "guarded", 1, 1, 0), (3, "c", 3, 3, 0)], [(2, 2, 0), (9, 4, 0)])
    for _ in range(2):
        dest.write_batch(SRC, batch)
        dest.write_batch(SRC, batch[::-1])
        assert (rows(sf_admin, sf_schema), tombstones(sf_admin, sf_schema)) == first


def history(seed: int) -> list[ChangeRecord]:
    """A random history of 3 keys: upserts, deletes and truncates, positions increasing."""
    pick = random.Random(seed)
    changes: list[ChangeRecord] = []
    for commit in range(1, 61):
        roll = pick.random()
        key = pick.randrange(3)
        if roll < 0.05:
            changes.append(truncate(commit))
        elif roll < 0.3:
            changes.append(rm(key, commit))
        else:
            changes.append(up(key, f"v{commit}", commit))
    return changes


def in_order(changes: list[ChangeRecord]) -> list[tuple[Any, ...]]:
    """The table the history gives applied once, in order."""
    table: dict[int, tuple[Any, ...]] = {}
    for change in changes:
        if change.op is Operation.TRUNCATE:
            table.clear()
        elif change.op is Operation.DELETE:
            table.pop(change.key["id"], None)
        else:
            assert change.after is not None
            commit = change.position.commit
            table[change.key["id"]] = (change.key["id"], change.after["name"], commit, commit, 0)
    return [table[k] for k in sorted(table)]


@pytest.mark.parametrize("seed", [1, 2])
def test_replays_in_any_order_end_as_the_history_on_both_paths(
    sf_admin: Any, sf_schema: str, make_destination: Callable[..., SnowflakeDestination], seed: int
) -> None:
    """The history in order, then shuffled batches of it again: both paths end the same."""
    changes = history(seed)
    dests = {p: guarded(sf_admin, sf_schema, make_destination, p, table=f"T_{p}") for p in PATHS}
    pick = random.Random(seed)
    replays = [pick.sample(changes, 8) for _ in range(6)]
    for dest in dests.values():
        for start in range(0, len(changes), 7):
            dest.write_batch(SRC, changes[start : start + 7])
        for replay in replays:
            # A replayed batch keeps its own order by position inside (as a queue would).
            dest.write_batch(SRC, sorted(replay, key=lambda c: c.position))
    want = in_order(changes)
    assert rows(sf_admin, sf_schema, '"T_values"') == want
    assert rows(sf_admin, sf_schema, '"T_staged"') == want
    assert tombstones(sf_admin, sf_schema, "T_values") == tombstones(
        sf_admin, sf_schema, "T_staged"
    )


def test_a_composite_key_gets_its_tombstone_table_with_the_key_types(
    sf_admin: Any, sf_schema: str, make_destination: Callable[..., SnowflakeDestination], path: str
) -> None:
    dest = guarded(
        sf_admin,
        sf_schema,
        make_destination,
        path,
        definitions="REGION VARCHAR(8), ID INT, NAME VARCHAR, "
        "_rosetta_commit NUMBER(19,0), _rosetta_seq NUMBER(19,0)",
    )
    key = {"region": "eu", "id": 1}
    dest.write_batch(SRC, [upsert(key, {"name": "a"}, 10, table=SRC)])
    dest.write_batch(SRC, [delete(key, 11, table=SRC)])
    dest.write_batch(SRC, [upsert(key, {"name": "replayed"}, 10, table=SRC)])
    assert rows(sf_admin, sf_schema) == []
    assert tombstones(sf_admin, sf_schema) == [("eu", 1, 11, 0)]
    described = run(sf_admin, f'DESCRIBE TABLE {DATABASE}.{sf_schema}."T__ROSETTA_TOMBSTONES"')
    assert [(r[0], r[1]) for r in described][:2] == [
        ("REGION", "VARCHAR(8)"),
        ("ID", "NUMBER(38,0)"),
    ]


def test_missing_guard_columns_hold_the_table_naming_the_ddl(
    sf_admin: Any, sf_schema: str, make_destination: Callable[..., SnowflakeDestination]
) -> None:
    run(
        sf_admin,
        f"CREATE TABLE {DATABASE}.{sf_schema}.T (ID INT, NAME VARCHAR, QTY INT, _ROSETTA_SEQ INT)",
    )
    dest = make_destination(sf_schema, table_map={SRC: "T"}, position_guard=True)
    with pytest.raises(TableLevelDestinationError) as caught:
        dest.write_batch(SRC, [up(1, "a", 1)])
    message = str(caught.value)
    assert "guard columns missing from target table" in message and "_rosetta_commit" in message
    assert "ALTER TABLE" in message and "ADD COLUMN _ROSETTA_COMMIT NUMBER(19,0)" in message
    assert "_ROSETTA_SEQ NUMBER(19,0)" not in message  # only what is missing
    assert dest.classify_error(caught.value).kind is FailureKind.TABLE
    with pytest.raises(TableLevelDestinationError):
        dest.write_batch(SRC, [truncate(2)])
    # The documented fix, then the held changes go through.
    run(sf_admin, f"ALTER TABLE {DATABASE}.{sf_schema}.T ADD COLUMN _ROSETTA_COMMIT NUMBER(19,0)")
    dest.write_batch(SRC, [up(1, "a", 1)])
    assert run(sf_admin, f"SELECT ID, NAME FROM {DATABASE}.{sf_schema}.T") == [(1, "a")]


def test_a_guarded_batch_is_a_handful_of_statements_on_either_path(
    sf_admin: Any, sf_schema: str, make_destination: Callable[..., SnowflakeDestination], path: str
) -> None:
    dest = guarded(sf_admin, sf_schema, make_destination, path)
    dest.write_batch(SRC, [up(0, "warm", 1)])  # the side tables are made once a session
    with counted_statements() as sent:
        dest.write_batch(SRC, [up(i, f"n{i}", 10 + i) for i in range(500)] + [rm(0, 999)])
    kinds = [s.split()[0] for s in sent]
    loads = ["PUT", "COPY"] if path == "staged" else ["INSERT"]
    assert kinds == ["CREATE", *loads, "DELETE", "DELETE", "DELETE", "DELETE", "MERGE", "MERGE"]
