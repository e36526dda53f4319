"""`make demo`: place orders, then run a worker that drains every channel, and show what happened."""

from __future__ import annotations

import asyncio
import logging
import os

from sqlalchemy import text

from tidings.sql import Database

from .app import DATABASE, DEFAULT_DATABASE, app
from .handlers import console
from .messages import OrderCount, PlaceOrder


async def prepare_database() -> None:
    if DATABASE == DEFAULT_DATABASE and os.path.exists("shop.db"):
        os.remove("shop.db")  # every demo run starts from an empty shop
    database = Database(DATABASE)
    try:
        await database.create_schema()  # what `tidings db init shop.app:app` does
        async with database.transaction() as connection:
            await connection.execute(
                text("CREATE TABLE IF NOT EXISTS orders (id TEXT PRIMARY KEY, customer TEXT, total INTEGER)")
            )
            await connection.execute(text("DELETE FROM orders"))
    finally:
        await database.close()


async def main() -> None:
    await prepare_database()
    async with app:
        for channel in app.channels.values():
            await channel.purge()

        console.rule("1. commands: each order row and its event copies commit together")
        for number, customer in enumerate(["ada", "grace"], start=1):
            await app.commands.send(
                PlaceOrder(f"o-{number}", customer, 100 * number), headers={"tenant": "acme"}
            )
        try:
            await app.commands.send(PlaceOrder("o-1", "duplicate", 1))
        except Exception as error:
            console.print(f"  a duplicate order id fails: {type(error).__name__}; nothing was sent")
        depths = {name: await channel.depth() for name, channel in app.channels.items()}
        console.print(f"  waiting in channels: {depths}")

        console.rule("2. a worker drains the channels (the outbox relays to inventory_queue)")
        stats = await app.run(stop_when_empty=True)
        console.print(f"  worker: {stats.handled} handled, {stats.relayed} relayed through the outbox")

        console.rule("3. a query")
        console.print(f"  orders in the database: {await app.queries.ask(OrderCount())}")


if __name__ == "__main__":
    logging.basicConfig(level=os.environ.get("LOG_LEVEL", "WARNING"))
    asyncio.run(main())
