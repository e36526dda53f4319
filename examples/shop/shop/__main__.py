"""`make demo`: place orders, then run a worker that drains every channel, and show what happened."""

from __future__ import annotations

import asyncio
import json
import logging
import os

from sqlalchemy import text

from tidings.sql import Database

from .app import DATABASE, DEFAULT_DATABASE, app
from .handlers import Warehouse, console
from .messages import OrderCount, PlaceOrder


def forget_previous_run() -> None:
    if DATABASE == DEFAULT_DATABASE and os.path.exists("shop.db"):
        os.remove("shop.db")  # every demo run starts from an empty shop


async def prepare_database() -> None:
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
        console.print("  the warehouse is offline: notify_warehouse is retried with backoff, then")
        console.print("  dead-lettered; its sibling send_receipt runs once")
        stats = await app.run(time_limit=2.0)
        console.print(
            f"  worker: {stats.handled} handled, {stats.relayed} relayed through the outbox, "
            f"{stats.retried} retried, {stats.dead_lettered} dead-lettered"
        )

        console.rule("3. dead letters (`tidings dead-letter list shop.app:app` shows the same)")
        for letter in await app.dead_letters.list():
            console.print(
                f"  {letter.endpoint}: {letter.exception_type.rpartition('.')[2]} after "
                f"{letter.attempts} attempts, order {json.loads(letter.body)['order_id']}"
            )

        console.rule("4. the warehouse is back: replay the dead letters")
        app.services[Warehouse].online = True
        replayed = await app.dead_letters.replay_all()
        stats = await app.run(time_limit=1.0)
        console.print(
            f"  replayed {replayed}; worker: {stats.handled} handled; dead letters left: "
            f"{await app.dead_letters.count()}"
        )

        console.rule("5. a query")
        console.print(f"  orders in the database: {await app.queries.ask(OrderCount())}")


if __name__ == "__main__":
    logging.basicConfig(level=os.environ.get("LOG_LEVEL", "CRITICAL"))
    forget_previous_run()
    asyncio.run(main())
