"""A deterministic generator of a valid CDC history (inserts, updates, deletes) over a few tables.

For demos, tests and benchmarks. Event ``i`` depends only on the seed, the
options and the events before it, so a restart at a resume token (the index
of the next event) regenerates exactly the same continuation, and
``expected_state`` tells what a destination must hold after the first N events.

Each event picks a table and a key uniformly (``keys_per_table`` keys per
table). A key with no row gets an insert; a key with a row is deleted with
probability ``delete_ratio`` and updated otherwise, so the history never
updates or deletes a missing row nor inserts an existing one. Events come in
transactions of 1 to 5 changes: commit positions strictly increase from one
transaction to the next and seq numbers the changes inside one.

Tables are named by the caller (``public.users``); the part after the last
dot picks the columns: ``users``, ``orders`` (composite key) and ``accounts``
have their own, any other name gets a generic layout. ``create_table_sql``
gives matching PostgreSQL DDL.
"""

from __future__ import annotations

import logging
import random
import time
import uuid
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import UTC, date, datetime, timedelta
from decimal import Decimal
from typing import Any

from compute.sources.base import Source, SourceBatch, SourceError
from compute.sources.offset_store import OffsetStore
from destinations.records import POSITION_COLUMNS, ChangeRecord, Operation, SourcePosition

logger = logging.getLogger(__name__)

DEFAULT_TABLES = ("public.users", "public.orders", "public.accounts")
_FIRST_COMMIT = 0x0100_0000  # looks like an early PostgreSQL LSN; any positive start works
_COMMIT_STEP = 0x100
_EPOCH = datetime(2024, 1, 1, tzinfo=UTC)
_EPOCH_SECONDS = _EPOCH.timestamp()
_ORDERS_PER_CUSTOMER = 8
_FIRST = ("Ada", "Alan", "Grace", "Edsger", "Barbara", "Donald", "Frances", "Ken", "Radia", "Tim")
_LAST = ("Lovelace", "Turing", "Hopper", "Dijkstra", "Liskov", "Knuth", "Allen", "Thompson")
_STATUSES = ("new", "paid", "shipped", "delivered", "returned")
_CURRENCIES = ("EUR", "USD", "GBP", "CHF", "JPY")
# Notes exercise text escaping in destinations: empty vs NULL, tab, newline, backslash, quotes.
_NOTES: tuple[str | None, ...] = (
    None,
    "",
    "rush",
    "gift wrap, please",
    "tab\there",
    "line\nbreak",
    "back\\slash",
    "quote ' and \"",
    "ünïcödé ✓",
)

Row = dict[str, Any]
RowMaker = Callable[[random.Random, int, Row | None, int, datetime], Row]


@dataclass(frozen=True)
class _TableSpec:
    columns: tuple[tuple[str, str], ...]  # (name, PostgreSQL type), key columns first
    key: tuple[str, ...]
    key_of: Callable[[int], Row]  # key index -> key columns
    row: RowMaker  # (rng, key index, previous row or None, version, timestamp) -> full row


# random() is implemented in C; randrange/randint/choice are pure Python and
# dominated generation time, so integers are drawn from random() instead.
def _below(rng: random.Random, n: int) -> int:
    return int(rng.random() * n)


def _pick(rng: random.Random, options: Sequence[Any]) -> Any:
    return options[int(rng.random() * len(options))]


def _money(rng: random.Random, places: int, low: int, high: int) -> Decimal:
    return Decimal(low + int(rng.random() * (high - low))).scaleb(-places)


def _users_row(rng: random.Random, k: int, old: Row | None, version: int, ts: datetime) -> Row:
    if old is None or rng.random() < 0.2:
        first, last = _pick(rng, _FIRST), _pick(rng, _LAST)
        name, email = f"{first} {last}", f"{first.lower()}.{last.lower()}{k}@example.com"
    else:
        name, email = old["name"], old["email"]
    return {
        "id": k + 1,
        "name": name,
        "email": email,
        "balance": _money(rng, 2, -10_000, 10_000_000),
        "active": rng.random() < 0.9,
        "updated_at": ts,
        "version": version,
    }


