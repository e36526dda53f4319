"""Dead letters, deduplication records and schedule ticks, kept in the app's database.

Their tables join tidings' schema (`tidings db init` creates them). The deduplication store writes
through the open transaction when there is one, so its record commits with the handler's effects.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from contextlib import asynccontextmanager
from typing import Any, Generic, TypeVar, final

import msgspec
from sqlalchemy import (
    BigInteger,
    Column,
    Double,
    Index,
    Integer,
    String,
    Table,
    delete,
    func,
    insert,
    or_,
    select,
)
from sqlalchemy.exc import IntegrityError
from sqlalchemy.ext.asyncio import AsyncConnection

from tidings.dead_letter import EVERY_DEAD_LETTER, DeadLetter, DeadLetterFilter
from tidings.sql._database import Database
from tidings.sql._schema import _Body, _Json, metadata
from tidings.sql._scope import current_scope

__all__ = [
    "SqlDeadLetterStore",
    "SqlDeduplicationStore",
    "SqlScheduleLock",
    "dead_letters",
    "deduplication",
    "schedule_ticks",
]

_encode_headers = msgspec.json.Encoder().encode
_decode_headers = msgspec.json.Decoder(dict[str, str]).decode

#: Messages that could not be handled, with why.
dead_letters = Table(
    "tidings_dead_letters",
    metadata,
    Column("id", String(64), primary_key=True),
    Column("message_id", String(255), nullable=False),
    Column("endpoint", String(255), nullable=False),
    Column("channel", String(255), nullable=False),
    Column("reason", String(64), nullable=False),
    Column("exception_type", String(255), nullable=False),
    Column("exception_message", _Json, nullable=False),
    Column("traceback", _Json, nullable=False),
    Column("headers", _Json, nullable=False),
    Column("body", _Body, nullable=False),
    Column("attempts", Integer, nullable=False),
    Column("first_failed_at", Double, nullable=False),
    Column("last_failed_at", Double, nullable=False),
    mysql_engine="InnoDB",
    mysql_charset="utf8mb4",
)
Index("ix_tidings_dead_letters_failed", dead_letters.c.last_failed_at)
Index("ix_tidings_dead_letters_endpoint", dead_letters.c.endpoint, dead_letters.c.last_failed_at)

#: What each endpoint (or tracking name) handled, kept for the retention window.
deduplication = Table(
    "tidings_deduplication",
    metadata,
    Column("tracking", String(191), primary_key=True),
    Column("message_key", String(191), primary_key=True),
    Column("handled_at", Double, nullable=False),
    mysql_engine="InnoDB",
    mysql_charset="utf8mb4",
)
Index("ix_tidings_deduplication_handled", deduplication.c.handled_at)

#: Schedule ticks claimed by a worker; the primary key lets exactly one worker claim each.
schedule_ticks = Table(
    "tidings_schedule_ticks",
    metadata,
    Column("schedule", String(191), primary_key=True),
    Column("tick_ms", BigInteger, primary_key=True, autoincrement=False),
    Column("claimed_at", Double, nullable=False),
    mysql_engine="InnoDB",
    mysql_charset="utf8mb4",
)


@asynccontextmanager
async def _joining(database: Database) -> AsyncIterator[AsyncConnection]:
    """The open transaction's connection if there is one, else a short transaction of its own."""
    scope = current_scope(database)
    if scope is not None:
        async with scope.lock:
            yield scope.connection
        return
    async with database.writing() as connection:
        yield connection


