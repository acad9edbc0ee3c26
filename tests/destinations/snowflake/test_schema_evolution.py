"""schema_evolution on Snowflake (fakesnow through the real connector): a missing table
created, a new column added, a value the column cannot hold parked, and "none" refusing
to start without the table."""

from __future__ import annotations

import json
import logging
import re
from collections.abc import Callable
from datetime import UTC, date, datetime, time, timedelta, timezone
from decimal import Decimal
from typing import Any
from uuid import UUID

import pytest

from config.errors import ConfigError
from destinations.errors import FailureKind, PermanentDestinationError
from destinations.records import ChangeRecord, Operation, SourcePosition
from destinations.schema_evolution import ColumnType, Kind
from destinations.snowflake import schema_evolution
from destinations.snowflake.destination import SnowflakeDestination
from destinations.snowflake.schema_evolution import (
    KIND_TYPES,
    SOURCE_TYPES,
    column_names,
    snowflake_type,
)
from tests.builders import upsert
from tests.destinations.postgresql.test_readme_position_guard import readme_section
from tests.destinations.snowflake import test_destination as shared
from tests.servers import free_port

pytestmark = pytest.mark.filterwarnings("ignore:Arrow output on a DB-API result:UserWarning")

DATABASE, run, counted_statements = shared.DATABASE, shared.run, shared.counted_statements
sf_admin, sf_schema, make_destination = shared.sf_admin, shared.sf_schema, shared.make_destination

TABLE = "public.accounts"
NEVER = 10**9  # a stage threshold no batch reaches: the INSERT ... VALUES path
ROW: dict[str, Any] = {
    "id": 1,
    "amount": Decimal("12.50"),
    "name": "ann 'o' \"q\" żółw",
    "paid_at": datetime(2026, 1, 2, 3, 4, 5, 6, tzinfo=UTC),
    "seen_at": datetime(2026, 1, 2, 3, 4, 5, 6),
    "born": date(1990, 5, 6),
    "opens": time(9, 30, 0, 5),
    "opens_tz": time(9, 30, tzinfo=timezone(timedelta(hours=2))),
    "span": timedelta(days=2, seconds=5, microseconds=1),
    "ref": UUID("12345678-1234-5678-1234-567812345678"),
    "doc": {"a": [1, 2.5, None]},
    "blob": b"\x00\xff",
    "active": True,
    "ratio": 0.25,
    "note": None,
}
# What each column of ROW is created as (DESCRIBE TABLE's spelling) and reads back as.
CREATED = {
    "ID": ("NUMBER(38,0)", 1),
    "AMOUNT": ("NUMBER(38,2)", Decimal("12.50")),
    "NAME": ("VARCHAR(16777216)", ROW["name"]),
    "PAID_AT": ("TIMESTAMP_TZ(9)", ROW["paid_at"]),
    "SEEN_AT": ("TIMESTAMP_NTZ(9)", ROW["seen_at"]),
    "BORN": ("DATE", ROW["born"]),
    "OPENS": ("TIME(9)", ROW["opens"]),
    "OPENS_TZ": ("VARCHAR(16777216)", "09:30:00+02:00"),
    "SPAN": ("VARCHAR(16777216)", "172805.000001"),  # exact seconds (see the README)
    "REF": ("VARCHAR(36)", str(ROW["ref"])),
    "DOC": ("VARIANT", ROW["doc"]),
    "BLOB": ("BINARY(8388608)", ROW["blob"]),
    "ACTIVE": ("BOOLEAN", True),
    "RATIO": ("FLOAT", 0.25),
    "NOTE": ("VARCHAR(16777216)", None),
}
GUARD_COLUMNS = {"_ROSETTA_COMMIT": "NUMBER(19,0)", "_ROSETTA_SEQ": "NUMBER(19,0)"}


