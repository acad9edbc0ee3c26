"""Schema evolution on Snowflake: create a missing target table, add a missing column.

With ``schema_evolution = "basic"`` each batch, before its stage table, makes
sure its target has every column its changes write. Nothing is read when the
session's cached ``DESCRIBE TABLE`` already has them all (the usual batch);
else the target is described again and

* a missing table is created (``CREATE TABLE IF NOT EXISTS``) with the
  changes' columns, key columns first, a ``PRIMARY KEY`` on the key (which
  Snowflake does not enforce; the MERGE by key is what keeps one row per
  key), and the position guard's two columns when ``position_guard`` is on;
* a missing column is added, nullable, one ``ALTER TABLE ... ADD COLUMN``
  each: a statement that fails because another writer added the column
  first is answered by describing the table again.

Snowflake commits each DDL statement on its own: a batch that fails after
creating its table leaves the table (empty, or with the columns it added),
and its replay finds it. The MERGE stays the only statement that writes rows.

Names follow the destination's own: the table is its target exactly as
``table_map`` (or the upper-cased default) gives it; a column is created
upper-cased, what an unquoted name resolves to (``ID``, ``CREATED_AT``), so
that it matches its source column case-insensitively like every column,
and with its exact source name only where two columns would fold together.

Types: the source's own (``Source.column_types``, PostgreSQL names) when it
knows them, mapped by ``SOURCE_TYPES``; else the kind of the batch's values,
mapped by ``KIND_TYPES``. A ``numeric`` without a precision, or a decimal
value, becomes ``NUMBER(38,s)`` with ``s`` the most decimals seen in the
batch that created the column (at most 37): a later value with more
decimals is refused by the value check and parked, naming the column
(Snowflake's ``NUMBER`` has a fixed scale; there is no unconstrained one).
"""

from __future__ import annotations

import logging
import re
from collections.abc import Callable, Mapping, Sequence
from typing import NamedTuple

from snowflake.connector import errors as sf_errors
from snowflake.connector.cursor import SnowflakeCursor

from destinations.records import POSITION_COLUMNS, ChangeRecord
from destinations.schema_evolution import ColumnType, Kind, key_of, needed_columns
from destinations.snowflake.position_guard import POSITION_TYPE
from destinations.snowflake.stage import TableInfo, quote

logger = logging.getLogger(__name__)

# A column's type from the kind of its values, when the source does not say.
# ``{scale}``: the most decimals seen in the batch.
KIND_TYPES: dict[Kind, str] = {
    Kind.BOOLEAN: "BOOLEAN",
    Kind.INTEGER: "NUMBER(38,0)",
    Kind.DECIMAL: "NUMBER(38,{scale})",
    Kind.FLOAT: "FLOAT",
    Kind.TEXT: "VARCHAR",
    Kind.TIMESTAMP: "TIMESTAMP_NTZ",
    Kind.TIMESTAMPTZ: "TIMESTAMP_TZ",
    Kind.DATE: "DATE",
    Kind.TIME: "TIME",
    Kind.TIMETZ: "VARCHAR",  # Snowflake has no time of day with an offset: its ISO text
    Kind.INTERVAL: "VARCHAR",  # nor an interval type
    Kind.UUID: "VARCHAR(36)",
    Kind.JSON: "VARIANT",
    Kind.BYTES: "BINARY",
}

# A column's type from the source's (PostgreSQL's ``format_type`` names; a
# precision of a time or timestamp is left to Snowflake's 9 digits). ``{p}``,
# ``{s}``, ``{n}``: the source type's own precision, scale and length;
# ``{scale}``: the most decimals seen in the batch. An array (``integer[]``)
# is a VARIANT; any other type, VARCHAR (SOURCE_DEFAULT).
SOURCE_TYPES: dict[str, str] = {
    "smallint": "NUMBER(38,0)",
    "integer": "NUMBER(38,0)",
    "bigint": "NUMBER(38,0)",
    "numeric(p,s)": "NUMBER({p},{s})",
    "numeric": "NUMBER(38,{scale})",
    "real": "FLOAT",
    "double precision": "FLOAT",
    "boolean": "BOOLEAN",
    "text": "VARCHAR",
    "character varying(n)": "VARCHAR({n})",
    "character varying": "VARCHAR",
    "character(n)": "VARCHAR({n})",
    "date": "DATE",
    "time without time zone": "TIME",
    "timestamp without time zone": "TIMESTAMP_NTZ",
    "timestamp with time zone": "TIMESTAMP_TZ",
    "uuid": "VARCHAR(36)",
    "json": "VARIANT",
    "jsonb": "VARIANT",
    "bytea": "BINARY",
}
ARRAY_TYPE = "VARIANT"
SOURCE_DEFAULT = "VARCHAR"
_MAX_PRECISION = 38  # Snowflake's NUMBER: 38 digits at most, a scale of 37 at most
_MAX_SCALE = 37
# ``name``, ``name(args)`` or ``name(args) more words`` (``time(3) without time zone``).
_SOURCE_TYPE = re.compile(r"([a-z][a-z ]*?)\s*(?:\(([-\d\s,]*)\)\s*([a-z ]*))?")


