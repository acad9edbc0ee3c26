"""Staged bulk load (Parquet file, PUT, COPY INTO) against fakesnow: the same tables as VALUES.

Each test writes the same batches through a destination that stages every
batch (``stage_threshold_rows=1``) and one that never does, into two tables
of the same definition, and compares the tables value by value and type by
type: every type of the exact-values tests, NULL in every column, empty
strings, text with quotes, newlines, commas and backslashes, partial rows,
updates and deletes.
"""

from __future__ import annotations

import json
import math
import tempfile
from collections.abc import Callable, Iterator
from datetime import UTC, date, datetime
from decimal import Decimal
from pathlib import Path
from typing import Any

import pytest
from snowflake.connector import errors as sf_errors

from config.errors import ConfigError
from destinations.errors import FailureKind, PermanentDestinationError
from destinations.net_effect import layout, net_effect
from destinations.records import ChangeRecord
from destinations.snowflake.bulk_load import BulkLoad
from destinations.snowflake.destination import SnowflakeDestination
from destinations.snowflake.stage import Stage, TableInfo
from tests.builders import delete, upsert
from tests.destinations.snowflake import test_destination as shared
from tests.destinations.snowflake.test_exact_values import EXACT

pytestmark = pytest.mark.filterwarnings("ignore:Arrow output on a DB-API result:UserWarning")

DATABASE, run, counted_statements = shared.DATABASE, shared.run, shared.counted_statements
sf_admin, sf_schema, make_destination = shared.sf_admin, shared.sf_schema, shared.make_destination

NEVER = 10**9  # a threshold no test batch reaches: the INSERT ... VALUES path
SEMI = ("VARIANT", "ARRAY", "OBJECT")
AWKWARD = "a,b \"q\" 's' back\\slash \\N\nnew line\r\n\ttab żółw 🐢 %s %(x)s"


@pytest.fixture
def private_tmp(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Path]:
    """Where tempfile (this project's and the connector's) puts files during the test."""
    directory = tmp_path / "tmp"
    directory.mkdir()
    monkeypatch.setattr(tempfile, "tempdir", str(directory))
    yield directory


def both(
    sf_admin: Any,
    sf_schema: str,
    make_destination: Callable[..., SnowflakeDestination],
    definitions: str,
) -> tuple[SnowflakeDestination, SnowflakeDestination]:
    """Two tables of ``definitions``; a staging and a VALUES destination, one for each."""
    for table in ("STAGED", "VALUED"):
        run(sf_admin, f"CREATE TABLE {DATABASE}.{sf_schema}.{table} ({definitions})")
    staged = make_destination(sf_schema, table_map={"public.src": "STAGED"}, stage_threshold_rows=1)
    valued = make_destination(
        sf_schema, table_map={"public.src": "VALUED"}, stage_threshold_rows=NEVER
    )
    return staged, valued


def write_both(
    staged: SnowflakeDestination, valued: SnowflakeDestination, batch: list[ChangeRecord]
) -> None:
    with counted_statements() as sent:
        staged.write_batch("public.src", batch)
    assert any(s.startswith("PUT ") for s in sent) and any(s.startswith("COPY ") for s in sent)
    assert not any(s.startswith("INSERT") for s in sent), sent
    with counted_statements() as sent:
        valued.write_batch("public.src", batch)
    assert any(s.startswith("INSERT") for s in sent)
    assert not any(s.startswith(("PUT ", "COPY ")) for s in sent), sent


def assert_same_tables(sf_admin: Any, sf_schema: str, columns: list[tuple[str, str]]) -> int:
    """The two tables hold the same rows, equal and of the same type; returns the row count."""
    names = ", ".join(c for c, _ in columns)
    found = {
        table: run(sf_admin, f"SELECT ID, {names} FROM {DATABASE}.{sf_schema}.{table} ORDER BY ID")
        for table in ("STAGED", "VALUED")
    }
    assert [r[0] for r in found["STAGED"]] == [r[0] for r in found["VALUED"]]
    for staged_row, valued_row in zip(found["STAGED"], found["VALUED"], strict=True):
        for (column, kind), got, want in zip(columns, staged_row[1:], valued_row[1:], strict=True):
            where = f"ID={staged_row[0]} {column} {kind}: staged {got!r}, values {want!r}"
            if kind in SEMI and got is not None and want is not None:
                got, want = json.loads(got), json.loads(want)
            if isinstance(want, float) and math.isnan(want):
                assert isinstance(got, float) and math.isnan(got), where
                continue
            assert got == want and type(got) is type(want), where
            if isinstance(want, Decimal | datetime):
                assert str(got) == str(want), where  # the same scale, the same offset
    return len(found["STAGED"])


