"""A table's pgoutput tuples as rows of exact Python values, by the columns' type OIDs."""

from __future__ import annotations

import logging
import struct
from collections.abc import Callable
from typing import Any, NamedTuple

from compute.sources.postgres.pg_types import (
    Converter,
    UnmappableValue,
    bytes_converter,
    converter,
    is_known,
    type_name,
)
from compute.sources.postgres.pgoutput import UNCHANGED, PgOutputError, Relation, TupleData

logger = logging.getLogger(__name__)

_unpack_length = struct.Struct(">I").unpack_from


class NotFast(Exception):
    """``RowDecoder.read`` met something only the exact path can judge; take that path."""


_NOT_FAST = NotFast()
# What reading a tuple's bytes directly may raise for a message the exact path
# refuses or reads differently: the caller then takes that path, which raises
# or records the precise error.
FAST_FAILURES = (NotFast, ValueError, ArithmeticError, IndexError, struct.error)


class DecodedRow(NamedTuple):
    """``values`` holds every column sent; ``unchanged`` names the unchanged TOASTed ones.

    An unchanged column is left out of ``values`` (never None): the
    destination keeps what it holds.
    """

    values: dict[str, Any]
    unchanged: tuple[str, ...]


class ColumnValueError(UnmappableValue):
    """A column's value that cannot be decoded exactly; names the table and column."""

    def __init__(self, table: str, column: str, error: UnmappableValue) -> None:
        ValueError.__init__(self, f"{table}.{column}: {error}")
        self.type_name = error.type_name
        self.text = error.text
        self.reason = error.reason
        self.table = table
        self.column = column


class RowDecoder:
    """Decodes the tuples of one relation shape; built again when the shape changes.

    ``warned`` is shared between the decoders of one stream so that a column
    of an unknown type is logged once, not once per shape.
    """

    def __init__(self, relation: Relation, warned: set[tuple[str, str]] | None = None) -> None:
        self.relation = relation
        self.table = relation.qualified_name
        self.names = tuple(column.name for column in relation.columns)
        self.key_columns = relation.key_columns
        self._key_indexes = tuple(i for i, column in enumerate(relation.columns) if column.key)
        self._converters: tuple[Converter | None, ...] = tuple(
            converter(column.type_oid) for column in relation.columns
        )
        self._readers: tuple[tuple[str, Callable[[bytes], Any]], ...] = tuple(
            (column.name, bytes_converter(column.type_oid)) for column in relation.columns
        )
        self._width = len(self.names)
        warned = set() if warned is None else warned
        for column in relation.columns:
            if not is_known(column.type_oid) and (self.table, column.name) not in warned:
                warned.add((self.table, column.name))
                logger.warning(
                    "column of a type without a mapping, its values stay text "
                    "table=%s column=%s type_oid=%d",
                    self.table,
                    column.name,
                    column.type_oid,
                )

    def decode(self, data: TupleData) -> DecodedRow:
        """Every sent column's value; ColumnValueError for one that cannot be exact."""
        self._check_width(data)
        values: dict[str, Any] = {}
        unchanged: list[str] = []
        for index, (name, text, convert) in enumerate(
            zip(self.names, data, self._converters, strict=True)
        ):
            if text is UNCHANGED:
                unchanged.append(name)
            elif text is None or convert is None:
                values[name] = text
            else:
                values[name] = self._convert(index, convert, text)
        return DecodedRow(values, tuple(unchanged))

    def read(self, data: bytes, offset: int) -> tuple[dict[str, Any], tuple[str, ...]]:
        """``decode`` of the tuple at ``offset`` of a message, read straight from its bytes.

        The values and the unchanged columns' names as ``decode`` gives them,
        without the intermediate text tuple. Raises one of ``FAST_FAILURES``
        for anything unusual (a malformed tuple, a value that does not
        convert): the caller then parses the message the exact way, which
        raises or rejects with the precise reason.
        """
        if (data[offset] << 8 | data[offset + 1]) != self._width:
            raise _NOT_FAST
        offset += 2
        size = len(data)
        values: dict[str, Any] = {}
        unchanged: tuple[str, ...] = ()
        for name, convert in self._readers:
            kind = data[offset]
            if kind == 0x74:  # 't': text
                start = offset + 5
                # Unsigned: a negative length runs past the end, to the exact path.
                offset = start + _unpack_length(data, offset + 1)[0]
                if offset > size:
                    raise _NOT_FAST
                values[name] = convert(data[start:offset])
            elif kind == 0x6E:  # 'n'
                values[name] = None
                offset += 1
            elif kind == 0x75:  # 'u'
                unchanged += (name,)
                offset += 1
            else:
                raise _NOT_FAST
        return values, unchanged

    def key(self, data: TupleData) -> dict[str, Any]:
        """The replica identity columns of ``data`` (an old key 'K' or a whole row)."""
        self._check_width(data)
        key: dict[str, Any] = {}
        for index in self._key_indexes:
            text = data[index]
            if text is UNCHANGED:
                raise PgOutputError(
                    f"{self.table}.{self.names[index]}: a key column sent as unchanged"
                )
            convert = self._converters[index]
            key[self.names[index]] = (
                text if text is None or convert is None else self._convert(index, convert, text)
            )
        return key

    def _check_width(self, data: TupleData) -> None:
        if len(data) != len(self.names):
            raise PgOutputError(
                f"a tuple of {len(data)} columns for {self.table}, whose last Relation "
                f"message has {len(self.names)}"
            )

    def _convert(self, index: int, convert: Converter, text: str) -> Any:
        try:
            return convert(text)
        except UnmappableValue as error:
            raise ColumnValueError(self.table, self.names[index], error) from None
        except (ValueError, ArithmeticError) as error:
            oid = self.relation.columns[index].type_oid
            name = type_name(oid) or str(oid)
            raise ColumnValueError(
                self.table,
                self.names[index],
                UnmappableValue(name, text, f"not valid {name} text ({error})"),
            ) from None
