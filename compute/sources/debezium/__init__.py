"""Debezium's encoded values (Kafka Connect JSON converter) decoded exactly, or refused."""

from __future__ import annotations

from compute.sources.debezium.checks import ValueUndecodable
from compute.sources.debezium.decode import DEFAULT_PLACEHOLDERS, decode_row, schema_fields
from compute.sources.debezium.schemaless import SCHEMALESS_HINTS, schemaless_hint

__all__ = [
    "DEFAULT_PLACEHOLDERS",
    "SCHEMALESS_HINTS",
    "ValueUndecodable",
    "decode_row",
    "schema_fields",
    "schemaless_hint",
]
