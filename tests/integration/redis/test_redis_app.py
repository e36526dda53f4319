"""An app's asynchronous handlers run on a Redis channel exactly as on any other channel."""

from __future__ import annotations

import time
from dataclasses import dataclass
from datetime import timedelta

import pytest

from tidings import App, asynchronous, delayed, event_handler, priority
from tidings.channels.redis import RedisChannel

pytestmark = pytest.mark.redis


@dataclass
class OrderPlaced:
    order_id: str
    total: int


async def test_an_app_runs_its_asynchronous_handlers_from_a_redis_channel(
    redis_url: str, key_prefix: str
) -> None:
    handled: list[tuple[str, str, float]] = []

    @asynchronous("orders")
    @event_handler
    async def reserve_stock(event: OrderPlaced) -> None:
        handled.append(("reserve_stock", event.order_id, time.time()))

    @asynchronous("orders")
    @priority(5)
    @event_handler
    def notify_warehouse(event: OrderPlaced) -> None:
        handled.append(("notify_warehouse", event.order_id, time.time()))

    @asynchronous("orders")
    @delayed(timedelta(seconds=1))
    @event_handler
    async def follow_up(event: OrderPlaced) -> None:
        handled.append(("follow_up", event.order_id, time.time()))

    channel = RedisChannel("orders", url=redis_url, key_prefix=key_prefix)
    app = App("shop", handlers=[reserve_stock, notify_warehouse, follow_up], channels=[channel])
    async with app:
        published = time.time()
        for n in range(100):
            await app.events.publish(OrderPlaced(f"o-{n}", n))
        await app.run("orders", stop_when_empty=True, time_limit=10)
        if len(handled) < 300:  # the delayed copies were not due when the channel first ran dry
            await app.run("orders", time_limit=3, message_limit=300 - len(handled))
        depth = await channel.depth()

    for endpoint in ("reserve_stock", "notify_warehouse", "follow_up"):
        order_ids = sorted(o for e, o, _ in handled if e == endpoint)
        assert order_ids == sorted(f"o-{n}" for n in range(100)), endpoint
    assert all(at >= published + 1.0 for e, _, at in handled if e == "follow_up")
    assert depth == 0
