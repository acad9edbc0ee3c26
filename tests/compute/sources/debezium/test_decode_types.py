"""Each Debezium type decodes to the source's exact value, or is refused with a reason.

Values come from Debezium's own tests and documentation (debezium/debezium):
- PG: debezium-connector-postgres/src/test/java/io/debezium/connector/postgresql/
  AbstractRecordsProducerTest.java (INSERT_*_STMT and schemaAndValuesFor*Types)
- JDBC: debezium-connector-jdbc/src/test/java/io/debezium/connector/jdbc/...
- docs: documentation/modules/ROOT/pages/connectors/postgresql.adoc
"""

from __future__ import annotations

import base64
import uuid
from datetime import UTC, date, datetime, time, timedelta, timezone
from decimal import Decimal
from typing import Any

import pytest

from compute.sources.debezium import ValueUndecodable, decode_row


def _b64(raw: bytes) -> str:
    return base64.b64encode(raw).decode("ascii")


def _field(kind: str, name: str | None = None, **parameters: str) -> dict[str, Any]:
    field: dict[str, Any] = {"field": "c", "type": kind, "optional": True}
    if name is not None:
        field["name"] = name
    if parameters:
        field["parameters"] = parameters
    return field


def decode(value: Any, field: dict[str, Any]) -> Any:
    return decode_row({"c": value}, [field])["c"]


def refusal(value: Any, field: dict[str, Any]) -> str:
    with pytest.raises(ValueUndecodable) as caught:
        decode_row({"c": value}, [field])
    assert caught.value.column == "c"
    return caught.value.reason


DECIMAL = "org.apache.kafka.connect.data.Decimal"
VSD = "io.debezium.data.VariableScaleDecimal"


# PG: numeric_decimal_table, d numeric(3,2) = 1.10, n numeric(6,4) = 22.2200
# (unscaled 110 and 222200, BigInteger.toByteArray big-endian).
@pytest.mark.parametrize(
    ("unscaled", "scale", "expected"),
    [(110, "2", "1.10"), (222200, "4", "22.2200"), (-123411, "2", "-1234.11"), (-128, "0", "-128")],
)
def test_decimal_bytes_with_scale(unscaled: int, scale: str, expected: str) -> None:
    size = (unscaled if unscaled >= 0 else ~unscaled).bit_length() // 8 + 1
    raw = unscaled.to_bytes(size, "big", signed=True)
    value = decode(_b64(raw), _field("bytes", DECIMAL, scale=scale))
    assert value == Decimal(expected) and str(value) == expected  # the scale is kept


def test_decimal_from_the_docs_and_numeric_format() -> None:
    # Kafka Connect's own example: "AeI=" with scale 2 is 4.82; the JSON
    # converter's decimal.format=NUMERIC writes the number itself.
    assert str(decode("AeI=", _field("bytes", DECIMAL, scale="2"))) == "4.82"
    assert str(decode(Decimal("4.82"), _field("bytes", DECIMAL, scale="2"))) == "4.82"


def test_decimal_of_more_digits_than_the_context_keeps() -> None:
    unscaled = -(10**60) - 7  # 61 digits: a context of 28 digits would round them
    raw = unscaled.to_bytes(26, "big", signed=True)
    value = decode(_b64(raw), _field("bytes", DECIMAL, scale="30"))
    assert str(value) == "-1000000000000000000000000000000.000000000000000000000000000007"


def test_decimal_without_scale_or_base64_is_refused() -> None:
    assert "scale" in refusal("AeI=", _field("bytes", DECIMAL))
    assert "base64" in refusal("not base64!", _field("bytes", DECIMAL, scale="2"))


# PG: dvs = 10.1111 as {"scale": 4, "value": unscaled 101111}.
def test_variable_scale_decimal() -> None:
    raw = (101111).to_bytes(3, "big", signed=True)
    value = decode({"scale": 4, "value": _b64(raw)}, _field("struct", VSD))
    assert str(value) == "10.1111"


