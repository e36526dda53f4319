"""The queue operations of `SqlChannel`, one class per database family.

Hot paths are hand-written SQL, one statement per batch (a multi-row insert, a batch claim, a batch
delete), prepared once by the driver and never compiled per call: on PostgreSQL straight on asyncpg
(see `tidings.sql._driver`), elsewhere through SQLAlchemy's `exec_driver_sql`.
"""

from __future__ import annotations

import functools
import operator
import sqlite3
from abc import ABC, abstractmethod
from collections.abc import Sequence
from itertools import islice
from typing import TYPE_CHECKING, Any

from tidings.channels.sql._wakeup import notify_channel
from tidings.exceptions import ConfigurationError
from tidings.sql._driver import is_connection_lost
from tidings.sql._imported import is_instance

if TYPE_CHECKING:
    from sqlalchemy.ext.asyncio import AsyncConnection

    from tidings.sql import Database

__all__ = ["ClaimedRow", "NewRow", "Queue", "queue_for"]

#: A message to store: message id, priority, visible at, expires at, headers as JSON, body.
NewRow = tuple[str, int, float, float | None, str, bytes]
#: A claimed message: row id, priority, headers as JSON, body, delivery count (a driver row).
ClaimedRow = Sequence[Any]

_TABLE = "tidings_messages"
#: Due, and not under a lease that still runs (placeholders: channel, now, now).
_RECEIVABLE = "channel = {p} AND visible_at <= {p} AND (leased_until IS NULL OR leased_until <= {p})"
_COLUMNS = "channel, message_id, priority, visible_at, expires_at, headers, body, delivery_count, created_at"
# Leased rows are among the due ones (visible_at <= now): few, the ones in flight.
_NEXT_DUE = (
    f"SELECT (SELECT min(visible_at) FROM {_TABLE} WHERE channel = ? AND visible_at > ?), "
    f"(SELECT min(leased_until) FROM {_TABLE} WHERE channel = ? AND visible_at <= ? AND leased_until > ?)"
)


_BY_ID = operator.itemgetter(0)
_BY_PRIORITY = operator.itemgetter(1)


def _put_in_delivery_order(rows: list[ClaimedRow]) -> None:
    """Sort a claimed batch (RETURNING has no order): priority first, then oldest first.

    Two stable sorts on C key functions cost less than one sort on a Python key, and far less than
    sorting on the server.
    """
    rows.sort(key=_BY_ID)
    rows.sort(key=_BY_PRIORITY, reverse=True)


def _earliest(times: Sequence[Any]) -> float | None:
    known = [float(time) for time in times if time is not None]
    return min(known) if known else None


def _chunks(items: Sequence[Any], size: int) -> list[Sequence[Any]]:
    if len(items) <= size:
        return [items]
    iterator = iter(items)
    return [list(chunk) for chunk in iter(lambda: list(islice(iterator, size)), [])]


class Queue(ABC):
    """Stores and claims one database's messages; every method is one batch."""

    #: The most rows one statement carries (bounded by the drivers' parameter limits).
    rows_per_statement = 500

    def __init__(self, database: Database) -> None:
        self.database = database

    @abstractmethod
    async def insert(
        self, connection: AsyncConnection, channel: str, rows: Sequence[NewRow], now: float
    ) -> None:
        """Write rows through `connection`, inside whatever transaction it has open."""

    async def send(self, channel: str, rows: Sequence[NewRow], now: float) -> None:
        """Write rows in a short transaction of their own."""
        async with self.database.writing() as connection:
            await self.insert(connection, channel, rows, now)

    @abstractmethod
    async def claim(
        self, channel: str, now: float, lease_until: float, token: int, limit: int
    ) -> list[ClaimedRow]:
        """Lease up to `limit` due rows marked with `token`, in delivery order (highest priority
        first, then the oldest by id)."""

    @abstractmethod
    async def delete(self, ids: Sequence[int], tokens: Sequence[int]) -> None:
        """Delete rows still under one of `tokens`."""

    @abstractmethod
    async def release(
        self, channel: str, ids: Sequence[int], tokens: Sequence[int], visible_at: float
    ) -> None:
        """End the lease of rows still under one of `tokens`; receivable again from `visible_at`."""

    @abstractmethod
    async def extend(self, ids: Sequence[int], tokens: Sequence[int], until: float) -> None:
        """Keep rows still under one of `tokens` leased until `until`."""

    async def purge(self, channel: str) -> None:
        await self.database.execute(f"DELETE FROM {_TABLE} WHERE channel = ?", channel)

    async def depth(self, channel: str) -> int:
        rows = await self.database.fetch(f"SELECT count(*) FROM {_TABLE} WHERE channel = ?", channel)
        return int(rows[0][0])

    async def next_due(self, channel: str, now: float) -> float | None:
        """When the channel's next message becomes receivable: a delay or a lease running out."""
        rows = await self.database.fetch(_NEXT_DUE, channel, now, channel, now, now)
        return _earliest(rows[0])

    def is_connection_lost(self, exc: BaseException) -> bool:
        """True when `exc` means the connection dropped, so that one retry on a fresh one may work."""
        if isinstance(exc, OSError):
            return True
        invalidated = getattr(exc, "connection_invalidated", False)
        return is_instance(exc, "sqlalchemy.exc", "DBAPIError") and bool(invalidated)


