"""Builds destinations from their specs and checks their settings; drivers load only when used."""

from __future__ import annotations

import inspect
from collections.abc import Iterable
from typing import Any

from config.errors import ConfigError
from config.pipelines import DestinationSpec, PipelineSpec
from destinations.base import Destination


def check_destinations(specs: Iterable[PipelineSpec]) -> None:
    """Refuse, all at once, destination settings that are wrong without connecting.

    Run before anything starts: a malformed DSN would otherwise fail every
    write and park every event as a permanent failure.
    """
    problems = [p for spec in specs for d in spec.destinations for p in _destination_problems(d)]
    if problems:
        raise ConfigError(problems)


# The engine's own per-destination options (not passed to the destination's driver).
_DEADLINE_OPTION = "live_write_deadline_ms"
_BATCH_SIZE_OPTION = "batch_size"
MAX_BATCH_SIZE = 100_000


def _whole(value: object) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _destination_problems(spec: DestinationSpec) -> list[str]:
    """What is wrong with ``spec``'s settings, each naming the setting (secrets masked)."""
    problems = []
    deadline = spec.options.get(_DEADLINE_OPTION)
    if deadline is not None and not (_whole(deadline) and 10 <= deadline <= 3_600_000):
        problems.append(
            f"destination {spec.name} (ID={spec.id}): {spec.setting(_DEADLINE_OPTION)} must be an "
            f"integer number of milliseconds from 10 to 3600000, got {deadline!r}"
        )
    size = spec.options.get(_BATCH_SIZE_OPTION)
    if size is not None and not (_whole(size) and 1 <= size <= MAX_BATCH_SIZE):
        problems.append(
            f"destination {spec.name} (ID={spec.id}): {spec.setting(_BATCH_SIZE_OPTION)} must be "
            f"an integer number of events from 1 to {MAX_BATCH_SIZE}, got {size!r}"
        )
    problems.extend(_unknown_options(spec))
    if spec.type == "postgresql" and "dsn" in spec.options:
        from config.dsn import dsn_problem  # imports psycopg2

        problem = dsn_problem(spec.options["dsn"])
        if problem is not None:
            problems.append(
                f"destination {spec.name} (ID={spec.id}): {spec.setting('dsn')}: "
                f"invalid DSN: {problem}"
            )
    return problems


def _driver_class(kind: str) -> type[Destination] | None:
    """The destination class of ``kind``; imports its driver."""
    if kind == "postgresql":
        from destinations.postgresql.destination import PostgreSQLDestination

        return PostgreSQLDestination
    if kind == "snowflake":
        from destinations.snowflake.destination import SnowflakeDestination

        return SnowflakeDestination
    return None


def valid_options(kind: str) -> list[str] | None:
    """Every option a destination of ``kind`` accepts (its class's, and the engine's); sorted."""
    cls = _driver_class(kind)
    if cls is None:
        return None
    names = {
        name
        for name, parameter in inspect.signature(cls.__init__).parameters.items()
        if parameter.kind in (parameter.KEYWORD_ONLY, parameter.POSITIONAL_OR_KEYWORD)
    }
    names -= {"self", "destination_id", "name"}
    return sorted(names | {_DEADLINE_OPTION, _BATCH_SIZE_OPTION})


def _unknown_options(spec: DestinationSpec) -> list[str]:
    """One problem per option ``spec`` sets that its type does not know, listing the valid ones."""
    valid = valid_options(spec.type)
    if valid is None:
        return []  # an unknown type is reported when the destination is built
    unknown = sorted(set(spec.options) - set(valid))
    # An option read from the environment is named as written: "foo_env", not "foo".
    return [
        f"destination {spec.name} (ID={spec.id}): unknown option "
        f"{spec.setting(option).split()[0]!r} for a {spec.type} destination; valid options: "
        f"{', '.join(valid)} (any of them as <option>_env to read it from an environment "
        "variable)"
        for option in unknown
    ]


def build_destination(spec: DestinationSpec) -> Destination:
    problems = _destination_problems(spec)
    if problems:
        raise ConfigError(problems)
    options: dict[str, Any] = dict(spec.options)
    deadline = options.pop(_DEADLINE_OPTION, None)
    size = options.pop(_BATCH_SIZE_OPTION, None)
    destination = _build_driver(spec, options)
    if deadline is not None:
        destination.live_write_deadline = deadline / 1000
    destination.max_batch_size = size
    return destination


def _build_driver(spec: DestinationSpec, options: dict[str, Any]) -> Destination:
    cls = _driver_class(spec.type)
    try:
        if cls is not None:
            return cls(spec.id, spec.name, **options)
    except TypeError as error:
        raise ConfigError([f"destination {spec.id} ({spec.type}): bad option: {error}"]) from None
    raise ConfigError([f"destination {spec.id}: unknown type {spec.type!r}"])