def _orders_row(rng: random.Random, k: int, old: Row | None, version: int, ts: datetime) -> Row:
    return {
        "customer_id": k // _ORDERS_PER_CUSTOMER + 1,
        "order_no": k % _ORDERS_PER_CUSTOMER + 1,
        "status": _pick(rng, _STATUSES),
        "amount": _money(rng, 2, 100, 500_000) if old is None else old["amount"],
        "note": _pick(rng, _NOTES),
        "updated_at": ts,
        "version": version,
    }


def _accounts_row(rng: random.Random, k: int, old: Row | None, version: int, ts: datetime) -> Row:
    if old is None:
        ref = uuid.UUID(int=rng.getrandbits(128), version=4)
        owner = f"{_pick(rng, _FIRST)} {_pick(rng, _LAST)}"
        currency = _pick(rng, _CURRENCIES)
        opened = date(2020, 1, 1) + timedelta(days=_below(rng, 1500))
    else:
        ref, owner, currency, opened = (
            old["external_ref"],
            old["owner"],
            old["currency"],
            old["opened_on"],
        )
    return {
        "id": 1000 + k,
        "external_ref": ref,
        "owner": owner,
        "balance": _money(rng, 4, -1_000_000, 10**12),
        "currency": currency,
        "opened_on": opened,
        "updated_at": ts,
        "version": version,
    }


def _generic_row(rng: random.Random, k: int, old: Row | None, version: int, ts: datetime) -> Row:
    return {
        "id": k + 1,
        "name": f"{_pick(rng, _FIRST)} {_pick(rng, _LAST)}",
        "balance": _money(rng, 2, -10_000, 10_000_000),
        "updated_at": ts,
        "version": version,
    }


_SPECS: dict[str, _TableSpec] = {
    "users": _TableSpec(
        columns=(
            ("id", "bigint"),
            ("name", "text"),
            ("email", "text"),
            ("balance", "numeric(14,2)"),
            ("active", "boolean"),
            ("updated_at", "timestamptz"),
            ("version", "bigint"),
        ),
        key=("id",),
        key_of=lambda k: {"id": k + 1},
        row=_users_row,
    ),
    "orders": _TableSpec(
        columns=(
            ("customer_id", "bigint"),
            ("order_no", "integer"),
            ("status", "text"),
            ("amount", "numeric(14,2)"),
            ("note", "text"),
            ("updated_at", "timestamptz"),
            ("version", "bigint"),
        ),
        key=("customer_id", "order_no"),
        key_of=lambda k: {
            "customer_id": k // _ORDERS_PER_CUSTOMER + 1,
            "order_no": k % _ORDERS_PER_CUSTOMER + 1,
        },
        row=_orders_row,
    ),
    "accounts": _TableSpec(
        columns=(
            ("id", "bigint"),
            ("external_ref", "uuid"),
            ("owner", "text"),
            ("balance", "numeric(18,4)"),
            ("currency", "text"),
            ("opened_on", "date"),
            ("updated_at", "timestamptz"),
            ("version", "bigint"),
        ),
        key=("id",),
        key_of=lambda k: {"id": 1000 + k},
        row=_accounts_row,
    ),
}
_GENERIC = _TableSpec(
    columns=(
        ("id", "bigint"),
        ("name", "text"),
        ("balance", "numeric(14,2)"),
        ("updated_at", "timestamptz"),
        ("version", "bigint"),
    ),
    key=("id",),
    key_of=lambda k: {"id": k + 1},
    row=_generic_row,
)
_NULLABLE = frozenset({("orders", "note")})


def _spec(table: str) -> _TableSpec:
    return _SPECS.get(table.rpartition(".")[2], _GENERIC)


def table_columns(table: str) -> tuple[str, ...]:
    """The generated columns of ``table``, key columns first."""
    return tuple(name for name, _ in _spec(table).columns)


def primary_key(table: str) -> tuple[str, ...]:
    """The primary-key columns of ``table``, in key order."""
    return _spec(table).key


def _quote(name: str) -> str:
    return '"' + name.replace('"', '""') + '"'