class PostgresQueue(Queue):
    """PostgreSQL: array parameters, one prepared statement per operation, straight on asyncpg.

    Every operation is a single statement run in autocommit, which PostgreSQL makes atomic, on the
    database's driver connections (see `tidings.sql._driver`). Sends and releases also `pg_notify`
    the channel, delivered to listeners when the statement commits.
    """

    rows_per_statement = 5000

    _INSERT = f"""
        WITH inserted AS (
            INSERT INTO {_TABLE} ({_COLUMNS})
            SELECT $1, m.message_id, m.priority, m.visible_at, m.expires_at, m.headers, m.body, 0, $2
            FROM unnest($3::text[], $4::int[], $5::float8[], $6::float8[], $7::text[], $8::bytea[])
                AS m(message_id, priority, visible_at, expires_at, headers, body)
        )
        SELECT pg_notify($9, '')
    """
    # Claims, releases, lease extensions and (unless acks are durable) acks commit without waiting
    # for the WAL flush. If the server crashes before the flush, the rows are simply receivable again,
    # as when a lease runs out: at-least-once holds, and deduplication absorbs the repeat.
    _RELAXED = "relaxed AS (SELECT set_config('synchronous_commit', 'off', true))"
    # The rows are locked, then updated through their ctid (a TID scan) rather than joined back on
    # id: 2-3x cheaper. A row locked by this statement cannot move before it commits.
    _CLAIM = f"""
        WITH {_RELAXED}
        UPDATE {_TABLE} AS m
        SET leased_until = $4, lease_token = $5, delivery_count = m.delivery_count + 1
        FROM relaxed
        WHERE m.ctid = ANY(ARRAY(
            SELECT ctid FROM {_TABLE}
            WHERE channel = $1 AND visible_at <= $2
                AND (leased_until IS NULL OR leased_until <= $2)
            ORDER BY priority DESC, visible_at, id
            LIMIT $3
            FOR UPDATE SKIP LOCKED
        ))
        RETURNING m.id, m.priority, m.headers, m.body, m.delivery_count
    """
    _DELETE = f"DELETE FROM {_TABLE} WHERE id = ANY($1::bigint[]) AND lease_token = ANY($2::bigint[])"
    _DELETE_RELAXED = f"""
        WITH {_RELAXED}
        DELETE FROM {_TABLE} AS m USING relaxed
        WHERE m.id = ANY($1::bigint[]) AND m.lease_token = ANY($2::bigint[])
    """
    _RELEASE = f"""
        WITH {_RELAXED},
        released AS (
            UPDATE {_TABLE} AS m SET visible_at = $3, leased_until = NULL, lease_token = NULL
            FROM relaxed
            WHERE m.id = ANY($1::bigint[]) AND m.lease_token = ANY($2::bigint[])
        )
        SELECT pg_notify($4, '')
    """
    _EXTEND = f"""
        WITH {_RELAXED}
        UPDATE {_TABLE} AS m SET leased_until = $3
        FROM relaxed
        WHERE m.id = ANY($1::bigint[]) AND m.lease_token = ANY($2::bigint[])
    """

    def __init__(self, database: Database, *, durable_acks: bool = False) -> None:
        super().__init__(database)
        self._delete = self._DELETE if durable_acks else self._DELETE_RELAXED
        self._drivers = database.driver_connections

    def is_connection_lost(self, exc: BaseException) -> bool:
        return super().is_connection_lost(exc) or is_connection_lost(exc)

    def _insert_arguments(self, channel: str, rows: Sequence[NewRow], now: float) -> tuple[Any, ...]:
        columns = [list(column) for column in zip(*rows, strict=True)]
        return (channel, now, *columns, notify_channel(channel))

    async def insert(
        self, connection: AsyncConnection, channel: str, rows: Sequence[NewRow], now: float
    ) -> None:
        for chunk in _chunks(rows, self.rows_per_statement):
            await connection.exec_driver_sql(self._INSERT, self._insert_arguments(channel, chunk, now))

    async def send(self, channel: str, rows: Sequence[NewRow], now: float) -> None:
        if len(rows) <= self.rows_per_statement:
            await self._drivers.execute(self._INSERT, *self._insert_arguments(channel, rows, now))
            return
        async with self._drivers.acquire() as driver, driver.transaction():
            for chunk in _chunks(rows, self.rows_per_statement):
                await driver.execute(self._INSERT, *self._insert_arguments(channel, chunk, now))

    async def claim(
        self, channel: str, now: float, lease_until: float, token: int, limit: int
    ) -> list[ClaimedRow]:
        rows = await self._drivers.fetch(self._CLAIM, channel, now, limit, lease_until, token)
        _put_in_delivery_order(rows)
        return rows

    async def delete(self, ids: Sequence[int], tokens: Sequence[int]) -> None:
        await self._drivers.execute(self._delete, ids, tokens)

    async def release(
        self, channel: str, ids: Sequence[int], tokens: Sequence[int], visible_at: float
    ) -> None:
        await self._drivers.execute(self._RELEASE, ids, tokens, visible_at, notify_channel(channel))

    async def extend(self, ids: Sequence[int], tokens: Sequence[int], until: float) -> None:
        await self._drivers.execute(self._EXTEND, ids, tokens, until)