@final
class SqlDeadLetterStore:
    """Dead letters in `tidings_dead_letters`."""

    def __init__(self, database: Database) -> None:
        self.database = database

    async def add(self, letter: DeadLetter) -> None:
        async with self.database.writing() as connection:
            await connection.execute(
                insert(dead_letters).values(
                    id=letter.id,
                    message_id=letter.message_id,
                    endpoint=letter.endpoint,
                    channel=letter.channel,
                    reason=letter.reason,
                    exception_type=letter.exception_type,
                    exception_message=letter.exception_message,
                    traceback=letter.traceback,
                    headers=_encode_headers(letter.headers).decode(),
                    body=letter.body,
                    attempts=letter.attempts,
                    first_failed_at=letter.first_failed_at,
                    last_failed_at=letter.last_failed_at,
                )
            )

    @staticmethod
    def _where(where: DeadLetterFilter) -> list[Any]:
        conditions: list[Any] = []
        if where.endpoint is not None:
            conditions.append(dead_letters.c.endpoint == where.endpoint)
        if where.channel is not None:
            conditions.append(dead_letters.c.channel == where.channel)
        if where.exception_type is not None:
            conditions.append(
                or_(
                    dead_letters.c.exception_type == where.exception_type,
                    dead_letters.c.exception_type.like(f"%.{where.exception_type}"),
                )
            )
        if where.since is not None:
            conditions.append(dead_letters.c.last_failed_at >= where.since)
        if where.until is not None:
            conditions.append(dead_letters.c.last_failed_at <= where.until)
        if where.header is not None:
            # A cheap pre-filter in SQL; the exact header match is checked on each row.
            conditions.append(dead_letters.c.headers.contains(where.header[1]))
        return conditions

    async def list(
        self, where: DeadLetterFilter = EVERY_DEAD_LETTER, *, limit: int = 100, offset: int = 0
    ) -> list[DeadLetter]:
        query = (
            select(dead_letters)
            .where(*self._where(where))
            .order_by(dead_letters.c.last_failed_at.desc(), dead_letters.c.id.desc())
        )
        if where.header is None:
            query = query.limit(limit).offset(offset)
        async with self.database.reading() as connection:
            rows = (await connection.execute(query)).all()
        letters = [self._letter(row._mapping) for row in rows]
        if where.header is not None:
            letters = [letter for letter in letters if where.matches(letter)][offset : offset + limit]
        return letters

    async def get(self, letter_id: str) -> DeadLetter | None:
        async with self.database.reading() as connection:
            row = (
                await connection.execute(select(dead_letters).where(dead_letters.c.id == letter_id))
            ).first()
        return None if row is None else self._letter(row._mapping)

    async def delete(self, letter_ids: Sequence[str]) -> int:
        if not letter_ids:
            return 0
        async with self.database.writing() as connection:
            result = await connection.execute(
                delete(dead_letters).where(dead_letters.c.id.in_(list(letter_ids)))
            )
        return int(result.rowcount)

    async def count(self, where: DeadLetterFilter = EVERY_DEAD_LETTER) -> int:
        if where.header is not None:
            return len(await self.list(where, limit=2**31))
        async with self.database.reading() as connection:
            counted = await connection.execute(
                select(func.count()).select_from(dead_letters).where(*self._where(where))
            )
        return int(counted.scalar_one())

    @staticmethod
    def _letter(row: Any) -> DeadLetter:
        return DeadLetter(
            id=row["id"],
            message_id=row["message_id"],
            endpoint=row["endpoint"],
            channel=row["channel"],
            body=bytes(row["body"]),
            headers=_decode_headers(row["headers"]),
            reason=row["reason"],
            exception_type=row["exception_type"],
            exception_message=row["exception_message"],
            traceback=row["traceback"],
            attempts=row["attempts"],
            first_failed_at=row["first_failed_at"],
            last_failed_at=row["last_failed_at"],
        )


# Outside a transaction, PostgreSQL records go straight through asyncpg, and the lookups and records
# of messages handled at the same time go as one statement each: SQLAlchemy's per-statement cost and
# a round trip per message would otherwise make deduplication the slowest step of every message.
# One primary-key lookup per wanted record, whatever the planner believes about the table's size: a
# plain join, planned while the table was small and cached with the prepared statement, would go on
# scanning the whole table as it grows (and its statistics lag where autovacuum is off).
_PG_FOUND = (
    "SELECT wanted.tracking, wanted.message_key "
    "FROM unnest($1::text[], $2::text[]) AS wanted(tracking, message_key), "
    "LATERAL (SELECT 1 FROM tidings_deduplication AS d "
    "WHERE d.tracking = wanted.tracking AND d.message_key = wanted.message_key LIMIT 1) AS found"
)
# Like an ack, a record outside a transaction only guards against redelivery: losing it in a database
# crash can only let a duplicate through, so its commit does not wait for the WAL flush.
_PG_ADD = (
    "WITH quick AS (SELECT set_config('synchronous_commit', 'off', true)) "
    "INSERT INTO tidings_deduplication (tracking, message_key, handled_at) "
    "SELECT records.* FROM unnest($1::text[], $2::text[], $3::float8[]) AS records, quick "
    "ON CONFLICT DO NOTHING"
)

Item = TypeVar("Item")
Result = TypeVar("Result")


