"""Real Debezium fixtures through the JSON-lines source into Snowflake (fakesnow): exact or parked.

The same fixtures and true rows as the PostgreSQL test (tests/compute/sources/), written
through the real connector and read back. Where Snowflake itself has no type for a value
the row is compared in Snowflake's spelling, said per case below:

- ``uuid``: Snowflake has no UUID type; the canonical text lands in a VARCHAR.
- ``text[]``: an ARRAY, read back by the connector as its JSON text (as from Snowflake).
- ``bytea``: BINARY, read back as a ``bytearray``.
- ``real``: Snowflake's FLOAT is always a double; a float4 that Debezium printed as 9.999
  arrives as the double 9.999 and lands as such.
- an unconstrained ``numeric`` has no Snowflake counterpart (NUMBER always has a scale):
  NUMBER(38,9), which holds the fixture's values exactly.

No fakesnow difference from Snowflake changes these rows: the known one (a NULL timestamp
reads back as 1970-01-01, see test_destination.py) cannot arise, as no true row holds a NULL.
The module runs in a few seconds and is slow-marked with the rest of this directory.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Callable
from pathlib import Path
from typing import Any
from uuid import UUID

import pytest

from destinations.snowflake.destination import SnowflakeDestination
from tests.compute.sources import debezium_run as fixtures
from tests.compute.sources.debezium_truth import TRUTHS, Truth
from tests.destinations.snowflake import test_destination as shared

pytestmark = pytest.mark.filterwarnings("ignore:Arrow output on a DB-API result:UserWarning")

# The Snowflake tests' fixtures: the shared fakesnow database, a fresh schema, destinations.
DATABASE, run = shared.DATABASE, shared.run
sf_admin, sf_schema, make_destination = shared.sf_admin, shared.sf_schema, shared.make_destination

INTEGER, SMALLINT, BIGINT = "NUMBER(10,0)", "NUMBER(5,0)", "NUMBER(19,0)"

# The Snowflake column types of each fixture's table, matching its truth's PostgreSQL (or
# MySQL) types: integer -> NUMBER(10,0), numeric(p,s) -> NUMBER(p,s), timestamp ->
# TIMESTAMP_NTZ, timestamptz -> TIMESTAMP_TZ, bytea -> BINARY, text[] -> ARRAY,
# json -> VARIANT, real/double -> FLOAT, time -> TIME (Snowflake has no TIME WITH TIME ZONE:
# a timetz column is VARCHAR here, and such a change is parked anyway).
SNOWFLAKE_COLUMNS: dict[str, str] = {
    "postgresql/payment_snapshot_decimal_schema.json": (
        f"payment_id {INTEGER}, customer_id {SMALLINT}, staff_id {SMALLINT}, "
        f"rental_id {INTEGER}, amount NUMBER(5,2), payment_date TIMESTAMP_NTZ"
    ),
    "postgresql/film_actor_delete_schema.json": (
        f"actor_id {SMALLINT}, film_id {SMALLINT}, last_update TIMESTAMP_NTZ"
    ),
    "postgresql/photo_date_bytes_schema.json": (
        f"documentid {INTEGER}, name VARCHAR, objectid VARCHAR, objecttype VARCHAR, "
        "authorid VARCHAR, mimetype VARCHAR, created DATE, description VARCHAR, data BINARY, "
        "updateby VARCHAR, lastupdate DATE"
    ),
    "postgresql/timeslot_uuid_zoned_schema.json": (
        "id VARCHAR(36), agenda_id VARCHAR(36), start_time TIMESTAMP_NTZ, "
        "end_time TIMESTAMP_NTZ, created_by VARCHAR, date_created TIMESTAMP_TZ, "
        "date_modified TIMESTAMP_TZ, modified_by VARCHAR, created_by_service VARCHAR, "
        f"modified_by_service VARCHAR, appointment_duration {SMALLINT}"
    ),
    "postgresql/film_snapshot_array_schema.json": (
        f"film_id {INTEGER}, title VARCHAR, description VARCHAR, release_year {INTEGER}, "
        f"language_id {SMALLINT}, rental_duration {SMALLINT}, rental_rate NUMBER(4,2), "
        f"length {SMALLINT}, replacement_cost NUMBER(5,2), rating VARCHAR, "
        "last_update TIMESTAMP_NTZ, special_features ARRAY"
    ),
    "postgresql/customers_create_schema_docs.json": (
        f"id {INTEGER}, first_name VARCHAR, last_name VARCHAR, email VARCHAR"
    ),
    "postgresql/authors_toast_update_noschema.json": (
        f"id {INTEGER}, first_name VARCHAR, last_name VARCHAR, biography VARCHAR, dob TIMESTAMP_NTZ"
    ),
    "postgresql/orders_numeric_noschema.json": (
        f"o_key {INTEGER}, o_smallint {SMALLINT}, o_integer {INTEGER}, o_bigint {BIGINT}, "
        "o_real FLOAT, o_double FLOAT, o_numeric NUMBER(38,9), o_numeric_6_3 NUMBER(6,3), "
        "o_money NUMBER(12,2)"
    ),
    "postgresql/orders_temporal_noschema.json": (
        f"o_key {INTEGER}, o_time_0 TIME(0), o_time_6 TIME(6), o_timez_0 VARCHAR, "
        "o_timez_6 VARCHAR, o_timestamp_0 TIMESTAMP_NTZ(0), o_timestamp_6 TIMESTAMP_NTZ(6), "
        "o_timestampz_0 TIMESTAMP_TZ(0), o_timestampz_6 TIMESTAMP_TZ(6), o_interval VARCHAR, "
        "o_date DATE"
    ),
    "postgresql/orders_other_types_noschema.json": (
        f"o_key {INTEGER}, o_boolean BOOLEAN, o_bit BOOLEAN, o_bytea BINARY, o_json VARIANT, "
        "o_xml VARCHAR, o_uuid VARCHAR(36), o_point OBJECT, o_enum VARCHAR, o_char VARCHAR(1), "
        "o_varchar VARCHAR, o_character VARCHAR(1), o_character_varying VARCHAR"
    ),
    "mysql/customers_create_schema.json": (
        f"id {INTEGER}, first_name VARCHAR, last_name VARCHAR, email VARCHAR"
    ),
    "mysql/customers_create_noschema.json": (
        f"id {INTEGER}, first_name VARCHAR, last_name VARCHAR, email VARCHAR"
    ),
    "mysql/customers_update_noschema.json": (
        f"id {INTEGER}, first_name VARCHAR, last_name VARCHAR, email VARCHAR"
    ),
    "mysql/somerole_snapshot_timestamp_schema.json": (
        f"id {BIGINT}, created_by {BIGINT}, created_on TIMESTAMP_NTZ"
    ),
    "mysql/products_update_noschema.json": (
        f"id {INTEGER}, name VARCHAR, description VARCHAR, weight FLOAT"
    ),
    "mysql/products_delete_noschema.json": (
        f"id {INTEGER}, name VARCHAR, description VARCHAR, weight FLOAT"
    ),
    "mysql/orders_update_noschema.json": (
        f"O_KEY {BIGINT}, O_BOOL BOOLEAN, O_TINY {SMALLINT}, O_INT {INTEGER}, O_REAL FLOAT, "
        "O_DOUBLE FLOAT, O_DECIMAL NUMBER(15,2), O_CHAR VARCHAR(15), O_DATE DATE, O_TIME TIME, "
        "O_DATETIME TIMESTAMP_NTZ, O_TIMESTAMP TIMESTAMP_TZ, O_JSON VARIANT"
    ),
}
SEMI_STRUCTURED = ("ARRAY", "OBJECT", "VARIANT")


def column_types(truth: Truth) -> dict[str, str]:
    """Column name (as the truth spells it) -> its Snowflake type."""
    pairs = (d.strip().split(" ", 1) for d in SNOWFLAKE_COLUMNS[truth.fixture].split(", "))
    return {name: column_type for name, column_type in pairs}


def make_table(admin: Any, schema: str, table: str, truth: Truth) -> str:
    """Creates the fixture's target table (and its ``before`` row); returns its full name."""
    name = f"{DATABASE}.{schema}.{table.rsplit('.', 1)[-1].upper()}"
    key = ", ".join(truth.key)
    run(admin, f"CREATE TABLE {name} ({SNOWFLAKE_COLUMNS[truth.fixture]}, PRIMARY KEY ({key}))")
    if truth.before is not None:
        columns = list(truth.before)
        placeholders = ", ".join(f"%({c})s" for c in columns)
        admin.cursor().execute(
            f"INSERT INTO {name} ({', '.join(columns)}) VALUES ({placeholders})", truth.before
        )
    return name


