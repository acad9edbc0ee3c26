"""Pipeline definitions (``PipelineSpec``) and their TOML schema, parsed with every problem named.

TOML schema (``ROSETTA_PIPELINES_FILE``)::

    [[pipelines]]
    name = "orders"                 # unique
    batch_size = 500                # events per source read (default 500)
    retry = "aggressive"            # in-place retry preset for live writes
    tables = ["public.orders"]      # tables checked at start-up (besides table_map, primary_keys)
    append_only = ["public.audit_log"]  # inserts only, made idempotent by their position
    priority = { "public.orders" = 10, "public.audit_log" = -5 }  # replay order, default 0

    [pipelines.source]
    id = "1"
    type = "synthetic"              # or "jsonl", "postgresql"
    # synthetic: tables, total_events, seed, keys_per_table, events_per_second
    # jsonl: path ("-" = stdin), follow, primary_keys = { "public.t" = ["id"] }
    # postgresql: dsn_env (or dsn), slot, publication (both default rosetta_<id>),
    #   tables, create = true, snapshot = "initial" | "never", status_interval

    [[pipelines.destinations]]
    id = "1"
    name = "Postgres-Local"
    type = "postgresql"             # or "snowflake"
    dsn_env = "ROSETTA_DEST_1_DSN"  # secrets come from the environment...
    # dsn = "postgresql://..."      # ...or inline (kept out of logs and repr)
    position_guard = false
    table_map = { "public.users" = "replica.users" }

Destination options whose name ends in ``_env`` are read from that
environment variable (``password_env``, ``dsn_env``), so the file holds no
secret. Every problem in the file is reported at once, with its location.
"""

from __future__ import annotations

import tomllib
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

from config.errors import ConfigError

SOURCE_TYPES = ("synthetic", "jsonl", "postgresql")
DESTINATION_TYPES = ("postgresql", "snowflake")
RETRY_PRESETS = ("aggressive", "conservative", "default")
# A table's replay priority: higher replays first after an outage; unlisted tables get 0.
PRIORITY_MIN, PRIORITY_MAX, DEFAULT_PRIORITY = -100, 100, 0

T = TypeVar("T")


@dataclass(frozen=True)
class SourceSpec:
    id: str
    type: str
    # May hold a secret (a postgresql source's dsn): never shown by repr.
    options: Mapping[str, Any] = field(default_factory=dict, repr=False)


@dataclass(frozen=True)
class DestinationSpec:
    id: str
    name: str
    type: str
    # May hold secrets (dsn, password): never shown by repr.
    options: Mapping[str, Any] = field(default_factory=dict, repr=False)
    # Where an option read from the environment came from ("dsn" -> "dsn_env
    # DEST_DSN"), so that an error about its value names what to fix.
    origins: Mapping[str, str] = field(default_factory=dict)

    def setting(self, option: str) -> str:
        """How ``option`` was set: ``dsn``, or ``dsn_env DEST_DSN``."""
        return self.origins.get(option, option)


@dataclass(frozen=True)
class PipelineSpec:
    name: str
    source: SourceSpec
    destinations: tuple[DestinationSpec, ...]
    batch_size: int = 500
    retry: str = "aggressive"
    # Source tables checked at start-up besides those ``table_map`` and
    # ``primary_keys`` name.
    tables: tuple[str, ...] = ()
    # Source tables whose changes are inserts only, applied once each by
    # their source position rather than upserted by a key.
    append_only: tuple[str, ...] = ()
    # Replay priority per source table (qualified or bare name); see table_priority.
    priority: Mapping[str, int] = field(default_factory=dict)


def table_priority(priorities: Mapping[str, int], table: str) -> int:
    """The replay priority of ``table`` (``schema.table``): its qualified name's entry,
    else its bare name's, else ``DEFAULT_PRIORITY``."""
    if table in priorities:
        return priorities[table]
    return priorities.get(table.rpartition(".")[2], DEFAULT_PRIORITY)


def load_pipelines_file(path: str | Path, env: Mapping[str, str]) -> list[PipelineSpec]:
    """Parse a pipelines TOML file; ``ConfigError`` lists every problem found."""
    file = Path(path)
    try:
        data = tomllib.loads(file.read_text())
    except FileNotFoundError:
        raise ConfigError([f"ROSETTA_PIPELINES_FILE={str(file)!r}: no such file"]) from None
    except (OSError, UnicodeDecodeError) as error:
        raise ConfigError([f"ROSETTA_PIPELINES_FILE={str(file)!r}: cannot read: {error}"]) from None
    except tomllib.TOMLDecodeError as error:
        raise ConfigError([f"{file}: not valid TOML: {error}"]) from None
    return parse_pipelines(data, env, where=str(file))


