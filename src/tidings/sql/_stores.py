"""Dead letters, deduplication records and schedule ticks, kept in the app's database.

Their tables are part of tidings' schema (`_schema`, created by `tidings db init`). The stores speak plain
SQL through `Database.fetch` and `Database.execute`: straight to asyncpg on PostgreSQL, through the
engine elsewhere. The deduplication store writes through the open transaction when there is one, so
its record commits with the handler's effects.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable, Sequence
from typing import Any, Generic, TypeVar, final

import msgspec

from tidings.dead_letter import EVERY_DEAD_LETTER, DeadLetter, DeadLetterFilter
from tidings.sql._database import Database
from tidings.sql._imported import is_integrity_error
from tidings.sql._scope import current_scope

__all__ = ["SqlDeadLetterStore", "SqlDeduplicationStore", "SqlScheduleLock"]

_encode_headers = msgspec.json.Encoder().encode
_decode_headers = msgspec.json.Decoder(dict[str, str]).decode

#: The columns of `tidings_dead_letters`, in the order of `DeadLetter`'s fields as read back.
_LETTER_COLUMNS = (
    "id, message_id, endpoint, channel, reason, exception_type, exception_message, traceback, "
    "headers, body, attempts, first_failed_at, last_failed_at"
)
_ADD_LETTER = (
    f"INSERT INTO tidings_dead_letters ({_LETTER_COLUMNS}) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)"
)
_SELECT_LETTERS = f"SELECT {_LETTER_COLUMNS} FROM tidings_dead_letters"


def _marks(count: int) -> str:
    return ", ".join(["?"] * count)


@final
class SqlDeadLetterStore:
    """Dead letters in `tidings_dead_letters`."""

    def __init__(self, database: Database) -> None:
        self.database = database

    async def add(self, letter: DeadLetter) -> None:
        await self.database.execute(
            _ADD_LETTER,
            letter.id,
            letter.message_id,
            letter.endpoint,
            letter.channel,
            letter.reason,
            letter.exception_type,
            letter.exception_message,
            letter.traceback,
            _encode_headers(letter.headers).decode(),
            letter.body,
            letter.attempts,
            letter.first_failed_at,
            letter.last_failed_at,
        )

    @staticmethod
    def _where(where: DeadLetterFilter) -> tuple[str, list[Any]]:
        """The filter's WHERE clause (empty when it takes everything) and its parameters."""
        conditions: list[str] = []
        arguments: list[Any] = []
        if where.endpoint is not None:
            conditions.append("endpoint = ?")
            arguments.append(where.endpoint)
        if where.channel is not None:
            conditions.append("channel = ?")
            arguments.append(where.channel)
        if where.exception_type is not None:
            conditions.append("(exception_type = ? OR exception_type LIKE ?)")
            arguments += [where.exception_type, f"%.{where.exception_type}"]
        if where.since is not None:
            conditions.append("last_failed_at >= ?")
            arguments.append(where.since)
        if where.until is not None:
            conditions.append("last_failed_at <= ?")
            arguments.append(where.until)
        if where.header is not None:
            # A cheap pre-filter in SQL; the exact header match is checked on each row.
            conditions.append("headers LIKE ?")
            arguments.append(f"%{where.header[1]}%")
        return (f" WHERE {' AND '.join(conditions)}" if conditions else ""), arguments

    async def list(
        self, where: DeadLetterFilter = EVERY_DEAD_LETTER, *, limit: int = 100, offset: int = 0
    ) -> list[DeadLetter]:
        clause, arguments = self._where(where)
        statement = f"{_SELECT_LETTERS}{clause} ORDER BY last_failed_at DESC, id DESC"
        if where.header is None:
            statement += " LIMIT ? OFFSET ?"
            arguments += [limit, offset]
        letters = [self._letter(row) for row in await self.database.fetch(statement, *arguments)]
        if where.header is not None:
            letters = [letter for letter in letters if where.matches(letter)][offset : offset + limit]
        return letters

    async def get(self, letter_id: str) -> DeadLetter | None:
        rows = await self.database.fetch(f"{_SELECT_LETTERS} WHERE id = ?", letter_id)
        return self._letter(rows[0]) if rows else None

    async def delete(self, letter_ids: Sequence[str]) -> int:
        if not letter_ids:
            return 0
        return await self.database.execute(
            f"DELETE FROM tidings_dead_letters WHERE id IN ({_marks(len(letter_ids))})", *letter_ids
        )

    async def count(self, where: DeadLetterFilter = EVERY_DEAD_LETTER) -> int:
        if where.header is not None:
            return len(await self.list(where, limit=2**31))
        clause, arguments = self._where(where)
        rows = await self.database.fetch(f"SELECT count(*) FROM tidings_dead_letters{clause}", *arguments)
        return int(rows[0][0])

    @staticmethod
    def _letter(row: Sequence[Any]) -> DeadLetter:
        return DeadLetter(
            id=row[0],
            message_id=row[1],
            endpoint=row[2],
            channel=row[3],
            reason=row[4],
            exception_type=row[5],
            exception_message=row[6],
            traceback=row[7],
            headers=_decode_headers(row[8]),
            body=bytes(row[9]),
            attempts=row[10],
            first_failed_at=row[11],
            last_failed_at=row[12],
        )