def read_rows(admin: Any, name: str, truth: Truth) -> list[dict[str, Any]]:
    """The table's rows, keyed by the truth's column names (Snowflake folds them upper)."""
    types = column_types(truth)
    spelled = {column.upper(): column for column in types}
    cur = admin.cursor()
    cur.execute(f"SELECT * FROM {name}")
    names = [spelled[d[0]] for d in cur.description]
    return [
        {n: landed(v, types[n]) for n, v in zip(names, row, strict=True)} for row in cur.fetchall()
    ]


def landed(value: Any, column_type: str) -> Any:
    """The connector's value as the truth spells it: BINARY as its digest, semi-structured
    values parsed from their JSON text."""
    if isinstance(value, bytearray | bytes):
        return ("sha256", hashlib.sha256(bytes(value)).hexdigest())
    if column_type.startswith(SEMI_STRUCTURED) and isinstance(value, str):
        return json.loads(value)
    return value


def in_snowflake(row: dict[str, Any]) -> dict[str, Any]:
    """The true row in Snowflake's spelling: a UUID is its canonical text (no UUID type)."""
    return {c: str(v) if isinstance(v, UUID) else v for c, v in row.items()}


def test_every_fixture_has_snowflake_columns_for_its_true_row() -> None:
    assert set(SNOWFLAKE_COLUMNS) == {t.fixture for t in TRUTHS}
    for truth in TRUTHS:
        for row in (truth.row, truth.before):
            if row is not None:
                assert set(row) <= set(column_types(truth)), truth.fixture