def _number(precision: int, scale: int) -> str:
    """``NUMBER(p,s)`` when Snowflake has one that holds every such value, else VARCHAR."""
    if scale < 0:  # PostgreSQL 15's numeric(p,-s): whole numbers with -s zeros at the end
        precision, scale = precision - scale, 0
    precision = max(precision, scale)  # and its numeric(2,5): below 0.001
    if precision > _MAX_PRECISION or scale > _MAX_SCALE:
        return SOURCE_DEFAULT  # its text keeps every digit
    return f"NUMBER({precision},{scale})"


def _from_source(name: str, scale: int) -> str:
    text = name.strip().lower()
    if text.endswith("]"):
        return ARRAY_TYPE
    match = _SOURCE_TYPE.fullmatch(text)
    if match is None:
        return SOURCE_DEFAULT
    base, args, tail = match.group(1), match.group(2), (match.group(3) or "").strip()
    numbers = [int(a) for a in args.split(",")] if args else []
    if base == "numeric" and numbers and not tail:
        return _number(numbers[0], numbers[1] if len(numbers) > 1 else 0)
    if len(numbers) == 1 and not tail and f"{base}(n)" in SOURCE_TYPES:
        return SOURCE_TYPES[f"{base}(n)"].format(n=numbers[0])
    pattern = SOURCE_TYPES.get(" ".join(filter(None, (base, tail))))
    if pattern is None:
        return SOURCE_DEFAULT
    return pattern.format(scale=min(scale, _MAX_SCALE))


def snowflake_type(column: ColumnType) -> str:
    """The Snowflake type of a new column: the source's type mapped (``SOURCE_TYPES``)
    when the source gave one, else its values' kind's (``KIND_TYPES``)."""
    if column.source:
        return _from_source(column.source, column.scale)
    return KIND_TYPES[column.kind].format(scale=min(column.scale, _MAX_SCALE))


def column_names(columns: Sequence[str], existing: Sequence[str] = ()) -> dict[str, str]:
    """The name each new column gets: upper-cased, unless that folds it onto another new
    column or an ``existing`` one (then its exact name, which no other column has)."""
    folded: dict[str, int] = {}
    for name in [*columns, *existing]:
        folded[name.upper()] = folded.get(name.upper(), 0) + 1
    return {c: c.upper() if folded[c.upper()] == 1 else c for c in columns}


def display_name(parts: Sequence[str]) -> str:
    """A target's name for messages: each part bare when an unquoted name would resolve
    to it (``ANALYTICS.RAW.ORDERS``), quoted otherwise (``"Orders"``)."""
    return ".".join(p if re.fullmatch(r"[A-Z_][A-Z0-9_$]*", p) else quote(p) for p in parts)


def describe(cur: SnowflakeCursor, name: str) -> TableInfo | None:
    """What ``DESCRIBE TABLE`` says of ``name`` (qualified, quoted); None when it does not
    exist (002003, also Snowflake's answer for a table the role may not see)."""
    try:
        return TableInfo.read(cur, name)
    except sf_errors.ProgrammingError as error:
        if error.errno == 2003:
            return None
        raise


def written_columns(records: Sequence[ChangeRecord]) -> dict[str, None]:
    """The columns ``records`` write, in the order seen (the position columns are the
    destination's own): cheap enough to compare with the cached table every batch."""
    names: dict[str, None] = {}
    for record in records:
        names.update(dict.fromkeys(record.key))
        if record.after:
            names.update(dict.fromkeys(record.after))
        if record.before:
            names.update(dict.fromkeys(record.before))
        names.update(dict.fromkeys(record.unchanged))
    for column in POSITION_COLUMNS:
        names.pop(column, None)
    return names


class Evolved(NamedTuple):
    """What ``evolve`` did: statements sent, and the target as read after its last DDL
    (None when it changed the target after reading it, or there is none: read it again)."""

    sent: int
    info: TableInfo | None


