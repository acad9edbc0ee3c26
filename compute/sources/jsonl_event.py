"""One Debezium change event: a JSON line checked and taken apart into a change's parts.

Each line is ``{"op": "c|u|d|r", "before": {...}|null, "after": {...}|null,
"source": {"schema": "public", "table": "users", "lsn": 123 or "0/16B3748",
"lsn_commit": ..., "sequence" or "seq": n, "ts_ms": ..., "pk": [...]},
"key": {...}}``, optionally wrapped as ``{"payload": {...}}`` (Kafka Connect's
JSON converter with schemas on).

* Table: ``schema.table`` when ``source.schema`` is given, else ``table``.
* Position: a connector's own coordinates when ``source`` has them
  (``jsonl_positions``: PostgreSQL's ``sequence``, MySQL's ``file``/``pos``/
  ``row``, SQL Server's ``commit_lsn``/``change_lsn``, MongoDB's ``ord``);
  else commit = ``source.lsn_commit`` if present, else ``source.lsn`` (an
  integer, a decimal string or a PostgreSQL ``'X/Y'`` LSN); seq =
  ``source.sequence``/``source.seq`` when it is an integer, else (decided by
  the reader) the event's order among the consecutive events of the same
  commit. Both must fit 63 bits.
* Key: the ``key`` object if present, else the Kafka message key carried
  beside the value (``jsonl_message``), else the columns named by ``source.pk``
  or the ``primary_keys`` option, taken from ``after`` (from ``before`` for a
  delete). A change whose key cannot be determined is rejected.
* Numbers with a fraction or exponent become ``Decimal``, so a numeric column
  keeps its exact value; integers stay ``int`` whatever their size (the DLQ
  stores them exactly).
* A line nested deeper than ``MAX_NESTING`` levels of objects and arrays is
  rejected: deeper values cannot be stored in the DLQ or exported, so an
  event the destination refused could not be kept.
"""

from __future__ import annotations

import json
from collections.abc import Collection, Mapping, Sequence
from decimal import Decimal
from typing import Any, NamedTuple

from compute.queue_id import lone_surrogate_problem
from compute.sources.debezium import (
    DEFAULT_PLACEHOLDERS,
    ValueUndecodable,
    decode_row,
    schema_fields,
)
from compute.sources.debezium.checks import kind_of
from compute.sources.jsonl_positions import (
    MAX_POSITION,
    PositionError,
    connector_position,
    lsn_number,
)
from destinations.records import Operation

# Truncate ("t") is PostgreSQL-source only: a file's events each name one row.
_OPS = ", ".join(op.value for op in Operation if op is not Operation.TRUNCATE)
# Objects and arrays nested in one line, envelope included. Deep enough for any
# real row; far below what the DLQ message (msgpack, about 1,000) and its JSON
# export (Python's recursion limit, 1,000 frames) can take.
MAX_NESTING = 200


class EventRejected(Exception):
    """A line is not a usable change event; the message says why."""


class ChangeEvent(NamedTuple):
    """A checked event's parts; ``seq`` is None when the event gives none."""

    table: str
    op: Operation
    key: dict[str, Any]
    before: dict[str, Any] | None
    after: dict[str, Any] | None
    commit: int
    seq: int | None
    commit_ts: float | None


def decode_line(data: bytes) -> str:
    """The text of one line (its BOM already removed); ``EventRejected`` if it is not UTF-8."""
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise EventRejected(f"not UTF-8 ({exc.reason} at byte {exc.start})") from None


