"""The true rows of the Debezium fixtures: target tables and the values that must land."""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass, field
from decimal import Decimal
from typing import Any
from uuid import UUID

# Derivations follow Debezium's documented encodings: Decimal = big-endian two's complement
# unscaled value with the schema's ``scale``; Date = days since 1970-01-01; Timestamp /
# MicroTimestamp = milli/microseconds since 1970-01-01T00:00 (no zone); ZonedTimestamp = ISO
# text in UTC. Where the fixture's own source publishes the row (the dvdrental sample
# database, the SQL of the example), the value was checked against it too.


@dataclass(frozen=True)
class Truth:
    """What one fixture must do at the destination.

    ``ddl``: the PostgreSQL column definitions of the target table, typed as the source's
    columns were. ``key``: its primary key columns. ``before``: a row present before the
    fixture is applied (for updates and deletes). ``row``: the row that must be there
    afterwards, None when the fixture deletes it. ``parked``: a substring of the reason the
    change is set aside with, when it cannot be written exactly (then the table must still
    hold ``before``)."""

    fixture: str
    ddl: str
    key: tuple[str, ...]
    row: dict[str, Any] | None
    before: dict[str, Any] | None = None
    parked: str | None = None
    notes: tuple[str, ...] = field(default=())


TRUTHS: tuple[Truth, ...] = (
    Truth(
        "postgresql/payment_snapshot_decimal_schema.json",
        "payment_id integer, customer_id smallint, staff_id smallint, rental_id integer, "
        "amount numeric(5,2), payment_date timestamp",
        ("payment_id",),
        # amount "ASs=" = 0x012B = 299, scale 2 -> 2.99; payment_date 1179150269996577 us.
        # dvdrental's payment 32098 is (264, 2, 14243, 2.99, '2007-05-14 13:44:29.996577').
        {
            "payment_id": 32098,
            "customer_id": 264,
            "staff_id": 2,
            "rental_id": 14243,
            "amount": Decimal("2.99"),
            "payment_date": dt.datetime(2007, 5, 14, 13, 44, 29, 996577),
        },
    ),
    Truth(
        "postgresql/film_actor_delete_schema.json",
        "actor_id smallint, film_id smallint, last_update timestamp",
        ("actor_id", "film_id"),
        None,
        # dvdrental's film_actor (1, 23), last_update '2006-02-15 10:05:03'; the delete's
        # ``before`` carries only the key (its last_update 0 is REPLICA IDENTITY DEFAULT's).
        before={"actor_id": 1, "film_id": 23, "last_update": dt.datetime(2006, 2, 15, 10, 5, 3)},
    ),
    Truth(
        "postgresql/photo_date_bytes_schema.json",
        "documentid integer, name text, objectid text, objecttype text, authorid text, "
        "mimetype text, created date, description text, data bytea, updateby text, "
        "lastupdate date",
        ("documentid",),
        # created/lastupdate 17567 days -> 2018-02-05; data: the base64 decodes to a
        # 45,333-byte JPEG (starts FF D8 FF E0), identified here by its SHA-256.
        {
            "documentid": 15,
            "name": "photo.png",
            "objectid": "26",
            "objecttype": "PHOTO",
            "authorid": "BBBB05G",
            "mimetype": "image/jpeg",
            "created": dt.date(2018, 2, 5),
            "description": "A photograph of the union member or relation",
            "data": ("sha256", "41b0bdbe6d45917d6b0cb6fe89279b2599d2cdceb3b4634594961519a58caa9c"),
            "updateby": "18|%|legacy",
            "lastupdate": dt.date(2018, 2, 5),
        },
    ),
    Truth(
        "postgresql/timeslot_uuid_zoned_schema.json",
        "id uuid, agenda_id uuid, start_time timestamp, end_time timestamp, created_by text, "
        "date_created timestamptz, date_modified timestamptz, modified_by text, "
        "created_by_service text, modified_by_service text, appointment_duration smallint",
        ("id",),
        # start/end 1666266000000000 / 1666269600000000 us -> 2022-10-20 11:40 / 12:40;
        # date_created "2022-10-19T14:30:12.261837Z" (ZonedTimestamp, UTC).
        {
            "id": UUID("3b8fb0a2-72fb-4183-a017-8b7f00ba8d32"),
            "agenda_id": UUID("32529170-73ec-400e-b19f-157fe21177aa"),
            "start_time": dt.datetime(2022, 10, 20, 11, 40),
            "end_time": dt.datetime(2022, 10, 20, 12, 40),
            "created_by": "1669b36a-bbf7-4274-9bd5-1ae1f4a2898c",
            "date_created": dt.datetime(2022, 10, 19, 14, 30, 12, 261837, tzinfo=dt.UTC),
            "date_modified": dt.datetime(2022, 10, 19, 14, 30, 12, 261837, tzinfo=dt.UTC),
            "modified_by": "1669b36a-bbf7-4274-9bd5-1ae1f4a2898c",
            "created_by_service": "quin-portal",
            "modified_by_service": "quin-portal",
            "appointment_duration": 20,
        },
    ),
    Truth(
        "postgresql/film_snapshot_array_schema.json",
        "film_id integer, title text, description text, release_year integer, "
        "language_id smallint, rental_duration smallint, rental_rate numeric(4,2), "
        "length smallint, replacement_cost numeric(5,2), rating text, last_update timestamp, "
        "special_features text[]",
        ("film_id",),
        # rental_rate "AfM=" = 499 scale 2; replacement_cost "CcM=" = 2499 scale 2;
        # last_update 1369579858951000 us. dvdrental's film 778 has 4.99, 24.99,
        # '2013-05-26 14:50:58.951', {Trailers,Commentaries}. ``rating`` is the mpaa_rating
        # enum in dvdrental; text here (Debezium's Enum is its label).
        {
            "film_id": 778,
            "title": "Secrets Paradise",
            "description": "A Fateful Saga of a Cat And a Frisbee who must Kill a Girl in "
            "A Manhattan Penthouse",
            "release_year": 2006,
            "language_id": 1,
            "rental_duration": 3,
            "rental_rate": Decimal("4.99"),
            "length": 109,
            "replacement_cost": Decimal("24.99"),
            "rating": "G",
            "last_update": dt.datetime(2013, 5, 26, 14, 50, 58, 951000),
            "special_features": ["Trailers", "Commentaries"],
        },
    ),
    Truth(
        "postgresql/customers_create_schema_docs.json",
        "id integer, first_name text, last_name text, email text",
        ("id",),
        {"id": 1, "first_name": "Anne", "last_name": "Kretchmar", "email": "annek@noanswer.org"},
    ),
    Truth(
        "postgresql/authors_toast_update_noschema.json",
        "id integer, first_name text, last_name text, biography text, dob timestamp",
        ("id",),
        None,
        # The row as public_inventory.sql inserts it (biography shortened: any value
        # shows whether the placeholder overwrote it). The update sets dob '1930-03-01',
        # but without a schema its -1257206400000000 may be millis, micros or nanos: the
        # change cannot be written exactly and is parked; biography must never become the
        # placeholder.
        before={
            "id": 1001,
            "first_name": "Tom",
            "last_name": "Wolfe",
            "biography": "Thomas Kennerly Wolfe Jr. (March 2, 1930 - May 14, 2018)",
            "dob": dt.datetime(1930, 3, 2),
        },
        parked="time.precision.mode",
    ),
    Truth(
        "postgresql/orders_numeric_noschema.json",
        # money has no exact counterpart in Snowflake and prints by locale: numeric(12,2).
        "o_key integer, o_smallint smallint, o_integer integer, o_bigint bigint, o_real real, "
        "o_double double precision, o_numeric numeric, o_numeric_6_3 numeric(6,3), "
        "o_money numeric(12,2)",
        ("o_key",),
        # The RisingWave test's assertions: 32767, 2147483647, 9223372036854775807, 9.999,
        # 9.999999, 123456.789, 123.456, 123.12.
        {
            "o_key": 0,
            "o_smallint": 32767,
            "o_integer": 2147483647,
            "o_bigint": 9223372036854775807,
            "o_real": 9.999,
            "o_double": 9.999999,
            "o_numeric": Decimal("123456.789"),
            "o_numeric_6_3": Decimal("123.456"),
            "o_money": Decimal("123.12"),
        },
    ),
    Truth(
        "postgresql/orders_temporal_noschema.json",
        "o_key integer, o_time_0 time(0), o_time_6 time(6), o_timez_0 time(0) with time zone, "
        "o_timez_6 time(6) with time zone, o_timestamp_0 timestamp(0), "
        "o_timestamp_6 timestamp(6), o_timestampz_0 timestamp(0) with time zone, "
        "o_timestampz_6 timestamp(6) with time zone, o_interval interval, o_date date",
        ("o_key",),
        None,
        # o_time_0 40271000000 is 11:11:11 in micros, o_timestamp_0 1321009871000 is millis:
        # without a schema nothing says which unit; the change must be parked.
        parked="time.precision.mode",
    ),
    Truth(
        "postgresql/orders_other_types_noschema.json",
        "o_key integer, o_boolean boolean, o_bit bit(1), o_bytea bytea, o_json jsonb, "
        "o_xml xml, o_uuid uuid, o_point point, o_enum text, o_char char(1), o_varchar varchar, "
        "o_character char(1), o_character_varying varchar",
        ("o_key",),
        None,
        # o_bytea "ASNFZ4mrze8=" is 01 23 45 67 89 AB CD EF, but without a schema it is just
        # text: never written as its ASCII bytes; parked naming the setting that fixes it,
        # schemas in the converter (binary.handling.mode=hex text is no more telling).
        parked="value.converter.schemas.enable=true",
    ),
    Truth(
        "mysql/customers_create_schema.json",
        "id integer, first_name text, last_name text, email text",
        ("id",),
        # The event's own source.query: INSERT ... VALUES ('Anne', 'Kretchmar', ...).
        {"id": 1004, "first_name": "Anne", "last_name": "Kretchmar", "email": "annek@noanswer.org"},
    ),
    Truth(
        "mysql/customers_create_noschema.json",
        "id integer, first_name text, last_name text, email text",
        ("id",),
        {"id": 1004, "first_name": "Anne", "last_name": "Kretchmar", "email": "annek@noanswer.org"},
    ),
    Truth(
        "mysql/customers_update_noschema.json",
        "id integer, first_name text, last_name text, email text",
        ("id",),
        {"id": 1004, "first_name": "Anne", "last_name": "Kretchmar", "email": "annek@noanswer.org"},
        before={
            "id": 1004,
            "first_name": "Anne-Marie",
            "last_name": "Kretchmar",
            "email": "annek@noanswer.org",
        },
    ),
    Truth(
        "mysql/somerole_snapshot_timestamp_schema.json",
        "id bigint, created_by bigint, created_on timestamp",
        ("id",),
        # created_on 1627377701000 ms (io.debezium.time.Timestamp, a DATETIME) -> 2021-07-27
        # 09:21:41.
        {"id": 274, "created_by": 29, "created_on": dt.datetime(2021, 7, 27, 9, 21, 41)},
    ),
    Truth(
        "mysql/products_update_noschema.json",
        "id integer, name text, description text, weight double precision",
        ("id",),
        # The RisingWave test's assertions: (102, car battery, 24V car battery, 9.1).
        {"id": 102, "name": "car battery", "description": "24V car battery", "weight": 9.1},
        before={"id": 102, "name": "car battery", "description": "12V car battery", "weight": 8.1},
    ),
    Truth(
        "mysql/products_delete_noschema.json",
        "id integer, name text, description text, weight double precision",
        ("id",),
        None,
        before={
            "id": 101,
            "name": "scooter",
            "description": "Small 2-wheel scooter",
            "weight": 1.234,
        },
    ),
    Truth(
        "mysql/orders_update_noschema.json",
        '"O_KEY" bigint, "O_BOOL" boolean, "O_TINY" smallint, "O_INT" integer, "O_REAL" real, '
        '"O_DOUBLE" double precision, "O_DECIMAL" numeric(15,2), "O_CHAR" char(15), '
        '"O_DATE" date, "O_TIME" time, "O_DATETIME" timestamp, "O_TIMESTAMP" timestamptz, '
        '"O_JSON" jsonb',
        ("O_KEY",),
        None,
        # O_TIME 86399000000 (23:59:59 in micros) and O_DATETIME 99999999999000 (millis)
        # are bare integers without a schema: parked.
        parked="time.precision.mode",
    ),
)
