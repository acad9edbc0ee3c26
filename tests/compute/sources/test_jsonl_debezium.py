"""Real Debezium envelopes through the JSON-lines source: keys, tombstones, positions, snapshots."""

from __future__ import annotations

import json
import logging
from decimal import Decimal
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from compute.sources.jsonl_positions import MAX_POSITION, connector_position
from compute.sources.jsonl_source import JsonLinesSource
from destinations.records import ChangeRecord, Operation, SourcePosition

# The value of an update of inventory.customers as Debezium's MySQL connector
# documents it ("mysql-update-events", debezium.io/documentation/reference/
# connectors/mysql.html), schemas off: the value carries no key.
MYSQL_UPDATE = {
    "before": {
        "id": 1004,
        "first_name": "Anne",
        "last_name": "Kretchmar",
        "email": "annek@noanswer.org",
    },
    "after": {
        "id": 1004,
        "first_name": "Anne Marie",
        "last_name": "Kretchmar",
        "email": "annek@noanswer.org",
    },
    "source": {
        "version": "2.7.0.Final",
        "name": "mysql-server-1",
        "connector": "mysql",
        "ts_ms": 1465581029100,
        "snapshot": "false",
        "db": "inventory",
        "table": "customers",
        "server_id": 223344,
        "gtid": None,
        "file": "mysql-bin.000003",
        "pos": 484,
        "row": 0,
        "thread": 7,
        "query": None,
    },
    "op": "u",
    "ts_ms": 1465581029523,
}
KEY_WITH_SCHEMA = {
    "schema": {
        "type": "struct",
        "name": "mysql-server-1.inventory.customers.Key",
        "optional": False,
        "fields": [{"field": "id", "type": "int32", "optional": False}],
    },
    "payload": {"id": 1004},
}


def read(
    tmp_path: Path, lines: list[str], **options: Any
) -> tuple[list[ChangeRecord], JsonLinesSource]:
    path = tmp_path / "events.jsonl"
    path.write_text("".join(line + "\n" for line in lines), encoding="utf-8")
    source = JsonLinesSource("src", path, None, **options)
    return list(source.read(1000).records), source


def kcat_json(key: Any, value: Any, offset: int = 7) -> str:
    """What ``kcat -J`` prints: key and payload are strings holding JSON, or null."""
    return json.dumps(
        {
            "topic": "mysql-server-1.inventory.customers",
            "partition": 0,
            "offset": offset,
            "tstype": "create",
            "ts": 1465581029523,
            "broker": 1,
            "key": None if key is None else json.dumps(key),
            "payload": None if value is None else json.dumps(value),
        }
    )


# --- keys ----------------------------------------------------------------------------------------


@pytest.mark.parametrize("key", [{"id": 1004}, KEY_WITH_SCHEMA], ids=["plain", "schema"])
def test_kcat_json_envelope_gives_key_and_value(tmp_path: Path, key: Any) -> None:
    with_schema = {"schema": {"type": "struct", "fields": []}, "payload": MYSQL_UPDATE}
    records, source = read(tmp_path, [kcat_json(key, MYSQL_UPDATE), kcat_json(key, with_schema)])
    assert source.rejected == ()
    for record in records:
        assert (record.table, record.op, dict(record.key)) == (
            "customers",
            Operation.UPDATE,
            {"id": 1004},
        )
        assert record.after == MYSQL_UPDATE["after"]


def test_key_tab_value_lines(tmp_path: Path) -> None:
    lines = [
        json.dumps(KEY_WITH_SCHEMA) + "\t" + json.dumps(MYSQL_UPDATE),
        '{"id": 1004}\t' + json.dumps(MYSQL_UPDATE),
        "\t" + json.dumps(MYSQL_UPDATE),  # kcat prints a null key as nothing
        "NULL\t" + json.dumps(MYSQL_UPDATE),  # ... or as NULL with -Z
    ]
    records, source = read(tmp_path, lines, primary_keys={"customers": ["email"]})
    assert source.rejected == ()
    assert [dict(r.key) for r in records] == [
        {"id": 1004},
        {"id": 1004},
        {"email": "annek@noanswer.org"},  # no message key: primary_keys is the fallback
        {"email": "annek@noanswer.org"},
    ]


def test_key_inside_the_value_wins_over_the_message_key(tmp_path: Path) -> None:
    value = {**MYSQL_UPDATE, "key": {"id": 1}}
    records, _ = read(tmp_path, [kcat_json({"id": 1004}, value)])
    assert dict(records[0].key) == {"id": 1}