def parse_json(text: str) -> Any:
    """The JSON value of a non-blank line, numbers with a fraction as ``Decimal``."""
    try:
        doc = json.loads(text, parse_float=Decimal)
    except json.JSONDecodeError as exc:
        # The error at the end of a line is after its newline: count the column
        # on the line as the user sees it.
        column = exc.colno if exc.lineno == 1 else len(text.rstrip("\r\n")) + 1
        raise EventRejected(f"bad JSON: {exc.msg} at column {column}") from None
    except RecursionError:
        raise EventRejected(f"bad JSON: nested deeper than {MAX_NESTING} levels") from None
    except ValueError as exc:  # an integer of over 4,300 digits (Python's limit)
        raise EventRejected(f"bad JSON: {exc}") from None
    if text.count("{") + text.count("[") > MAX_NESTING and _nested_deeper(doc):
        raise EventRejected(
            f"nested deeper than {MAX_NESTING} levels of objects and arrays "
            "(the DLQ could not keep it if a destination refused it)"
        )
    return doc


def parse_event(
    doc: Any,
    primary_keys: Mapping[str, tuple[str, ...]],
    message_key: Any = None,
    *,
    key_fields: Sequence[Mapping[str, Any]] | None = None,
    placeholders: Collection[str] = DEFAULT_PLACEHOLDERS,
    topic: str | None = None,
) -> ChangeEvent:
    """Check a line's JSON value and take it apart; ``EventRejected`` says what is wrong.

    ``primary_keys``: the key columns of tables whose events name none, by
    ``schema.table`` or bare table name. ``message_key``: the Kafka message's
    key carried beside the value (schema envelope removed), or None, and
    ``key_fields`` the field schemas of its envelope. Values are decoded by
    their field schemas when the line has one (``compute.sources.debezium``);
    a column holding one of ``placeholders`` (an unchanged TOASTed value) is
    left out of its row, so the destination keeps it. ``topic``: the Kafka
    topic the line came from, which names the table when ``source`` does not.
    """
    outer = doc
    if not isinstance(doc, dict):
        raise EventRejected(f"not a JSON object but {kind_of(doc)}")
    value_schema: Any = None
    if "op" not in doc and "payload" in doc:
        value_schema = doc.get("schema")
        doc = doc["payload"]
        if not isinstance(doc, dict):
            raise EventRejected(f"'payload' is {kind_of(doc)}, not an object")
    code = doc.get("op")
    if code is None:
        raise EventRejected("missing 'op'")
    try:
        op = Operation(code)
        if op is Operation.TRUNCATE:
            raise ValueError(code)
    except ValueError:
        raise EventRejected(f"unknown op {_json(code)} (expected one of {_OPS})") from None
    source = doc.get("source")
    if not isinstance(source, dict):
        what = "missing" if source is None else f"{kind_of(source)}, not an object"
        raise EventRejected(f"'source' is {what} (it gives the table and the position)")
    table = _table_name(source, topic)
    before = _row(doc, "before")
    after = _row(doc, "after")
    if op is Operation.DELETE:
        after = None  # a delete leaves no row, whatever the event carries
    elif after is None:
        raise EventRejected(f"op {op.value!r} without an 'after' row")
    schema = value_schema if isinstance(value_schema, Mapping) else None
    try:
        if before is not None:
            fields = schema_fields(schema, "before") if schema else None
            before = decode_row(before, fields, placeholders=placeholders)
        if after is not None:
            fields = schema_fields(schema, "after") if schema else None
            after = decode_row(after, fields, placeholders=placeholders)
        if isinstance(message_key, dict):
            message_key = decode_row(message_key, key_fields, placeholders=())
    except ValueUndecodable as exc:
        raise EventRejected(str(exc)) from None
    try:
        given = connector_position(source, op.value)
    except PositionError as exc:
        raise EventRejected(str(exc)) from None
    if given is not None:
        commit, explicit_seq = given
    else:
        commit, explicit_seq = _plain_position(source)
    commit_ts = _commit_ts(source)
    key = _key(doc, outer, source, table, op, before, after, primary_keys, message_key)
    return ChangeEvent(table, op, key, before, after, commit, explicit_seq, commit_ts)


