"""Any value encoded the way Debezium encodes it decodes to exactly the original.

The encoders follow Debezium's and Kafka Connect's Java sources:
Decimal.fromLogical (BigDecimal.unscaledValue().toByteArray(), minimal
big-endian two's complement) with the scale as a parameter; VariableScaleDecimal
({scale, value}); Date (LocalDate.toEpochDay); MicroTimestamp/NanoTimestamp/
Timestamp (Instant epoch second * unit + nano / unit); MicroTime/NanoTime
(LocalTime.toNanoOfDay); ZonedTimestamp (DateTimeFormatter.ISO_OFFSET_DATE_TIME:
0-9 fraction digits, "Z" for UTC); PostgresValueConverter.convertBits
(BitSet.set(len - i - 1) for a '1' at i, BitSet.toByteArray, little-endian);
and the JSON converter's base64 for bytes.
"""

from __future__ import annotations

import base64
from datetime import date, datetime, time, timedelta, timezone
from decimal import Decimal
from typing import Any

from hypothesis import given, settings
from hypothesis import strategies as st

from compute.sources.debezium import decode_row

EPOCH = datetime(1970, 1, 1)


def _decode(value: Any, kind: str, name: str | None = None, **parameters: str) -> Any:
    field: dict[str, Any] = {"field": "c", "type": kind}
    if name:
        field["name"] = name
    field["parameters"] = parameters
    return decode_row({"c": value}, [field])["c"]


def to_byte_array(unscaled: int) -> bytes:
    """BigInteger.toByteArray(): the fewest bytes of big-endian two's complement."""
    size = (unscaled if unscaled >= 0 else ~unscaled).bit_length() // 8 + 1
    return unscaled.to_bytes(size, "big", signed=True)


def b64(raw: bytes) -> str:
    return base64.b64encode(raw).decode("ascii")


unscaled_values = st.integers(min_value=-(10**100), max_value=10**100) | st.integers(-300, 300)
scales = st.integers(min_value=-20, max_value=60)


@settings(max_examples=300, deadline=None)
@given(unscaled_values, scales)
def test_decimal(unscaled: int, scale: int) -> None:
    expected = Decimal(f"{unscaled}E{-scale}")  # from text: exact, no context
    decoded = _decode(
        b64(to_byte_array(unscaled)),
        "bytes",
        "org.apache.kafka.connect.data.Decimal",
        scale=str(scale),
    )
    assert decoded.as_tuple() == expected.as_tuple()


@settings(max_examples=200, deadline=None)
@given(unscaled_values, scales)
def test_variable_scale_decimal(unscaled: int, scale: int) -> None:
    value = {"scale": scale, "value": b64(to_byte_array(unscaled))}
    decoded = _decode(value, "struct", "io.debezium.data.VariableScaleDecimal")
    assert decoded.as_tuple() == Decimal(f"{unscaled}E{-scale}").as_tuple()


def _epoch_micros(moment: datetime) -> int:
    return (moment - EPOCH) // timedelta(microseconds=1)


@settings(max_examples=300, deadline=None)
@given(st.datetimes())
def test_timestamps(moment: datetime) -> None:
    micros = _epoch_micros(moment)
    assert _decode(micros, "int64", "io.debezium.time.MicroTimestamp") == moment
    assert _decode(micros * 1000, "int64", "io.debezium.time.NanoTimestamp") == moment
    millis_moment = moment.replace(microsecond=moment.microsecond // 1000 * 1000)
    millis = _epoch_micros(millis_moment) // 1000
    for name in ("io.debezium.time.Timestamp", "org.apache.kafka.connect.data.Timestamp"):
        assert _decode(millis, "int64", name) == millis_moment


@settings(max_examples=200, deadline=None)
@given(st.dates())
def test_dates(day: date) -> None:
    days = (day - date(1970, 1, 1)).days  # LocalDate.toEpochDay
    assert _decode(days, "int32", "io.debezium.time.Date") == day
    assert _decode(days, "int32", "org.apache.kafka.connect.data.Date") == day


@settings(max_examples=200, deadline=None)
@given(st.times())
def test_times(moment: time) -> None:
    nanos = (
        moment.hour * 3600 + moment.minute * 60 + moment.second
    ) * 10**9 + moment.microsecond * 1000  # LocalTime.toNanoOfDay
    assert _decode(nanos // 1000, "int64", "io.debezium.time.MicroTime") == moment
    assert _decode(nanos, "int64", "io.debezium.time.NanoTime") == moment


@settings(max_examples=200, deadline=None)
@given(st.integers(min_value=1, max_value=999), st.integers(0, 999))
def test_nanoseconds_are_refused_not_rounded(micros: int, nanos: int) -> None:
    from compute.sources.debezium import ValueUndecodable

    value = micros * 1000 + nanos
    try:
        decoded = _decode(value, "int64", "io.debezium.time.NanoTimestamp")
    except ValueUndecodable:
        assert nanos != 0
    else:
        assert nanos == 0 and decoded == EPOCH + timedelta(microseconds=micros)


def iso_offset_date_time(moment: datetime) -> str:
    """DateTimeFormatter.ISO_OFFSET_DATE_TIME: fraction of 0 to 9 digits, "Z" for UTC."""
    text = moment.strftime("%Y-%m-%dT%H:%M:%S").rjust(19, "0")
    text = f"{moment.year:04d}" + text[text.index("-") :]
    if moment.microsecond:
        text += "." + f"{moment.microsecond:06d}".rstrip("0")
    offset = moment.utcoffset() or timedelta(0)
    if not offset:
        return text + "Z"
    sign = "-" if offset < timedelta(0) else "+"
    minutes = abs(offset) // timedelta(minutes=1)
    return text + f"{sign}{minutes // 60:02d}:{minutes % 60:02d}"


offsets = st.integers(min_value=-18 * 60, max_value=18 * 60).map(
    lambda m: timezone(timedelta(minutes=m))
)


@settings(max_examples=300, deadline=None)
@given(st.datetimes(min_value=datetime(1, 1, 2), max_value=datetime(9999, 12, 30)), offsets)
def test_zoned_timestamps(local: datetime, zone: timezone) -> None:
    moment = local.replace(tzinfo=zone)
    decoded = _decode(iso_offset_date_time(moment), "string", "io.debezium.time.ZonedTimestamp")
    assert decoded == moment and decoded.utcoffset() == moment.utcoffset()


@settings(max_examples=300, deadline=None)
@given(st.binary(max_size=300))
def test_bytes(raw: bytes) -> None:
    assert _decode(b64(raw), "bytes") == raw


@settings(max_examples=300, deadline=None)
@given(st.text(alphabet="01", min_size=2, max_size=300))
def test_bits(bits: str) -> None:
    number = 0
    for i, char in enumerate(bits):  # BitSet.set(len - i - 1) for each '1'
        if char == "1":
            number |= 1 << (len(bits) - i - 1)
    raw = number.to_bytes((number.bit_length() + 7) // 8, "little")  # BitSet.toByteArray
    assert _decode(b64(raw), "bytes", "io.debezium.data.Bits", length=str(len(bits))) == bits


@settings(max_examples=200, deadline=None)
@given(st.timedeltas(min_value=timedelta(days=-30), max_value=timedelta(days=30)))
def test_micro_durations_under_a_month(duration: timedelta) -> None:
    micros = duration // timedelta(microseconds=1)
    assert _decode(micros, "int64", "io.debezium.time.MicroDuration") == duration
