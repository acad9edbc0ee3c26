"""Reads the pipeline definitions from the config database (``CONFIG_DATABASE_URL``)."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import psycopg2
from psycopg2.extensions import parse_dsn

from config.dsn import dsn_problem
from config.errors import ConfigError
from config.pipelines import PipelineSpec, parse_pipelines
from config.redact import first_line, redact

# The config database schema, as documented in the README (a test keeps the two equal).
CONFIG_DATABASE_SCHEMA = """\
CREATE TABLE rosetta_pipelines (
    name           text PRIMARY KEY,
    source_id      text NOT NULL UNIQUE,
    source_type    text NOT NULL,                 -- synthetic | jsonl
    source_options jsonb NOT NULL DEFAULT '{}',   -- as [pipelines.source], without id/type
    batch_size     integer NOT NULL DEFAULT 500,
    retry          text NOT NULL DEFAULT 'aggressive',
    tables         text[] NOT NULL DEFAULT '{}',  -- tables checked at start-up
    append_only    text[] NOT NULL DEFAULT '{}',  -- inserts only, e.g. {public.audit_log}
    priority       jsonb NOT NULL DEFAULT '{}',   -- replay priority, e.g. {"public.orders": 10}
    enabled        boolean NOT NULL DEFAULT true
);
CREATE TABLE rosetta_destinations (
    pipeline text NOT NULL REFERENCES rosetta_pipelines (name),
    id       text NOT NULL,
    name     text NOT NULL,
    type     text NOT NULL,                       -- postgresql | snowflake
    options  jsonb NOT NULL DEFAULT '{}',  -- as [[pipelines.destinations]]; *_env for secrets
    PRIMARY KEY (pipeline, id)
);
"""

# Each row whole, as JSON: a database made before the tables, append_only and
# priority columns existed reads as if they were empty.
_PIPELINES_QUERY = """
SELECT to_jsonb(p) FROM rosetta_pipelines p WHERE enabled ORDER BY name
"""
_PIPELINE_FIELDS = ("name", "batch_size", "retry", "tables", "append_only", "priority")
_DESTINATIONS_QUERY = """
SELECT pipeline, id, name, type, options FROM rosetta_destinations ORDER BY pipeline, id
"""


def read_pipeline_config(url: str, env: Mapping[str, str]) -> list[PipelineSpec]:
    """Pipelines from the config database (``CONFIG_DATABASE_URL``); schema in the README.

    A malformed URL, connection and schema problems become one ``ConfigError``
    that never shows the URL or its password.
    """
    problem = dsn_problem(url)
    if problem is not None:
        raise ConfigError([f"CONFIG_DATABASE_URL: invalid DSN: {problem}"])
    secrets = (parse_dsn(url).get("password"),)
    try:
        conn = psycopg2.connect(url, connect_timeout=10)
    except psycopg2.Error as error:
        raise ConfigError(
            [
                "CONFIG_DATABASE_URL: cannot connect to the config database: "
                f"{redact(first_line(error), secrets)}"
            ]
        ) from None
    try:
        with conn, conn.cursor() as cur:
            cur.execute(_PIPELINES_QUERY)
            pipelines = cur.fetchall()
            cur.execute(_DESTINATIONS_QUERY)
            destinations = cur.fetchall()
    except psycopg2.Error as error:
        raise ConfigError(
            [
                "CONFIG_DATABASE_URL: the config database lacks the expected tables "
                "rosetta_pipelines and rosetta_destinations (see README, 'Running the engine'): "
                f"{redact(first_line(error), secrets)}"
            ]
        ) from None
    finally:
        conn.close()
    by_pipeline: dict[str, list[dict[str, Any]]] = {}
    for pipeline, dest_id, name, kind, options in destinations:
        by_pipeline.setdefault(pipeline, []).append(
            {**(options or {}), "id": dest_id, "name": name, "type": kind}
        )
    data = {
        "pipelines": [
            {
                **{k: row[k] for k in _PIPELINE_FIELDS if row.get(k) is not None},
                "source": {
                    **(row.get("source_options") or {}),
                    "id": row.get("source_id"),
                    "type": row.get("source_type"),
                },
                "destinations": by_pipeline.get(row.get("name"), []),
            }
            for (row,) in pipelines
        ]
    }
    return parse_pipelines(data, env, where="config database")
