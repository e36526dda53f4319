"""One `Database` per URL within an app, shared by its channels and stores.

The app hands every channel the same `ChannelEnvironment.extensions` dict; the registry lives there, so
that all SQL channels on one URL share one engine (and one open transaction, see `current_scope`).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from tidings.sql._database import Database

if TYPE_CHECKING:
    from sqlalchemy.engine import URL
    from sqlalchemy.ext.asyncio import AsyncEngine

__all__ = ["REGISTRY_KEY", "acquire_database", "release_database"]

#: Where the registry lives in `ChannelEnvironment.extensions`.
REGISTRY_KEY = "tidings.sql.databases"


class _Entry:
    __slots__ = ("database", "users")

    def __init__(self, database: Database) -> None:
        self.database = database
        self.users = 0


def _entries(extensions: dict[str, Any]) -> dict[str, _Entry]:
    entries: dict[str, _Entry] = extensions.setdefault(REGISTRY_KEY, {})
    return entries


async def acquire_database(
    extensions: dict[str, Any], database: str | URL | AsyncEngine | Database
) -> Database:
    """The connected `Database` for `database`, shared through `extensions`.

    A `Database` object is used as it is and stays its owner's to close. A URL or an engine is
    wrapped once per app; each `acquire_database` needs a matching `release_database`, and the last
    release closes it.
    """
    if isinstance(database, Database):
        await database.connect()
        return database
    candidate = Database(database)
    entries = _entries(extensions)
    entry = entries.get(candidate.key)
    if entry is None:
        entry = entries[candidate.key] = _Entry(candidate)
    entry.users += 1
    try:
        await entry.database.connect()
    except BaseException:
        await release_database(extensions, entry.database)
        raise
    return entry.database


async def release_database(extensions: dict[str, Any], database: Database) -> None:
    """Give back a database from `acquire_database`; the last user closes it."""
    entries = _entries(extensions)
    entry = entries.get(database.key)
    if entry is None or entry.database is not database:
        return
    entry.users -= 1
    if entry.users <= 0:
        del entries[database.key]
        await database.close()
