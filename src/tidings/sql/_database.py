"""The app's database: its URL, tidings' tables, and transactions on one SQLAlchemy async engine.

SQLAlchemy is imported when something needs it: the engine (transactions, sessions, MySQL/MariaDB
and SQLite), the schema's DDL. On PostgreSQL with asyncpg, tidings' own statements go straight to the
driver (see `_driver`), so a worker whose handlers never ask for a session never loads SQLAlchemy.
"""

from __future__ import annotations

import asyncio
import functools
import importlib.util
from collections.abc import AsyncIterator, Mapping, Sequence
from contextlib import asynccontextmanager
from typing import TYPE_CHECKING, Any, Literal

from tidings.exceptions import ConfigurationError, DriverMissing, TidingsError
from tidings.sql._driver import DriverConnections, rows_touched
from tidings.sql._errors import DatabaseUnavailable, SchemaMissing, TransactionRolledBack
from tidings.sql._imported import is_engine, is_instance, is_sqlalchemy_url
from tidings.sql._scope import TransactionScope, _enter, _leave, current_scope
from tidings.sql._url import DatabaseUrl, parse_url

if TYPE_CHECKING:
    from sqlalchemy.engine import URL
    from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine, AsyncSession

__all__ = ["SCHEMA_VERSION", "Backend", "Database", "check_driver"]

#: The schema version this tidings writes and expects.
SCHEMA_VERSION = 1

#: The database families tidings supports.
Backend = Literal["postgresql", "mysql", "sqlite"]

_BACKENDS: dict[str, Backend] = {
    "postgresql": "postgresql",
    "mysql": "mysql",
    "mariadb": "mysql",
    "sqlite": "sqlite",
}
#: The async driver used when a URL names none (`postgresql://...`).
_DEFAULT_DRIVERS = {
    "postgresql": "asyncpg",
    "mysql": "aiomysql",
    "mariadb": "aiomysql",
    "sqlite": "aiosqlite",
}
#: Async drivers: (module to import, extra that installs it, how its SQL marks a parameter).
_DRIVERS = {
    "asyncpg": ("asyncpg", "postgres", "$"),
    "psycopg": ("psycopg", "postgres", "%s"),
    "aiomysql": ("aiomysql", "mysql", "%s"),
    "asyncmy": ("asyncmy", "mysql", "%s"),
    "aiosqlite": ("aiosqlite", "sqlite", "?"),
}
_KIND_NAMES = {"postgresql": "PostgreSQL", "mysql": "MySQL/MariaDB", "sqlite": "SQLite"}

#: How long `connect()` waits for the server before calling it unreachable.
CONNECT_TIMEOUT_SECONDS = 10.0


def _parse(url: object) -> DatabaseUrl:
    if isinstance(url, str):
        return parse_url(url)
    if is_sqlalchemy_url(url):
        return parse_url(url.render_as_string(hide_password=False))
    raise ConfigurationError(
        f"a database is a URL (e.g. 'postgresql+asyncpg://app@localhost/shop'), a SQLAlchemy URL or "
        f"AsyncEngine, or a tidings.sql.Database; got {url!r}"
    )


def _normalise(url: DatabaseUrl) -> DatabaseUrl:
    backend = url.backend_name
    if backend not in _BACKENDS:
        raise ConfigurationError(
            f"tidings supports PostgreSQL, MySQL/MariaDB and SQLite databases, not {backend!r} "
            f"({url.render(hide_password=True)})"
        )
    if url.driver_name is None:
        url = url.with_driver(_DEFAULT_DRIVERS[backend])
    if url.driver_name not in _DRIVERS:
        raise ConfigurationError(
            f"{url.render(hide_password=True)} names the driver {url.driver_name!r}, which is not "
            f"asyncio-capable; use {backend}+{_DEFAULT_DRIVERS[backend]}://..."
        )
    return url