def change(key: int, commit: int, table: str = TABLE, **row: Any) -> ChangeRecord:
    return ChangeRecord(
        table, Operation.INSERT, {"id": key}, {**ROW, "id": key, **row}, SourcePosition(commit)
    )


def described(conn: Any, schema: str, table: str = "ACCOUNTS") -> dict[str, tuple[str, str]]:
    """Column -> (type, nullable Y/N), as DESCRIBE TABLE says, in table order."""
    rows = run(conn, f'DESCRIBE TABLE {DATABASE}.{schema}."{table}"')
    return {r[0]: (r[1], r[3]) for r in rows}


def types_of(conn: Any, schema: str, table: str = "ACCOUNTS") -> dict[str, str]:
    return {c: t for c, (t, _) in described(conn, schema, table).items()}


def primary_key(conn: Any, schema: str, table: str = "ACCOUNTS") -> list[str]:
    rows = run(conn, f'SHOW PRIMARY KEYS IN TABLE {DATABASE}.{schema}."{table}"')
    # fakesnow answers for every schema's table of that name: the row names its schema.
    return [r[4] for r in rows if r[2] == schema]


def read_back(conn: Any, schema: str, columns: list[str]) -> list[list[Any]]:
    names = ", ".join(columns)
    rows = run(conn, f"SELECT {names} FROM {DATABASE}.{schema}.ACCOUNTS ORDER BY ID")
    found = []
    for row in rows:
        values = []
        for column, value in zip(columns, row, strict=True):
            if column == "DOC" and value is not None:
                value = json.loads(value)
            if isinstance(value, bytearray):
                value = bytes(value)
            values.append(value)
        found.append(values)
    return found


def catalog_statements(sent: list[str]) -> list[str]:
    """The statements about the target's definition (the stage table's own aside)."""
    return [s for s in sent if s.startswith(("DESCRIBE", "ALTER", "CREATE TABLE"))]


@pytest.mark.parametrize(
    ("guard", "threshold"),
    [(False, NEVER), (True, NEVER), (False, 1), (True, 1)],
    ids=["values", "values-guard", "staged", "staged-guard"],
)
def test_basic_creates_the_missing_table_typed_from_the_values(
    sf_admin: Any,
    sf_schema: str,
    make_destination: Callable[..., SnowflakeDestination],
    caplog: pytest.LogCaptureFixture,
    guard: bool,
    threshold: int,
) -> None:
    caplog.set_level(logging.INFO, logger=schema_evolution.__name__)
    destination = make_destination(
        sf_schema, schema_evolution="basic", position_guard=guard, stage_threshold_rows=threshold
    )
    with counted_statements() as sent:
        assert destination.write_batch(TABLE, [change(1, 10), change(2, 11, note="x")]) == 2
    assert any(s.startswith("COPY ") for s in sent) is (threshold == 1)
    expected = {c: t for c, (t, _) in CREATED.items()}
    if guard:
        expected |= GUARD_COLUMNS
    assert types_of(sf_admin, sf_schema) == expected
    assert described(sf_admin, sf_schema)["NAME"][1] == "Y"  # nullable
    assert primary_key(sf_admin, sf_schema) == ["ID"]
    want = [v for _, v in CREATED.values()]
    assert read_back(sf_admin, sf_schema, list(CREATED)) == [
        want,
        [2, *want[1:-1], "x"],
    ]
    [line] = [r.getMessage() for r in caplog.records if "schema evolution" in r.getMessage()]
    assert line.startswith(
        "schema evolution: created target table destination=Destination Snowflake-Test (ID=2) "
        'target="ACCOUNTS" columns=id:NUMBER(38,0),amount:NUMBER(38,2),name:VARCHAR,'
    )
    assert line.endswith(" key=id")

    # The next batch finds every column in the session's cache: no catalog query at all.
    with counted_statements() as sent:
        destination.write_batch(TABLE, [change(1, 12, name="bea"), change(3, 13)])
    assert catalog_statements(sent) == []
    assert [r[0] for r in read_back(sf_admin, sf_schema, ["ID", "NAME"])] == [1, 2, 3]
    assert read_back(sf_admin, sf_schema, ["NAME"])[0] == ["bea"]