# PG time_table: '2016-11-04'::DATE, '2016-11-04T13:51:30.123456'::TIMESTAMP
# as MicroTimestamp, Timestamp (ms) and a negative one, '1936-10-25T22:10:12.608'.
@pytest.mark.parametrize(
    ("name", "value", "expected"),
    [
        ("io.debezium.time.Date", 17109, date(2016, 11, 4)),
        ("org.apache.kafka.connect.data.Date", 17109, date(2016, 11, 4)),
        (
            "io.debezium.time.MicroTimestamp",
            1478267490123456,
            datetime(2016, 11, 4, 13, 51, 30, 123456),
        ),
        (
            "io.debezium.time.NanoTimestamp",
            1478267490123456000,
            datetime(2016, 11, 4, 13, 51, 30, 123456),
        ),
        ("io.debezium.time.Timestamp", 1478267490123, datetime(2016, 11, 4, 13, 51, 30, 123000)),
        (
            "org.apache.kafka.connect.data.Timestamp",
            1478267490123,
            datetime(2016, 11, 4, 13, 51, 30, 123000),
        ),
        (
            "io.debezium.time.MicroTimestamp",
            -1047174587392000,
            datetime(1936, 10, 25, 22, 10, 12, 608000),
        ),
        # docs (postgresql.adoc, MicroTimestamp): "2018-06-20 15:13:16.945104" is 1529507596945104.
        (
            "io.debezium.time.MicroTimestamp",
            1529507596945104,
            datetime(2018, 6, 20, 15, 13, 16, 945104),
        ),
        ("io.debezium.time.MicroTime", 49890000000, time(13, 51, 30)),
        ("io.debezium.time.Time", 49890123, time(13, 51, 30, 123000)),
        ("org.apache.kafka.connect.data.Time", 49890123, time(13, 51, 30, 123000)),
        ("io.debezium.time.NanoTime", 49890123789000, time(13, 51, 30, 123789)),
    ],
)
def test_epoch_numbers(name: str, value: int, expected: Any) -> None:
    kind = "int32" if name.endswith(("Date", ".Time")) else "int64"
    decoded = decode(value, _field(kind, name))
    assert decoded == expected and type(decoded) is type(expected)
    assert getattr(decoded, "tzinfo", None) is None  # no zone: WITHOUT TIME ZONE


@pytest.mark.parametrize(
    ("name", "value", "words"),
    [
        # PG: '24:00:00'::TIME is TimeUnit.DAYS.toNanos(1) / 1000.
        ("io.debezium.time.MicroTime", 86_400_000_000, "time of day"),
        ("io.debezium.time.MicroTime", -1, "time of day"),  # MySQL TIME '-00:00:00.000001'
        # PG: '294247-01-01T23:59:59.999999'::TIMESTAMP, and 'infinity'.
        ("io.debezium.time.MicroTimestamp", 9223371331200000000 - 1, "outside years"),
        ("io.debezium.time.MicroTimestamp", -210831897600000001, "outside years"),
        ("io.debezium.time.NanoTimestamp", 1478267490123456789, "nanoseconds"),
        ("io.debezium.time.NanoTime", 49890123456789, "nanoseconds"),
        ("io.debezium.time.Date", 3_000_000, "outside years"),
    ],
)
def test_epoch_numbers_that_do_not_fit_are_refused(name: str, value: int, words: str) -> None:
    assert words in refusal(value, _field("int64", name))


# PG: '2016-11-04T13:51:30.123456+02:00'::TIMESTAMPTZ reads "2016-11-04T11:51:30.123456Z";
# '13:51:30.123789+02:00'::TIMETZ reads "11:51:30.123789Z".
def test_zoned_timestamp_and_time() -> None:
    zoned = decode(
        "2016-11-04T11:51:30.123456Z", _field("string", "io.debezium.time.ZonedTimestamp")
    )
    assert zoned == datetime(2016, 11, 4, 13, 51, 30, 123456, timezone(timedelta(hours=2)))
    assert zoned.utcoffset() == timedelta(0)
    ahead = decode(
        "2016-11-04T13:51:30.1+02:00", _field("string", "io.debezium.time.ZonedTimestamp")
    )
    assert ahead == zoned.replace(microsecond=100000)
    assert ahead.utcoffset() == timedelta(hours=2)
    nine = decode(
        "2016-11-04T11:51:30.123456000Z", _field("string", "io.debezium.time.ZonedTimestamp")
    )
    assert nine == zoned
    ztime = decode("11:51:30.123789Z", _field("string", "io.debezium.time.ZonedTime"))
    assert ztime == time(11, 51, 30, 123789, UTC)


