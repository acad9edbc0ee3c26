"""VARIANT, OBJECT and ARRAY values travel as JSON text and become documents by PARSE_JSON.

On Snowflake, text bound into a VARIANT column lands as a JSON string holding
the text, not as the document; the emulator hides the difference, so the
statements are checked as text, and the round trip through fakesnow shows
the documents land whole on both load paths.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from decimal import Decimal
from typing import Any

import pytest

from destinations.net_effect import layout, net_effect
from destinations.snowflake.bulk_load import BulkLoad
from destinations.snowflake.destination import SnowflakeDestination
from destinations.snowflake.stage import Stage, TableInfo
from tests.builders import delete, upsert
from tests.destinations.snowflake import test_destination as shared

pytestmark = pytest.mark.filterwarnings("ignore:Arrow output on a DB-API result:UserWarning")

DATABASE, run, counted_statements = shared.DATABASE, shared.run, shared.counted_statements
sf_admin, sf_schema, make_destination = shared.sf_admin, shared.sf_schema, shared.make_destination

SRC = "public.src"
DOCS = {"V": {"a": [1, 2.5, None, "x"]}, "O": {"k": {"n": 1}}, "AR": [1, "two", None]}


def docs_stage() -> Stage:
    info = TableInfo(
        '"T"',
        {"ID": "NUMBER(38,0)", "V": "VARIANT", "NAME": "VARCHAR", "O": "OBJECT", "AR": "ARRAY"},
    )
    batch = [upsert({"ID": 1}, {**DOCS, "NAME": "n"}, 1), upsert({"ID": 2}, {"V": '"text"'}, 2)]
    return Stage.build(info, layout(net_effect(batch)), "dest")


def test_the_stage_carries_json_as_text_and_parses_it_before_the_merge() -> None:
    stage = docs_stage()
    create = stage.create()
    assert '"V" VARIANT' in create and '"O" OBJECT' in create and '"AR" ARRAY' in create
    for text_column in ('"_ROSETTA_JSON_0" VARCHAR', '"_ROSETTA_JSON_1" VARCHAR'):
        assert text_column in create
    [(insert, params)] = list(stage.inserts(100, 1 << 20))
    names = insert.split("(", 1)[1].split(")", 1)[0]
    # The INSERT never binds into the document columns, only into their text columns.
    assert '"V"' not in names and '"O"' not in names and '"AR"' not in names
    assert '"_ROSETTA_JSON_0"' in names and '"NAME"' in names
    texts = [p for p in params if isinstance(p, str) and p[:1] in ("{", "[")]
    assert [json.loads(t) for t in texts] == [DOCS["V"], DOCS["O"], DOCS["AR"]]
    assert '"text"' in params  # text is taken as JSON text as it is
    statements = list(stage.merges())
    assert statements[0] == (
        'UPDATE "_ROSETTA_STAGE" SET "V" = PARSE_JSON("_ROSETTA_JSON_0"), '
        '"O" = PARSE_JSON("_ROSETTA_JSON_1"), "AR" = PARSE_JSON("_ROSETTA_JSON_2")'
    )
    assert statements[-1].startswith("MERGE INTO") and 's."V"' in statements[-1]
    # The staged path loads the same text columns and goes through the same statements.
    copy = BulkLoad(stage, "dest").copy_statement()
    assert '"_ROSETTA_JSON_0"' in copy and '"V",' not in copy and "PARSE_JSON" not in copy


@pytest.mark.parametrize("threshold", [1, 10**9], ids=["staged", "values"])
def test_documents_round_trip_whole_and_partial_rows_keep_theirs(
    sf_admin: Any,
    sf_schema: str,
    make_destination: Callable[..., SnowflakeDestination],
    threshold: int,
) -> None:
    run(
        sf_admin,
        f"CREATE TABLE {DATABASE}.{sf_schema}.T (ID INT, V VARIANT, O OBJECT, AR ARRAY, N INT)",
    )
    dest = make_destination(sf_schema, table_map={SRC: "T"}, stage_threshold_rows=threshold)
    texts = {"V": '"just a string"', "O": '{"s": "x", "d": 1.5}', "AR": "[]"}
    with counted_statements() as sent:
        dest.write_batch(
            SRC,
            [
                upsert({"ID": 1}, {**DOCS, "N": 1}, 1, table=SRC),
                upsert({"ID": 2}, {**texts, "N": 2}, 2, table=SRC),
                upsert(
                    {"ID": 3}, {"V": Decimal("12.50"), "O": None, "AR": None, "N": 3}, 3, table=SRC
                ),
            ],
        )
    assert any(s.startswith("UPDATE") and "PARSE_JSON" in s for s in sent), sent
    dest.write_batch(
        SRC, [upsert({"ID": 1}, {"N": 10}, 4, table=SRC), delete({"ID": 3}, 5, table=SRC)]
    )
    got = run(sf_admin, f"SELECT ID, V, O, AR, N FROM {DATABASE}.{sf_schema}.T ORDER BY ID")
    loaded = [
        (i, *(None if d is None else json.loads(d) for d in (v, o, a)), n) for i, v, o, a, n in got
    ]
    assert loaded == [
        (1, DOCS["V"], DOCS["O"], DOCS["AR"], 10),  # a partial row keeps its documents
        (2, "just a string", {"s": "x", "d": 1.5}, [], 2),
    ]
