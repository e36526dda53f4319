"""A few asyncpg connections for tidings' own statements on PostgreSQL.

Going through SQLAlchemy costs about half a millisecond of CPU per statement (connection checkout,
execution context, greenlet hops), several times the driver's own cost; a claim, an ack or a batch of
deduplication records is one statement, so on PostgreSQL tidings talks to asyncpg directly. Without
SQLAlchemy on that path, a worker whose handlers never ask for a session never imports it.

Connections are opened from the database URL with the arguments SQLAlchemy's asyncpg dialect would
use (plus the app's `connect_args`), so they reach the same server as the same user as the app's
engine. A database given as an engine, or a URL whose query composes several hosts, opens them through
that engine instead and takes them out of its pool for good. Statements sent to the business
transaction (`send` inside `Database.transaction()`) go through that transaction's SQLAlchemy connection.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from sqlalchemy.ext.asyncio import AsyncConnection

    from tidings.sql._database import Database

__all__ = ["DriverConnections", "DriverLink", "is_connection_lost", "open_link", "rows_touched"]

#: At most this many driver connections per database and process.
POOL_SIZE = 4
#: tidings' tables churn, and their statistics are usually stale: a queue or a deduplication table
#: was analyzed when it was small, or never. Every statement tidings runs here is meant to be served by
#: an index, so these connections plan no sequential and no bitmap scans:
#: - a plan made while a table looked small, then cached with the prepared statement, goes on
#:   scanning the whole table as it grows (a deduplication lookup analyzed empty took 3 ms per batch
#:   after 20,000 records, and a drain ran ten times slower);
#: - between two vacuums a queue's indexes still point at every row deleted since; a bitmap scan
#:   visits the heap page of each of them on every claim, where a plain index scan marks them dead
#:   the first time and skips them from then on.
#: A statement no index can serve still gets its sequential scan.
_PLAIN_INDEX_SCANS = "SET enable_seqscan = off; SET enable_bitmapscan = off"


def is_connection_lost(exc: BaseException) -> bool:
    """True when `exc` means the connection is gone (so a retry on a fresh one may succeed)."""
    if isinstance(exc, OSError | ConnectionError):
        return True
    try:
        from asyncpg import exceptions
    except ImportError:  # pragma: no cover - driver connections are only opened with asyncpg
        return False
    return isinstance(
        exc,
        exceptions.ConnectionDoesNotExistError
        | exceptions.PostgresConnectionError
        | exceptions.InterfaceError
        # A connection the server terminated while it sat idle can fail this way on next use.
        | exceptions.InternalClientError
        | exceptions.AdminShutdownError
        | exceptions.CannotConnectNowError,
    )


def rows_touched(status: str) -> int:
    """The row count of an asyncpg command status such as `DELETE 3` or `INSERT 0 1`."""
    count = status.rpartition(" ")[2]
    return int(count) if count.isdigit() else 0


class DriverLink:
    """One asyncpg connection, and the engine connection it was taken from, if it came from one."""

    __slots__ = ("driver", "owner")

    def __init__(self, driver: Any, owner: AsyncConnection | None = None) -> None:
        self.driver = driver
        self.owner = owner

    async def discard(self) -> None:
        self.driver.terminate()
        if self.owner is not None:
            with contextlib.suppress(Exception):
                await self.owner.close()


async def open_link(database: Database) -> DriverLink:
    """A new asyncpg connection to `database`, outside any pool."""
    arguments = database.asyncpg_arguments()
    if arguments is not None:
        import asyncpg

        return DriverLink(await asyncpg.connect(**arguments))
    owner = await database.engine.connect()
    try:
        raw = await owner.get_raw_connection()
        driver = raw.driver_connection  # read before detaching: detached proxies forget it
        raw.detach()
    except BaseException:
        await owner.close()
        raise
    return DriverLink(driver, owner)


class DriverConnections:
    """A small pool of asyncpg connections of one database, shared by its channels and stores."""

    def __init__(self, database: Database, size: int = POOL_SIZE) -> None:
        self._database = database
        self._idle: list[DriverLink] = []
        self._slots = asyncio.Semaphore(size)

    async def fetch(self, query: str, *arguments: Any) -> list[Any]:
        """Run one statement in autocommit and return its rows."""
        return await self._run("fetch", query, arguments)  # type: ignore[no-any-return]

    async def execute(self, query: str, *arguments: Any) -> str:
        """Run one statement in autocommit; returns its command status (see `rows_touched`)."""
        return await self._run("execute", query, arguments)  # type: ignore[no-any-return]

    async def _run(self, method: str, query: str, arguments: tuple[Any, ...]) -> Any:
        # The hot path of every queue operation: no context manager, no closure.
        async with self._slots:
            link = await self._take()
            try:
                result = await getattr(link.driver, method)(query, *arguments)
            except BaseException as exc:
                await self._settle(link, exc)
                raise
            self._idle.append(link)
            return result

    @asynccontextmanager
    async def acquire(self) -> AsyncIterator[Any]:
        """An `asyncpg.Connection` in autocommit, for several statements (e.g. a transaction)."""
        async with self._slots:
            link = await self._take()
            try:
                yield link.driver
            except BaseException as exc:
                await self._settle(link, exc)
                raise
            self._idle.append(link)

    async def _settle(self, link: DriverLink, exc: BaseException) -> None:
        # A server-side error (bad SQL, constraint) leaves the connection usable; anything else
        # (cancelled mid-statement, connection lost) may not.
        if _is_server_error(exc) and not link.driver.is_closed():
            self._idle.append(link)
            return
        await link.discard()
        if is_connection_lost(exc):
            # The server restarted or dropped us: the idle connections are most likely dead too,
            # and a retry must not pick one of them.
            await self.close()

    async def _take(self) -> DriverLink:
        while self._idle:
            link = self._idle.pop()
            if not link.driver.is_closed():
                return link
            await link.discard()
        link = await open_link(self._database)
        try:
            await link.driver.execute(_PLAIN_INDEX_SCANS)
        except BaseException:
            await link.discard()
            raise
        return link

    async def close(self) -> None:
        idle, self._idle = self._idle, []
        for link in idle:
            await link.discard()


def _is_server_error(exc: BaseException) -> bool:
    try:
        from asyncpg import exceptions
    except ImportError:  # pragma: no cover
        return False
    return isinstance(exc, exceptions.PostgresError) and not is_connection_lost(exc)
