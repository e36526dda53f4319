"""A few asyncpg connections for the PostgreSQL queue's own statements.

Going through SQLAlchemy costs about half a millisecond of CPU per statement (connection checkout,
execution context, greenlet hops), several times the driver's own cost; a claim or an ack is one
statement, so the queue talks to asyncpg directly. The connections are opened through the app's
engine, so they carry its credentials and connect options, then taken out of its pool for good.
Statements sent to the business transaction (`send` inside `Database.transaction()`) still go through
that transaction's SQLAlchemy connection.
"""

from __future__ import annotations

import asyncio
import contextlib
import weakref
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from sqlalchemy.ext.asyncio import AsyncConnection

    from tidings.sql import Database

__all__ = ["DriverConnections", "driver_connections_for", "is_connection_lost"]

#: At most this many driver connections per database and process.
POOL_SIZE = 4
#: A queue table churns: between two vacuums its indexes still point at every row deleted since.
#: A bitmap scan visits the heap page of each of those rows on every claim, every time (several
#: milliseconds of server CPU per claim after a 20,000-message drain); a plain index scan marks them
#: dead the first time and skips them from then on. The planner picks bitmap scans when the table's
#: statistics are from when it was small, which is usual for a queue, so these connections use none.
_PLAIN_INDEX_SCANS = "SET enable_bitmapscan = off"


def is_connection_lost(exc: BaseException) -> bool:
    """True when `exc` means the connection is gone (so a retry on a fresh one may succeed)."""
    if isinstance(exc, OSError | ConnectionError):
        return True
    try:
        from asyncpg import exceptions
    except ImportError:  # pragma: no cover - the PostgreSQL queue is only built with asyncpg
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


class _Link:
    __slots__ = ("driver", "owner")

    def __init__(self, owner: AsyncConnection, driver: Any) -> None:
        self.owner = owner
        self.driver = driver


class DriverConnections:
    """A small pool of asyncpg connections of one database, shared by its channels in this process."""

    def __init__(self, database: Database, size: int = POOL_SIZE) -> None:
        self._database = database
        self._idle: list[_Link] = []
        self._slots = asyncio.Semaphore(size)
        self.users = 0

    async def fetch(self, query: str, *arguments: Any) -> list[Any]:
        """Run one statement in autocommit and return its rows."""
        return await self._run("fetch", query, arguments)  # type: ignore[no-any-return]

    async def fetchrow(self, query: str, *arguments: Any) -> Any:
        return await self._run("fetchrow", query, arguments)

    async def execute(self, query: str, *arguments: Any) -> None:
        await self._run("execute", query, arguments)

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

    async def _settle(self, link: _Link, exc: BaseException) -> None:
        # A server-side error (bad SQL, constraint) leaves the connection usable; anything else
        # (cancelled mid-statement, connection lost) may not.
        if _is_server_error(exc) and not link.driver.is_closed():
            self._idle.append(link)
            return
        await _discard(link)
        if is_connection_lost(exc):
            # The server restarted or dropped us: the idle connections are most likely dead too,
            # and a retry must not pick one of them.
            await self.close()

    async def _take(self) -> _Link:
        while self._idle:
            link = self._idle.pop()
            if not link.driver.is_closed():
                return link
            await _discard(link)
        owner = await self._database.engine.connect()
        try:
            raw = await owner.get_raw_connection()
            driver = raw.driver_connection  # read before detaching: detached proxies forget it
            raw.detach()
            assert driver is not None
            await driver.execute(_PLAIN_INDEX_SCANS)
        except BaseException:
            await owner.close()
            raise
        return _Link(owner, driver)

    async def close(self) -> None:
        idle, self._idle = self._idle, []
        for link in idle:
            await _discard(link)


def _is_server_error(exc: BaseException) -> bool:
    try:
        from asyncpg import exceptions
    except ImportError:  # pragma: no cover
        return False
    return isinstance(exc, exceptions.PostgresError) and not is_connection_lost(exc)


async def _discard(link: _Link) -> None:
    link.driver.terminate()
    with contextlib.suppress(Exception):
        await link.owner.close()


_pools: weakref.WeakKeyDictionary[Database, DriverConnections] = weakref.WeakKeyDictionary()


def driver_connections_for(database: Database) -> DriverConnections:
    """The driver connections of `database` in this process (created on first use)."""
    found = _pools.get(database)
    if found is None:
        found = _pools[database] = DriverConnections(database)
    return found