def parse_pipelines(
    data: Mapping[str, Any], env: Mapping[str, str], where: str
) -> list[PipelineSpec]:
    problems: list[str] = []
    raw_pipelines = data.get("pipelines")
    if not isinstance(raw_pipelines, list) or not raw_pipelines:
        raise ConfigError([f"{where}: expected at least one [[pipelines]] table"])
    specs: list[PipelineSpec] = []
    names: set[str] = set()
    source_owner: dict[str, str] = {}
    for at, spec in _each(raw_pipelines, f"{where}: pipelines", _parse_pipeline, env, problems):
        if spec.name in names:
            problems.append(f"{at}: duplicate pipeline name {spec.name!r}")
        names.add(spec.name)
        # A source id names the source's offsets and its queues: two pipelines
        # sharing one would overwrite each other's position and read each
        # other's queues.
        owner = source_owner.get(spec.source.id)
        if owner is not None:
            problems.append(
                f"{at}: source id {spec.source.id!r} is already used by pipeline {owner!r}; "
                "each pipeline needs its own source id"
            )
        source_owner.setdefault(spec.source.id, spec.name)
        specs.append(spec)
    if problems:
        raise ConfigError(problems)
    return specs


def _each(
    raw_items: list[Any],
    at: str,
    parse: Callable[[Mapping[str, Any], Mapping[str, str], str, list[str]], T | None],
    env: Mapping[str, str],
    problems: list[str],
) -> Iterator[tuple[str, T]]:
    """Each table of ``raw_items`` that ``parse`` accepts, with where it is (``at[i]``).

    An item that is not a table is a problem. Lazy, so that the caller's own
    checks of an item are noted in the item's turn.
    """
    for index, raw in enumerate(raw_items):
        item_at = f"{at}[{index}]"
        if not isinstance(raw, dict):
            problems.append(f"{item_at}: must be a table")
            continue
        item = parse(raw, env, item_at, problems)
        if item is not None:
            yield item_at, item


def _text(raw: Mapping[str, Any], key: str, at: str, problems: list[str]) -> str | None:
    value = raw.get(key)
    if isinstance(value, int) and not isinstance(value, bool):
        value = str(value)
    if not isinstance(value, str) or not value.strip():
        problems.append(f"{at}: '{key}' must be a non-empty string")
        return None
    return value.strip()


def _parse_pipeline(
    raw: Mapping[str, Any], env: Mapping[str, str], at: str, problems: list[str]
) -> PipelineSpec | None:
    name = _text(raw, "name", at, problems)
    batch_size = raw.get("batch_size", 500)
    if (
        not isinstance(batch_size, int)
        or isinstance(batch_size, bool)
        or not 1 <= batch_size <= 100_000
    ):
        problems.append(
            f"{at}: 'batch_size' must be an integer from 1 to 100000, got {batch_size!r}"
        )
        batch_size = 500
    retry = raw.get("retry", "aggressive")
    if retry not in RETRY_PRESETS:
        problems.append(f"{at}: 'retry' must be one of {', '.join(RETRY_PRESETS)}, got {retry!r}")
    tables = _table_list(raw, "tables", at, problems)
    append_only = _table_list(raw, "append_only", at, problems)
    priority = _priorities(raw.get("priority"), at, problems)
    source = _parse_source(raw.get("source"), env, f"{at}.source", problems)
    raw_destinations = raw.get("destinations")
    destinations: list[DestinationSpec] = []
    if not isinstance(raw_destinations, list) or not raw_destinations:
        problems.append(f"{at}: expected at least one [[pipelines.destinations]] table")
    else:
        seen: set[str] = set()
        for d_at, destination in _each(
            raw_destinations, f"{at}.destinations", _parse_destination, env, problems
        ):
            if destination.id in seen:
                problems.append(f"{d_at}: duplicate destination id {destination.id!r}")
            seen.add(destination.id)
            destinations.append(destination)
    if name is None or source is None:
        return None
    return PipelineSpec(
        name, source, tuple(destinations), batch_size, str(retry), tables, append_only, priority
    )