@functools.lru_cache(maxsize=256)
def _placeholders(marker: str, count: int) -> str:
    return ", ".join([marker] * count)


@functools.lru_cache(maxsize=256)
def _insert_sql(marker: str, count: int) -> str:
    row = f"({marker}, {marker}, {marker}, {marker}, {marker}, {marker}, {marker}, 0, {marker})"
    return f"INSERT INTO {_TABLE} ({_COLUMNS}) VALUES " + ", ".join([row] * count)


class _ListQueue(Queue):
    """Databases without array parameters: lists of placeholders, SQL text cached per batch size."""

    marker = "?"

    async def insert(
        self, connection: AsyncConnection, channel: str, rows: Sequence[NewRow], now: float
    ) -> None:
        for chunk in _chunks(rows, self.rows_per_statement):
            parameters = [value for row in chunk for value in (channel, *row, now)]
            await connection.exec_driver_sql(_insert_sql(self.marker, len(chunk)), tuple(parameters))

    def _by_id(
        self, statement: str, ids: Sequence[int], tokens: Sequence[int]
    ) -> list[tuple[str, tuple[Any, ...]]]:
        """`statement` ending in `id IN ({ids}) AND lease_token IN ({tokens})`, per chunk of ids."""
        token_marks = _placeholders(self.marker, len(tokens))
        return [
            (
                statement.format(ids=_placeholders(self.marker, len(chunk)), tokens=token_marks),
                (*chunk, *tokens),
            )
            for chunk in _chunks(ids, self.rows_per_statement)
        ]

    async def delete(self, ids: Sequence[int], tokens: Sequence[int]) -> None:
        statements = self._by_id(
            f"DELETE FROM {_TABLE} WHERE id IN ({{ids}}) AND lease_token IN ({{tokens}})", ids, tokens
        )
        async with self.database.writing() as connection:
            for sql, parameters in statements:
                await connection.exec_driver_sql(sql, parameters)

    async def release(
        self, channel: str, ids: Sequence[int], tokens: Sequence[int], visible_at: float
    ) -> None:
        m = self.marker
        statements = self._by_id(
            f"UPDATE {_TABLE} SET visible_at = {m}, leased_until = NULL, lease_token = NULL "
            "WHERE id IN ({ids}) AND lease_token IN ({tokens})",
            ids,
            tokens,
        )
        async with self.database.writing() as connection:
            for sql, parameters in statements:
                await connection.exec_driver_sql(sql, (visible_at, *parameters))

    async def extend(self, ids: Sequence[int], tokens: Sequence[int], until: float) -> None:
        statements = self._by_id(
            f"UPDATE {_TABLE} SET leased_until = {self.marker} "
            "WHERE id IN ({ids}) AND lease_token IN ({tokens})",
            ids,
            tokens,
        )
        async with self.database.writing() as connection:
            for sql, parameters in statements:
                await connection.exec_driver_sql(sql, (until, *parameters))


