"""Fixtures for the SQL layer's integration tests: a database with tidings' schema on each server."""

from __future__ import annotations

import contextlib
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path
from typing import NamedTuple

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


class SenderAndConsumer(NamedTuple):
    sender: SqlChannel
    consumer: SqlChannel
    consumer_database: Database


@contextlib.asynccontextmanager
async def sender_and_consumer(url: str) -> AsyncIterator[SenderAndConsumer]:
    """A sender and a consumer of one fresh queue, each on a Database of its own as in two processes:
    they share no in-process signal, so only the server's notifications wake the consumer (it polls
    every 30 s). The queue is purged and everything closed after."""
    sender_db, consumer_db = Database(url), Database(url)
    await sender_db.create_schema()
    name = f"it-{uuid.uuid4().hex[:12]}"
    sender = SqlChannel(name, database=sender_db)
    consumer = SqlChannel(name, database=consumer_db, poll_interval=30.0)
    environment = ChannelEnvironment(app_name="it", clock=SystemClock())
    await sender.connect(environment)
    await consumer.connect(environment)
    try:
        yield SenderAndConsumer(sender, consumer, consumer_db)
    finally:
        await sender.purge()
        await sender.close()
        await consumer.close()
        await sender_db.close()
        await consumer_db.close()


@contextlib.asynccontextmanager
async def channel_and_database(url: str) -> AsyncIterator[tuple[SqlChannel, Database]]:
    """A connected channel on a fresh queue, on a Database of its own with tidings' schema; the queue
    is purged and both closed after."""
    database = Database(url)
    await database.create_schema()
    channel = SqlChannel(f"it-{uuid.uuid4().hex[:12]}", database=database)
    await channel.connect(ChannelEnvironment(app_name="it", clock=SystemClock()))
    try:
        yield channel, database
    finally:
        await channel.purge()
        await channel.close()
        await database.close()


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
