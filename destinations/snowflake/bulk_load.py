"""Loads a batch's stage rows in bulk: one Parquet file, PUT to the stage table's stage, COPY INTO.

A large batch costs a few statements whatever its size: the rows are written
as one compressed Parquet file in a private temporary directory (mode 0700,
removed after the load, also on failure), ``PUT`` to the stage table's own
stage (``@%_ROSETTA_STAGE``) and loaded with ``COPY INTO`` the stage table;
the MERGE that follows is the same as for the ``INSERT ... VALUES`` path.

Every value travels as text except BINARY (Parquet bytes), and the COPY casts
each column to its stage type (``$1:"c0"::NUMBER(38,6)``): the same
text-to-type casts Snowflake applies to the literals of the ``INSERT`` path,
so both paths land the same values. VARIANT, OBJECT and ARRAY values load as
their JSON text, parsed by the stage's ``PARSE_JSON`` update as on the
``INSERT`` path. Parquet keeps NULL apart from the empty string and carries
any text (quotes, newlines, backslashes) as is.
"""

from __future__ import annotations

import logging
import os
import shutil
import tempfile
import uuid
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import date, datetime, time
from decimal import Decimal
from typing import Any

from snowflake.connector.cursor import SnowflakeCursor

from destinations.errors import DestinationError, PermanentDestinationError
from destinations.snowflake.stage import STAGE_TABLE, Stage, quote
from destinations.snowflake.value_check import base_type

logger = logging.getLogger(__name__)

# Below this many stage rows a batch is written with INSERT ... VALUES (one
# statement for up to 16,384 rows or 512 KiB); from it on, PUT + COPY INTO.
# See the README (Snowflake: staged bulk load) for the measurement.
STAGE_THRESHOLD_ROWS = 5_000
_DIRECTORY_PREFIX = "rosetta-snowflake-"
_BINARY = frozenset({"BINARY", "VARBINARY"})


@dataclass(frozen=True)
class BulkLoad:
    """One stage's rows as a Parquet file, loaded into the stage table with PUT and COPY INTO."""

    stage: Stage
    owner: object  # names the destination in error texts

    def run(self, cur: SnowflakeCursor) -> int:
        """Write, PUT and COPY the rows; returns the file's size in bytes."""
        # A private directory (0700), so that no other user can read the rows,
        # removed whatever happens, so that no row data stays behind.
        directory = tempfile.mkdtemp(prefix=_DIRECTORY_PREFIX)
        try:
            path = os.path.join(directory, f"batch-{uuid.uuid4().hex}.parquet")
            size = self._write(path)
            cur.execute(self.put_statement(path))
            self._check_put(cur.fetchall())
            cur.execute(self.copy_statement())
            self._check_copy(cur.fetchall())
            return size
        finally:
            shutil.rmtree(directory, ignore_errors=True)

    def put_statement(self, path: str) -> str:
        # The file is compressed inside (zstd pages): the connector must not gzip it again.
        location = "file://" + path.replace("\\", "\\\\").replace("'", "\\'")
        return f"PUT '{location}' @%{STAGE_TABLE} AUTO_COMPRESS = FALSE OVERWRITE = TRUE"

    def copy_statement(self) -> str:
        columns = self.stage.loaded_columns()
        names = ", ".join(quote(name) for name, _ in columns)
        fields = ", ".join(_field(f'$1:"c{i}"', kind) for i, (_, kind) in enumerate(columns))
        # PURGE: the loaded file leaves the stage at once; a file a failed COPY
        # left behind goes with the stage table, which the next batch replaces.
        return (
            f"COPY INTO {quote(STAGE_TABLE)} ({names}) "
            f"FROM (SELECT {fields} FROM @%{STAGE_TABLE}) "
            "FILE_FORMAT = (TYPE = PARQUET BINARY_AS_TEXT = FALSE) "
            "ON_ERROR = ABORT_STATEMENT PURGE = TRUE"
        )

    def _write(self, path: str) -> int:
        import pyarrow as pa  # loaded with the first staged batch, not at start-up
        import pyarrow.parquet as pq

        columns = self.stage.loaded_columns()
        arrays = {}
        for i, (name, kind) in enumerate(columns):
            values = [row[i] for row in self.stage.rows]
            try:
                if base_type(kind) in _BINARY:
                    arrays[f"c{i}"] = pa.array(map(_binary, values), pa.binary())
                else:
                    arrays[f"c{i}"] = pa.array(map(_text, values), pa.string())
            except (pa.ArrowException, UnicodeError, ValueError) as error:
                raise PermanentDestinationError(
                    f"{self.owner}: column {name} ({kind}): a value cannot be written to the "
                    f"stage file: {error}"
                ) from error
        try:
            # Plain pages: dictionaries of mostly distinct values cost more than they save
            # (about 30% of the file for the benchmark rows); zstd does the rest.
            pq.write_table(pa.table(arrays), path, compression="zstd", use_dictionary=False)
            return os.path.getsize(path)
        except OSError as error:
            # The local disk, not the session or the rows: retry later, keep the session.
            raise DestinationError(
                f"{self.owner}: cannot write the stage file in {os.path.dirname(path)}: {error}"
            ) from error

    def _check_put(self, result: Sequence[Sequence[Any]]) -> None:
        # PUT answers one row per file: source, target, sizes, compressions, status, message.
        statuses = [str(row[6]) for row in result if len(row) > 6]
        if statuses != ["UPLOADED"]:
            raise DestinationError(f"{self.owner}: PUT of the stage file did not upload: {result}")

    def _check_copy(self, result: Sequence[Sequence[Any]]) -> None:
        # COPY answers one row per file: file, status, rows parsed, rows loaded, ...
        loaded = sum(int(row[3]) for row in result if len(row) > 3 and str(row[1]) == "LOADED")
        if loaded != len(self.stage.rows):
            raise DestinationError(
                f"{self.owner}: COPY INTO the stage table loaded {loaded} of "
                f"{len(self.stage.rows)} rows: {result}"
            )


def _field(field: str, kind: str) -> str:
    """The COPY expression that reads ``field`` as a ``kind`` stage column."""
    return f"{field}::{kind}"


def _binary(value: Any) -> bytes | None:
    if value is None or isinstance(value, bytes):
        return value
    if isinstance(value, str):
        return bytes.fromhex(value)  # Snowflake reads text for BINARY as hex
    return bytes(value)


def _text(value: Any) -> str | None:
    """A stage value (as bound for INSERT) as the text Snowflake casts to the column's type."""
    if value is None or isinstance(value, str):
        return value
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, float):
        return repr(value)  # the shortest text that reads back as the same double
    if isinstance(value, Decimal):
        return format(value, "f")  # every digit, never an exponent
    if isinstance(value, datetime):
        return value.isoformat(sep=" ")  # with its offset when it has one
    if isinstance(value, date | time):
        return value.isoformat()
    if isinstance(value, bytes):
        return value.hex()
    return str(value)