def check_driver(url: object) -> DatabaseUrl:
    """The URL with its async driver filled in; raises `DriverMissing` if that driver is not installed."""
    parsed = _normalise(_parse(url))
    module, extra, _mark = _DRIVERS[parsed.driver_name or ""]
    if importlib.util.find_spec(module) is None:
        raise DriverMissing(f"The {_KIND_NAMES[_BACKENDS[parsed.backend_name]]} database", extra, module)
    return parsed


def _describe(exc: BaseException) -> str:
    cause: BaseException = exc
    original = getattr(exc, "orig", None) if is_instance(exc, "sqlalchemy.exc", "DBAPIError") else None
    if isinstance(original, BaseException):
        # Adapted drivers (asyncpg) wrap their own, more telling exception.
        cause = original.__cause__ or original
    text = str(cause).strip().splitlines()[0] if str(cause).strip() else ""
    return f"{type(cause).__name__}: {text}" if text else type(cause).__name__


def _is_memory(url: DatabaseUrl) -> bool:
    """True for an in-memory SQLite database, which lives in one connection only."""
    return url.database in (None, "", ":memory:") or "memory" in (url.query_value("mode") or "")


@functools.lru_cache(maxsize=512)
def _marked(statement: str, mark: str) -> str:
    if mark == "?":
        return statement
    pieces = statement.split("?")
    if mark == "$":
        return pieces[0] + "".join(f"${number}{piece}" for number, piece in enumerate(pieces[1:], 1))
    return mark.join(pieces)


