"""The start-up check of each pipeline's known tables: a key at the source, what the targets need.

A table whose changes carry no key cannot be upserted or deleted by key, and
a target without a unique key on the source's key columns cannot take an
upsert: left alone, every change to such a table would be parked while the
run looks healthy. The engine refuses to start instead, one line per table
naming what is missing and the fix, unless the table is declared
``append_only`` (inserts only, made idempotent by their source position).
"""

from __future__ import annotations

import logging
from collections.abc import Sequence

from compute.sources.base import Source
from config.pipelines import PipelineSpec
from destinations.base import Destination

logger = logging.getLogger(__name__)


def known_tables(spec: PipelineSpec, source: Source) -> list[str]:
    """The tables known before any event: the pipeline's ``tables`` and ``append_only``, the
    source's own (``primary_keys``), and every destination's ``table_map``, in that order."""
    names: dict[str, None] = dict.fromkeys(spec.tables)
    names.update(dict.fromkeys(spec.append_only))
    names.update(dict.fromkeys(source.declared_tables()))
    for destination in spec.destinations:
        table_map = destination.options.get("table_map")
        if isinstance(table_map, dict):
            names.update(dict.fromkeys(str(t) for t in table_map))
    return list(names)


def _declared(table: str, append_only: Sequence[str]) -> bool:
    return table in append_only or table.rpartition(".")[2] in append_only


def table_problems(
    spec: PipelineSpec, source: Source, destinations: Sequence[Destination]
) -> list[str]:
    """One line per known table of ``spec`` that cannot be written as configured."""
    tables = known_tables(spec, source)
    if not tables:
        return []
    problems: list[str] = []
    keys: dict[str, tuple[str, ...] | None] = {}
    for table in tables:
        columns = source.key_columns(table)
        append_only = _declared(table, spec.append_only)
        if columns == () and not append_only:
            problems.append(
                f"pipeline {spec.name}: table {table}: its changes carry no key (no primary "
                "key at the source, no primary_keys entry), so they cannot be upserted or "
                "deleted by key; fix: give the source table a primary key (or set its "
                "primary_keys), or declare it in the pipeline's append_only"
            )
            continue
        keys[table] = None if append_only else columns
    for destination in destinations:
        problems += [f"pipeline {spec.name}: {p}" for p in destination.check_tables(keys)]
    logger.info(
        "tables checked at start-up: pipeline=%s tables=%d append_only=%d problems=%d",
        spec.name,
        len(tables),
        sum(_declared(t, spec.append_only) for t in tables),
        len(problems),
    )
    return problems