class MySqlQueue(_ListQueue):
    """MySQL 8 / MariaDB 10.6+: the claim locks due rows with SKIP LOCKED, then leases them."""

    marker = "%s"

    _SELECT = f"""
        SELECT id, priority, headers, body, delivery_count FROM {_TABLE}
        WHERE {_RECEIVABLE.format(p="%s")}
        ORDER BY priority DESC, visible_at, id
        LIMIT %s
        FOR UPDATE SKIP LOCKED
    """

    async def claim(
        self, channel: str, now: float, lease_until: float, token: int, limit: int
    ) -> list[ClaimedRow]:
        async with self.database.writing() as connection:
            result = await connection.exec_driver_sql(self._SELECT, (channel, now, now, limit))
            rows: list[Any] = list(result.all())
            if not rows:
                return []
            ids = [row[0] for row in rows]
            await connection.exec_driver_sql(
                f"UPDATE {_TABLE} SET leased_until = %s, lease_token = %s, "
                f"delivery_count = delivery_count + 1 WHERE id IN ({_placeholders('%s', len(ids))})",
                (lease_until, token, *ids),
            )
        return [(row[0], row[1], row[2], row[3], row[4] + 1) for row in rows]


class SqliteQueue(_ListQueue):
    """SQLite: one writer at a time (see `Database.writing`), so a plain UPDATE ... RETURNING claims."""

    _CLAIM = f"""
        UPDATE {_TABLE}
        SET leased_until = ?, lease_token = ?, delivery_count = delivery_count + 1
        WHERE id IN (
            SELECT id FROM {_TABLE}
            WHERE {_RECEIVABLE.format(p="?")}
            ORDER BY priority DESC, visible_at, id
            LIMIT ?
        )
        RETURNING id, priority, headers, body, delivery_count
    """

    async def claim(
        self, channel: str, now: float, lease_until: float, token: int, limit: int
    ) -> list[ClaimedRow]:
        async with self.database.writing() as connection:
            result = await connection.exec_driver_sql(
                self._CLAIM, (lease_until, token, channel, now, now, limit)
            )
            rows: list[ClaimedRow] = list(result.all())
        _put_in_delivery_order(rows)
        return rows


def queue_for(database: Database, *, durable_acks: bool = False) -> Queue:
    """The queue operations for `database`; raises `ConfigurationError` where the server cannot queue."""
    if database.backend == "postgresql":
        if database.driver_name != "asyncpg":
            raise ConfigurationError(
                f"SqlChannel on PostgreSQL needs the asyncpg driver: use postgresql+asyncpg:// "
                f"instead of {database.safe_url}"
            )
        return PostgresQueue(database, durable_acks=durable_acks)
    if database.backend == "mysql":
        version = database.server_version or ()
        minimum = (10, 6) if database.is_mariadb else (8, 0, 1)
        if version and version < minimum:
            server = "MariaDB" if database.is_mariadb else "MySQL"
            raise ConfigurationError(
                f"SqlChannel needs FOR UPDATE SKIP LOCKED, which {server} has from "
                f"{'.'.join(map(str, minimum))}; {database.safe_url} runs "
                f"{'.'.join(map(str, version))}"
            )
        return MySqlQueue(database)
    if sqlite3.sqlite_version_info < (3, 35):
        raise ConfigurationError(
            f"SqlChannel needs SQLite 3.35 or newer (for RETURNING); this Python has {sqlite3.sqlite_version}"
        )
    return SqliteQueue(database)
