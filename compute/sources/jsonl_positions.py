"""A change's position (commit order, sequence) from each Debezium connector's ``source`` block.

The position guard compares ``(commit, seq)`` as two signed 64-bit integers, so
each connector's coordinates are mapped, order-preserving, into two integers
below 2**63; coordinates that do not fit are refused, never wrapped.

* PostgreSQL (``source.connector == "postgresql"``, or a ``sequence`` array):
  ``source.lsn_commit`` when given (then ``seq``/``sequence`` integer or the
  reader's count, as for a plain line). Otherwise Debezium's ``sequence``
  string ``'["lastCommitLsn","lsn"]'``: commit = the commit LSN of the last
  transaction Debezium finished before this change's one (equal for every
  change of a transaction, increasing from one transaction to the next: the
  connector emits transactions in commit order), 0 when none yet; seq = the
  change's own ``lsn`` (increasing inside a transaction). A snapshot read
  (``op: "r"``) gets seq 0: it sorts before every change streamed after it.
* MySQL (``"mysql"``, or ``file`` + ``pos``): the binlog is written in commit
  order, and ``pos`` is where the change's rows event starts, ``row`` the row
  inside that event: commit = file number (``mysql-bin.000003`` -> 3) * 2**32
  + ``pos``, seq = ``row``. ``gtid`` names the transaction but orders nothing
  across servers, so it is not used.
* SQL Server (``"sqlserver"``, or ``commit_lsn``): commit = ``commit_lsn``,
  seq = ``change_lsn`` (ordered inside the transaction); an LSN
  ``"00000027:00000758:0003"`` (VLF, block, slot) becomes VLF * 2**40 + block
  * 2**16 + slot. ``event_serial_no`` only separates events of different rows
  at one change LSN (a primary-key update's delete and insert) and is not needed.
* MongoDB (``"mongodb"``, or ``ord``): the oplog timestamp, commit = seconds
  (``ts_ms`` / 1000) * 2**32 + ``ord``; seq = the reader's count (the events of
  one transaction share the timestamp and arrive in order).
"""

from __future__ import annotations

import json
import re
from decimal import Decimal
from typing import Any, NamedTuple

from destinations.records import parse_pg_lsn

MAX_POSITION = (1 << 63) - 1  # both parts are stored in bigint columns
SNAPSHOT_OP = "r"
_MYSQL_FILE = re.compile(r"\.(\d+)$")
_SQLSERVER_LSN = re.compile(r"^([0-9A-Fa-f]{8}):([0-9A-Fa-f]{8}):([0-9A-Fa-f]{4})$")


class PositionError(ValueError):
    """The ``source`` block gives no usable position; the message says what was wrong."""


class Position(NamedTuple):
    """``seq`` None: the reader counts it among consecutive events of the same commit."""

    commit: int
    seq: int | None


def connector_of(source: dict[str, Any]) -> str | None:
    """``postgresql``, ``mysql``, ``sqlserver``, ``mongodb``, or None for a plain line."""
    named = source.get("connector")
    if named in ("postgresql", "mysql", "sqlserver", "mongodb"):
        return str(named)
    if "file" in source and "pos" in source:
        return "mysql"
    if "commit_lsn" in source or "change_lsn" in source:
        return "sqlserver"
    if "ord" in source:
        return "mongodb"
    if isinstance(source.get("sequence"), str) and source["sequence"].startswith("["):
        return "postgresql"
    return None


def connector_position(source: dict[str, Any], op: str) -> Position | None:
    """The position a connector's own fields give, or None to read ``lsn_commit``/``lsn``."""
    connector = connector_of(source)
    if connector == "mysql":
        return _mysql(source)
    if connector == "sqlserver":
        return _sqlserver(source)
    if connector == "mongodb":
        return _mongodb(source)
    if connector == "postgresql" and source.get("lsn_commit") is None:
        return _postgresql(source, op)
    return None