def _key(
    doc: dict[str, Any],
    outer: dict[str, Any],
    source: dict[str, Any],
    table: str,
    op: Operation,
    before: dict[str, Any] | None,
    after: dict[str, Any] | None,
    primary_keys: Mapping[str, tuple[str, ...]],
    message_key: Any,
) -> dict[str, Any]:
    given = doc.get("key", outer.get("key"))
    if given is None and message_key is not None:
        if not isinstance(message_key, dict) or not message_key:
            raise EventRejected(
                f"the message key is {kind_of(message_key)}: expected an object of "
                "primary-key columns (Debezium's key)"
            )
        for column, value in message_key.items():
            _check_key_value(column, value, "the message key")
        return dict(message_key)
    if given is not None:
        if isinstance(given, dict) and set(given) == {"schema", "payload"}:
            # A Kafka Connect key with its schema: decoded by its field schemas.
            envelope = given["schema"]
            fields = envelope.get("fields") if isinstance(envelope, dict) else None
            given = given["payload"]
            if isinstance(given, dict):
                try:
                    given = decode_row(
                        given, fields if isinstance(fields, list) else None, placeholders=()
                    )
                except ValueUndecodable as exc:
                    raise EventRejected(f"key {exc}") from None
        if not isinstance(given, dict) or not given:
            raise EventRejected("'key' must be a non-empty object of primary-key columns")
        for column, value in given.items():
            _check_key_value(column, value, "key")
        return dict(given)
    columns = source.get("pk")
    if columns is not None:
        if not (
            isinstance(columns, str)
            or (isinstance(columns, list) and all(isinstance(c, str) for c in columns))
        ):
            raise EventRejected("'source.pk' must be a list of column names")
        columns = column_list(columns)
    else:
        bare = table.rpartition(".")[2]
        columns = primary_keys.get(table, primary_keys.get(bare))
        if columns == ():  # an append-only table: its changes carry no key
            return {}
    if not columns:
        raise EventRejected(
            f"no primary key for table {table}: give a 'key' object or configure primary_keys"
        )
    side, row = ("before", before) if op is Operation.DELETE else ("after", after)
    if row is None:
        raise EventRejected(f"delete from {table} without 'key' or 'before': cannot tell which row")
    key: dict[str, Any] = {}
    for column in columns:
        if column not in row:
            raise EventRejected(f"primary key column {column!r} missing from '{side}'")
        _check_key_value(column, row[column], side)
        key[column] = row[column]
    return key


def column_list(columns: str | Sequence[str]) -> tuple[str, ...]:
    if isinstance(columns, str):
        return tuple(c.strip() for c in columns.split(",") if c.strip())
    return tuple(columns)


def _nested_deeper(doc: Any, limit: int = MAX_NESTING) -> bool:
    """True if ``doc`` nests objects and arrays more than ``limit`` deep (no recursion)."""
    stack: list[tuple[Any, int]] = [(doc, 1)]
    while stack:
        value, depth = stack.pop()
        if depth > limit:
            return True
        children = value.values() if isinstance(value, dict) else value
        stack.extend((child, depth + 1) for child in children if isinstance(child, dict | list))
    return False


def _table_name(source: dict[str, Any], topic: str | None) -> str:
    table = source.get("table")
    if table is None and topic is not None:
        return _table_of_topic(topic)
    if not isinstance(table, str) or not table:
        if table is None:
            raise EventRejected(
                "'source.table' is missing (Debezium before 0.8 names the table only in the "
                "Kafka topic: feed kcat -J lines, whose topic <prefix>.<schema>.<table> gives it)"
            )
        raise EventRejected("'source.table' must be a non-empty string")
    _check_name("source.table", table)
    schema = source.get("schema")
    if schema is None or schema == "":
        return table
    if not isinstance(schema, str):
        raise EventRejected("'source.schema' must be a string")
    _check_name("source.schema", schema)
    return f"{schema}.{table}"


