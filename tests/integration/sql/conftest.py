"""Fixtures for the SQL layer's integration tests: a database with tidings' schema on each server."""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path

import pytest
from tests.conftest import require_service

from tidings._clock import Clock, SystemClock
from tidings.channels.base import ChannelEnvironment
from tidings.channels.sql import SqlChannel
from tidings.sql import Database

POSTGRES_URL = "postgresql+asyncpg://postgres@127.0.0.1:5432/test"
MARIADB_URL = "mysql+aiomysql://root@127.0.0.1:3306/test"

SERVERS = {
    "postgres": ("PostgreSQL", 5432, POSTGRES_URL),
    "mariadb": ("MariaDB", 3306, MARIADB_URL),
}

OpenChannel = Callable[..., Awaitable[SqlChannel]]


def database_url(kind: str, tmp_path: Path) -> str:
    if kind == "sqlite":
        return f"sqlite+aiosqlite:///{tmp_path / 'tidings.db'}"
    name, port, url = SERVERS[kind]
    require_service(name, "127.0.0.1", port)
    return url


@pytest.fixture(
    params=[
        "sqlite",
        pytest.param("postgres", marks=pytest.mark.postgres),
        pytest.param("mariadb", marks=pytest.mark.mariadb),
    ]
)
def url(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    return database_url(request.param, tmp_path)


@pytest.fixture
async def database(url: str) -> AsyncIterator[Database]:
    db = Database(url)
    await db.create_schema()
    await db.connect()
    try:
        yield db
    finally:
        await db.close()


@pytest.fixture
async def open_channel(database: Database) -> AsyncIterator[OpenChannel]:
    """Connected channels with fresh names on `database`, purged and closed after the test."""
    opened: list[SqlChannel] = []

    async def open_(
        name: str | None = None,
        *,
        db: Database | None = None,
        clock: Clock | None = None,
        lease_seconds: float = 30.0,
        poll_interval: float = 0.5,
    ) -> SqlChannel:
        channel = SqlChannel(
            name or f"it-{uuid.uuid4().hex[:12]}",
            database=db or database,
            lease_seconds=lease_seconds,
            poll_interval=poll_interval,
        )
        await channel.connect(ChannelEnvironment(app_name="it", clock=clock or SystemClock()))
        opened.append(channel)
        return channel

    yield open_
    for channel in opened:
        if channel._database is not None:
            await channel.purge()
            await channel.close()
