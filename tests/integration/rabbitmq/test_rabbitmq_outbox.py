"""The SQL outbox relayed to RabbitMQ: the business transaction never waits for the broker."""

from __future__ import annotations

import asyncio
import tempfile
import time
import uuid
from dataclasses import dataclass

import pytest
from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncSession
from tests.integration.conftest import prepare_database

from tidings import App, CombinedChannel, EventBus, asynchronous, command_handler, event_handler
from tidings.channels.rabbitmq import RabbitMQChannel
from tidings.channels.sql import SqlChannel

from .conftest import PrivateNode, delete_topology

pytestmark = [pytest.mark.rabbitmq, pytest.mark.slow]


@dataclass
class PlaceOrder:
    order_id: str


@dataclass
class OrderPlaced:
    order_id: str


async def test_an_order_commits_while_rabbitmq_is_down_and_is_handled_once_it_is_back(
    private_node: PrivateNode,
) -> None:
    outbox, queue = f"outbox-{uuid.uuid4().hex[:8]}", f"orders-{uuid.uuid4().hex[:8]}"
    handled: list[str] = []

    @command_handler
    async def place_order(command: PlaceOrder, session: AsyncSession, events: EventBus) -> None:
        await session.execute(text("INSERT INTO orders (id) VALUES (:id)"), {"id": command.order_id})
        await events.publish(OrderPlaced(command.order_id))

    @asynchronous("orders")
    @event_handler
    async def ship(event: OrderPlaced) -> None:
        handled.append(event.order_id)

    with tempfile.TemporaryDirectory() as directory:
        database = f"sqlite+aiosqlite:///{directory}/shop.db"
        await prepare_database(database, ["CREATE TABLE orders (id VARCHAR(100) PRIMARY KEY)"])
        app = App(
            "shop",
            handlers=[place_order, ship],
            channels=[
                SqlChannel(outbox),
                # A short wait, so that the relay also meets a send that gives up, and retries it.
                RabbitMQChannel(queue, url=private_node.url, wait_for_broker=1.0),
                CombinedChannel("orders", [outbox, queue]),
            ],
            database=database,
        )
        try:
            async with app:
                consumers = [app.consumer(outbox), app.consumer(queue)]
                running = [asyncio.ensure_future(consumer.run()) for consumer in consumers]

                await private_node.stop_app()
                try:
                    await asyncio.wait_for(app.commands.send(PlaceOrder("o-1")), timeout=5)
                    async with app.transaction() as session:
                        rows = await session.execute(text("SELECT id FROM orders"))
                        assert [row.id for row in rows] == ["o-1"]
                    await asyncio.sleep(2.5)  # the relay tries, gives up, and tries again later
                    assert handled == []
                finally:
                    await private_node.start_app()

                deadline = time.monotonic() + 30
                while not handled and time.monotonic() < deadline:
                    await asyncio.sleep(0.1)
                for consumer in consumers:
                    consumer.stop("done")
                await asyncio.gather(*running)
        finally:
            await delete_topology(private_node.url, [queue])

    assert handled == ["o-1"]
