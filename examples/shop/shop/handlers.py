"""Business code: no handler names a broker, a serializer or a retry loop."""

from __future__ import annotations

from typing import Annotated

from rich.console import Console
from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncSession

from tidings import (
    EventBus,
    Header,
    MessageContext,
    asynchronous,
    command_handler,
    event_handler,
    query_handler,
)
from tidings.headers import REPLAYED

from .messages import OrderCount, OrderPlaced, PlaceOrder

console = Console(highlight=False)


@command_handler
async def place_order(command: PlaceOrder, session: AsyncSession, events: EventBus) -> str:
    # The order row and the OrderPlaced copies for SQL channels commit in one transaction.
    await session.execute(
        text("INSERT INTO orders (id, customer, total) VALUES (:id, :customer, :total)"),
        {"id": command.order_id, "customer": command.customer, "total": command.total},
    )
    await events.publish(OrderPlaced(command.order_id, command.customer, command.total))
    console.print(f"  [bold]place_order[/]   saved {command.order_id}, published OrderPlaced")
    return command.order_id


@event_handler
async def audit(event: OrderPlaced, tenant: Annotated[str | None, Header("tenant")]) -> None:
    console.print(f"  [cyan]audit[/]         (sync) {event.order_id} for tenant {tenant}")


@asynchronous("notifications")
@event_handler
async def send_receipt(event: OrderPlaced, tenant: Annotated[str | None, Header("tenant")]) -> None:
    console.print(
        f"  [green]send_receipt[/]  (async, notifications) receipt for {event.order_id} "
        f"to {event.customer} (tenant {tenant})"
    )


class Warehouse:
    """The warehouse's API; offline at first in the demo."""

    def __init__(self) -> None:
        self.online = False

    def notify(self, order_id: str) -> None:
        if not self.online:
            raise ConnectionError("warehouse API unreachable")


@asynchronous("notifications")
@event_handler
async def notify_warehouse(event: OrderPlaced, warehouse: Warehouse, context: MessageContext) -> None:
    try:
        warehouse.notify(event.order_id)
    except ConnectionError:
        console.print(
            f"  [red]notify_warehouse[/] attempt {context.attempt} for {event.order_id}: unreachable"
        )
        raise
    replayed = " (replayed from the dead letter)" if context.headers.get(REPLAYED) else ""
    console.print(f"  [green]notify_warehouse[/] told the warehouse about {event.order_id}{replayed}")


@asynchronous("inventory")
@event_handler(endpoint_id="reserve_stock")
def reserve_stock(event: OrderPlaced) -> None:
    # A plain def: runs in the worker's thread pool. Reached through the outbox relay.
    console.print(f"  [magenta]reserve_stock[/] (async, outbox → inventory) stock for {event.order_id}")


@query_handler
async def order_count(query: OrderCount, session: AsyncSession) -> int:
    return int((await session.execute(text("SELECT COUNT(*) FROM orders"))).scalar_one())