@pytest.mark.parametrize(
    "text",
    [
        "+21016-11-04T06:51:30.123456Z",  # PG tz_large
        "-4713-12-31T23:59:59.999999Z",  # PG tz_min
        "2016-11-04T11:51:30.123456789Z",
        "2016-11-04T11:51:30",
    ],
)
def test_zoned_timestamps_that_do_not_fit_are_refused(text: str) -> None:
    assert refusal(text, _field("string", "io.debezium.time.ZonedTimestamp"))


def test_durations() -> None:
    # JDBC e2e test: 'P0Y0M12DT3H55M40.365S' (interval.handling.mode=string).
    interval = "io.debezium.time.Interval"
    assert decode("P0Y0M12DT3H55M40.365S", _field("string", interval)) == timedelta(
        days=12, hours=3, minutes=55, seconds=40, microseconds=365000
    )
    # PG: 'P1Y2M3DT4H5M6.78S'::INTERVAL: months kept as the ISO text PostgreSQL reads.
    assert decode("P1Y2M3DT4H5M6.78S", _field("string", interval)) == "P1Y2M3DT4H5M6.78S"
    micro = "io.debezium.time.MicroDuration"
    assert decode(3_600_000_001, _field("int64", micro)) == timedelta(hours=1, microseconds=1)
    # PG: MicroDuration.durationMicros(1, 2, 3, 4, 5, 6, 780000, 30.4375) for the same interval.
    months = int(((14 * 30.4375 + 3) * 24 * 3600 + 4 * 3600 + 5 * 60 + 6) * 1e6 + 780000)
    assert "interval.handling.mode=string" in refusal(months, _field("int64", micro))


# PG bitbin_table: '11'::bit(2) -> [3], '1'::bit(7) -> [64], '00'::bit(2) -> [],
# '000000110000001000000001'::bit(24) -> [1, 2, 3], bit(64) '1000...' -> [0]*7 + [-128].
@pytest.mark.parametrize(
    ("raw", "length", "expected"),
    [
        (b"\x03", "2", "11"),
        (b"\x40", "7", "1000000"),
        (b"", "2", "00"),
        (b"\x01\x02\x03", "24", "000000110000001000000001"),
        (b"\x00" * 7 + b"\x80", "64", "1" + "0" * 63),
    ],
)
def test_bits(raw: bytes, length: str, expected: str) -> None:
    assert decode(_b64(raw), _field("bytes", "io.debezium.data.Bits", length=length)) == expected


def test_varying_bits_are_refused() -> None:
    bits = "io.debezium.data.Bits"
    # PG: bvunlimited1 '101' (BIT VARYING without length) -> Bits(2147483647), [5].
    assert "BIT VARYING" in refusal("BQ==", _field("bytes", bits, length="2147483647"))
    source_type = {"length": "8", "__debezium.source.column.type": "VARBIT"}
    assert "BIT VARYING" in refusal("BQ==", _field("bytes", bits, **source_type))
    assert "more than its length" in refusal(_b64(b"\xff"), _field("bytes", bits, length="4"))


def test_geometry_as_ewkb_hex() -> None:
    # JDBC sink tests: POINT(1 1) as WKB "AQEAAAAAAAAAAADwPwAAAAAAAPA/"; MySQL docs' srid 3187.
    wkb = "AQEAAAAAAAAAAADwPwAAAAAAAPA/"
    plain = "0101000000000000000000F03F000000000000F03F"
    geometry = _field("struct", "io.debezium.data.geometry.Geometry")
    assert decode({"wkb": wkb, "srid": None}, geometry) == plain
    assert decode({"wkb": wkb, "srid": 0}, geometry) == plain
    with_srid = "0101000020730C0000000000000000F03F000000000000F03F"
    assert decode({"wkb": wkb, "srid": 3187}, geometry) == with_srid
    # PostgreSQL's connector sends the EWKB itself: kept as is.
    ewkb = bytes.fromhex(with_srid)
    assert decode({"wkb": _b64(ewkb), "srid": 3187}, geometry) == with_srid
    # PG geom_table: '(1,1)'::point as Point.createValue(schema, 1, 1): x, y and the WKB.
    point = _field("struct", "io.debezium.data.geometry.Point")
    assert decode({"x": 1.0, "y": 1.0, "wkb": wkb, "srid": None}, point) == plain
    assert decode({"x": Decimal("1.0"), "y": 1, "wkb": None, "srid": None}, point) == plain
    assert "wkb" in refusal({"wkb": _b64(b"\x07"), "srid": 1}, geometry)


