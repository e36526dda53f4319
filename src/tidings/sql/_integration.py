"""The SQL layer plugged into the app: transactions around handlers, session injection, the outbox.

A handler that asks for an `AsyncSession` or `AsyncConnection` runs inside one transaction. Messages
it sends to SQL channels are written in that transaction just before it commits; messages for other
channels are sent after the commit, never before, and never if it rolls back.
"""

from __future__ import annotations

import typing
from collections.abc import AsyncIterator, Iterable
from contextlib import asynccontextmanager
from typing import TYPE_CHECKING, Any

from tidings._app import Extension
from tidings._context import handling_scope
from tidings.exceptions import ConfigurationError
from tidings.middleware.base import Middleware
from tidings.sql._database import Database
from tidings.sql._imported import imported_classes
from tidings.sql._registry import acquire_database, release_database
from tidings.sql._scope import current_scope
from tidings.sql._stores import SqlDeadLetterStore, SqlDeduplicationStore, SqlScheduleLock

if TYPE_CHECKING:
    from sqlalchemy.ext.asyncio import AsyncSession

    from tidings._app import App
    from tidings._context import MessageContext
    from tidings._registry import Endpoint, ParameterResolver, Provider
    from tidings.middleware.base import CallNext, Outgoing

__all__ = ["SqlExtension", "TransactionMiddleware", "asks_for_database"]

_HELD_MESSAGES_KEY = "tidings.sql.held-messages"


def _transactional_types() -> tuple[type[Any], ...]:
    """`AsyncSession` and `AsyncConnection`, if anything imported them: a handler can only be annotated
    with them if its module did, and an app whose handlers do not leaves SQLAlchemy unimported."""
    return imported_classes("sqlalchemy.ext.asyncio", "AsyncSession", "AsyncConnection")


def asks_for_database(function: Any) -> bool:
    """Whether `function` takes the database session, connection or `Database` (and so a transaction)."""
    try:
        hints = typing.get_type_hints(function)
    except NameError:
        return False
    transactional = _transactional_types()
    return any(hint in transactional or hint is Database for name, hint in hints.items() if name != "return")


async def _write_held_sql_messages(pending: list[Outgoing]) -> None:
    """Send held messages for transactional channels now, inside the transaction about to commit."""
    held = [outgoing for outgoing in pending if outgoing.channel.capabilities.transactional]
    if not held:
        return
    pending[:] = [outgoing for outgoing in pending if not outgoing.channel.capabilities.transactional]
    by_channel: dict[int, tuple[Any, list[Any]]] = {}
    for outgoing in held:
        by_channel.setdefault(id(outgoing.channel), (outgoing.channel, []))[1].append(outgoing.envelope)
    for channel, envelopes in by_channel.values():
        await channel.send(envelopes)


class TransactionMiddleware(Middleware):
    """Wraps handlers that use the database in one transaction with the messages they send."""

    order = -10

    def __init__(self, extension: SqlExtension) -> None:
        self.extension = extension

    def applies_to(self, endpoint: Endpoint) -> bool:
        if not asks_for_database(endpoint.function):
            return False
        if not endpoint.is_coroutine:
            raise ConfigurationError(
                f"handler {endpoint.qualname} asks for a database session but is a plain def; "
                f"database sessions are asyncio objects, so make it `async def`"
            )
        return True

    async def handle(self, context: MessageContext, call_next: CallNext) -> Any:
        async with self.extension.transaction() as _session:
            return await call_next(context)


class SqlExtension(Extension):
    """The app's database: connected on start, injected into handlers, wrapping their transactions."""

    def __init__(self, app: App, database: Any) -> None:
        self.app = app
        self._option = database
        self._database: Database | None = None

    @property
    def database(self) -> Database:
        if self._database is None:
            raise ConfigurationError(
                f"app '{self.app.name}' is not started; use `async with app:` before using its database"
            )
        return self._database

    def resolvers(self) -> Iterable[ParameterResolver]:
        return [self._resolve]

    def _resolve(self, annotation: Any) -> Provider | None:
        transactional = _transactional_types()
        if transactional:
            session_type, connection_type = transactional
            if annotation is session_type:
                return lambda _context: self._scope().session()
            if annotation is connection_type:
                return lambda _context: self._scope().connection
        if annotation is Database:
            return lambda _context: self.database
        return None

    def _scope(self) -> Any:
        scope = current_scope(self.database)
        if scope is None:
            raise ConfigurationError("no transaction is open here; this is a bug in tidings")
        return scope

    def middleware(self) -> Iterable[Middleware]:
        return [TransactionMiddleware(self)]

    async def start(self, app: App) -> None:
        self._database = await acquire_database(app.extension_state, self._option)
        if not app.dead_letter_store_given:
            app.dead_letters.store = SqlDeadLetterStore(self._database)
        if not app.deduplication_store_given:
            app.deduplication_store = SqlDeduplicationStore(self._database)
        app.schedule_lock = SqlScheduleLock(self._database, app.clock.now)

    async def stop(self) -> None:
        if self._database is not None:
            database, self._database = self._database, None
            await release_database(self.app.extension_state, database)

    @asynccontextmanager
    async def transaction(self) -> AsyncIterator[AsyncSession]:
        """One database transaction; messages sent inside it commit with it.

        Messages for SQL channels are written in the transaction; messages for other channels are held
        and sent once it committed (by the enclosing bus call or consumer, or here at the outermost).
        """
        database = self.database
        parent, outer = handling_scope.get()
        pending: list[Outgoing] = [] if outer is None else outer
        token = handling_scope.set((parent, pending)) if outer is None else None
        try:
            async with database.transaction():
                scope = current_scope(database)
                assert scope is not None
                if _HELD_MESSAGES_KEY not in scope.state:
                    scope.state[_HELD_MESSAGES_KEY] = True
                    scope.before_commit.append(lambda: _write_held_sql_messages(pending))
                yield scope.session()
        finally:
            if token is not None:
                handling_scope.reset(token)
        if token is not None and pending:
            await self.app.dispatcher.flush(pending)
