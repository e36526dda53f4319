"""The outbox through the app: business rows and messages commit together, or not at all.

Runs on SQLite, PostgreSQL and MariaDB.
"""

from __future__ import annotations

import asyncio
import tempfile
import uuid
from dataclasses import dataclass

import pytest
from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncSession
from tests.conftest import require_service
from tests.integration.conftest import POSTGRES, prepare_database

from tidings import (
    App,
    CombinedChannel,
    EventBus,
    InMemoryChannel,
    asynchronous,
    command_handler,
    event_handler,
)
from tidings.channels.sql import SqlChannel
from tidings.exceptions import ChannelUnavailable, ConfigurationError


@dataclass
class PlaceOrder:
    order_id: str
    fail: bool = False


@dataclass
class OrderPlaced:
    order_id: str


TABLES = ["CREATE TABLE IF NOT EXISTS orders (id VARCHAR(100) PRIMARY KEY)"]


def fresh(name: str) -> str:
    return f"{name}-{uuid.uuid4().hex[:10]}"


async def order_exists(app: App, order_id: str) -> bool:
    async with app.transaction() as session:
        found = await session.execute(text("SELECT id FROM orders WHERE id = :id"), {"id": order_id})
        return found.first() is not None


def shop(url: str, outbox: str) -> App:
    @command_handler
    async def place_order(command: PlaceOrder, session: AsyncSession, events: EventBus) -> None:
        await session.execute(text("INSERT INTO orders (id) VALUES (:id)"), {"id": command.order_id})
        await events.publish(OrderPlaced(command.order_id))
        if command.fail:
            raise RuntimeError("fails after writing and publishing")

    @asynchronous(outbox)
    @event_handler
    async def on_placed(event: OrderPlaced) -> None: ...

    return App("shop", handlers=[place_order, on_placed], channels=[SqlChannel(outbox)], database=url)


async def test_a_handler_that_writes_publishes_and_raises_leaves_neither_row_nor_message(
    database_url: str,
) -> None:
    outbox = fresh("outbox")
    app = shop(database_url, outbox)
    async with app:
        order_id = fresh("o")
        with pytest.raises(RuntimeError):
            await app.commands.send(PlaceOrder(order_id, fail=True))

        assert not await order_exists(app, order_id)
        assert await app.channel(outbox).depth() == 0


async def test_a_handler_that_commits_leaves_both_row_and_message(database_url: str) -> None:
    outbox = fresh("outbox")
    app = shop(database_url, outbox)
    async with app:
        order_id = fresh("o")
        await app.commands.send(PlaceOrder(order_id))

        assert await order_exists(app, order_id)
        assert await app.channel(outbox).depth() == 1


async def test_app_transaction_commits_rows_and_messages_together_or_neither(database_url: str) -> None:
    outbox = fresh("outbox")
    app = shop(database_url, outbox)
    async with app:
        kept, dropped = fresh("o"), fresh("o")
        async with app.transaction() as session:
            await session.execute(text("INSERT INTO orders (id) VALUES (:id)"), {"id": kept})
            await app.events.publish(OrderPlaced(kept))
        with pytest.raises(ZeroDivisionError):
            async with app.transaction() as session:
                await session.execute(text("INSERT INTO orders (id) VALUES (:id)"), {"id": dropped})
                await app.events.publish(OrderPlaced(dropped))
                1 / 0  # noqa: B018

        assert await order_exists(app, kept)
        assert not await order_exists(app, dropped)
        assert await app.channel(outbox).depth() == 1


async def test_messages_for_channels_outside_the_database_are_sent_after_the_commit_never_before(
    database_url: str,
) -> None:
    @asynchronous("elsewhere")
    @event_handler
    async def elsewhere(event: OrderPlaced) -> None: ...

    app = App("shop", handlers=[elsewhere], channels=[InMemoryChannel("elsewhere")], database=database_url)
    async with app:
        channel = app.channel("elsewhere")
        async with app.transaction():
            await app.events.publish(OrderPlaced("o-1"))
            assert await channel.depth() == 0  # held while the transaction is open
        assert await channel.depth() == 1

        with pytest.raises(ZeroDivisionError):
            async with app.transaction():
                await app.events.publish(OrderPlaced("o-2"))
                1 / 0  # noqa: B018
        assert await channel.depth() == 1  # the rolled-back one was never sent