def create_table_sql(
    table: str, *, target: str | None = None, position_columns: bool = False
) -> str:
    """``CREATE TABLE IF NOT EXISTS`` for the rows generated for ``table``.

    ``target`` names the table to create (default: ``table`` itself),
    ``"schema.name"`` or a bare name; its schema must exist. With
    ``position_columns`` it also gets the PostgreSQL destination's position
    guard columns (``_rosetta_commit``, ``_rosetta_seq``).
    """
    spec = _spec(table)
    name = target or table
    schema, dot, bare = name.partition(".")
    qualified = f"{_quote(schema)}.{_quote(bare)}" if dot else _quote(name)
    short = table.rpartition(".")[2]
    lines = [
        f"    {_quote(column)} {kind}"
        + ("" if (short, column) in _NULLABLE and column not in spec.key else " NOT NULL")
        for column, kind in spec.columns
    ]
    if position_columns:
        lines += [f"    {_quote(column)} bigint" for column in POSITION_COLUMNS]
    lines.append(f"    PRIMARY KEY ({', '.join(_quote(c) for c in spec.key)})")
    return f"CREATE TABLE IF NOT EXISTS {qualified} (\n" + ",\n".join(lines) + "\n)"


class _Generator:
    """The sequential state machine behind the stream: same options, same events."""

    def __init__(
        self, tables: Sequence[str], seed: int, keys_per_table: int, delete_ratio: float
    ) -> None:
        self.tables = tuple(tables)
        self.specs = [_spec(t) for t in self.tables]
        self.rng = random.Random(seed)
        self.keys_per_table = keys_per_table
        self.delete_ratio = delete_ratio
        self.rows: list[dict[int, Row]] = [{} for _ in self.tables]
        self.index = 0  # events generated so far
        self.txn = -1
        self.txn_left = 0
        self.seq = 0
        self.txn_time = _EPOCH

    def step(self) -> tuple[int, int, Operation, Row | None, Row | None]:
        """Advance one event: (table index, key index, op, before, after)."""
        rng = self.rng
        if self.txn_left == 0:
            self.txn += 1
            self.txn_left = 1 + _below(rng, 5)
            self.seq = 0
            self.txn_time = _EPOCH + timedelta(milliseconds=self.txn)
        else:
            self.seq += 1
        self.txn_left -= 1
        self.index += 1
        t = _below(rng, len(self.tables))
        k = _below(rng, self.keys_per_table)
        rows = self.rows[t]
        old = rows.get(k)
        if old is not None and rng.random() < self.delete_ratio:
            del rows[k]
            return t, k, Operation.DELETE, old, None
        version = 1 if old is None else old["version"] + 1
        new = self.specs[t].row(rng, k, old, version, self.txn_time)
        rows[k] = new
        return t, k, (Operation.INSERT if old is None else Operation.UPDATE), old, new

    def record(
        self, t: int, k: int, op: Operation, before: Row | None, after: Row | None
    ) -> ChangeRecord:
        """The change record of the event ``step`` just made."""
        return ChangeRecord(
            table=self.tables[t],
            op=op,
            key=self.specs[t].key_of(k),
            after=after,
            position=SourcePosition(_FIRST_COMMIT + self.txn * _COMMIT_STEP, self.seq),
            before=before,
            commit_ts=_EPOCH_SECONDS + self.txn / 1000.0,
        )