class _Coalescing(Generic[Item, Result]):
    """Runs the calls of concurrent tasks as one batch call.

    A batch leaves once the other ready tasks have had their turn to join it (so the handlings a
    consumer runs at once share it); calls made while it is on the wire form the next one.
    """

    def __init__(self, run_batch: Callable[[list[Item]], Awaitable[Sequence[Result]]]) -> None:
        self._run_batch = run_batch
        self._waiting: list[tuple[Item, asyncio.Future[Result]]] = []
        self._running: asyncio.Task[None] | None = None

    async def __call__(self, item: Item) -> Result:
        future: asyncio.Future[Result] = asyncio.get_running_loop().create_future()
        self._waiting.append((item, future))
        if self._running is None or self._running.done():
            self._running = asyncio.ensure_future(self._run())
        return await future

    async def _run(self) -> None:
        while self._waiting:
            gathered = 0
            while gathered != len(self._waiting):
                gathered = len(self._waiting)
                await asyncio.sleep(0)
            batch, self._waiting = self._waiting, []
            try:
                results = await self._run_batch([item for item, _ in batch])
            except BaseException as error:
                for _, future in batch:
                    if not future.done():
                        future.set_exception(error)
                if not isinstance(error, Exception):
                    raise
                continue
            for (_, future), result in zip(batch, results, strict=True):
                if not future.done():
                    future.set_result(result)


@final
class SqlDeduplicationStore:
    """Deduplication records in `tidings_deduplication`, joining the handler's transaction."""

    def __init__(self, database: Database) -> None:
        self.database = database
        self._pg_contains = _Coalescing(self._pg_found)
        self._pg_add = _Coalescing(self._pg_record)

    def _driver(self) -> Any:
        from tidings.channels.sql._driver import driver_connections_for

        return driver_connections_for(self.database)

    async def contains(self, tracking: str, key: str) -> bool:
        if current_scope(self.database) is None and self.database.backend == "postgresql":
            return await self._pg_contains((tracking, key))
        query = select(deduplication.c.handled_at).where(
            deduplication.c.tracking == tracking, deduplication.c.message_key == key
        )
        if current_scope(self.database) is not None:
            async with _joining(self.database) as connection:
                return (await connection.execute(query)).first() is not None
        async with self.database.reading() as connection:
            return (await connection.execute(query)).first() is not None

    async def add(self, tracking: str, key: str, handled_at: float) -> None:
        if current_scope(self.database) is None and self.database.backend == "postgresql":
            await self._pg_add((tracking, key, handled_at))
            return
        record = insert(deduplication).values(tracking=tracking, message_key=key, handled_at=handled_at)
        if current_scope(self.database) is not None:
            # A concurrent duplicate's insert waits on this row, then fails on the primary key and
            # rolls its transaction back: its retry finds the record and skips.
            async with _joining(self.database) as connection:
                await connection.execute(record)
            return
        try:
            async with self.database.writing() as connection:
                await connection.execute(record)
        except IntegrityError:
            pass  # a concurrent copy was handled and recorded first: the record stands

    async def _pg_found(self, slots: list[tuple[str, str]]) -> list[bool]:
        rows = await self._driver().fetch(_PG_FOUND, [t for t, _ in slots], [k for _, k in slots])
        found = {(row[0], row[1]) for row in rows}
        return [slot in found for slot in slots]

    async def _pg_record(self, records: list[tuple[str, str, float]]) -> list[None]:
        trackings, keys, times = zip(*records, strict=True)
        await self._driver().execute(_PG_ADD, list(trackings), list(keys), list(times))
        return [None] * len(records)

    async def purge(self, older_than: float) -> int:
        async with self.database.writing() as connection:
            result = await connection.execute(
                delete(deduplication).where(deduplication.c.handled_at < older_than)
            )
        return int(result.rowcount)


@final
class SqlScheduleLock:
    """Schedule ticks claimed in `tidings_schedule_ticks`: one worker wins each tick."""

    def __init__(self, database: Database, clock_now: Any) -> None:
        self.database = database
        self._now = clock_now

    async def claim(self, schedule: str, tick: float) -> bool:
        try:
            async with self.database.writing() as connection:
                await connection.execute(
                    insert(schedule_ticks).values(
                        schedule=schedule, tick_ms=round(tick * 1000), claimed_at=self._now()
                    )
                )
        except IntegrityError:
            return False
        return True

    async def last_tick(self, schedule: str) -> float | None:
        async with self.database.reading() as connection:
            latest = await connection.execute(
                select(func.max(schedule_ticks.c.tick_ms)).where(schedule_ticks.c.schedule == schedule)
            )
        value = latest.scalar()
        return None if value is None else int(value) / 1000