async def test_the_outbox_relays_to_the_next_channel_where_the_handler_runs(database_url: str) -> None:
    outbox, queue = fresh("outbox"), fresh("queue")
    handled: list[str] = []

    @asynchronous("orders")
    @event_handler
    async def on_placed(event: OrderPlaced) -> None:
        handled.append(event.order_id)

    app = App(
        "shop",
        handlers=[on_placed],
        channels=[SqlChannel(outbox), InMemoryChannel(queue), CombinedChannel("orders", [outbox, queue])],
        database=database_url,
    )
    async with app:
        async with app.transaction():
            await app.events.publish(OrderPlaced("o-1"))
        assert await app.channel(outbox).depth() == 1

        relayed = await app.run(outbox, stop_when_empty=True)
        assert (relayed.relayed, handled) == (1, [])
        assert 0 <= relayed.max_relay_lag < 30  # how long the message waited in the outbox
        await app.run(queue, stop_when_empty=True)

    assert handled == ["o-1"]


async def test_an_unreachable_database_fails_start_up_naming_the_url_without_its_password() -> None:
    app = App("shop", database="postgresql+asyncpg://tidings:s3cret@127.0.0.1:1/nowhere")

    with pytest.raises(ChannelUnavailable) as raised:
        await app.start()

    message = str(raised.value)
    assert "postgresql+asyncpg://tidings:***@127.0.0.1:1/nowhere" in message
    assert "s3cret" not in message


async def test_a_database_without_the_schema_says_to_run_db_init() -> None:
    with tempfile.TemporaryDirectory() as directory:
        app = App("shop", database=f"sqlite+aiosqlite:///{directory}/empty.db")

        with pytest.raises(ConfigurationError, match="tidings db init"):
            await app.start()


@pytest.mark.postgres
async def test_two_relays_and_two_workers_move_10000_messages_on_postgresql_and_lose_none() -> None:
    require_service("PostgreSQL", "127.0.0.1", 5432)
    await prepare_database(POSTGRES, TABLES)
    outbox, queue = fresh("outbox"), fresh("queue")
    handled: list[str] = []
    total = 10_000

    def make_app() -> App:
        @asynchronous("orders")
        @event_handler(endpoint_id="count")
        async def count(event: OrderPlaced) -> None:
            handled.append(event.order_id)

        return App(
            "shop",
            handlers=[count],
            channels=[SqlChannel(outbox), SqlChannel(queue), CombinedChannel("orders", [outbox, queue])],
            database=POSTGRES,
            deduplicate=False,  # count every handling, duplicates included
        )

    producer, relay_a, relay_b, worker_a, worker_b = (make_app() for _ in range(5))
    async with producer, relay_a, relay_b, worker_a, worker_b:
        for start in range(0, total, 500):
            async with producer.transaction():
                for number in range(start, start + 500):
                    await producer.events.publish(OrderPlaced(str(number)))
        consumers = [
            relay_a.consumer(outbox, concurrency=4),
            relay_b.consumer(outbox, concurrency=4),
            worker_a.consumer(queue, concurrency=20),
            worker_b.consumer(queue, concurrency=20),
        ]
        running = [asyncio.ensure_future(consumer.run()) for consumer in consumers]
        for _ in range(1200):
            if len(set(handled)) >= total:
                break
            await asyncio.sleep(0.1)
        for consumer in consumers:
            consumer.stop("done")
        stats = await asyncio.gather(*running)

    assert len(set(handled)) == total  # none lost
    assert stats[0].relayed + stats[1].relayed == total  # no message relayed twice
    assert stats[0].relayed > 0
    assert stats[1].relayed > 0
    assert len(handled) == total