def _table_of_topic(topic: str) -> str:
    """``schema.table`` from Debezium's topic name ``<prefix>.<schema or database>.<table>``."""
    parts = topic.split(".")
    if len(parts) < 3 or not all(parts[-2:]):
        raise EventRejected(
            f"'source.table' is missing and the topic {_json(topic)} is not "
            "<prefix>.<schema>.<table>: cannot tell the table"
        )
    for part in parts[-2:]:
        _check_name("topic", part)
    return f"{parts[-2]}.{parts[-1]}"


def _check_name(field: str, name: str) -> None:
    """Refuse names no destination can hold; any other text (``/``, ``..``, RTL) is kept.

    JSON can carry ``\\u0000`` and lone surrogates (``\\udc80``), which no
    database identifier or UTF-8 connection takes: without this, every write
    of the table would fail and keep failing.
    """
    if "\x00" in name:
        raise EventRejected(f"'{field}' contains a NUL character: {name!r}")
    problem = lone_surrogate_problem(field, name)
    if problem is not None:
        raise EventRejected(problem)


def _row(doc: dict[str, Any], side: str) -> dict[str, Any] | None:
    row = doc.get(side)
    if row is not None and not isinstance(row, dict):
        raise EventRejected(f"'{side}' is {kind_of(row)}, not an object or null")
    return row


def _plain_position(source: dict[str, Any]) -> tuple[int, int | None]:
    commit = _position(source, "lsn_commit")
    if commit is None:
        commit = _position(source, "lsn")
    if commit is None:
        raise EventRejected(
            "no position: 'source.lsn_commit' or 'source.lsn' is required (or a connector's "
            "own: MySQL 'file'/'pos', SQL Server 'commit_lsn', MongoDB 'ord'/'ts_ms')"
        )
    return commit, _sequence(source)


def _position(source: dict[str, Any], field: str) -> int | None:
    value = source.get(field)
    if value is None:
        return None
    try:
        number = lsn_number(value, field)
    except PositionError as exc:
        raise EventRejected(str(exc)) from None
    if number is not None:
        return number
    raise EventRejected(
        f"'source.{field}' is not a position: {_json(value)} (expected a non-negative integer or "
        "a PostgreSQL LSN like '0/16B3748')"
    )


def _sequence(source: dict[str, Any]) -> int | None:
    for field in ("seq", "sequence"):
        value = source.get(field)
        if value is None:
            continue
        number: int | None = None
        if isinstance(value, int) and not isinstance(value, bool) and value >= 0:
            number = value
        elif isinstance(value, str) and value.isdigit():
            number = int(value)
        if number is not None:
            if number > MAX_POSITION:
                raise EventRejected(f"'source.{field}' {number} does not fit a 63-bit position")
            return number
        if isinstance(value, str) and value.startswith("["):
            continue  # Debezium's '["lastCommitLsn","lsn"]': not an order inside the transaction
        raise EventRejected(f"'source.{field}' must be a non-negative integer, not {_json(value)}")
    return None


def _commit_ts(source: dict[str, Any]) -> float | None:
    value = source.get("ts_ms")
    if value is None:
        return None
    if isinstance(value, int | Decimal) and not isinstance(value, bool):
        try:
            return float(value) / 1000.0
        except OverflowError:
            raise EventRejected(f"'source.ts_ms' is out of range: {value}") from None
    raise EventRejected(f"'source.ts_ms' must be a number, not {_json(value)}")


def _check_key_value(column: Any, value: Any, side: str) -> None:
    if value is None:
        raise EventRejected(f"primary key column {column!r} is null in '{side}'")
    if isinstance(value, dict | list):
        raise EventRejected(f"primary key column {column!r} in '{side}' is not a scalar")


def _json(value: Any) -> str:
    """A value from the line as the user wrote it (JSON, not Python's spelling), bounded."""
    text = json.dumps(value, ensure_ascii=False, default=str)
    return text if len(text) <= 200 else text[:200] + "..."