def test_every_type_lands_the_same_staged_or_not(
    sf_admin: Any, sf_schema: str, make_destination: Callable[..., SnowflakeDestination]
) -> None:
    columns = [(c, t) for c, t, _, _ in EXACT]
    staged, valued = both(
        sf_admin,
        sf_schema,
        make_destination,
        "ID INT, " + ", ".join(f"{c} {t}" for c, t in columns),
    )
    row = {c: v for c, _, v, _ in EXACT}
    nulls = dict.fromkeys(row)
    edges = {**nulls, "S": "", "BITS": AWKWARD, "B": b"", "F": float("nan"), "N": Decimal("0")}
    more = {**row, "S": AWKWARD, "F": float("-inf"), "BO": True, "TN": datetime(1, 1, 1)}
    write_both(
        staged,
        valued,
        [upsert({"ID": 1}, row, 1), upsert({"ID": 2}, nulls, 2), upsert({"ID": 3}, edges, 3)],
    )
    # Updates (MERGE ... WHEN MATCHED), a new row and a delete in one batch.
    write_both(
        staged,
        valued,
        [upsert({"ID": 1}, more, 4), upsert({"ID": 2}, row, 5), upsert({"ID": 4}, edges, 6)]
        + [delete({"ID": 3}, 7)],
    )
    assert assert_same_tables(sf_admin, sf_schema, columns) == 3
    # And the staged table holds the exact values, as the exact-values tests read them.
    values = run(
        sf_admin,
        f"SELECT {', '.join(c for c, _ in columns)} FROM "
        f"{DATABASE}.{sf_schema}.STAGED WHERE ID = 2",
    )[0]
    for (column, kind, written, expected), value in zip(EXACT, values, strict=True):
        want = written if expected is None else expected
        value = json.loads(value) if kind in SEMI else value
        assert value == want and type(value) is type(want), f"{column} {kind}: {value!r}"


def test_partial_rows_keep_the_targets_values_staged_or_not(
    sf_admin: Any, sf_schema: str, make_destination: Callable[..., SnowflakeDestination]
) -> None:
    columns = [("NAME", "VARCHAR"), ("QTY", "NUMBER(38,0)"), ("TS", "TIMESTAMP_TZ")]
    staged, valued = both(
        sf_admin, sf_schema, make_destination, "ID INT, NAME VARCHAR, QTY INT, TS TIMESTAMP_TZ"
    )
    at = datetime(2024, 5, 6, 7, 8, 9, 123456, tzinfo=UTC)
    write_both(
        staged,
        valued,
        [upsert({"ID": i}, {"NAME": f"n{i}", "QTY": i, "TS": at}, i) for i in range(1, 6)],
    )
    write_both(
        staged,
        valued,
        [
            upsert({"ID": 1}, {"NAME": "only name"}, 10),
            upsert({"ID": 2}, {"QTY": None}, 11),
            upsert({"ID": 3}, {"NAME": "", "QTY": 30, "TS": None}, 12),
            upsert({"ID": 6}, {"QTY": 6}, 13),
            delete({"ID": 5}, 14),
        ],
    )
    assert assert_same_tables(sf_admin, sf_schema, columns) == 5
    assert run(sf_admin, f"SELECT NAME, QTY FROM {DATABASE}.{sf_schema}.STAGED WHERE ID = 1") == [
        ("only name", 1)
    ]


def test_the_threshold_picks_the_path_and_a_staged_batch_is_four_statements(
    sf_admin: Any, sf_schema: str, make_destination: Callable[..., SnowflakeDestination]
) -> None:
    run(sf_admin, f"CREATE TABLE {DATABASE}.{sf_schema}.ITEMS (ID INT, NAME VARCHAR, QTY INT)")
    dest = make_destination(sf_schema, stage_threshold_rows=1_000)
    dest.write_batch(shared.SOURCE_TABLE, [upsert(0, {"name": "warm", "qty": 0}, 0)])
    below = [upsert(i, {"name": f"n{i}", "qty": i}, i) for i in range(1, 1_000)]
    with counted_statements() as sent:
        dest.write_batch(shared.SOURCE_TABLE, below)
    assert [s.split()[0] for s in sent] == ["CREATE", "INSERT", "MERGE"]

    at = [upsert(i, {"name": f"m{i}", "qty": -i}, 5_000 + i) for i in range(1_000, 5_000)]
    with counted_statements() as sent:
        dest.write_batch(shared.SOURCE_TABLE, at + [delete(0, 9_999)])
    assert [s.split()[0] for s in sent] == ["CREATE", "PUT", "COPY", "MERGE"]
    rows = run(sf_admin, f"SELECT COUNT(*), SUM(QTY) FROM {DATABASE}.{sf_schema}.ITEMS")
    assert rows == [(4_999, sum(range(1, 1_000)) - sum(range(1_000, 5_000)))]


