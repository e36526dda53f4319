"""Messages sent inside a database transaction commit or roll back with it: the outbox."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import AsyncIterator

import pytest
from sqlalchemy import Column, Integer, MetaData, String, Table, func, insert, select, text

from tidings import headers as h
from tidings._message import Envelope
from tidings.sql import Database, TransactionRolledBack, current_connection, current_scope

from .conftest import OpenChannel


def envelope(n: int) -> Envelope:
    return Envelope(f'{{"n": {n}}}'.encode(), {h.MESSAGE_ID: f"m-{n}", h.ENDPOINT: "ep"})


class Boom(Exception):
    pass


@pytest.fixture
async def orders(database: Database) -> AsyncIterator[Table]:
    """A business table of the test's own, dropped afterwards."""
    table = Table(
        f"it_orders_{uuid.uuid4().hex[:8]}",
        MetaData(),
        Column("id", Integer, primary_key=True, autoincrement=False),
        Column("status", String(20), nullable=False),
    )
    async with database.writing() as connection:
        await connection.run_sync(table.create)
    yield table
    async with database.writing() as connection:
        await connection.run_sync(table.drop)


async def count_rows(database: Database, table: Table) -> int:
    async with database.reading() as connection:
        return int((await connection.execute(select(func.count()).select_from(table))).scalar_one())


async def test_a_message_sent_in_a_rolled_back_transaction_is_never_stored(
    database: Database, open_channel: OpenChannel, orders: Table
) -> None:
    channel = await open_channel()

    async def place_order_then_fail() -> None:
        async with database.transaction() as connection:
            await connection.execute(insert(orders).values(id=1, status="placed"))
            await channel.send([envelope(1)])
            raise Boom

    with pytest.raises(Boom):
        await place_order_then_fail()

    assert await channel.depth() == 0
    assert await count_rows(database, orders) == 0
    assert await channel.receive(10, timeout=0.3) == []


async def test_a_message_sent_in_a_committed_transaction_is_stored_with_the_business_row(
    database: Database, open_channel: OpenChannel, orders: Table
) -> None:
    channel = await open_channel()

    async with database.transaction() as connection:
        await connection.execute(insert(orders).values(id=1, status="placed"))
        await channel.send([envelope(1), envelope(2)])
        # Not visible to other connections before the commit.
        assert await channel.depth() == 0

    assert await count_rows(database, orders) == 1
    received = await channel.receive(10, timeout=2.0)
    assert sorted(d.envelope.message_id for d in received) == ["m-1", "m-2"]
    await channel.ack(received)


async def test_a_consumer_waiting_on_the_channel_wakes_once_the_transaction_commits(
    database: Database, open_channel: OpenChannel
) -> None:
    channel = await open_channel(poll_interval=30.0)
    waiting = asyncio.ensure_future(channel.receive(10, timeout=10.0))
    await asyncio.sleep(0.3)
    loop = asyncio.get_running_loop()

    async with database.transaction():
        await channel.send([envelope(1)])
    committed = loop.time()
    received = await waiting

    assert [d.envelope.message_id for d in received] == ["m-1"]
    assert loop.time() - committed < 1.0
    await channel.ack(received)


async def test_a_nested_transaction_block_joins_the_outer_transaction(database: Database) -> None:
    assert current_connection(database) is None
    async with database.transaction() as outer:
        assert current_connection(database) is outer
        async with database.transaction() as inner:
            assert inner is outer
    assert current_connection(database) is None


async def test_an_exception_caught_between_nested_blocks_rolls_the_whole_transaction_back(
    database: Database, open_channel: OpenChannel
) -> None:
    channel = await open_channel()

    async def swallow_a_failed_inner_block() -> None:
        async with database.transaction():
            await channel.send([envelope(1)])
            try:
                async with database.transaction():
                    raise Boom
            except Boom:
                pass

    with pytest.raises(TransactionRolledBack):
        await swallow_a_failed_inner_block()

    assert await channel.depth() == 0


async def test_commit_hooks_run_inside_then_after_the_commit_and_rollback_hooks_on_rollback(
    database: Database,
) -> None:
    events: list[str] = []

    async def record(event: str) -> None:
        events.append(event)

    async with database.transaction():
        scope = current_scope(database)
        assert scope is not None

        async def before() -> None:
            # Still inside the transaction.
            assert current_scope(database) is scope
            await record("before")

        scope.before_commit.append(before)
        scope.after_commit.append(lambda: record("after"))
        scope.after_rollback.append(lambda: record("rolled back"))
    assert events == ["before", "after"]

    events.clear()

    async def fail() -> None:
        async with database.transaction():
            scope = current_scope(database)
            assert scope is not None
            scope.after_commit.append(lambda: record("after"))
            scope.after_rollback.append(lambda: record("rolled back"))
            raise Boom

    with pytest.raises(Boom):
        await fail()
    assert events == ["rolled back"]


async def test_the_session_works_on_the_transaction_connection(database: Database, orders: Table) -> None:
    async def write_then_fail() -> None:
        async with database.transaction() as connection:
            session = database.session()
            assert (await session.connection()).sync_connection is connection.sync_connection
            await session.execute(insert(orders).values(id=7, status="placed"))
            raise Boom

    with pytest.raises(Boom):
        await write_then_fail()
    assert await count_rows(database, orders) == 0

    async with database.transaction():
        await database.session().execute(insert(orders).values(id=8, status="placed"))
    assert await count_rows(database, orders) == 1


async def test_a_task_started_inside_a_finished_block_no_longer_sees_its_transaction(
    database: Database,
) -> None:
    started = asyncio.Event()
    finished = asyncio.Event()
    seen: list[object] = []

    async def later() -> None:
        started.set()
        await finished.wait()
        seen.append(current_connection(database))

    async with database.transaction():
        task = asyncio.ensure_future(later())
        await started.wait()
    finished.set()
    await task

    assert seen == [None]


async def test_a_transaction_reads_its_own_writes(database: Database, orders: Table) -> None:
    async with database.transaction() as connection:
        await connection.execute(insert(orders).values(id=1, status="placed"))
        assert (await connection.execute(text(f"SELECT count(*) FROM {orders.name}"))).scalar() == 1