@pytest.mark.parametrize(
    ("line", "reason"),
    [
        (kcat_json(5, MYSQL_UPDATE), "the message key is a number: expected an object"),
        (kcat_json({"id": None}, MYSQL_UPDATE), "'id' is null in 'the message key'"),
        (
            json.dumps({**json.loads(kcat_json(None, None)), "key": "{bad"}),
            "kcat 'key' does not hold JSON: bad JSON",
        ),
        ('{"id": 1}\t{"op": ', "(nor a message key, a TAB and a value, each JSON)"),
    ],
    ids=["scalar-key", "null-key-column", "kcat-key-not-json", "tab-value-not-json"],
)
def test_bad_message_keys_are_rejected_with_the_reason(
    tmp_path: Path, line: str, reason: str
) -> None:
    records, source = read(tmp_path, [line])
    assert records == []
    (rejected,) = source.rejected
    assert reason in rejected.reason


# --- tombstones ----------------------------------------------------------------------------------


def test_tombstones_are_skipped_and_counted_not_rejected(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    delete = {**MYSQL_UPDATE, "op": "d", "after": None}
    lines = [
        kcat_json({"id": 1004}, delete, offset=1),
        kcat_json({"id": 1004}, None, offset=2),  # the tombstone after the delete
        "null",
        json.dumps({"schema": None, "payload": None}),
        '{"id": 1004}\t',  # key TAB nothing
        "",  # kcat -f '%s\n' prints a tombstone as an empty line: skipped, counted
        json.dumps(MYSQL_UPDATE),
    ]
    with caplog.at_level(logging.DEBUG, logger="compute.sources.jsonl_source"):
        records, source = read(tmp_path, lines, primary_keys={"customers": ["id"]})
    assert [r.op for r in records] == [Operation.DELETE, Operation.UPDATE]
    assert source.rejected == () and source.rejected_count == 0
    assert source.skipped_count == 5
    logged = [r.getMessage() for r in caplog.records if "skipped " in r.getMessage()]
    assert len(logged) == 5 and "line=3" in logged[1] and "skipped_total=2" in logged[1]
    assert logged[4].startswith("skipped empty line") and "line=6" in logged[4]


# --- snapshots -----------------------------------------------------------------------------------


@pytest.mark.parametrize("snapshot", ["true", "first", "last", "incremental", "false"])
def test_snapshot_reads_are_upserts(tmp_path: Path, snapshot: str) -> None:
    read_event = {
        **MYSQL_UPDATE,
        "op": "r",
        "before": None,
        "source": {**MYSQL_UPDATE["source"], "snapshot": snapshot},
    }
    records, _ = read(tmp_path, [kcat_json({"id": 1004}, read_event)])
    (record,) = records
    assert record.op is Operation.SNAPSHOT_READ and not record.op.is_delete  # written as an upsert
    assert record.after == MYSQL_UPDATE["after"]


# --- positions -----------------------------------------------------------------------------------


def pg_source(last_commit: int | None, lsn: int, **extra: Any) -> dict[str, Any]:
    pair = [None if last_commit is None else str(last_commit), str(lsn)]
    return {"connector": "postgresql", "lsn": lsn, "sequence": json.dumps(pair), **extra}


@pytest.mark.parametrize(
    ("source", "op", "position"),
    [
        (pg_source(22910056, 22910216), "u", (22910056, 22910216)),
        (pg_source(None, 22910216), "c", (0, 22910216)),
        (pg_source(22910056, 22910216, snapshot="true"), "r", (22910056, 0)),
        (
            {"sequence": '["0/15D8E28","0/15D8F10"]', "lsn": "0/15D8F10"},
            "c",
            (0x15D8E28, 0x15D8F10),
        ),
        (
            {"connector": "mysql", "file": "mysql-bin.000003", "pos": 484, "row": 2},
            "u",
            ((3 << 32) | 484, 2),
        ),
        ({"file": "binlog.012345", "pos": "4", "row": 0}, "c", ((12345 << 32) | 4, 0)),
        (
            {
                "connector": "sqlserver",
                "commit_lsn": "00000027:00000758:0005",
                "change_lsn": "00000027:00000758:0003",
                "event_serial_no": 1,
            },
            "c",
            ((0x27 << 40) | (0x758 << 16) | 5, (0x27 << 40) | (0x758 << 16) | 3),
        ),
        (
            {"connector": "mongodb", "ts_ms": 1558965508000, "ord": 31},
            "c",
            ((1558965508 << 32) | 31, None),
        ),
    ],
    ids=[
        "pg",
        "pg-no-commit-yet",
        "pg-snapshot",
        "pg-by-fields",
        "mysql",
        "mysql-by-fields",
        "sqlserver",
        "mongodb",
    ],
)
def test_connector_positions(
    source: dict[str, Any], op: str, position: tuple[int, int | None]
) -> None:
    assert connector_position(source, op) == position


@pytest.mark.parametrize(
    ("source", "reason"),
    [
        (
            {"connector": "mysql", "file": "mysql-bin", "pos": 4},
            "'source.file' is not a binlog file name",
        ),
        (
            {"connector": "mysql", "file": "mysql-bin.000003", "pos": 1 << 32},
            "'source.pos' 4294967296 is too large",
        ),
        (
            {"connector": "mysql", "file": "mysql-bin.000003", "pos": -1},
            "'source.pos' must be a non-negative integer",
        ),
        (
            {"connector": "sqlserver", "commit_lsn": "27:758:3"},
            "'source.commit_lsn' is not a SQL Server LSN",
        ),
        (
            {"connector": "sqlserver", "commit_lsn": "00800000:00000758:0003"},
            "does not fit a 63-bit position",
        ),
        ({"connector": "mongodb", "ts_ms": (1 << 31) * 1000, "ord": 1}, "January 2038"),
        ({"connector": "postgresql", "sequence": "[1]", "lsn": 5}, "is not Debezium's"),
        (pg_source(1 << 63, 5), "'source.sequence[0]' 9223372036854775808 does not fit"),
    ],
    ids=[
        "mysql-file",
        "mysql-pos-big",
        "mysql-pos-neg",
        "mssql-lsn",
        "mssql-vlf-big",
        "mongo-2038",
        "pg-seq",
        "pg-big",
    ],
)
def test_positions_that_cannot_be_kept_are_rejected(
    tmp_path: Path, source: dict[str, Any], reason: str
) -> None:
    line = {"op": "c", "after": {"id": 1}, "source": {"table": "t", **source}, "key": {"id": 1}}
    records, rejected_by = read(tmp_path, [json.dumps(line)])
    assert records == []
    (rejected,) = rejected_by.rejected
    assert reason in rejected.reason


def _through_source(
    tmp_path: Path, sources: list[dict[str, Any]], op: str = "u"
) -> list[SourcePosition]:
    lines = [
        json.dumps({"op": op, "after": {"id": 1}, "source": {"table": "t", **s}, "key": {"id": 1}})
        for s in sources
    ]
    records, source = read(tmp_path, lines)
    assert source.rejected == ()
    return [r.position for r in records]


def _increasing(positions: list[SourcePosition]) -> bool:
    return all(a < b for a, b in zip(positions, positions[1:], strict=False))


# Transactions in commit order, each a list of changes; the sizes are what hypothesis varies.
_transactions = st.lists(st.integers(min_value=1, max_value=4), min_size=1, max_size=6)


@settings(max_examples=60, deadline=None)
@given(
    sizes=_transactions,
    gaps=st.lists(st.integers(min_value=1, max_value=1 << 20), min_size=40, max_size=40),
)
def test_postgresql_positions_in_source_order_increase(
    tmp_path_factory: pytest.TempPathFactory, sizes: list[int], gaps: list[int]
) -> None:
    # Debezium's stream: transactions in commit order; the changes of a later
    # transaction may have LOWER lsns than an earlier one's (interleaved in the WAL).
    sources, last_commit, start, step = [], None, 1 << 30, iter(gaps)
    for number, size in enumerate(sizes):
        lsn = start - number * (1 << 24)  # each transaction began earlier in the WAL
        for _ in range(size):
            lsn += next(step)
            sources.append(pg_source(last_commit, lsn))
        last_commit = (1 << 40) + number * (1 << 22)  # its commit: after all earlier commits
    assert _increasing(_through_source(tmp_path_factory.mktemp("pg"), sources))


@settings(max_examples=60, deadline=None)
@given(
    steps=st.lists(
        st.tuples(
            st.sampled_from(["row", "event", "file"]), st.integers(min_value=1, max_value=1 << 20)
        ),
        min_size=1,
        max_size=30,
    )
)
def test_mysql_positions_in_binlog_order_increase(
    tmp_path_factory: pytest.TempPathFactory, steps: list[tuple[str, int]]
) -> None:
    file, pos, row, sources = 1, 4, 0, []
    for kind, amount in steps:
        if kind == "row":
            row += 1
        elif kind == "event":
            pos, row = min(pos + amount, (1 << 32) - 1), 0
        else:
            file, pos, row = file + amount, 4, 0  # a new binlog file restarts pos
        sources.append(
            {"connector": "mysql", "file": f"mysql-bin.{file:06d}", "pos": pos, "row": row}
        )
    assume_distinct = [(s["file"], s["pos"], s["row"]) for s in sources]
    sources = [s for i, s in enumerate(sources) if assume_distinct.index(assume_distinct[i]) == i]
    assert _increasing(_through_source(tmp_path_factory.mktemp("my"), sources))


def _sqlserver_lsn(value: int) -> str:
    return f"{value >> 48:08X}:{(value >> 16) & 0xFFFFFFFF:08X}:{value & 0xFFFF:04X}"


@settings(max_examples=60, deadline=None)
@given(
    lsns=st.lists(
        st.tuples(
            st.integers(0, (1 << 23) - 1), st.integers(0, (1 << 24) - 1), st.integers(0, 0xFFFF)
        ),
        min_size=2,
        max_size=20,
        unique=True,
    )
)
def test_sqlserver_positions_keep_lsn_order(lsns: list[tuple[int, int, int]]) -> None:
    ordered = sorted(lsns)
    texts = [f"{v:08X}:{b:08X}:{s:04X}" for v, b, s in ordered]
    commits = [connector_position({"connector": "sqlserver", "commit_lsn": t}, "c") for t in texts]
    assert all(p is not None for p in commits)
    assert _increasing([SourcePosition(p.commit, 0) for p in commits if p is not None])


@settings(max_examples=60, deadline=None)
@given(
    stamps=st.lists(
        st.tuples(st.integers(0, (1 << 31) - 1), st.integers(0, (1 << 32) - 1)),
        min_size=2,
        max_size=20,
        unique=True,
    )
)
def test_mongodb_positions_keep_oplog_order(stamps: list[tuple[int, int]]) -> None:
    positions = [
        connector_position({"connector": "mongodb", "ts_ms": seconds * 1000, "ord": ordinal}, "c")
        for seconds, ordinal in sorted(stamps)
    ]
    commits = [p.commit for p in positions if p is not None]
    assert commits == sorted(set(commits)) and all(c <= MAX_POSITION for c in commits)


# --- the table from the topic, values by their schema, placeholders ------------------------------


def test_an_event_naming_no_table_takes_it_from_the_kcat_topic(tmp_path: Path) -> None:
    """Debezium before 0.8 named the table only in the topic <prefix>.<schema>.<table>."""
    value = {
        **MYSQL_UPDATE,
        "source": {k: v for k, v in MYSQL_UPDATE["source"].items() if k != "table"},
    }
    records, source = read(tmp_path, [kcat_json({"id": 1004}, value), json.dumps(value)])
    assert [r.table for r in records] == ["inventory.customers"]
    (rejected,) = source.rejected
    assert "'source.table' is missing" in rejected.reason and "kcat -J" in rejected.reason


def test_values_are_decoded_by_their_schema_and_placeholders_leave_columns_out(
    tmp_path: Path,
) -> None:
    schema = {
        "type": "struct",
        "fields": [
            {"field": "before", "type": "struct", "optional": True, "fields": []},
            {
                "field": "after",
                "type": "struct",
                "optional": True,
                "fields": [
                    {"field": "id", "type": "int32"},
                    {
                        "field": "price",
                        "type": "bytes",
                        "name": "org.apache.kafka.connect.data.Decimal",
                        "parameters": {"scale": "2"},
                    },
                    {"field": "bio", "type": "string"},
                    {"field": "note", "type": "string"},
                ],
            },
        ],
    }
    after = {"id": 1, "price": "AeI=", "bio": "__debezium_unavailable_value", "note": "<kept>"}
    line = {"schema": schema, "payload": {**MYSQL_UPDATE, "before": None, "after": after}}
    records, _ = read(tmp_path, [json.dumps(line)], primary_keys={"customers": ["id"]})
    (record,) = records
    assert record.after == {"id": 1, "price": Decimal("4.82"), "note": "<kept>"}
    assert str(record.after["price"]) == "4.82"
    # A connector configured with another placeholder: the engine is told the same text.
    after = {**after, "bio": "__debezium_unavailable_value", "note": "<kept>"}
    line = {"schema": schema, "payload": {**MYSQL_UPDATE, "before": None, "after": after}}
    (tmp_path / "other").mkdir()
    records, _ = read(
        tmp_path / "other",
        [json.dumps(line)],
        primary_keys={"customers": ["id"]},
        unavailable_value_placeholder="<kept>",
    )
    assert records[0].after == {
        "id": 1,
        "price": Decimal("4.82"),
        "bio": "__debezium_unavailable_value",
    }


def test_a_value_that_cannot_be_decoded_exactly_rejects_the_line_naming_the_column(
    tmp_path: Path,
) -> None:
    schema = {
        "type": "struct",
        "fields": [
            {
                "field": "after",
                "type": "struct",
                "fields": [
                    {"field": "id", "type": "int32"},
                    {"field": "at", "type": "int64", "name": "io.debezium.time.NanoTimestamp"},
                ],
            }
        ],
    }
    after = {"id": 1, "at": 1_529_507_596_945_104_001}  # a nanosecond PostgreSQL cannot keep
    line = {"schema": schema, "payload": {**MYSQL_UPDATE, "before": None, "after": after}}
    records, source = read(tmp_path, [json.dumps(line)], primary_keys={"customers": ["id"]})
    assert records == []
    (rejected,) = source.rejected
    assert "column 'at'" in rejected.reason