class Database:
    """The app's database on SQLAlchemy 2 async: PostgreSQL (asyncpg), MySQL/MariaDB (aiomysql) or SQLite.

    Built from a URL (the engine is created on first use) or from an existing `AsyncEngine`. It keeps
    tidings' tables (see `create_schema`) and opens transactions that the code running inside them
    can join (see `transaction`).

    Engines created from a URL use READ COMMITTED on MySQL/MariaDB (PostgreSQL's default), so that
    queue claims lock only the rows they take; on SQLite they use WAL and one writer at a time.
    """

    def __init__(
        self, url: str | URL | AsyncEngine, *, engine_options: Mapping[str, Any] | None = None
    ) -> None:
        if is_engine(url):
            self._engine: AsyncEngine | None = url
            self._owns_engine = False
            self._url = _normalise(_parse(url.url))
            # Two Database objects wrapping one engine share its transactions.
            self.key = f"engine:{id(url)}"
        else:
            self._url = check_driver(url)
            self._engine = None
            self._owns_engine = True
            self.key = self._url.text
        self._engine_options = dict(engine_options or {})
        self.backend: Backend = _BACKENDS[self._url.backend_name]
        #: The async driver: asyncpg, psycopg, aiomysql, asyncmy or aiosqlite.
        self.driver_name: str = self._url.driver_name or ""
        #: The server's version, known after `connect()`.
        self.server_version: tuple[int, ...] | None = None
        #: True when a MySQL-family server turned out to be MariaDB.
        self.is_mariadb = False
        self._memory = self.backend == "sqlite" and _is_memory(self._url)
        #: True when tidings' own statements go straight to asyncpg (PostgreSQL), not through the engine.
        self.by_driver = self.backend == "postgresql" and self.driver_name == "asyncpg"
        self._mark = _DRIVERS[self.driver_name][2]
        self._driver_connections: DriverConnections | None = None
        self._internal: AsyncEngine | None = None
        self._autocommit: AsyncEngine | None = None
        self._read_only: AsyncEngine | None = None
        self._write_lock: asyncio.Lock | None = None
        self._connected = False

    def __repr__(self) -> str:
        return f"Database({self.safe_url!r})"

    @property
    def url(self) -> URL:
        """The URL as SQLAlchemy reads it (this imports SQLAlchemy)."""
        if self._engine is not None and not self._owns_engine:
            return self._engine.url
        from sqlalchemy.engine import make_url

        return make_url(self._url.text)

    @property
    def dialect_name(self) -> str:
        """The URL's backend as written: postgresql, mysql, mariadb or sqlite."""
        return self._url.backend_name

    @property
    def safe_url(self) -> str:
        """The URL with its password hidden, for messages and logs."""
        return self._url.render(hide_password=True)

    @property
    def engine(self) -> AsyncEngine:
        """The SQLAlchemy engine (created on first use when the database was given as a URL)."""
        if self._engine is None:
            self._engine = self._create_engine()
        elif self.backend == "sqlite":
            from tidings.sql import _sqlite

            _sqlite.configure(self._engine)
        return self._engine

    def _create_engine(self) -> AsyncEngine:
        from sqlalchemy.ext.asyncio import create_async_engine

        from tidings.sql import _sqlite

        options: dict[str, Any] = {}
        connect_args: dict[str, Any] = {}
        if self.backend == "postgresql" and self.driver_name == "asyncpg":
            connect_args["timeout"] = CONNECT_TIMEOUT_SECONDS
        elif self.backend == "mysql":
            options["isolation_level"] = "READ COMMITTED"
            options["pool_recycle"] = 3600
        elif self.backend == "sqlite":
            connect_args["timeout"] = _sqlite.BUSY_TIMEOUT_SECONDS
            if self._memory:
                from sqlalchemy.pool import StaticPool

                options["poolclass"] = StaticPool
        user_options = dict(self._engine_options)
        connect_args.update(user_options.pop("connect_args", {}))
        options.update(user_options)
        engine = create_async_engine(self._url.text, connect_args=connect_args, **options)
        if self.backend == "sqlite":
            _sqlite.configure(engine)
        return engine

    def asyncpg_arguments(self) -> dict[str, Any] | None:
        """What `asyncpg.connect` takes to reach this database as the app's engine does; None when only
        the engine can open its connections (a database given as an engine, several hosts in the URL,
        or a custom `async_creator_fn`)."""
        if not self._owns_engine:
            return None
        connect_args = {"timeout": CONNECT_TIMEOUT_SECONDS, **self._engine_options.get("connect_args", {})}
        return self._url.asyncpg_arguments(connect_args)

    @property
    def driver_connections(self) -> DriverConnections:
        """asyncpg connections for tidings' own statements, outside the engine's pool (PostgreSQL)."""
        if not self.by_driver:
            raise TidingsError(f"{self.safe_url} is not a PostgreSQL database reached through asyncpg")
        if self._driver_connections is None:
            self._driver_connections = DriverConnections(self)
        return self._driver_connections

    # Engines for tidings' own short transactions; they share the app engine's pool.

    @property
    def _internal_engine(self) -> AsyncEngine:
        if self._internal is None:
            engine = self.engine
            if self.backend == "mysql" and not self._owns_engine:
                engine = engine.execution_options(isolation_level="READ COMMITTED")
            self._internal = engine
        return self._internal

    @property
    def _autocommit_engine(self) -> AsyncEngine:
        if self._autocommit is None:
            self._autocommit = self.engine.execution_options(isolation_level="AUTOCOMMIT")
        return self._autocommit

    @property
    def _read_only_engine(self) -> AsyncEngine:
        if self._read_only is None:
            from tidings.sql._sqlite import READ_ONLY

            self._read_only = self.engine.execution_options(**{READ_ONLY: True})
        return self._read_only

    def _lock(self) -> asyncio.Lock:
        if self._write_lock is None:
            self._write_lock = asyncio.Lock()
        return self._write_lock

    # Life cycle

    async def connect(self) -> None:
        """Check that the database answers and that tidings' schema is in place (once).

        Raises `DatabaseUnavailable` naming the URL (without password) and the cause, or
        `SchemaMissing` saying how to create or upgrade the schema.
        """
        if self._connected:
            return
        try:
            async with asyncio.timeout(CONNECT_TIMEOUT_SECONDS + 5):
                if self.by_driver:
                    version = await self._installed_version_by_driver()
                else:
                    version = await self._installed_version_by_engine()
        except TidingsError:
            raise
        except Exception as exc:
            raise DatabaseUnavailable(
                f"cannot reach the database {self.safe_url}: {_describe(exc)}", url=self.safe_url
            ) from exc
        if version is None:
            raise SchemaMissing(
                f"the tidings tables do not exist in {self.safe_url}; create them with "
                f"`tidings db init <module:app>` (or print the SQL for a DBA with `tidings db sql`)"
            )
        if version < SCHEMA_VERSION:
            raise SchemaMissing(
                f"the tidings schema in {self.safe_url} is at version {version}, this tidings needs "
                f"{SCHEMA_VERSION}; upgrade it with `tidings db init <module:app>`"
            )
        if version > SCHEMA_VERSION:
            raise SchemaMissing(
                f"the tidings schema in {self.safe_url} is at version {version}, newer than this "
                f"tidings understands ({SCHEMA_VERSION}); upgrade tidings"
            )
        self._connected = True

    async def _installed_version_by_driver(self) -> int | None:
        from asyncpg.exceptions import UndefinedTableError

        async with self.driver_connections.acquire() as driver:
            server = driver.get_server_version()
            self.server_version = (server.major, server.minor)
            try:
                version = await driver.fetchval("SELECT max(version) FROM tidings_schema_version")
            except UndefinedTableError:
                return None
        return None if version is None else int(version)

    async def _installed_version_by_engine(self) -> int | None:
        from tidings.sql import _schema

        async with self.reading() as connection:
            version = await connection.run_sync(_schema.installed_version)
            dialect = connection.dialect
            self.server_version = tuple(
                part for part in dialect.server_version_info or () if isinstance(part, int)
            )
            self.is_mariadb = bool(getattr(dialect, "is_mariadb", False))
        return version

    async def close(self) -> None:
        """Close this object's connections (and the engine, if it created it); it can connect again."""
        self._connected = False
        self._internal = self._autocommit = self._read_only = None
        self._write_lock = None
        if self._driver_connections is not None:
            await self._driver_connections.close()
        if self._owns_engine and self._engine is not None:
            engine, self._engine = self._engine, None
            await engine.dispose()

    async def create_schema(self) -> int:
        """Create tidings' tables, or upgrade them; safe to run again. Returns the schema version."""
        from sqlalchemy.exc import DBAPIError

        from tidings.sql import _schema

        try:
            async with self.writing() as connection:
                return await connection.run_sync(_schema.create_or_upgrade)
        except DBAPIError:
            # Another process created the tables at the same moment; the second look finds them.
            async with self.writing() as connection:
                return await connection.run_sync(_schema.create_or_upgrade)

    def schema_sql(self, dialect_name: str | None = None) -> str:
        """tidings' DDL as SQL text for a DBA: for `dialect_name` (postgresql, mysql, mariadb, sqlite),
        or this database's dialect. Does not connect."""
        from tidings.sql import _schema

        return _schema.schema_sql(dialect_name or self.dialect_name)

    # tidings' own statements: one each, in a short transaction of its own unless joined.

    def sql(self, statement: str) -> str:
        """`statement` with its `?` parameter marks written the way this database's driver takes them."""
        return _marked(statement, self._mark)

    async def fetch(self, statement: str, *arguments: Any, join: bool = False) -> list[Sequence[Any]]:
        """The rows of one read (`?` marks the parameters). With `join`, it runs in the transaction
        open in this context if there is one; otherwise on a connection of its own."""
        scope = current_scope(self) if join else None
        if scope is not None:
            async with scope.lock:
                result = await scope.connection.exec_driver_sql(self.sql(statement), arguments)
                return list(result.all())
        if self.by_driver:
            return await self.driver_connections.fetch(self.sql(statement), *arguments)
        async with self.reading() as connection:
            result = await connection.exec_driver_sql(self.sql(statement), arguments)
            return list(result.all())

    async def execute(self, statement: str, *arguments: Any, join: bool = False) -> int:
        """Run one write (`?` marks the parameters) and return how many rows it touched. With `join`,
        it runs in the transaction open in this context if there is one; otherwise it commits alone."""
        scope = current_scope(self) if join else None
        if scope is not None:
            async with scope.lock:
                result = await scope.connection.exec_driver_sql(self.sql(statement), arguments)
                return int(result.rowcount)
        if self.by_driver:
            return rows_touched(await self.driver_connections.execute(self.sql(statement), *arguments))
        async with self.writing() as connection:
            result = await connection.exec_driver_sql(self.sql(statement), arguments)
            return int(result.rowcount)

    # Transactions

    @asynccontextmanager
    async def transaction(self) -> AsyncIterator[AsyncConnection]:
        """Open a transaction that code running inside the block joins; yields its connection.

        Messages sent to SQL channels of this database inside the block are written in it (the
        outbox); an exception rolls everything back. A nested block joins the outer transaction; an
        exception leaving it dooms the whole transaction (see `TransactionRolledBack`).
        """
        outer = current_scope(self)
        if outer is not None:
            try:
                yield outer.connection
            except BaseException:
                outer.rollback_only = True
                raise
            return
        async with self._writer_slot(), self.engine.connect() as connection:
            scope = TransactionScope(self, connection)
            token = _enter(scope)
            committed = False
            try:
                await connection.begin()
                try:
                    yield connection
                    await scope._run_before_commit()
                    if scope.rollback_only:
                        raise TransactionRolledBack(
                            "the transaction was rolled back: an exception left a nested "
                            "transaction block and was caught before the outer block ended"
                        )
                except BaseException:
                    scope.active = False
                    await connection.rollback()
                    raise
                await connection.commit()
                committed = True
            finally:
                scope.active = False
                _leave(token)
                await scope._close_session()
                if not committed:
                    await scope._run_after(scope.after_rollback)
        await scope._run_after(scope.after_commit)

    def session(self) -> AsyncSession:
        """The ORM session of the transaction open in this context (see `transaction`)."""
        scope = current_scope(self)
        if scope is None:
            raise TidingsError(
                f"no transaction is open on {self.safe_url} here; use `async with db.transaction():`"
            )
        return scope.session()

    @asynccontextmanager
    async def _writer_slot(self) -> AsyncIterator[None]:
        """On SQLite, wait for this process's turn to write; elsewhere the server arbitrates."""
        if self.backend != "sqlite":
            yield
            return
        if current_scope(self) is not None:
            raise TidingsError(
                f"SQLite allows one writer at a time and this code runs inside an open transaction "
                f"on {self.safe_url}; a second write transaction would wait for it forever"
            )
        async with self._lock():
            yield

    # Short transactions for tidings' own bookkeeping (channels, stores). They never join `transaction()`.

    @asynccontextmanager
    async def writing(self) -> AsyncIterator[AsyncConnection]:
        """A short write transaction of its own, committed when the block ends."""
        async with self._writer_slot(), self._internal_engine.begin() as connection:
            yield connection

    @asynccontextmanager
    async def reading(self) -> AsyncIterator[AsyncConnection]:
        """A connection for reads only (no write lock on SQLite)."""
        if self.backend == "postgresql":
            async with self._autocommit_engine.connect() as connection:
                yield connection
        elif self.backend == "sqlite" and not self._memory:
            async with self._read_only_engine.connect() as connection:
                yield connection
        else:
            # An in-memory SQLite database is one shared connection: readers take turns too.
            async with self._writer_slot(), self._internal_engine.connect() as connection:
                yield connection
