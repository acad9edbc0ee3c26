"""The decoder's shapes (bit strings, ISO intervals, aware times, ...) land exactly in PostgreSQL.

Each decoded value goes through the PostgreSQL destination's own text form
(``copy_text.text_value``) into a column of the source's type, and must read
back as the same value as the source's literal (values from Debezium's
AbstractRecordsProducerTest, as in test_decode_types).
"""

from __future__ import annotations

import base64
from typing import Any

import psycopg2
import pytest

from compute.sources.debezium import decode_row
from destinations.postgresql.copy_text import text_value

CASES: list[tuple[str, str, Any, dict[str, Any]]] = [
    ("bit(24)", "000000110000001000000001", "AQID",
     {"type": "bytes", "name": "io.debezium.data.Bits", "parameters": {"length": "24"}}),
    ("interval", "P1Y2M3DT4H5M6.78S", "P1Y2M3DT4H5M6.78S",
     {"type": "string", "name": "io.debezium.time.Interval"}),
    ("interval", "12 days 03:55:40.365", "P0Y0M12DT3H55M40.365S",
     {"type": "string", "name": "io.debezium.time.Interval"}),
    # Debezium sends every timetz in UTC ('13:51:30.123789+02' arrives as
    # "11:51:30.123789Z"): the instant is kept, the source's offset is not in the event.
    ("timetz", "11:51:30.123789+00", "11:51:30.123789Z",
     {"type": "string", "name": "io.debezium.time.ZonedTime"}),
    ("timestamptz", "2016-11-04T13:51:30.123456+02:00", "2016-11-04T11:51:30.123456Z",
     {"type": "string", "name": "io.debezium.time.ZonedTimestamp"}),
    ("timestamp", "2016-11-04T13:51:30.123456", 1478267490123456,
     {"type": "int64", "name": "io.debezium.time.MicroTimestamp"}),
    ("time", "13:51:30.123", 49890123, {"type": "int32", "name": "io.debezium.time.Time"}),
    ("date", "2016-11-04", 17109, {"type": "int32", "name": "io.debezium.time.Date"}),
    ("numeric(6,4)", "22.2200", base64.b64encode((222200).to_bytes(3, "big")).decode(),
     {"type": "bytes", "name": "org.apache.kafka.connect.data.Decimal",
      "parameters": {"scale": "4"}}),
    ("bytea", "\\x000102", "AAEC", {"type": "bytes"}),
    ("double precision", "0.1", "0.1", {"type": "float64"}),
    ("json", '{"bar":  "baz", "n": 1.50}', '{"bar":  "baz", "n": 1.50}',
     {"type": "string", "name": "io.debezium.data.Json"}),
    ("uuid", "a0eebc99-9c0b-4ef8-bb6d-6bb9bd380a11", "a0eebc99-9c0b-4ef8-bb6d-6bb9bd380a11",
     {"type": "string", "name": "io.debezium.data.Uuid"}),
]  # fmt: skip


@pytest.mark.parametrize(
    ("pg_type", "literal", "payload", "schema"), CASES, ids=[c[0] + ":" + c[1] for c in CASES]
)
def test_decoded_value_lands_as_the_source_value(
    postgres_dsn: str, pg_type: str, literal: str, payload: Any, schema: dict[str, Any]
) -> None:
    if pg_type == "double precision":
        payload = float(payload)  # parse_json gives a Decimal; either lands the same
    value = decode_row({"c": payload}, [{"field": "c", **schema}])["c"]
    conn = psycopg2.connect(postgres_dsn)
    try:
        with conn.cursor() as cur:
            cur.execute("SET TIME ZONE 'UTC'")
            cur.execute(
                f"SELECT %s::{pg_type}::text, %s::{pg_type}::text",
                (text_value(value), literal),
            )
            written, source = cur.fetchone()
    finally:
        conn.close()
    assert written == source  # PostgreSQL's own text of the value