# Outside a transaction, PostgreSQL lookups and records of messages handled at the same time go to
# asyncpg as one statement each: SQLAlchemy's per-statement cost and
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
    consumer runs at once share it); calls made while it is on the wire form the next one. A call
    nobody joined leaves at once: a message handled on its own waits for no other.
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
            # The tasks ready when this batch began have had their turn by now; if some joined,
            # others started with them may still be on their way.
            gathered = len(self._waiting)
            while gathered > 1:
                await asyncio.sleep(0)
                if gathered == len(self._waiting):
                    break
                gathered = len(self._waiting)
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


_FOUND = "SELECT 1 FROM tidings_deduplication WHERE tracking = ? AND message_key = ?"
_RECORD = "INSERT INTO tidings_deduplication (tracking, message_key, handled_at) VALUES (?, ?, ?)"
_PURGE = "DELETE FROM tidings_deduplication WHERE handled_at < ?"


@final
class SqlDeduplicationStore:
    """Deduplication records in `tidings_deduplication`, joining the handler's transaction."""

    def __init__(self, database: Database) -> None:
        self.database = database
        self._found_together = _Coalescing(self._found_batch)
        self._record_together = _Coalescing(self._record_batch)

    async def contains(self, tracking: str, key: str) -> bool:
        if self.database.by_driver and current_scope(self.database) is None:
            return await self._found_together((tracking, key))
        return bool(await self.database.fetch(_FOUND, tracking, key, join=True))

    async def add(self, tracking: str, key: str, handled_at: float) -> None:
        if current_scope(self.database) is not None:
            # A concurrent duplicate's insert waits on this row, then fails on the primary key and
            # rolls its transaction back: its retry finds the record and skips.
            await self.database.execute(_RECORD, tracking, key, handled_at, join=True)
        elif self.database.by_driver:
            await self._record_together((tracking, key, handled_at))
        else:
            try:
                await self.database.execute(_RECORD, tracking, key, handled_at)
            except Exception as exc:
                if not is_integrity_error(exc):
                    raise
                # A concurrent copy was handled and recorded first: the record stands.

    async def _found_batch(self, slots: list[tuple[str, str]]) -> list[bool]:
        rows = await self.database.driver_connections.fetch(
            _PG_FOUND, [t for t, _ in slots], [k for _, k in slots]
        )
        found = {(row[0], row[1]) for row in rows}
        return [slot in found for slot in slots]

    async def _record_batch(self, records: list[tuple[str, str, float]]) -> list[None]:
        trackings, keys, times = zip(*records, strict=True)
        await self.database.driver_connections.execute(_PG_ADD, list(trackings), list(keys), list(times))
        return [None] * len(records)

    async def purge(self, older_than: float) -> int:
        return await self.database.execute(
            "DELETE FROM tidings_deduplication WHERE handled_at < ?", older_than
        )


@final
class SqlScheduleLock:
    """Schedule ticks claimed in `tidings_schedule_ticks`: one worker wins each tick."""

    def __init__(self, database: Database, clock_now: Any) -> None:
        self.database = database
        self._now = clock_now

    async def claim(self, schedule: str, tick: float) -> bool:
        try:
            await self.database.execute(
                "INSERT INTO tidings_schedule_ticks (schedule, tick_ms, claimed_at) VALUES (?, ?, ?)",
                schedule,
                round(tick * 1000),
                self._now(),
            )
        except Exception as exc:
            if is_integrity_error(exc):
                return False
            raise
        return True

    async def last_tick(self, schedule: str) -> float | None:
        rows = await self.database.fetch(
            "SELECT max(tick_ms) FROM tidings_schedule_ticks WHERE schedule = ?", schedule
        )
        value = rows[0][0]
        return None if value is None else int(value) / 1000
