"""Connections the server drops are replaced: the channel retries once on a fresh one."""

from __future__ import annotations

import asyncio
import time

import asyncpg
import pytest
from tests.conftest import require_service

from tidings import headers as h
from tidings._message import Envelope
from tidings.channels.sql._wakeup import wakeups_for
from tidings.sql import Database

from .conftest import MARIADB_URL, POSTGRES_URL, channel_and_database, sender_and_consumer


def envelope(n: int) -> Envelope:
    return Envelope(str(n).encode(), {h.MESSAGE_ID: f"m-{n}"})


async def terminate(pids: set[int]) -> None:
    # Only this test's own server processes: other users of the server are left alone.
    admin = await asyncpg.connect(POSTGRES_URL.replace("+asyncpg", ""))
    try:
        for pid in pids:
            await admin.execute("SELECT pg_terminate_backend($1)", pid)
    finally:
        await admin.close()


@pytest.mark.postgres
async def test_a_channel_keeps_working_after_the_server_killed_its_connections() -> None:
    require_service("PostgreSQL", "127.0.0.1", 5432)
    async with channel_and_database(POSTGRES_URL) as (channel, database):
        await channel.send([envelope(1)])
        pool = database.driver_connections
        pids = {link.driver.get_server_pid() for link in pool._idle}
        assert pids

        await terminate(pids)
        await channel.send([envelope(2)])
        received = await channel.receive(10, timeout=2.0)
        await terminate({link.driver.get_server_pid() for link in pool._idle})
        await channel.ack(received)

        assert sorted(d.envelope.message_id for d in received) == ["m-1", "m-2"]
        assert await channel.depth() == 0


@pytest.mark.postgres
async def test_a_consumer_listens_again_after_its_listen_connection_was_killed() -> None:
    require_service("PostgreSQL", "127.0.0.1", 5432)
    async with sender_and_consumer(POSTGRES_URL) as (sender, consumer, consumer_db):
        wakeups = wakeups_for(consumer_db)
        await terminate({wakeups._link.driver.get_server_pid()})
        await asyncio.sleep(0.2)
        assert not wakeups.listening

        waiting = asyncio.ensure_future(consumer.receive(1, timeout=10.0))
        await asyncio.sleep(0.5)
        await sender.send([envelope(1)])
        started = time.monotonic()
        received = await waiting

        assert [d.envelope.message_id for d in received] == ["m-1"]
        assert time.monotonic() - started < 6.0
        assert wakeups.listening
        await consumer.ack(received)


@pytest.mark.mariadb
async def test_a_mariadb_channel_keeps_working_after_the_server_killed_its_connections() -> None:
    require_service("MariaDB", "127.0.0.1", 3306)
    async with channel_and_database(MARIADB_URL) as (channel, database):
        await channel.send([envelope(1)])
        async with database.reading() as connection:
            own = (await connection.exec_driver_sql("SELECT CONNECTION_ID()")).scalar()
        admin = Database(MARIADB_URL)
        async with admin.engine.connect() as connection:
            await connection.exec_driver_sql(f"KILL {int(own)}")
        await admin.close()

        await channel.send([envelope(2)])
        received = await channel.receive(10, timeout=2.0)
        await channel.ack(received)

        assert sorted(d.envelope.message_id for d in received) == ["m-1", "m-2"]