def _table_list(raw: Mapping[str, Any], key: str, at: str, problems: list[str]) -> tuple[str, ...]:
    """A list of qualified table names (``public.audit_log``); empty when absent."""
    value = raw.get(key)
    if value is None:
        return ()
    if not isinstance(value, list) or not all(isinstance(v, str) and v.strip() for v in value):
        problems.append(
            f"{at}: '{key}' must be a list of table names like [\"public.audit_log\"], "
            f"got {value!r}"
        )
        return ()
    return tuple(dict.fromkeys(v.strip() for v in value))


def _priorities(value: Any, at: str, problems: list[str]) -> dict[str, int]:
    """``priority``: table name -> integer from ``PRIORITY_MIN`` to ``PRIORITY_MAX``."""
    if value is None:
        return {}
    if not isinstance(value, dict):
        problems.append(
            f"{at}: 'priority' must be a table of table names to integers, like "
            f'{{ "public.orders" = 10 }}, got {value!r}'
        )
        return {}
    priorities: dict[str, int] = {}
    for table, level in value.items():
        name = str(table).strip()
        if not name:
            problems.append(f"{at}: 'priority' has an empty table name")
        elif (
            not isinstance(level, int)
            or isinstance(level, bool)
            or not PRIORITY_MIN <= level <= PRIORITY_MAX
        ):
            problems.append(
                f"{at}: 'priority' of table {name!r} must be an integer from {PRIORITY_MIN} "
                f"to {PRIORITY_MAX} (higher replays first, default {DEFAULT_PRIORITY}), "
                f"got {level!r}"
            )
        else:
            priorities[name] = level
    return priorities


def _parse_source(
    raw: Any, env: Mapping[str, str], at: str, problems: list[str]
) -> SourceSpec | None:
    if not isinstance(raw, dict):
        problems.append(f"{at}: expected a [pipelines.source] table")
        return None
    source_id = _text(raw, "id", at, problems)
    kind = raw.get("type")
    if kind not in SOURCE_TYPES:
        problems.append(f"{at}: 'type' must be one of {', '.join(SOURCE_TYPES)}, got {kind!r}")
        return None
    if kind == "jsonl" and not isinstance(raw.get("path"), str):
        problems.append(f"{at}: a jsonl source needs 'path' (a file, or \"-\" for stdin)")
    options = {k: v for k, v in raw.items() if k not in ("id", "type")}
    if kind == "postgresql":
        variable = options.pop("dsn_env", None)
        if variable is not None:
            if str(variable) not in env:
                problems.append(
                    f"{at}: 'dsn_env' names environment variable {variable} which is not set: "
                    f"set {variable} in the environment or in .env, or point 'dsn_env' at a "
                    "variable that is set"
                )
            else:
                options["dsn"] = env[str(variable)]
        elif not isinstance(options.get("dsn"), str):
            problems.append(f"{at}: a postgresql source needs 'dsn' or 'dsn_env'")
    if source_id is None:
        return None
    return SourceSpec(source_id, str(kind), options)


def _parse_destination(
    raw: Mapping[str, Any], env: Mapping[str, str], at: str, problems: list[str]
) -> DestinationSpec | None:
    destination_id = _text(raw, "id", at, problems)
    name = _text(raw, "name", at, problems)
    kind = raw.get("type")
    if kind not in DESTINATION_TYPES:
        problems.append(f"{at}: 'type' must be one of {', '.join(DESTINATION_TYPES)}, got {kind!r}")
        return None
    options: dict[str, Any] = {}
    origins: dict[str, str] = {}
    unset: set[str] = set()
    for key, value in raw.items():
        if key in ("id", "name", "type"):
            continue
        if key.endswith("_env"):
            variable = str(value)
            if variable not in env:
                # One problem: the option it stands for is reported missing through this line.
                unset.add(key[: -len("_env")])
                problems.append(
                    f"{at}: '{key}' names environment variable {variable} which is not set: "
                    f"set {variable} in the environment or in .env, or point '{key}' at a "
                    "variable that is set"
                )
                continue
            options[key[: -len("_env")]] = env[variable]
            origins[key[: -len("_env")]] = f"{key} {variable}"
        else:
            options[key] = value
    if kind == "postgresql" and "dsn" not in options and "dsn" not in unset:
        problems.append(f"{at}: a postgresql destination needs 'dsn' or 'dsn_env'")
    if destination_id is None or name is None:
        return None
    return DestinationSpec(destination_id, name, str(kind), options, origins)
