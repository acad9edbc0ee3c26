"""A fresh schema with an ``ITEMS (ID, NAME)`` table in fakesnow, and its rows, for one test."""

from __future__ import annotations

import contextlib
import uuid
from collections.abc import Iterator
from typing import Any

import snowflake.connector


@contextlib.contextmanager
def items_schema(server: dict[str, Any], database: str, prefix: str) -> Iterator[str]:
    """Creates ``<database>.<prefix>_<random>.ITEMS``; yields the schema's name."""
    name = f"{prefix}_{uuid.uuid4().hex[:8].upper()}"
    conn = snowflake.connector.connect(**server)
    try:
        cur = conn.cursor()
        cur.execute(f"CREATE DATABASE IF NOT EXISTS {database}")
        cur.execute(f"CREATE SCHEMA {database}.{name}")
        cur.execute(f"CREATE TABLE {database}.{name}.ITEMS (ID INT, NAME VARCHAR)")
        yield name
    finally:
        conn.close()


def item_rows(server: dict[str, Any], database: str, schema: str) -> list[tuple[Any, ...]]:
    """``(ID, NAME)`` of every row of the schema's ITEMS, by ID."""
    conn = snowflake.connector.connect(**server)
    try:
        cur = conn.cursor()
        cur.execute(f"SELECT ID, NAME FROM {database}.{schema}.ITEMS ORDER BY ID")
        return list(cur.fetchall())
    finally:
        conn.close()
