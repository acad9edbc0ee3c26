"""The position guard on Snowflake: positions on target rows, delete tombstones, truncate marks.

With ``position_guard=True`` every target table has two ``NUMBER(19,0)``
columns, ``_ROSETTA_COMMIT`` and ``_ROSETTA_SEQ`` (matched case-insensitively,
like every column): the source position of the change that wrote the row. A
change is applied only if it is newer than the row (a row with no position
counts as oldest). A delete leaves a tombstone (key and position) in
``<TABLE>__ROSETTA_TOMBSTONES`` next to the target, so that an older insert
replayed after it cannot bring the row back; a newer upsert of the key
removes it. A truncate stores its position in ``_ROSETTA_TRUNCATES`` (one
row per target table of the schema), and every guarded write refuses a
change not newer than it.

Each statement commits on its own (no explicit transaction: a session that
dies inside one leaves it open, holding its locks, for hours). The order
makes a batch cut anywhere and written again end the same: the stage is
filtered first (stage rows only), older tombstones go before the MERGE
(they refuse nothing the batch's newer upserts do not), tombstones are
written after it, and a truncate's mark is stored after its rows are gone.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass

from snowflake.connector import errors as sf_errors
from snowflake.connector.cursor import SnowflakeCursor

from destinations.errors import TableLevelDestinationError
from destinations.records import POSITION_COMMIT_COLUMN, POSITION_SEQ_COLUMN, SourcePosition
from destinations.snowflake.stage import STAGE_TABLE, Stage, TableInfo, quote

TOMBSTONE_SUFFIX = "__ROSETTA_TOMBSTONES"
TRUNCATES_TABLE = "_ROSETTA_TRUNCATES"
POSITION_TYPE = "NUMBER(19,0)"  # every bigint position, exactly
_COMMIT, _SEQ = quote(POSITION_COMMIT_COLUMN.upper()), quote(POSITION_SEQ_COLUMN.upper())
_TABLE_NAME = quote("TABLE_NAME")


def _older(left: tuple[str, str], right: tuple[str, str]) -> str:
    """SQL true when position ``left`` (commit, seq expressions) is older than ``right``."""
    (lc, ls), (rc, rs) = left, right
    return f"({lc} < {rc} OR ({lc} = {rc} AND {ls} < {rs}))"


def _literal(text: str) -> str:
    return "'" + text.replace("\\", "\\\\").replace("'", "''") + "'"


@dataclass(frozen=True)
class Guard:
    """The guard's columns and side tables for one target table."""

    target: tuple[str, ...]  # the target's name parts, as table_map gives them
    commit: str  # the target's position columns, as named there
    seq: str

    @classmethod
    def of(cls, info: TableInfo, target: tuple[str, ...], owner: object) -> Guard:
        """The guard of ``info``; TableLevelDestinationError naming the DDL if it lacks one."""
        commit, seq = info.resolve(POSITION_COMMIT_COLUMN), info.resolve(POSITION_SEQ_COLUMN)
        if commit is None or seq is None:
            missing = [
                n
                for n, c in ((POSITION_COMMIT_COLUMN, commit), (POSITION_SEQ_COLUMN, seq))
                if c is None
            ]
            added = ", ".join(f"{n.upper()} {POSITION_TYPE}" for n in missing)
            raise TableLevelDestinationError(
                f"{owner}: guard columns missing from target table {info.name}: "
                f"{', '.join(missing)} (target has: {', '.join(info.columns)}); "
                f"fix: ALTER TABLE {info.name} ADD COLUMN {added}"
            )
        return cls(target, commit, seq)

    @property
    def table_name(self) -> str:
        """The target's own name: its key in the truncates table."""
        return self.target[-1]

    @property
    def tombstones(self) -> str:
        return self._beside(self.table_name + TOMBSTONE_SUFFIX)

    @property
    def truncates(self) -> str:
        return self._beside(TRUNCATES_TABLE)

    def _beside(self, name: str) -> str:
        """A table in the target's database and schema."""
        return ".".join(quote(part) for part in (*self.target[:-1], name))

    def _position(self, alias: str) -> tuple[str, str]:
        return f"{alias}.{quote(self.commit)}", f"{alias}.{quote(self.seq)}"

    # -------------------------------------------------------------- side tables

    def create_tombstones(self, info: TableInfo, keys: tuple[str, ...]) -> str:
        columns = [f"{quote(k)} {info.columns[k]}" for k in keys]
        columns += [f"{_COMMIT} {POSITION_TYPE} NOT NULL", f"{_SEQ} {POSITION_TYPE} NOT NULL"]
        key = ", ".join(quote(k) for k in keys)
        return (
            f"CREATE TABLE IF NOT EXISTS {self.tombstones} "
            f"({', '.join(columns)}, PRIMARY KEY ({key}))"
        )

    def create_truncates(self) -> str:
        return (
            f"CREATE TABLE IF NOT EXISTS {self.truncates} ({_TABLE_NAME} VARCHAR PRIMARY KEY, "
            f"{_COMMIT} {POSITION_TYPE} NOT NULL, {_SEQ} {POSITION_TYPE} NOT NULL, "
            f'"TRUNCATED_AT" TIMESTAMP_LTZ DEFAULT CURRENT_TIMESTAMP())'
        )

    # -------------------------------------------------------------- batches

    def statements(self, stage: Stage) -> Iterator[str]:
        """After the stage is loaded: the guarded statements that apply it, in order."""
        stage_table = f"{quote(STAGE_TABLE)} AS s"
        s = self._position("s")
        yield from stage.prepares()
        # 1. Out of the stage: changes a tombstone of their key is at least as new as,
        yield (
            f"DELETE FROM {stage_table} USING {self.tombstones} AS b WHERE {stage.match('b')} "
            f"AND NOT {_older((f'b.{_COMMIT}', f'b.{_SEQ}'), s)}"
        )
        # 2. ... changes not newer than the table's last truncate,
        yield (
            f"DELETE FROM {stage_table} USING {self.truncates} AS w "
            f"WHERE w.{_TABLE_NAME} = {_literal(self.table_name)} "
            f"AND NOT {_older((f'w.{_COMMIT}', f'w.{_SEQ}'), s)}"
        )
        deleted = stage.deleted
        # 3. ... and deletes of a row newer than them (no tombstone for those).
        yield (
            f"DELETE FROM {stage_table} USING {stage.info.name} AS t WHERE {deleted} "
            f"AND {stage.match()} AND t.{quote(self.commit)} IS NOT NULL "
            f"AND NOT {_older(self._position('t'), s)}"
        )
        # 4. A newer upsert makes its key's tombstone useless.
        yield (
            f"DELETE FROM {self.tombstones} AS b USING {stage_table} WHERE NOT {deleted} "
            f"AND {stage.match('b')} AND {_older((f'b.{_COMMIT}', f'b.{_SEQ}'), s)}"
        )
        # 5. The target: only rows older than the change (or without a position) change.
        t = self._position("t")
        yield stage.merge(f"({t[0]} IS NULL OR {_older(t, s)})")
        # 6. Applied deletes leave their tombstone, the newest one per key.
        keys = ", ".join(quote(k) for k in stage.keys)
        values = ", ".join(f"s.{quote(k)}" for k in stage.keys)
        yield (
            f"MERGE INTO {self.tombstones} AS b USING {stage_table} ON {stage.match('b')} "
            f"WHEN MATCHED AND {deleted} AND {_older((f'b.{_COMMIT}', f'b.{_SEQ}'), s)} "
            f"THEN UPDATE SET {_COMMIT} = {s[0]}, {_SEQ} = {s[1]} "
            f"WHEN NOT MATCHED AND {deleted} THEN INSERT ({keys}, {_COMMIT}, {_SEQ}) "
            f"VALUES ({values}, {s[0]}, {s[1]})"
        )

    # -------------------------------------------------------------- truncates

    def truncate(self, cur: SnowflakeCursor, info: TableInfo, at: SourcePosition) -> str:
        """Apply a truncate at ``at`` under the guard; returns what it did (for the log).

        * not newer than the mark (delivered again, or an older truncate after
          a newer one): skipped, the newer truncate removed all it would;
        * rows newer than it exist (it arrives after newer changes): those
          rows stay, the older ones are deleted, as if it had come in order;
        * else ``TRUNCATE TABLE``.

        Then the mark moves to ``at`` and the tombstones older than it go.
        """
        cur.execute(self.create_truncates())
        cur.execute(self.watermark())
        mark = cur.fetchone()
        if mark is not None and (int(mark[0]), int(mark[1])) >= (at.commit, at.seq):
            return f"skipped: not newer than the last truncate at {SourcePosition(*mark)}"
        cur.execute(self.newer_rows(info, at))
        if cur.fetchone() is not None:
            cur.execute(self.delete_older(info, at))
            done = "rows newer than it kept, older deleted"
        else:
            cur.execute(f"TRUNCATE TABLE {info.name}")
            done = "truncated"
        cur.execute(self.store_watermark(at))
        try:
            cur.execute(self.forget_tombstones(at))
        except sf_errors.ProgrammingError as error:
            if error.errno != 2003:  # no tombstone table yet: nothing to forget
                raise
        return done

    def watermark(self) -> str:
        return (
            f"SELECT {_COMMIT}, {_SEQ} FROM {self.truncates} "
            f"WHERE {_TABLE_NAME} = {_literal(self.table_name)}"
        )

    def newer_rows(self, info: TableInfo, at: SourcePosition) -> str:
        """A query with a row when the target holds a row newer than ``at``."""
        position = (str(int(at.commit)), str(int(at.seq)))
        newer = _older(position, self._position("t"))
        return f"SELECT 1 FROM {info.name} AS t WHERE {newer} LIMIT 1"

    def delete_older(self, info: TableInfo, at: SourcePosition) -> str:
        """Delete the rows not newer than ``at`` (an out-of-order truncate spares newer ones)."""
        position = (str(int(at.commit)), str(int(at.seq)))
        t = self._position("t")
        return f"DELETE FROM {info.name} AS t WHERE {t[0]} IS NULL OR NOT {_older(position, t)}"

    def store_watermark(self, at: SourcePosition) -> str:
        commit, seq = int(at.commit), int(at.seq)
        return (
            f"MERGE INTO {self.truncates} AS w USING (SELECT {_literal(self.table_name)} AS "
            f"{_TABLE_NAME}, {commit} AS {_COMMIT}, {seq} AS {_SEQ}) AS s "
            f"ON w.{_TABLE_NAME} = s.{_TABLE_NAME} "
            f"WHEN MATCHED AND {_older((f'w.{_COMMIT}', f'w.{_SEQ}'), (str(commit), str(seq)))} "
            f"THEN UPDATE SET {_COMMIT} = s.{_COMMIT}, {_SEQ} = s.{_SEQ}, "
            '"TRUNCATED_AT" = CURRENT_TIMESTAMP() '
            f"WHEN NOT MATCHED THEN INSERT ({_TABLE_NAME}, {_COMMIT}, {_SEQ}) "
            f"VALUES (s.{_TABLE_NAME}, s.{_COMMIT}, s.{_SEQ})"
        )

    def forget_tombstones(self, at: SourcePosition) -> str:
        """The tombstones older than a truncate at ``at``: its mark refuses all they do."""
        position = (str(int(at.commit)), str(int(at.seq)))
        older = _older((f"b.{_COMMIT}", f"b.{_SEQ}"), position)
        return f"DELETE FROM {self.tombstones} AS b WHERE {older}"