@pytest.mark.parametrize("threshold", [0, -5, 2.5, True, "100"])
def test_a_bad_threshold_is_a_start_up_error_naming_it(
    threshold: Any, make_destination: Callable[..., SnowflakeDestination]
) -> None:
    with pytest.raises(ConfigError) as caught:
        make_destination("S", stage_threshold_rows=threshold)
    assert "stage_threshold_rows" in str(caught.value) and "1 or more" in str(caught.value)


def test_no_file_is_left_behind_and_a_failed_copy_is_permanent(
    sf_admin: Any,
    sf_schema: str,
    make_destination: Callable[..., SnowflakeDestination],
    private_tmp: Path,
) -> None:
    run(sf_admin, f"CREATE TABLE {DATABASE}.{sf_schema}.T (ID INT, D DATE, S VARCHAR)")
    dest = make_destination(sf_schema, table_map={"public.src": "T"}, stage_threshold_rows=1)
    secret = "row data that must not stay on disk"
    dest.write_batch("public.src", [upsert({"ID": 1}, {"D": date(2024, 1, 2), "S": secret}, 1)])
    assert list(private_tmp.iterdir()) == []

    # Text a DATE cannot read: the COPY fails (fakesnow: 100038, SQLSTATE 22018).
    bad = [upsert({"ID": 2}, {"D": "not a date", "S": secret}, 2)]
    with pytest.raises(sf_errors.ProgrammingError) as caught:
        dest.write_batch("public.src", bad)
    assert dest.classify_error(caught.value).kind is FailureKind.PERMANENT
    assert list(private_tmp.iterdir()) == []
    assert run(sf_admin, f"SELECT ID, D, S FROM {DATABASE}.{sf_schema}.T") == [
        (1, date(2024, 1, 2), secret)
    ]
    # The session survived: the next batch goes through.
    dest.write_batch("public.src", [upsert({"ID": 3}, {"D": None, "S": ""}, 3)])
    assert run(sf_admin, f"SELECT COUNT(*) FROM {DATABASE}.{sf_schema}.T") == [(2,)]


class _FailingCursor:
    """A cursor whose PUT fails as the connector reports a failed upload (error path only)."""

    def __init__(self, error: BaseException) -> None:
        self.error = error
        self.seen: list[str] = []

    def execute(self, command: str, *args: Any) -> None:
        self.seen.append(command)
        raise self.error

    def fetchall(self) -> list[Any]:
        return []


@pytest.mark.parametrize(
    ("error", "kind"),
    [
        (
            sf_errors.OperationalError(
                msg="While putting file(s) there was an error", errno=253003
            ),
            FailureKind.TRANSIENT,
        ),
        (
            sf_errors.ProgrammingError(
                msg="Stage does not exist or not authorized.", errno=2003, sqlstate="02000"
            ),
            FailureKind.TABLE,
        ),
        (
            sf_errors.ProgrammingError(msg="Insufficient privileges", errno=3001, sqlstate="42501"),
            FailureKind.TABLE,
        ),
    ],
)
def test_a_failed_put_is_classified_and_leaves_no_file(
    error: BaseException,
    kind: FailureKind,
    private_tmp: Path,
    make_destination: Callable[..., SnowflakeDestination],
) -> None:
    info = TableInfo('"T"', {"ID": "NUMBER(38,0)", "S": "VARCHAR"})
    stage = Stage.build(info, layout(net_effect([upsert({"ID": 1}, {"S": "x"}, 1)])), "dest")
    cursor = _FailingCursor(error)
    with pytest.raises(type(error)):
        BulkLoad(stage, "dest").run(cursor)  # type: ignore[arg-type]
    assert cursor.seen[0].startswith("PUT 'file://" + str(private_tmp))
    assert list(private_tmp.iterdir()) == []
    assert make_destination("S").classify_error(error).kind is kind


def test_a_value_the_stage_file_cannot_hold_is_permanent(private_tmp: Path) -> None:
    info = TableInfo('"T"', {"ID": "NUMBER(38,0)", "S": "VARCHAR"})
    stage = Stage.build(info, layout(net_effect([upsert({"ID": 1}, {"S": "\ud800"}, 1)])), "dest")
    with pytest.raises(PermanentDestinationError) as caught:
        BulkLoad(stage, "dest").run(_FailingCursor(AssertionError("no statement expected")))  # type: ignore[arg-type]
    assert "column S" in str(caught.value)
    assert list(private_tmp.iterdir()) == []