class SyntheticSource(Source):
    """Deterministic inserts/updates/deletes; the resume token is the next event's index.

    ``total_events=None`` never ends. ``events_per_second`` caps the rate with
    a token bucket (at most one second of burst) read from ``clock``; ``read``
    never sleeps, it returns fewer (or no) events when it is ahead.
    """

    def __init__(
        self,
        source_id: str,
        offsets: OffsetStore | None,
        *,
        tables: Sequence[str] = DEFAULT_TABLES,
        total_events: int | None,
        seed: int = 1,
        keys_per_table: int = 100,
        delete_ratio: float = 0.1,
        events_per_second: float | None = None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        super().__init__(source_id)
        if isinstance(tables, str) or not tables or len(set(tables)) != len(tables):
            raise ValueError("tables must be a non-empty sequence of distinct table names")
        if total_events is not None and total_events < 0:
            raise ValueError("total_events must be >= 0 or None")
        if keys_per_table < 1:
            raise ValueError("keys_per_table must be >= 1")
        if not 0.0 <= delete_ratio < 1.0:
            raise ValueError("delete_ratio must be in [0, 1)")
        if events_per_second is not None and events_per_second <= 0:
            raise ValueError("events_per_second must be > 0 or None")
        self.tables = tuple(tables)
        self.total_events = total_events
        self.seed = seed
        self.keys_per_table = keys_per_table
        self.delete_ratio = delete_ratio
        self._offsets = offsets
        self._rate = events_per_second
        self._clock = clock
        self._tokens = 0.0
        self._last_tick: float | None = None
        self._gen = self._new_generator()

        stored = offsets.get(self.source_id) if offsets is not None else None
        start = self._parse_token(stored) if stored is not None else 0
        if start:
            began = time.perf_counter()
            for _ in range(start):
                self._gen.step()  # replay to rebuild which keys exist; cheap next to I/O
            logger.info(
                "resuming source=%s event=%d replay_seconds=%.3f",
                self.source_id,
                start,
                time.perf_counter() - began,
            )

    @property
    def position(self) -> int:
        """Index of the next event (= events generated so far)."""
        return self._gen.index

    def read(self, max_events: int) -> SourceBatch:
        if max_events < 1:
            raise ValueError("max_events must be at least 1")
        count = max_events
        if self.total_events is not None:
            count = min(count, self.total_events - self._gen.index)
        if self._rate is not None and count > 0:
            count = min(count, self._take_tokens(count))
        gen = self._gen
        records = [gen.record(*gen.step()) for _ in range(count)]
        return SourceBatch(records, str(gen.index))

    def acknowledge(self, resume_token: str) -> None:
        index = self._parse_token(resume_token)
        if index > self._gen.index:
            raise SourceError(
                f"source={self.source_id}: acknowledged event {index} was never read "
                f"(read up to {self._gen.index})"
            )
        if self._offsets is not None:
            self._offsets.put(self.source_id, str(index))

    @property
    def exhausted(self) -> bool:
        return self.total_events is not None and self._gen.index >= self.total_events

    def expected_state(self, upto: int | None = None) -> dict[str, dict[tuple[Any, ...], Row]]:
        """Table contents after the first ``upto`` events (all of them when None).

        ``{table: {key values tuple (primary-key order): full row dict}}``, every
        table present (possibly empty). Independent of this source's progress.
        """
        if upto is None:
            if self.total_events is None:
                raise ValueError("expected_state needs upto for an endless source")
            upto = self.total_events
        if upto < 0:
            raise ValueError("upto must be >= 0")
        gen = self._new_generator()
        for _ in range(upto):
            gen.step()
        state: dict[str, dict[tuple[Any, ...], Row]] = {}
        for table, spec, rows in zip(gen.tables, gen.specs, gen.rows, strict=True):
            state[table] = {tuple(row[c] for c in spec.key): dict(row) for row in rows.values()}
        return state

    def create_tables_sql(self, *, position_columns: bool = False) -> list[str]:
        """``create_table_sql`` for each of this source's tables."""
        return [create_table_sql(t, position_columns=position_columns) for t in self.tables]

    def _new_generator(self) -> _Generator:
        return _Generator(self.tables, self.seed, self.keys_per_table, self.delete_ratio)

    def _take_tokens(self, wanted: int) -> int:
        assert self._rate is not None
        now = self._clock()
        if self._last_tick is not None:
            burst = max(1.0, self._rate)  # a stalled reader may catch up one second, no more
            self._tokens = min(burst, self._tokens + (now - self._last_tick) * self._rate)
        self._last_tick = now
        granted = min(wanted, int(self._tokens + 1e-9))  # 0.1 s * 50/s is 4.999... in floats
        self._tokens -= granted
        return granted

    def _parse_token(self, token: str) -> int:
        try:
            index = int(token)
        except ValueError:
            index = -1
        if index < 0 or (self.total_events is not None and index > self.total_events):
            raise SourceError(
                f"source={self.source_id}: bad synthetic resume token {token!r} "
                f"(expected an event index in 0..{self.total_events})"
            )
        return index