def _postgresql(source: dict[str, Any], op: str) -> Position | None:
    text = source.get("sequence")
    if text is None:
        return None  # no sequence: the plain lsn_commit/lsn reading applies
    try:
        pair = json.loads(text) if isinstance(text, str) else None
    except ValueError:
        pair = None
    if not (isinstance(pair, list) and len(pair) == 2 and all(_lsn_like(p) for p in pair)):
        raise PositionError(
            f"'source.sequence' is not Debezium's '[\"lastCommitLsn\",\"lsn\"]': {_show(text)}"
        )
    last_commit = 0 if pair[0] is None else _pg_lsn(pair[0], "sequence[0]")
    # The top-level lsn is the change's own; Debezium 1.5-1.7 repeated the commit
    # LSN in the sequence's second element.
    lsn_field = source.get("lsn")
    if lsn_field is not None:
        lsn = _pg_lsn(lsn_field, "lsn")
    elif pair[1] is not None:
        lsn = _pg_lsn(pair[1], "sequence[1]")
    else:
        raise PositionError("no position: 'source.lsn' and the sequence's lsn are both null")
    return Position(last_commit, 0 if op == SNAPSHOT_OP else lsn)


def _mysql(source: dict[str, Any]) -> Position:
    name = source.get("file")
    found = _MYSQL_FILE.search(name) if isinstance(name, str) else None
    if found is None:
        raise PositionError(
            f"'source.file' is not a binlog file name: {_show(name)} "
            '(expected a name ending in its number, like "mysql-bin.000003")'
        )
    number = int(found.group(1))
    pos = _integer(source, "pos", 1 << 32)
    row = _integer(source, "row", MAX_POSITION, default=0)
    if number >= 1 << 31:
        raise PositionError(f"binlog file number {number} is too large (at most {(1 << 31) - 1})")
    return Position((number << 32) | pos, row)


def _sqlserver(source: dict[str, Any]) -> Position:
    commit = _sqlserver_lsn(source, "commit_lsn")
    change = _sqlserver_lsn(source, "change_lsn") if source.get("change_lsn") is not None else 0
    return Position(commit, change)


def _mongodb(source: dict[str, Any]) -> Position:
    ts_ms = _integer(source, "ts_ms", MAX_POSITION)
    ordinal = _integer(source, "ord", 1 << 32)
    seconds = ts_ms // 1000
    if seconds >= 1 << 31:
        raise PositionError(
            f"'source.ts_ms' {ts_ms} is past what a position can hold with 'ord' "
            "(seconds below 2**31, January 2038)"
        )
    return Position((seconds << 32) | ordinal, None)


def _sqlserver_lsn(source: dict[str, Any], field: str) -> int:
    text = source.get(field)
    found = _SQLSERVER_LSN.match(text) if isinstance(text, str) else None
    if found is None:
        raise PositionError(
            f"'source.{field}' is not a SQL Server LSN: {_show(text)} "
            '(expected "00000027:00000758:0003")'
        )
    vlf, block, slot = (int(part, 16) for part in found.groups())
    if vlf >= 1 << 23 or block >= 1 << 24:
        raise PositionError(
            f"'source.{field}' {text} does not fit a 63-bit position "
            "(virtual log file below 0x800000 and block below 0x1000000)"
        )
    return (vlf << 40) | (block << 16) | slot


def _lsn_like(value: Any) -> bool:
    return value is None or isinstance(value, str | int) and not isinstance(value, bool)


def _pg_lsn(value: Any, field: str) -> int:
    number = lsn_number(value, field)
    if number is None:
        raise PositionError(f"'source.{field}' is not an LSN: {_show(value)}")
    return number


def lsn_number(value: Any, field: str) -> int | None:
    """An integer, its decimal text or a PostgreSQL ``X/Y`` LSN as a number; None if neither.

    Debezium writes LSNs as integers (or their decimal text).
    """
    number: int | None = None
    if isinstance(value, int) and not isinstance(value, bool) and value >= 0:
        number = value
    elif isinstance(value, str) and value.isdigit():
        number = int(value)
    elif isinstance(value, str):
        try:
            number = parse_pg_lsn(value)
        except ValueError:
            return None
    if number is not None and number > MAX_POSITION:
        raise PositionError(f"'source.{field}' {number} does not fit a 63-bit position")
    return number


def _integer(source: dict[str, Any], field: str, bound: int, *, default: int | None = None) -> int:
    value = source.get(field)
    if value is None and default is not None:
        return default
    if isinstance(value, str) and value.isdigit():
        value = int(value)
    if isinstance(value, Decimal) and value == value.to_integral_value():
        value = int(value)
    if not isinstance(value, int) or isinstance(value, bool) or value < 0:
        raise PositionError(f"'source.{field}' must be a non-negative integer, not {_show(value)}")
    if value >= bound:
        raise PositionError(f"'source.{field}' {value} is too large (below {bound})")
    return value


def _show(value: Any) -> str:
    text = json.dumps(value, ensure_ascii=False, default=str)
    return text if len(text) <= 200 else text[:200] + "..."