@pytest.mark.parametrize("truth", TRUTHS, ids=[t.fixture for t in TRUTHS])
def test_fixture_lands_exactly_in_snowflake_or_is_set_aside(
    truth: Truth,
    tmp_path: Path,
    sf_admin: Any,
    sf_schema: str,
    make_destination: Callable[..., SnowflakeDestination],
) -> None:
    line = fixtures.one_line(truth.fixture, truth.topic)
    table = fixtures.table_of(line, truth)
    name = make_table(sf_admin, sf_schema, table, truth)
    reasons = fixtures.run_fixture(tmp_path, make_destination(sf_schema), line, table, truth)
    fixtures.assert_outcome(read_rows(sf_admin, name, truth), reasons, truth, in_snowflake)


def test_bytea_without_schema_never_lands_in_binary_as_its_base64_text(
    tmp_path: Path,
    sf_admin: Any,
    sf_schema: str,
    make_destination: Callable[..., SnowflakeDestination],
) -> None:
    """ "ASNFZ4mrze8=" is 01 23 45 67 89 AB CD EF only if it is base64: parked naming
    the converter's schemas, the BINARY column never gets the text's bytes."""
    (truth,) = [t for t in TRUTHS if t.fixture.endswith("orders_other_types_noschema.json")]
    line = fixtures.one_line(truth.fixture, truth.topic)
    table = fixtures.table_of(line, truth)
    name = make_table(sf_admin, sf_schema, table, truth)
    reasons = fixtures.run_fixture(tmp_path, make_destination(sf_schema), line, table, truth)
    assert any("O_BYTEA is BINARY" in r for r in reasons), reasons
    assert any("value.converter.schemas.enable=true" in r for r in reasons), reasons
    assert read_rows(sf_admin, name, truth) == []


def test_decimal_without_schema_as_base64_is_parked_naming_decimal_handling_mode(
    tmp_path: Path,
    sf_admin: Any,
    sf_schema: str,
    make_destination: Callable[..., SnowflakeDestination],
) -> None:
    """The payment fixture's payload without its schema: amount "ASs=" is 2.99 only with the
    schema's scale; parked, never written into NUMBER(5,2)."""
    (truth,) = [t for t in TRUTHS if t.fixture.endswith("payment_snapshot_decimal_schema.json")]
    line = fixtures.schemaless(truth)
    table = fixtures.table_of(line, truth)
    name = make_table(sf_admin, sf_schema, table, truth)
    reasons = fixtures.run_fixture(tmp_path, make_destination(sf_schema), line, table, truth)
    assert any("decimal.handling.mode" in r for r in reasons), reasons
    assert read_rows(sf_admin, name, truth) == []