def test_the_sources_own_types_win_over_the_values(
    sf_admin: Any, sf_schema: str, make_destination: Callable[..., SnowflakeDestination]
) -> None:
    destination = make_destination(sf_schema, schema_evolution="basic")
    asked: list[str] = []

    def source_types(table: str) -> dict[str, str]:
        asked.append(table)
        return {
            "id": "integer",
            "amount": "numeric(12,2)",
            "price": "numeric",
            "huge": "numeric(50,2)",
            "name": "character varying(20)",
            "code": "character(3)",
            "doc": "jsonb",
            "tags": "text[]",
            "happened": "timestamp(3) with time zone",
            "opens": "time(3) without time zone",
            "mood": "text",  # a user-defined type, as the source names it
        }

    destination.source_types = source_types
    row = {
        "amount": Decimal("3.10"),
        "price": Decimal("1.5"),
        "huge": Decimal("12345678901234567890123456789012345678901234567.25"),
        "name": "x",
        "code": "ab ",
        "doc": '{"k": 1}',
        "tags": ["a", "b"],
        "happened": datetime(2026, 1, 2, 3, 4, 5, 123000, tzinfo=UTC),
        "opens": time(8, 0),
        "mood": "happy",
    }
    destination.write_batch(TABLE, [upsert(7, row, 1, table=TABLE)])
    assert asked == [TABLE]
    assert types_of(sf_admin, sf_schema) == {
        "ID": "NUMBER(38,0)",
        "AMOUNT": "NUMBER(12,2)",
        "PRICE": "NUMBER(38,1)",
        "HUGE": "VARCHAR(16777216)",
        "NAME": "VARCHAR(20)",
        "CODE": "VARCHAR(3)",
        "DOC": "VARIANT",
        "TAGS": "VARIANT",
        "HAPPENED": "TIMESTAMP_TZ(9)",
        "OPENS": "TIME(9)",
        "MOOD": "VARCHAR(16777216)",
    }
    found = run(
        sf_admin,
        f"SELECT ID, AMOUNT, PRICE, HUGE, NAME, CODE, DOC, TAGS, HAPPENED, OPENS, MOOD "
        f"FROM {DATABASE}.{sf_schema}.ACCOUNTS",
    )
    [(key, amount, price, huge, name, code, doc, tags, happened, opens, mood)] = found
    assert (key, amount, price, huge, name, code) == (
        7,
        Decimal("3.10"),
        Decimal("1.5"),
        "12345678901234567890123456789012345678901234567.25",
        "x",
        "ab ",
    )
    assert (json.loads(doc), json.loads(tags)) == ({"k": 1}, ["a", "b"])
    assert (happened, opens, mood) == (row["happened"], row["opens"], "happy")


def test_basic_adds_a_new_column_nullable_and_leaves_old_rows_alone(
    sf_admin: Any,
    sf_schema: str,
    make_destination: Callable[..., SnowflakeDestination],
    caplog: pytest.LogCaptureFixture,
) -> None:
    run(
        sf_admin,
        f"CREATE TABLE {DATABASE}.{sf_schema}.ACCOUNTS (ID INT PRIMARY KEY, NAME VARCHAR NOT NULL)",
    )
    caplog.set_level(logging.INFO, logger=schema_evolution.__name__)
    destination = make_destination(sf_schema, schema_evolution="basic")
    destination.write_batch(TABLE, [upsert(1, {"name": "a"}, 1, table=TABLE)])
    widened = [upsert(2, {"name": "b", "tier": 3, "Label": "gold"}, 2, table=TABLE)]
    destination.write_batch(TABLE, widened)
    with counted_statements() as sent:
        destination.write_batch(TABLE, widened)  # delivered again: no new DDL, no catalog query
    assert catalog_statements(sent) == []
    assert described(sf_admin, sf_schema) == {
        "ID": ("NUMBER(38,0)", "N"),
        "NAME": ("VARCHAR(16777216)", "N"),
        "TIER": ("NUMBER(38,0)", "Y"),
        "LABEL": ("VARCHAR(16777216)", "Y"),
    }
    assert run(sf_admin, f"SELECT * FROM {DATABASE}.{sf_schema}.ACCOUNTS ORDER BY ID") == [
        (1, "a", None, None),
        (2, "b", 3, "gold"),
    ]
    lines = [r.getMessage() for r in caplog.records if "schema evolution" in r.getMessage()]
    assert [line.rsplit(" columns=", 1)[1] for line in lines] == [
        "TIER:NUMBER(38,0)",
        "LABEL:VARCHAR",
    ]
    assert all(line.startswith("schema evolution: added nullable columns ") for line in lines)


