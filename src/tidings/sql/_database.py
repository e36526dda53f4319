"""The app's database: one SQLAlchemy async engine, its schema, and its transactions."""

from __future__ import annotations

import asyncio
import importlib.util
from collections.abc import AsyncIterator, Mapping
from contextlib import asynccontextmanager
from typing import TYPE_CHECKING, Any, Literal

from sqlalchemy.engine import URL, make_url
from sqlalchemy.exc import DBAPIError
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine, create_async_engine

from tidings.exceptions import ConfigurationError, DriverMissing, TidingsError
from tidings.sql import _schema, _sqlite
from tidings.sql._errors import DatabaseUnavailable, SchemaMissing, TransactionRolledBack
from tidings.sql._scope import TransactionScope, _enter, _leave, current_scope

if TYPE_CHECKING:
    from sqlalchemy.ext.asyncio import AsyncSession

__all__ = ["Backend", "Database", "check_driver"]

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
#: Async drivers: (module to import, extra that installs it).
_DRIVERS = {
    "asyncpg": ("asyncpg", "postgres"),
    "psycopg": ("psycopg", "postgres"),
    "aiomysql": ("aiomysql", "mysql"),
    "asyncmy": ("asyncmy", "mysql"),
    "aiosqlite": ("aiosqlite", "sqlite"),
}
_KIND_NAMES = {"postgresql": "PostgreSQL", "mysql": "MySQL/MariaDB", "sqlite": "SQLite"}

#: How long `connect()` waits for the server before calling it unreachable.
CONNECT_TIMEOUT_SECONDS = 10.0


def _normalise(url: URL) -> URL:
    backend = url.get_backend_name()
    if backend not in _BACKENDS:
        raise ConfigurationError(
            f"tidings supports PostgreSQL, MySQL/MariaDB and SQLite databases, not {backend!r} "
            f"({url.render_as_string(hide_password=True)})"
        )
    if "+" not in url.drivername:
        url = url.set(drivername=f"{backend}+{_DEFAULT_DRIVERS[backend]}")
    driver = url.get_driver_name()
    if driver not in _DRIVERS:
        raise ConfigurationError(
            f"{url.render_as_string(hide_password=True)} names the driver {driver!r}, which is not "
            f"asyncio-capable; use {backend}+{_DEFAULT_DRIVERS[backend]}://..."
        )
    return url


def check_driver(url: str | URL) -> URL:
    """The URL with its async driver filled in; raises `DriverMissing` if that driver is not installed."""
    parsed = _normalise(make_url(url))
    module, extra = _DRIVERS[parsed.get_driver_name()]
    if importlib.util.find_spec(module) is None:
        raise DriverMissing(
            f"The {_KIND_NAMES[_BACKENDS[parsed.get_backend_name()]]} database", extra, module
        )
    return parsed


def _describe(exc: BaseException) -> str:
    cause: BaseException = exc
    if isinstance(exc, DBAPIError) and exc.orig is not None:
        # Adapted drivers (asyncpg) wrap their own, more telling exception.
        cause = exc.orig.__cause__ or exc.orig
    text = str(cause).strip().splitlines()[0] if str(cause).strip() else ""
    return f"{type(cause).__name__}: {text}" if text else type(cause).__name__


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
        if isinstance(url, AsyncEngine):
            self._engine: AsyncEngine | None = url
            self._owns_engine = False
            self.url = url.url
            _normalise(self.url)
            # Two Database objects wrapping one engine share its transactions.
            self.key = f"engine:{id(url)}"
        else:
            self.url = check_driver(url)
            self._engine = None
            self._owns_engine = True
            self.key = self.url.render_as_string(hide_password=False)
        self._engine_options = dict(engine_options or {})
        self.backend: Backend = _BACKENDS[self.url.get_backend_name()]
        #: The server's version, known after `connect()`.
        self.server_version: tuple[int, ...] | None = None
        #: True when a MySQL-family server turned out to be MariaDB.
        self.is_mariadb = False
        self._memory = self.backend == "sqlite" and _sqlite.is_memory(self.url.database, self.url.query)
        self._internal: AsyncEngine | None = None
        self._autocommit: AsyncEngine | None = None
        self._read_only: AsyncEngine | None = None
        self._write_lock: asyncio.Lock | None = None
        self._connected = False

    def __repr__(self) -> str:
        return f"Database({self.safe_url!r})"

    @property
    def safe_url(self) -> str:
        """The URL with its password hidden, for messages and logs."""
        return self.url.render_as_string(hide_password=True)

    @property
    def engine(self) -> AsyncEngine:
        """The SQLAlchemy engine (created on first use when the database was given as a URL)."""
        if self._engine is None:
            self._engine = self._create_engine()
        elif self.backend == "sqlite":
            _sqlite.configure(self._engine)
        return self._engine

    def _create_engine(self) -> AsyncEngine:
        options: dict[str, Any] = {}
        connect_args: dict[str, Any] = {}
        if self.backend == "postgresql" and self.url.get_driver_name() == "asyncpg":
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
        engine = create_async_engine(self.url, connect_args=connect_args, **options)
        if self.backend == "sqlite":
            _sqlite.configure(engine)
        return engine

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
            self._read_only = self.engine.execution_options(**{_sqlite.READ_ONLY: True})
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
            async with asyncio.timeout(CONNECT_TIMEOUT_SECONDS + 5), self.reading() as connection:
                version = await connection.run_sync(_schema.installed_version)
                dialect = connection.dialect
                self.server_version = tuple(
                    part for part in dialect.server_version_info or () if isinstance(part, int)
                )
                self.is_mariadb = bool(getattr(dialect, "is_mariadb", False))
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
        if version < _schema.SCHEMA_VERSION:
            raise SchemaMissing(
                f"the tidings schema in {self.safe_url} is at version {version}, this tidings needs "
                f"{_schema.SCHEMA_VERSION}; upgrade it with `tidings db init <module:app>`"
            )
        if version > _schema.SCHEMA_VERSION:
            raise SchemaMissing(
                f"the tidings schema in {self.safe_url} is at version {version}, newer than this "
                f"tidings understands ({_schema.SCHEMA_VERSION}); upgrade tidings"
            )
        self._connected = True

    async def close(self) -> None:
        """Close the engine's connections if this object created the engine; it can connect again."""
        self._connected = False
        self._internal = self._autocommit = self._read_only = None
        self._write_lock = None
        if self._owns_engine and self._engine is not None:
            engine, self._engine = self._engine, None
            await engine.dispose()

    async def create_schema(self) -> int:
        """Create tidings' tables, or upgrade them; safe to run again. Returns the schema version."""
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
        if dialect_name is None:
            dialect_name = self.url.get_backend_name()
        return _schema.schema_sql(dialect_name)

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

    @asynccontextmanager
    async def single_statement(self) -> AsyncIterator[AsyncConnection]:
        """A connection for exactly one self-contained write statement.

        On PostgreSQL the statement runs in autocommit (a single statement is atomic there), which
        saves the BEGIN and COMMIT round trips; elsewhere this is `writing()`.
        """
        if self.backend == "postgresql":
            async with self._autocommit_engine.connect() as connection:
                yield connection
        else:
            async with self.writing() as connection:
                yield connection