def test_text_types_and_uuid() -> None:
    # PG text_table: '{"bar": "baz"}'::json, xml '<foo>bar</foo>', uuid.
    json_text = '{"bar": "baz", "n": 1.50}'
    assert decode(json_text, _field("string", "io.debezium.data.Json")) == json_text
    assert decode("<foo>bar</foo>", _field("string", "io.debezium.data.Xml")) == "<foo>bar</foo>"
    assert decode("a,b", _field("string", "io.debezium.data.EnumSet")) == "a,b"
    assert decode("Top.Science", _field("string", "io.debezium.data.Ltree")) == "Top.Science"
    assert decode(2024, _field("int32", "io.debezium.time.Year")) == 2024
    text = "a0eebc99-9c0b-4ef8-bb6d-6bb9bd380a11"
    assert decode(text, _field("string", "io.debezium.data.Uuid")) == uuid.UUID(text)
    assert "UUID" in refusal("nope", _field("string", "io.debezium.data.Uuid"))


def test_plain_types() -> None:
    # PG string_table: b bytea '\x000102', bnn '\x030405'.
    assert decode("AAEC", _field("bytes")) == b"\x00\x01\x02"
    assert decode(2**63 - 1, _field("int64")) == 2**63 - 1
    assert decode(Decimal("0.1"), _field("float64")) == 0.1
    assert decode(Decimal("3.4028235E+38"), _field("float32")) == 3.4028235e38
    assert decode("NaN", _field("float64")) != decode("NaN", _field("float64"))  # nan
    assert decode("-Infinity", _field("float64")) == float("-inf")
    assert decode(True, _field("boolean")) is True
    assert decode("x", _field("string")) == "x"
    assert "boolean" in refusal(1, _field("boolean"))
    assert "int64" in refusal(True, _field("int64"))
    assert "int32" in refusal(Decimal("1.5"), _field("int32"))
    assert "range of float64" in refusal(Decimal("1E+400"), _field("float64"))


def test_arrays_maps_and_structs() -> None:
    # PG: bytea_array array['\x000102', '\x030405'].
    array = {"field": "c", "type": "array", "items": {"type": "bytes", "optional": True}}
    assert decode(["AAEC", "AwQF", None], array) == [b"\x00\x01\x02", b"\x03\x04\x05", None]
    dates = {
        "field": "c",
        "type": "array",
        "items": {"type": "int32", "name": "io.debezium.time.Date"},
    }
    assert decode([0, 17109], dates) == [date(1970, 1, 1), date(2016, 11, 4)]
    hstore = {"field": "c", "type": "map", "keys": {"type": "string"}, "values": {"type": "string"}}
    assert decode({"a": "1"}, hstore) == {"a": "1"}
    struct = {"field": "c", "type": "struct", "fields": [{"field": "b", "type": "bytes"}]}
    assert decode({"b": "AAEC"}, struct) == {"b": b"\x00\x01\x02"}


def test_unknown_logical_types() -> None:
    # Decoded by type, except bytes and structs whose encoding is not known.
    assert decode("abc", _field("string", "io.debezium.data.Unknown")) == "abc"
    assert decode(5, _field("int32", "io.debezium.data.Unknown")) == 5
    assert "not known" in refusal("AAEC", _field("bytes", "io.debezium.data.Unknown"))
    assert "not known" in refusal({"a": 1}, _field("struct", "io.debezium.data.geometry.Circle"))


def test_nulls_and_columns_without_a_field_pass_through() -> None:
    fields = [_field("bytes", DECIMAL, scale="2")]
    assert decode_row({"c": None, "other": "AeI="}, fields) == {"c": None, "other": "AeI="}


def test_the_refusal_names_the_column() -> None:
    fields = [{"field": "price", "type": "bytes", "name": DECIMAL}]
    with pytest.raises(ValueUndecodable, match="column 'price': .*scale"):
        decode_row({"price": "AeI="}, fields)
