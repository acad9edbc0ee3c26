"""Checks or creates the publication and the logical replication slot a source streams from."""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence

import psycopg2
from psycopg2 import sql

from compute.sources.postgres.table_keys import TableKey, read_keys
from destinations.records import format_pg_lsn, parse_pg_lsn

logger = logging.getLogger(__name__)


class SlotError(RuntimeError):
    """The slot or publication is missing, of the wrong kind, or the server refused to make it."""


class TableKeyError(SlotError):
    """A published table's key cannot be replicated: one line per table, naming the fix."""


class Slot:
    """The replication slot ``name`` (plugin pgoutput) and the publication it streams.

    ``prepare_publication()`` then ``prepare()`` make sure both exist
    (creating them when ``create`` is true, and saying so in the log), the
    tables' keys checked before anything is created; ``prepare()`` returns
    the slot's ``confirmed_flush_lsn``: where streaming resumes. The engine never drops
    a slot: an unused slot keeps WAL on the source, so removing one is the
    operator's decision (``SELECT pg_drop_replication_slot('name')``).
    """

    def __init__(
        self,
        dsn: str,
        name: str,
        publication: str,
        *,
        tables: Sequence[str] = (),
        create: bool = True,
    ) -> None:
        self.dsn = dsn
        self.name = name
        self.publication = publication
        self.tables = tuple(tables)
        self.create = create
        self.created = False

    def prepare_publication(
        self, problems: Callable[[dict[str, TableKey]], list[str]]
    ) -> dict[str, TableKey]:
        """Check or create the publication; its tables' keys (those of ``tables`` if given).

        One transaction: when ``problems(keys)`` names any, it is rolled back
        and TableKeyError raised, so a refused start leaves no publication
        behind (and creates no slot, which would hold WAL on the source).
        """
        conn = psycopg2.connect(self.dsn)
        try:
            with conn.cursor() as cur:
                created = self._publication(cur)
                keys = read_keys(cur, self.publication)
            if self.tables:
                keys = {table: key for table, key in keys.items() if table in self.tables}
            refused = problems(keys)
            if refused:
                conn.rollback()
                raise TableKeyError("\n".join(refused))
            conn.commit()
        finally:
            conn.close()
        if created:
            logger.info(
                "created publication: publication=%s tables=%s",
                self.publication,
                ",".join(self.tables) or "ALL",
            )
        return keys

    def prepare(self) -> int:
        """Check or create the slot (after ``prepare_publication``); its confirmed flush LSN."""
        conn = psycopg2.connect(self.dsn)
        conn.autocommit = True
        try:
            with conn.cursor() as cur:
                return self._slot(cur)
        finally:
            conn.close()

    def exists(self) -> bool:
        """True if the slot exists (of whatever kind: ``prepare`` checks that)."""
        conn = psycopg2.connect(self.dsn)
        try:
            with conn.cursor() as cur:
                cur.execute("SELECT 1 FROM pg_replication_slots WHERE slot_name = %s", (self.name,))
                return cur.fetchone() is not None
        finally:
            conn.close()

    def confirmed_flush(self) -> int | None:
        """The slot's ``confirmed_flush_lsn`` now (None if the slot is gone)."""
        conn = psycopg2.connect(self.dsn)
        try:
            with conn.cursor() as cur:
                cur.execute(
                    "SELECT confirmed_flush_lsn::text FROM pg_replication_slots "
                    "WHERE slot_name = %s",
                    (self.name,),
                )
                row = cur.fetchone()
        finally:
            conn.close()
        return parse_pg_lsn(row[0]) if row and row[0] else None

    def published_tables(self) -> list[str]:
        """Every table of the publication, as ``schema.table``."""
        conn = psycopg2.connect(self.dsn)
        try:
            with conn.cursor() as cur:
                return self._published(cur)
        finally:
            conn.close()

    def _published(self, cur: psycopg2.extensions.cursor) -> list[str]:
        cur.execute(
            "SELECT schemaname || '.' || tablename FROM pg_publication_tables "
            "WHERE pubname = %s ORDER BY 1",
            (self.publication,),
        )
        return [row[0] for row in cur.fetchall()]

    def _publication(self, cur: psycopg2.extensions.cursor) -> bool:
        """Check the publication, creating it when missing; True if created."""
        cur.execute("SELECT 1 FROM pg_publication WHERE pubname = %s", (self.publication,))
        created = cur.fetchone() is None
        if created:
            if not self.create:
                raise SlotError(
                    f"publication {self.publication!r} does not exist on the source: create it "
                    f"(CREATE PUBLICATION {self.publication} FOR TABLE ...) or set create = true"
                )
            if self.tables:
                targets = sql.SQL("FOR TABLE {}").format(
                    sql.SQL(", ").join(_table_identifier(t) for t in self.tables)
                )
            else:
                targets = sql.SQL("FOR ALL TABLES")
            try:
                cur.execute(
                    sql.SQL("CREATE PUBLICATION {} {}").format(
                        sql.Identifier(self.publication), targets
                    )
                )
            except psycopg2.Error as error:
                raise SlotError(
                    f"cannot create publication {self.publication!r}: {error}".strip()
                ) from None
        if self.tables:
            published = set(self._published(cur))
            missing = [t for t in self.tables if t not in published]
            if missing:
                raise SlotError(
                    f"publication {self.publication!r} does not publish {', '.join(missing)}: "
                    f"ALTER PUBLICATION {self.publication} ADD TABLE {', '.join(missing)}, "
                    "or remove them from 'tables'"
                )
        return created

    def _slot(self, cur: psycopg2.extensions.cursor) -> int:
        cur.execute(
            "SELECT plugin, slot_type, database, confirmed_flush_lsn::text, wal_status "
            "FROM pg_replication_slots WHERE slot_name = %s",
            (self.name,),
        )
        row = cur.fetchone()
        if row is None:
            if not self.create:
                raise SlotError(
                    f"replication slot {self.name!r} does not exist on the source: create it "
                    f"(SELECT pg_create_logical_replication_slot('{self.name}', 'pgoutput')) "
                    "or set create = true"
                )
            try:
                cur.execute(
                    "SELECT lsn::text FROM pg_create_logical_replication_slot(%s, 'pgoutput')",
                    (self.name,),
                )
            except psycopg2.Error as error:
                raise SlotError(
                    f"cannot create replication slot {self.name!r}: {error}".strip()
                ) from None
            (lsn,) = cur.fetchone()
            self.created = True
            logger.info("created replication slot: slot=%s plugin=pgoutput lsn=%s", self.name, lsn)
            return parse_pg_lsn(lsn)
        plugin, kind, database, confirmed, wal_status = row
        cur.execute("SELECT current_database()")
        (current,) = cur.fetchone()
        if kind != "logical" or plugin != "pgoutput" or database != current:
            raise SlotError(
                f"replication slot {self.name!r} is a {kind} slot with plugin {plugin!r} in "
                f"database {database!r}; the source needs a logical pgoutput slot in "
                f"{current!r}: name another 'slot'"
            )
        if wal_status == "lost":
            raise SlotError(
                f"replication slot {self.name!r} lost WAL it needed (wal_status=lost): the "
                "changes since it was last read are gone; drop and re-create the slot and "
                "copy the tables again"
            )
        lsn_value = parse_pg_lsn(confirmed)
        logger.info(
            "replication slot found: slot=%s confirmed_flush_lsn=%s",
            self.name,
            format_pg_lsn(lsn_value),
        )
        return lsn_value


def _table_identifier(table: str) -> sql.Composable:
    schema, dot, name = table.rpartition(".")
    return sql.Identifier(schema or "public", name) if dot else sql.Identifier(table)