def evolve(
    cur: SnowflakeCursor,
    target: tuple[str, ...],
    info: TableInfo | None,
    records: Sequence[ChangeRecord],
    *,
    guard: bool,
    source_types: Callable[[], Mapping[str, str] | None],
    owner: object,
) -> Evolved:
    """Create ``target`` or add the columns ``records`` need.

    ``info`` is what this session last read of the target (None: not read):
    when it has every column nothing is sent. ``guard`` adds the position
    columns to a new table. ``source_types`` is called only when a column is
    made. A batch without a key creates nothing: its write refuses it as
    before.
    """
    wanted = written_columns(records)
    if info is not None and all(info.resolve(c) is not None for c in wanted):
        return Evolved(0, info)
    name = ".".join(quote(part) for part in target)
    info = describe(cur, name)
    sent = 1
    if info is None:
        key = key_of(records)
        if not key:
            return Evolved(sent, None)
        columns = needed_columns(records, source_types())
        cur.execute(create_statement(name, columns, key, guard=guard))
        logger.info(
            "schema evolution: created target table destination=%s target=%s columns=%s key=%s",
            owner,
            name,
            ",".join(f"{c}:{snowflake_type(t)}" for c, t in columns.items()),
            ",".join(key),
        )
        info = describe(cur, name)
        sent += 2
        if info is None:  # dropped again at once: the write says so
            return Evolved(sent, None)
    missing = [c for c in wanted if info.resolve(c) is None]
    if not missing:
        return Evolved(sent, info)
    sent += _add_columns(cur, name, info, missing, needed_columns(records, source_types()), owner)
    return Evolved(sent, None)


def _add_columns(
    cur: SnowflakeCursor,
    name: str,
    info: TableInfo,
    missing: Sequence[str],
    types: Mapping[str, ColumnType],
    owner: object,
) -> int:
    """``ALTER TABLE ... ADD COLUMN`` each of ``missing``, nullable; returns statements sent.

    One statement a column, without ``IF NOT EXISTS`` (not every Snowflake
    account takes it on ``ADD COLUMN``): when one fails, the table is read
    again, and a column another writer added meanwhile is not an error.
    """
    sent = 0
    for column, target_name in column_names(missing, list(info.columns)).items():
        kind = snowflake_type(types[column])
        sent += 1
        try:
            cur.execute(f"ALTER TABLE {name} ADD COLUMN {quote(target_name)} {kind}")
        except sf_errors.ProgrammingError as error:
            sent += 1
            now = describe(cur, name)
            if now is None or now.resolve(column) is None:
                raise error
            continue
        logger.info(
            "schema evolution: added nullable columns destination=%s target=%s columns=%s",
            owner,
            name,
            f"{target_name}:{kind}",
        )
    return sent


def create_statement(
    name: str, columns: Mapping[str, ColumnType], key: Sequence[str], *, guard: bool
) -> str:
    """``CREATE TABLE IF NOT EXISTS`` of ``name`` with ``columns`` (key columns first), the
    guard's position columns when ``guard``, and a primary key on ``key``."""
    names = column_names([*columns, *(c for c in key if c not in columns)])
    ordered = [*key, *(c for c in columns if c not in key)]
    text = ColumnType(Kind.TEXT)
    parts = [f"{quote(names[c])} {snowflake_type(columns.get(c, text))}" for c in ordered]
    if guard:
        parts += [f"{quote(c.upper())} {POSITION_TYPE}" for c in POSITION_COLUMNS]
    parts.append(f"PRIMARY KEY ({', '.join(quote(names[c]) for c in key)})")
    return f"CREATE TABLE IF NOT EXISTS {name} ({', '.join(parts)})"


def append_only_refusal(owner: object, table: str) -> str:
    """Why an append-only ``table`` cannot go to a Snowflake destination, with the fix."""
    return (
        f"{owner}: table {table}: append-only tables are not supported by a Snowflake "
        "destination (its MERGE matches rows by key); fix: give the table a key at the "
        "source (or primary_keys) and remove it from append_only, or replicate it to a "
        "PostgreSQL destination"
    )


def missing_targets(
    cur: SnowflakeCursor, targets: Mapping[str, Sequence[str]], where: tuple[str, str]
) -> list[str]:
    """One line per source table whose target (name parts, in the connection's database
    and schema ``where`` when not qualified) does not exist, naming the fix: create it, or
    let ``schema_evolution = "basic"`` do it."""
    problems = []
    for table, target in targets.items():
        parts = (*where[: max(0, 3 - len(target))], *target)
        if describe(cur, ".".join(quote(part) for part in target)) is None:
            problems.append(
                f"table {table} -> {display_name(parts)}: the target table does not exist; "
                "fix: create it (with a primary key on the source's key columns), or set "
                'schema_evolution = "basic" on the destination to have it created from the '
                "first changes"
            )
    return problems
