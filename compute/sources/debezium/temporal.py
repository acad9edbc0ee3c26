"""Debezium's and Kafka Connect's date, time, timestamp and duration encodings, decoded exactly.

Epoch integers (days, ms, us, ns) become ``date``, ``time`` and naive
``datetime`` (a ``TIMESTAMP WITHOUT TIME ZONE`` has no zone); ISO strings with
an offset become aware values. Python and PostgreSQL keep microseconds: a
value with a nanosecond remainder is refused, never rounded.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Mapping
from datetime import date, datetime, time, timedelta
from decimal import Decimal
from typing import Any

from compute.sources.debezium.checks import Refused, expect_int, expect_str

_EPOCH_DATE = date(1970, 1, 1)
_EPOCH = datetime(1970, 1, 1)
_DAY_US = 86_400_000_000
# MicroDuration turns each month into 365.25 / 12 days before sending.
_AVERAGE_MONTH_US = 2_629_800_000_000
_NANO_REASON = (
    "it has nanoseconds, and the destination keeps microseconds: the value would be rounded"
)
_ISO_DURATION = re.compile(
    r"P(?P<y>-?\d+)Y(?P<mo>-?\d+)M(?P<d>-?\d+)DT(?P<h>-?\d+)H(?P<mi>-?\d+)M(?P<s>-?\d+(?:\.\d+)?)S"
)
# An ISO offset time or date-time: the fraction taken apart, since Python
# keeps six digits and Java writes up to nine.
_FRACTION = re.compile(
    r"(?P<head>.*?\d\d:\d\d(?::\d\d)?)(?:\.(?P<digits>\d{1,9}))?(?P<zone>Z|[+-].*)$"
)


def _date(value: Any, schema: Mapping[str, Any]) -> date:
    days = expect_int(value, "days since 1970-01-01")
    try:
        return _EPOCH_DATE + timedelta(days=days)
    except OverflowError:
        raise Refused(f"date {days} days from 1970-01-01 is outside years 1 to 9999") from None


def _micros_from(value: Any, per_second: int) -> int:
    """Whole microseconds of an epoch count of ``per_second`` units."""
    count = expect_int(value, f"1/{per_second} s units")
    if per_second == 1_000_000_000:
        if count % 1000:
            raise Refused(_NANO_REASON)
        return count // 1000
    return count * (1_000_000 // per_second)


def _time(per_second: int) -> Callable[[Any, Mapping[str, Any]], time]:
    def decode(value: Any, schema: Mapping[str, Any]) -> time:
        micros = _micros_from(value, per_second)
        if not 0 <= micros < _DAY_US:
            # MySQL's TIME is a duration (-838:59:59 to 838:59:59), PostgreSQL
            # allows 24:00:00: neither fits a time of day.
            raise Refused(
                f"time {micros} us from midnight is not a time of day (00:00 to 23:59:59.999999)"
            )
        seconds, us = divmod(micros, 1_000_000)
        return time(seconds // 3600, seconds // 60 % 60, seconds % 60, us)

    return decode


def _timestamp(per_second: int) -> Callable[[Any, Mapping[str, Any]], datetime]:
    def decode(value: Any, schema: Mapping[str, Any]) -> datetime:
        micros = _micros_from(value, per_second)
        try:
            return _EPOCH + timedelta(microseconds=micros)
        except OverflowError:
            raise Refused(
                f"timestamp {micros} us from 1970-01-01 is outside years 1 to 9999 "
                "(an 'infinity' timestamp, or a year before 1)"
            ) from None

    return decode


def _split_fraction(text: str, what: str) -> tuple[str, int, str]:
    """The text without fraction, the fraction in microseconds, and the zone."""
    match = _FRACTION.fullmatch(text)
    if match is None:
        raise Refused(f"{what} {text[:60]!r} is not ISO 8601 with an offset")
    digits = (match["digits"] or "").ljust(9, "0")
    if digits[6:] != "000":
        raise Refused(_NANO_REASON)
    return match["head"], int(digits[:6]), match["zone"]


def _zoned_timestamp(value: Any, schema: Mapping[str, Any]) -> datetime:
    text = expect_str(value, "ZonedTimestamp (ISO 8601)")
    head, micros, zone = _split_fraction(text, "ZonedTimestamp")
    try:
        parsed = datetime.fromisoformat(head + ("+00:00" if zone == "Z" else zone))
    except ValueError:
        raise Refused(
            f"ZonedTimestamp {text[:60]!r} is not a date-time from year 1 to 9999"
        ) from None
    if parsed.tzinfo is None:
        raise Refused(f"ZonedTimestamp {text[:60]!r} has no offset")
    return parsed.replace(microsecond=micros)


def _zoned_time(value: Any, schema: Mapping[str, Any]) -> time:
    # Debezium sends a timetz in UTC: the instant is the source's, its offset is not in the event.
    text = expect_str(value, "ZonedTime (ISO 8601)")
    head, micros, zone = _split_fraction(text, "ZonedTime")
    try:
        parsed = time.fromisoformat(head + ("+00:00" if zone == "Z" else zone))
    except ValueError:
        raise Refused(f"ZonedTime {text[:60]!r} is not a time with an offset") from None
    return parsed.replace(microsecond=micros)


def _micro_duration(value: Any, schema: Mapping[str, Any]) -> timedelta:
    micros = expect_int(value, "MicroDuration (microseconds)")
    if abs(micros) >= _AVERAGE_MONTH_US:
        raise Refused(
            "an interval of a month or more as MicroDuration: Debezium counts a month as "
            "30.4375 days, so its months are lost; set interval.handling.mode=string"
        )
    return timedelta(microseconds=micros)


def _interval(value: Any, schema: Mapping[str, Any]) -> timedelta | str:
    text = expect_str(value, "Interval (ISO 8601)")
    match = _ISO_DURATION.fullmatch(text)
    if match is None:
        raise Refused(f"Interval {text[:60]!r} is not ISO 8601 'PnYnMnDTnHnMnS'")
    seconds = Decimal(match["s"])
    if seconds != seconds.quantize(Decimal("0.000001")):
        raise Refused(_NANO_REASON)
    if int(match["y"]) or int(match["mo"]):
        # Months have no fixed length: PostgreSQL's interval reads this ISO
        # text as is, a timedelta could not hold it.
        return text
    try:
        return timedelta(
            days=int(match["d"]),
            hours=int(match["h"]),
            minutes=int(match["mi"]),
            microseconds=int(seconds * 1_000_000),
        )
    except OverflowError:
        raise Refused(f"Interval {text[:60]!r} is longer than 999,999,999 days") from None


def _year(value: Any, schema: Mapping[str, Any]) -> int:
    return expect_int(value, "Year")


DECODERS: dict[str, Callable[[Any, Mapping[str, Any]], Any]] = {
    "io.debezium.time.Date": _date,
    "org.apache.kafka.connect.data.Date": _date,
    "io.debezium.time.Time": _time(1000),
    "org.apache.kafka.connect.data.Time": _time(1000),
    "io.debezium.time.MicroTime": _time(1_000_000),
    "io.debezium.time.NanoTime": _time(1_000_000_000),
    "io.debezium.time.Timestamp": _timestamp(1000),
    "org.apache.kafka.connect.data.Timestamp": _timestamp(1000),
    "io.debezium.time.MicroTimestamp": _timestamp(1_000_000),
    "io.debezium.time.NanoTimestamp": _timestamp(1_000_000_000),
    "io.debezium.time.ZonedTimestamp": _zoned_timestamp,
    "io.debezium.time.ZonedTime": _zoned_time,
    "io.debezium.time.MicroDuration": _micro_duration,
    "io.debezium.time.Interval": _interval,
    "io.debezium.time.Year": _year,
}