def test_a_column_another_writer_added_first_is_not_an_error(
    sf_admin: Any,
    sf_schema: str,
    make_destination: Callable[..., SnowflakeDestination],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """The ALTER fails (the column exists by now): the table read again has it, fine."""
    run(sf_admin, f"CREATE TABLE {DATABASE}.{sf_schema}.ACCOUNTS (ID INT PRIMARY KEY)")
    qualified = f'"{DATABASE}"."{sf_schema}"."ACCOUNTS"'
    stale = schema_evolution.describe(sf_admin.cursor(), qualified)
    assert stale is not None and list(stale.columns) == ["ID"]
    run(sf_admin, f"ALTER TABLE {qualified} ADD COLUMN TIER INT")
    reads = iter([stale])
    real = schema_evolution.describe
    monkeypatch.setattr(
        schema_evolution, "describe", lambda cur, name: next(reads, None) or real(cur, name)
    )
    destination = make_destination(sf_schema, schema_evolution="basic")
    with counted_statements() as sent:
        destination.write_batch(TABLE, [upsert(1, {"tier": 5}, 1, table=TABLE)])
    assert [s for s in sent if s.startswith("ALTER")] == [
        'ALTER TABLE "ACCOUNTS" ADD COLUMN "TIER" NUMBER(38,0)'
    ]
    assert run(sf_admin, f"SELECT * FROM {DATABASE}.{sf_schema}.ACCOUNTS") == [(1, 5)]


def test_the_table_is_named_as_the_target_and_its_columns_upper_cased(
    sf_admin: Any, sf_schema: str, make_destination: Callable[..., SnowflakeDestination]
) -> None:
    """Two source columns that fold together ("a", "A") keep their exact names (see
    test_new_column_names): the emulator (DuckDB) cannot hold both, Snowflake can."""
    destination = make_destination(
        sf_schema, schema_evolution="basic", table_map={TABLE: f"{sf_schema}.Accounts"}
    )
    row = {"createdAt": date(2026, 1, 1), "a b": "x"}
    destination.write_batch(TABLE, [upsert(1, row, 1, table=TABLE)])
    assert list(types_of(sf_admin, sf_schema, "Accounts")) == ["ID", "CREATEDAT", "A B"]
    destination.write_batch(TABLE, [upsert(1, {**row, "a b": "y"}, 2, table=TABLE)])
    assert run(sf_admin, f'SELECT * FROM {DATABASE}.{sf_schema}."Accounts"') == [
        (1, date(2026, 1, 1), "y")
    ]


def test_a_value_the_created_column_cannot_hold_is_parked_naming_it(
    sf_admin: Any, sf_schema: str, make_destination: Callable[..., SnowflakeDestination]
) -> None:
    destination = make_destination(sf_schema, schema_evolution="basic")
    destination.write_batch(TABLE, [upsert(1, {"amount": Decimal("1.50")}, 1, table=TABLE)])
    finer = upsert(2, {"amount": Decimal("1.234")}, 2, table=TABLE)
    with pytest.raises(PermanentDestinationError) as caught:
        destination.write_batch(TABLE, [finer])
    failure = destination.classify_error(caught.value)
    assert failure.kind is FailureKind.PERMANENT
    assert "column AMOUNT is NUMBER(38,2)" in failure.message
    assert "more than 2 decimal places" in failure.message
    assert types_of(sf_admin, sf_schema)["AMOUNT"] == "NUMBER(38,2)"  # not changed on its own
    assert run(sf_admin, f"SELECT ID FROM {DATABASE}.{sf_schema}.ACCOUNTS") == [(1,)]


def test_none_holds_a_missing_table_and_names_it_at_start_up(
    sf_schema: str, make_destination: Callable[..., SnowflakeDestination]
) -> None:
    destination = make_destination(sf_schema)
    with pytest.raises(Exception) as caught:
        destination.write_batch(TABLE, [change(1, 1)])
    failure = destination.classify_error(caught.value)
    assert failure.kind is FailureKind.TABLE and failure.code == "002003"
    assert "does not exist" in failure.message
    mapped = make_destination(sf_schema, table_map={"public.orders": "Orders"})
    problems = mapped.check_tables({TABLE: ("id",), "public.orders": ("id",)})
    fix = (
        "the target table does not exist; fix: create it (with a primary key on the source's "
        'key columns), or set schema_evolution = "basic" on the destination to have it created '
        "from the first changes"
    )
    assert problems == [
        f"{mapped}: table {TABLE} -> {DATABASE}.{sf_schema}.ACCOUNTS: {fix}",
        f'{mapped}: table public.orders -> {DATABASE}.{sf_schema}."Orders": {fix}',
    ]


def test_start_up_checks_with_basic_a_present_table_or_no_server(
    sf_admin: Any, sf_schema: str, make_destination: Callable[..., SnowflakeDestination]
) -> None:
    basic = make_destination(sf_schema, schema_evolution="basic")
    assert basic.check_tables({TABLE: ("id",)}) == []
    run(sf_admin, f"CREATE TABLE {DATABASE}.{sf_schema}.ACCOUNTS (ID INT PRIMARY KEY)")
    assert make_destination(sf_schema).check_tables({TABLE: ("id",)}) == []
    down = make_destination(sf_schema, port=free_port(), login_timeout=2)
    assert down.check_tables({TABLE: ("id",)}) == []


def test_an_unknown_mode_is_refused_naming_the_accepted_ones(
    make_destination: Callable[..., SnowflakeDestination], sf_schema: str
) -> None:
    with pytest.raises(ConfigError) as caught:
        make_destination(sf_schema, schema_evolution="full")
    assert "destination 2: schema_evolution must be one of 'none', 'basic', got 'full'" in str(
        caught.value
    )


# ---------------------------------------------------------------- the type mapping


@pytest.mark.parametrize(
    ("source", "scale", "expected"),
    [
        ("smallint", 0, "NUMBER(38,0)"),
        ("numeric(12,2)", 0, "NUMBER(12,2)"),
        ("numeric(38,37)", 0, "NUMBER(38,37)"),
        ("numeric(39,2)", 0, "VARCHAR"),
        ("numeric(5,-2)", 0, "NUMBER(7,0)"),
        ("numeric(2,5)", 0, "NUMBER(5,5)"),
        ("numeric(9)", 3, "NUMBER(9,0)"),
        ("numeric", 4, "NUMBER(38,4)"),
        ("numeric", 40, "NUMBER(38,37)"),
        ("character varying(20)", 0, "VARCHAR(20)"),
        ("character varying", 0, "VARCHAR"),
        ("character(1)", 0, "VARCHAR(1)"),
        ("timestamp(3) without time zone", 0, "TIMESTAMP_NTZ"),
        ("timestamp with time zone", 0, "TIMESTAMP_TZ"),
        ("time without time zone", 0, "TIME"),
        ("time(6) with time zone", 0, "VARCHAR"),
        ("interval", 0, "VARCHAR"),
        ("integer[]", 0, "VARIANT"),
        ("character varying(5)[]", 0, "VARIANT"),
        ("bit(3)", 0, "VARCHAR"),
        ('"char"', 0, "VARCHAR"),
        ("bytea", 0, "BINARY"),
    ],
)
def test_source_types_map(source: str, scale: int, expected: str) -> None:
    assert snowflake_type(ColumnType(Kind.TEXT, scale, source)) == expected


def test_value_kinds_map() -> None:
    assert snowflake_type(ColumnType(Kind.DECIMAL, 3)) == "NUMBER(38,3)"
    assert snowflake_type(ColumnType(Kind.INTEGER)) == "NUMBER(38,0)"
    assert snowflake_type(ColumnType(Kind.TIMETZ)) == "VARCHAR"


def test_new_column_names() -> None:
    assert column_names(["id", "Name", "a", "A"]) == {
        "id": "ID",
        "Name": "NAME",
        "a": "a",
        "A": "A",
    }
    assert column_names(["name"], ["NAME", "Name"]) == {"name": "name"}


def test_the_readme_lists_the_type_mapping_as_the_code_has_it() -> None:
    """Each row of the README's two tables, `name` | `TYPE`, against the exported dicts."""
    section = readme_section("readme-snowflake-evolution-types")
    rows = dict(re.findall(r"^\| `([^`]+)` \| `([^`]+)` \|", section, re.MULTILINE))
    placeholders = {"p": "p", "s": "s", "n": "n", "scale": "s"}
    kinds = {k: v.format(**placeholders) for k, v in KIND_TYPES.items()}
    sources = {k: v.format(**placeholders) for k, v in SOURCE_TYPES.items()}
    assert {k: rows.get(k) for k in kinds} == kinds
    assert {k: rows.get(k) for k in sources} == sources
    assert set(rows) == set(kinds) | set(sources) | {"<type>[]", "any other"}
    assert rows["<type>[]"] == "VARIANT" and rows["any other"] == "VARCHAR"


def truncate(commit: int, table: str = TABLE) -> ChangeRecord:
    return ChangeRecord(table, Operation.TRUNCATE, {}, None, SourcePosition(commit))


@pytest.mark.parametrize("guard", [False, True], ids=["plain", "guard"])
def test_a_truncate_of_a_target_not_created_yet_is_done_already(
    sf_admin: Any,
    sf_schema: str,
    make_destination: Callable[..., SnowflakeDestination],
    guard: bool,
) -> None:
    """A truncate at the head of a new table's changes (pgbench -i, a copy taken again) must
    not hold the very inserts that would create the table: there is nothing to empty."""
    destination = make_destination(sf_schema, schema_evolution="basic", position_guard=guard)
    assert destination.write_batch(TABLE, [truncate(1)]) == 1
    names = run(sf_admin, f"SHOW TABLES IN SCHEMA {DATABASE}.{sf_schema}")
    assert [n for n in names if "ACCOUNTS" in str(n)] == []  # nothing created from nothing
    batch = [truncate(2), change(1, 3, name="a"), truncate(4), change(2, 5, name="b")]
    assert destination.write_batch(TABLE, batch) == 4
    assert run(sf_admin, f"SELECT ID, NAME FROM {DATABASE}.{sf_schema}.ACCOUNTS") == [(2, "b")]


def test_with_none_a_truncate_of_a_missing_target_holds_the_table(
    sf_schema: str, make_destination: Callable[..., SnowflakeDestination]
) -> None:
    destination = make_destination(sf_schema)
    with pytest.raises(Exception) as caught:  # noqa: B017 - the connector's own class
        destination.write_batch(TABLE, [truncate(1), change(1, 2)])
    assert destination.classify_error(caught.value).kind is FailureKind.TABLE
