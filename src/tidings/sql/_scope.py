"""The open transaction of the current task, found through a context variable.

Code running inside `Database.transaction()` (a handler, a bus, a channel's `send`) finds the
transaction's connection here, so that everything it writes commits or rolls back together.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from contextvars import ContextVar, Token
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from sqlalchemy.ext.asyncio import AsyncConnection, AsyncSession

    from tidings.sql._database import Database

__all__ = ["Callback", "TransactionScope", "current_connection", "current_scope"]

#: An async callback run at a point of a transaction's life.
Callback = Callable[[], Awaitable[None]]

# Keyed by Database.key, so that two Database objects on the same URL share the open transaction.
_open_scopes: ContextVar[tuple[tuple[str, TransactionScope], ...]] = ContextVar(
    "tidings_sql_scopes", default=()
)


class TransactionScope:
    """One open transaction on one database, shared by everything that runs inside it.

    Hooks, run in the order registered (a hook may register more):

    - `before_commit`: inside the transaction, after the block ended without error; an exception
      rolls the transaction back and propagates.
    - `after_commit`: once the commit succeeded, e.g. to send messages to channels outside the
      database. All run even if one fails; the first failure is raised afterwards.
    - `after_rollback`: when the transaction was rolled back, e.g. to drop messages held for sending.
    """

    def __init__(self, database: Database, connection: AsyncConnection) -> None:
        self.database = database
        self.connection = connection
        self.before_commit: list[Callback] = []
        self.after_commit: list[Callback] = []
        self.after_rollback: list[Callback] = []
        #: Set when an exception left a nested block: the transaction can then only roll back.
        self.rollback_only = False
        #: Free slots for features that keep per-transaction state (keyed by feature name).
        self.state: dict[str, Any] = {}
        #: Serialises writes made through the shared connection by concurrent tasks of this scope.
        self.lock = asyncio.Lock()
        self.active = True
        self._session: AsyncSession | None = None

    def __repr__(self) -> str:
        return f"TransactionScope({self.database!r}, active={self.active})"

    def session(self) -> AsyncSession:
        """An ORM session bound to this transaction's connection (created on first use).

        Its pending changes are flushed before the transaction commits. Committing the session does
        not commit the transaction; raise to roll it back.
        """
        if self._session is None:
            from sqlalchemy.ext.asyncio import AsyncSession

            self._session = AsyncSession(bind=self.connection, expire_on_commit=False)
        return self._session

    async def _run_before_commit(self) -> None:
        index = 0
        while True:
            if self._session is not None:
                await self._session.flush()
            if index >= len(self.before_commit):
                return
            await self.before_commit[index]()
            index += 1

    async def _run_after(self, callbacks: list[Callback]) -> None:
        failure: BaseException | None = None
        index = 0
        while index < len(callbacks):
            try:
                await callbacks[index]()
            except Exception as exc:
                failure = failure or exc
            index += 1
        if failure is not None:
            raise failure

    async def _close_session(self) -> None:
        if self._session is not None:
            session, self._session = self._session, None
            await session.close()


def current_scope(database: Database) -> TransactionScope | None:
    """The transaction open on `database` in the current context, if any."""
    key = database.key
    for scope_key, scope in _open_scopes.get():
        if scope_key == key:
            # A task started inside a finished block still carries the scope: it is over for it.
            return scope if scope.active else None
    return None


def current_connection(database: Database) -> AsyncConnection | None:
    """The connection of the transaction open on `database` in the current context, if any."""
    scope = current_scope(database)
    return None if scope is None else scope.connection


def _enter(scope: TransactionScope) -> Token[tuple[tuple[str, TransactionScope], ...]]:
    return _open_scopes.set((*_open_scopes.get(), (scope.database.key, scope)))


def _leave(token: Token[tuple[tuple[str, TransactionScope], ...]]) -> None:
    _open_scopes.reset(token)


def in_any_transaction() -> bool:
    """Whether this context runs inside an open transaction on any database."""
    return any(scope.active for _key, scope in _open_scopes.get())
