"""The README's "Position guard on Snowflake" DDL, read from the README, on the Snowflake emulator.

The DDL is run as the README gives it (in a fresh schema instead of
``ANALYTICS.RAW``), then a guarded destination writes through it: a delete,
an older insert replayed after it, a truncate and an older update after it;
the row must never come back.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import pytest

from destinations.records import ChangeRecord, Operation, SourcePosition
from destinations.snowflake.destination import SnowflakeDestination
from tests.builders import delete, upsert
from tests.destinations.postgresql.test_readme_position_guard import readme_code
from tests.destinations.snowflake import test_destination as shared

pytestmark = pytest.mark.filterwarnings("ignore:Arrow output on a DB-API result:UserWarning")

DATABASE, run = shared.DATABASE, shared.run
sf_admin, sf_schema, make_destination = shared.sf_admin, shared.sf_schema, shared.make_destination


def readme_ddl(schema: str) -> list[str]:
    """The README's statements, ``ANALYTICS.RAW.`` replaced by ``schema``, comments dropped."""
    text = readme_code("readme-snowflake-guard-ddl")
    text = "\n".join(line for line in text.splitlines() if not line.startswith("--"))
    text = text.replace("ANALYTICS.RAW.", f"{DATABASE}.{schema}.")
    return [statement.strip() for statement in text.split(";") if statement.strip()]


def test_the_readme_ddl_makes_a_table_the_guard_writes(
    sf_admin: Any, sf_schema: str, make_destination: Callable[..., SnowflakeDestination]
) -> None:
    statements = readme_ddl(sf_schema)
    assert len(statements) == 4 and "ANALYTICS" not in " ".join(statements)
    for statement in statements:
        run(sf_admin, statement)
    dest = make_destination(sf_schema, position_guard=True)
    users = "public.users"

    def user(commit: int, email: str) -> ChangeRecord:
        return upsert(1, {"email": email, "balance": 10}, commit, table=users)

    dest.write_batch(users, [user(10, "a@example.com"), delete(1, 20, table=users)])
    dest.write_batch(users, [user(15, "replayed@example.com")])
    table = f"{DATABASE}.{sf_schema}.USERS"
    assert run(sf_admin, f"SELECT * FROM {table}") == []
    assert run(sf_admin, f"SELECT * FROM {table}__ROSETTA_TOMBSTONES") == [(1, 20, 0)]

    dest.write_batch(users, [user(30, "b@example.com")])
    truncate = ChangeRecord(users, Operation.TRUNCATE, {}, None, SourcePosition(40))
    dest.write_batch(users, [truncate, user(35, "before the truncate")])
    assert run(sf_admin, f"SELECT * FROM {table}") == []
    marks = run(
        sf_admin,
        f"SELECT TABLE_NAME, _ROSETTA_COMMIT FROM {DATABASE}.{sf_schema}._ROSETTA_TRUNCATES",
    )
    assert marks == [("USERS", 40)]
